"""Tests for the analyses: weight statistics, ranking distance, cycles."""

import chex
import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import laperm_jax as lp

SHAPES = [(7,), (5, 3), (3, 4, 2), (2, 3, 4, 5)]


def _numpy_vectors(x):
  x = np.asarray(x)
  return x[:, None] if x.ndim == 1 else x.reshape(-1, x.shape[-1])


def _brute_force_ranks(vector):
  """Rank of each entry: how many entries sort before it (ties by position)."""
  return np.array([np.sum(vector < v) + np.sum(vector[:i] == v)
                   for i, v in enumerate(vector)])


# Few distinct values, so ties (pruned zeros, shared values) are common.
_tied = hnp.arrays(np.float32, st.sampled_from(SHAPES),
                   elements=st.sampled_from([0.0, 1.5, -2.0, 0.25]))
_floats = hnp.arrays(np.float32, st.sampled_from(SHAPES),
                     elements=st.floats(-1e3, 1e3, width=32,
                                        allow_subnormal=False))


def _shuffled_per_vector(x, seed):
  """``x`` with every weight vector permuted at random (NumPy)."""
  vectors = _numpy_vectors(x)
  rng = np.random.default_rng(seed)
  shuffled = np.stack([rng.permutation(column) for column in vectors.T], 1)
  return shuffled.reshape(np.shape(x))


@pytest.mark.parametrize('shape', SHAPES)
def test_weight_statistics_schema_and_values(shape):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  stats = lp.weight_statistics(jnp.asarray(x))
  assert list(stats) == ['min', 'p15', 'p50', 'p85', 'max']
  vectors = _numpy_vectors(x)
  for array in stats.values():
    assert array.shape == (vectors.shape[1],) and array.dtype == jnp.float32
  # min and max are entries of the data: exact.
  np.testing.assert_array_equal(stats['min'], vectors.min(axis=0))
  np.testing.assert_array_equal(stats['max'], vectors.max(axis=0))
  # Percentiles interpolate, so only within float32 rounding of NumPy's.
  for name, q in (('p15', 15), ('p50', 50), ('p85', 85)):
    np.testing.assert_allclose(stats[name], np.percentile(vectors, q, axis=0),
                               rtol=1e-6, atol=1e-6)


def test_weight_statistics_bfloat16_and_jit():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)), jnp.bfloat16)
  stats = jax.jit(lp.weight_statistics)(x)
  assert all(v.dtype == jnp.float32 for v in stats.values())
  with pytest.raises(ValueError, match='scalar'):
    lp.weight_statistics(jnp.float32(1.0))


def test_weight_profiles_sort_every_vector():
  params = {'w': jnp.array([[3., 0.], [1., 2.]]), 'b': jnp.array([2., 1.]),
            'step': jnp.float32(3.)}
  profiles = lp.weight_profiles(params)
  chex.assert_trees_all_equal(profiles['w'], jnp.array([[1., 0.], [3., 2.]]))
  chex.assert_trees_all_equal(profiles['b'], jnp.array([1., 2.]))
  assert isinstance(profiles['step'], optax.MaskedNode)


@hypothesis.settings(deadline=None, max_examples=20)
@hypothesis.given(_tied | _floats, st.integers(0, 2**31 - 1))
def test_ranking_distances_match_brute_force(before, seed):
  after = _shuffled_per_vector(before, seed)
  distances = lp.ranking_distances({'w': jnp.asarray(before)},
                                   {'w': jnp.asarray(after)})['w']
  vectors_before, vectors_after = _numpy_vectors(before), _numpy_vectors(after)
  expected = np.stack([
      np.abs(_brute_force_ranks(b) - _brute_force_ranks(a))
      for b, a in zip(vectors_before.T, vectors_after.T)], axis=1)
  np.testing.assert_array_equal(_numpy_vectors(distances), expected)
  summary = lp.ranking_distance({'w': jnp.asarray(before)},
                                {'w': jnp.asarray(after)})['w']
  length = vectors_before.shape[0]
  np.testing.assert_allclose(summary.mean, expected.mean() / length, rtol=1e-6)
  np.testing.assert_allclose(summary.std, expected.std() / length, rtol=1e-5,
                             atol=1e-7)


@hypothesis.settings(deadline=None, max_examples=15)
@hypothesis.given(_tied | _floats, st.integers(0, 2**31 - 1))
def test_ranking_distance_is_zero_for_identical_and_symmetric(x, seed):
  before = {'w': jnp.asarray(x), 'scale': jnp.float32(1.0)}
  after = {'w': jnp.asarray(_shuffled_per_vector(x, seed)),
           'scale': jnp.float32(2.0)}
  same = lp.ranking_distance(before, before)
  assert float(same['w'].mean) == 0.0 and float(same['w'].std) == 0.0
  assert isinstance(same['scale'], optax.MaskedNode)
  forward = lp.ranking_distances(before, after)
  backward = lp.ranking_distances(after, before)
  chex.assert_trees_all_equal(forward, backward)
  chex.assert_trees_all_equal(lp.ranking_distance(before, after),
                              lp.ranking_distance(after, before))


def test_ranking_distance_contract_and_errors():
  before = {'Dense_0': {'kernel': jnp.zeros((4, 3)), 'bias': jnp.zeros(3)}}
  result = jax.jit(lp.ranking_distance)(before, before)
  assert isinstance(result['Dense_0']['kernel'], lp.RankingDistance)
  assert result['Dense_0']['kernel'].mean.shape == ()
  with pytest.raises(ValueError, match=r"leaf \['Dense_0'\]\['bias'\]"):
    lp.ranking_distance(before, {'Dense_0': {'kernel': jnp.zeros((4, 3)),
                                             'bias': jnp.zeros(4)}})
  with pytest.raises(ValueError, match='different structures'):
    lp.ranking_distance(before, {'Dense_0': {'kernel': jnp.zeros((4, 3))}})


@hypothesis.settings(deadline=None, max_examples=20)
@hypothesis.given(_tied | _floats, st.integers(0, 2**31 - 1))
def test_permutation_between_and_cycles_compose_back(before, seed):
  after = _shuffled_per_vector(before, seed)
  source = lp.permutation_between(jnp.asarray(before), jnp.asarray(after))
  assert source.shape == before.shape and source.dtype == jnp.int32
  vectors_before, vectors_after = _numpy_vectors(before), _numpy_vectors(after)
  source_vectors = _numpy_vectors(source)
  # Bitwise: after is before read through the permutation.
  np.testing.assert_array_equal(
      np.take_along_axis(vectors_before, source_vectors, axis=0), vectors_after)
  for column in source_vectors.T:
    cycles = lp.permutation_cycles(column)
    rebuilt = np.arange(column.size)
    for cycle in cycles:
      assert len(cycle) >= 2 and cycle[0] == cycle.min()
      rebuilt[cycle] = np.roll(cycle, -1)
    np.testing.assert_array_equal(rebuilt, column)
    covered = np.concatenate(cycles) if cycles else np.zeros(0, int)
    assert len(set(covered.tolist())) == covered.size  # Disjoint.
  summary = lp.cycle_summary(jnp.asarray(before), jnp.asarray(after))
  moved = source_vectors != np.arange(source_vectors.shape[0])[:, None]
  np.testing.assert_array_equal(summary.fraction_moved, moved.mean(axis=0))


def test_ties_are_matched_in_place():
  # Pruned zeros that stay zeros stay put: no cycle through them.
  before = jnp.array([0., 1., 0., 2., 0., 3.])
  after = jnp.array([0., 2., 0., 1., 0., 3.])
  source = lp.permutation_between(before, after)
  np.testing.assert_array_equal(source, [0, 3, 2, 1, 4, 5])
  summary = lp.cycle_summary(before, after)
  assert summary.num_cycles.tolist() == [1]
  assert summary.longest_cycle.tolist() == [2]
  np.testing.assert_array_equal(summary.fraction_moved, [2 / 6])
  identity = lp.cycle_summary(before, before)
  assert identity.num_cycles.tolist() == [0]
  assert identity.longest_cycle.tolist() == [0]


def test_cycle_summary_on_a_conv_kernel():
  rng = np.random.default_rng(3)
  before = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
  after = _shuffled_per_vector(before, 4)
  summary = lp.cycle_summary(jnp.asarray(before), jnp.asarray(after))
  assert summary.num_cycles.shape == (4,)
  for j, column in enumerate(_numpy_vectors(
      lp.permutation_between(jnp.asarray(before), jnp.asarray(after))).T):
    lengths = [len(c) for c in lp.permutation_cycles(column)]
    assert summary.num_cycles[j] == len(lengths)
    assert summary.longest_cycle[j] == max(lengths, default=0)


def test_cycle_walk_is_linear_on_a_long_vector():
  # One cycle through 200k entries: a quadratic walk would not finish.
  size = 200_000
  permutation = np.roll(np.arange(size), -1)
  cycles = lp.permutation_cycles(permutation)
  assert len(cycles) == 1 and len(cycles[0]) == size


def test_permutation_errors():
  with pytest.raises(ValueError, match='not a permutation of before'):
    lp.permutation_between(jnp.array([1., 2.]), jnp.array([1., 3.]))
  with pytest.raises(ValueError, match='shape'):
    lp.permutation_between(jnp.array([1., 2.]), jnp.array([1., 2., 3.]))
  with pytest.raises(ValueError, match='scalar'):
    lp.permutation_between(jnp.float32(1.), jnp.float32(1.))
  with pytest.raises(ValueError, match='exactly once'):
    lp.permutation_cycles([0, 0, 1])
  with pytest.raises(ValueError, match='1-D array of integers'):
    lp.permutation_cycles([[0, 1]])


def test_permutation_between_two_laperm_syncs():
  params = {'w': jnp.asarray(np.random.default_rng(5).normal(size=(16, 3)),
                             jnp.float32)}
  tx = lp.laperm(optax.adam(0.3), sync_period=2)
  state = tx.init(params)
  loss = lambda p: jnp.sum(jnp.sin(3 * p['w']) * jnp.arange(16.)[:, None])
  synced = []
  for _ in range(4):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
    synced.append(lp.synchronize(params, state)['w'])
  first, second = synced[1], synced[3]
  source = lp.permutation_between(first, second)
  np.testing.assert_array_equal(
      np.take_along_axis(np.asarray(first), np.asarray(source), axis=0),
      np.asarray(second))


# ---------------------------------------------------------------------------
# Layouts: the analyses group weights as the transformation does.

# An attention query kernel (features, heads, head_dim): fan-in axis 0.
_QUERY_SHAPE, _QUERY_AXES = (10, 4, 3), (0,)


def _fan_ins(x):
  """The (head, dim) fan-ins of a query kernel as columns, with NumPy."""
  return np.asarray(x).reshape(_QUERY_SHAPE[0], -1)


def _query_kernels(seed=0):
  """A query kernel and a copy with every fan-in shuffled."""
  rng = np.random.default_rng(seed)
  before = rng.normal(size=_QUERY_SHAPE).astype(np.float32)
  before.reshape(-1)[::4] = 0.0  # Ties, as in a pruned kernel.
  shuffled = np.stack([rng.permutation(c) for c in _fan_ins(before).T], 1)
  return jnp.asarray(before), jnp.asarray(shuffled.reshape(_QUERY_SHAPE))


def test_weight_statistics_and_profiles_under_a_layout():
  before, _ = _query_kernels()
  stats = lp.weight_statistics(before, vector_axes=_QUERY_AXES)
  assert stats['p50'].shape == (12,)
  np.testing.assert_array_equal(stats['min'], _fan_ins(before).min(axis=0))
  np.testing.assert_array_equal(stats['max'], _fan_ins(before).max(axis=0))
  # Interpolated: a + 0.5 * (b - a) rounds otherwise than NumPy's (a + b) / 2.
  np.testing.assert_allclose(stats['p50'], np.median(_fan_ins(before), axis=0),
                             rtol=1e-6)
  profiles = lp.weight_profiles({'q': before, 'scale': jnp.float32(1.0)},
                                vector_axes={'q': _QUERY_AXES, 'scale': None})
  np.testing.assert_array_equal(_fan_ins(profiles['q']),
                                np.sort(_fan_ins(before), axis=0))
  assert isinstance(profiles['scale'], optax.MaskedNode)


def test_ranking_distances_under_a_layout():
  before, after = _query_kernels()
  distances = lp.ranking_distances({'q': before}, {'q': after},
                                   vector_axes=(0,))['q']
  brute = np.stack([
      np.abs(_brute_force_ranks(b) - _brute_force_ranks(a))
      for b, a in zip(_fan_ins(before).T, _fan_ins(after).T)], 1)
  np.testing.assert_array_equal(_fan_ins(distances), brute)
  summary = lp.ranking_distance({'q': before}, {'q': after},
                                vector_axes=lambda path, leaf: (0,))['q']
  # Divided by the fan-in length, 10, not the default's 40.
  np.testing.assert_allclose(summary.mean, brute.mean() / 10, rtol=1e-6)
  np.testing.assert_allclose(summary.std, brute.std() / 10, rtol=1e-6)


def test_permutation_between_and_cycles_under_a_layout():
  before, after = _query_kernels()
  source = lp.permutation_between(before, after, vector_axes=_QUERY_AXES)
  np.testing.assert_array_equal(
      np.take_along_axis(_fan_ins(before), _fan_ins(source), axis=0),
      _fan_ins(after))
  summary = lp.cycle_summary(before, after, vector_axes=_QUERY_AXES)
  assert summary.num_cycles.shape == (12,)
  for j, column in enumerate(_fan_ins(source).T):
    lengths = [len(c) for c in lp.permutation_cycles(column)]
    assert summary.num_cycles[j] == len(lengths)
  # Weights moved between heads are caught under the layout (the default
  # vectors, (features, heads) slices, would hold the same values).
  between_heads = jnp.asarray(np.asarray(before)[:, ::-1])
  with pytest.raises(ValueError, match='not a permutation of before'):
    lp.permutation_between(before, between_heads, vector_axes=_QUERY_AXES)


def test_analyses_reject_bad_layouts():
  before, after = _query_kernels()
  with pytest.raises(ValueError, match='names axis 3'):
    lp.weight_statistics(before, vector_axes=(3,))
  with pytest.raises(ValueError, match=r"ranking_distances: leaf \['q'\]: "
                     'vector_axes is an empty tuple'):
    lp.ranking_distances({'q': before}, {'q': after}, vector_axes={'q': ()})
  with pytest.raises(ValueError, match='weight_profiles: vector_axes does not '
                     'match'):
    lp.weight_profiles({'q': before}, vector_axes={'k': (0,)})
  with pytest.raises(ValueError, match='permutation_between: before: '
                     'vector_axes must be a tuple'):
    lp.permutation_between(before, after, vector_axes=[0])


def test_ranking_distances_is_the_deprecated_name_of_per_entry():
  before = {'w': jnp.array([[1., 5.], [2., 6.], [3., 7.]])}
  after = {'w': before['w'][::-1]}
  with pytest.warns(DeprecationWarning, match='ranking_distance_per_entry'):
    old = lp.ranking_distances(before, after)
  chex.assert_trees_all_equal(old,
                              lp.ranking_distance_per_entry(before, after))


def test_analyses_read_the_layout_from_the_state():
  before = {'q': jax.random.normal(jax.random.key(0), (6, 2, 3)),
            'b': jnp.arange(3.0)}
  after = {'q': before['q'][::-1], 'b': before['b'][::-1]}
  state = lp.laperm(optax.sgd(0.1), 2, vector_axes={'q': (0,), 'b': None}
                    ).init(before)
  chex.assert_trees_all_equal(
      lp.ranking_distance_per_entry(before, after, opt_state=state),
      lp.ranking_distance_per_entry(before, after,
                                    vector_axes={'q': (0,), 'b': lp.NO_FAN_IN}))
  with pytest.raises(ValueError, match=r"weight_profiles: vector_axes gives "
                     r"leaf \['q'\] the fan-in axes \(0, 1\)"):
    lp.weight_profiles(before, opt_state=state, vector_axes=(0, 1))
