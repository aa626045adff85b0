"""What the SHA-256 digests add to saving and restoring a run's checkpoint.

For the ``laperm`` run of a preset (``conv7``, ``f1``), builds the arrays the
run carries between epochs (``checkpoints.Carried``: train state with
LaPerm's sorted initial weights and Adam's moments, best weights, first
kernel; one seed) and times, interleaved per repeat:

- save: ``checkpoints.save`` (arrays, progress record with the config,
  digests) against the same orbax save without the digests, each until
  written (``wait_until_finished``);
- restore: ``checkpoints.restore`` (reads the record and its digest, checks
  the settings, restores the arrays and verifies every leaf) against one
  orbax restore of the arrays and the record;
- digests: ``checkpoints.array_digests`` of the arrays alone.

Medians over the repeats, in milliseconds, with the ratios.
Run: ``python benchmarks/checkpoint_digests.py [--presets conv7,f1]
[--repeats 20]`` (from the repository root).
"""

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import orbax.checkpoint as ocp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import checkpoints  # noqa: E402  pylint: disable=g-import-not-at-top
from experiments import configs  # noqa: E402  pylint: disable=g-import-not-at-top
from experiments import models  # noqa: E402  pylint: disable=g-import-not-at-top
from experiments import state as state_lib  # noqa: E402  pylint: disable=g-import-not-at-top
from experiments import steps  # noqa: E402  pylint: disable=g-import-not-at-top

IMAGE_SHAPE = (28, 28, 1)  # MNIST, as both presets train on.


def _carried(config) -> checkpoints.Carried:
  """A run's carried arrays at its start, as ``train`` builds them."""
  setup = state_lib.initial_run(config, [config.seed], num_classes=10,
                                image_shape=IMAGE_SHAPE, steps_per_epoch=100)
  state = steps.stack_seeds(setup.states)
  kernel_path = models.first_kernel_path(steps.take_seed(state.params, 0))
  return checkpoints.Carried(
      state=state, best_params=state.params,
      best_batch_stats=state.batch_stats,
      previous_kernel=models.get_leaf(state.params, kernel_path))


def _plain_save(manager, epoch, carried, seeds, progress, config):
  """``checkpoints.save`` without the digests."""
  manager.save(epoch, args=ocp.args.Composite(
      arrays=ocp.args.StandardSave(carried._asdict()),
      progress=ocp.args.JsonSave({
          'epoch': epoch, 'seeds': list(seeds),
          'runs': [seed_progress.to_json() for seed_progress in progress],
          'config': json.loads(config.to_json()), 'resumed': []})))


def _plain_restore(manager, like):
  """One orbax restore of the arrays and the record, nothing verified."""
  return manager.restore(manager.latest_step(), args=ocp.args.Composite(
      arrays=ocp.args.StandardRestore(jax.tree.map(
          ocp.utils.to_shape_dtype_struct, like._asdict())),
      progress=ocp.args.JsonRestore()))


def _time(function) -> float:
  start = time.perf_counter()
  jax.block_until_ready(function())
  return (time.perf_counter() - start) * 1e3


def _measure(preset: str, repeats: int, root: pathlib.Path) -> dict:
  config = configs.get(preset).run_config('laperm')
  carried, seeds = _carried(config), [config.seed]
  progress = [checkpoints.Progress()]
  times = {key: [] for key in ('plain save', 'digest save', 'plain restore',
                               'digest restore', 'digests')}
  workdirs = {'plain': root / preset / 'plain',
              'digest': root / preset / 'digest'}
  with checkpoints.manager(workdirs['plain']) as plain, checkpoints.manager(
      workdirs['digest']) as digest:
    for epoch in range(1, repeats + 1):
      times['plain save'].append(_time(lambda: (_plain_save(
          plain, epoch, carried, seeds, progress, config),
                                                plain.wait_until_finished())))
      times['digest save'].append(_time(lambda: (checkpoints.save(
          digest, epoch, carried, seeds, progress, config),
                                                 digest.wait_until_finished())))
      times['plain restore'].append(_time(
          lambda: _plain_restore(plain, carried).arrays))
      times['digest restore'].append(_time(lambda: checkpoints.restore(
          digest, carried, seeds, config, workdirs['digest']).carried))
      times['digests'].append(_time(
          lambda: checkpoints.array_digests(carried._asdict())))
  megabytes = sum(leaf.nbytes for leaf in jax.tree.leaves(carried)) / 2**20
  return {'MiB': megabytes,
          **{key: statistics.median(values) for key, values in times.items()}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--presets', default='conv7,f1')
  parser.add_argument('--repeats', type=int, default=20)
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f'device: {device.platform} ({device.device_kind}), jax '
        f'{jax.__version__}, orbax {ocp.__version__}, load average '
        f'{" ".join(f"{load:.2f}" for load in os.getloadavg())}; '
        f'medians of {args.repeats}, ms')
  print(f'{"preset":<7}{"MiB":>7}{"save":>9}{"+digests":>10}{"ratio":>7}'
        f'{"restore":>9}{"+verify":>9}{"ratio":>7}{"digests alone":>15}')
  with tempfile.TemporaryDirectory() as root:
    for preset in args.presets.split(','):
      row = _measure(preset, args.repeats, pathlib.Path(root))
      print(f'{preset:<7}{row["MiB"]:>7.2f}{row["plain save"]:>9.1f}'
            f'{row["digest save"]:>10.1f}'
            f'{row["digest save"] / row["plain save"]:>7.2f}'
            f'{row["plain restore"]:>9.1f}{row["digest restore"]:>9.1f}'
            f'{row["digest restore"] / row["plain restore"]:>7.2f}'
            f'{row["digests"]:>15.2f}')
  print(f'load average after: '
        f'{" ".join(f"{load:.2f}" for load in os.getloadavg())}')


if __name__ == '__main__':
  main()
