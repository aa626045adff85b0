"""Tests for the weight-vector convention and the sorts that permute vectors."""

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import laperm_jax as lp

SHAPES = [(7,), (5, 3), (3, 4, 2), (2, 3, 4, 5), (2, 2, 3, 2, 3)]


def _numpy_vectors(x):
  x = np.asarray(x)
  return x[:, None] if x.ndim == 1 else x.reshape(-1, x.shape[-1])


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
