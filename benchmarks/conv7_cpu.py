"""Conv7 on CPU: its train step and evaluation, whole batches against slices.

Times, interleaved in one process, (1) the preset's jitted LaPerm train step
(batch 50, augmentation, steps gathered on the device as the real loop does)
with ``model.batch_chunk`` 0 (whole batches) and 10 (``Conv_1``-``Conv_4`` on
slices of 10 images, the preset), and (2) the evaluation of 10,000 random
images for each ``batch_chunk`` and evaluation batch size. Prints medians in
ms per step and seconds per 10,000 images, with the load average.

Run from the repository root: ``python benchmarks/conv7_cpu.py [--steps 44]
[--repeats 5]``.
"""

import argparse
import os
import pathlib
import statistics
import sys
import time

import jax
import ml_collections
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import configs  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import state as state_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import steps as steps_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

CHUNKS = (0, 10)
EVAL_BATCH_SIZES = (50, 100, 1000)


def _load() -> str:
  return ', '.join(f'{x:.2f}' for x in os.getloadavg())


def _median_ms_per_step(epochs, steps, repeats):
  """Runs each chunk's epoch in turn; returns median ms per step by chunk."""
  times = {chunk: [] for chunk in epochs}
  for repeat in range(repeats):
    for chunk, (epoch, state) in epochs.items():
      start = time.perf_counter()
      state = jax.block_until_ready(epoch(state, jax.random.key(repeat + 1)))
      times[chunk].append((time.perf_counter() - start) / steps * 1000)
      epochs[chunk] = (epoch, state)
  return {chunk: statistics.median(values) for chunk, values in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=44)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  print(f'load before: {_load()}')
  config = ml_collections.ConfigDict(configs.get('conv7').config.to_dict())
  config.optimizer.name = 'laperm'
  rng = np.random.default_rng(0)
  count = args.steps * config.batch_size
  images = jax.device_put(rng.random((count, 28, 28, 1), np.float32))
  labels = jax.device_put(rng.integers(0, 10, count).astype(np.int32))
  draw = steps_lib.make_draw(config, args.steps)
  epochs = {}
  for chunk in CHUNKS:
    model = models.Conv7(batch_chunk=chunk)
    train = steps_lib.make_train(config, model)

    def epoch(state, key, train=train):
      order, step_keys = draw(key[None], count)
      return train(state, images, labels, order, step_keys, 0,
                   args.steps)[0]

    state = steps_lib.stack_seeds([state_lib.create_train_state(
        config, model, (28, 28, 1), args.steps)])
    epochs[chunk] = (epoch, jax.block_until_ready(
        epoch(state, jax.random.key(0))))  # Compiles.
  for chunk, ms in _median_ms_per_step(epochs, args.steps,
                                       args.repeats).items():
    print(f'train step, batch_chunk {chunk:2d}: {ms:6.1f} ms')

  test_images = rng.random((10000, 28, 28, 1), np.float32)
  test_labels = rng.integers(0, 10, 10000).astype(np.int32)
  evaluations = {}
  for chunk in CHUNKS:
    model = models.Conv7(batch_chunk=chunk)
    params = jax.tree.map(lambda leaf: leaf[None], jax.jit(model.init)(
        jax.random.key(0), test_images[:1])['params'])
    for batch_size in EVAL_BATCH_SIZES:
      evaluate = steps_lib.make_evaluate(model, batch_size)
      start = time.perf_counter()
      jax.block_until_ready(evaluate(params, None, test_images, test_labels))
      evaluations[chunk, batch_size] = (evaluate, params,
                                        time.perf_counter() - start, [])
  for _ in range(max(2, args.repeats // 2)):
    for evaluate, params, _, times in evaluations.values():
      start = time.perf_counter()
      jax.block_until_ready(evaluate(params, None, test_images, test_labels))
      times.append(time.perf_counter() - start)
  for (chunk, batch_size), (_, _, first, times) in evaluations.items():
    print(f'evaluation of 10,000 images, batch_chunk {chunk:2d}, batches of '
          f'{batch_size:4d}: {statistics.median(times):5.2f} s '
          f'(first call, compilation included: {first:5.2f} s)')
  print(f'load after: {_load()}')


if __name__ == '__main__':
  main()
