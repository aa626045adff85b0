"""Cost of LaPerm in a full jitted train step, against Adam and Lookahead.

Trains an MLP (default 784-2048-2048-10, batch 128) with `adam`,
`laperm(adam, k)` and `optax.lookahead(adam)`, each step jitted as users run
it: plain, and with `donate_argnums` on params and optimizer state (as the
Flax examples do). Steps of all optimizers are interleaved, so machine noise
hits all alike. Reports, relative to Adam:

- `non-sync`: a LaPerm step that does not sync (the sync period is huge);
- `sync`: a LaPerm step that syncs (sync period 1);
- `amortized k=K`: `((K - 1) * non-sync + sync) / K`;
- page faults per step (Linux minor faults), which expose fresh memory the
  runtime maps for each execution.

Run: `python benchmarks/step_overhead.py [--widths 784,2048,2048,10]
[--batch 128] [--repeats 10] [--period 1000]`.
"""

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import laperm_jax as lp


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


def _loss(params, images, labels):
  x = images
  layers = len(params)
  for i in range(layers):
    x = x @ params[f'dense{i}']['kernel'] + params[f'dense{i}']['bias']
    if i < layers - 1:
      x = jax.nn.relu(x)
  return optax.softmax_cross_entropy_with_integer_labels(x, labels).mean()


def _train_step(tx, donate):

  def step(params, opt_state, images, labels):
    grads = jax.grad(_loss)(params, images, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return jax.jit(step, donate_argnums=(0, 1) if donate else ())


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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--widths', default='784,2048,2048,10')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--steps', type=int, default=5,
                      help='steps per timed block')
  parser.add_argument('--period', type=int, default=1000,
                      help='sync period for the amortized figure')
  args = parser.parse_args()
  widths = [int(w) for w in args.widths.split(',')]
  key = jax.random.key(0)
  images = jax.random.normal(key, (args.batch, widths[0]))
  labels = jnp.arange(args.batch) % widths[-1]
  optimizers = {
      'adam': optax.adam(1e-3),
      'laperm non-sync': lp.laperm(optax.adam(1e-3), 2**30),
      'laperm sync': lp.laperm(optax.adam(1e-3), 1),
      'lookahead': _lookahead(optax.adam(1e-3)),
  }
  device = jax.devices()[0]
  print(f'device: {device.platform} ({device.device_kind}), jax '
        f'{jax.__version__}; MLP {widths}, batch {args.batch}, '
        f'{sum(a * b + b for a, b in zip(widths[:-1], widths[1:])):,} params')
  print(f'{"jit":<10}{"optimizer":<18}{"ms/step":>9}{"vs adam":>9}'
        f'{"faults/step":>13}')
  for donate in (False, True):
    runs = {}
    for name, tx in optimizers.items():
      params = _mlp_params(key, widths)
      opt_state = tx.init(params)
      step = _train_step(tx, donate)
      params, opt_state = step(params, opt_state, images, labels)
      jax.block_until_ready(params)
      runs[name] = {'step': step, 'carry': (params, opt_state), 'times': [],
                    'faults': []}
    for _ in range(args.repeats):
      for run in runs.values():
        params, opt_state = run['carry']
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for _ in range(args.steps):
          params, opt_state = run['step'](params, opt_state, images, labels)
        jax.block_until_ready(params)
        run['times'].append((time.perf_counter() - start) / args.steps)
        run['faults'].append(
            (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
            / args.steps)
        run['carry'] = (params, opt_state)
    median = {name: float(np.median(run['times']))
              for name, run in runs.items()}
    jit = 'donated' if donate else 'plain'
    for name, run in runs.items():
      print(f'{jit:<10}{name:<18}{median[name] * 1e3:>9.2f}'
            f'{median[name] / median["adam"]:>9.3f}'
            f'{np.median(run["faults"]):>13.0f}')
    amortized = ((args.period - 1) * median['laperm non-sync']
                 + median['laperm sync']) / args.period
    print(f'{jit:<10}{f"amortized k={args.period}":<18}{amortized * 1e3:>9.2f}'
          f'{amortized / median["adam"]:>9.3f}')


if __name__ == '__main__':
  main()
