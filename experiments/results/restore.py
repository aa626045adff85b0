"""A finished run, rebuilt from its files: initial weights and last checkpoint.

A run's folder holds, per seed, a ``metrics.json`` with the run's full config
and its orbax checkpoints. The initial weights are not stored: every draw
comes from the config's seed, so the run is rebuilt from its config as
training built it, and the last checkpoint is restored into that shape.
"""

import json
import pathlib
from typing import Any, NamedTuple, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp

from experiments import checkpoints
from experiments import data
from experiments import models
from experiments import monitor
from experiments import optimizers
from experiments import state as state_lib
from experiments import steps

IMAGE_SHAPE = (28, 28, 1)  # Fashion-MNIST.
NUM_CLASSES = 10
BYTES = 256  # A byte-level language model's classes.


class Restored(NamedTuple):
  """A run's seeds: their configs, initial weights and last checkpoint.

  Attributes:
    configs: Per seed, the run's config (its ``seed`` that seed's).
    layout: LaPerm's weight-vector layout of the run (None: the default).
    initials: Per seed, the initial params (``optimizers.train_params``).
    arrays: Per seed, the checkpoint's arrays: a ``checkpoints.Carried`` as
      a dict (``state``, ``best_params``, ...).
    step: The checkpoint's step.
  """

  configs: list[ml_collections.ConfigDict]
  layout: Optional[Any]
  initials: list[Any]
  arrays: list[dict[str, Any]]
  step: int


def read_metrics(run_dir: pathlib.Path) -> dict[str, Any]:
  """The ``metrics.json`` of a run's folder (or of one seed's)."""
  return json.loads((run_dir / 'metrics.json').read_text())


def seed_dirs(run_dir: pathlib.Path) -> list[pathlib.Path]:
  """Where a run's metrics are: itself, or one ``seed-S`` folder per seed."""
  if (run_dir / 'metrics.json').exists():
    return [run_dir]
  return sorted(run_dir.glob('seed-*/'),
                key=lambda path: int(path.name.removeprefix('seed-')))


def _seed_configs(folders: list[pathlib.Path]
                  ) -> list[ml_collections.ConfigDict]:
  """Each seed's config, from its ``metrics.json``.

  Raises:
    ValueError: A seed's config differs from the first seed's in more than
      its seed: the files are not those of one run.
  """
  configs = [read_metrics(folder)['config'] for folder in folders]
  first = configs[0]
  for folder, config in zip(folders[1:], configs[1:]):
    differing = sorted(key for key in config.keys() | first.keys()
                       if key != 'seed' and config.get(key) != first.get(key))
    if differing:
      raise ValueError(
          f'{folder}/metrics.json: config differs from {folders[0]}\'s in '
          f'{differing}; the seeds of a run share every setting but seed.')
  return [ml_collections.ConfigDict(config) for config in configs]


def _rebuild(configs: list[ml_collections.ConfigDict]
             ) -> tuple[Optional[Any], list[state_lib.TrainState]]:
  """The run's layout and each seed's initial train state, rebuilt by
  ``state.initial_run`` as training built them (the seeds' configs differ
  in ``seed`` alone): on Fashion-MNIST, or on a ``text:`` corpus."""
  text = data.is_text(configs[0].dataset)
  run = state_lib.initial_run(
      configs[0], [config.seed for config in configs],
      num_classes=BYTES if text else NUM_CLASSES,
      image_shape=(configs[0].sequence_length,) if text else IMAGE_SHAPE,
      # Shapes only: the schedule's length is not stored.
      steps_per_epoch=1)
  return run.layout, run.states


def _carried(config: ml_collections.ConfigDict,
             state: state_lib.TrainState) -> dict[str, Any]:
  """What a checkpoint holds for one seed, at the start of training."""
  eval_params = optimizers.eval_params(state.params, state.opt_state)
  return checkpoints.Carried(
      state=state, best_params=eval_params,
      best_batch_stats=state.batch_stats,
      previous_kernel=tuple(
          models.get_leaf(eval_params, path)
          for path in monitor.kernel_paths(config, eval_params)))._asdict()


def restore(run_dir: pathlib.Path) -> Restored:
  """Rebuilds a run's seeds from their configs and restores its checkpoint.

  A checkpoint holds every array with a leading seed axis: the seeds
  trained together, in the order of their ``metrics.json``, or one seed in
  each ``seed-S`` folder when they trained one after another.

  Args:
    run_dir: The run's folder (``OUT/RUN`` of ``python -m experiments``).

  Returns:
    The run's seeds, in seed order.

  Raises:
    ValueError: The seeds' configs differ in more than their seed.
  """
  folders = seed_dirs(run_dir)
  configs = _seed_configs(folders)
  layout, states = _rebuild(configs)
  carried = [_carried(config, state) for config, state in zip(configs, states)]
  if folders == [run_dir] or not all(
      (folder / 'checkpoints').is_dir() for folder in folders):
    arrays, step = _restore_checkpoint(run_dir, carried)
  else:  # Seeds trained one after another, each in its seed-S folder.
    arrays = []
    for folder, seed_carried in zip(folders, carried):
      seed_arrays, step = _restore_checkpoint(folder, [seed_carried])
      arrays += seed_arrays
  initials = [optimizers.train_params(state.params) for state in states]
  return Restored(configs, layout, initials, arrays, step)


def _restore_checkpoint(directory: pathlib.Path, carried: list[dict]
                        ) -> tuple[list[dict[str, Any]], int]:
  """The latest checkpoint in ``directory`` of seeds shaped like
  ``carried`` (a leading seed axis), one tree per seed, and its step."""
  stacked = steps.stack_seeds(carried)
  with ocp.CheckpointManager((directory / 'checkpoints').absolute()) as manager:
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(
            jax.tree.map(ocp.utils.to_shape_dtype_struct, stacked))))
  return [jax.tree.map(lambda leaf, index=index: leaf[index], restored.arrays)
          for index in range(len(carried))], step
