"""The networks of the paper as Flax Linen modules, and their layer names.

Every module takes NHWC images (the language model: byte sequences) and a
``train`` flag (dropout, BatchNorm), and names its output layer ``head``. Layer sizes follow the paper (Sections 5.1
to 5.5, Appendix A.3); input sizes adapt to the dataset (28x28x1 MNIST,
32x32x3 CIFAR-10, 8x8x1 digits), as noted per model.

This module owns the naming rules; the rest of ``experiments`` asks it which
leaves are kernels (:func:`kernel_paths`, input layer first and ``head``
last; :func:`hidden_kernel_mask` for the L2 penalty, which the paper puts on
hidden layers only) and which are BatchNorm's (:func:`batch_norm_mask`).
"""

import functools
import re
from typing import Any, Sequence

from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from experiments import layers

# The conv nets (Section 5) initialize kernels and biases He-uniform. The A.3
# MLP uses "uniform random weights as introduced in [14]" (He et al. 2015),
# the same He-uniform kernels, with zero biases.
he_uniform = nn.initializers.he_uniform()


def he_uniform_bias(key: jax.Array, shape: Sequence[int],
                    dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """He-uniform for a bias, as Keras computes it (fan-in = its length).

  ``jax.nn.initializers.he_uniform`` needs a fan-in axis, which a 1-D bias
  lacks; the authors' Keras code uses the bias' own length.
  """
  limit = jnp.sqrt(6.0 / shape[-1])
  return jax.random.uniform(key, shape, dtype, -limit, limit)


ConvHe = functools.partial(nn.Conv, kernel_init=he_uniform,
                           bias_init=he_uniform_bias)
DenseHe = functools.partial(nn.Dense, kernel_init=he_uniform,
                            bias_init=he_uniform_bias)


def _flatten(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1)


class MLP(nn.Module):
  """The A.3 network: 784-100-100-10 ReLU, with optional dropout.

  Attributes:
    hidden: Units of the hidden layers.
    num_classes: Units of the output layer.
    dropout_rates: Dropout after each hidden layer (the paper's 0.4, 0.3), or
      zeros for none.
  """

  hidden: Sequence[int] = (100, 100)
  num_classes: int = 10
  dropout_rates: Sequence[float] = (0.0, 0.0)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = _flatten(x)
    for i, (units, rate) in enumerate(zip(self.hidden, self.dropout_rates)):
      x = nn.relu(nn.Dense(units, kernel_init=he_uniform,
                           name=f'hidden{i + 1}')(x))
      x = nn.Dropout(rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=he_uniform, name='head')(x)


class BiasFreeMLP(nn.Module):
  """F1 and F2 of Section 5.5: dense ReLU layers without biases.

  Their weights are set to 0 or one shared value before training, so the
  initializer here only fixes shapes.

  Attributes:
    hidden: Units of the hidden layers: ``()`` for F1, ``(128, 64)`` for F2.
    num_classes: Units of the output layer.
  """

  hidden: Sequence[int] = ()
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No dropout or BatchNorm.
    x = _flatten(x)
    for i, units in enumerate(self.hidden):
      x = nn.relu(nn.Dense(units, use_bias=False, kernel_init=he_uniform,
                           name=f'hidden{i + 1}')(x))
    return nn.Dense(self.num_classes, use_bias=False, kernel_init=he_uniform,
                    name='head')(x)


class Conv7(nn.Module):
  """The MNIST network of Section 5.1 (no BatchNorm, dropout 0.4).

  conv32x3, conv32x3, conv32x5/s2, drop, conv64x3, conv64x3, conv64x5/s2,
  drop, conv128 over the remaining map, flatten, drop, dense10. The 3x3 convs
  pad 'VALID' as in the paper on 28x28 inputs; on smaller inputs (8x8 digits)
  they pad 'SAME' so the map does not vanish. The last conv covers the whole
  remaining map (4x4 on MNIST), acting as a dense layer over it.

  Attributes:
    num_classes: Units of the output layer.
    dropout_rate: Dropout after each block and before the output layer.
    patches_input_gradient: Whether the second strided conv and the last
      conv compute their input gradients through patches (faster on CPU;
      the same parameters, outputs and kernel gradients, input gradients
      within rounding). False gives XLA's convolution everywhere. This is
      the one default: ``configs/base.py`` takes it from here.
    batch_chunk: When positive, ``Conv_1`` to ``Conv_4`` compute on slices
      of this many examples (``layers.in_batch_chunks``): XLA's CPU backend
      runs them faster per example on a few (the same parameters; outputs
      and gradients within rounding). 0 computes whole batches.
  """

  num_classes: int = 10
  dropout_rate: float = 0.4
  patches_input_gradient: bool = True
  batch_chunk: int = 0

  def _conv(self, index: int, *args, **kwargs) -> nn.Conv:
    """``Conv_{index}``: He-uniform; computed as measured fastest on CPU."""
    conv = (layers.conv_with_patches_input_gradient
            if self.patches_input_gradient and index in (5, 6)
            else jax.lax.conv_general_dilated)
    if self.batch_chunk and index in (1, 2, 3, 4):
      conv = layers.in_batch_chunks(conv, self.batch_chunk)
    return ConvHe(*args, conv_general_dilated=conv, **kwargs)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    padding = 'VALID' if x.shape[1] >= 28 else 'SAME'
    for block, filters in enumerate((32, 64)):
      x = nn.relu(self._conv(3 * block, filters, (3, 3), padding=padding)(x))
      x = nn.relu(self._conv(3 * block + 1, filters, (3, 3),
                             padding=padding)(x))
      x = nn.relu(self._conv(3 * block + 2, filters, (5, 5), strides=2,
                             padding='SAME')(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.relu(self._conv(6, 128, x.shape[1:3], padding='VALID')(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(_flatten(x))
    return DenseHe(self.num_classes, name='head')(x)


class VGG(nn.Module):
  """Conv2, Conv4 and Conv13 of Section 5.2: conv-BN-ReLU stages, max pools.

  Each stage is a list of 3x3 'SAME' convs with BatchNorm, then a 2x2 max
  pool and dropout; then dense ReLU layers with dropout, and the output
  layer. A pool is skipped once the map is 1x1 (Conv13 pools five times,
  which 8x8 digits cannot take).

  Attributes:
    stages: Filters of each conv, per stage.
    dense: Units of the hidden dense layers.
    num_classes: Units of the output layer.
    conv_dropout: Dropout after each stage's pool.
    dense_dropout: Dropout after each hidden dense layer.
  """

  stages: Sequence[Sequence[int]]
  dense: Sequence[int]
  num_classes: int = 10
  conv_dropout: float = 0.25
  dense_dropout: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for stage in self.stages:
      for filters in stage:
        x = ConvHe(filters, (3, 3), padding='SAME')(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
      if x.shape[1] > 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = nn.Dropout(self.conv_dropout, deterministic=not train)(x)
    x = _flatten(x)
    for units in self.dense:
      x = nn.relu(DenseHe(units)(x))
      x = nn.Dropout(self.dense_dropout, deterministic=not train)(x)
    return DenseHe(self.num_classes, name='head')(x)


class ResidualBlock(nn.Module):
  """ResNet v1 basic block: conv-BN-ReLU, conv-BN, add, ReLU.

  Attributes:
    filters: Output channels.
    strides: Stride of the first conv (2 at the start of a stage).
  """

  filters: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = functools.partial(nn.BatchNorm, use_running_average=not train)
    y = ConvHe(self.filters, (3, 3), strides=self.strides, padding='SAME')(x)
    y = nn.relu(norm()(y))
    y = ConvHe(self.filters, (3, 3), padding='SAME')(y)
    y = norm()(y)
    if x.shape != y.shape:
      # Projection shortcut (1x1 conv), as in the Keras CIFAR ResNet v1.
      x = ConvHe(self.filters, (1, 1), strides=self.strides)(x)
    return nn.relu(x + y)


class CifarResNet(nn.Module):
  """CIFAR ResNet v1 of depth ``6n + 2`` (Section 5.4: n = 8, depth 50).

  Attributes:
    blocks_per_stage: ``n``, blocks in each of the three stages.
    filters: Channels of the three stages.
    num_classes: Units of the output layer.
  """

  blocks_per_stage: int = 8
  filters: Sequence[int] = (16, 32, 64)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = ConvHe(self.filters[0], (3, 3), padding='SAME')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    for stage, filters in enumerate(self.filters):
      for block in range(self.blocks_per_stage):
        strides = 2 if stage > 0 and block == 0 else 1
        x = ResidualBlock(filters, strides)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return DenseHe(self.num_classes, name='head')(x)


class EncoderBlock(nn.Module):
  """A pre-norm Transformer block: attention, then an MLP.

  Attributes:
    num_heads: Attention heads.
    mlp_width: Hidden units of the MLP.
    causal: Each position attends to itself and earlier ones only (a
      decoder block).
  """

  num_heads: int
  mlp_width: int
  causal: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.LayerNorm(name='norm_1')(x)
    mask = nn.make_causal_mask(x[..., 0]) if self.causal else None
    x = x + nn.MultiHeadDotProductAttention(self.num_heads, name='attention')(
        y, y, mask=mask)
    y = nn.LayerNorm(name='norm_2')(x)
    y = nn.gelu(nn.Dense(self.mlp_width, name='mlp_1')(y))
    return x + nn.Dense(x.shape[-1], name='mlp_2')(y)


class ViT(nn.Module):
  """A small Vision Transformer (Dosovitskiy et al. 2021), not in the paper.

  Non-overlapping patches embedded by a strided conv (``embedding``), a
  class token (``cls_token``, zeros) and a learned position embedding
  (``pos_embedding``, normal 0.02) as in the ViT paper, pre-norm encoder
  blocks (``encoder_1``...), a final LayerNorm and the ``head`` on the class
  token. Kernels keep Flax's LeCun-normal initializer and biases zeros: a
  zero-initialized head (the ViT paper's) would stay zero under LaPerm.
  The patch side is the image side over ``patches_per_side``: 7 on 28x28,
  2 on 8x8 digits, 8 on 32x32.

  Attributes:
    width: Token features.
    depth: Encoder blocks.
    num_heads: Attention heads per block.
    mlp_width: Hidden units of each block's MLP.
    patches_per_side: Patches along each image side.
    num_classes: Units of the output layer.
  """

  width: int = 64
  depth: int = 2
  num_heads: int = 4
  mlp_width: int = 128
  patches_per_side: int = 4
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No dropout or BatchNorm.
    patch = x.shape[1] // self.patches_per_side
    x = nn.Conv(self.width, (patch, patch), strides=patch, padding='VALID',
                name='embedding')(x)
    x = x.reshape(x.shape[0], -1, self.width)
    cls_token = self.param('cls_token', nn.initializers.zeros,
                           (1, 1, self.width))
    x = jnp.concatenate(
        [jnp.broadcast_to(cls_token, (x.shape[0], 1, self.width)), x], 1)
    x = x + self.param('pos_embedding', nn.initializers.normal(0.02),
                       (1, x.shape[1], self.width))
    for block in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_width,
                       name=f'encoder_{block + 1}')(x)
    x = nn.LayerNorm(name='norm')(x[:, 0])
    return nn.Dense(self.num_classes, name='head')(x)


class ByteTransformer(nn.Module):
  """A byte-level decoder-only Transformer language model, not in the paper.

  Token and learned position embeddings (``token_embedding``,
  ``pos_embedding``, normal 0.02 as in GPT-2), pre-norm causal blocks
  (``decoder_1``...), a final LayerNorm and an untied output layer ``head``
  that gives, at every position, the logits of the next byte. Kernels keep
  Flax's LeCun-normal initializer and biases zeros, as in :class:`ViT`.

  Input: ``(batch, length)`` byte values of any dtype (float tokens from a
  shape-only trace are cast); ``length`` is at most ``max_length``.

  Attributes:
    width: Token features.
    depth: Decoder blocks.
    num_heads: Attention heads per block.
    mlp_width: Hidden units of each block's MLP.
    max_length: Positions of the position embedding.
    vocab_size: Tokens (256 bytes).
  """

  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_width: int = 512
  max_length: int = 128
  vocab_size: int = 256

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No dropout or BatchNorm.
    tokens = x.astype(jnp.int32)
    x = nn.Embed(self.vocab_size, self.width,
                 embedding_init=nn.initializers.normal(0.02),
                 name='token_embedding')(tokens)
    positions = self.param('pos_embedding', nn.initializers.normal(0.02),
                           (self.max_length, self.width))
    x = x + positions[:tokens.shape[-1]]
    for block in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_width, causal=True,
                       name=f'decoder_{block + 1}')(x)
    x = nn.LayerNorm(name='norm')(x)
    return nn.Dense(self.vocab_size, name='head')(x)


def create(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """Builds the model a config names.

  Args:
    config: The ``model`` section of an experiment config: ``name`` (``mlp``,
      ``f1``, ``f2``, ``conv7``, ``conv2``, ``conv4``, ``conv13``,
      ``resnet``, ``vit``, ``byte_transformer``) and the model's options.
    num_classes: Classes of the dataset.

  Returns:
    An unbound Flax module.
  """
  name = config.name
  if name == 'mlp':
    return MLP(num_classes=num_classes,
               dropout_rates=tuple(config.dropout_rates))
  if name == 'f1':
    return BiasFreeMLP(hidden=(), num_classes=num_classes)
  if name == 'f2':
    return BiasFreeMLP(hidden=(128, 64), num_classes=num_classes)
  if name == 'conv7':
    # Options a config leaves out (batch_chunk outside the conv7 preset) are
    # the module's defaults, the only ones.
    return Conv7(num_classes=num_classes, **{
        option: config[option] for option in ('patches_input_gradient',
                                              'batch_chunk')
        if option in config})
  if name in _VGG_STAGES:
    stages, dense = _VGG_STAGES[name]
    return VGG(stages=stages, dense=dense, num_classes=num_classes)
  if name == 'resnet':
    return CifarResNet(blocks_per_stage=config.blocks_per_stage,
                       num_classes=num_classes)
  if name == 'vit':
    return ViT(width=config.width, depth=config.depth,
               num_heads=config.num_heads, mlp_width=config.mlp_width,
               patches_per_side=config.patches_per_side,
               num_classes=num_classes)
  if name == 'byte_transformer':
    return ByteTransformer(width=config.width, depth=config.depth,
                           num_heads=config.num_heads,
                           mlp_width=config.mlp_width,
                           max_length=config.max_length,
                           vocab_size=num_classes)
  raise ValueError(f'Unknown model {name!r}; known: mlp, f1, f2, conv7, '
                   f'{", ".join(_VGG_STAGES)}, resnet, vit, byte_transformer.')


_VGG_STAGES = {
    'conv2': (((64, 64),), (256, 256)),
    'conv4': (((64, 64), (128, 128)), (256, 256)),
    'conv13': (((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
                (512, 512, 512)), (512,)),
}


HEAD = 'head'
KERNEL = 'kernel'
BATCH_NORM_PREFIX = 'BatchNorm'

KeyPath = tuple[str, ...]


def _names(path: Sequence[Any]) -> KeyPath:
  """A ``jax.tree_util`` key path of a params dict as its key strings."""
  return tuple(str(getattr(key, 'key', key)) for key in path)


# Flax attention's projections in the order the forward pass uses them
# (their names alone sort ``out`` before ``query``).
_ATTENTION_ORDER = {'query': 0, 'key': 1, 'value': 2, 'out': 3}


def _layer_order(path: KeyPath) -> tuple[bool, list[Any]]:
  """Sort key: ``head`` last; Flax's ``Conv_10`` after ``Conv_9``.

  ``jax.jit`` and ``jax.tree`` sort dict keys, so creation order is lost.
  The modules above are written so that, with numbered names compared by
  number, attention's projections in their order and ``head`` moved last,
  key order is layer order (``Conv_*`` before ``Dense_*``, ``hidden1``
  before ``hidden2``, ``embedding`` before ``encoder_1``).
  """
  return path[0] == HEAD, [
      ['', _ATTENTION_ORDER[name]] if name in _ATTENTION_ORDER else
      [int(part) if part.isdigit() else part
       for part in re.split(r'(\d+)', name)]
      for name in path]


def kernel_paths(params: Any) -> list[KeyPath]:
  """Key paths of the kernels (``kernel`` leaves of rank >= 2), input first.

  The output layer ``head`` comes last; a model with one layer (F1) has only
  ``head``. Other leaves of rank >= 2 (a position embedding, a class token,
  attention biases ``(heads, head_dim)``) are not kernels.

  Raises:
    ValueError: The params hold no kernel.
  """
  paths = [_names(path) for path, leaf in
           jax.tree_util.tree_flatten_with_path(params)[0]
           if jnp.ndim(leaf) >= 2 and _names(path)[-1] == KERNEL]
  if not paths:
    raise ValueError('The params hold no kernel (no leaf named '
                     f'{KERNEL!r} of rank >= 2).')
  return sorted(paths, key=_layer_order)


def first_kernel_path(params: Any) -> KeyPath:
  """Key path of the input layer's kernel."""
  return kernel_paths(params)[0]


def get_leaf(params: Any, path: KeyPath) -> Any:
  """The leaf of ``params`` at ``path`` (from :func:`kernel_paths`)."""
  for key in path:
    params = params[key]
  return params


def hidden_kernel_mask(params: Any) -> Any:
  """A mask of the kernels of every layer but ``head``."""
  def is_hidden_kernel(path, _):
    names = _names(path)
    return names[-1] == KERNEL and HEAD not in names

  return jax.tree_util.tree_map_with_path(is_hidden_kernel, params)


def batch_norm_mask(params: Any) -> Any:
  """A mask of the BatchNorm scale and offset leaves."""
  def in_batch_norm(path, _):
    return any(name.startswith(BATCH_NORM_PREFIX) for name in _names(path))

  return jax.tree_util.tree_map_with_path(in_batch_norm, params)
