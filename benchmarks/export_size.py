"""File sizes of a LaPerm network: a checkpoint of its weights vs its permutations.

For F2 (784-128-64-10 dense, no biases), Conv7 (MNIST) and Conv13 (CIFAR-10,
32x32x3 input, about 15M parameters) of `experiments/models.py`, writes the
same synced params:

- `orbax`: an orbax `StandardCheckpointer` checkpoint of the float32 params
  (all files of the checkpoint directory, summed);
- `values+uint`: `lp.export_permutations` storing the sorted initial values
  and the ranks as uint8/uint16/uint32 (self-contained);
- `key+uint`: a PRNG key that regenerates the init, and the uint ranks;
- `key+packed`: the key and ranks packed to ceil(log2 n) bits;
- for weight-agnostic F2 (weights 0 or 0.03, 10% nonzero), the one-bit
  encoding (the default of `export_permutations` for such leaves).

Biases and BatchNorm parameters are stored as they are in every export.
A second table gives, per kernel, the information limit of a permutation of
`n` entries, log2(n!)/n bits per entry (`math.lgamma`), and how close the
packed ranks come to it. Random init and random moves stand for training:
sizes do not depend on what was learned.
Run: `python benchmarks/export_size.py [--quick]` (from the repository root).
"""

import argparse
import math
import os
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import models  # noqa: E402  pylint: disable=g-import-not-at-top
import laperm_jax as lp  # noqa: E402  pylint: disable=g-import-not-at-top

MODELS = {
    'F2': ('f2', (1, 28, 28, 1)),
    'Conv7': ('conv7', (1, 28, 28, 1)),
    'Conv13': ('conv13', (1, 32, 32, 3)),
}


def _init_fn(name, input_shape):
  """``key -> params`` of one of the paper's models (jitted: fast, and the
  same function regenerates the init at export)."""
  model = models.create(ml_collections.ConfigDict({'name': name}), 10)
  x = jnp.zeros(input_shape)
  return jax.jit(lambda key: model.init(key, x)['params'])


@jax.jit
def _moved(params, key):
  """Random moves, standing for training: every weight vector reordered."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([
      leaf + 0.05 * jax.random.normal(k, leaf.shape, leaf.dtype)
      for k, leaf in zip(keys, leaves)])


def _tree_size(path):
  return sum(f.stat().st_size for f in pathlib.Path(path).rglob('*')
             if f.is_file())


def _orbax_size(params, directory):
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(directory, 'orbax'), params)
  return _tree_size(os.path.join(directory, 'orbax'))


def _export_size(params, opt_state, directory, name, **kwargs):
  path = os.path.join(directory, f'{name}.npz')
  lp.export_permutations(params, opt_state, path, **kwargs)
  return os.path.getsize(path)


def _kernels(params):
  """(path, shape) of every leaf LaPerm permutes by default (ndim >= 2)."""
  return [(jax.tree_util.keystr(path), leaf.shape) for path, leaf in
          jax.tree_util.tree_flatten_with_path(params)[0] if leaf.ndim >= 2]


def _limit_bits(shape):
  """log2(n!) bits per weight vector of length n, for all vectors of a leaf."""
  vector_length, num_vectors = math.prod(shape[:-1]), shape[-1]
  return num_vectors * math.lgamma(vector_length + 1) / math.log(2)


def measure(label, name, input_shape, directory, agnostic=False):
  """One row of the size table, and the rows of the per-kernel table."""
  init_fn = _init_fn(name, input_shape)
  key = jax.random.key(0)
  params = init_fn(key)
  if agnostic:
    base_fn = init_fn
    init_fn = lambda k: lp.shared_value(k, base_fn(k), 0.03, keep=0.1)
    params = init_fn(key)
  opt_state = lp.laperm(optax.identity(), 1).init(params)
  params = lp.synchronize(_moved(params, jax.random.key(1)), opt_state)
  regenerate = dict(init_fn=init_fn, init_key=key)
  sizes = {
      'float32': sum(leaf.nbytes for leaf in jax.tree.leaves(params)),
      'orbax': _orbax_size(params, directory),
  }
  if agnostic:
    sizes['1 bit'] = _export_size(params, opt_state, directory, 'binary')
  else:
    sizes['values+uint'] = _export_size(params, opt_state, directory,
                                        'values', pack_ranks=False)
    sizes['key+uint'] = _export_size(params, opt_state, directory, 'uint',
                                     pack_ranks=False, **regenerate)
    sizes['key+packed'] = _export_size(params, opt_state, directory,
                                       'packed', **regenerate)
  kernels = _kernels(params)
  num_permuted = sum(math.prod(shape) for _, shape in kernels)
  limit = sum(_limit_bits(shape) for _, shape in kernels) / 8
  per_kernel = []
  for path, shape in kernels:
    vector_length = math.prod(shape[:-1])
    packed_bits = max(1, (vector_length - 1).bit_length())
    limit_bits = _limit_bits(shape) / math.prod(shape)
    per_kernel.append((label, path, shape, vector_length, packed_bits,
                       limit_bits))
  return sizes, num_permuted, limit, per_kernel


def _kb(size):
  return f'{size / 1024:,.1f}'


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true',
                      help='F2 and Conv7 only (no Conv13)')
  args = parser.parse_args()
  runs = [(label, *MODELS[label], False) for label in MODELS
          if not (args.quick and label == 'Conv13')]
  runs.insert(1, ('F2 weight-agnostic', *MODELS['F2'], True))
  rows, kernel_rows = [], []
  for label, name, input_shape, agnostic in runs:
    with tempfile.TemporaryDirectory() as directory:
      sizes, num_permuted, limit, per_kernel = measure(
          label, name, input_shape, directory, agnostic)
    rows.append((label, num_permuted, sizes, limit))
    kernel_rows += [] if agnostic else per_kernel

  print('Sizes in KiB. Ratios: float32 bytes over the key+uint and '
        'key+packed exports, orbax over the smallest export, and the smallest '
        'export over the information limit of its permutations.\n')
  print('| model | permuted weights | float32 | orbax | values+uint '
        '| key+uint | key+packed | 1 bit | limit | float32 / uint '
        '| float32 / packed | orbax / smallest | smallest / limit |')
  print('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: '
        '| ---: | ---: | ---: | ---: |')
  columns = ('float32', 'orbax', 'values+uint', 'key+uint', 'key+packed',
             '1 bit')
  for label, num_permuted, sizes, limit in rows:
    agnostic = '1 bit' in sizes
    smallest = sizes['1 bit'] if agnostic else sizes['key+packed']
    cells = [_kb(sizes[c]) if c in sizes else '' for c in columns]
    # The one-bit encoding's limit is a binomial one, not log2(n!).
    cells += ['', '', ''] if agnostic else [
        _kb(limit), f'{sizes["float32"] / sizes["key+uint"]:.2f}',
        f'{sizes["float32"] / sizes["key+packed"]:.2f}']
    cells += [f'{sizes["orbax"] / smallest:.2f}',
              '' if agnostic else f'{smallest / limit:.2f}']
    print(f'| {label} | {num_permuted:,} | {" | ".join(cells)} |')

  print('\nPer kernel: packed bits per weight against the information limit '
        'log2(n!)/n.\n')
  print('| model | kernel | shape | n | packed bits | limit bits | '
        'packed / limit |')
  print('| --- | --- | --- | ---: | ---: | ---: | ---: |')
  for label, path, shape, vector_length, packed_bits, limit_bits in (
      kernel_rows):
    print(f'| {label} | `{path}` | {shape} | {vector_length:,} | '
          f'{packed_bits} | {limit_bits:.2f} | '
          f'{packed_bits / limit_bits:.3f} |')


if __name__ == '__main__':
  main()
