"""Convolutions for XLA's CPU backend: patches, products, batch slices.

XLA's CPU backend runs some of Conv7's convolutions slowly, above all the
input gradient of a strided one, which it computes as a convolution of the
input-dilated cotangent (on Conv7's 8x8 64->64 5x5 stride-2 layer, many
times the cost of its forward pass). Written as im2col, the ``kh * kw`` strided
slices of the padded input concatenated along the channels, then one
``dot_general`` with the kernel reshaped to ``(kh * kw * in, out)``, a
convolution differentiates into slices, pads and matrix products, which the
backend runs through its fast dot kernels.

- :func:`conv_as_patches` computes the whole convolution this way.
- :func:`conv_with_patches_input_gradient` keeps XLA's convolution for the
  value and the kernel's gradient (bit for bit) and takes only the input's
  gradient through patches.
- :func:`in_batch_chunks` runs a convolution on slices of a few examples,
  which the backend computes faster per example than whole batches on
  some of Conv7's layers.

Which layers gain is a matter of measurement, per layer and pass
(``benchmarks/conv_layers.py``). Where either differs from
``lax.conv_general_dilated``, it is only in the order in which float32
products are summed.

``PatchesConv`` and ``PatchesGradientConv`` are Flax's own ``nn.Conv`` with
these functions as its ``conv_general_dilated``: same parameters
(``kernel``, ``bias``), shapes, initializers and automatic names
(``Conv_0``, ...), hence the same initial weights bit for bit. Subclasses
would not do: Flax names a module after its class, and the name keys the
module's random initialization.
"""

import functools
from typing import Callable, Optional, Sequence, Union

from flax import linen as nn
import jax
from jax import lax
import jax.numpy as jnp

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


def _all_ones(values: Optional[Sequence[int]]) -> bool:
  return values is None or all(value == 1 for value in values)


def conv_as_patches(
    lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
    padding: Union[str, Sequence[tuple[int, int]]],
    lhs_dilation: Optional[Sequence[int]] = None,
    rhs_dilation: Optional[Sequence[int]] = None,
    dimension_numbers: Optional[lax.ConvDimensionNumbers] = None,
    feature_group_count: int = 1, precision: lax.PrecisionLike = None,
) -> jax.Array:
  """A 2-D convolution, NHWC by HWIO, computed as patches and one product.

  Takes the arguments ``nn.Conv`` gives ``lax.conv_general_dilated``, and
  computes the same convolution within float32 rounding (the products are
  summed in another order). Only what Conv7 needs is supported: NHWC inputs,
  HWIO kernels, any strides and padding, no dilation, one feature group;
  anything else raises rather than compute something else.

  Args:
    lhs: Images ``(batch, height, width, in)``.
    rhs: Kernel ``(kh, kw, in, out)``.
    window_strides: Strides along height and width.
    padding: ``'SAME'``, ``'VALID'`` or ``((low, high), (low, high))``.
    lhs_dilation: Must be ones (or None).
    rhs_dilation: Must be ones (or None).
    dimension_numbers: Must describe NHWC, HWIO, NHWC (``nn.Conv``'s).
    feature_group_count: Must be 1.
    precision: Passed to the ``dot_general``.

  Returns:
    The convolution ``(batch, out_height, out_width, out)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jax import lax
    >>> images = jnp.arange(2 * 6 * 6 * 3, dtype=jnp.float32).reshape(2, 6, 6, 3)
    >>> kernel = jnp.ones((3, 3, 3, 4)) / 27
    >>> y = conv_as_patches(images, kernel, (2, 2), 'SAME')
    >>> y.shape
    (2, 3, 3, 4)
    >>> reference = lax.conv_general_dilated(
    ...     images, kernel, (2, 2), 'SAME',
    ...     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    >>> bool(jnp.allclose(y, reference, rtol=1e-6))
    True
  """
  if lhs.ndim != 4 or rhs.ndim != 4:
    raise ValueError(f'conv_as_patches takes 2-D convolutions: lhs NHWC and '
                     f'rhs HWIO; got shapes {lhs.shape} and {rhs.shape}.')
  if dimension_numbers is not None and lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, dimension_numbers) != _NHWC:
    raise ValueError(f'conv_as_patches takes NHWC inputs and HWIO kernels; '
                     f'got dimension_numbers={dimension_numbers}.')
  if not (_all_ones(lhs_dilation) and _all_ones(rhs_dilation)):
    raise ValueError(f'conv_as_patches does not dilate; got lhs_dilation='
                     f'{lhs_dilation}, rhs_dilation={rhs_dilation}.')
  if feature_group_count != 1:
    raise ValueError(f'conv_as_patches takes one feature group; got '
                     f'feature_group_count={feature_group_count}.')
  batch, _, _, channels = lhs.shape
  kernel_height, kernel_width, kernel_channels, features = rhs.shape
  if kernel_channels != channels:
    raise ValueError(f'The kernel {rhs.shape} takes {kernel_channels} input '
                     f'channels; the images {lhs.shape} have {channels}.')
  stride_height, stride_width = window_strides
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2],
                                  window_strides, padding)
  padded = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
  out_height = (padded.shape[1] - kernel_height) // stride_height + 1
  out_width = (padded.shape[2] - kernel_width) // stride_width + 1
  if out_height < 1 or out_width < 1:
    raise ValueError(f'The kernel {rhs.shape[:2]} does not fit the padded '
                     f'images {padded.shape[1:3]}.')
  # Patch entries in the kernel's (row, column, channel) order, so that the
  # kernel flattens by a plain reshape.
  patches = jnp.concatenate([
      lax.slice(padded, (0, row, column, 0),
                (batch, row + (out_height - 1) * stride_height + 1,
                 column + (out_width - 1) * stride_width + 1, channels),
                (1, stride_height, stride_width, 1))
      for row in range(kernel_height) for column in range(kernel_width)],
                            axis=-1)
  return lax.dot_general(
      patches, rhs.reshape(kernel_height * kernel_width * channels, features),
      (((3,), (0,)), ((), ())), precision=precision)


def _xla_conv(lhs, rhs, window_strides, padding, precision):
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding,
                                  dimension_numbers=_NHWC,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_with_patches_input_gradient(lhs, rhs, window_strides, padding,
                                      precision):
  return _xla_conv(lhs, rhs, window_strides, padding, precision)


def _forward(lhs, rhs, window_strides, padding, precision):
  return (_xla_conv(lhs, rhs, window_strides, padding, precision),
          (lhs, rhs))


def _backward(window_strides, padding, precision, residuals, cotangent):
  lhs, rhs = residuals
  _, kernel_vjp = jax.vjp(
      lambda kernel: _xla_conv(lhs, kernel, window_strides, padding,
                               precision), rhs)
  _, input_vjp = jax.vjp(
      lambda images: conv_as_patches(images, rhs, window_strides, padding,
                                     precision=precision), lhs)
  return input_vjp(cotangent)[0], kernel_vjp(cotangent)[0]


_conv_with_patches_input_gradient.defvjp(_forward, _backward)


def conv_with_patches_input_gradient(
    lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
    padding: Union[str, Sequence[tuple[int, int]]],
    lhs_dilation: Optional[Sequence[int]] = None,
    rhs_dilation: Optional[Sequence[int]] = None,
    dimension_numbers: Optional[lax.ConvDimensionNumbers] = None,
    feature_group_count: int = 1, precision: lax.PrecisionLike = None,
) -> jax.Array:
  """XLA's convolution, differentiated to the input through patches.

  The value and the kernel's gradient are ``lax.conv_general_dilated``'s,
  bit for bit; the input's gradient is that of :func:`conv_as_patches`
  (one matrix product and the transposes of its slices), equal to XLA's
  within float32 rounding. XLA's CPU backend computes a strided
  convolution's input gradient as a convolution of the input-dilated
  cotangent, which it runs far slower than the forward pass.

  Args and Returns: as :func:`conv_as_patches`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jax import lax
    >>> images = jnp.linspace(-1, 1, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
    >>> kernel = jnp.linspace(-1, 1, 5 * 5 * 3 * 4).reshape(5, 5, 3, 4)
    >>> def conv(images, kernel):
    ...   return lax.conv_general_dilated(
    ...       images, kernel, (2, 2), 'SAME',
    ...       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    >>> y = conv_with_patches_input_gradient(images, kernel, (2, 2), 'SAME')
    >>> bool((y == conv(images, kernel)).all())
    True
    >>> grad = jax.grad(lambda x: conv_with_patches_input_gradient(
    ...     x, kernel, (2, 2), 'SAME').sum())(images)
    >>> reference = jax.grad(lambda x: conv(x, kernel).sum())(images)
    >>> bool(jnp.allclose(grad, reference, rtol=1e-5, atol=1e-5))
    True
  """
  # Validates the arguments as conv_as_patches does, and canonicalizes the
  # padding to pairs (hashable, for the custom VJP's static arguments).
  jax.eval_shape(functools.partial(
      conv_as_patches, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count), lhs, rhs)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2],
                                  window_strides, padding)
  return _conv_with_patches_input_gradient(
      lhs, rhs, tuple(window_strides),
      tuple(tuple(pair) for pair in padding), precision)


def in_batch_chunks(conv: Callable[..., jax.Array],
                    chunk: int) -> Callable[..., jax.Array]:
  """``conv`` applied to slices of ``chunk`` examples, outputs concatenated.

  XLA's CPU backend runs some convolutions several times faster per example
  on a few examples than on a batch of 50 or more (Conv7's 26x26x32 -> 32
  3x3 layer: 2.5x between 50 and 56 images; ``benchmarks/conv_layers.py``
  times slices of 10), so splitting the batch pays there. Each example's
  output is computed in its slice; the kernel's gradient is the sum of the
  slices' (the same products, summed in another order).

  Args:
    conv: A function with ``lax.conv_general_dilated``'s signature whose
      inputs have their batch on axis 0 (NHWC), e.g. ``nn.Conv``'s.
    chunk: Examples per slice; the last slice holds what remains.

  Returns:
    A function with ``conv``'s signature, for ``nn.Conv``'s
    ``conv_general_dilated``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jax import lax
    >>> images = jnp.linspace(-1, 1, 5 * 6 * 6 * 2).reshape(5, 6, 6, 2)
    >>> kernel = jnp.linspace(-1, 1, 3 * 3 * 2 * 4).reshape(3, 3, 2, 4)
    >>> conv = functools.partial(lax.conv_general_dilated,
    ...                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    >>> chunked = in_batch_chunks(conv, 2)
    >>> chunked(images, kernel, (1, 1), 'VALID').shape
    (5, 4, 4, 4)
  """
  if chunk < 1:
    raise ValueError(f'chunk must be at least 1; got {chunk}.')

  def chunked_conv(lhs, rhs, *args, **kwargs):
    dimension_numbers = kwargs.get('dimension_numbers')
    if dimension_numbers is not None and lax.conv_dimension_numbers(
        lhs.shape, rhs.shape, dimension_numbers).lhs_spec[0] != 0:
      raise ValueError('in_batch_chunks needs the batch on axis 0 of the '
                       f'input; got dimension_numbers={dimension_numbers}.')
    if lhs.shape[0] <= chunk:
      return conv(lhs, rhs, *args, **kwargs)
    return jnp.concatenate([
        conv(lhs[start:start + chunk], rhs, *args, **kwargs)
        for start in range(0, lhs.shape[0], chunk)])

  return chunked_conv


PatchesConv = functools.partial(nn.Conv, conv_general_dilated=conv_as_patches)
PatchesConv.__doc__ = """``nn.Conv`` computed by :func:`conv_as_patches`.

Takes ``nn.Conv``'s arguments and creates the same parameters with the same
initial values; only the computation of the convolution differs (within
float32 rounding). For NHWC inputs without dilation or feature groups.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from flax import linen as nn
  >>> images = jnp.ones((2, 8, 8, 3))
  >>> layer = PatchesConv(16, (5, 5), strides=2, padding='SAME')
  >>> variables = layer.init(jax.random.key(0), images)
  >>> reference = nn.Conv(16, (5, 5), strides=2, padding='SAME').init(
  ...     jax.random.key(0), images)
  >>> bool((variables['params']['kernel']
  ...       == reference['params']['kernel']).all())
  True
  >>> layer.apply(variables, images).shape
  (2, 4, 4, 16)
"""


PatchesGradientConv = functools.partial(
    nn.Conv, conv_general_dilated=conv_with_patches_input_gradient)
PatchesGradientConv.__doc__ = """``nn.Conv`` differentiated to its input through patches.

Takes ``nn.Conv``'s arguments and creates the same parameters with the same
initial values; its outputs and kernel gradients are ``nn.Conv``'s bit for
bit, its input gradient that of :func:`conv_as_patches` (see
:func:`conv_with_patches_input_gradient`). For NHWC inputs without dilation
or feature groups.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from flax import linen as nn
  >>> images = jnp.ones((2, 8, 8, 3))
  >>> layer = PatchesGradientConv(16, (5, 5), strides=2, padding='SAME')
  >>> variables = layer.init(jax.random.key(0), images)
  >>> reference = nn.Conv(16, (5, 5), strides=2, padding='SAME')
  >>> bool((layer.apply(variables, images)
  ...       == reference.apply(variables, images)).all())
  True
"""
