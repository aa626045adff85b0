"""Data-parallel training (``--devices``): same results as one device.

The multi-device run needs 8 devices, and
``--xla_force_host_platform_device_count`` only acts before JAX initializes,
so this module runs itself as a script in a subprocess with the flag set (8
host CPU devices). The script trains ``demo --quick``'s LaPerm run (MLP on
the embedded digits, 16 steps, 4 syncs; monitor off) on 1 device and on all
8, stops an 8-device run after one epoch and resumes it on 8 devices and
on 1, and prints what the tests below check as JSON. (Here the 8-device results happen to equal the
1-device ones bitwise; the tests allow for a different reduction order.)
"""

import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from experiments import cli
from experiments import configs
from experiments import data
from experiments import models
from experiments import parallel
from experiments import state as state_lib
from experiments import train

DEVICES = 8


@pytest.fixture(scope='module')
def runs(run_on_host_devices, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('data_parallel')
  return run_on_host_devices(pathlib.Path(__file__).resolve(), str(workdir))


def test_runs_on_eight_devices_with_replicated_state(runs):
  assert runs['device_count'] == DEVICES
  assert runs['config_devices'] == {'one': 1, 'all': 0}
  assert runs['state_devices']['one'] == 1
  assert runs['state_devices']['all'] == DEVICES
  assert runs['state_fully_replicated']['all']


def test_same_results_as_one_device_up_to_reduction_order(runs):
  one, eight = runs['history']['one'], runs['history']['all']
  assert [h['epoch'] for h in eight] == [h['epoch'] for h in one] == [1, 2]
  for a, b in zip(one, eight):
    for key in ('train_loss', 'val_loss'):
      assert abs(a[key] - b[key]) <= 1e-3 * max(1.0, abs(a[key])), (key, a, b)
    for key in ('train_accuracy', 'val_accuracy'):
      assert abs(a[key] - b[key]) <= 0.02, (key, a, b)
  assert abs(runs['test_accuracy']['one'] - runs['test_accuracy']['all']) <= (
      0.02)


def test_eight_device_checkpoint_resumes_on_one_device(runs):
  assert runs['state_devices']['cross'] == 1
  cross, eight = runs['history']['cross'], runs['history']['all']
  assert cross[0] == eight[0]  # The checkpointed epoch.
  assert [h['epoch'] for h in cross] == [1, 2]
  for key in ('train_loss', 'val_loss'):
    assert abs(cross[1][key] - eight[1][key]) <= 1e-3 * max(
        1.0, abs(eight[1][key])), key


def test_kernels_stay_exact_permutations_of_their_initial_values(runs):
  for name in ('one', 'all'):
    assert runs['exact_permutation'][name], name
    assert runs['kernels_moved'][name], name


def test_resumed_eight_device_run_equals_uninterrupted_bitwise(runs):
  assert runs['resume_bitwise'] == [], runs['resume_bitwise']
  assert runs['resume_history_equal']


def test_devices_option():
  preset = configs.get('demo')

  def devices(*argv):
    args = cli.parser().parse_args(['demo', *argv])
    return {c.devices for c in cli.run_configs(preset, args).values()}

  assert devices() == {1}
  assert devices('--devices', 'all') == devices('--devices', '0') == {0}
  assert devices('--devices', '4') == {4}
  assert devices('--set', 'devices=2') == {2}
  with pytest.raises(SystemExit):
    cli.parser().parse_args(['demo', '--devices', 'many'])


def test_unavailable_devices_stop_the_command_line(tmp_path):
  too_many = str(len(jax.local_devices()) + 1)
  with pytest.raises(SystemExit, match='available'):
    cli.main(['demo', '--quick', '--devices', too_many,
              '--out', str(tmp_path)])


def test_make_mesh():
  assert parallel.make_mesh(1) is None
  count = len(jax.local_devices())
  mesh = parallel.make_mesh('all')
  assert mesh is None if count == 1 else mesh.size == count
  with pytest.raises(ValueError, match='available'):
    parallel.make_mesh(count + 1)
  with pytest.raises(ValueError, match='devices'):
    parallel.make_mesh(-1)


# ---------------------------------------------------------------------------
# The subprocess.


def _main(workdir: pathlib.Path) -> None:
  """Trains the runs; prints what the tests check as JSON."""
  jax.config.update('jax_compilation_cache_dir', str(workdir / 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  import ml_collections  # pylint: disable=import-outside-toplevel
  import laperm_jax as lp  # pylint: disable=import-outside-toplevel

  preset = configs.get('demo')
  config = {}
  for name, devices in (('one', '1'), ('all', 'all')):
    args = cli.parser().parse_args(['demo', '--quick', '--runs', 'laperm',
                                    '--devices', devices, '--no-progress',
                                    '--set', 'monitor=False'])
    config[name] = cli.run_configs(preset, args)['laperm']
  splits, num_classes, image_shape = data.load_splits(config['one'])

  def run(name, run_config, resume=False):
    return train.train_and_evaluate(run_config, splits, num_classes,
                                    workdir / name, name=name, resume=resume)

  results = {name: run(name, config[name]) for name in config}
  stopped = ml_collections.ConfigDict(config['all'].to_dict())
  stopped.epochs = 1
  run('resumed', stopped)
  resumed = run('resumed', config['all'], resume=True)
  # Checkpointed on 8 devices, resumed on 1.
  run('cross', stopped)
  cross = run('cross', config['one'], resume=True)

  initial = state_lib.create_train_state(
      config['one'], models.create(config['one'].model, num_classes),
      image_shape, 1).params
  out = {'device_count': jax.device_count(),
         'config_devices': {name: c.devices for name, c in config.items()},
         'history': {name: r.history for name, r in results.items()},
         'test_accuracy': {name: r.test_accuracy
                           for name, r in results.items()},
         'state_devices': {}, 'state_fully_replicated': {},
         'exact_permutation': {}, 'kernels_moved': {}}
  for name, result in results.items():
    leaves = jax.tree.leaves((result.state.params, result.state.opt_state))
    out['state_devices'][name] = len(leaves[0].sharding.device_set)
    out['state_fully_replicated'][name] = all(
        leaf.sharding.is_fully_replicated for leaf in leaves)
    exact, moved = True, False
    synced = lp.synchronize(result.state.params, result.state.opt_state)
    for tree in (result.best_params, synced):
      for leaf, start in zip(jax.tree.leaves(tree), jax.tree.leaves(initial)):
        if leaf.ndim < 2:
          continue
        vectors = np.asarray(leaf).reshape(-1, leaf.shape[-1])
        start = np.asarray(start).reshape(-1, leaf.shape[-1])
        exact &= np.array_equal(np.sort(vectors, axis=0),
                                np.sort(start, axis=0))
        moved |= not np.array_equal(vectors, start)
    out['exact_permutation'][name] = bool(exact)
    out['kernels_moved'][name] = bool(moved)

  uninterrupted = results['all']
  mismatches = []
  for field in ('params', 'opt_state', 'batch_stats'):
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(
            getattr(resumed.state, field))[0],
        jax.tree.leaves(getattr(uninterrupted.state, field))):
      if not np.array_equal(np.asarray(a), np.asarray(b)):
        mismatches.append(field + jax.tree_util.keystr(path))
  for (path, a), b in zip(
      jax.tree_util.tree_flatten_with_path(resumed.best_params)[0],
      jax.tree.leaves(uninterrupted.best_params)):
    if not np.array_equal(np.asarray(a), np.asarray(b)):
      mismatches.append('best_params' + jax.tree_util.keystr(path))
  out['resume_bitwise'] = mismatches
  out['resume_history_equal'] = resumed.history == uninterrupted.history
  out['history']['cross'] = cross.history
  out['state_devices']['cross'] = len(
      jax.tree.leaves(cross.state.params)[0].sharding.device_set)
  print(json.dumps(out))


if __name__ == '__main__':
  _main(pathlib.Path(sys.argv[1]))
