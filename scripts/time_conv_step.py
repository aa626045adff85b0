"""Times the jitted train steps of a conv preset on a few batches.

Prints the first epoch's time (compilation included) and seconds per step, for choosing how long the conv
runs of docs/RESULTS.md can be on this machine:

  python scripts/time_conv_step.py MODEL OPTIMIZER AUGMENT [STEPS]
  python scripts/time_conv_step.py conv7 adam 0 10   # Conv7, Adam, no augmentation

MODEL: conv7, conv2, conv4, ... (on the conv7 preset); OPTIMIZER: laperm,
adam, lookahead; AUGMENT: 1 or 0. Random 28x28 inputs; times one warm call
of the epoch of STEPS steps (default 10), after a first call.
"""
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import ml_collections
import numpy as np

from experiments import configs, models
from experiments import state as state_lib
from experiments import steps as steps_lib


def main(model_name, optimizer, augment, steps=10):
  config = ml_collections.ConfigDict(configs.get('conv7').config.to_dict())
  config.model.name = model_name
  config.optimizer.name = optimizer
  if not augment:
    config.augment.rotation = config.augment.shift = config.augment.zoom = 0.0
  n = steps * config.batch_size
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.normal(size=(n, 28, 28, 1)).astype(np.float32))
  labels = jax.device_put(rng.integers(0, 10, n).astype(np.int32))
  model = models.create(config.model, 10)
  state = steps_lib.stack_seeds(  # One seed.
      [state_lib.create_train_state(config, model, (28, 28, 1), steps)])
  draw = steps_lib.make_draw(config, steps)
  train_steps = steps_lib.make_train(config, model)

  def epoch(state, key):
    order, step_keys = draw(key[None], n)
    return train_steps(state, images, labels, order, step_keys, 0, steps)[0]

  start = time.perf_counter()
  state = jax.block_until_ready(epoch(state, jax.random.key(0)))
  compile_s = time.perf_counter() - start  # The first epoch, compilation included.
  start = time.perf_counter()
  state = jax.block_until_ready(epoch(state, jax.random.key(1)))
  step_s = (time.perf_counter() - start) / steps
  print(f'{model_name} {optimizer} augment={augment}: first epoch {compile_s:.1f} s, '
        f'{step_s * 1000:.0f} ms/step, {step_s * 55000 / 50 / 60:.1f} min per '
        '55k-image epoch', flush=True)


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2], sys.argv[3] == '1',
       int(sys.argv[4]) if len(sys.argv) > 4 else 10)
