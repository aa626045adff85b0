"""Tests for the weight-vector convention and the sorts that permute vectors."""

import re
import subprocess
import sys

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import laperm_jax as lp
from laperm_jax import _weight_vectors

SHAPES = [(7,), (5, 3), (3, 4, 2), (2, 3, 4, 5), (2, 2, 3, 2, 3)]


def _numpy_vectors(x, vector_axes=None):
  """The weight vectors of ``x`` as columns, written with NumPy alone."""
  x = np.asarray(x)
  if vector_axes is None:
    return x[:, None] if x.ndim == 1 else x.reshape(-1, x.shape[-1])
  fan_in = sorted(axis % x.ndim for axis in vector_axes)
  others = [axis for axis in range(x.ndim) if axis not in fan_in]
  length = int(np.prod([x.shape[axis] for axis in fan_in]))
  return np.transpose(x, fan_in + others).reshape(length, -1)


def _stable_ranks(vectors):
  """Brute force: rank of each entry = how many entries sort before it."""
  n, m = vectors.shape
  out = np.zeros((n, m), np.int32)
  for j in range(m):
    for i in range(n):
      v = vectors[i, j]
      out[i, j] = np.sum(vectors[:, j] < v) + np.sum(vectors[:i, j] == v)
  return out


# Few distinct values, so ties (pruned zeros, shared values) are common.
_tied_arrays = hnp.arrays(
    np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=5),
    elements=st.sampled_from([0.0, -0.0, 1.5, -2.0, 0.25]))
_float_arrays = hnp.arrays(
    np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=6),
    elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False))
# Subnormals are left out: XLA flushes them to zero, so on CPU and GPU they
# rank as ties with 0.0 (documented in laperm_jax._weight_vectors).


@pytest.mark.parametrize('shape', SHAPES)
def test_as_vectors_takes_all_but_last_axis(shape):
  x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
  vectors = lp.as_vectors(x)
  expected = _numpy_vectors(x)
  np.testing.assert_array_equal(vectors, expected)


def test_as_vectors_rejects_scalars():
  with pytest.raises(ValueError, match='0-d'):
    lp.as_vectors(jnp.float32(1.0))


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_sort_vectors_sorts_each_vector(shape, dtype):
  x = jax.random.normal(jax.random.key(0), shape, dtype)
  sorted_x = lp.sort_vectors(x)
  assert sorted_x.shape == x.shape and sorted_x.dtype == dtype
  np.testing.assert_array_equal(
      _numpy_vectors(sorted_x),
      np.sort(_numpy_vectors(x).astype(np.float32), axis=0).astype(dtype))


@hypothesis.settings(deadline=None, max_examples=30)
@hypothesis.given(_tied_arrays | _float_arrays)
def test_ranks_match_brute_force_stable_ranks(x):
  np.testing.assert_array_equal(
      _numpy_vectors(lp.ranks(jnp.asarray(x))), _stable_ranks(_numpy_vectors(x)))


@hypothesis.settings(deadline=None, max_examples=30)
@hypothesis.given(_tied_arrays | _float_arrays, st.integers(0, 2**31 - 1))
def test_place_sorted_is_a_bitwise_permutation_in_rank_order(x, seed):
  initial = jax.random.normal(jax.random.key(seed), x.shape)
  sorted_init = lp.sort_vectors(initial)
  placed = lp.place_sorted(jnp.asarray(x), sorted_init)
  # Bitwise the same multiset per vector: sorting gives back sorted_init.
  np.testing.assert_array_equal(
      _numpy_vectors(lp.sort_vectors(placed)).view(np.uint32),
      _numpy_vectors(sorted_init).view(np.uint32))
  # The entry of rank r receives the r-th smallest initial value.
  rank = _stable_ranks(_numpy_vectors(x))
  expected = np.take_along_axis(_numpy_vectors(sorted_init), rank, axis=0)
  np.testing.assert_array_equal(_numpy_vectors(placed), expected)


def test_ties_are_ranked_by_position():
  # A pruned vector: the zeros keep their positional order, so the earliest
  # zero receives the smallest value.
  leaf = jnp.array([0.0, 3.0, 0.0, -0.0, 1.0])
  placed = lp.place_sorted(leaf, jnp.array([10.0, 20.0, 30.0, 40.0, 50.0]))
  np.testing.assert_array_equal(placed, [10.0, 50.0, 20.0, 30.0, 40.0])


def test_place_sorted_keeps_bit_patterns_of_signed_zeros():
  sorted_values = jnp.array([-1.0, -0.0, 0.0, 2.0])
  placed = lp.place_sorted(jnp.array([4.0, 3.0, 2.0, 1.0]), sorted_values)
  np.testing.assert_array_equal(
      np.sort(np.asarray(placed).view(np.uint32)),
      np.sort(np.asarray(sorted_values).view(np.uint32)))


# Layouts: which axes form one weight vector (the fan-in axes).
LAYOUTS = [((3, 4, 2), (0,)), ((3, 4, 2), (1,)), ((3, 4, 2), (0, 2)),
           ((3, 4, 2), (-1, 1)), ((3, 4, 2), (0, 1, 2)), ((5, 3), (1,)),
           ((7,), (0,)), ((2, 3, 4, 5), (1, 3))]


@pytest.mark.parametrize('shape, vector_axes', LAYOUTS)
def test_as_vectors_moves_the_fan_in_axes_first(shape, vector_axes):
  x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
  vectors = lp.as_vectors(x, vector_axes=vector_axes)
  np.testing.assert_array_equal(vectors, _numpy_vectors(x, vector_axes))
  np.testing.assert_array_equal(
      _weight_vectors.from_vectors(vectors, shape, vector_axes=vector_axes), x)
  # NumPy in, NumPy out (exports decode without JAX arrays).
  assert isinstance(lp.as_vectors(np.asarray(x), vector_axes=vector_axes),
                    np.ndarray)


def test_attention_query_kernel_has_one_vector_per_head_and_dim():
  # (features, heads, head_dim): fan-in axis 0, 4 * 8 output units.
  kernel = jnp.arange(16 * 4 * 8, dtype=jnp.float32).reshape(16, 4, 8)
  vectors = lp.as_vectors(kernel, vector_axes=(0,))
  assert vectors.shape == (16, 32)
  np.testing.assert_array_equal(vectors[:, 2 * 8 + 5], kernel[:, 2, 5])


@pytest.mark.parametrize('shape', SHAPES)
def test_default_layout_is_all_axes_but_the_last(shape):
  x = jax.random.normal(jax.random.key(1), shape)
  trailing = tuple(range(len(shape) - 1)) or (0,)
  for fn in (lp.sort_vectors, lp.ranks):
    np.testing.assert_array_equal(fn(x), fn(x, vector_axes=trailing))
  np.testing.assert_array_equal(lp.as_vectors(x),
                                lp.as_vectors(x, vector_axes=trailing))


@pytest.mark.parametrize('shape, vector_axes', LAYOUTS)
def test_layout_ranks_sorts_and_placement_per_vector(shape, vector_axes):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape).astype(np.float32)
  x.reshape(-1)[::3] = 0.0  # Ties.
  as_numpy = lambda a: _numpy_vectors(a, vector_axes)
  rank = _stable_ranks(as_numpy(x))
  np.testing.assert_array_equal(
      as_numpy(lp.ranks(jnp.asarray(x), vector_axes=vector_axes)), rank)
  initial = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  sorted_init = lp.sort_vectors(initial, vector_axes=vector_axes)
  np.testing.assert_array_equal(
      as_numpy(sorted_init), np.sort(as_numpy(initial), axis=0))
  placed = lp.place_sorted(jnp.asarray(x), sorted_init,
                           vector_axes=vector_axes)
  assert placed.shape == shape
  np.testing.assert_array_equal(
      as_numpy(placed).view(np.uint32),
      np.take_along_axis(as_numpy(sorted_init), rank, axis=0).view(np.uint32))


@pytest.mark.parametrize('vector_axes, message', [
    ((), 'empty tuple'),
    ((0, 0), 'names an axis twice'),
    ((0, -3), 'names an axis twice'),
    ((3,), 'names axis 3, out of range for shape'),
    ((-4,), 'names axis -4, out of range'),
    ((0.0,), 'must be a tuple of ints'),
    ((True,), 'must be a tuple of ints'),
    ([0], 'must be a tuple of ints'),
    (0, 'must be a tuple of ints'),
])
def test_bad_layouts_are_rejected(vector_axes, message):
  leaf = jnp.zeros((3, 4, 2))
  for fn in (lp.as_vectors, lp.sort_vectors, lp.ranks):
    with pytest.raises(ValueError, match=message):
      fn(leaf, vector_axes=vector_axes)
  with pytest.raises(ValueError, match=message):
    lp.place_sorted(leaf, leaf, vector_axes=vector_axes)


def test_numpy_integer_axes_are_accepted():
  leaf = jnp.arange(24.0).reshape(2, 3, 4)
  np.testing.assert_array_equal(
      lp.ranks(leaf, vector_axes=(np.int64(1),)),
      lp.ranks(leaf, vector_axes=(1,)))


_TREE = {'attention': {'query': {'kernel': jnp.zeros((16, 4, 8)),
                                 'bias': jnp.zeros((4, 8))}},
         'dense': {'kernel': jnp.zeros((8, 3)), 'bias': jnp.zeros(3)}}


@pytest.mark.parametrize('vector_axes, expected', [
    (None, [None] * 4),
    ((0,), [(0,)] * 4),  # A tuple at the root applies to every leaf.
    ({'attention': {'query': {'kernel': (0,), 'bias': None}}, 'dense': None},
     [None, (0,), None, None]),
    ({'attention': (0,), 'dense': None}, [(0,), (0,), None, None]),
    # What lp.derive_vector_axes returns: the params' structure, sorted
    # tuples of non-negative ints or None at every leaf.
    ({'attention': {'query': {'kernel': (0,), 'bias': None}},
      'dense': {'kernel': (0,), 'bias': None}}, [None, (0,), None, (0,)]),
    (lambda path, leaf: (0,) if leaf.ndim == 3 else None,
     [None, (0,), None, None]),
])
def test_per_leaf_axes_forms(vector_axes, expected):
  assert _weight_vectors.per_leaf_axes(vector_axes, _TREE) == expected


def test_per_leaf_axes_callable_gets_key_paths():
  seen = []
  _weight_vectors.per_leaf_axes(
      lambda path, leaf: seen.append(jax.tree_util.keystr(path)), _TREE)
  assert seen == ["['attention']['query']['bias']",
                  "['attention']['query']['kernel']", "['dense']['bias']",
                  "['dense']['kernel']"]


@pytest.mark.parametrize('vector_axes, message', [
    ({'attention': (0,)}, 'vector_axes does not match the structure'),
    ({'attention': (0,), 'dense': [0]}, r"leaf \['dense'\]\['bias'\] \[0\]"),
    (lambda path, leaf: [0], r'gives leaf .* \[0\]; a layout is a tuple'),
])
def test_per_leaf_axes_errors_name_the_leaf(vector_axes, message):
  with pytest.raises(ValueError, match=message):
    _weight_vectors.per_leaf_axes(vector_axes, _TREE)


def test_checked_layouts_checks_selected_leaves_only():
  # The query bias (4, 8) has no axis 2, but is not selected.
  layouts = _weight_vectors.checked_layouts(
      'f', {'attention': (0, 2), 'dense': None}, _TREE,
      [False, True, False, True])
  assert layouts == [None, (0, 2), None, (0,)]
  with pytest.raises(ValueError, match=r"f: leaf \['attention'\]\['query'"
                     r"\]\['bias'\]: vector_axes \(0, 2\) names axis 2"):
    _weight_vectors.checked_layouts(
        'f', {'attention': (0, 2), 'dense': None}, _TREE, [True] * 4)


# The CPU path (single-operand integer sorts) against the key-value sort that
# GPU and TPU run: bitwise the same order for any input, including what the
# comparator treats specially (signed zeros, subnormals, NaNs, infinities).
_any_floats = st.floats(width=32, allow_nan=True, allow_infinity=True,
                        allow_subnormal=True)
_special = st.sampled_from([0.0, -0.0, 1e-40, -1e-40, float('inf'),
                            float('-inf'), float('nan'), 1.0, -1.0])


@hypothesis.settings(deadline=None, max_examples=60)
@hypothesis.given(hnp.arrays(
    np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40),
    elements=_any_floats | _special))
def test_cpu_order_equals_key_value_order(rows):
  rows = jnp.asarray(rows)
  np.testing.assert_array_equal(
      jax.jit(_weight_vectors._radix_rank_order)(rows),
      jax.jit(_weight_vectors._comparison_rank_order)(rows))


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16, jnp.float16])
# Lengths around the switch from 32-bit to 64-bit words for 16-bit floats
# (float32 always takes one pass on 64-bit words).
@pytest.mark.parametrize('length', [1, 2, 3, 65536, 65537])
def test_cpu_order_equals_key_value_order_at_pass_boundaries(dtype, length):
  rng = np.random.default_rng(length)
  rows = rng.standard_normal((2, length)).astype(dtype)
  rows[:, ::5] = 0.0  # Many ties, as in a pruned kernel.
  rows[:, 1::7] = -0.0
  rows[0, -1:] = np.nan
  rows = jnp.asarray(rows)
  np.testing.assert_array_equal(
      jax.jit(_weight_vectors._radix_rank_order)(rows),
      jax.jit(_weight_vectors._comparison_rank_order)(rows))


def test_float64_cpu_order_equals_key_value_order():
  # Float64 needs x64, which must not leak into the other tests.
  script = (
      'import jax, numpy as np; jax.config.update("jax_enable_x64", True)\n'
      'from laperm_jax import _weight_vectors as wv\n'
      'rows = np.random.default_rng(0).standard_normal((3, 5000))\n'
      'rows[:, ::3] = 0.0; rows[:, 1::4] = -0.0; rows[0, :3] = 5e-324\n'
      'rows[1, :4] = np.nan; rows = jax.numpy.asarray(rows)\n'
      'assert rows.dtype == np.float64\n'
      'np.testing.assert_array_equal(wv._radix_rank_order(rows),\n'
      '                              wv._comparison_rank_order(rows))\n')
  subprocess.run([sys.executable, '-c', script], check=True)


def _sort_operand_counts(lowered_text):
  """Operands of every sort in StableHLO text (`%r:2 = "stablehlo.sort"`)."""
  return [int(count or 1) for count in
          re.findall(r'%\w+(?::(\d+))? = "stablehlo\.sort"', lowered_text)]


@pytest.mark.parametrize('platform, operands', [('cpu', 1), ('cuda', 2),
                                                ('tpu', 2)])
def test_each_platform_lowers_its_own_sort(platform, operands):
  traced = jax.jit(lp.ranks).trace(jnp.zeros((300, 20)))
  text = traced.lower(lowering_platforms=(platform,)).as_text()
  counts = _sort_operand_counts(text)
  # One sort: on CPU a single radix pass, on 64-bit words.
  assert counts == [operands], counts
  if platform == 'cpu':
    assert 'tensor<20x300xui64>' in text


# On CPU, `map_vectors` runs large leaves chunk by chunk.
@pytest.mark.parametrize('num_vectors, length, expected', [
    (2048, 2048, (16, 16)),  # The MLP benchmark's kernels.
    (2048, 784, (8, 16)),
    (512, 4608, (4, 16)),  # Conv13's 3x3x512x512: 4 groups of 8 per chunk.
    (3200, 4608, (1, 1)),  # 3200 = 8 * 400: no room for a block of 16.
    (10, 2048, (1, 1)),  # Fewer vectors than the 8 shards kept local.
    (128, 2048, (1, 1)),  # Small enough for one piece.
])
def test_chunking_of_large_leaves(num_vectors, length, expected):
  assert _weight_vectors._chunking(num_vectors, length) == expected


@pytest.mark.parametrize('shape, vector_axes, chunking', [
    ((5, 256), None, (16, 2)), ((3, 2, 4, 128), None, (8, 2)),
    ((7, 96), None, (2, 2)), ((9, 40), None, (1, 1)),
    # Non-trailing layouts: an attention kernel (features, heads, head_dim)
    # and a transposed (out, in) kernel.
    ((5, 16, 16), (0,), (16, 2)), ((96, 7), (1,), (2, 2))])
def test_chunks_give_bitwise_the_whole_leaf_result(monkeypatch, shape,
                                                   vector_axes, chunking):
  monkeypatch.setattr(_weight_vectors, '_CHUNK_WEIGHTS', 64)
  monkeypatch.setattr(_weight_vectors, '_BLOCK', 2)
  vectors = lp.as_vectors(jnp.zeros(shape), vector_axes=vector_axes)
  assert _weight_vectors._chunking(vectors.shape[1],
                                   vectors.shape[0]) == chunking
  rng = np.random.default_rng(0)
  leaf = rng.standard_normal(shape).astype(np.float32)
  leaf[..., ::3] = np.round(leaf[..., ::3])  # Ties, as in a pruned kernel.
  sorted_init = lp.sort_vectors(jnp.asarray(rng.standard_normal(shape),
                                            jnp.float32),
                                vector_axes=vector_axes)
  axes = _weight_vectors.fan_in_axes(shape, vector_axes)

  def place(_, rows, sorted_rows):
    return _weight_vectors.place_rows(rows, sorted_rows)

  chunked, whole = (
      jax.jit(lambda x, s, f=f: f(place, axes, s, x, s))(leaf, sorted_init)
      for f in (_weight_vectors._map_chunks, _weight_vectors._map_whole))
  np.testing.assert_array_equal(np.asarray(chunked).view(np.uint32),
                                np.asarray(whole).view(np.uint32))
  as_numpy = lambda x: _numpy_vectors(x, vector_axes)
  rank = _stable_ranks(as_numpy(leaf))
  np.testing.assert_array_equal(
      as_numpy(chunked),
      np.take_along_axis(as_numpy(sorted_init), rank, axis=0))
