"""Convolutions through patches: same parameters as nn.Conv, same values.

``PatchesConv`` computes the convolution in another summation order, so its
values are checked against the float32 error bound of a sum of ``n``
products computed in two orders: each order is within ``n * eps * sum |x w|``
of the exact sum (the standard bound), so the two are within twice that.
``PatchesGradientConv`` promises XLA's values and kernel gradients bit for
bit, checked exactly, and its input gradient within the same bound.
"""

import doctest

from flax import linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import layers
from experiments import models

# Conv7's layers on 28x28 inputs: (map size, in, out, kernel, stride,
# padding); channels cut down where the layer's shape stays the same kind.
CONV7_LAYERS = [
    (28, 1, 8, 3, 1, 'VALID'),
    (24, 8, 8, 5, 2, 'SAME'),
    (10, 8, 16, 3, 1, 'VALID'),
    (8, 16, 16, 5, 2, 'SAME'),
    (4, 16, 32, 4, 1, 'VALID'),
]
OTHER_LAYERS = [
    (7, 3, 5, 3, 2, 'SAME'),  # Odd map, stride 2: uneven SAME padding.
    (9, 2, 3, 4, 3, ((1, 2), (0, 1))),  # Explicit padding, stride 3.
]
LAYER_SHAPES = CONV7_LAYERS + OTHER_LAYERS
PATCH_CONVS = {'patches': layers.PatchesConv,
               'patches_gradient': layers.PatchesGradientConv}


def _conv(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _normal(seed, shape):
  # NumPy draws: eager jax.random would compile a program per shape.
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _images_and_kernel(size, channels, features, kernel, batch=4):
  return (_normal(size, (batch, size, size, channels)),
          _normal(features, (kernel, kernel, channels, features)))


def _assert_within_two_orders(actual, expected, magnitudes, terms):
  bound = 2 * terms * np.finfo(np.float32).eps * np.asarray(magnitudes)
  error = np.abs(np.asarray(actual) - np.asarray(expected))
  assert (error <= bound).all(), float((error - bound).max())


@pytest.mark.parametrize('size,channels,features,kernel,stride,padding',
                         LAYER_SHAPES)
def test_conv_as_patches_is_the_convolution_within_rounding(
    size, channels, features, kernel, stride, padding):
  x, w = _images_and_kernel(size, channels, features, kernel)
  strides = (stride, stride)
  actual = jax.jit(layers.conv_as_patches, static_argnums=(2, 3))(
      x, w, strides, padding)
  expected = _conv(x, w, strides, padding)
  assert actual.shape == expected.shape
  _assert_within_two_orders(actual, expected,
                            _conv(jnp.abs(x), jnp.abs(w), strides, padding),
                            kernel * kernel * channels)


@pytest.mark.parametrize('size,channels,features,kernel,stride,padding',
                         LAYER_SHAPES)
def test_patches_gradient_keeps_xla_values_and_kernel_gradient(
    size, channels, features, kernel, stride, padding):
  x, w = _images_and_kernel(size, channels, features, kernel)
  strides = (stride, stride)
  cotangent = _normal(1, jax.eval_shape(
      lambda x, w: _conv(x, w, strides, padding), x, w).shape)

  def vjp(conv):
    y, pullback = jax.vjp(lambda x, w: conv(x, w, strides, padding), x, w)
    return (y, *pullback(cotangent))

  y, input_grad, kernel_grad = jax.jit(
      lambda: vjp(layers.conv_with_patches_input_gradient))()
  xla_y, xla_input_grad, xla_kernel_grad = jax.jit(lambda: vjp(_conv))()
  np.testing.assert_array_equal(y, xla_y)
  np.testing.assert_array_equal(kernel_grad, xla_kernel_grad)
  # The input gradient sums, per input pixel, out * (kernel positions that
  # reach it) products: at most kernel^2 * out.
  input_magnitudes = jax.vjp(
      lambda x: _conv(x, jnp.abs(w), strides, padding), x)[1](
          jnp.abs(cotangent))[0]
  _assert_within_two_orders(input_grad, xla_input_grad, input_magnitudes,
                            kernel * kernel * features)


def _conv_he(conv_class, *args, **kwargs):
  return conv_class(*args, kernel_init=models.he_uniform,
                    bias_init=models.he_uniform_bias, **kwargs)


class _TwoConvs(nn.Module):
  """Conv7's last two convs: the layers the patches pay on."""

  second: type = nn.Conv

  @nn.compact
  def __call__(self, x):
    x = nn.relu(_conv_he(nn.Conv, 16, (5, 5), strides=2, padding='SAME')(x))
    return _conv_he(self.second, 32, x.shape[1:3], padding='VALID')(x)


@pytest.mark.parametrize('name', PATCH_CONVS)
def test_same_parameters_names_and_initial_bits_as_nn_conv(name):
  images = jnp.ones((2, 8, 8, 16))
  # Jitted: eager init compiles every random op on its own.
  reference = jax.jit(_TwoConvs().init)(jax.random.key(3), images)
  variables = jax.jit(_TwoConvs(second=PATCH_CONVS[name]).init)(
      jax.random.key(3), images)
  assert list(variables['params']) == ['Conv_0', 'Conv_1']
  jax.tree.map(np.testing.assert_array_equal, variables, reference)


@pytest.mark.parametrize('name', PATCH_CONVS)
def test_layer_outputs_match_nn_conv(name):
  images = _normal(4, (3, 8, 8, 16))
  variables = jax.jit(_TwoConvs().init)(jax.random.key(3), images)
  expected = _TwoConvs().apply(variables, images)
  actual = _TwoConvs(second=PATCH_CONVS[name]).apply(variables, images)
  if name == 'patches_gradient':
    np.testing.assert_array_equal(actual, expected)
  else:
    # Values of order 1 from sums of 4*4*16 products of order 1.
    np.testing.assert_allclose(actual, expected, rtol=0,
                               atol=2 * 256 * np.finfo(np.float32).eps * 16)


@pytest.mark.parametrize('conv', [layers.conv_as_patches,
                                  layers.conv_with_patches_input_gradient])
@pytest.mark.parametrize('arguments,message', [
    ({'lhs_dilation': (2, 2)}, 'lhs_dilation'),
    ({'rhs_dilation': (1, 2)}, 'rhs_dilation'),
    ({'feature_group_count': 2}, 'feature_group_count'),
    ({'dimension_numbers': ('NCHW', 'OIHW', 'NCHW')}, 'dimension_numbers'),
])
def test_unsupported_arguments_raise(conv, arguments, message):
  x, w = _images_and_kernel(8, 4, 4, 3)
  with pytest.raises(ValueError, match=message):
    conv(x, w, (1, 1), 'SAME', **arguments)


@pytest.mark.parametrize('conv', [layers.conv_as_patches,
                                  layers.conv_with_patches_input_gradient])
def test_bad_shapes_raise(conv):
  x, w = _images_and_kernel(8, 4, 4, 3)
  with pytest.raises(ValueError, match='2-D convolutions'):
    conv(x[0], w, (1, 1), 'SAME')
  with pytest.raises(ValueError, match='input channels'):
    conv(x, w[:, :, :2], (1, 1), 'SAME')
  with pytest.raises(ValueError, match='does not fit'):
    conv(x[:, :2, :2], w, (1, 1), 'VALID')


@pytest.mark.parametrize('name', ['conv_as_patches',
                                  'conv_with_patches_input_gradient',
                                  'in_batch_chunks',
                                  'PatchesConv', 'PatchesGradientConv'])
def test_docstring_examples_run(name):
  # experiments/ is outside pytest's doctest paths, and doctest does not
  # look into functools.partial objects.
  test = doctest.DocTestParser().get_doctest(
      getattr(layers, name).__doc__, dict(vars(layers)), name, None, 0)
  assert test.examples
  runner = doctest.DocTestRunner()
  runner.run(test)
  assert runner.failures == 0


@pytest.mark.parametrize('setting', [{'patches_input_gradient': False},
                                     {'batch_chunk': 3}])
def test_conv7_fast_settings_keep_params_and_outputs(setting):
  images = _normal(5, (7, 28, 28, 1))

  def init_and_apply(model):
    variables = jax.jit(model.init)(jax.random.key(0), images[:1])
    return variables, jax.jit(model.apply)(variables, images)

  variables, logits = init_and_apply(models.Conv7())
  other_variables, other_logits = init_and_apply(models.Conv7(**setting))
  jax.tree.map(np.testing.assert_array_equal, variables, other_variables)
  if 'patches_input_gradient' in setting:  # The same forward convolutions.
    np.testing.assert_array_equal(logits, other_logits)
  else:
    np.testing.assert_allclose(logits, other_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('batch,chunk', [(6, 2), (7, 3), (2, 5)])
def test_in_batch_chunks_is_the_convolution_within_rounding(batch, chunk):
  x, w = _images_and_kernel(10, 3, 4, 3, batch=batch)
  cotangent = _normal(2, (batch, 8, 8, 4))
  chunked = layers.in_batch_chunks(_conv, chunk)

  def vjp(conv):
    y, pullback = jax.vjp(lambda x, w: conv(x, w, (1, 1), 'VALID'), x, w)
    return (y, *pullback(cotangent))

  y, input_grad, kernel_grad = jax.jit(lambda: vjp(chunked))()
  xla_y, xla_input_grad, xla_kernel_grad = jax.jit(lambda: vjp(_conv))()
  magnitudes = _conv(np.abs(x), np.abs(w), (1, 1), 'VALID')
  _assert_within_two_orders(y, xla_y, magnitudes, 3 * 3 * 3)
  _assert_within_two_orders(input_grad, xla_input_grad, jax.vjp(
      lambda x: _conv(x, jnp.abs(w), (1, 1), 'VALID'), x)[1](
          jnp.abs(cotangent))[0], 3 * 3 * 4)
  # The kernel gradient sums over the batch and the map: 8 * 8 * batch terms.
  kernel_magnitudes = jax.vjp(
      lambda w: _conv(np.abs(x), w, (1, 1), 'VALID'), w)[1](
          jnp.abs(cotangent))[0]
  _assert_within_two_orders(kernel_grad, xla_kernel_grad, kernel_magnitudes,
                            8 * 8 * batch)
  # Each slice is its own convolution in the compiled program.
  text = jax.jit(lambda x, w: chunked(x, w, (1, 1), 'VALID')).lower(
      x, w).as_text()
  assert text.count('stablehlo.convolution') == -(-batch // chunk)


def test_in_batch_chunks_refuses_what_it_cannot_split():
  with pytest.raises(ValueError, match='chunk must be at least 1'):
    layers.in_batch_chunks(_conv, 0)
  x, w = _images_and_kernel(6, 2, 3, 3, batch=4)
  conv = layers.in_batch_chunks(lax.conv_general_dilated, 2)
  with pytest.raises(ValueError, match='batch on axis 0'):
    conv(x.transpose(1, 0, 2, 3), w, (1, 1), 'VALID',
         dimension_numbers=('HNWC', 'HWIO', 'NHWC'))
