"""Tests for the LaPerm transformation and `synchronize`."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import laperm_jax as lp
from laperm_jax import _weight_vectors


def _params(dtype=jnp.float32, key=0):
  """Leaves of rank 1 to 5, like Dense, Conv, DenseGeneral and 3-D conv."""
  shapes = {
      'bias': (6,),
      'dense': (8, 6),
      'general': (4, 3, 5),
      'conv': (3, 3, 2, 4),
      'conv3d': (2, 2, 2, 3, 2),
  }
  keys = jax.random.split(jax.random.key(key), len(shapes))
  return {name: jax.random.normal(k, shape, dtype)
          for k, (name, shape) in zip(keys, shapes.items())}


def _grads(params, key):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(key), len(leaves))
  return jax.tree.unflatten(treedef, [
      jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _assert_exact_permutation(params, state):
  """Each permuted leaf of synchronize(...) sorts back to sorted_init, bitwise."""
  exact = lp.synchronize(params, state)
  for name, sorted_init in optax.tree.get(state, 'sorted_init').items():
    if isinstance(sorted_init, optax.MaskedNode):
      continue
    chex.assert_trees_all_equal(lp.sort_vectors(exact[name]), sorted_init)
  return exact


def _assert_in_rank_order(exact, targets, sorted_init):
  """Read in the stable rank order of `targets`, `exact` is `sorted_init`."""
  order = np.argsort(np.asarray(lp.as_vectors(targets), np.float32), axis=0,
                     kind='stable')
  chex.assert_trees_all_equal(
      np.take_along_axis(np.asarray(lp.as_vectors(exact)), order, axis=0),
      np.asarray(lp.as_vectors(sorted_init)))


def _spacing(x):
  """Distance to the next representable value of |x|, in x's dtype."""
  x = jnp.abs(x)
  return jnp.nextafter(x, jnp.asarray(jnp.inf, x.dtype)) - x


def _assert_within_one_addition(applied, exact, old):
  """`old + (exact - old)` rounds twice: at the subtraction and the addition."""
  bound = _spacing(exact - old) + _spacing(exact)
  err = jnp.abs(applied.astype(jnp.float32) - exact.astype(jnp.float32))
  assert bool(jnp.all(err <= bound.astype(jnp.float32))), float(err.max())


# ---------------------------------------------------------------------------
# The sync itself.


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('sync_period', [1, 3])
def test_sync_permutes_in_rank_order_of_params_plus_inner_updates(
    dtype, sync_period):
  params = _params(dtype)
  inner = optax.adam(0.1)
  tx = lp.laperm(inner, sync_period, mask=lambda p: jax.tree.map(
      lambda x: x.ndim >= 1, p))  # Every leaf, the 1-D bias included.
  state = tx.init(params)
  inner_state = inner.init(params)
  update, inner_update = jax.jit(tx.update), jax.jit(inner.update)
  for step in range(1, 3 * sync_period + 1):
    grads = _grads(params, step)
    updates, state = update(grads, state, params)
    inner_updates, inner_state = inner_update(grads, inner_state, params)
    new_params = optax.apply_updates(params, updates)
    assert jax.tree.map(lambda x: x.dtype, new_params) == jax.tree.map(
        lambda x: x.dtype, params)
    if step % sync_period == 0:
      targets = optax.apply_updates(params, inner_updates)
      exact = _assert_exact_permutation(new_params, state)
      for name in params:
        # The exact sync places values in the rank order of the targets ...
        _assert_in_rank_order(exact[name], targets[name],
                              state.sorted_init[name])
        chex.assert_trees_all_equal(
            exact[name], lp.place_sorted(targets[name],
                                         state.sorted_init[name]))
        # ... and the update lands within the rounding of one addition.
        _assert_within_one_addition(new_params[name], exact[name],
                                    params[name])
    else:
      chex.assert_trees_all_equal(updates, inner_updates)
    params = new_params


def test_large_leaf_syncs_chunk_by_chunk_bitwise():
  # 307,200 weights: on CPU the sync runs in 2 chunks of 512 vectors.
  params = {'w': jax.random.normal(jax.random.key(0), (300, 1024))}
  assert _weight_vectors._chunking(1024, 300) == (2, 16)
  inner = optax.sgd(0.1)
  tx = lp.laperm(inner, 1)
  state = tx.init(params)
  grads = {'w': _grads(params, 1)['w'].at[7, 1000].set(jnp.nan)}
  updates, state = jax.jit(tx.update)(grads, state, params)
  inner_updates, _ = jax.jit(inner.update)(grads, inner.init(params), params)
  # NumPy: stable ranks of the targets, float32 arithmetic as in the sync.
  old = np.asarray(params['w'])
  targets = old + np.asarray(inner_updates['w'])
  order = np.argsort(targets, axis=0, kind='stable')
  exact = np.empty_like(old)
  np.put_along_axis(exact, order, np.asarray(state.sorted_init['w']), axis=0)
  exact[:, 1000] = np.nan  # The vector that holds a NaN.
  np.testing.assert_array_equal(np.asarray(updates['w']), exact - old)
  np.testing.assert_array_equal(
      np.asarray(lp.synchronize({'w': jnp.asarray(targets)}, state)['w']),
      exact)


@pytest.mark.skipif(jax.default_backend() != 'cpu',
                    reason='the chunked sync is the CPU path')
def test_sync_branch_needs_no_leaf_sized_temporaries():
  # XLA's CPU runtime allocates a step's temporaries at every execution,
  # sync or not, so the sync branch works in chunks of vectors, inside the
  # inner update's buffer (benchmarks/memory.py); a whole-leaf sync needs
  # about five leaf sizes.
  params = {'w': jnp.zeros((2048, 2048))}
  tx = lp.laperm(optax.sgd(0.1), 1000)
  compiled = jax.jit(tx.update).lower(params, tx.init(params),
                                      params).compile()
  assert compiled.memory_analysis().temp_size_in_bytes < (
      params['w'].nbytes / 2)


def test_non_sync_steps_and_unselected_leaves_equal_the_inner_optimizer():
  params = _params()
  inner = optax.adam(1e-2)
  tx = lp.laperm(inner, sync_period=4)
  state, inner_state = tx.init(params), inner.init(params)
  update, inner_update = jax.jit(tx.update), jax.jit(inner.update)
  for step in range(1, 13):
    grads = _grads(params, step)
    updates, state = update(grads, state, params)
    inner_updates, inner_state = inner_update(grads, inner_state, params)
    # The inner state is the inner optimizer's own, bit for bit.
    chex.assert_trees_all_equal(state.inner_state, inner_state)
    chex.assert_trees_all_equal(updates['bias'], inner_updates['bias'])
    if step % 4:
      chex.assert_trees_all_equal(updates, inner_updates)
    else:
      assert not jnp.array_equal(updates['dense'], inner_updates['dense'])
    params = optax.apply_updates(params, updates)


def test_default_mask_permutes_kernels_only():
  state = lp.laperm(optax.adam(1e-3), 5).init(_params())
  assert isinstance(state.sorted_init['bias'], optax.MaskedNode)
  for name in ('dense', 'general', 'conv', 'conv3d'):
    chex.assert_trees_all_equal(state.sorted_init[name],
                                lp.sort_vectors(_params()[name]))


def test_no_drift_after_1000_syncs():
  params = {'w': jax.random.normal(jax.random.key(0), (16, 8))}
  tx = lp.laperm(optax.adam(1e-2), sync_period=1)
  state = tx.init(params)

  def step(carry, key):
    params, state = carry
    grads = {'w': jax.random.normal(key, (16, 8))}
    updates, state = tx.update(grads, state, params)
    new_params = optax.apply_updates(params, updates)
    exact = lp.synchronize(new_params, state)
    bound = _spacing(exact['w'] - params['w']) + _spacing(exact['w'])
    within = jnp.all(jnp.abs(new_params['w'] - exact['w']) <= bound)
    return (new_params, state), within

  (params, state), within = jax.lax.scan(
      jax.jit(step), (params, state), jax.random.split(jax.random.key(1), 1000))
  assert int(state.count) == 1000
  assert bool(jnp.all(within))
  _assert_exact_permutation(params, state)


def _enable_x64():
  # jax.enable_x64 replaced jax.experimental.enable_x64 in newer releases.
  if hasattr(jax, 'enable_x64'):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()


def test_float64():
  with _enable_x64():
    params = _params(jnp.float64)
    tx = lp.laperm(optax.sgd(0.5), sync_period=2)
    state = tx.init(params)
    for step in range(4):
      updates, state = tx.update(_grads(params, step), state, params)
      params = optax.apply_updates(params, updates)
    assert state.sorted_init['dense'].dtype == jnp.float64
    assert params['dense'].dtype == jnp.float64
    _assert_exact_permutation(params, state)


# ---------------------------------------------------------------------------
# When syncs happen.


def _sync_steps(tx, steps, params=None):
  params = _params() if params is None else params
  state = tx.init(params)
  synced = []
  for step in range(1, steps + 1):
    _, state = tx.update(_grads(params, step), state, params)
    if int(state.steps_since_sync) == 0:
      synced.append(step)
  return synced


@pytest.mark.parametrize('sync_period, expected', [
    (1, list(range(1, 11))), (3, [3, 6, 9]), (10**6, [])])
def test_int_sync_period(sync_period, expected):
  assert _sync_steps(lp.laperm(optax.sgd(0.1), sync_period), 10) == expected


def test_schedule_sync_period():
  # k = 2 for the first 4 updates, then 3; the count passed is the number of
  # updates made before this one.
  schedule = optax.piecewise_constant_schedule(2, {4: 1.5})
  assert _sync_steps(lp.laperm(optax.sgd(0.1), schedule), 12) == [
      2, 4, 7, 10]


def test_inject_hyperparams_on_laperm_itself():
  tx = optax.inject_hyperparams(lp.laperm, static_args=('reset_inner_state',))(
      inner=optax.sgd(0.1), sync_period=3)
  params = _params()
  state = tx.init(params)
  state.hyperparams['sync_period'] = jnp.asarray(2.0)
  synced = []
  for step in range(1, 7):
    updates, state = tx.update(_grads(params, step), state, params)
    params = optax.apply_updates(params, updates)
    if int(state.inner_state.steps_since_sync) == 0:
      synced.append(step)
  assert synced == [2, 4, 6]
  _assert_exact_permutation(params, state.inner_state)


# ---------------------------------------------------------------------------
# Resets.


def test_reset_mask_restores_initial_values_at_each_sync():
  params = {'kernel': jax.random.normal(jax.random.key(0), (5, 3)),
            'scale': jnp.ones(3), 'offset': jnp.zeros(3)}
  initial = params
  tx = lp.laperm(optax.adam(0.1), 2, reset_mask={
      'kernel': False, 'scale': True, 'offset': True})
  state = tx.init(params)
  for step in range(1, 5):
    updates, state = tx.update(_grads(params, step), state, params)
    params = optax.apply_updates(params, updates)
    if step % 2:
      assert not jnp.array_equal(params['scale'], initial['scale'])
    else:
      exact = lp.synchronize(params, state)
      chex.assert_trees_all_equal(exact['scale'], initial['scale'])
      chex.assert_trees_all_equal(exact['offset'], initial['offset'])
      _assert_within_one_addition(params['scale'], initial['scale'],
                                  params['scale'] - updates['scale'])


def test_reset_inner_state():
  params = _params()
  inner = optax.adam(0.1)
  tx = lp.laperm(inner, 2, reset_inner_state=True)
  state = tx.init(params)
  _, state = tx.update(_grads(params, 1), state, params)
  assert int(state.inner_state[0].count) == 1
  _, state = tx.update(_grads(params, 2), state, params)
  chex.assert_trees_all_equal(state.inner_state, inner.init(params))


# ---------------------------------------------------------------------------
# Non-finite values.


def test_nan_at_a_sync_poisons_its_vector_not_others():
  params = {'w': jnp.arange(12.0).reshape(4, 3)}
  tx = lp.laperm(optax.sgd(1.0), 1)
  state = tx.init(params)
  grads = {'w': jnp.zeros((4, 3)).at[2, 1].set(jnp.nan)}
  updates, state = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  assert bool(jnp.all(jnp.isnan(new['w'][:, 1])))
  assert bool(jnp.all(jnp.isfinite(new['w'][:, [0, 2]])))
  exact = lp.synchronize({'w': params['w'].at[0, 0].set(jnp.inf)}, state)
  assert bool(jnp.all(jnp.isnan(exact['w'][:, 0])))
  assert bool(jnp.all(jnp.isfinite(exact['w'][:, 1:])))


def test_apply_if_finite_skips_a_non_finite_sync():
  params = _params()
  tx = optax.apply_if_finite(lp.laperm(optax.adam(0.1), 1), 3)
  state = tx.init(params)
  bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan),
                     _grads(params, 0))
  updates, new_state = jax.jit(tx.update)(bad, state, params)
  chex.assert_trees_all_equal(
      updates, jax.tree.map(jnp.zeros_like, params))
  chex.assert_trees_all_equal(new_state.inner_state, state.inner_state)
  assert int(new_state.notfinite_count) == 1
  updates, new_state = tx.update(_grads(params, 1), new_state, params)
  params = optax.apply_updates(params, updates)
  _assert_exact_permutation(params, new_state)


# ---------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize('sync_period', [0, -3, 0.5])
def test_bad_sync_period(sync_period):
  with pytest.raises(ValueError, match='sync_period must be >= 1'):
    lp.laperm(optax.sgd(0.1), sync_period)


def test_non_scalar_sync_period():
  with pytest.raises(ValueError, match='sync_period must be a scalar'):
    lp.laperm(optax.sgd(0.1), np.array([2, 3]))


def test_non_float_leaf_is_named():
  params = {'layer': {'kernel': jnp.ones((3, 2), jnp.int32)}}
  with pytest.raises(ValueError, match=r"\['layer'\]\['kernel'\].*int32"):
    lp.laperm(optax.sgd(0.1), 2).init(params)


def test_scalar_leaf_is_named():
  params = {'temperature': jnp.float32(1.0)}
  tx = lp.laperm(optax.sgd(0.1), 2, mask={'temperature': True})
  with pytest.raises(ValueError, match=r"\['temperature'\] is a scalar"):
    tx.init(params)


def test_non_finite_initial_values_are_named():
  params = {'w': jnp.ones((3, 2)).at[1, 1].set(jnp.nan)}
  with pytest.raises(ValueError, match=r"\['w'\] has non-finite"):
    lp.laperm(optax.sgd(0.1), 2).init(params)


@pytest.mark.parametrize('argument', ['mask', 'reset_mask'])
def test_mask_structure_mismatch(argument):
  tx = lp.laperm(optax.sgd(0.1), 2, **{argument: {'other': True}})
  with pytest.raises(ValueError, match=f'{argument} does not match'):
    tx.init({'w': jnp.ones((3, 2))})


def test_mask_and_reset_mask_overlap():
  tx = lp.laperm(optax.sgd(0.1), 2, reset_mask=lambda p: jax.tree.map(
      lambda _: True, p))
  with pytest.raises(ValueError, match=r"\['w'\] is in both"):
    tx.init({'w': jnp.ones((3, 2))})


def test_update_without_params():
  tx = lp.laperm(optax.sgd(0.1), 2)
  params = {'w': jnp.ones((3, 2))}
  with pytest.raises(ValueError, match='needs the current params'):
    tx.update(params, tx.init(params))


def test_synchronize_without_laperm_state():
  params = {'w': jnp.ones((3, 2))}
  with pytest.raises(ValueError, match='holds no LaPermState'):
    lp.synchronize(params, optax.adam(1e-3).init(params))


def test_synchronize_with_other_params_structure():
  state = lp.laperm(optax.sgd(0.1), 2).init({'w': jnp.ones((3, 2))})
  with pytest.raises(ValueError, match='do not match the structure'):
    lp.synchronize({'v': jnp.ones((3, 2))}, state)


def test_mask_prefix_tree():
  params = {'a': {'w': jnp.ones((3, 2)), 'b': jnp.ones(2)},
            'c': {'w': jnp.ones((3, 2))}}
  state = lp.laperm(optax.sgd(0.1), 2, mask={'a': True, 'c': False}).init(
      params)
  assert not isinstance(state.sorted_init['a']['b'], optax.MaskedNode)
  assert isinstance(state.sorted_init['c']['w'], optax.MaskedNode)


# ---------------------------------------------------------------------------
# What optax checks of its own wrappers.


def test_chain_with_schedules_under_jit_does_not_recompile():
  lr = optax.exponential_decay(1e-2, 10, 0.9)
  k = lambda count: jnp.where(count < 6, 3, 2)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   lp.laperm(optax.adam(lr), sync_period=k))
  params = _params()
  state = tx.init(params)

  @jax.jit
  def step(params, state, key):
    updates, state = tx.update(_grads(params, key), state, params)
    return optax.apply_updates(params, updates), state

  for key in range(10):
    params, state = step(params, state, key)
  assert step._cache_size() == 1  # pylint: disable=protected-access
  assert int(state[1].steps_since_sync) == 0  # Synced at steps 3, 6, 8, 10.
  _assert_exact_permutation(params, state)


def test_inner_under_inject_hyperparams():
  schedule = optax.linear_schedule(0.1, 0.01, 5)
  inner = optax.inject_hyperparams(optax.adam)(learning_rate=schedule)
  tx = lp.laperm(inner, 2)
  params = _params()
  state = tx.init(params)
  for step in range(5):
    updates, state = tx.update(_grads(params, step), state, params)
    params = optax.apply_updates(params, updates)
  # The hyperparameter of the last update, made at count 4.
  np.testing.assert_allclose(
      state.inner_state.hyperparams['learning_rate'], schedule(4))
  _assert_exact_permutation(lp.synchronize(params, state), state)


def test_extra_args_reach_the_inner_optimizer():
  seen = []

  def update(updates, state, params=None, *, scale, **unused_extra_args):
    seen.append(scale)
    return jax.tree.map(lambda u: -scale * u, updates), state

  inner = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(),
                                                update)
  tx = lp.laperm(inner, 2)
  params = _params()
  state = tx.init(params)
  updates, state = tx.update(_grads(params, 0), state, params, scale=0.5,
                             unused_extra_arg=1)
  assert seen == [0.5]
  chex.assert_trees_all_close(updates, jax.tree.map(
      lambda g: -0.5 * g, _grads(params, 0)))


def test_unexpected_extra_args_are_accepted_by_plain_inner():
  tx = lp.laperm(optax.adam(1e-2), 2)
  params = _params()
  updates, _ = tx.update(_grads(params, 0), tx.init(params), params,
                         unexpected_extra_arg=1)
  chex.assert_trees_all_equal_shapes(updates, params)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float32])
def test_multi_steps(dtype):
  params = _params(dtype)
  tx = optax.MultiSteps(lp.laperm(optax.adam(0.1), 2), every_k_schedule=3)
  state = jax.jit(tx.init)(params)
  update = jax.jit(tx.update)
  for step in range(1, 7):
    updates, state = update(_grads(params, step), state, params)
    if step % 3:
      chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like,
                                                        params))
    params = optax.apply_updates(params, updates)
    chex.assert_trees_all_equal_dtypes(params, _params(dtype))
  # The inner LaPerm saw two updates: the second synced.
  _assert_exact_permutation(params, state)
  assert int(state.inner_opt_state.steps_since_sync) == 0


def test_tree_map_params_reaches_sorted_init():
  params = _params()
  tx = lp.laperm(optax.adam(1e-3), 2)
  state = tx.init(params)
  mapped = optax.tree.map_params(tx, lambda v: v + 1, state)
  chex.assert_trees_all_equal(
      mapped.sorted_init['dense'], state.sorted_init['dense'] + 1)
  chex.assert_trees_all_equal(mapped.inner_state[0].mu['dense'],
                              state.inner_state[0].mu['dense'] + 1)
  assert isinstance(mapped.sorted_init['bias'], optax.MaskedNode)
  chex.assert_trees_all_equal(mapped.count, state.count)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float32])
def test_dtype_and_shape_stable_under_cond(dtype):
  params = _params(dtype)
  tx = lp.laperm(optax.adam(0.1), 1)

  @jax.jit
  def step(params, state, pred):
    updates, new_state = jax.lax.cond(
        pred, lambda: tx.update(_grads(params, 0), state, params),
        lambda: (params, state))
    return optax.apply_updates(params, updates), new_state

  state = tx.init(params)
  new_params, new_state = step(params, state, True)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_params, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)


def test_state_is_made_of_arrays_and_jits():
  tx = lp.laperm(optax.adam(1e-3), 2)
  params = _params()
  state = jax.jit(tx.init)(params)
  chex.assert_trees_all_equal(state, tx.init(params))
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))


def test_donated_state_does_not_alias_itself():
  tx = lp.laperm(optax.adam(1e-3), 2)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state):
    updates, state = tx.update(_grads(params, 0), state, params)
    return optax.apply_updates(params, updates), state

  params = _params()
  state = tx.init(params)
  for _ in range(3):
    params, state = step(params, state)
  assert int(state.count) == 3


def test_synchronize_with_other_leaf_shape():
  state = lp.laperm(optax.sgd(0.1), 2).init({'w': jnp.ones((3, 2))})
  with pytest.raises(ValueError, match=r"\['w'\] has shape \(2, 3\)"):
    lp.synchronize({'w': jnp.ones((2, 3))}, state)


def test_state_adds_one_copy_of_the_permuted_leaves_and_two_counters():
  params = _params()
  inner = optax.adam(1e-3)
  nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))
  extra = nbytes(lp.laperm(inner, 5).init(params)) - nbytes(inner.init(params))
  permuted = {k: v for k, v in params.items() if v.ndim >= 2}
  assert extra == nbytes(permuted) + 2 * 4


# ---------------------------------------------------------------------------
# Layouts: weight vectors other than "all axes but the last".

# An attention query kernel (features, heads, head_dim), an attention output
# kernel (heads, head_dim, features), a transposed (out, in) kernel and a
# Dense kernel left to the default.
_LAYOUT = {'query': (0,), 'out': (0, 1), 'transposed': (-1,), 'dense': None,
           'bias': None}
_PERMUTED = ('query', 'out', 'transposed', 'dense')


def _layout_params(key=0):
  shapes = {'query': (6, 4, 3), 'out': (4, 3, 6), 'transposed': (5, 7),
            'dense': (8, 6), 'bias': (6,)}
  keys = jax.random.split(jax.random.key(key), len(shapes))
  return {name: jax.random.normal(k, shape)
          for k, (name, shape) in zip(keys, shapes.items())}


def _vectors(leaf, name):
  return np.asarray(lp.as_vectors(leaf, vector_axes=_LAYOUT[name]))


@pytest.mark.parametrize('sync_period, jit', [(1, False), (3, True)])
def test_layout_sync_places_each_fan_in_in_rank_order(sync_period, jit):
  params = _layout_params()
  tx = lp.laperm(optax.adam(0.1), sync_period, vector_axes=_LAYOUT)
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  synchronize = jax.jit(functools.partial(lp.synchronize,
                                          vector_axes=_LAYOUT))
  for step in range(1, 2 * sync_period + 1):
    grads = _grads(params, step)
    inner_updates, _ = optax.adam(0.1).update(grads, state.inner_state,
                                              params)
    targets = optax.apply_updates(params, inner_updates)
    updates, state = update(grads, state, params)
    applied = optax.apply_updates(params, updates)
    exact = synchronize(applied, state)
    for name in _PERMUTED:
      sorted_init = state.sorted_init[name]
      chex.assert_trees_all_equal(
          lp.sort_vectors(exact[name], vector_axes=_LAYOUT[name]),
          sorted_init)
      if step % sync_period == 0:
        order = np.argsort(_vectors(targets[name], name), axis=0,
                           kind='stable')
        chex.assert_trees_all_equal(
            np.take_along_axis(_vectors(exact[name], name), order, axis=0),
            _vectors(sorted_init, name))
        _assert_within_one_addition(applied[name], exact[name],
                                    params[name])
    params = applied


def test_layout_state_holds_fan_ins_sorted():
  params = _layout_params()
  state = lp.laperm(optax.sgd(0.1), 2, vector_axes=_LAYOUT).init(params)
  for name in _PERMUTED:
    chex.assert_trees_all_equal(
        _vectors(state.sorted_init[name], name),
        np.sort(_vectors(params[name], name), axis=0))
  assert isinstance(state.sorted_init['bias'], optax.MaskedNode)


def test_default_layout_equals_explicit_trailing_axes_bitwise():
  params = _params()
  trailing = {'bias': None, 'dense': (0,), 'general': (0, 1),
              'conv': (0, 1, 2), 'conv3d': (-5, -4, -3, -2)}
  results = []
  for vector_axes in (None, trailing):
    tx = lp.laperm(optax.adam(0.1), 2, vector_axes=vector_axes)
    current, state = params, tx.init(params)
    for step in range(4):
      updates, state = tx.update(_grads(params, step), state, current)
      current = optax.apply_updates(current, updates)
    results.append((current, state,
                    lp.synchronize(current, state, vector_axes=vector_axes)))
  chex.assert_trees_all_equal(*results)


def test_synchronize_reads_the_layout_from_the_state():
  params = _layout_params()
  tx = lp.laperm(optax.sgd(0.1), 2, vector_axes=_LAYOUT)
  state = tx.init(params)
  chex.assert_trees_all_equal(
      lp.synchronize(params, state),
      lp.synchronize(params, state, vector_axes=_LAYOUT),
      jax.jit(lp.synchronize)(params, state))
  default = lambda path, leaf: None  # The default layout, given explicitly.
  for synchronize in (lp.synchronize, jax.jit(lp.synchronize,
                                              static_argnames='vector_axes')):
    with pytest.raises(ValueError, match=r"synchronize: .* leaf \['query'\] .*"
                       'pass the vector_axes laperm was built with'):
      synchronize(params, state, vector_axes=default)


def test_layout_callable_and_prefix_give_the_same_syncs():
  params = _layout_params()

  def by_path(path, leaf):
    del leaf  # Only the path decides here.
    return _LAYOUT.get(path[0].key)

  results = []
  for vector_axes in (_LAYOUT, by_path):
    tx = lp.laperm(optax.adam(0.1), 1, vector_axes=vector_axes)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(_grads(params, 1), state, params)
    results.append((updates, state))
  chex.assert_trees_all_equal(*results)


@pytest.mark.parametrize('vector_axes, message', [
    ({'query': (3,)}, r"laperm: leaf \['query'\]: vector_axes \(3,\) names "
     'axis 3, out of range'),
    ((0, 0), r"laperm: leaf \['dense'\]: .* names an axis twice"),
    ({'query': ()}, r"laperm: leaf \['query'\]: vector_axes is an empty"),
    ({'query': (0.0,)}, r"laperm: leaf \['query'\]: vector_axes must be a "
     'tuple of ints'),
    ({'query': (0,), 'nope': None}, 'laperm: vector_axes does not match the '
     'structure of params'),
])
def test_bad_layout_is_rejected_at_init(vector_axes, message):
  params = {'query': jnp.ones((6, 4, 3)), 'dense': jnp.ones((8, 6)),
            'bias': jnp.ones(6)}
  if isinstance(vector_axes, dict):
    vector_axes = {'dense': None, 'bias': None, **vector_axes}
  with pytest.raises(ValueError, match=message):
    lp.laperm(optax.sgd(0.1), 2, vector_axes=vector_axes).init(params)


def test_layout_of_unselected_leaves_is_not_read():
  # (0, 1) does not fit the 1-D bias, which the default mask leaves out.
  params = {'kernel': jnp.ones((4, 3, 2)), 'bias': jnp.ones(2)}
  lp.laperm(optax.sgd(0.1), 2, vector_axes=(0, 1)).init(params)


def test_layout_under_multi_steps():
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _layout_params())
  tx = optax.MultiSteps(lp.laperm(optax.adam(0.1), 2, vector_axes=_LAYOUT),
                        every_k_schedule=3)
  state = jax.jit(tx.init)(params)
  update = jax.jit(tx.update)
  for step in range(1, 7):
    updates, state = update(_grads(params, step), state, params)
    params = optax.apply_updates(params, updates)
  assert int(state.inner_opt_state.steps_since_sync) == 0  # It synced.
  exact = lp.synchronize(params, state, vector_axes=_LAYOUT)
  for name in _PERMUTED:
    chex.assert_trees_all_equal(
        lp.sort_vectors(exact[name], vector_axes=_LAYOUT[name]),
        state.inner_opt_state.sorted_init[name])


def test_layout_under_inject_hyperparams():
  tx = optax.inject_hyperparams(lp.laperm)(
      inner=optax.sgd(0.1), sync_period=3, vector_axes=_LAYOUT)
  params = _layout_params()
  state = tx.init(params)
  state.hyperparams['sync_period'] = jnp.asarray(2.0)
  for step in range(1, 5):
    updates, state = tx.update(_grads(params, step), state, params)
    params = optax.apply_updates(params, updates)
  assert int(state.inner_state.steps_since_sync) == 0
  exact = lp.synchronize(params, state, vector_axes=_LAYOUT)
  for name in _PERMUTED:
    chex.assert_trees_all_equal(
        lp.sort_vectors(exact[name], vector_axes=_LAYOUT[name]),
        state.inner_state.sorted_init[name])
