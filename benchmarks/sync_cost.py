"""Cost of one LaPerm sync against one sort of the same weight vectors.

For single leaves from 1e4 to 1.5e7 parameters and for the kernels of whole
models of the paper (F2, Conv7, Conv13), times, in one run and interleaved:

- `sort`: one `jnp.sort` of every weight vector (axis 0 of the
  `(vector_length, num_vectors)` view), the cost the sync is judged against;
- `minor`: the same sort along the minor axis of the transposed view, the
  layout the sync sorts in (XLA's CPU sort is faster there);
- `sync`: `laperm_jax.synchronize`, i.e. exactly what the sync branch of the
  transformation runs (the stable order of every weight vector, one
  scatter, a finiteness check); on CPU the order comes from single-operand
  integer sorts, elsewhere from one key-value sort;
- `kv sync`: the same sync with the key-value sort on every platform, which
  is what CPU ran before its integer path;
- `reference`: the paper's algorithm written in JAX, `argsort(argsort(w))`
  then a gather of the sorted initial values;
- `numpy`: NumPy's `argsort` of the same rows on the host (CPU only), the
  yardstick of the CPU path.

Prints a table of median times and the ratios sync/sort, sync/minor,
reference/sync, kv/sync and sync/numpy, and the load average before and
after (the columns of a row are interleaved, so its ratios hold on a loaded
machine better than its times).

A second table times weight-vector layouts (`vector_axes=`): `sync` of a
leaf with the default layout (all axes but the last) against `sync` of the
same weights laid out otherwise, interleaved: an attention kernel
`(features, heads, head_dim)` with `vector_axes=(0,)` against the Dense
kernel `(features, heads * head_dim)` (leading fan-in axes: a reshape), and
a transposed kernel `(out, in)` with `vector_axes=(1,)` against `(in, out)`
(a transpose in and out). Both syncs give bitwise the same weights, laid
out each its way (checked).

A third table times the sync of a state without the copy of the initial
weights (`laperm(..., initial_params=fn)`): `stored` (`synchronize` with
the sorted copy in the state) against `regenerated` (`synchronize` calling
`fn`, then sorting its kernels), interleaved, and `fn` alone, for an MLP
whose init is He-uniform via `jax.random`. Both give bitwise the same
weights (checked).
Run: `python benchmarks/sync_cost.py [--quick] [--repeats N] [--leaf
4608,3200 ...] [--layouts] [--regenerate]` (`--layouts`, `--regenerate`:
that table only).
"""

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import laperm_jax as lp
from laperm_jax import _weight_vectors

# Kernel shapes of the paper's networks (JAX layout, output axis last).
MODELS = {
    'F2 (109k)': [(784, 128), (128, 64), (64, 10)],
    'Conv7 (0.3M)': [(3, 3, 1, 32), (3, 3, 32, 32), (5, 5, 32, 32),
                     (3, 3, 32, 64), (3, 3, 64, 64), (5, 5, 64, 64),
                     (4, 4, 64, 128), (128, 10)],
    'Conv13 (15.0M)': [(3, 3, 3, 64), (3, 3, 64, 64), (3, 3, 64, 128),
                       (3, 3, 128, 128), (3, 3, 128, 256), (3, 3, 256, 256),
                       (3, 3, 256, 256), (3, 3, 256, 512)]
                      + [(3, 3, 512, 512)] * 5 + [(512, 512), (512, 10)],
}
LEAVES = [(100, 100), (1000, 1000), (3, 3, 256, 256), (4608, 1024),
          (4608, 3200)]
QUICK_LEAVES = [(100, 100), (784, 128), (3, 3, 64, 64)]
# (name, default-layout shape, shape and vector_axes of the same weights).
LAYOUTS = [
    ('attention (768, 12, 64)', (768, 768), (768, 12, 64), (0,)),
    ('attention (1024, 16, 64)', (1024, 1024), (1024, 16, 64), (0,)),
    ('transposed (1000, 1000)', (1000, 1000), (1000, 1000), (1,)),
    ('transposed (3200, 4608)', (4608, 3200), (3200, 4608), (1,)),
]
# Widths of the MLPs whose initial weights are regenerated.
MLPS = [(784, 2048, 2048, 10)]
QUICK_MLPS = [(784, 128, 64, 10)]
QUICK_LAYOUTS = [
    ('attention (128, 8, 16)', (128, 128), (128, 8, 16), (0,)),
    ('transposed (128, 784)', (784, 128), (128, 784), (1,)),
]


def _reference_sync(params, sorted_init):
  """The reference implementation's sync: ranks by double argsort, gather."""

  def leaf(param, sorted_values):
    vectors = lp.as_vectors(param)
    ranks = jnp.argsort(jnp.argsort(vectors, axis=0), axis=0)
    placed = jnp.take_along_axis(lp.as_vectors(sorted_values), ranks, axis=0)
    return placed.reshape(param.shape)

  return jax.tree.map(leaf, params, sorted_init)


def _key_value_sync(params, opt_state):
  """The sync with the GPU/TPU order (one key-value sort) on any platform."""

  def leaf(param, sorted_values):
    order = _weight_vectors._comparison_rank_order(lp.as_vectors(param).T)  # pylint: disable=protected-access
    placed = jax.vmap(_weight_vectors._scatter_row)(  # pylint: disable=protected-access
        order, lp.as_vectors(sorted_values).T)
    return placed.T.reshape(param.shape)

  return jax.tree.map(leaf, params, opt_state.sorted_init)


def _numpy_argsort(rows):
  return [np.argsort(r, axis=1) for r in rows]


def _sort(params):
  return jax.tree.map(lambda p: jnp.sort(lp.as_vectors(p), axis=0), params)


def _sort_minor(params):
  return jax.tree.map(lambda p: jnp.sort(lp.as_vectors(p).T, axis=1), params)


def _median_times(functions, args, repeats):
  """Interleaves the functions so drifts in machine load hit all alike."""
  for name, fn in functions.items():
    jax.block_until_ready(fn(*args[name]))
  times = {name: [] for name in functions}
  for _ in range(repeats):
    for name, fn in functions.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args[name]))
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


def measure(shapes, repeats):
  keys = jax.random.split(jax.random.key(0), len(shapes))
  initial = {f'k{i}': jax.random.normal(k, s) for i, (k, s) in
             enumerate(zip(keys, shapes))}
  state = lp.laperm(optax.identity(), 1).init(initial)
  moved = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(
      jax.random.key(1), x.shape), initial)
  # Each function gets its arguments, not closures: no constants baked in.
  functions = {
      'sort': jax.jit(_sort),
      'minor': jax.jit(_sort_minor),
      'sync': jax.jit(lp.synchronize),
      'kv sync': jax.jit(_key_value_sync),
      'reference': jax.jit(_reference_sync),
  }
  args = {'sort': (moved,), 'minor': (moved,), 'sync': (moved, state),
          'kv sync': (moved, state),
          'reference': (moved, state.sorted_init)}
  if jax.default_backend() == 'cpu':
    functions['numpy'] = _numpy_argsort
    args['numpy'] = ([np.asarray(lp.as_vectors(p).T)
                      for p in moved.values()],)
  synced = functions['sync'](*args['sync'])
  # The reference breaks ties arbitrarily; random normal weights have none,
  # so all three must agree bit for bit.
  for other in ('kv sync', 'reference'):
    result = functions[other](*args[other])
    for name in synced:
      np.testing.assert_array_equal(synced[name], result[name])
  return _median_times(functions, args, repeats)


def measure_layout(shape, layout_shape, vector_axes, repeats):
  """Median sync times: default layout vs ``vector_axes``, same weights."""
  initial = jax.random.normal(jax.random.key(0), shape)
  moved = initial + 0.1 * jax.random.normal(jax.random.key(1), shape)
  if layout_shape == shape[::-1] and vector_axes == (1,):
    to_layout = jnp.transpose  # (in, out) -> (out, in)
  else:
    to_layout = lambda x: x.reshape(layout_shape)
  layout = {'w': vector_axes}
  trees = {'default': ({'w': initial}, {'w': moved}, None),
           'layout': ({'w': to_layout(initial)}, {'w': to_layout(moved)},
                      layout)}
  functions, args = {}, {}
  for name, (init, params, axes) in trees.items():
    state = lp.laperm(optax.identity(), 1, vector_axes=axes).init(init)
    functions[name] = jax.jit(functools.partial(lp.synchronize,
                                                vector_axes=axes))
    args[name] = (params, state)
  default = functions['default'](*args['default'])['w']
  laid_out = functions['layout'](*args['layout'])['w']
  np.testing.assert_array_equal(to_layout(default), laid_out)
  return _median_times(functions, args, repeats)


def _he_uniform_mlp(widths):
  """The initial params of an MLP: He-uniform kernels, zero biases."""
  keys = jax.random.split(jax.random.key(0), len(widths) - 1)
  params = {}
  for i, (key, fan_in, fan_out) in enumerate(zip(keys, widths[:-1],
                                                  widths[1:])):
    limit = float(np.sqrt(6.0 / fan_in))
    params[f'dense{i}'] = {
        'kernel': jax.random.uniform(key, (fan_in, fan_out), minval=-limit,
                                     maxval=limit),
        'bias': jnp.zeros(fan_out)}
  return params


def measure_regenerated(widths, repeats):
  """Median times: sync from the stored copy, from `initial_params`, init."""
  initial_params = functools.partial(_he_uniform_mlp, widths)
  initial = initial_params()
  moved = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(
      jax.random.key(1), x.shape), initial)
  stored = lp.laperm(optax.identity(), 1).init(initial)
  copy_free = lp.laperm(optax.identity(), 1,
                        initial_params=initial_params).init(initial)
  functions = {
      'stored': jax.jit(lp.synchronize),
      'regenerated': jax.jit(functools.partial(
          lp.synchronize, initial_params=initial_params)),
      'init': jax.jit(initial_params),
  }
  args = {'stored': (moved, stored), 'regenerated': (moved, copy_free),
          'init': ()}
  for a, b in zip(jax.tree.leaves(functions['stored'](*args['stored'])),
                  jax.tree.leaves(functions['regenerated'](
                      *args['regenerated']))):
    np.testing.assert_array_equal(a, b)
  return _median_times(functions, args, repeats)


def _load() -> str:
  return (f'load average {", ".join(f"{x:.2f}" for x in os.getloadavg())} '
          f'(1, 5, 15 min) on {os.cpu_count()} cores')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true',
                      help='small leaves only, for a smoke run')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--leaf', action='append', default=[],
                      help='time only this leaf shape, e.g. 4608,3200 '
                      '(repeatable; no models)')
  parser.add_argument('--layouts', action='store_true',
                      help='only the table of weight-vector layouts')
  parser.add_argument('--regenerate', action='store_true',
                      help='only the table of syncs that regenerate the '
                      'initial weights')
  args = parser.parse_args()
  if args.leaf:
    leaves = [tuple(int(n) for n in shape.split(',')) for shape in args.leaf]
  else:
    leaves = QUICK_LEAVES if args.quick else LEAVES
  rows = [(f'leaf {shape}', [shape]) for shape in leaves]
  if not (args.quick or args.leaf):
    rows += [(f'model {name}', shapes) for name, shapes in MODELS.items()]
  device = jax.devices()[0]
  print(f'device: {device.platform} ({device.device_kind}), '
        f'jax {jax.__version__}, repeats {args.repeats}')
  print(f'before: {_load()}', flush=True)
  if not (args.layouts or args.regenerate):
    _print_sync_table(rows, args.repeats)
  if not (args.leaf or args.regenerate):
    _print_layout_table(QUICK_LAYOUTS if args.quick else LAYOUTS,
                        args.repeats)
  if not (args.leaf or args.layouts):
    _print_regenerated_table(QUICK_MLPS if args.quick else MLPS, args.repeats)
  print(f'after:  {_load()}')


def _print_regenerated_table(mlps, repeats):
  print(f'\n{"MLP (He-uniform init)":<30}{"params":>11}{"stored ms":>11}'
        f'{"regenerated ms":>16}{"init ms":>9}{"regenerated/stored":>20}')
  for widths in mlps:
    t = measure_regenerated(widths, repeats)
    size = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    print(f'{"-".join(map(str, widths)):<30}{size:>11,}'
          f'{t["stored"] * 1e3:>11.1f}{t["regenerated"] * 1e3:>16.1f}'
          f'{t["init"] * 1e3:>9.1f}'
          f'{t["regenerated"] / t["stored"]:>20.2f}', flush=True)


def _print_layout_table(layouts, repeats):
  print(f'\n{"layout":<30}{"params":>11}{"default ms":>12}{"layout ms":>11}'
        f'{"layout/default":>16}')
  for name, shape, layout_shape, vector_axes in layouts:
    t = measure_layout(shape, layout_shape, vector_axes, repeats)
    print(f'{name + " " + str(vector_axes):<30}{int(np.prod(shape)):>11,}'
          f'{t["default"] * 1e3:>12.1f}{t["layout"] * 1e3:>11.1f}'
          f'{t["layout"] / t["default"]:>16.2f}', flush=True)


def _print_sync_table(rows, repeats):
  print(f'{"what":<30}{"params":>11}{"sort ms":>10}{"minor ms":>10}'
        f'{"sync ms":>10}{"kv ms":>10}{"ref ms":>10}{"numpy ms":>10}'
        f'{"sync/sort":>11}{"sync/minor":>12}{"ref/sync":>10}{"kv/sync":>9}'
        f'{"sync/numpy":>12}')
  for name, shapes in rows:
    size = sum(int(np.prod(s)) for s in shapes)
    t = measure(shapes, repeats)
    numpy_ms, sync_per_numpy = (
        (f'{t["numpy"] * 1e3:>10.1f}', f'{t["sync"] / t["numpy"]:>12.2f}')
        if 'numpy' in t else (f'{"-":>10}', f'{"-":>12}'))
    print(f'{name:<30}{size:>11,}{t["sort"] * 1e3:>10.1f}'
          f'{t["minor"] * 1e3:>10.1f}{t["sync"] * 1e3:>10.1f}'
          f'{t["kv sync"] * 1e3:>10.1f}{t["reference"] * 1e3:>10.1f}'
          f'{numpy_ms}{t["sync"] / t["sort"]:>11.2f}'
          f'{t["sync"] / t["minor"]:>12.2f}{t["reference"] / t["sync"]:>10.2f}'
          f'{t["kv sync"] / t["sync"]:>9.2f}{sync_per_numpy}', flush=True)


if __name__ == '__main__':
  main()
