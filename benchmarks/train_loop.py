"""Time per train step of a preset's loop: steps in loops of a call, or one each.

Builds a preset's train steps as `experiments.train` runs them (`experiments.steps`) and times
`train(state, ..., 0, steps)` with `steps_per_call` = the preset's (a loop of
up to that many steps per jitted call) and 1 (one jitted call per step),
interleaved, after a warm-up call that compiles both. Prints the median
milliseconds per step of each and their ratio, and the load average.

Run from the repository root: `python benchmarks/train_loop.py [--preset f1]
[--dataset idx:/usr/share/datasets/fashion-mnist] [--steps 400]
[--repeats 5]`.
"""

import argparse
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import configs  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import state as state_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import steps as steps_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def _load() -> str:
  return ', '.join(f'{x:.2f}' for x in os.getloadavg())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--preset', default='f1')
  parser.add_argument('--dataset', default='digits')
  parser.add_argument('--steps', type=int, default=400)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  config = ml_collections.ConfigDict(
      configs.get(args.preset).config.to_dict())
  config.dataset = args.dataset
  if args.dataset == 'digits':
    config.validation_size = 300
  splits, num_classes, image_shape = data.load_splits(config)
  images, labels = jax.device_put(splits['train'])
  steps_per_epoch = len(splits['train'].labels) // config.batch_size
  steps = min(args.steps, steps_per_epoch)
  model = models.create(config.model, num_classes)
  runs = {}
  for steps_per_call in sorted({config.steps_per_call, 1}, reverse=True):
    run_config = ml_collections.ConfigDict(config.to_dict())
    run_config.steps_per_call = steps_per_call
    state = steps_lib.stack_seeds([state_lib.create_train_state(
        run_config, model, image_shape, steps_per_epoch)])
    draw = steps_lib.make_draw(run_config, steps_per_epoch)
    train_steps = steps_lib.make_train(run_config, model, together=True)
    order, step_keys = draw(jnp.stack([jax.random.key(0)]), len(labels))
    jax.block_until_ready(
        train_steps(state, images, labels, order, step_keys, 0, steps))
    runs[steps_per_call] = (train_steps, state, order, step_keys, [])
  print(f'{args.preset} on {args.dataset}: {steps} steps per call of train; '
        f'load average before {_load()}')
  for _ in range(args.repeats):
    for train_steps, state, order, step_keys, times in runs.values():
      start = time.perf_counter()
      jax.block_until_ready(
          train_steps(state, images, labels, order, step_keys, 0, steps))
      times.append((time.perf_counter() - start) / steps)
  median = {key: float(np.median(run[-1])) for key, run in runs.items()}
  for steps_per_call, seconds in median.items():
    print(f'steps_per_call {steps_per_call:>3}: {seconds * 1e3:.3f} ms/step, '
          f'{median[1] / seconds:.2f}x one step per call')
  print(f'load average after {_load()}')


if __name__ == '__main__':
  main()
