"""Train-step (and evaluation) time of a preset's real loop, variants side by side.

Builds a preset's train steps as ``experiments.train`` runs them
(``experiments.steps``: batches gathered on the device, augmentation, the
loop of ``steps_per_call`` steps per jitted call) for each value of
``--vary KEY=V1,V2,...``, compiles each, then times one epoch of ``--steps``
steps per variant, the variants interleaved, ``--repeats`` times. Prints
each variant's compilation time (the first call) and median ms per step,
their ratio to the first variant, and the load average before and after.
``--evaluate B1,B2,...`` also times the evaluation of 10,000 images in
batches of each size, per variant.

The one step timer of the project. Commands behind docs/performance.md:

  # Conv7 on CPU: whole batches against slices of 10 images, and evaluation
  python benchmarks/train_step.py conv7 --vary model.batch_chunk=0,10 \\
      --steps 44 --evaluate 50,100,1000
  # F1's loop of steps per call against one step per call
  python benchmarks/train_step.py f1 --vary steps_per_call=50,1 --steps 400 \\
      --dataset idx:/usr/share/datasets/fashion-mnist
  # How long a conv run takes: Conv4 with Adam, no augmentation
  python benchmarks/train_step.py conv7 --set model.name=conv4 \\
      --set optimizer.name=adam --set augment.rotation=0.0 --steps 10

``--dataset random`` (the default) trains on random images of the preset's
input shape (``--image-shape``, 28x28x1); any ``--dataset`` of ``python -m
experiments`` trains on that data's training split.

Run from the repository root.
"""

import argparse
import itertools
import os
import pathlib
import statistics
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import configs  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import optimizers  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import state as state_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import steps as steps_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

EVAL_IMAGES = 10_000


def _load() -> str:
  return ', '.join(f'{x:.2f}' for x in os.getloadavg())


def _variants(varies: list[str]) -> list[list[str]]:
  """Every combination of the ``--vary KEY=V1,V2`` values, as ``KEY=V``."""
  axes = []
  for vary in varies:
    key, _, values = vary.partition('=')
    axes.append([f'{key}={value}' for value in values.split(',')])
  return [list(combination) for combination in itertools.product(*axes)]


def _config(args: argparse.Namespace,
            variant: list[str]) -> ml_collections.ConfigDict:
  """The preset's first run with ``--set`` and then the variant's values."""
  preset = configs.get(args.preset)
  config = preset.run_config(next(iter(preset.runs)))
  config.update_from_flattened_dict(
      configs.parse_overrides(config, args.set + variant))
  return config


def _train_data(args: argparse.Namespace, config: ml_collections.ConfigDict,
                count: int) -> tuple[jax.Array, jax.Array, int]:
  """Training images and labels (at least ``count``), and the classes."""
  if args.dataset == 'random':
    rng = np.random.default_rng(0)
    shape = tuple(int(size) for size in args.image_shape.split(','))
    return (jax.device_put(rng.random((count, *shape), np.float32)),
            jax.device_put(rng.integers(0, 10, count).astype(np.int32)), 10)
  config.dataset = args.dataset
  configs.fit_validation(config, data.train_size(config.dataset))
  splits, num_classes, _ = data.load_splits(config)
  images, labels = jax.device_put(splits['train'])
  return images, labels, num_classes


class _Variant(NamedTuple):
  """One variant's compiled epoch, its state and what it was timed at."""

  name: str
  epoch: Callable[..., Any]
  model: Any
  image_shape: tuple[int, ...]
  steps: int
  first_call_s: float


def _variant(name, config, args, images, labels, num_classes
             ) -> tuple[_Variant, Any]:
  """The variant's epoch function, compiled by a first call, and its state."""
  steps = min(args.steps, len(labels) // config.batch_size)
  run = state_lib.initial_run(config, [config.seed], num_classes=num_classes,
                              image_shape=images.shape[1:],
                              steps_per_epoch=steps)
  model, state = run.model, steps_lib.stack_seeds(run.states)
  draw = steps_lib.make_draw(config, steps)
  train = steps_lib.make_train(config, model)

  def epoch(state, key):
    order, step_keys = draw(key[None], len(labels))
    return train(state, images, labels, order, step_keys, 0, steps)[0]

  start = time.perf_counter()
  state = jax.block_until_ready(epoch(state, jax.random.key(0)))
  return _Variant(name, epoch, model, images.shape[1:], steps,
                  time.perf_counter() - start), state


def _time_epochs(variants: list[_Variant], states: list[Any],
                 repeats: int) -> list[float]:
  """Per variant, the median ms per step of its epochs, interleaved."""
  times = [[] for _ in variants]
  for repeat in range(repeats):
    for index, variant in enumerate(variants):
      start = time.perf_counter()
      states[index] = jax.block_until_ready(
          variant.epoch(states[index], jax.random.key(repeat + 1)))
      times[index].append((time.perf_counter() - start) / variant.steps * 1e3)
  return [statistics.median(values) for values in times]


def _time_evaluation(variant: _Variant, state: Any,
                     batch_size: int) -> tuple[float, float]:
  """Seconds to evaluate random images: the first call, then the median."""
  rng = np.random.default_rng(1)
  images = rng.random((EVAL_IMAGES, *variant.image_shape), np.float32)
  labels = rng.integers(0, 10, EVAL_IMAGES).astype(np.int32)
  evaluate = steps_lib.make_evaluate(variant.model, batch_size)
  params = optimizers.train_params(state.params)
  times = []
  for _ in range(4):
    start = time.perf_counter()
    jax.block_until_ready(evaluate(params, state.batch_stats, images, labels))
    times.append(time.perf_counter() - start)
  return times[0], statistics.median(times[1:])


def main() -> None:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('preset', help='a preset of python -m experiments')
  parser.add_argument('--vary', action='append', default=[],
                      metavar='KEY=V1,V2', help='config values to compare')
  parser.add_argument('--set', action='append', default=[],
                      metavar='KEY=VALUE', help='config override for all')
  parser.add_argument('--dataset', default='random')
  parser.add_argument('--image-shape', default='28,28,1')
  parser.add_argument('--steps', type=int, default=44)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--evaluate', metavar='B1,B2',
                      help='also time evaluations in batches of these sizes')
  args = parser.parse_args()
  print(f'device: {jax.devices()[0].device_kind}, jax {jax.__version__}; '
        f'{args.preset} on {args.dataset}; load average before: {_load()}',
        flush=True)
  variants, states = [], []
  for overrides in _variants(args.vary):
    config = _config(args, overrides)
    images, labels, num_classes = _train_data(
        args, config, args.steps * config.batch_size)
    variant, state = _variant(', '.join(overrides) or args.preset, config,
                              args, images, labels, num_classes)
    variants.append(variant)
    states.append(state)
  medians = _time_epochs(variants, states, args.repeats)
  for variant, median in zip(variants, medians):
    print(f'{variant.name}: {median:.2f} ms/step ({median / medians[0]:.3f}x '
          f'the first), {variant.steps} steps per epoch, first call '
          f'{variant.first_call_s:.1f} s')
  for variant, state in zip(variants, states):
    for size in [int(size) for size in (args.evaluate or '').split(',')
                 if size]:
      first_s, median_s = _time_evaluation(variant, state, size)
      print(f'{variant.name}: evaluation of {EVAL_IMAGES:,} images in batches '
            f'of {size}: {median_s:.2f} s (first call {first_s:.2f} s)')
  print(f'load average after: {_load()}')


if __name__ == '__main__':
  main()
