"""Tests for the initial-weight tools: random pruning and shared values."""

import math

import chex
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import laperm_jax as lp

SHAPES = [(7,), (5, 3), (3, 4, 2), (2, 3, 4, 5)]


def _params(dtype=jnp.float32):
  """Nonzero weights (so every zero comes from pruning), Flax-like names."""
  # NumPy draws: no compilation per test.
  rng = np.random.default_rng(0)
  nonzero = lambda shape: jnp.asarray(rng.uniform(0.5, 1.0, shape), dtype)
  return {
      'Conv_0': {'kernel': nonzero((3, 3, 2, 4)), 'bias': nonzero((4,))},
      'Dense_0': {'kernel': nonzero((32, 6)), 'bias': nonzero((6,))},
      'scale': jnp.asarray(2.0, dtype),
  }


def _rounded(fraction, size):
  return math.floor(fraction * size + 0.5)


def _zeros(x):
  return int(np.sum(np.asarray(x) == 0))


@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(st.sampled_from(SHAPES), st.floats(0.0, 1.0),
                  st.booleans(), st.integers(0, 2**31 - 1))
def test_prunes_exactly_the_promised_count(shape, rate, per_vector, seed):
  leaf = jnp.asarray(np.linspace(0.5, 1.0, math.prod(shape), dtype=np.float32)
                     .reshape(shape))
  result = lp.random_prune(jax.random.key(seed), {'w': leaf}, rate,
                           mask={'w': True}, first_layer_max=None,
                           per_vector=per_vector)
  pruned = result.params['w']
  vectors = np.asarray(lp.as_vectors(pruned))
  if per_vector:
    expected = _rounded(rate, vectors.shape[0])
    np.testing.assert_array_equal(np.sum(vectors == 0, axis=0), expected)
    expected *= vectors.shape[1]
  else:
    expected = _rounded(rate, leaf.size)
  assert _zeros(pruned) == expected == int(result.num_pruned['w'])
  assert int(result.num_nonzero['w']) == leaf.size - expected
  # Survivors keep their values bitwise, in place.
  kept = np.asarray(pruned) != 0
  np.testing.assert_array_equal(np.asarray(pruned)[kept], np.asarray(leaf)[kept])


def test_every_entry_is_pruned_with_probability_rate():
  # Exact counts per leaf, but which entries is uniform: over independent
  # keys, each entry's count of prunings is Binomial(num_keys, rate).
  params = {'w': jnp.ones((20, 5))}
  rate, num_keys = 0.3, 400
  prune = jax.jit(jax.vmap(lambda key: lp.random_prune(
      key, params, rate, first_layer_max=None).params['w']))
  pruned = np.asarray(prune(jax.random.split(jax.random.key(1), num_keys)))
  counts = np.sum(pruned == 0, axis=0)
  sd = math.sqrt(num_keys * rate * (1 - rate))
  assert np.all(np.abs(counts - num_keys * rate) < 5 * sd), counts
  # Per-vector zeros vary (hypergeometric), as with the authors' Bernoulli
  # masks, but add up to the exact total.
  per_vector = np.sum(pruned == 0, axis=1)
  assert np.all(per_vector.sum(axis=1) == 30) and per_vector.std() > 0


def test_default_mask_prunes_kernels_only():
  params = _params()
  result = lp.random_prune(jax.random.key(0), params, 0.5)
  for name in ('Conv_0', 'Dense_0'):
    chex.assert_trees_all_equal(result.params[name]['bias'],
                                params[name]['bias'])
    assert int(result.num_pruned[name]['bias']) == 0
    assert result.rates[name]['bias'] == 0.0
  chex.assert_trees_all_equal(result.params['scale'], params['scale'])
  # Conv_0 is the first kernel in flattened order: capped at 20%.
  assert result.rates['Conv_0']['kernel'] == 0.2
  assert _zeros(result.params['Conv_0']['kernel']) == _rounded(0.2, 72)
  assert result.rates['Dense_0']['kernel'] == 0.5
  assert _zeros(result.params['Dense_0']['kernel']) == 96
  assert int(result.num_nonzero['scale']) == 1


@pytest.mark.parametrize('rate', [0.1, 0.2, 0.7, 1.0])
@pytest.mark.parametrize('first_layer', [None, "['Dense_0']['kernel']"])
def test_first_layer_cap_holds(rate, first_layer):
  params = _params()
  result = lp.random_prune(jax.random.key(3), params, rate,
                           first_layer=first_layer, first_layer_max=0.2)
  first = 'Conv_0' if first_layer is None else 'Dense_0'
  other = 'Dense_0' if first_layer is None else 'Conv_0'
  kernel = result.params[first]['kernel']
  assert _zeros(kernel) <= _rounded(0.2, kernel.size)
  assert _zeros(kernel) == _rounded(min(rate, 0.2), kernel.size)
  assert result.rates[other]['kernel'] == rate


def test_first_layer_cap_applies_to_per_leaf_and_can_be_lifted():
  params = _params()
  rates = {'Conv_0': 0.9, 'Dense_0': 0.9, 'scale': 0.0}
  capped = lp.random_prune(jax.random.key(0), params, None, rates=rates)
  assert capped.rates['Conv_0']['kernel'] == 0.2
  uncapped = lp.random_prune(jax.random.key(0), params, None, rates=rates,
                             first_layer_max=None)
  assert uncapped.rates['Conv_0']['kernel'] == 0.9
  assert _zeros(uncapped.params['Conv_0']['kernel']) == _rounded(0.9, 72)


def test_per_leaf_rates_from_a_callable():
  params = _params()
  rates = lambda p: jax.tree.map(lambda x: 0.25 if x.ndim == 4 else 0.75, p)
  result = lp.random_prune(jax.random.key(0), params, None, rates=rates,
                           first_layer_max=None)
  assert _zeros(result.params['Conv_0']['kernel']) == 18
  assert _zeros(result.params['Dense_0']['kernel']) == 144


def test_same_result_under_jit_and_with_traced_rates():
  params = _params()
  eager = lp.random_prune(jax.random.key(5), params, 0.5)
  jitted = jax.jit(lambda key, p: lp.random_prune(key, p, 0.5))(
      jax.random.key(5), params)
  chex.assert_trees_all_equal(eager.params, jitted.params)
  chex.assert_trees_all_equal(eager.num_nonzero, jitted.num_nonzero)
  traced = jax.jit(lambda key, rate: lp.random_prune(key, params, rate))(
      jax.random.key(5), jnp.float32(0.5))
  chex.assert_trees_all_equal(eager.params, traced.params)


def test_size_aware_rates_prune_larger_leaves_more():
  f2 = {'a': jnp.zeros((784, 128)), 'b': jnp.zeros((128, 64)),
        'c': jnp.zeros((64, 10)), 'bias': jnp.zeros(10)}
  rates = lp.size_aware_rates(f2, 0.923)
  assert rates['bias'] == 0.0
  assert rates['a'] > rates['b'] > rates['c']
  # Appendix A.5.0: 93%, 86%, 67%.
  np.testing.assert_allclose([rates['a'], rates['b'], rates['c']],
                             [0.93, 0.86, 0.67], atol=0.015)
  kept = sum((1 - rates[k]) * f2[k].size for k in 'abc')
  assert kept == pytest.approx((1 - 0.923) * sum(f2[k].size for k in 'abc'))
  uniform = lp.size_aware_rates(f2, 0.4, exponent=0.0)
  assert [uniform[k] for k in 'abc'] == pytest.approx([0.4] * 3)
  # A steep rule fills the small leaves and shares the rest.
  steep = lp.size_aware_rates(f2, 0.05, exponent=2.0)
  assert steep['b'] == steep['c'] == 0.0 and steep['a'] > 0.05


def test_random_prune_size_aware_reports_rates_and_counts():
  f2 = {'a': jnp.ones((784, 128)), 'b': jnp.ones((128, 64)),
        'c': jnp.ones((64, 10))}
  result = lp.random_prune(jax.random.key(0), f2, 0.923, size_aware=True,
                           first_layer_max=None)
  expected = lp.size_aware_rates(f2, 0.923)
  assert result.rates == expected
  for name in f2:
    assert int(result.num_nonzero[name]) == f2[name].size - _rounded(
        expected[name], f2[name].size)


@pytest.mark.parametrize('bad', [-0.1, 1.5, float('nan')])
def test_rejects_rates_outside_unit_interval(bad):
  with pytest.raises(ValueError, match=r'rate must be in \[0, 1\]'):
    lp.random_prune(jax.random.key(0), _params(), bad)
  with pytest.raises(ValueError, match=r"leaf \['Dense_0'\]\['kernel'\]"):
    lp.random_prune(jax.random.key(0), _params(), None,
                    rates={'Conv_0': 0.5, 'Dense_0': bad, 'scale': 0.0})
  with pytest.raises(ValueError, match='first_layer_max'):
    lp.random_prune(jax.random.key(0), _params(), 0.5, first_layer_max=bad)


def test_rejects_bad_arguments_naming_them():
  params = _params()
  key = jax.random.key(0)
  with pytest.raises(ValueError, match='mask does not match'):
    lp.random_prune(key, params, 0.5, mask={'Conv_0': True})
  with pytest.raises(ValueError, match=r"mask must hold Python bools.*\['scale'\]"):
    lp.random_prune(key, params, 0.5, mask={'Conv_0': True, 'Dense_0': False,
                                            'scale': 1.0})
  with pytest.raises(ValueError, match=r"\['scale'\] is a scalar"):
    lp.random_prune(key, params, 0.5, mask={'Conv_0': True, 'Dense_0': False,
                                            'scale': True})
  with pytest.raises(ValueError, match=r"leaf \['steps'\] has dtype int32"):
    lp.random_prune(key, {'steps': jnp.zeros((3, 2), jnp.int32)}, 0.5)
  with pytest.raises(ValueError, match='not both'):
    lp.random_prune(key, params, 0.5, rates=0.5, size_aware=True)
  with pytest.raises(ValueError, match='rate is None'):
    lp.random_prune(key, params, None)
  with pytest.raises(ValueError, match='first_layer .* is not a leaf'):
    lp.random_prune(key, params, 0.5, first_layer="['Dense_1']['kernel']")
  with pytest.raises(ValueError, match='first_layer .* is not selected'):
    lp.random_prune(key, params, 0.5, first_layer="['Dense_0']['bias']")


@pytest.mark.parametrize('dtype,per_vector', [(jnp.float32, False),
                                              (jnp.bfloat16, True)])
def test_shared_value_yields_only_zero_and_value(dtype, per_vector):
  params = _params(dtype)
  value, keep = 0.03, 1 / 7
  agnostic = lp.shared_value(jax.random.key(2), params, value, keep,
                             per_vector=per_vector)
  for name in ('Conv_0', 'Dense_0'):
    kernel = np.asarray(agnostic[name]['kernel'])
    assert kernel.dtype == dtype
    as_value = np.asarray(jnp.asarray(value, dtype))
    assert set(np.unique(kernel).tolist()) == {0.0, float(as_value)}
    # Bitwise: every kept entry is exactly `value` in the leaf's dtype.
    np.testing.assert_array_equal(kernel[kernel != 0],
                                  np.full(np.sum(kernel != 0), as_value))
    vectors = np.asarray(lp.as_vectors(agnostic[name]['kernel']))
    if per_vector:
      np.testing.assert_array_equal(np.sum(vectors != 0, axis=0),
                                    _rounded(keep, vectors.shape[0]))
    else:
      assert np.sum(vectors != 0) == _rounded(keep, vectors.size)
    chex.assert_trees_all_equal(agnostic[name]['bias'], params[name]['bias'])


def test_shared_value_per_leaf_keep_and_validation():
  params = _params()
  agnostic = lp.shared_value(jax.random.key(0), params, -0.5,
                             {'Conv_0': 1.0, 'Dense_0': 0.5, 'scale': 1.0})
  np.testing.assert_array_equal(agnostic['Conv_0']['kernel'],
                                np.full((3, 3, 2, 4), -0.5, np.float32))
  assert _zeros(agnostic['Dense_0']['kernel']) == 96
  for bad in (0.0, -0.2, 1.01):
    with pytest.raises(ValueError, match=r"keep of leaf \['Conv_0'\]\['kernel'\] must be in \(0, 1\]"):
      lp.shared_value(jax.random.key(0), params, 0.1, bad)
  for bad in (0.0, float('inf')):
    with pytest.raises(ValueError, match='value must be a finite, nonzero'):
      lp.shared_value(jax.random.key(0), params, bad, 0.5)
  with pytest.raises(ValueError, match='keep does not match'):
    lp.shared_value(jax.random.key(0), params, 0.1, {'Conv_0': 0.5})


def _train_and_sync(params, num_steps=12, sync_period=3):
  """Adam inside LaPerm on a toy regression; yields the synced params."""
  tx = lp.laperm(optax.adam(3e-2), sync_period)
  opt_state = tx.init(params)
  x = jnp.asarray(np.random.default_rng(7).normal(size=(32, 18)), jnp.float32)
  target = jnp.sin(x[:, :6])

  def loss_fn(p):
    h = jnp.tanh(x @ p['Conv_0']['kernel'].reshape(18, 4) + p['Conv_0']['bias'])
    return jnp.mean((h @ p['Dense_0']['kernel'][:4] - target) ** 2)

  @jax.jit
  def step(p, state):
    updates, state = tx.update(jax.grad(loss_fn)(p), state, p)
    return optax.apply_updates(p, updates), state

  for index in range(num_steps):
    params, opt_state = step(params, opt_state)
    if (index + 1) % sync_period == 0:
      yield lp.synchronize(params, opt_state)


@pytest.mark.parametrize('make_initial', ['pruned', 'shared_value'])
def test_laperm_keeps_the_exact_multiset_through_syncs(make_initial):
  params = _params()
  if make_initial == 'pruned':
    initial = lp.random_prune(jax.random.key(0), params, 0.6,
                              first_layer_max=None).params
  else:
    initial = lp.shared_value(jax.random.key(0), params, 0.08, 4 / 7)
  profiles = lp.weight_profiles(initial)
  moved = False
  for synced in _train_and_sync(initial):
    for name in ('Conv_0', 'Dense_0'):
      # Bitwise the same values per weight vector, zeros included.
      chex.assert_trees_all_equal(lp.sort_vectors(synced[name]['kernel']),
                                  profiles[name]['kernel'])
      moved |= bool(jnp.any(synced[name]['kernel'] != initial[name]['kernel']))
  assert moved  # The zeros (or values) were really reconnected.


# ---------------------------------------------------------------------------
# Layouts: per-vector promises hold for the weight vectors of the layout.

_ATTENTION = {
    'query': {'kernel': jnp.ones((10, 4, 3)), 'bias': jnp.ones((4, 3))},
    'out': {'kernel': jnp.ones((4, 3, 10)), 'bias': jnp.ones(10)}}
_ATTENTION_LAYOUT = {'query': (0,), 'out': (0, 1)}


@pytest.mark.parametrize('rate', [0.3, 0.5])
def test_prune_per_vector_under_a_layout(rate):
  mask = {'query': {'kernel': True, 'bias': False},
          'out': {'kernel': True, 'bias': False}}
  result = lp.random_prune(jax.random.key(0), _ATTENTION, rate, mask=mask,
                           first_layer_max=None, per_vector=True,
                           vector_axes=_ATTENTION_LAYOUT)
  for module, axes in _ATTENTION_LAYOUT.items():
    vectors = np.asarray(lp.as_vectors(result.params[module]['kernel'],
                                       vector_axes=axes))
    # Every (head, dim) fan-in of the query kernel (10 long), every output
    # feature's fan-in of the out kernel (12 long).
    expected = _rounded(rate, vectors.shape[0])
    np.testing.assert_array_equal(np.sum(vectors == 0, axis=0), expected)
    assert int(result.num_pruned[module]['kernel']) == expected * (
        vectors.shape[1])
  # Pruned per default vector ((features, heads) slices), the (head, dim)
  # fan-ins get unequal numbers of zeros.
  default = lp.random_prune(jax.random.key(0), _ATTENTION, rate, mask=mask,
                            first_layer_max=None, per_vector=True).params
  fan_ins = np.asarray(lp.as_vectors(default['query']['kernel'],
                                     vector_axes=(0,)))
  assert len(set(np.sum(fan_ins == 0, axis=0).tolist())) > 1


def test_shared_value_per_vector_under_a_layout():
  agnostic = lp.shared_value(jax.random.key(1), {'w': jnp.zeros((9, 4, 5))},
                             0.25, keep=1 / 3, per_vector=True,
                             vector_axes=(0,))
  vectors = np.asarray(lp.as_vectors(agnostic['w'], vector_axes=(0,)))
  assert vectors.shape == (9, 20)
  np.testing.assert_array_equal(np.sum(vectors != 0, axis=0), 3)
  assert set(np.unique(vectors).tolist()) == {0.0, 0.25}


def test_layout_does_not_change_whole_leaf_choices():
  # Without per_vector the zeros are chosen over the whole leaf: bitwise
  # the same for any layout.
  params = {'w': jnp.asarray(np.linspace(0.5, 1.0, 60, dtype=np.float32)
                             .reshape(5, 3, 4))}
  results = [lp.random_prune(jax.random.key(3), params, 0.4,
                             first_layer_max=None, vector_axes=axes).params
             for axes in (None, (0,), (1, 2))]
  chex.assert_trees_all_equal(*results)


@pytest.mark.parametrize('fn', ['random_prune', 'shared_value'])
def test_bad_layout_is_named(fn):
  params = {'w': jnp.ones((5, 3, 4)), 'b': jnp.ones(4)}
  call = {'random_prune': lambda axes: lp.random_prune(
              jax.random.key(0), params, 0.5, vector_axes=axes),
          'shared_value': lambda axes: lp.shared_value(
              jax.random.key(0), params, 0.1, 0.5, vector_axes=axes)}[fn]
  with pytest.raises(ValueError, match=fn + r": leaf \['w'\]: vector_axes "
                     r'\(3,\) names axis 3'):
    call({'w': (3,), 'b': None})
  with pytest.raises(ValueError, match=fn + ': vector_axes does not match'):
    call({'w': (0,)})
  # The bias is not selected, so its layout is not read.
  call({'w': (0,), 'b': (5,)})


def test_laperm_keeps_per_vector_zeros_under_a_layout():
  # Pruned per (head, dim) fan-in, trained with the same layout: every
  # fan-in keeps its zeros through the syncs.
  params = {'query': jax.random.uniform(jax.random.key(0), (10, 4, 3),
                                        minval=0.5)}
  layout = {'query': (0,)}
  initial = lp.random_prune(jax.random.key(1), params, 0.5,
                            first_layer_max=None, per_vector=True,
                            vector_axes=layout).params
  tx = lp.laperm(optax.adam(0.1), 2, vector_axes=layout)
  state = tx.init(initial)
  current = initial
  for step in range(4):
    grads = {'query': jax.random.normal(jax.random.key(step), (10, 4, 3))}
    updates, state = tx.update(grads, state, current)
    current = optax.apply_updates(current, updates)
  synced = lp.synchronize(current, state, vector_axes=layout)
  vectors = np.asarray(lp.as_vectors(synced['query'], vector_axes=(0,)))
  np.testing.assert_array_equal(np.sum(vectors == 0, axis=0), 5)
  chex.assert_trees_all_equal(
      lp.sort_vectors(synced['query'], vector_axes=(0,)),
      lp.sort_vectors(initial['query'], vector_axes=(0,)))
  assert bool(jnp.any(synced['query'] != initial['query']))


@pytest.mark.parametrize('first_layer', [
    {'Conv_0': False, 'Dense_0': True, 'scale': False},
    lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: path[0].key == 'Dense_0', params),
])
def test_first_layer_is_selected_as_mask_selects(first_layer):
  params = _params()
  key = jax.random.key(3)
  with pytest.warns(DeprecationWarning, match='first_layer as a key path'):
    by_string = lp.random_prune(key, params, 0.7,
                                first_layer="['Dense_0']['kernel']")
  by_mask = lp.random_prune(key, params, 0.7, first_layer=first_layer)
  chex.assert_trees_all_equal(by_mask, by_string)
  assert by_mask.rates['Dense_0']['kernel'] == 0.2
  with pytest.raises(ValueError, match='first_layer .* is not selected'):
    lp.random_prune(key, params, 0.7, first_layer={
        'Conv_0': False, 'Dense_0': {'kernel': False, 'bias': True},
        'scale': False})
