"""Memory of LaPerm: optimizer state and the compiled train step.

For the models of `step_overhead.py` (MLP, Conv7, Conv13), prints:

- the bytes of the optimizer state of `adam` and of `laperm(adam, k)`, what
  LaPerm adds, and the bound it must stay within: one copy of the permuted
  leaves (the sorted initial weights) plus its scalar counters; and the
  state of `laperm(adam, k, initial_params=...)`, which regenerates the
  initial weights at each sync instead of storing them (it must add only
  the counters), and the temporaries of that regenerating function alone
  (`jax.jit(initial_params)`), which its sync branch needs too;
- XLA's memory analysis of the compiled train step (arguments, outputs,
  temporaries; available on every backend), plain and donated;
- the device's peak memory after running the step, where the backend
  reports it (GPU, TPU; the CPU client does not).

Run from the repository root: `python benchmarks/memory.py [--models
mlp,conv7,conv13]`.
"""

import argparse

import jax
import jax.numpy as jnp
import optax

import laperm_jax as lp
import step_overhead


def _bytes(tree) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(tree))


def _peak_bytes():
  stats = jax.devices()[0].memory_stats()
  return None if not stats else stats.get('peak_bytes_in_use')


def _mib(n) -> str:
  return '-' if n is None else f'{n / 2**20:,.1f}'


def _regenerated(name):
  """A function of no arguments that rebuilds model ``name``'s initial params.

  The models are built from fixed keys: rebuilding one inside jit gives its
  initial params again (laperm's init checks it, bit for bit).
  """
  return lambda: step_overhead.MODELS[name](0).params


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='mlp,conv7,conv13')
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f'device: {device.platform} ({device.device_kind}), '
        f'jax {jax.__version__}; sizes in MiB')
  print(f'{"model":<8}{"params":>9}{"permuted":>10}{"adam state":>12}'
        f'{"laperm state":>14}{"added":>9}{"added - permuted":>18}'
        f'{"copy-free state":>17}{"added":>9}{"regenerate temp":>17}')
  steps = []
  for name in args.models.split(','):
    model = step_overhead.MODELS[name](0)
    laperm = lp.laperm(optax.adam(1e-3), 1000)
    adam_state = optax.adam(1e-3).init(model.params)
    laperm_state = laperm.init(model.params)
    permuted = _bytes([x for x in jax.tree.leaves(model.params)
                       if x.ndim >= 2])  # The default mask: kernels.
    copy_free_state = lp.laperm(
        optax.adam(1e-3), 1000,
        initial_params=_regenerated(name)).init(model.params)
    added = _bytes(laperm_state) - _bytes(adam_state)
    copy_free_added = _bytes(copy_free_state) - _bytes(adam_state)
    regenerate_temp = jax.jit(_regenerated(name)).lower().compile(
    ).memory_analysis().temp_size_in_bytes
    print(f'{name:<8}{_mib(_bytes(model.params)):>9}{_mib(permuted):>10}'
          f'{_mib(_bytes(adam_state)):>12}{_mib(_bytes(laperm_state)):>14}'
          f'{_mib(added):>9}{added - permuted:>16,} B'
          f'{_mib(_bytes(copy_free_state)):>17}{copy_free_added:>7,} B'
          f'{_mib(regenerate_temp):>17}')
    steps.append((name, model))

  print(f'\n{"model":<8}{"jit":<9}{"optimizer":<11}{"arguments":>11}'
        f'{"outputs":>9}{"aliased":>9}{"temp":>9}{"peak":>9}')
  for name, model in steps:
    for donate in (False, True):
      for tx_name, tx in (
          ('adam', optax.adam(1e-3)),
          ('laperm', lp.laperm(optax.adam(1e-3), 1000)),
          ('copy-free', lp.laperm(optax.adam(1e-3), 1000,
                                  initial_params=_regenerated(name)))):
        params = jax.tree.map(jnp.copy, model.params)
        carry = (params, tx.init(params),
                 jax.tree.map(jnp.copy, model.batch_stats))
        step = step_overhead._train_step(model, tx, donate)  # pylint: disable=protected-access
        call_args = (*carry, model.images, model.labels, jax.random.key(0))
        analysis = step.lower(*call_args).compile().memory_analysis()
        jax.block_until_ready(step(*call_args))
        print(f'{name:<8}{"donated" if donate else "plain":<9}{tx_name:<11}'
              f'{_mib(analysis.argument_size_in_bytes):>11}'
              f'{_mib(analysis.output_size_in_bytes):>9}'
              f'{_mib(analysis.alias_size_in_bytes):>9}'
              f'{_mib(analysis.temp_size_in_bytes):>9}'
              f'{_mib(_peak_bytes()):>9}', flush=True)


if __name__ == '__main__':
  main()
