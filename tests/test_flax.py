"""LaPerm in Flax training loops: Linen, NNX, checkpoints, and real learning."""

import chex
import flax
from flax import linen as nn
from flax import nnx
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from sklearn import datasets

import laperm_jax as lp


class _LinenNet(nn.Module):
  """A conv layer and two dense layers: kernels of rank 4 and 2, and biases."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(64)(x))
    return nn.Dense(10)(x)


class _NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.hidden = nnx.Linear(64, 32, rngs=rngs)
    self.out = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def _digits():
  """scikit-learn's 8x8 digits (1797 images, shipped with the package)."""
  images, labels = datasets.load_digits(return_X_y=True)
  images = (images / 16.0).astype(np.float32)
  return images.reshape(-1, 8, 8, 1), labels.astype(np.int32)


def _kernels(params):
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
          if leaf.ndim >= 2}


def _assert_kernels_permute(params, initial_params):
  for name, kernel in _kernels(params).items():
    chex.assert_trees_all_equal(lp.sort_vectors(kernel),
                                lp.sort_vectors(_kernels(initial_params)[name]))


def _linen_state(tx, key=0):
  model = _LinenNet()
  params = model.init(jax.random.key(key), jnp.zeros((1, 8, 8, 1)))['params']
  return train_state.TrainState.create(apply_fn=model.apply, params=params,
                                       tx=tx)


@jax.jit
def _linen_step(state, images, labels):
  def loss_fn(params):
    logits = state.apply_fn({'params': params}, images)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()

  grads = jax.grad(loss_fn)(state.params)
  return state.apply_gradients(grads=grads)


def _accuracy(apply_fn, params, images, labels):
  logits = apply_fn({'params': params}, images)
  return float(jnp.mean(jnp.argmax(logits, -1) == labels))


def test_linen_learns_digits_with_kernels_kept_exact_permutations():
  images, labels = _digits()
  train_images, train_labels = images[:1400], labels[:1400]
  test_images, test_labels = images[1400:], labels[1400:]
  batch, epochs, sync_period = 50, 10, 28  # One sync per epoch.
  state = _linen_state(lp.laperm(optax.adam(1e-2), sync_period))
  initial_params = state.params
  rng = np.random.default_rng(0)
  for _ in range(epochs):
    order = rng.permutation(len(train_images))
    for start in range(0, len(order), batch):
      idx = order[start:start + batch]
      state = _linen_step(state, train_images[idx], train_labels[idx])
  assert int(state.opt_state.steps_since_sync) == 0
  synced = lp.synchronize(state.params, state.opt_state)
  _assert_kernels_permute(synced, initial_params)
  accuracy = _accuracy(state.apply_fn, synced, test_images, test_labels)
  # Chance is 10%; the random initial weights score about that.
  assert _accuracy(state.apply_fn, initial_params, test_images,
                   test_labels) < 0.3
  assert accuracy > 0.85, accuracy


def test_nnx_optimizer():
  images, labels = _digits()
  images = images.reshape(-1, 64)
  model = _NnxNet(nnx.Rngs(0))
  initial = nnx.state(model, nnx.Param)
  optimizer = nnx.Optimizer(model, lp.laperm(optax.adam(1e-2), 28),
                            wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(
          model(x), y).mean()
    optimizer.update(model, nnx.grad(loss_fn)(model))

  for _ in range(5):
    for start in range(0, 1400, 50):
      step(model, optimizer, images[start:start + 50],
           labels[start:start + 50])
  synced = lp.synchronize(nnx.state(model, nnx.Param), optimizer.opt_state)
  nnx.update(model, synced)
  _assert_kernels_permute(nnx.state(model, nnx.Param), initial)
  accuracy = float(jnp.mean(
      jnp.argmax(model(images[1400:]), -1) == labels[1400:]))
  assert accuracy > 0.75, accuracy


def _run(state, steps, start=0):
  images, labels = _digits()
  for step in range(start, start + steps):
    idx = slice(step * 32, step * 32 + 32)
    state = _linen_step(state, images[idx], labels[idx])
  return state


def test_flax_serialization_round_trip_resumes_bit_for_bit():
  tx = lp.laperm(optax.adam(1e-2), 4)
  state = _run(_linen_state(tx), 6)  # Mid-period: 2 steps since the sync.
  restored = flax.serialization.from_bytes(
      _linen_state(tx, key=1), flax.serialization.to_bytes(state))
  chex.assert_trees_all_equal(restored.opt_state, state.opt_state)
  chex.assert_trees_all_equal(_run(restored, 5, 6).params,
                              _run(state, 5, 6).params)


def test_orbax_checkpoint_mid_period_resumes_bit_for_bit(tmp_path):
  tx = lp.laperm(optax.adam(1e-2), 4)
  uninterrupted = _run(_linen_state(tx), 11)
  state = _run(_linen_state(tx), 6)
  assert int(state.opt_state.steps_since_sync) == 2
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / 'step6', state)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                          _linen_state(tx, key=1))
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(tmp_path / 'step6', abstract)
  resumed = _run(restored, 5, 6)
  chex.assert_trees_all_equal(resumed.params, uninterrupted.params)
  chex.assert_trees_all_equal(resumed.opt_state, uninterrupted.opt_state)


def _types(tree):
  return jax.tree.map(lambda x: (x.dtype, x.weak_type), tree)


@pytest.mark.parametrize('donate', [False, True])
def test_train_state_step_does_not_recompile(donate):
  step = jax.jit(lambda s, x, y: _linen_step(s, x, y),
                 donate_argnums=(0,) if donate else ())
  state = _linen_state(lp.laperm(optax.adam(1e-2), 2))
  opt_state_types = _types(state.opt_state)
  images, labels = _digits()
  # Two warm-up calls: TrainState.create starts `step` as a Python int, which
  # comes back as a weakly typed array.
  for i in range(2):
    state = step(state, images[i * 8:i * 8 + 8], labels[i * 8:i * 8 + 8])
  assert _types(state.opt_state) == opt_state_types
  compiled = step._cache_size()  # pylint: disable=protected-access
  for i in range(2, 6):
    state = step(state, images[i * 8:i * 8 + 8], labels[i * 8:i * 8 + 8])
  assert step._cache_size() == compiled  # pylint: disable=protected-access
  assert int(state.opt_state.count) == 6


# ---------------------------------------------------------------------------
# Kernels whose fan-in is not "all axes but the last".

_ATTENTION_LAYOUT = {'query': (0,), 'key': (0,), 'value': (0,),
                     'out': (0, 1)}


def _only_kernels(params):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: path[-1].key == 'kernel', params)


def _fan_in_profiles(params, layout):
  """Per attention kernel, each output unit's fan-in sorted, as columns."""
  return {module: np.sort(np.asarray(lp.as_vectors(
      params[module]['kernel'], vector_axes=axes)), axis=0)
          for module, axes in layout.items()}


def _train_with_layout(model, x, target, layout, steps=9, sync_period=3):
  """Adam inside LaPerm on an MSE loss; returns initial and synced params."""
  params = model.init(jax.random.key(0), x)['params']
  tx = lp.laperm(optax.adam(1e-2), sync_period, mask=_only_kernels,
                 vector_axes=layout)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: jnp.mean(
        (model.apply({'params': p}, x) - target) ** 2))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  current = params
  for _ in range(steps):
    current, state = step(current, state)
  return params, lp.synchronize(current, state, vector_axes=layout)


def _assert_fan_ins_permute(initial, synced, layout):
  """Every output unit's fan-in holds its initial values, bit for bit."""
  want = _fan_in_profiles(initial, layout)
  got = _fan_in_profiles(synced, layout)
  assert want.keys() == got.keys() and want
  for module in want:
    np.testing.assert_array_equal(got[module].view(np.uint32),
                                  want[module].view(np.uint32),
                                  err_msg=module)
    moved = np.asarray(synced[module]['kernel'] != initial[module]['kernel'])
    assert moved.mean() > 0.1, (module, moved.mean())  # It did reconnect.


def _attention_data():
  x = jax.random.normal(jax.random.key(1), (8, 5, 16))
  return x, jnp.roll(x, 1, axis=1)


def test_attention_fan_in_vectors_stay_permutations_of_their_init():
  model = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32)
  x, target = _attention_data()
  initial, synced = _train_with_layout(model, x, target, _ATTENTION_LAYOUT)
  assert initial['query']['kernel'].shape == (16, 4, 8)
  assert initial['out']['kernel'].shape == (4, 8, 16)
  _assert_fan_ins_permute(initial, synced, _ATTENTION_LAYOUT)
  # Biases follow Adam alone: not selected, so the out bias's (0, 1), which
  # has no axis 1, is never read.
  assert not np.array_equal(synced['out']['bias'], initial['out']['bias'])


def test_derived_layout_drives_laperm_directly():
  # lp.derive_vector_axes returns the params' structure with sorted tuples
  # or None at its leaves: laperm and synchronize take it as it is, and it
  # trains bit for bit as the layout given by hand.
  model = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32)
  x, target = _attention_data()
  params = model.init(jax.random.key(0), x)['params']
  derived = lp.derive_vector_axes(
      lambda p, x: model.apply({'params': p}, x), params, x,
      unknown='default')
  assert derived['query']['kernel'] == (0,)
  assert derived['out']['kernel'] == (0, 1)
  _, by_hand = _train_with_layout(model, x, target, _ATTENTION_LAYOUT)
  _, from_derived = _train_with_layout(model, x, target, derived)
  chex.assert_trees_all_equal(from_derived, by_hand)


def test_attention_with_the_default_layout_moves_weights_between_heads():
  # Why the layout matters: a default sync permutes whole (features, heads)
  # slices, so the (head, dim) fan-ins are not permutations of their init.
  model = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32)
  x, target = _attention_data()
  initial, synced = _train_with_layout(model, x, target, None)
  want = _fan_in_profiles(initial, _ATTENTION_LAYOUT)
  got = _fan_in_profiles(synced, _ATTENTION_LAYOUT)
  for module in ('query', 'key', 'value'):
    assert not np.array_equal(got[module], want[module]), module


def test_dense_general_fan_in_vectors_stay_permutations_of_their_init():
  model = nn.DenseGeneral(features=(4, 8), axis=(-2, -1))
  x = jax.random.normal(jax.random.key(1), (16, 3, 5))
  target = jnp.tanh(jnp.einsum('bij,ijk->bk', x, jnp.ones((3, 5, 32)))
                    ).reshape(16, 4, 8)
  layout = {'kernel': (0, 1), 'bias': None}
  initial, synced = _train_with_layout(model, x, target, layout)
  assert initial['kernel'].shape == (3, 5, 4, 8)
  want = np.sort(np.asarray(initial['kernel']).reshape(15, 32), axis=0)
  got = np.sort(np.asarray(synced['kernel']).reshape(15, 32), axis=0)
  np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
  assert np.mean(np.asarray(synced['kernel'] != initial['kernel'])) > 0.1
