"""Tests for the permutation-only export and its bit-exact restore."""

import functools
import json
import os
import zipfile

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import laperm_jax as lp
from laperm_jax import _export

SHAPES = {
    'bias': (6,),
    'vector': (7,),
    'dense': (9, 6),
    'conv': (3, 3, 2, 4),
    'conv3d': (2, 2, 2, 3, 2),
}
# Every leaf but the bias, the 1-D 'vector' included.
MASK = {name: name != 'bias' for name in SHAPES}


def _init_fn(dtype=jnp.float32):
  def init_fn(key):
    keys = jax.random.split(key, len(SHAPES))
    return {name: jax.random.normal(k, shape, dtype)
            for k, (name, shape) in zip(keys, SHAPES.items())}
  return init_fn


def _train(params, tx, steps=4):
  """A few steps on random gradients: non-trivial ranks, mid-period."""

  def step(carry, key):
    params, opt_state = carry
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    grads = treedef.unflatten([jax.random.normal(k, x.shape, x.dtype)
                               for k, x in zip(keys, leaves)])
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  # One compilation for all the steps.
  carry, _ = jax.jit(lambda carry, keys: jax.lax.scan(step, carry, keys))(
      (params, tx.init(params)), jax.random.split(jax.random.key(1), steps))
  return carry


def _bits(x):
  x = np.asarray(x)
  return x.view(np.dtype(f'u{x.dtype.itemsize}'))


def _assert_bitwise_equal(restored, expected):
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(_bits(got), _bits(want))


def _manifest(path):
  with np.load(path) as archive:
    return json.loads(archive['manifest'].tobytes().decode())


def _rewrite(path, members=None, manifest=None):
  """Rewrites an export with some members (or the manifest) replaced."""
  with np.load(path) as archive:
    arrays = {name: archive[name] for name in archive.files}
  if manifest is not None:
    arrays['manifest'] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
  arrays.update(members or {})
  with open(path, 'wb') as file:
    np.savez(file, **arrays)


@functools.cache
def _run(dtype):
  """A run on the leaves of SHAPES, trained once per dtype for all tests."""
  return _train(_init_fn(dtype)(jax.random.key(0)),
                lp.laperm(optax.adam(0.1), 3, mask=MASK))


def _exported(tmp_path, dtype=jnp.float32, regenerate=False, **kwargs):
  """An exported run: (path, params, opt_state, init_fn)."""
  init_fn = _init_fn(dtype)
  params, opt_state = _run(jnp.dtype(dtype))
  path = tmp_path / 'net.npz'
  if regenerate:
    kwargs.update(init_fn=init_fn, init_key=jax.random.key(0))
  lp.export_permutations(params, opt_state, path, **kwargs)
  return path, params, opt_state, init_fn


# ---------------------------------------------------------------------------
# Bit-exact round trips.


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('regenerate', [False, True])
@pytest.mark.parametrize('pack_ranks', [False, True])
def test_restores_synchronize_bit_for_bit(tmp_path, dtype, regenerate,
                                          pack_ranks):
  path, params, opt_state, init_fn = _exported(
      tmp_path, dtype, regenerate, pack_ranks=pack_ranks)
  restored = lp.restore_permutations(path, params, init_fn=init_fn)
  _assert_bitwise_equal(restored, lp.synchronize(params, opt_state))
  # Mid-period, so the params are not synced yet; and training reordered.
  assert not np.array_equal(_bits(restored['dense']), _bits(params['dense']))
  initial = init_fn(jax.random.key(0))['dense']
  assert not np.array_equal(lp.ranks(restored['dense']), lp.ranks(initial))
  encodings = {e['path']: e['encoding'] for e in _manifest(path)['leaves']}
  assert encodings == {
      f"['{name}']": 'ranks' if MASK[name] else 'raw' for name in SHAPES}


def _enable_x64():
  # jax.enable_x64 replaced jax.experimental.enable_x64 in newer releases.
  if hasattr(jax, 'enable_x64'):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()


def test_float64(tmp_path):
  with _enable_x64():
    for regenerate in (False, True):
      path, params, opt_state, init_fn = _exported(tmp_path, jnp.float64,
                                                   regenerate)
      like = jax.eval_shape(lambda p=params: p)
      restored = lp.restore_permutations(path, like, init_fn=init_fn)
      assert restored['dense'].dtype == jnp.float64
      _assert_bitwise_equal(restored, lp.synchronize(params, opt_state))


def test_stored_file_layout(tmp_path):
  path, params, _, _ = _exported(tmp_path, regenerate=True)
  manifest = _manifest(path)
  assert manifest['format'] == 'laperm_jax.permutations'
  assert manifest['version'] == 3
  assert manifest['init_key'] == {'impl': 'threefry2x32'}
  with np.load(path) as archive:
    files = set(archive.files)
    np.testing.assert_array_equal(archive['init_key'],
                                  jax.random.key_data(jax.random.key(0)))
    # The conv kernel: 4 weight vectors of 18, ceil(log2 18) = 5 bits each.
    conv = [e['path'] for e in manifest['leaves']].index("['conv']")
    assert manifest['leaves'][conv]['rank_bits'] == 5
    assert archive[f'{conv}.ranks'].nbytes == 72 * 5 // 8
  # Regenerated: no sorted values are stored.
  assert not any(name.endswith('.sorted') for name in files)
  assert len(files) == len(SHAPES) + 2


@pytest.mark.parametrize('vector_length,dtype', [
    (256, np.uint8), (257, np.uint16), (65536, np.uint16), (65537, np.uint32)])
def test_unpacked_ranks_take_the_smallest_unsigned_dtype(vector_length, dtype):
  assert _export._rank_dtype(vector_length) == dtype  # pylint: disable=protected-access


@pytest.mark.parametrize('bits', [1, 3, 8, 13, 17, 32])
def test_bit_packing_round_trips(bits):
  rng = np.random.default_rng(bits)
  ranks = rng.integers(0, 2**bits, 1001, dtype=np.uint64).astype(np.uint32)
  packed = _export._pack(ranks, bits)  # pylint: disable=protected-access
  assert packed.nbytes == -(-1001 * bits // 8)
  np.testing.assert_array_equal(
      _export._unpack(packed, bits, 1001), ranks)  # pylint: disable=protected-access


def test_pruned_net_with_ties(tmp_path):
  base = _init_fn()

  def init_fn(key):
    return lp.random_prune(jax.random.fold_in(key, 1), base(key), 0.7,
                           mask=MASK, first_layer_max=None).params

  params, opt_state = _train(init_fn(jax.random.key(0)),
                             lp.laperm(optax.adam(0.1), 3, mask=MASK))
  # The pruned zeros tie: ranked by position.
  synced = lp.synchronize(params, opt_state)
  assert np.sum(np.asarray(synced['dense']) == 0) > 1
  path = tmp_path / 'pruned.npz'
  for kwargs in ({}, {'init_fn': init_fn, 'init_key': jax.random.key(0)}):
    lp.export_permutations(params, opt_state, path, **kwargs)
    restored = lp.restore_permutations(path, params, init_fn=init_fn)
    _assert_bitwise_equal(restored, synced)


def test_signed_zeros_and_subnormals_follow_the_sync_order(tmp_path):
  # Values that tie in comparisons but differ in bits: the export uses the
  # order of the params, as the sync does, not that of the synced values.
  tiny = np.finfo(np.float32).smallest_subnormal
  init = jnp.asarray(np.array([[0.0, -0.0, tiny, -tiny, 1.0, -1.0]] * 2,
                              np.float32).T)
  opt_state = lp.laperm(optax.sgd(1.0), 1).init({'w': init})
  moved = {'w': jnp.asarray(np.array([[5, 4, 3, 2, 1, 0],
                                      [0, 1, 2, 3, 4, 5]], np.float32).T)}
  path = tmp_path / 'zeros.npz'
  lp.export_permutations(moved, opt_state, path)
  _assert_bitwise_equal(lp.restore_permutations(path, moved),
                        lp.synchronize(moved, opt_state))


@pytest.mark.parametrize('value,dtype', [(0.03, jnp.float32),
                                         (-0.08, jnp.bfloat16)])
def test_weight_agnostic_net_takes_one_bit_per_weight(tmp_path, value, dtype):
  shapes = {'hidden': (784, 128), 'head': (128, 10), 'bias': (10,)}
  params = {name: jnp.zeros(shape, dtype) for name, shape in shapes.items()}
  params = lp.shared_value(jax.random.key(0), params, value, keep=0.1)
  params, opt_state = _train(params, lp.laperm(optax.adam(0.01), 3))
  path = tmp_path / 'agnostic.npz'
  lp.export_permutations(params, opt_state, path)
  restored = lp.restore_permutations(path, params)
  _assert_bitwise_equal(restored, lp.synchronize(params, opt_state))
  leaves = {e['path']: e for e in _manifest(path)['leaves']}
  assert leaves["['hidden']"]['encoding'] == 'binary'
  with np.load(path) as archive:
    hidden = list(leaves).index("['hidden']")
    assert archive[f'{hidden}.mask'].nbytes == 784 * 128 // 8
  # Without the one-bit encoding: 10 bits per weight, plus the values.
  lp.export_permutations(params, opt_state, tmp_path / 'ranks.npz',
                         binary=False)
  assert os.path.getsize(tmp_path / 'ranks.npz') > 10 * os.path.getsize(path)


def test_all_weights_shared_is_binary_too(tmp_path):
  params = lp.shared_value(jax.random.key(0), {'w': jnp.zeros((5, 3))}, 0.5,
                           keep=1.0)
  params, opt_state = _train(params, lp.laperm(optax.adam(0.1), 2))
  path = tmp_path / 'ones.npz'
  lp.export_permutations(params, opt_state, path)
  assert _manifest(path)['leaves'][0]['encoding'] == 'binary'
  _assert_bitwise_equal(lp.restore_permutations(path, params),
                        lp.synchronize(params, opt_state))


def test_reset_mask_leaves_are_stored_as_a_sync_sets_them(tmp_path):
  params = _init_fn()(jax.random.key(0))
  tx = lp.laperm(optax.adam(0.1), 3, mask=MASK,
                 reset_mask={name: name == 'bias' for name in SHAPES})
  params, opt_state = _train(params, tx)
  path = tmp_path / 'reset.npz'
  lp.export_permutations(params, opt_state, path)
  restored = lp.restore_permutations(path, params)
  _assert_bitwise_equal(restored, lp.synchronize(params, opt_state))
  np.testing.assert_array_equal(restored['bias'],
                                _init_fn()(jax.random.key(0))['bias'])


def test_inside_chain_with_a_raw_key(tmp_path):
  init_fn = _init_fn()
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   lp.laperm(optax.adam(0.1), 2, mask=MASK))
  params, opt_state = _train(init_fn(jax.random.PRNGKey(3)), tx)
  path = tmp_path / 'chain.npz'
  lp.export_permutations(params, opt_state, path, init_fn=init_fn,
                         init_key=jax.random.PRNGKey(3))
  assert _manifest(path)['init_key'] == {'impl': None}
  _assert_bitwise_equal(
      lp.restore_permutations(path, params, init_fn=init_fn),
      lp.synchronize(params, opt_state))


class _Net(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(32)(x))
    return nn.Dense(10)(x)


def test_flax_linen_model_after_training(tmp_path):
  model = _Net()
  rng = np.random.default_rng(0)
  images = rng.normal(size=(64, 8, 8, 1)).astype(np.float32)
  labels = rng.integers(0, 10, 64)
  init_fn = lambda key: model.init(key, images[:1])['params']
  params = init_fn(jax.random.key(0))
  tx = lp.laperm(optax.adam(1e-2), 5)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(params):
      logits = model.apply({'params': params}, images)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
    updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state,
                                   params)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(12):  # Two syncs, then two steps past the last one.
    params, opt_state = step(params, opt_state)
  synced = lp.synchronize(params, opt_state)
  kernel = synced['Dense_0']['kernel']
  assert not np.array_equal(lp.ranks(kernel), lp.ranks(
      init_fn(jax.random.key(0))['Dense_0']['kernel']))
  for kwargs in ({}, {'init_fn': init_fn, 'init_key': jax.random.key(0)}):
    path = tmp_path / 'linen.npz'
    lp.export_permutations(params, opt_state, path, **kwargs)
    restored = lp.restore_permutations(
        path, jax.eval_shape(init_fn, jax.random.key(0)), init_fn=init_fn)
    _assert_bitwise_equal(restored, synced)
    np.testing.assert_array_equal(
        model.apply({'params': restored}, images),
        model.apply({'params': synced}, images))


# ---------------------------------------------------------------------------
# Corrupt or mismatched files.


def _restore_error(path, target, init_fn=None):
  with pytest.raises(ValueError) as error:
    lp.restore_permutations(path, target, init_fn=init_fn)
  return str(error.value)


def _leaf_index(path, name):
  return [e['path'] for e in _manifest(path)['leaves']].index(f"['{name}']")


def test_target_with_other_shapes_or_leaves(tmp_path):
  path, params, _, _ = _exported(tmp_path)
  wrong = dict(params, dense=jnp.zeros((6, 9)))
  message = _restore_error(path, wrong)
  assert "['dense']" in message and '[9, 6]' in message
  message = _restore_error(path, dict(params, dense=params['dense'].astype(
      jnp.bfloat16)))
  assert "['dense']" in message and 'bfloat16' in message
  extra = dict(params, other=jnp.zeros(3))
  assert "['other']" in _restore_error(path, extra)
  assert "['conv']" in _restore_error(
      path, {k: v for k, v in params.items() if k != 'conv'})


@pytest.mark.parametrize('pack_ranks', [False, True])
def test_repeated_or_missing_rank(tmp_path, pack_ranks):
  path, params, _, _ = _exported(tmp_path, pack_ranks=pack_ranks)
  index = _leaf_index(path, 'conv')
  ranks = np.asarray(lp.ranks(params['conv'])).astype(np.uint32)
  vectors = lp.as_vectors(ranks).copy()
  vectors[3, 2] = vectors[4, 2]  # Vector 2 repeats one rank, misses another.
  ranks = vectors.reshape(ranks.shape)
  stored = (_export._pack(ranks.reshape(-1), 5) if pack_ranks  # pylint: disable=protected-access
            else ranks.astype(np.uint8))
  _rewrite(path, {f'{index}.ranks': stored})
  message = _restore_error(path, params)
  assert "['conv']" in message and 'weight vector 2' in message
  assert 'not a permutation' in message


@pytest.mark.parametrize('pack_ranks', [False, True])
def test_out_of_range_rank(tmp_path, pack_ranks):
  path, params, _, _ = _exported(tmp_path, pack_ranks=pack_ranks)
  index = _leaf_index(path, 'dense')
  # 9 entries per vector, 4 bits: 9 to 15 fit in the packing but are no rank.
  ranks = np.asarray(lp.ranks(params['dense'])).astype(np.uint32)
  ranks[0, 5] = 12
  stored = (_export._pack(ranks.reshape(-1), 4) if pack_ranks  # pylint: disable=protected-access
            else ranks.astype(np.uint8))
  _rewrite(path, {f'{index}.ranks': stored})
  message = _restore_error(path, params)
  assert "['dense']" in message and 'weight vector 5' in message
  assert 'rank 12, out of range' in message


def test_swapped_ranks_fail_the_checksum(tmp_path):
  # A valid permutation, but not the exported one.
  path, params, _, _ = _exported(tmp_path, pack_ranks=False)
  index = _leaf_index(path, 'dense')
  with np.load(path) as archive:
    ranks = archive[f'{index}.ranks'].copy()
  ranks[[0, 1], 0] = ranks[[1, 0], 0]
  _rewrite(path, {f'{index}.ranks': ranks})
  message = _restore_error(path, params)
  assert "['dense']" in message and 'restored values' in message
  assert 'SHA-256' in message


def test_init_fn_that_regenerates_other_values(tmp_path):
  path, params, _, init_fn = _exported(tmp_path, regenerate=True)
  # Another key: the same shapes, other values.
  other = lambda key: init_fn(jax.random.fold_in(key, 1))
  message = _restore_error(path, params, init_fn=other)
  # The first permuted leaf in flattened order.
  assert "['conv']" in message and 'SHA-256' in message
  assert 'init_fn(key)' in message
  # Another dtype.
  message = _restore_error(path, params, init_fn=_init_fn(jnp.bfloat16))
  assert 'bfloat16' in message
  # No init_fn at all.
  assert 'init_fn' in _restore_error(path, params)


def test_export_checks_that_init_fn_regenerates_the_init(tmp_path):
  init_fn = _init_fn()
  params, opt_state = _run(jnp.dtype(jnp.float32))
  with pytest.raises(ValueError, match=r"export_permutations: .*\['conv'\]"):
    lp.export_permutations(params, opt_state, tmp_path / 'x.npz',
                           init_fn=init_fn, init_key=jax.random.key(1))
  with pytest.raises(ValueError, match='together'):
    lp.export_permutations(params, opt_state, tmp_path / 'x.npz',
                           init_fn=init_fn)
  assert not os.path.exists(tmp_path / 'x.npz')


def test_modified_sorted_values(tmp_path):
  path, params, _, _ = _exported(tmp_path)
  index = _leaf_index(path, 'vector')
  with np.load(path) as archive:
    values = archive[f'{index}.sorted'].copy()
  values[0] ^= 1  # One ulp off.
  _rewrite(path, {f'{index}.sorted': values})
  message = _restore_error(path, params)
  assert "['vector']" in message and 'stored sorted values' in message


def test_modified_one_bit_mask(tmp_path):
  params = lp.shared_value(jax.random.key(0), {'w': jnp.zeros((16, 4))},
                           0.1, keep=0.5)
  params, opt_state = _train(params, lp.laperm(optax.adam(0.1), 2))
  path = tmp_path / 'agnostic.npz'
  lp.export_permutations(params, opt_state, path)
  with np.load(path) as archive:
    mask = archive['0.mask'].copy()
  mask[0] ^= 1
  _rewrite(path, {'0.mask': mask})
  assert "['w']" in _restore_error(path, params)


# Edits with their hashes recomputed: the restore still refuses a file
# whose weight vectors are no permutation of their initial values.


def _rehash(path, name, restored, sorted_values=None):
  """Rewrites leaf ``name``'s hashes to match ``restored`` (and its values)."""
  manifest = _manifest(path)
  entry = manifest['leaves'][_leaf_index(path, name)]
  entry['sha256'] = _export._sha256(np.asarray(restored))  # pylint: disable=protected-access
  if sorted_values is not None:
    entry['sorted_sha256'] = _export._sha256(sorted_values)  # pylint: disable=protected-access
  _rewrite(path, manifest=manifest)


def _moved(init_params):
  """A LaPerm state of ``init_params``, and params moved off them by noise.

  Cheaper than training (nothing to compile) and as good for these tests:
  the noise reorders every weight vector.
  """
  opt_state = lp.laperm(optax.sgd(1.0), 1).init(init_params)
  leaves, treedef = jax.tree.flatten(init_params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return treedef.unflatten([
      leaf + 0.05 * jax.random.normal(key, leaf.shape, leaf.dtype)
      for key, leaf in zip(keys, leaves)]), opt_state


def _agnostic_init(key):
  return lp.shared_value(key, {'w': jnp.zeros((16, 4))}, 0.1, keep=0.5)


@functools.cache
def _agnostic_run():
  return (_agnostic_init,
          *_moved(_agnostic_init(jax.random.key(0))))


def _agnostic_export(tmp_path, regenerate):
  """The weight-agnostic run exported, with its key (``regenerate``) or its
  stored values; returns ``(init_fn, params, opt_state, path)``."""
  init_fn, params, opt_state = _agnostic_run()
  path = tmp_path / 'agnostic.npz'
  kwargs = dict(init_fn=init_fn,
                init_key=jax.random.key(0)) if regenerate else {}
  lp.export_permutations(params, opt_state, path, **kwargs)
  return init_fn, params, opt_state, path


@pytest.mark.parametrize('regenerate', [False, True])
def test_binary_leaf_records_each_vectors_count_of_nonzeros(tmp_path,
                                                             regenerate):
  init_fn, params, opt_state, path = _agnostic_export(tmp_path, regenerate)
  (entry,) = _manifest(path)['leaves']
  assert entry['counts'] == ('init' if regenerate else 'stored')
  with np.load(path) as archive:
    if regenerate:
      assert '0.counts' not in archive.files
    else:
      initial = init_fn(jax.random.key(0))['w']
      np.testing.assert_array_equal(archive['0.counts'],
                                    np.count_nonzero(initial, axis=0))
      assert archive['0.counts'].dtype == np.uint8
  _assert_bitwise_equal(lp.restore_permutations(path, params, init_fn=init_fn),
                        lp.synchronize(params, opt_state))


@pytest.mark.parametrize('regenerate', [False, True])
def test_binary_leaf_that_moves_a_weight_between_vectors(tmp_path,
                                                         regenerate):
  init_fn, params, opt_state, path = _agnostic_export(tmp_path, regenerate)
  synced = np.asarray(lp.synchronize(params, opt_state)['w'])
  # One weight moves from vector 2 to vector 3: the leaf keeps its count of
  # nonzeros, vectors 2 and 3 do not.
  edited = synced.copy()
  row = int(np.flatnonzero((synced[:, 2] != 0) & (synced[:, 3] == 0))[0])
  edited[row, [2, 3]] = synced[row, [3, 2]]
  _rewrite(path, {'0.mask': np.packbits(edited.reshape(-1) != 0,
                                        bitorder='little')})
  _rehash(path, 'w', edited)
  message = _restore_error(path, params, init_fn=init_fn)
  assert "leaf ['w']: weight vector 2" in message
  assert '(2 of 4 weight vectors are refused)' in message
  if not regenerate:
    count = int(np.count_nonzero(synced[:, 2]))
    assert f'holds {count - 1} nonzero weights, its initial values {count}' in (
        message)


def test_stored_sorted_values_out_of_order(tmp_path):
  params, opt_state = _moved({'w': jax.random.normal(jax.random.key(0),
                                                     (9, 6))})
  path = tmp_path / 'net.npz'
  lp.export_permutations(params, opt_state, path)
  with np.load(path) as archive:
    values = archive['0.sorted'].copy()
  # Vector 4 (a column) reversed: each vector keeps its values, but the
  # ranks now pick them in the opposite order.
  values[:, 4] = values[::-1, 4]
  _rewrite(path, {'0.sorted': values})
  sorted_values = values.view(np.float32)
  _rehash(path, 'w', np.take_along_axis(
      sorted_values, np.asarray(lp.ranks(params['w'])), axis=0),
          sorted_values)
  message = _restore_error(path, params)
  assert ("leaf ['w']: the stored sorted values of weight vector 4 are "
          'not in ascending order (1 of 6 weight vectors') in message


def test_ascending_check_lets_backends_tie_zeros_subnormals_and_nans():
  tiny = np.finfo(np.float32).smallest_subnormal
  # The order of ties is a backend's choice: XLA's CPU sort, e.g., compares
  # -0.0 and subnormals equal to 0.0.
  ties = np.array([[-1.0, tiny, -0.0, 0.0, -tiny, 2.0, np.nan, -np.nan]],
                  np.float32).T
  _export._check_ascending(ties, (0,))  # pylint: disable=protected-access
  for unsorted in ([[1.0], [-tiny]], [[np.nan], [np.inf]], [[2.0], [1.0]]):
    with pytest.raises(ValueError, match='weight vector 0 are not in'):
      _export._check_ascending(np.array(unsorted, np.float32), (0,))  # pylint: disable=protected-access


@pytest.mark.parametrize('initial,restored', [
    ([0.0, 1.0], [-0.0, 1.0]),  # Equal as floats, other bits.
    ([np.nan, 1.0], [-np.nan, 1.0]),  # Another NaN payload.
    ([1.0, 1.0], [1.0, np.nextafter(np.float32(1), np.float32(2))]),
])
def test_permutation_check_is_bitwise(initial, restored):
  column = lambda values: np.array([values, values[::-1]], np.float32).T
  _export._check_is_permutation(column(initial)[::-1], column(initial), (0,))  # pylint: disable=protected-access
  with pytest.raises(ValueError, match=r'weight vector 0 is not a permutation '
                     r'.* \(2 of 2 weight vectors'):
    _export._check_is_permutation(column(restored), column(initial), (0,))  # pylint: disable=protected-access


def test_version_2_binary_leaves_are_refused(tmp_path):
  _, params, opt_state = _agnostic_run()
  path = tmp_path / 'agnostic.npz'
  lp.export_permutations(params, opt_state, path)
  manifest = _manifest(path)
  manifest['version'] = 2
  _rewrite(path, manifest=manifest)
  message = _restore_error(path, params)
  assert "leaf ['w']: a binary leaf of a version 2 file" in message
  assert 'export it again (version 3)' in message


@pytest.mark.parametrize('change,expected', [
    (lambda m, _: m.update(version=4), 'version 4'),
    (lambda m, _: m.update(format='other'), 'not a permutation export'),
    (lambda _, dense: dense.update(encoding='zstd'),
     "['dense']: unknown encoding 'zstd'"),
    (lambda _, dense: dense.update(sorted='cloud'),
     "['dense']: unknown source"),
    (lambda _, dense: dense.update(rank_bits=5), "['dense']: ranks packed"),
    (lambda _, dense: dense.update(dtype='float17'), "['dense']"),
    (lambda _, dense: dense.pop('sha256'), "['dense']"),
])
def test_unknown_or_inconsistent_manifest(tmp_path, change, expected):
  path, params, _, _ = _exported(tmp_path)
  manifest = _manifest(path)
  change(manifest, manifest['leaves'][_leaf_index(path, 'dense')])
  _rewrite(path, manifest=manifest)
  assert expected in _restore_error(path, params)


def test_truncated_file(tmp_path):
  path, params, _, _ = _exported(tmp_path)
  data = path.read_bytes()
  for size in (0, 100, len(data) // 2, len(data) - 10):
    path.write_bytes(data[:size])
    assert 'net.npz' in _restore_error(path, params)


def test_corrupt_byte_fails_the_zip_checksum(tmp_path):
  path, params, _, _ = _exported(tmp_path)
  index = _leaf_index(path, 'conv')
  with zipfile.ZipFile(path) as archive:
    info = archive.getinfo(f'{index}.ranks.npy')
  data = bytearray(path.read_bytes())
  # The local header: 30 bytes, the name, an extra field of the length in
  # bytes 28-29; the member is stored, so its last byte is a byte of ranks.
  start = info.header_offset + 30 + len(info.filename) + int.from_bytes(
      data[info.header_offset + 28:info.header_offset + 30], 'little')
  data[start + info.file_size - 1] ^= 0xFF
  path.write_bytes(bytes(data))
  message = _restore_error(path, params)
  assert "['conv']" in message and 'CRC' in message


def test_missing_member(tmp_path):
  path, params, _, _ = _exported(tmp_path)
  index = _leaf_index(path, 'conv3d')
  with np.load(path) as archive:
    arrays = {name: archive[name] for name in archive.files
              if name != f'{index}.ranks'}
  with open(path, 'wb') as file:
    np.savez(file, **arrays)
  assert "['conv3d']" in _restore_error(path, params)


def test_not_a_laperm_state_or_non_finite_params(tmp_path):
  params = _init_fn()(jax.random.key(0))
  with pytest.raises(ValueError, match='exactly one LaPermState'):
    lp.export_permutations(params, optax.adam(0.1).init(params),
                           tmp_path / 'x.npz')
  opt_state = lp.laperm(optax.adam(0.1), 3, mask=MASK).init(params)
  params['conv'] = params['conv'].at[0, 0, 0, 0].set(jnp.nan)
  with pytest.raises(ValueError, match=r"\['conv'\] holds a non-finite"):
    lp.export_permutations(params, opt_state, tmp_path / 'x.npz')


# ---------------------------------------------------------------------------
# Layouts other than "all axes but the last".

# An attention query kernel (features, heads, head_dim), a transposed
# (out, in) kernel, and a conv kernel whose vectors are single input planes.
LAYOUT_SHAPES = {'query': (10, 4, 3), 'transposed': (5, 9),
                 'planes': (3, 3, 2, 4), 'bias': (4,)}
LAYOUT = {'query': (0,), 'transposed': (1,), 'planes': (0, 1), 'bias': None}


def _layout_init_fn(key):
  keys = jax.random.split(key, len(LAYOUT_SHAPES))
  return {name: jax.random.normal(k, shape)
          for k, (name, shape) in zip(keys, LAYOUT_SHAPES.items())}


@functools.cache
def _layout_run():
  return _train(_layout_init_fn(jax.random.key(0)),
                lp.laperm(optax.adam(0.1), 3, vector_axes=LAYOUT))


@pytest.mark.parametrize('regenerate', [False, True])
@pytest.mark.parametrize('pack_ranks', [False, True])
def test_layout_round_trip_is_bitwise(tmp_path, regenerate, pack_ranks):
  params, opt_state = _layout_run()
  path = tmp_path / 'net.npz'
  kwargs = dict(init_fn=_layout_init_fn,
                init_key=jax.random.key(0)) if regenerate else {}
  lp.export_permutations(params, opt_state, path, pack_ranks=pack_ranks,
                         vector_axes=LAYOUT, **kwargs)
  restored = lp.restore_permutations(path, params, init_fn=_layout_init_fn)
  synced = lp.synchronize(params, opt_state, vector_axes=LAYOUT)
  _assert_bitwise_equal(restored, synced)
  layouts = {entry['path']: entry.get('vector_axes')
             for entry in _manifest(path)['leaves']}
  assert layouts == {"['bias']": None, "['planes']": [0, 1],
                     "['query']": [0], "['transposed']": [1]}
  # The restore read the layout from the file: each fan-in is a permutation
  # of its initial values, which the default layout would not give.
  initial = _layout_init_fn(jax.random.key(0))
  for name in ('query', 'transposed', 'planes'):
    np.testing.assert_array_equal(
        _bits(lp.sort_vectors(restored[name], vector_axes=LAYOUT[name])),
        _bits(lp.sort_vectors(initial[name], vector_axes=LAYOUT[name])))


def test_layout_binary_round_trip(tmp_path):
  params = lp.shared_value(jax.random.key(0), {'w': jnp.zeros((12, 4, 2))},
                           0.1, keep=0.5, per_vector=True, vector_axes=(0,))
  params, opt_state = _train(params, lp.laperm(optax.adam(0.1), 2,
                                               vector_axes=(0,)))
  path = tmp_path / 'agnostic.npz'
  lp.export_permutations(params, opt_state, path, vector_axes=(0,))
  (entry,) = _manifest(path)['leaves']
  assert entry['encoding'] == 'binary' and entry['vector_axes'] == [0]
  _assert_bitwise_equal(lp.restore_permutations(path, params),
                        lp.synchronize(params, opt_state, vector_axes=(0,)))


def test_export_reads_the_layout_from_the_state(tmp_path):
  params, opt_state = _layout_run()
  lp.export_permutations(params, opt_state, tmp_path / 'x.npz')
  lp.export_permutations(params, opt_state, tmp_path / 'y.npz',
                         vector_axes=LAYOUT)
  assert (tmp_path / 'x.npz').read_bytes() == (tmp_path / 'y.npz').read_bytes()
  default = lambda path, leaf: None  # The default layout, given explicitly.
  with pytest.raises(ValueError, match=r"export_permutations: .* leaf "
                     r"\['planes'\] .* pass the vector_axes"):
    lp.export_permutations(params, opt_state, tmp_path / 'z.npz',
                           vector_axes=default)


def test_version_1_files_mean_the_default_layout(tmp_path):
  # Files written before layouts: no vector_axes, all axes but the last.
  path, params, opt_state, _ = _exported(tmp_path)
  manifest = _manifest(path)
  manifest['version'] = 1
  for entry in manifest['leaves']:
    entry.pop('vector_axes', None)
  _rewrite(path, manifest=manifest)
  _assert_bitwise_equal(lp.restore_permutations(path, params),
                        lp.synchronize(params, opt_state))


@pytest.mark.parametrize('vector_axes, expected', [
    (None, 'records no vector_axes'),
    ([2], 'names axis 2, out of range'),
    ([1, 0], 'not as sorted non-negative axes'),
    ([], 'empty tuple'),
])
def test_bad_recorded_layout(tmp_path, vector_axes, expected):
  path, params, _, _ = _exported(tmp_path)
  manifest = _manifest(path)
  manifest['leaves'][_leaf_index(path, 'dense')]['vector_axes'] = vector_axes
  _rewrite(path, manifest=manifest)
  message = _restore_error(path, params)
  assert "['dense']" in message and expected in message
