"""One derived layout drives LaPerm: models written for the tests train.

For each model, one call derives the layout and ``lp.laperm(adam, k,
vector_axes=layout)`` trains it with nothing else: every leaf the layout
gives a fan-in (of rank >= 2: LaPerm's default selection) is, bit for bit,
a permutation of its initial fan-in vectors after ``lp.synchronize``, and
the leaves of rank >= 2 left to Adam are exactly those the derivation
reported.
"""

import pathlib
import re
import textwrap

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import laperm_jax as lp

SYNC_PERIOD = 3
STEPS = 2 * SYNC_PERIOD


def _reported(record) -> set[str]:
  """The leaf paths that the one warning of ``record`` lists."""
  assert len(record) == 1
  lines = str(record[0].message).splitlines()
  return {line.split()[0] for line in lines if line.startswith('  [')}


def _left_out(params, layout) -> set[str]:
  """Paths of the leaves of rank >= 2 that ``layout`` leaves to Adam."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  layouts = jax.tree.structure(params).flatten_up_to(layout)
  return {jax.tree_util.keystr(path)
          for (path, leaf), axes in zip(flat, layouts)
          if np.ndim(leaf) >= 2 and axes is lp.NO_FAN_IN}


def _assert_trained_by_permutation(initial, trained, layout):
  """Permuted leaves keep their fan-in vectors' values; the others moved."""
  flat = jax.tree_util.tree_flatten_with_path(initial)[0]
  layouts = jax.tree.structure(initial).flatten_up_to(layout)
  permuted = 0
  for (path, before), after, axes in zip(flat, jax.tree.leaves(trained),
                                         layouts):
    name = jax.tree_util.keystr(path)
    if np.ndim(before) < 2:
      continue
    if axes is lp.NO_FAN_IN:
      # Adam alone: the values themselves changed.
      assert not np.array_equal(lp.sort_vectors(after),
                                lp.sort_vectors(before)), name
      continue
    np.testing.assert_array_equal(
        np.asarray(lp.sort_vectors(after, vector_axes=axes)).view(np.uint32),
        np.asarray(lp.sort_vectors(before, vector_axes=axes)).view(np.uint32),
        err_msg=name)
    permuted += not np.array_equal(after, before)
  assert permuted > 0  # Syncs moved weights: not a check of frozen leaves.


def _train_linen(module, params, inputs, layout):
  """Adam inside LaPerm, driven by ``layout`` alone; the synced params."""
  tx = lp.laperm(optax.adam(1e-2), SYNC_PERIOD, vector_axes=layout)

  def loss(params):
    return jnp.mean(jnp.square(module.apply({'params': params}, inputs) - 1.0))

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  trained, state = params, tx.init(params)
  for _ in range(STEPS):
    trained, state = step(trained, state)
  return lp.synchronize(trained, state, vector_axes=layout)


class _BiLSTM(nn.Module):
  """Flax's OptimizedLSTMCell both ways, and a Dense head."""

  @nn.compact
  def __call__(self, x):
    x = nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell(6)),
                         nn.RNN(nn.OptimizedLSTMCell(6)))(x)
    return nn.Dense(3, name='head')(x)


def test_lstm_with_concatenated_gates_trains_every_kernel():
  module = _BiLSTM()
  x = jax.random.normal(jax.random.key(1), (4, 5, 3))
  params = module.init(jax.random.key(0), x)['params']
  # No report: every kernel is read, through the gates' concatenation.
  layout = lp.derive_vector_axes(lambda p, x: module.apply({'params': p}, x),
                                 params, x)
  assert not _left_out(params, layout)
  assert len(jax.tree.leaves(params)) == 2 * (8 + 4) + 2
  synced = _train_linen(module, params, x, layout)
  _assert_trained_by_permutation(params, synced, layout)


class _Block(nn.Module):
  """A pre-norm transformer block, the body of ``nn.scan``."""

  @nn.compact
  def __call__(self, x, _):
    y = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=2)(y, y)
    y = nn.LayerNorm()(x)
    return x + nn.Dense(16)(nn.gelu(nn.Dense(32)(y))), None


class _TiedTransformer(nn.Module):
  """Tied input and output embeddings, two blocks stacked by ``nn.scan``."""

  @nn.compact
  def __call__(self, tokens):
    embed = nn.Embed(20, 16)
    x = embed(tokens) + self.param(
        'pos_embedding', nn.initializers.normal(0.02), (1, tokens.shape[1], 16))
    blocks = nn.scan(_Block, variable_axes={'params': 0},
                     split_rngs={'params': True}, length=2)
    x, _ = blocks(name='blocks')(x, None)
    return embed.attend(nn.LayerNorm()(x))


def test_tied_transformer_scanned_over_layers():
  module = _TiedTransformer()
  tokens = jax.random.randint(jax.random.key(1), (4, 5), 0, 20)
  params = module.init(jax.random.key(0), tokens)['params']
  with pytest.warns(UserWarning) as record:
    layout = lp.derive_vector_axes(
        lambda p, t: module.apply({'params': p}, t), params, tokens,
        unknown='warn')
  # The layer axis tells the stacked kernels' vectors apart.
  blocks = layout['blocks']
  assert blocks['Dense_0']['kernel'] == blocks['Dense_1']['kernel'] == (1,)
  attention = blocks['MultiHeadDotProductAttention_0']
  assert params['blocks']['MultiHeadDotProductAttention_0']['query'][
      'kernel'].shape == (2, 16, 2, 8)
  for name in ('query', 'key', 'value'):
    assert attention[name]['kernel'] == (1,)
  assert attention['out']['kernel'] == (1, 2)
  # The tied embedding is read by a lookup: left to Adam, and reported with
  # the position embedding and the stacked biases and norms.
  assert layout['Embed_0']['embedding'] is lp.NO_FAN_IN
  assert "['Embed_0']['embedding']" in _reported(record)
  assert _reported(record) == _left_out(params, layout)
  synced = _train_linen(module, params, tokens, layout)
  _assert_trained_by_permutation(params, synced, layout)


class _NNXBlock(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.linear = nnx.Linear(8, 8, rngs=rngs)
    self.norm = nnx.BatchNorm(8, rngs=rngs)
    self.dropout = nnx.Dropout(0.2, rngs=rngs)

  def __call__(self, x):
    return self.dropout(nnx.relu(self.norm(self.linear(x))))


class _NNXModel(nnx.Module):
  """A Conv stem with BatchNorm, three blocks run by ``nnx.scan``, a head."""

  def __init__(self, rngs: nnx.Rngs):
    self.stem = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
    self.norm = nnx.BatchNorm(8, rngs=rngs)

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def blocks(rngs: nnx.Rngs):
      return _NNXBlock(rngs)

    self.blocks = blocks(rngs)
    self.head = nnx.Linear(8, 4, rngs=rngs)

  def __call__(self, images):
    x = self.norm(self.stem(images)).mean(axis=(1, 2))

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def run(x, block):
      return block(x)

    return self.head(run(x, self.blocks))


def _key_data(tree):
  """``tree`` with its PRNG keys as their raw data, for comparisons."""
  return jax.tree.map(
      lambda x: jax.random.key_data(x)
      if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, tree)


def _nnx_params(model):
  return nnx.as_pure(nnx.state(model, nnx.Param))


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_nnx_layout_of_a_model_with_state(mode):
  model = _NNXModel(nnx.Rngs(0, dropout=1))
  getattr(model, mode)()
  images = jax.ShapeDtypeStruct((2, 6, 6, 1), jnp.float32)
  before = nnx.as_pure(nnx.state(model))
  with pytest.warns(UserWarning) as record:
    layout = lp.derive_nnx_vector_axes(model, images, unknown='warn')
  # Nothing ran: the statistics and the RNG counts are as they were.
  jax.tree.map(np.testing.assert_array_equal, _key_data(before),
               _key_data(nnx.as_pure(nnx.state(model))))
  assert layout['stem']['kernel'] == (0, 1, 2)
  assert layout['blocks']['linear']['kernel'] == (1,)  # (layers, in, out).
  assert layout['head']['kernel'] == (0,)
  assert _reported(record) == _left_out(_nnx_params(model), layout) == {
      "['blocks']['linear']['bias']", "['blocks']['norm']['bias']",
      "['blocks']['norm']['scale']"}


def test_nnx_model_trains_under_nnx_optimizer():
  model = _NNXModel(nnx.Rngs(0, dropout=1))
  images = jax.random.normal(jax.random.key(2), (8, 6, 6, 1))
  targets = jax.random.normal(jax.random.key(3), (8, 4))
  with pytest.warns(UserWarning):
    layout = lp.derive_nnx_vector_axes(model, images, unknown='warn')
  initial = _nnx_params(model)
  statistics = nnx.as_pure(nnx.state(model, nnx.BatchStat))
  optimizer = nnx.Optimizer(
      model, lp.laperm(optax.adam(1e-2), SYNC_PERIOD, vector_axes=layout),
      wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(lambda m: jnp.mean(jnp.square(m(images) - targets)))(
        model)
    optimizer.update(model, grads)

  for _ in range(STEPS):
    step(model, optimizer)
  synced = lp.synchronize(_nnx_params(model), nnx.as_pure(optimizer.opt_state),
                          vector_axes=layout)
  _assert_trained_by_permutation(initial, synced, layout)
  # Train mode: BatchNorm's statistics moved (and Dropout drew its masks).
  assert not np.array_equal(
      nnx.as_pure(nnx.state(model, nnx.BatchStat))['norm']['mean'],
      statistics['norm']['mean'])


LAYOUTS_PAGE = pathlib.Path(__file__).resolve().parent.parent / 'docs' / (
    'layouts.rst')


def test_layouts_page_examples_run_as_written():
  text = LAYOUTS_PAGE.read_text()
  blocks = re.findall(r'\.\. code-block:: python\n\n(.*?)\n(?=\S)', text,
                      re.DOTALL)
  assert len(blocks) == 2  # Linen, then NNX, in one namespace.
  namespace = {}
  with pytest.warns(UserWarning) as record:
    for block in blocks:
      code = compile(textwrap.dedent(block), str(LAYOUTS_PAGE), 'exec')
      exec(code, namespace)  # pylint: disable=exec-used
  assert len(record) == 2
  assert _reported(record[:1]) == {
      "['query']['bias']", "['key']['bias']", "['value']['bias']"}
  assert _reported(record[1:]) == {
      "['blocks']['linear']['bias']", "['blocks']['norm']['bias']",
      "['blocks']['norm']['scale']"}
  layout = namespace['layout']
  assert layout['blocks']['linear']['kernel'] == (1,)
  assert layout['head']['kernel'] == (0,)
  model, optimizer = namespace['model'], namespace['optimizer']
  before = np.asarray(model.blocks.linear.kernel[...])

  @nnx.jit
  def step(model, optimizer, x):
    grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
    optimizer.update(model, grads)

  step(model, optimizer, namespace['x'])
  assert not np.array_equal(model.blocks.linear.kernel[...], before)


class _ScannedDense(nn.Module):
  """Three Dense layers stacked by ``nn.scan``: kernels (3, 8, 8)."""

  @nn.compact
  def __call__(self, x):
    layers = nn.scan(lambda module, carry, _: (nn.tanh(module(carry)), None),
                     variable_axes={'params': 0},
                     split_rngs={'params': True}, length=3)
    return layers(nn.Dense(8), x, None)[0]


def test_default_layout_mixes_scanned_layers():
  # What docs/layouts.rst says: under the default layout a stacked kernel's
  # vectors span every layer, so a sync moves weights between layers; the
  # derived layout, (1,), keeps each layer's fan-ins.
  module = _ScannedDense()
  x = jax.random.normal(jax.random.key(1), (4, 8))
  params = module.init(jax.random.key(0), x)['params']
  with pytest.warns(UserWarning, match=r"\['Dense_0'\]\['bias'\]"):
    layout = lp.derive_vector_axes(
        lambda p, x: module.apply({'params': p}, x), params, x,
        unknown='warn')
  assert layout['Dense_0']['kernel'] == (1,)
  by_default = _train_linen(module, params, x, {
      'Dense_0': {'kernel': None, 'bias': lp.NO_FAN_IN}})
  derived = _train_linen(module, params, x, layout)
  per_layer = lambda tree: lp.sort_vectors(tree['Dense_0']['kernel'],
                                           vector_axes=(1,))
  np.testing.assert_array_equal(per_layer(derived), per_layer(params))
  assert not np.array_equal(per_layer(by_default), per_layer(params))
