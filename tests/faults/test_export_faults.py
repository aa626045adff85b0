"""Faults: permutation exports edited with their hashes recomputed.

The SHA-256 hashes of an export catch accidents only: whoever edits a file
can recompute them. These edits recompute every hash the file records, and
the restore must still refuse them, naming the leaf and the weight vector,
and return nothing.
"""

import functools
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import laperm_jax as lp

# F1 of the paper: a 784x10 dense kernel of 0s and one value, about 4/7
# nonzero.
F1_SHAPE = (784, 10)


def _f1_init(key):
  return lp.shared_value(key, {'w': jnp.zeros(F1_SHAPE)}, 0.08, keep=4 / 7)


def _dense_init(key):
  return {'w': jax.random.normal(key, (64, 10))}


def _sha256(values):
  return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def _edit(path, members, hashes):
  """Rewrites the export at ``path``: ``members``, and leaf 0's ``hashes``."""
  with np.load(path) as archive:
    arrays = {name: archive[name] for name in archive.files}
  manifest = json.loads(arrays['manifest'].tobytes().decode())
  manifest['leaves'][0].update(hashes)
  arrays.update(members)
  arrays['manifest'] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
  with open(path, 'wb') as file:
    np.savez(file, **arrays)


@functools.cache
def _moved(init_fn):
  """A LaPerm state of ``init_fn``'s params, and params moved off them.

  Random moves stand for training: they reorder every weight vector.
  """
  params = init_fn(jax.random.key(0))
  opt_state = lp.laperm(optax.sgd(1.0), 1).init(params)
  noise = jax.random.normal(jax.random.key(1), params['w'].shape)
  return {'w': params['w'] + 0.05 * noise}, opt_state


def _assert_refused(path, target, init_fn, *expected):
  before = path.read_bytes()
  with pytest.raises(ValueError) as error:
    lp.restore_permutations(path, target, init_fn=init_fn)
  message = str(error.value)
  assert str(path) in message and "leaf ['w']" in message
  for text in expected:
    assert text in message
  assert path.read_bytes() == before  # The restore writes nothing.


@pytest.mark.parametrize('regenerate', [False, True])
def test_binary_mask_set_to_all_ones(tmp_path, regenerate):
  params, opt_state = _moved(_f1_init)
  path = tmp_path / 'f1.npz'
  kwargs = dict(init_fn=_f1_init,
                init_key=jax.random.key(0)) if regenerate else {}
  lp.export_permutations(params, opt_state, path, **kwargs)
  # Every weight set to the shared value: the mask all ones, and the
  # restored leaf's SHA-256 recomputed for it.
  all_ones = np.full(F1_SHAPE, 0.08, np.float32)
  _edit(path, {'0.mask': np.packbits(np.ones(all_ones.size, bool),
                                     bitorder='little')},
        {'sha256': _sha256(all_ones)})
  initial = np.count_nonzero(_f1_init(jax.random.key(0))['w'], axis=0)
  expected = ['weight vector 0', '(10 of 10 weight vectors are refused)']
  if not regenerate:
    expected.append(f'holds 784 nonzero weights, its initial values '
                    f'{initial[0]}')
  _assert_refused(path, params, _f1_init, *expected)


@pytest.mark.parametrize('reverse', ['member', 'each vector'])
def test_stored_sorted_values_reversed(tmp_path, reverse):
  params, opt_state = _moved(_dense_init)
  path = tmp_path / 'net.npz'
  lp.export_permutations(params, opt_state, path)
  with np.load(path) as archive:
    stored = archive['0.sorted']
  # The whole member reversed moves values between vectors too; each
  # vector reversed keeps every vector's values.
  edited = stored[::-1, ::-1] if reverse == 'member' else stored[::-1]
  sorted_values = np.ascontiguousarray(edited).view(np.float32)
  restored = np.take_along_axis(sorted_values,
                                np.asarray(lp.ranks(params['w'])), axis=0)
  _edit(path, {'0.sorted': edited},
        {'sorted_sha256': _sha256(sorted_values), 'sha256': _sha256(restored)})
  _assert_refused(path, params, None,
                  'the stored sorted values of weight vector 0 are not in '
                  'ascending order (10 of 10 weight vectors are refused)')
