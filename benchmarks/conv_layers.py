"""Conv7's convolutions, one by one: XLA's, patches, patches for dx, chunks.

For each conv layer of Conv7 on 28x28x1 inputs (batch 50), times the
forward pass, the input gradient (dx) and the kernel gradient (dw) of four
implementations, interleaved: ``xla`` (``lax.conv_general_dilated``, what
``nn.Conv`` runs), ``patches`` (``layers.conv_as_patches``), ``patches_dx``
(``layers.conv_with_patches_input_gradient``: XLA's forward and dw, dx
through patches) and ``chunks10`` (``layers.in_batch_chunks``: XLA's
convolution on slices of 10 images). Prints median milliseconds per pass
and the sum per implementation, with the load average. The first layer's dx is
never computed in training (its input is the data).

Run from the repository root: ``python benchmarks/conv_layers.py
[--repeats 5] [--calls 5]``.
"""

import argparse
import os
import pathlib
import statistics
import sys
import time

import jax
from jax import lax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import layers  # pylint: disable=g-import-not-at-top,wrong-import-position

# (name, map size, in, out, kernel, stride, padding): Conv7 on 28x28x1.
CONV7_LAYERS = [
    ('Conv_0 28x28x1->32 3x3', 28, 1, 32, 3, 1, 'VALID'),
    ('Conv_1 26x26x32->32 3x3', 26, 32, 32, 3, 1, 'VALID'),
    ('Conv_2 24x24x32->32 5x5/2', 24, 32, 32, 5, 2, 'SAME'),
    ('Conv_3 12x12x32->64 3x3', 12, 32, 64, 3, 1, 'VALID'),
    ('Conv_4 10x10x64->64 3x3', 10, 64, 64, 3, 1, 'VALID'),
    ('Conv_5 8x8x64->64 5x5/2', 8, 64, 64, 5, 2, 'SAME'),
    ('Conv_6 4x4x64->128 4x4', 4, 64, 128, 4, 1, 'VALID'),
]


def _xla(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


IMPLEMENTATIONS = {
    'xla': _xla,
    'patches': layers.conv_as_patches,
    'patches_dx': layers.conv_with_patches_input_gradient,
    'chunks10': layers.in_batch_chunks(_xla, 10),
}


def _passes(conv, strides, padding):
  """Jitted forward, dx and dw of ``conv``."""
  def forward(x, w, cotangent):
    del cotangent
    return conv(x, w, strides, padding)

  def input_gradient(x, w, cotangent):
    return jax.vjp(lambda x: conv(x, w, strides, padding), x)[1](cotangent)

  def kernel_gradient(x, w, cotangent):
    return jax.vjp(lambda w: conv(x, w, strides, padding), w)[1](cotangent)

  return {'fwd': jax.jit(forward), 'dx': jax.jit(input_gradient),
          'dw': jax.jit(kernel_gradient)}


def _time(fn, args, calls):
  start = time.perf_counter()
  for _ in range(calls):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) / calls * 1000


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--calls', type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  print(f'load before: {", ".join(f"{x:.2f}" for x in os.getloadavg())}')
  totals = {name: 0.0 for name in IMPLEMENTATIONS}
  for name, size, channels, features, kernel, stride, padding in (
      CONV7_LAYERS):
    x = rng.normal(size=(50, size, size, channels)).astype(np.float32)
    w = rng.normal(size=(kernel, kernel, channels, features)).astype(
        np.float32)
    strides = (stride, stride)
    cotangent = np.ones(jax.eval_shape(
        lambda x, w: _xla(x, w, strides, padding), x, w).shape, np.float32)
    passes = {(impl, kind): fn for impl, conv in IMPLEMENTATIONS.items()
              for kind, fn in _passes(conv, strides, padding).items()}
    for fn in passes.values():
      jax.block_until_ready(fn(x, w, cotangent))  # Compiles.
    times = {key: [] for key in passes}
    for _ in range(args.repeats):
      for key, fn in passes.items():
        times[key].append(_time(fn, (x, w, cotangent), args.calls))
    medians = {key: statistics.median(values) for key, values in
               times.items()}
    cells = []
    for impl in IMPLEMENTATIONS:
      kinds = ('fwd', 'dw') if name.startswith('Conv_0') else (
          'fwd', 'dx', 'dw')
      total = sum(medians[impl, kind] for kind in kinds)
      totals[impl] += total
      cells.append(f'{impl} ' + ' '.join(
          f'{kind} {medians[impl, kind]:6.2f}' for kind in ('fwd', 'dx', 'dw'))
                   + f' = {total:6.2f}')
    print(f'{name:26s} ' + ' | '.join(cells), flush=True)
  print('sum over the layers (ms; Conv_0 without dx): ' + ', '.join(
      f'{impl} {total:.1f}' for impl, total in totals.items()))
  print(f'load after: {", ".join(f"{x:.2f}" for x in os.getloadavg())}')


if __name__ == '__main__':
  main()
