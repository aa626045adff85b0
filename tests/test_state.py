"""The LaPerm state: the settings it carries, how it is read, boxed params,
leaves without a fan-in, and leaves LaPerm cannot move."""

import copy
import pickle
import warnings

import chex
from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import laperm_jax as lp


class _Tagger(nn.Module):
  """Token embeddings, a hidden layer with boxed kernels, and a head.

  The kernels are boxed as Flax's large-model examples box them
  (``nn.with_logical_partitioning``); ``zero_head`` zero-initializes the
  head, as ``head_zeroinit`` does.
  """

  zero_head: bool = False

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(12, 8)(tokens)
    x = nn.Dense(16, kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ('embed', 'mlp')), name='hidden')(x)
    head_init = (nn.initializers.zeros if self.zero_head
                 else nn.initializers.lecun_normal())
    return nn.Dense(5, kernel_init=nn.with_logical_partitioning(
        head_init, ('mlp', 'vocab')), name='head')(nn.relu(x))


_TOKENS = jnp.arange(24).reshape(4, 6) % 12
_LABELS = jnp.arange(24).reshape(4, 6) % 5
# The embedding is read by a gather: it has no fan-in to permute.
_LAYOUT = {'Embed_0': {'embedding': lp.NO_FAN_IN},
           'hidden': {'kernel': (0,), 'bias': lp.NO_FAN_IN},
           'head': {'kernel': (0,), 'bias': lp.NO_FAN_IN}}


def _boxed_params(zero_head=False):
  return _Tagger(zero_head).init(jax.random.key(0), _TOKENS)['params']


def _loss(params, zero_head=False):
  logits = _Tagger(zero_head).apply({'params': params}, _TOKENS)
  return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                         _LABELS).mean()


def _train(tx, params, steps, jit=True):
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  for _ in range(steps):
    updates, state = update(jax.grad(_loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _assert_permutes(synced, initial, permuted_names):
  """Each named leaf is bitwise a permutation of its initial fan-in vectors."""
  synced, initial = nn.unbox(synced), nn.unbox(initial)
  for module in permuted_names:
    chex.assert_trees_all_equal(
        lp.sort_vectors(synced[module]['kernel'], vector_axes=(0,)),
        lp.sort_vectors(initial[module]['kernel'], vector_axes=(0,)))


# ---------------------------------------------------------------------------
# The layout chooses the leaves.


def test_no_fan_in_leaves_follow_the_inner_optimizer():
  initial = _boxed_params()
  params, state = _train(lp.laperm(optax.adam(0.1), 2, vector_axes=_LAYOUT),
                         initial, 4)
  held = nn.unbox(state.sorted_init)
  assert isinstance(held['Embed_0']['embedding'], optax.MaskedNode)
  assert not isinstance(held['hidden']['kernel'], optax.MaskedNode)
  synced = lp.synchronize(params, state)
  _assert_permutes(synced, initial, ['hidden', 'head'])
  # The embedding moved freely: it is not a permutation of its columns.
  embedding = nn.unbox(synced)['Embed_0']['embedding']
  assert not np.array_equal(lp.sort_vectors(embedding),
                            lp.sort_vectors(initial['Embed_0']['embedding']))


def test_a_mask_naming_a_leaf_without_fan_in_is_an_error():
  mask = {'Embed_0': True, 'hidden': False, 'head': False}
  tx = lp.laperm(optax.adam(0.1), 2, mask=mask, vector_axes=_LAYOUT)
  with pytest.raises(ValueError, match=r"laperm: mask selects leaf "
                     r"\['Embed_0'\]\['embedding'\], whose layout .* NO_FAN_IN"):
    tx.init(_boxed_params())


def test_mask_still_narrows_the_selection():
  mask = {'Embed_0': False, 'hidden': {'kernel': True, 'bias': False},
          'head': False}
  state = lp.laperm(optax.adam(0.1), 2, mask=mask,
                    vector_axes=_LAYOUT).init(_boxed_params())
  held = nn.unbox(state.sorted_init)
  assert not isinstance(held['hidden']['kernel'], optax.MaskedNode)
  assert isinstance(held['head']['kernel'], optax.MaskedNode)


@pytest.mark.parametrize('function', ['random_prune', 'shared_value'])
def test_initializers_read_no_fan_in_as_laperm_does(function):
  params = nn.unbox(_boxed_params())
  key = jax.random.key(1)
  if function == 'random_prune':
    made = lp.random_prune(key, params, 0.5, vector_axes=_LAYOUT).params
  else:
    made = lp.shared_value(key, params, 0.1, 0.5, vector_axes=_LAYOUT)
  chex.assert_trees_all_equal(made['Embed_0'], params['Embed_0'])
  assert not np.array_equal(made['hidden']['kernel'],
                            params['hidden']['kernel'])


def test_analyses_skip_leaves_without_fan_in():
  params = nn.unbox(_boxed_params())
  profiles = lp.weight_profiles(params, vector_axes=_LAYOUT)
  assert isinstance(profiles['Embed_0']['embedding'], optax.MaskedNode)
  with pytest.raises(ValueError, match='has the layout NO_FAN_IN'):
    lp.as_vectors(params['hidden']['bias'], vector_axes=lp.NO_FAN_IN)


# ---------------------------------------------------------------------------
# Leaves LaPerm cannot move.


def test_zero_initialized_head_is_reported_by_name():
  tx = lp.laperm(optax.adam(0.1), 2, vector_axes=_LAYOUT)
  with pytest.warns(UserWarning, match=r"\['head'\]\['kernel'\].* every "
                    'weight vector holds one value'):
    tx.init(_boxed_params(zero_head=True))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    tx.init(_boxed_params())  # Random kernels: no warning.
    # Inside jit the values cannot be seen: no report, no error.
    jax.jit(tx.init)(_boxed_params(zero_head=True))


# ---------------------------------------------------------------------------
# The state carries its settings.


def test_synchronize_needs_nothing_repeated_and_checks_what_is():
  initial = _boxed_params()
  params, state = _train(lp.laperm(optax.adam(0.1), 3, vector_axes=_LAYOUT),
                         initial, 4)
  synced = lp.synchronize(params, state)
  chex.assert_trees_all_equal(
      synced, lp.synchronize(params, state, vector_axes=_LAYOUT),
      jax.jit(lp.synchronize)(params, state))
  _assert_permutes(synced, initial, ['hidden', 'head'])
  flipped = lambda path, leaf: (1,) if leaf.ndim == 2 else lp.NO_FAN_IN
  for synchronize in (lp.synchronize, jax.jit(
      lp.synchronize, static_argnames='vector_axes')):
    with pytest.raises(ValueError, match=r"synchronize: vector_axes gives leaf "
                       r"\['head'\]\['kernel'\] the fan-in axes \(1,\)"):
      synchronize(params, state, vector_axes=flipped)


def test_settings_are_static_and_resolved():
  params = nn.unbox(_boxed_params())
  by_path = lambda path, leaf: _LAYOUT[path[0].key][path[1].key]
  states = [lp.laperm(optax.sgd(0.1), 2, vector_axes=layout).init(params)
            for layout in (_LAYOUT, by_path)]
  assert not jax.tree.leaves(states[0].settings)
  # Equivalent layouts are equal settings: the states are the same tree.
  chex.assert_trees_all_equal(*states)
  chex.assert_trees_all_equal(states[0].settings.vector_axes, _LAYOUT)
  settings = states[0].settings
  assert copy.deepcopy(settings) == settings
  assert type(pickle.loads(pickle.dumps(settings))) is type(settings)


@pytest.mark.parametrize('wrap', ['chain', 'inject_hyperparams', 'multi_steps'])
def test_settings_survive_wrappers_and_jit(wrap):
  params = nn.unbox(_boxed_params())
  inner = lp.laperm(optax.adam(0.1), 2, vector_axes=_LAYOUT)
  tx = {
      'chain': lambda: optax.chain(optax.clip(1.0), inner),
      'inject_hyperparams': lambda: optax.inject_hyperparams(
          lambda learning_rate: optax.chain(
              lp.laperm(optax.adam(learning_rate), 2, vector_axes=_LAYOUT)))(
                  learning_rate=0.1),
      'multi_steps': lambda: optax.MultiSteps(inner, every_k_schedule=2),
  }[wrap]()
  state = jax.jit(tx.init)(params)
  update = jax.jit(tx.update)
  for _ in range(4):
    updates, state = update(jax.grad(_loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  [laperm_state] = lp.laperm_states(state)
  assert laperm_state.settings.leaf_axes == (None, None, (0,), None, (0,))
  chex.assert_trees_all_equal(lp.synchronize(params, state),
                              lp.synchronize(params, laperm_state))
  mapped = optax.tree.map_params(tx, lambda leaf: leaf, state)
  assert lp.laperm_states(mapped)[0].settings == laperm_state.settings
  # As shardings are built: the params' tree maps onto the state's copies.
  specs = optax.tree.map_params(
      tx, lambda leaf, spec: spec, state, jax.tree.map(lambda _: 'p', params),
      is_leaf=lambda x: isinstance(x, optax.MaskedNode),
      transform_non_params=lambda _: 'other')
  assert set(jax.tree.leaves(specs)) == {'p', 'other'}


def test_orbax_restores_the_settings_from_the_target(tmp_path):
  # Jitted: a regenerating function must give the same bits wherever it
  # runs, and an eager `model.init` differs from a jitted one on a GPU.
  initial = jax.jit(lambda: nn.unbox(_boxed_params()))
  tx = lp.laperm(optax.adam(0.1), 3, vector_axes=_LAYOUT,
                 initial_params=initial)
  params, state = _train(tx, initial(), 2)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / 'state', state)
  abstract = jax.eval_shape(tx.init, params)
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(tmp_path / 'state', abstract)
  assert restored.settings == state.settings
  assert restored.settings.initial_params is initial
  chex.assert_trees_all_equal(restored, state)
  chex.assert_trees_all_equal(lp.synchronize(params, restored),
                              lp.synchronize(params, state))


def test_laperm_states_finds_every_state():
  params = {'w': jnp.ones((3, 2)) * jnp.arange(3.0)[:, None]}
  tx = optax.chain(lp.laperm(optax.sgd(0.1), 2), optax.clip(1.0),
                   lp.laperm(optax.sgd(0.1), 3))
  assert len(lp.laperm_states(tx.init(params))) == 2
  assert not lp.laperm_states(optax.adam(0.1).init(params))


# ---------------------------------------------------------------------------
# Boxed params.


def test_boxed_params_train_sync_export_and_analyze(tmp_path):
  initial = _boxed_params()
  tx = lp.laperm(optax.adam(0.1), 2, vector_axes=_LAYOUT)
  params, state = _train(tx, initial, 3)
  unboxed = nn.unbox(params)
  synced = lp.synchronize(params, state)
  assert isinstance(synced['hidden']['kernel'], nn.LogicallyPartitioned)
  chex.assert_trees_all_equal(nn.unbox(synced),
                              lp.synchronize(unboxed, state))
  _assert_permutes(synced, initial, ['hidden', 'head'])
  lp.export_permutations(params, state, tmp_path / 'boxed.npz')
  lp.export_permutations(unboxed, state, tmp_path / 'unboxed.npz')
  assert ((tmp_path / 'boxed.npz').read_bytes()
          == (tmp_path / 'unboxed.npz').read_bytes())
  restored = lp.restore_permutations(tmp_path / 'boxed.npz', unboxed)
  chex.assert_trees_all_equal(restored, nn.unbox(synced))
  distance = nn.unbox(lp.ranking_distance(initial, unboxed, opt_state=state))
  assert isinstance(distance['Embed_0']['embedding'], optax.MaskedNode)
  assert 0 < float(distance['hidden']['kernel'].mean) < 1


def test_truly_different_params_get_one_short_line():
  state = lp.laperm(optax.adam(0.1), 2, vector_axes=_LAYOUT).init(
      _boxed_params())
  other = nn.unbox(_boxed_params())
  other['extra'] = {'kernel': jnp.ones((2, 2))}
  with pytest.raises(ValueError) as error:
    lp.synchronize(other, state)
  message = str(error.value)
  assert '\n' not in message and len(message) < 250, message
  assert "['extra']['kernel']" in message
