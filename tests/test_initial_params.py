"""Tests for LaPerm without the copy of the initial weights (`initial_params`).

A state built with ``initial_params`` must give, bit for bit, the syncs,
`synchronize` and exports of a state that stores the sorted copy (on one
platform), while holding no initial weights.
"""

import functools

import chex
from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import laperm_jax as lp
from laperm_jax import _laperm

_SHAPES = {
    'dense': (8, 6),
    'conv': (3, 3, 2, 4),
    'query': (4, 3, 5),  # (features, heads, head_dim): fan-in is axis 0.
    'bias': (6,),
    'scale': (6,),
}


def _init_fn(key):
  """He-uniform kernels, zero bias and unit scale, regenerated from ``key``."""
  keys = jax.random.split(key, len(_SHAPES))
  he_uniform = jax.nn.initializers.he_uniform()
  params = {name: he_uniform(k, shape) for k, (name, shape)
            in zip(keys, _SHAPES.items()) if len(shape) >= 2}
  return {**params, 'bias': jnp.zeros(6), 'scale': jnp.ones(6)}


def _initial(seed=0):
  return _init_fn(jax.random.key(seed))


def _grads(params, step):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(step), len(leaves))
  return jax.tree.unflatten(treedef, [
      jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _query_fan_in(path, leaf):
  del leaf
  return (0,) if jax.tree_util.keystr(path) == "['query']" else None


_MASK = {'dense': True, 'conv': False, 'query': True, 'bias': False,
         'scale': False}
_RESET = {'dense': False, 'conv': False, 'query': False, 'bias': True,
          'scale': True}

# (initial params function, laperm keyword arguments) per case.
_CASES = {
    'default': (_initial, {}),
    'masks_and_reset': (_initial, {'mask': _MASK, 'reset_mask': _RESET}),
    'layout': (_initial, {'vector_axes': _query_fan_in}),
    'shared_value': (
        lambda: lp.shared_value(jax.random.key(7), _initial(), 0.08, 0.6,
                                mask=_MASK),
        {'mask': _MASK}),
    'pruned': (lambda: lp.random_prune(jax.random.key(7), _initial(),
                                       0.5).params, {}),
    'reset_inner_state': (_initial, {'reset_inner_state': True}),
}


def _train(tx, params, steps, mode):
  """Runs ``steps`` updates; returns every (updates, params, state)."""

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return updates, optax.apply_updates(params, updates), state

  if mode == 'jit':
    step = jax.jit(step)
  elif mode == 'donate':
    step = jax.jit(step, donate_argnums=(0, 1))
  state = tx.init(params)
  history = []
  for i in range(steps):
    grads = _grads(params, i)
    updates, params, state = step(params, state, grads)
    history.append(jax.tree.map(np.asarray, (updates, params, state)))
  return history


def _without_held_values(state):
  """The state with the fields that differ between the two paths dropped."""
  return state._replace(sorted_init=None, reset_values=None, settings=None)


def _assert_runs_equal(stored, copy_free):
  for (updates, params, state), (updates2, params2, state2) in zip(
      stored, copy_free):
    chex.assert_trees_all_equal(updates, updates2)
    chex.assert_trees_all_equal(params, params2)
    chex.assert_trees_all_equal(_without_held_values(state),
                                _without_held_values(state2))


# ---------------------------------------------------------------------------
# The syncs, bit for bit those of the stored copy.


@pytest.mark.parametrize('case, mode', [
    ('default', 'eager'),
    ('default', 'donate'),
    ('masks_and_reset', 'jit'),
    ('layout', 'jit'),
    ('shared_value', 'jit'),
    ('pruned', 'donate'),
    ('reset_inner_state', 'jit'),
])
def test_syncs_equal_the_stored_copy_bitwise(case, mode):
  initial, kwargs = _CASES[case]
  steps = 7  # Three syncs at sync_period 2, and a step past the last.
  stored = _train(lp.laperm(optax.adam(0.1), 2, **kwargs), initial(), steps,
                  mode)
  copy_free = _train(
      lp.laperm(optax.adam(0.1), 2, initial_params=initial, **kwargs),
      initial(), steps, mode)
  _assert_runs_equal(stored, copy_free)
  # The syncs moved weights: the run is not trivially equal.
  assert not np.array_equal(stored[-2][1]['dense'], initial()['dense'])
  # And synchronize on the copy-free state gives the stored path's weights.
  _, params, state = copy_free[-1]
  vector_axes = kwargs.get('vector_axes')
  chex.assert_trees_all_equal(
      lp.synchronize(params, state, vector_axes=vector_axes,
                     initial_params=initial),
      lp.synchronize(params, stored[-1][2], vector_axes=vector_axes))


def test_reset_leaves_regenerate_their_initial_values():
  tx = lp.laperm(optax.adam(0.1), 2, mask=_MASK, reset_mask=_RESET,
                 initial_params=_initial)
  history = _train(tx, _initial(), 4, 'jit')
  _, params, state = history[-1]  # Right after the second sync.
  assert isinstance(state.reset_values['scale'], _laperm.FromInitialParams)
  exact = lp.synchronize(params, state, initial_params=_initial)
  for name in ('scale', 'bias'):
    chex.assert_trees_all_equal(exact[name], _initial()[name])
  _, params, _ = history[-2]
  assert not np.array_equal(params['scale'], _initial()['scale'])


def test_multi_steps_and_inject_hyperparams_equal_the_stored_copy():
  for build in (
      lambda **kw: optax.MultiSteps(lp.laperm(optax.adam(0.1), 2, **kw), 2),
      # A callable argument would be taken for a schedule: make it static.
      lambda **kw: optax.inject_hyperparams(
          lp.laperm, static_args=('initial_params',))(
              inner=optax.adam(0.1), sync_period=2, **kw),
  ):
    stored = _train(build(), _initial(), 5, 'jit')
    copy_free = _train(build(initial_params=_initial), _initial(), 5, 'jit')
    for (updates, params, _), (updates2, params2, _) in zip(stored,
                                                            copy_free):
      chex.assert_trees_all_equal(updates, updates2)
      chex.assert_trees_all_equal(params, params2)
    _, params, state = copy_free[-1]
    chex.assert_trees_all_equal(
        lp.synchronize(params, state, initial_params=_initial),
        lp.synchronize(params, stored[-1][2]))


def test_flax_linen_model_initialized_inside_the_jitted_step():

  class Net(nn.Module):

    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(4, (3, 3))(x)).reshape(x.shape[0], -1)
      return nn.Dense(10)(nn.relu(nn.Dense(32)(x)))

  model = Net()
  images = jax.random.normal(jax.random.key(1), (16, 8, 8, 1))
  labels = jnp.arange(16) % 10
  initial = lambda: model.init(jax.random.key(0), images[:1])['params']

  def run(tx):
    params = initial()
    state = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state):
      loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
          model.apply({'params': p}, images), labels).mean()
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      return optax.apply_updates(params, updates), state

    for _ in range(6):
      params, state = step(params, state)
    return params, state

  params, state = run(lp.laperm(optax.adam(1e-2), 3))
  params2, state2 = run(lp.laperm(optax.adam(1e-2), 3,
                                  initial_params=initial))
  chex.assert_trees_all_equal(params2, params)
  exact = lp.synchronize(params2, state2, initial_params=initial)
  chex.assert_trees_all_equal(exact, lp.synchronize(params, state))
  kernel = exact['Dense_0']['kernel']
  chex.assert_trees_all_equal(lp.sort_vectors(kernel),
                              lp.sort_vectors(initial()['Dense_0']['kernel']))
  assert not np.array_equal(kernel, initial()['Dense_0']['kernel'])


# ---------------------------------------------------------------------------
# The state: no initial weights.


def test_state_holds_the_inner_state_and_two_counters_only():
  params = _initial()
  inner = optax.adam(1e-3)
  state = lp.laperm(inner, 5, mask=_MASK, reset_mask=_RESET,
                    initial_params=_initial).init(params)
  nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))
  assert nbytes(state) == nbytes(inner.init(params)) + 2 * 4
  assert not jax.tree.leaves((state.sorted_init, state.reset_values))
  kinds = {name: (type(state.sorted_init[name]).__name__,
                  type(state.reset_values[name]).__name__) for name in _SHAPES}
  assert kinds == {
      'dense': ('FromInitialParams', 'MaskedNode'),
      'conv': ('MaskedNode', 'MaskedNode'),
      'query': ('FromInitialParams', 'MaskedNode'),
      'bias': ('MaskedNode', 'FromInitialParams'),
      'scale': ('MaskedNode', 'FromInitialParams'),
  }


def test_state_jits_and_maps_params():
  tx = lp.laperm(optax.adam(1e-3), 2, initial_params=_initial)
  params = _initial()
  state = jax.jit(tx.init)(params)
  chex.assert_trees_all_equal(state, tx.init(params))
  mapped = optax.tree.map_params(tx, lambda v: v + 1, state)
  chex.assert_trees_all_equal(mapped.inner_state[0].mu['dense'],
                              state.inner_state[0].mu['dense'] + 1)
  assert isinstance(mapped.sorted_init['dense'], _laperm.FromInitialParams)


# ---------------------------------------------------------------------------
# Export.


def test_export_equals_the_stored_path_byte_for_byte(tmp_path):
  initial, kwargs = _CASES['masks_and_reset']
  _, params, stored = _train(lp.laperm(optax.adam(0.1), 3, **kwargs),
                             initial(), 4, 'jit')[-1]
  copy_free = _train(lp.laperm(optax.adam(0.1), 3, initial_params=initial,
                               **kwargs), initial(), 4, 'jit')[-1][2]
  lp.export_permutations(params, stored, tmp_path / 'stored.npz')
  lp.export_permutations(params, copy_free, tmp_path / 'copy_free.npz',
                         initial_params=initial)
  assert ((tmp_path / 'stored.npz').read_bytes()
          == (tmp_path / 'copy_free.npz').read_bytes())
  # init_fn and init_key stand in for initial_params.
  lp.export_permutations(params, copy_free, tmp_path / 'key.npz',
                         init_fn=_init_fn, init_key=jax.random.key(0))
  restored = lp.restore_permutations(tmp_path / 'key.npz', params,
                                     init_fn=_init_fn)
  chex.assert_trees_all_equal(restored, lp.synchronize(params, stored))


# ---------------------------------------------------------------------------
# Errors.


def test_copy_free_state_carries_its_function(tmp_path):
  params = _initial()
  state = lp.laperm(optax.sgd(0.1), 2, initial_params=_initial).init(params)
  assert state.settings.initial_params is _initial
  chex.assert_trees_all_equal(
      lp.synchronize(params, state),
      lp.synchronize(params, state, initial_params=_initial),
      jax.jit(lp.synchronize)(params, state))
  lp.export_permutations(params, state, tmp_path / 'net.npz')
  other = lambda: _initial()  # The same values, another function.
  for synchronize in (lp.synchronize, jax.jit(
      lp.synchronize, static_argnames='initial_params')):
    with pytest.raises(ValueError, match='synchronize: initial_params is not '
                       'the function the LaPerm state was built with'):
      synchronize(params, state, initial_params=other)
  with pytest.raises(ValueError, match='export_permutations: initial_params'):
    lp.export_permutations(params, state, tmp_path / 'net.npz',
                           initial_params=other)


def test_initial_params_not_callable_without_arguments_at_construction():
  with pytest.raises(TypeError, match='initial_params must be a function'):
    lp.laperm(optax.sgd(0.1), 2, initial_params=_initial())
  with pytest.raises(TypeError, match="callable with no arguments .*'key'"):
    lp.laperm(optax.sgd(0.1), 2, initial_params=_init_fn)


@pytest.mark.parametrize('initial, error, message', [
    (lambda: {**_initial(), 'extra': jnp.ones(2)}, ValueError,
     r"the params do not: \[\"\['extra'\]\"\]"),
    (lambda: {k: v for k, v in _initial().items() if k != 'scale'},
     ValueError, r"it lacks: \[\"\['scale'\]\"\]"),
    (lambda: {**_initial(), 'dense': jnp.ones((6, 8))}, ValueError,
     r"leaf \['dense'\] as float32\[6, 8\], but the params hold "
     r'float32\[8, 6\]'),
    (lambda: {**_initial(), 'query': _initial()['query'].astype(jnp.bfloat16)},
     ValueError, r"leaf \['query'\] as bfloat16"),
    (lambda: _initial(seed=1), ValueError,
     r"regenerates leaf \['conv'\] with other values"),
])
def test_bad_initial_params_are_named_at_init(initial, error, message):
  tx = lp.laperm(optax.sgd(0.1), 2, initial_params=initial)
  with pytest.raises(error, match=message):
    tx.init(_initial())


def test_shapes_are_checked_inside_jit_too():
  tx = lp.laperm(optax.sgd(0.1), 2, initial_params=lambda: {
      **_initial(), 'dense': jnp.ones((6, 8))})
  with pytest.raises(ValueError, match=r"leaf \['dense'\]"):
    jax.jit(tx.init)(_initial())


def test_values_differing_only_at_unselected_leaves_are_accepted():
  # The bias is neither permuted nor reset: its initial value is not used.
  tx = lp.laperm(optax.sgd(0.1), 2, initial_params=lambda: {
      **_initial(), 'bias': jnp.full(6, 3.0)})
  tx.init(_initial())


def test_regenerated_signed_zero_must_match_bitwise():
  params = {'w': jnp.zeros((3, 2))}
  tx = lp.laperm(optax.sgd(0.1), 2, initial_params=lambda: {
      'w': -jnp.zeros((3, 2))})
  with pytest.raises(ValueError, match=r"\['w'\] with other values"):
    tx.init(params)


def test_synchronize_checks_the_regenerated_shapes():
  params = _initial()
  state = lp.laperm(optax.sgd(0.1), 2, initial_params=_initial).init(params)
  with pytest.raises(ValueError, match=r"synchronize: .* leaf \['conv'\]"):
    lp.synchronize(params, state, initial_params=lambda: {
        **_initial(), 'conv': jnp.ones((2, 2))})



def test_only_the_sync_branch_regenerates():
  tx = lp.laperm(optax.sgd(0.1), 2, initial_params=_initial)
  params = _initial()
  jaxpr = jax.make_jaxpr(tx.update)(params, tx.init(params), params).jaxpr
  conds = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == 'cond']
  assert len(conds) == 1
  keep, sync = conds[0].params['branches']
  assert 'random_bits' in str(sync)
  assert 'random_bits' not in str(keep)
  assert not any('random_bits' in str(eqn) for eqn in jaxpr.eqns
                 if eqn.primitive.name != 'cond')


def test_sharded_params_sync_as_the_stored_copy():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ('model',))
  by_output = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(None, 'model'))
  initial = lambda: {'kernel': jax.nn.initializers.he_uniform()(
      jax.random.key(3), (16, 8)), 'bias': jnp.zeros(8)}
  shardings = {'kernel': by_output,
               'bias': jax.sharding.NamedSharding(
                   mesh, jax.sharding.PartitionSpec())}
  runs = []
  for tx in (lp.laperm(optax.adam(0.1), 2),
             lp.laperm(optax.adam(0.1), 2, initial_params=initial)):
    params = jax.device_put(initial(), shardings)
    runs.append(_train(tx, params, 5, 'jit'))
  _assert_runs_equal(*runs)
