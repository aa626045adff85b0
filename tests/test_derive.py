"""Tests for deriving the weight-vector layout from the forward pass.

Every model here is traced abstractly: params come from ``jax.eval_shape``
and inputs are ``jax.ShapeDtypeStruct``, as a user with a large model would
call it, except in the test that trains.
"""

import functools
import math
import re

import flax.linen as nn
from flax import nnx
import hypothesis
from hypothesis import strategies as st
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

import laperm_jax as lp

NO_FAN_IN = lp.NO_FAN_IN


def _linen(module, *input_shapes, **kwargs):
  """``(fn, abstract params, abstract inputs)`` of a Linen module."""
  inputs = [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in input_shapes]
  params = jax.eval_shape(
      lambda *x: module.init(jax.random.key(0), *x, **kwargs), *inputs)
  return (lambda p, *x: module.apply({'params': p}, *x, **kwargs),
          params['params'], inputs)


def _derive(module, *input_shapes):
  fn, params, inputs = _linen(module, *input_shapes)
  return lp.derive_vector_axes(fn, params, *inputs)


def _reported(error: pytest.ExceptionInfo) -> set[str]:
  """The leaf paths that a derive_vector_axes error lists."""
  return _listed(str(error.value))


def _listed(message: str) -> set[str]:
  """The leaf paths that a derive_vector_axes error or warning lists."""
  return set(re.findall(r'^  (\S+) \(shape', message, re.MULTILINE))


def _derive_warned(fn, params, *inputs, **kwargs):
  """``derive_vector_axes(..., unknown='warn')``; its layout and report."""
  with pytest.warns(UserWarning) as record:
    derived = lp.derive_vector_axes(fn, params, *inputs, unknown='warn',
                                    **kwargs)
  assert len(record) == 1  # Once, listing every leaf.
  return derived, _listed(str(record[0].message))


def test_dense():
  assert _derive(nn.Dense(4), (2, 3)) == {'kernel': (0,), 'bias': NO_FAN_IN}


@pytest.mark.parametrize('kernel_size, expected', [
    ((3,), (0, 1)),
    ((3, 3), (0, 1, 2)),
    ((2, 3, 3), (0, 1, 2, 3)),
])
def test_conv(kernel_size, expected):
  input_shape = (2,) + (6,) * len(kernel_size) + (4,)
  assert _derive(nn.Conv(8, kernel_size), input_shape) == {
      'kernel': expected, 'bias': NO_FAN_IN}


@pytest.mark.parametrize('groups', [2, 4])  # Grouped, then depthwise.
def test_grouped_conv_sums_over_its_group(groups):
  module = nn.Conv(8, (3, 3), feature_group_count=groups)
  fn, params, inputs = _linen(module, (2, 6, 6, 4))
  assert params['kernel'].shape == (3, 3, 4 // groups, 8)
  derived = lp.derive_vector_axes(fn, params, *inputs)
  assert derived['kernel'] == (0, 1, 2)


@pytest.mark.parametrize('transpose_kernel, expected', [
    (False, (0, 1, 2)),  # Kernel (h, w, in, out).
    (True, (0, 1, 3)),  # Kernel (h, w, out, in), flipped in the program.
])
def test_conv_transpose(transpose_kernel, expected):
  module = nn.ConvTranspose(8, (3, 3), transpose_kernel=transpose_kernel)
  assert _derive(module, (2, 6, 6, 4)) == {'kernel': expected,
                                           'bias': NO_FAN_IN}


def test_dense_general_with_several_input_axes():
  module = nn.DenseGeneral(features=(4, 8), axis=(-2, -1), use_bias=False)
  fn, params, inputs = _linen(module, (2, 3, 5))
  assert params['kernel'].shape == (3, 5, 4, 8)
  assert lp.derive_vector_axes(fn, params, *inputs) == {'kernel': (0, 1)}


def test_dense_general_with_several_output_axes():
  module = nn.DenseGeneral(features=(3, 5))
  fn, params, inputs = _linen(module, (2, 7))
  assert params['kernel'].shape == (7, 3, 5)
  # The (3, 5) bias is only added: it has no fan-in to read.
  with pytest.raises(ValueError, match=r"'bias'.*read by add") as error:
    lp.derive_vector_axes(fn, params, *inputs)
  assert _reported(error) == {"['bias']"}
  assert _derive_warned(fn, params, *inputs) == (
      {'kernel': (0,), 'bias': NO_FAN_IN}, {"['bias']"})


def test_same_shape_different_layouts():
  """The point of deriving: one shape, two layouts, told by the program."""
  conv = nn.Conv(4, (3,), use_bias=False)
  projection = nn.DenseGeneral(features=(4, 4), use_bias=False)
  conv_fn, conv_params, conv_inputs = _linen(conv, (2, 9, 4))
  dense_fn, dense_params, dense_inputs = _linen(projection, (2, 3))
  assert conv_params['kernel'].shape == dense_params['kernel'].shape == (
      3, 4, 4)
  assert lp.derive_vector_axes(conv_fn, conv_params, *conv_inputs) == {
      'kernel': (0, 1)}
  assert lp.derive_vector_axes(dense_fn, dense_params, *dense_inputs) == {
      'kernel': (0,)}


_ATTENTION = {'query': (0,), 'key': (0,), 'value': (0,), 'out': (0, 1)}


def _kernels(derived):
  return {name: layer['kernel'] for name, layer in derived.items()}


def test_linen_attention():
  module = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=16)
  fn, params, inputs = _linen(module, (2, 5, 16))
  assert params['query']['kernel'].shape == (16, 2, 8)
  assert params['out']['kernel'].shape == (2, 8, 16)
  derived, reported = _derive_warned(fn, params, *inputs)
  assert _kernels(derived) == _ATTENTION
  assert all(layer['bias'] is NO_FAN_IN for layer in derived.values())
  # The (heads, head_dim) biases are reported, not guessed; the 1-D out
  # bias gets NO_FAN_IN without a report.
  assert reported == {
      "['query']['bias']", "['key']['bias']", "['value']['bias']"}
  with pytest.raises(ValueError) as error:
    lp.derive_vector_axes(fn, params, *inputs)
  assert _reported(error) == reported


def _nnx_derive(model, input_shape):
  return lp.derive_nnx_vector_axes(
      model, jax.ShapeDtypeStruct(input_shape, jnp.float32), unknown='warn')


def test_nnx_attention():
  model = nnx.MultiHeadAttention(num_heads=2, in_features=16, qkv_features=16,
                                 decode=False, rngs=nnx.Rngs(0))
  with pytest.warns(UserWarning, match=r"\['query'\]\['bias'\]"):
    derived = _nnx_derive(model, (2, 5, 16))
  assert _kernels(derived) == _ATTENTION
  assert derived['query']['bias'] is NO_FAN_IN


def test_nnx_state_with_variables():
  """With the state of ``nnx.split(model)``, the result keeps its Variables."""
  model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  derived = lp.derive_vector_axes(
      lambda s, x: nnx.merge(graphdef, s)(x), state,
      jax.ShapeDtypeStruct((2, 3), jnp.float32))
  assert isinstance(derived['kernel'], nnx.Param)
  assert derived['kernel'].get_value() == (0,)
  assert derived['bias'].get_value() is NO_FAN_IN


@pytest.mark.parametrize('model, input_shape, expected', [
    (nnx.Linear(3, 4, rngs=nnx.Rngs(0)), (2, 3), (0,)),
    (nnx.Conv(3, 8, kernel_size=(3, 3), rngs=nnx.Rngs(0)), (2, 6, 6, 3),
     (0, 1, 2)),
    (nnx.Conv(4, 8, kernel_size=(3,), feature_group_count=4,
              rngs=nnx.Rngs(0)), (2, 6, 4), (0, 1)),
])
def test_nnx_linear_and_conv(model, input_shape, expected):
  assert _nnx_derive(model, input_shape) == {'kernel': expected,
                                             'bias': NO_FAN_IN}


class _Embedder(nn.Module):

  @nn.compact
  def __call__(self, tokens):
    return nn.Dense(4)(nn.Embed(10, 8)(tokens))


def test_embedding_is_reported():
  tokens = jax.ShapeDtypeStruct((2, 5), jnp.int32)
  module = _Embedder()
  params = jax.eval_shape(module.init, jax.random.key(0), tokens)['params']
  fn = lambda p, t: module.apply({'params': p}, t)
  with pytest.raises(ValueError, match=r"\['Embed_0'\]\['embedding'\] "
                     r'\(shape \(10, 8\)\): read by gather') as error:
    lp.derive_vector_axes(fn, params, tokens)
  assert _reported(error) == {"['Embed_0']['embedding']"}
  derived, reported = _derive_warned(fn, params, tokens)
  assert reported == {"['Embed_0']['embedding']"}
  assert derived == {'Embed_0': {'embedding': NO_FAN_IN},
                     'Dense_0': {'kernel': (0,), 'bias': NO_FAN_IN}}


class _Logits(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Embed(10, 8).attend(x)


def test_embedding_as_output_layer():
  # `attend` is x @ embedding.T: every vocabulary entry's row is a vector.
  assert _derive(_Logits(), (2, 8)) == {'Embed_0': {'embedding': (1,)}}


class _Normed(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.LayerNorm()(nn.Dense(4)(x))


def test_bias_and_norm_scale_have_no_fan_in_and_no_report():
  derived = _derive(_Normed(), (2, 3))
  assert derived == {'Dense_0': {'kernel': (0,), 'bias': NO_FAN_IN},
                     'LayerNorm_0': {'scale': NO_FAN_IN, 'bias': NO_FAN_IN}}


class _ViT(nn.Module):
  """A small Vision Transformer: patches, class token, pre-norm blocks."""

  @nn.compact
  def __call__(self, images, *, deterministic):
    x = nn.Conv(16, (4, 4), strides=(4, 4), name='patches')(images)
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height * width, channels)
    cls = self.param('cls', nn.initializers.zeros, (1, 1, channels))
    x = jnp.concatenate([jnp.tile(cls, (batch, 1, 1)), x], axis=1)
    x = x + self.param('pos_embedding', nn.initializers.normal(0.02),
                       (1, height * width + 1, channels))
    for block in range(2):
      y = nn.LayerNorm(name=f'norm_{block}_0')(x)
      x = x + nn.MultiHeadDotProductAttention(
          num_heads=2, dropout_rate=0.1, deterministic=deterministic,
          name=f'attention_{block}')(y, y)
      y = nn.LayerNorm(name=f'norm_{block}_1')(x)
      y = nn.gelu(nn.Dense(32, name=f'mlp_{block}_0')(y))
      y = nn.Dropout(0.1)(y, deterministic=deterministic)
      x = x + nn.Dense(channels, name=f'mlp_{block}_1')(y)
    return nn.Dense(10, name='head')(nn.LayerNorm(name='norm')(x[:, 0]))


def _kernel_layouts(tree, leaf_name='kernel', prefix=''):
  """``{'module/submodule': layout}`` of every ``leaf_name`` in ``tree``."""
  found = {}
  for name, node in tree.items():
    if name == leaf_name:
      found[prefix[:-1]] = node
    elif isinstance(node, dict):
      found.update(_kernel_layouts(node, leaf_name, f'{prefix}{name}/'))
  return found


def test_vision_transformer():
  images = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  module = _ViT()
  params = jax.eval_shape(
      lambda x: module.init(jax.random.key(0), x, deterministic=True),
      images)['params']
  fn = lambda p, x, **kwargs: module.apply({'params': p}, x, **kwargs)
  # `deterministic` is a Python bool: passed as is, not traced.
  with pytest.raises(ValueError) as error:
    lp.derive_vector_axes(fn, params, images, deterministic=True)
  biases = {f"['attention_{block}']['{name}']['bias']"
            for block in range(2) for name in ('query', 'key', 'value')}
  assert _reported(error) == {"['cls']", "['pos_embedding']"} | biases
  assert "['cls'] (shape (1, 1, 16)): read by tile" in str(error.value)
  assert "['pos_embedding'] (shape (1, 5, 16)): read by add" in str(
      error.value)

  derived, reported = _derive_warned(fn, params, images, deterministic=True)
  assert reported == _reported(error)
  expected = {'patches': (0, 1, 2), 'head': (0,)}
  for block in range(2):
    expected[f'mlp_{block}_0'] = expected[f'mlp_{block}_1'] = (0,)
    for name, axes in _ATTENTION.items():
      expected[f'attention_{block}/{name}'] = axes
  assert _kernel_layouts(derived) == expected
  assert derived['cls'] is NO_FAN_IN and derived['pos_embedding'] is NO_FAN_IN
  for name in ('norm', 'norm_0_0', 'norm_1_1'):
    assert derived[name] == {'scale': NO_FAN_IN, 'bias': NO_FAN_IN}


class _Weights(nn.Module):
  """One raw parameter, read by ``forward(x, w)``."""

  shape: tuple[int, ...]
  forward: object

  @nn.compact
  def __call__(self, x):
    w = self.param('w', nn.initializers.lecun_normal(), self.shape)
    return self.forward(x, w)


def test_two_products_with_different_fan_ins_are_reported():
  module = _Weights((4, 4), lambda x, w: x @ w + x @ w.T)
  with pytest.raises(ValueError, match=r"\['w'\] \(shape \(4, 4\)\): read "
                     r'with different fan-ins: dot_general summing over axes '
                     r'\[0\] and dot_general summing over axes \[1\]'):
    _derive(module, (2, 4))


@jax.custom_jvp
def _matmul_jvp(x, w):
  return x @ w


_matmul_jvp.defjvp(lambda primals, tangents: (
    _matmul_jvp(*primals),
    tangents[0] @ primals[1] + primals[0] @ tangents[1]))


@jax.custom_vjp
def _matmul_vjp(x, w):
  return x @ w


_matmul_vjp.defvjp(lambda x, w: (x @ w, (x, w)),
                   lambda res, g: (g @ res[1].T, res[0].T @ g))


@pytest.mark.parametrize('forward', [
    lambda x, w: x @ w + jnp.tanh(x) @ w,  # Tied weights, same fan-in.
    lambda x, w: jax.jit(lambda a, b: a @ b)(x, w),
    lambda x, w: jax.checkpoint(lambda a, b: a @ b)(x, w),
    lambda x, w: x @ jnp.asarray(w, jnp.bfloat16).T.T.astype(jnp.float32),
    lambda x, w: x @ w[None, :, :][0],
    lambda x, w: lax.cond(x.sum() > 0, lambda: x @ w, lambda: -(x @ w)),
    # A fused projection split along its output axis, as fused QKV kernels.
    lambda x, w: sum(x @ part for part in jnp.split(w, 2, axis=1)),
    # `w` read inside a loop body, as a constant.
    lambda x, w: lax.scan(lambda c, _: (c + (c @ w)[:, :4], None), x,
                          length=2)[0],
    lambda x, w: lax.while_loop(lambda c: c.sum() < 9.0,
                                lambda c: c + (c @ w)[:, :4], x),
    # Concatenated or padded along the output axis, which no product sums.
    lambda x, w: x @ jnp.concatenate([w, jnp.ones((4, 2))], axis=1),
    lambda x, w: x @ jnp.concatenate([w[:, :3], w[:, 3:]], axis=1),
    lambda x, w: x @ jnp.pad(w, ((0, 0), (1, 2))),
    lambda x, w: jnp.einsum('bi,kio->bko', x, jnp.stack([w, jnp.ones((4, 6))])),
    _matmul_jvp,
    _matmul_vjp,
], ids=['tied', 'jit', 'remat', 'cast-transpose', 'index', 'cond', 'split',
        'scan', 'while', 'concatenate', 'split-concatenate', 'pad', 'stack',
        'custom_jvp', 'custom_vjp'])
def test_followed_through(forward):
  assert _derive(_Weights((4, 6), forward), (2, 4)) == {'w': (0,)}


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(st.data())
def test_vectors_are_what_each_output_depends_on(data):
  """Against the Jacobian: output unit ``o`` reads exactly one vector."""
  rank = data.draw(st.integers(2, 4))
  shape = tuple(data.draw(st.lists(st.integers(2, 3), min_size=rank,
                                   max_size=rank)))
  summed = data.draw(st.sets(st.integers(0, rank - 1), min_size=1,
                             max_size=rank - 1))
  order = data.draw(st.permutations(range(rank)))
  summed_first = ([axis for axis in order if axis in summed]
                  + [axis for axis in order if axis not in summed])
  fan_in_size = math.prod(shape[axis] for axis in summed)
  reshape = data.draw(st.booleans())

  def forward(w, x):
    w = jnp.transpose(w, summed_first)
    if reshape:  # Merged into one (fan_in_size, num_outputs) matrix.
      return x @ w.reshape(fan_in_size, -1)
    return lax.dot_general(
        x.reshape((x.shape[0],) + w.shape[:len(summed)]), w,
        ((tuple(range(1, len(summed) + 1)), tuple(range(len(summed)))),
         ((), ())))

  w = jax.random.normal(jax.random.key(0), shape)
  x = jax.random.normal(jax.random.key(1), (1, fan_in_size))
  derived = lp.derive_vector_axes(forward, w, x)
  assert derived == tuple(sorted(summed))
  others = [axis for axis in range(rank) if axis not in summed]
  vector_of = np.ravel_multi_index(
      np.indices(shape)[others], [shape[axis] for axis in others])
  jacobian = np.asarray(jax.jit(jax.jacobian(forward))(w, x)).reshape(
      -1, *shape)
  read = [vector_of[row != 0] for row in jacobian]  # Per output unit.
  assert all(len(ids) == fan_in_size and len(set(ids)) == 1 for ids in read)
  assert len({ids[0] for ids in read}) == len(read)


def test_reshaped_kernel():
  # A (2, 3, 5) kernel flattened to (6, 5): the fan-in is both axes.
  module = _Weights((2, 3, 5), lambda x, w: x @ w.reshape(6, 5))
  assert _derive(module, (2, 6)) == {'w': (0, 1)}
  # Unit axes dropped by a reshape join the fan-in, as in a 1x1 conv.
  module = _Weights((1, 1, 3, 5), lambda x, w: x @ w.reshape(3, 5))
  assert _derive(module, (2, 3)) == {'w': (0, 1, 2)}


@pytest.mark.parametrize('forward, problem', [
    # (6, 5) read as (3, 2, 5) and summed over one half of axis 0 only.
    (lambda x, w: jnp.einsum('bi,ijo->bjo', x[:, :3], w.reshape(3, 2, 5)),
     'sums over part of its axes [0]'),
    (lambda x, w: x[:, :3] @ w[:3], 'sums over a slice of its axes [0]'),
    (lambda x, w: x @ (2 * w), 'read by mul'),
    (lambda x, w: (x @ w, w), 'returned by fn'),
    (lambda x, w: x, 'not read by fn'),
    (lambda x, w: jnp.einsum('bi,jo->bijo', x, w), 'sums over none'),
    (lambda x, w: lax.scan(lambda c, _: (c + w, None), w, length=2)[0],
     'carried by a scan'),
    (lambda x, w: lax.conv(w[None, None], x[None, None], (1, 1), 'SAME'),
     'the input of conv_general_dilated'),
    (lambda x, w: lax.cond(x.sum() > 0, lambda: x @ w,
                           lambda: x[:, :5] @ w.T[:, :5]),
     'different fan-ins'),
    # One output unit sums over more than the leaf: its fan-in is not a
    # vector of the leaf.
    (lambda x, w: jnp.concatenate([x, x], axis=1) @ jnp.concatenate([w, w]),
     'sums over it concatenated or padded'),
    (lambda x, w: jnp.pad(x, ((0, 0), (0, 1))) @ jnp.pad(w, ((0, 1), (0, 0))),
     'sums over it concatenated or padded'),
    (lambda x, w: jnp.einsum('bki,kio->bo', jnp.stack([x, x], axis=1),
                             jnp.stack([w, w])),
     'sums over it concatenated or padded'),
])
def test_problems_are_reported(forward, problem):
  module = _Weights((6, 5), forward)
  with pytest.raises(ValueError, match=re.escape(problem)):
    _derive(module, (2, 6))
  fn, params, inputs = _linen(module, (2, 6))
  assert _derive_warned(fn, params, *inputs) == ({'w': NO_FAN_IN}, {"['w']"})


def test_padding_cut_is_a_slice():
  # Negative padding cuts the leaf: summing over the rest is a slice.
  module = _Weights((6, 5), lambda x, w: x[:, :4] @ lax.pad(
      w, 0.0, ((0, -2, 0), (0, 0, 0))))
  with pytest.raises(ValueError, match=re.escape('a slice of its axes [0]')):
    _derive(module, (2, 6))
  module = _Weights((6, 5), lambda x, w: x @ lax.pad(
      w, 0.0, ((0, 0, 0), (-1, 2, 1))))
  assert _derive(module, (2, 6)) == {'w': (0,)}


class _Recurrent(nn.Module):
  """A bidirectional RNN of ``cell`` and a Dense head."""

  cell: type

  @nn.compact
  def __call__(self, x):
    x = nn.Bidirectional(nn.RNN(self.cell(6)), nn.RNN(self.cell(6)))(x)
    return nn.Dense(3, name='head')(x)


@pytest.mark.parametrize('cell', [nn.OptimizedLSTMCell, nn.LSTMCell,
                                  nn.GRUCell])
def test_recurrent_cells_derive_completely(cell):
  # OptimizedLSTMCell concatenates its 4 gates' kernels along the output
  # axis before one product: each kernel is still read with fan-in axis 0.
  fn, params, inputs = _linen(_Recurrent(cell), (2, 5, 4))
  derived = lp.derive_vector_axes(fn, params, *inputs)  # Raises if unread.
  kernels = _kernel_layouts(derived)
  # Per direction: 8 kernels in an LSTM cell, 6 in a GRU cell; and the head.
  assert len(kernels) == 2 * (6 if cell is nn.GRUCell else 8) + 1
  assert set(kernels.values()) == {(0,)}
  biases = _kernel_layouts(derived, 'bias')
  assert biases and set(biases.values()) == {NO_FAN_IN}


@pytest.mark.parametrize('forward', [
    lambda x, ws: lax.fori_loop(0, 3, lambda i, c: c @ ws[i], x),
    lambda x, ws: functools.reduce(jnp.matmul, jnp.unstack(ws), x),
    lambda x, ws: x @ ws[0] @ ws[1] @ ws[2],
], ids=['fori_loop', 'unstack', 'index'])
def test_stacked_weights_indexed(forward):
  # One (4, 4) kernel per position along axis 0: that axis indexes vectors.
  assert _derive(_Weights((3, 4, 4), forward), (2, 4)) == {'w': (1,)}


class _Stack(nn.Module):
  """Layers stacked by ``nn.scan``: params gain a leading layer axis."""

  @nn.compact
  def __call__(self, x):
    layer = nn.scan(lambda module, carry, _: (module(carry), None),
                    variable_axes={'params': 0}, split_rngs={'params': True},
                    length=3)
    return layer(nn.Dense(4), x, None)[0]


def test_scanned_layers():
  fn, params, inputs = _linen(_Stack(), (2, 4))
  assert params['Dense_0']['kernel'].shape == (3, 4, 4)
  # The layer axis tells weight vectors apart. The stacked biases, (3, 4),
  # are only added: reported like any leaf of rank 2 without a fan-in.
  with pytest.raises(ValueError) as error:
    lp.derive_vector_axes(fn, params, *inputs)
  assert _reported(error) == {"['Dense_0']['bias']"}
  assert _derive_warned(fn, params, *inputs) == (
      {'Dense_0': {'kernel': (1,), 'bias': NO_FAN_IN}},
      {"['Dense_0']['bias']"})


def test_bad_arguments():
  fn, params, inputs = _linen(nn.Dense(4), (2, 3))
  with pytest.raises(ValueError, match="unknown must be 'error' or 'warn'"):
    lp.derive_vector_axes(fn, params, *inputs, unknown='ignore')
  with pytest.raises(ValueError, match=r"leaf \['kernel'\] is a str"):
    lp.derive_vector_axes(fn, {'kernel': 'w', 'bias': params['bias']},
                          *inputs)
