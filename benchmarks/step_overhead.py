"""Cost of LaPerm in a full jitted train step, against Adam and Lookahead.

Trains a model with `adam`, `laperm(adam, k)` and `optax.lookahead(adam)`,
each step jitted as users run it: plain, and with `donate_argnums` on params,
optimizer state and BatchNorm statistics (as the Flax examples do). Models:

- `mlp`: 784-2048-2048-10 ReLU, batch 128 (5.8M parameters: the optimizer's
  share of the step is large, the hardest case for the overhead);
- `conv7`: the paper's MNIST Conv7 (Flax, dropout), 28x28x1, batch 50;
- `conv13`: the paper's CIFAR-10 Conv13 (Flax, BatchNorm, dropout, 15M
  parameters), 32x32x3, batch 50.

Blocks of steps of all optimizers, plain and donated, are interleaved, so
changes in machine load hit all alike; the load average is printed before
and after (on a loaded machine the ratios hold better than the times).
Reports median times per step, side by side for plain and donated jit, and
relative to Adam with the same jit:

- `adam + carry`: Adam whose state also carries a copy of the params, as
  LaPerm's carries the sorted initial weights: without donation, jit
  returns a fresh copy of every array that passes through it, so this is
  the floor of a plain LaPerm step;
- `non-sync`: a LaPerm step that does not sync (the sync period is huge);
- `sync`: a LaPerm step that syncs (sync period 1);
- `amortized k=K`: `((K - 1) * non-sync + sync) / K`;
- `cpu vs`: the same ratio in CPU time of the process (all its threads), which
  other processes on the machine disturb less than wall time;
- page faults per step (Linux minor faults), which expose fresh memory the
  runtime maps for each execution.

Run from the repository root: `python benchmarks/step_overhead.py
[--model mlp|conv7|conv13] [--batch N] [--repeats 10] [--period 1000]`.
"""

import argparse
import os
import pathlib
import resource
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import laperm_jax as lp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import models  # pylint: disable=g-import-not-at-top,wrong-import-position


class Model(NamedTuple):
  """What a train step needs: weights, other variables, a loss, a batch."""
  params: Any
  batch_stats: Any  # BatchNorm statistics ({} where the model has none).
  loss: Callable[..., tuple[jax.Array, Any]]  # (params, stats, x, y, key)
  images: jax.Array
  labels: jax.Array
  description: str


def _mlp_params(key, widths):
  params = {}
  for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
    key, sub = jax.random.split(key)
    limit = float(np.sqrt(6.0 / fan_in))
    params[f'dense{i}'] = {
        'kernel': jax.random.uniform(sub, (fan_in, fan_out), minval=-limit,
                                     maxval=limit),
        'bias': jnp.zeros(fan_out)}
  return params


def _mlp_loss(params, batch_stats, images, labels, key):
  del key  # No dropout.
  x = images
  layers = len(params)
  for i in range(layers):
    x = x @ params[f'dense{i}']['kernel'] + params[f'dense{i}']['bias']
    if i < layers - 1:
      x = jax.nn.relu(x)
  loss = optax.softmax_cross_entropy_with_integer_labels(x, labels).mean()
  return loss, batch_stats


def mlp(batch: int) -> Model:
  widths = (784, 2048, 2048, 10)
  key = jax.random.key(0)
  params = _mlp_params(key, widths)
  return Model(params, {}, _mlp_loss, jax.random.normal(key, (batch, 784)),
               jnp.arange(batch) % 10, f'MLP {list(widths)}, batch {batch}')


def flax_model(name: str, image_shape: tuple[int, ...], batch: int) -> Model:
  """A model of `experiments.models`, trained as the experiments train it."""
  module = models.create(ml_collections.ConfigDict({'name': name}), 10)
  key = jax.random.key(0)
  images = jax.random.normal(key, (batch, *image_shape))
  variables = module.init(key, images[:1])

  def loss(params, batch_stats, images, labels, key):
    logits, updated = module.apply(
        {'params': params, 'batch_stats': batch_stats}, images, train=True,
        rngs={'dropout': key}, mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()
    return loss, updated['batch_stats']

  return Model(variables['params'], variables.get('batch_stats', {}), loss,
               images, jnp.arange(batch) % 10,
               f'{name} {image_shape}, batch {batch}')


MODELS = {
    'mlp': lambda batch: mlp(batch or 128),
    'conv7': lambda batch: flax_model('conv7', (28, 28, 1), batch or 50),
    'conv13': lambda batch: flax_model('conv13', (32, 32, 3), batch or 50),
}


def _train_step(model, tx, donate):

  def step(params, opt_state, batch_stats, images, labels, key):
    grads, batch_stats = jax.grad(model.loss, has_aux=True)(
        params, batch_stats, images, labels, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, batch_stats

  return jax.jit(step, donate_argnums=(0, 1, 2) if donate else ())


def _carry_copy(inner):
  """`inner`, whose state also carries a copy of the params, untouched."""

  def init(params):
    return inner.init(params), jax.tree.map(jnp.copy, params)

  def update(grads, state, params):
    inner_state, carried = state
    updates, inner_state = inner.update(grads, inner_state, params)
    return updates, (inner_state, carried)

  return optax.GradientTransformation(init, update)


def _lookahead(inner):
  """`optax.lookahead` on plain params: the step trains the fast weights."""
  tx = optax.lookahead(inner, sync_period=6, slow_step_size=0.5)

  def init(params):
    slow = jax.tree.map(jnp.copy, params)  # Donated apart from params.
    return tx.init(optax.LookaheadParams.init_synced(params)), slow

  def update(grads, state, params):
    opt_state, slow = state
    pair = optax.LookaheadParams(fast=params, slow=slow)
    updates, opt_state = tx.update(grads, opt_state, pair)
    slow = optax.apply_updates(slow, updates.slow)
    return updates.fast, (opt_state, slow)

  return optax.GradientTransformation(init, update)


def _load() -> str:
  return (f'load average {", ".join(f"{x:.2f}" for x in os.getloadavg())} '
          f'(1, 5, 15 min) on {os.cpu_count()} cores')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', choices=list(MODELS), default='mlp')
  parser.add_argument('--batch', type=int, default=0,
                      help="batch size (default: the model's)")
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--steps', type=int, default=5,
                      help='steps per timed block')
  parser.add_argument('--period', type=int, default=1000,
                      help='sync period for the amortized figure')
  args = parser.parse_args()
  model = MODELS[args.model](args.batch)
  optimizers = {
      'adam': optax.adam(1e-3),
      'adam + carry': _carry_copy(optax.adam(1e-3)),
      'laperm non-sync': lp.laperm(optax.adam(1e-3), 2**30),
      'laperm sync': lp.laperm(optax.adam(1e-3), 1),
      'lookahead': _lookahead(optax.adam(1e-3)),
  }
  jits = {'plain': False, 'donated': True}
  device = jax.devices()[0]
  print(f'device: {device.platform} ({device.device_kind}), jax '
        f'{jax.__version__}; {model.description}, '
        f'{sum(x.size for x in jax.tree.leaves(model.params)):,} params')
  runs = {}
  for jit, donate in jits.items():
    for name, tx in optimizers.items():
      # Fresh copies: a donated step must not consume the model's arrays.
      params = jax.tree.map(jnp.copy, model.params)
      carry = (params, tx.init(params),
               jax.tree.map(jnp.copy, model.batch_stats))
      step = _train_step(model, tx, donate)
      carry = step(*carry, model.images, model.labels, jax.random.key(1))
      jax.block_until_ready(carry)
      runs[jit, name] = {'step': step, 'carry': carry, 'times': [],
                         'cpu': [], 'faults': []}
  print(f'before: {_load()}', flush=True)
  for repeat in range(args.repeats):
    for run in runs.values():
      carry = run['carry']
      faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      start, cpu = time.perf_counter(), time.process_time()
      for i in range(args.steps):
        carry = run['step'](*carry, model.images, model.labels,
                            jax.random.key(repeat * args.steps + i))
      jax.block_until_ready(carry)
      run['times'].append((time.perf_counter() - start) / args.steps)
      run['cpu'].append((time.process_time() - cpu) / args.steps)
      run['faults'].append(
          (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
          / args.steps)
      run['carry'] = carry
  print(f'after:  {_load()}')
  median = {key: {field: float(np.median(run[field]))
                  for field in ('times', 'cpu', 'faults')}
            for key, run in runs.items()}
  for jit in jits:
    median[jit, f'amortized k={args.period}'] = {
        field: ((args.period - 1) * median[jit, 'laperm non-sync'][field]
                + median[jit, 'laperm sync'][field]) / args.period
        for field in ('times', 'cpu', 'faults')}
  rows = [*optimizers, f'amortized k={args.period}']
  print(f'{"":<18}' + ''.join(f'{jit:<38}' for jit in jits))
  print(f'{"optimizer":<18}' + f'{"ms/step":>9}{"vs adam":>9}{"cpu vs":>8}'
        f'{"faults/step":>12}'.ljust(38) * len(jits))
  for name in rows:
    line = f'{name:<18}'
    for jit in jits:
      m, adam = median[jit, name], median[jit, 'adam']
      line += (f'{m["times"] * 1e3:>9.2f}{m["times"] / adam["times"]:>9.3f}'
               f'{m["cpu"] / adam["cpu"]:>8.3f}'
               f'{m["faults"]:>12.0f}').ljust(38)
    print(line)


if __name__ == '__main__':
  main()
