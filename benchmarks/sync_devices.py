"""Cost of one LaPerm sync against the number of devices it is sharded over.

For 1, 2, 4 and 8 devices, a child process jits ``laperm_jax.synchronize``
(exactly the sync branch of the transformation) with the kernels'
``NamedSharding`` on a 1-D mesh as ``in_shardings`` and ``out_shardings``,
and times it for three layouts:

- ``output``: each kernel sharded along its output (last) axis, the model
  parallel layout LaPerm suits: every device sorts its own weight vectors,
  and the compiled sync holds no collective;
- ``input``: sharded along an input axis (axis -2), which splits every
  weight vector across the devices: the sync gathers the vectors to sort
  them (all-gather, and all-to-all between the radix passes on CPU);
- ``replicated``: params replicated (data parallel): every device runs the
  whole sync.

The columns ``collectives`` and ``MB moved`` come from the compiled HLO:
the collective ops of the sync and the size of their results, per device
(what each device receives, roughly). On CPU the devices are host devices
(``--xla_force_host_platform_device_count=N``) sharing the machine's cores,
so no speedup is expected there: the times show the overhead of partitioning
and of the collectives. On a machine with several GPUs (or TPUs) the children
use the first N real devices; counts above the devices present are skipped.

Prints a table of median times per layout, leaf and device count, with the
device kind (``compile s`` is 0.0 where the program equals an earlier one's,
e.g. every layout on 1 device, and comes from JAX's cache). Run: ``python benchmarks/sync_devices.py [--quick] [--repeats N]
[--devices 1,2,4,8]``.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

LEAVES = [(1024, 1024), (3, 3, 256, 256)]
QUICK_LEAVES = [(256, 256), (3, 3, 64, 64)]
LAYOUTS = ('output', 'input', 'replicated')
COLLECTIVES = ('all-gather', 'all-to-all', 'collective-permute', 'all-reduce',
               'reduce-scatter', 'collective-broadcast', 'ragged-all-to-all')
BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2,
         's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8}


def collective_traffic(hlo_text):
  """``(count, bytes)`` of the collectives in compiled HLO text.

  Bytes are the sizes of the collectives' results on one device (for async
  pairs, of the ``-done`` op).
  """
  pattern = re.compile(r'=\s*(.*?)\s(' + '|'.join(COLLECTIVES) +
                       r')(-done)?\(')
  count = total = 0
  for line in hlo_text.splitlines():
    match = pattern.search(line)
    if not match or re.search(r'\s(' + '|'.join(COLLECTIVES) + r')-start\(',
                              line):
      continue
    count += 1
    for dtype, dims in re.findall(r'\b([a-z]+\d*)\[([\d,]*)\]',
                                  match.group(1)):
      size = BYTES.get(dtype, 4)
      for dim in filter(None, dims.split(',')):
        size *= int(dim)
      total += size
  return count, total


def _spec(layout, ndim):
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel
  if layout == 'output':
    return P(*[None] * (ndim - 1), 'x')
  if layout == 'input':
    return P(*[None] * (ndim - 2), 'x', None)
  return P()


def child(devices, leaves, repeats):
  """Times the sync on ``devices`` devices; prints one JSON line."""
  # pylint: disable=import-outside-toplevel
  import jax
  from jax.sharding import Mesh, NamedSharding
  import numpy as np
  import optax

  import laperm_jax as lp

  available = jax.devices()
  if len(available) < devices:
    print(json.dumps({'skipped': f'{len(available)} devices'}))
    return
  mesh = Mesh(np.array(available[:devices]), ('x',))
  rows = []
  tx = lp.laperm(optax.sgd(0.1), 1)
  for shape in leaves:
    rng = np.random.default_rng(0)
    initial = {'kernel': rng.standard_normal(shape, np.float32)}
    moved = {'kernel': rng.standard_normal(shape, np.float32)}
    for layout in LAYOUTS:
      sharding = {'kernel': NamedSharding(mesh, _spec(layout, len(shape)))}
      state_sharding = optax.tree.map_params(
          tx, lambda leaf, s: leaf if isinstance(leaf, optax.MaskedNode)
          else s, jax.eval_shape(tx.init, initial), sharding,
          is_leaf=lambda x: isinstance(x, optax.MaskedNode),
          transform_non_params=lambda _: NamedSharding(mesh, _spec('', 0)))
      state = jax.jit(tx.init, out_shardings=state_sharding)(
          jax.device_put(initial, sharding))
      params = jax.device_put(moved, sharding)
      start = time.perf_counter()
      compiled = jax.jit(lp.synchronize,
                         in_shardings=(sharding, state_sharding),
                         out_shardings=sharding).lower(params,
                                                       state).compile()
      compile_s = time.perf_counter() - start
      count, traffic = collective_traffic(compiled.as_text())
      jax.block_until_ready(compiled(params, state))  # Warm up.
      times = []
      for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, state))
        times.append(time.perf_counter() - start)
      rows.append({'shape': list(shape), 'layout': layout,
                   'ms': 1e3 * statistics.median(times),
                   'compile_s': compile_s, 'collectives': count,
                   'bytes': traffic})
  print(json.dumps({'kind': available[0].device_kind,
                    'platform': available[0].platform,
                    'cpu_count': os.cpu_count(), 'rows': rows}))


def _run_child(devices, args, platform):
  env = dict(os.environ)
  if platform == 'cpu':
    flags = [flag for flag in env.get('XLA_FLAGS', '').split()
             if 'xla_force_host_platform_device_count' not in flag]
    env['XLA_FLAGS'] = ' '.join(
        flags + [f'--xla_force_host_platform_device_count={devices}'])
  command = [sys.executable, __file__, '--child', str(devices),
             '--repeats', str(args.repeats)]
  if args.quick:
    command.append('--quick')
  completed = subprocess.run(command, env=env, capture_output=True,
                             text=True, check=True)
  return json.loads(completed.stdout.strip().splitlines()[-1])


def _platform():
  """The default backend, probed in a child so this process holds no device."""
  completed = subprocess.run(
      [sys.executable, '-c', 'import jax; print(jax.default_backend())'],
      capture_output=True, text=True, check=True)
  return completed.stdout.strip().splitlines()[-1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='small leaves')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--devices', default='1,2,4,8',
                      help='comma-separated device counts')
  parser.add_argument('--child', type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  leaves = QUICK_LEAVES if args.quick else LEAVES
  if args.child:
    child(args.child, leaves, args.repeats)
    return

  platform = _platform()
  results = {}
  for devices in (int(n) for n in args.devices.split(',')):
    results[devices] = _run_child(devices, args, platform)
  measured = {n: r for n, r in results.items() if 'rows' in r}
  if not measured:
    sys.exit(f'no device count could run: {results}')
  first = next(iter(measured.values()))
  print(f"device: {first['kind']} ({first['platform']}), "
        f"{first['cpu_count']} CPU cores, median of {args.repeats}")
  for devices, result in results.items():
    if 'skipped' in result:
      print(f'{devices} devices: skipped, only {result["skipped"]}')
  base = {(tuple(row['shape']), row['layout']): row['ms']
          for row in measured.get(1, first)['rows']}
  print()
  print('| layout | leaf | devices | sync ms | vs 1 device | collectives '
        '| MB moved per device | compile s |')
  print('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |')
  for layout in LAYOUTS:
    for shape in leaves:
      for devices, result in measured.items():
        for row in result['rows']:
          if row['layout'] != layout or tuple(row['shape']) != shape:
            continue
          ratio = base[(shape, layout)] / row['ms'] if 1 in measured else (
              float('nan'))
          print(f"| {layout} | {shape} | {devices} | {row['ms']:,.1f} | "
                f"{ratio:.2f}x | {row['collectives']} | "
                f"{row['bytes'] / 1e6:,.2f} | {row['compile_s']:.1f} |")


if __name__ == '__main__':
  main()
