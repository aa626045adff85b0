# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # LaPerm on your own model: a Vision Transformer
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/laperm-jax/laperm-jax/blob/main/notebooks/04_your_own_model.ipynb)
#
# LaPerm permutes each *weight vector* within itself: all the weights that
# feed one output unit (its fan-in). For Dense `(in, out)` and Conv
# `(h, w, in, out)` kernels that is "every axis but the last", the library's
# default. For other layers it is not: Flax attention keeps its query, key
# and value kernels as `(features, heads, head_dim)`, where one output unit
# `(head, dim)` reads axis 0 only. With the default rule, a sync would treat
# `features x heads` weights as one vector and move weights **between
# heads**.
#
# This notebook takes a model LaPerm was never written for, a small Vision
# Transformer in Flax Linen, reads the fan-in of every kernel from the
# model's forward pass with `lp.derive_vector_axes`, trains it with
# `lp.laperm(..., vector_axes=layout)` on scikit-learn's 8x8 digits (no
# download), checks **bit for bit** that every fan-in vector holds exactly
# its initial values, and trains it again with the wrong (trailing-axis)
# grouping to show the weights it moves between heads. Last, the same
# recipe on a Flax NNX model with BatchNorm, Dropout and layers run by
# `nnx.scan`, trained under `nnx.Optimizer`. About a minute on a CPU.
#
# > Qiu & Suda, *Train-by-Reconnect: Decoupling Locations of Weights from Their Values*,
# > NeurIPS 2020, [arXiv:2003.02570](https://arxiv.org/abs/2003.02570).

# %%
# On Colab (or wherever this folder or laperm-jax is missing), clone the
# project's repository for the notebooks' helper module and install
# laperm-jax from it. REPO is that repository: change it to use a fork.
import importlib.util
import pathlib
import subprocess
import sys

REPO = 'https://github.com/laperm-jax/laperm-jax'
if importlib.util.find_spec('notebook_helpers') is None:
  if not pathlib.Path('laperm-jax').exists():
    subprocess.run(['git', 'clone', '--quiet', '--depth', '1', REPO,
                    'laperm-jax'], check=True)
  sys.path.insert(0, str(pathlib.Path('laperm-jax', 'notebooks').resolve()))
if importlib.util.find_spec('laperm_jax') is None:
  checkout = pathlib.Path(
      importlib.util.find_spec('notebook_helpers').origin).parents[1]
  subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet',
                  f'{checkout}[plots]', 'flax', 'scikit-learn'], check=True)
  importlib.invalidate_caches()

# %%
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import nnx
from flax.training import train_state

import laperm_jax as lp
import notebook_helpers as helpers

print(jax.devices())
# 'accelerator' on a GPU or TPU, 'cpu' otherwise; LAPERM_NOTEBOOK_SETTINGS=
# quick is the CI smoke run.
SETTINGS, FIGURES = helpers.settings()
EPOCHS = {'quick': 6, 'cpu': 20, 'accelerator': 40}[SETTINGS]
BATCH_SIZE, LEARNING_RATE, SYNC_PERIOD = 50, 3e-3, 20
print(f'settings {SETTINGS!r}: {EPOCHS} epochs, batch {BATCH_SIZE}, '
      f'k = {SYNC_PERIOD}')


# %% [markdown]
# ## Your model
#
# Any Flax model works; here, a Vision Transformer as in Dosovitskiy et al.
# (2021), sized for 8x8 images: 2x2 patches embedded by a strided conv, a
# class token, a learned position embedding, pre-norm encoder blocks of
# 4-head attention and an MLP, and a Dense head on the class token.

# %%
class EncoderBlock(nn.Module):
  num_heads: int
  mlp_width: int

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(self.num_heads,
                                            name='attention')(y, y)
    y = nn.gelu(nn.Dense(self.mlp_width)(nn.LayerNorm()(x)))
    return x + nn.Dense(x.shape[-1])(y)


class ViT(nn.Module):
  width: int = 32
  depth: int = 2
  num_heads: int = 4
  patch: int = 2

  @nn.compact
  def __call__(self, images):
    x = nn.Conv(self.width, (self.patch, self.patch), strides=self.patch,
                name='patches')(images)
    x = x.reshape(x.shape[0], -1, self.width)
    cls_token = self.param('cls_token', nn.initializers.zeros,
                           (1, 1, self.width))
    x = jnp.concatenate(
        [jnp.broadcast_to(cls_token, (x.shape[0], 1, self.width)), x], 1)
    x = x + self.param('pos_embedding', nn.initializers.normal(0.02),
                       (1, x.shape[1], self.width))
    for block in range(self.depth):
      x = EncoderBlock(self.num_heads, 2 * self.width,
                       name=f'block_{block}')(x)
    return nn.Dense(10, name='head')(nn.LayerNorm()(x[:, 0]))


x_train, y_train, x_test, y_test = helpers.load_digits()
# The digits come flattened: as 8x8 images with one channel.
x_train, x_test = (x.reshape(-1, 8, 8, 1) for x in (x_train, x_test))
model = ViT()
initial = jax.jit(model.init)(jax.random.key(0), x_train[:1])['params']
print(f'{sum(leaf.size for leaf in jax.tree.leaves(initial))} parameters')

# %% [markdown]
# ## Its weight vectors, read from the forward pass
#
# `lp.derive_vector_axes(fn, params, *inputs)` traces `fn` abstractly
# (nothing runs) and reads each leaf's fan-in axes where the forward pass
# consumes it: the contracting axes of a matrix product, the spatial and
# input axes of a convolution. A leaf that no product reads (the position
# embedding is added, the class token concatenated, attention's
# `(heads, head_dim)` biases added) has no fan-in: by default the function
# reports such leaves instead of guessing.

# %%
def forward(params, images):
  return model.apply({'params': params}, images)


example = jax.ShapeDtypeStruct(x_train[:1].shape, jnp.float32)
try:
  lp.derive_vector_axes(forward, initial, example)
except ValueError as error:
  print(str(error)[:600], '...')

# %% [markdown]
# With `unknown='warn'` those leaves get `lp.NO_FAN_IN` and one warning
# names them. Every kernel gets its fan-in: `(0, 1, 2)` for the patch
# embedding (one filter), `(0,)` for the query, key and value kernels
# `(features, heads, head_dim)`, `(0, 1)` for the output projection
# `(heads, head_dim, features)`, `(0,)` for the Dense layers.

# %%
layout = lp.derive_vector_axes(forward, initial, example, unknown='warn')
paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(initial)[0]]
# One layout per leaf of `initial`, in the same order.
layouts = jax.tree.structure(initial).flatten_up_to(layout)
for path, leaf, axes in zip(paths, jax.tree.leaves(initial), layouts):
  print(f'{jax.tree_util.keystr(path):45} {str(leaf.shape):15} {axes}')

# %% [markdown]
# The layout chooses the leaves too: LaPerm permutes exactly the leaves with
# a fan-in (the kernels); the `lp.NO_FAN_IN` ones (biases, LayerNorm scales,
# position embedding, class token) follow Adam alone, as the paper leaves
# biases to the inner optimizer.

# %%
derived_laperm = lp.laperm(optax.adam(LEARNING_RATE), SYNC_PERIOD,
                           vector_axes=layout)
# The same leaves, the kernels, grouped by the default rule, all axes but
# the last: wrong for the query, key and value kernels.
only_kernels = lambda params: jax.tree_util.tree_map_with_path(
    lambda path, _: path[-1].key == 'kernel', params)
trailing_laperm = lp.laperm(optax.adam(LEARNING_RATE), SYNC_PERIOD,
                            mask=only_kernels)


# %% [markdown]
# ## Training
#
# A plain Flax `TrainState` and train step. LaPerm is evaluated on
# `lp.synchronize(params, opt_state, vector_axes=...)`, the weights a sync
# would give now, with the same layout it was built with.

# %%
def train(tx, vector_axes, seed=0):
  state = train_state.TrainState.create(apply_fn=model.apply, params=initial,
                                        tx=tx)
  synchronize = jax.jit(lambda params, opt_state: lp.synchronize(
      params, opt_state, vector_axes=vector_axes))
  rng = np.random.default_rng(seed)
  for _ in range(EPOCHS):
    for x, y in helpers.batches(rng, x_train, y_train, BATCH_SIZE):
      state = helpers.train_step(state, x, y)
  params = synchronize(state.params, state.opt_state)
  _, accuracy = helpers.evaluate(model.apply, params, x_test, y_test)
  return params, float(accuracy)


derived_params, derived_accuracy = train(derived_laperm, layout)
trailing_params, trailing_accuracy = train(trailing_laperm, None)
print(f'held-out accuracy after {EPOCHS} epochs (chance 0.1): '
      f'derived layout {derived_accuracy:.3f}, '
      f'trailing-axis grouping {trailing_accuracy:.3f}')

# %% [markdown]
# ## Bit for bit: every fan-in vector holds its initial values
#
# Each kernel is laid out as a matrix with one column per output unit
# (`lp.as_vectors(kernel, vector_axes=axes)`) and each column sorted; the
# values are compared as float32 bit patterns (`helpers.same_values`). The
# patch embedding's fan-ins hold 4 weights each, far apart compared with
# Adam's steps between syncs: few of them, if any, change places.

# %%
def fan_in_columns(params, path, axes):
  leaf = params
  for key in path:
    leaf = leaf[key.key]
  return lp.as_vectors(leaf, vector_axes=axes)


kernels = [(path, axes) for path, axes in zip(paths, layouts)
           if axes is not lp.NO_FAN_IN]
derived_exact = {}
for path, axes in kernels:
  before = fan_in_columns(initial, path, axes)
  after = fan_in_columns(derived_params, path, axes)
  derived_exact[jax.tree_util.keystr(path)] = helpers.same_values(after, before)
  print(f'{jax.tree_util.keystr(path):45} fan-in {axes}: exact permutation '
        f'{derived_exact[jax.tree_util.keystr(path)]}, '
        f'{np.mean(np.asarray(after) != np.asarray(before)):.0%} moved')
assert all(derived_exact.values())

# %% [markdown]
# ## The wrong grouping moves weights between heads
#
# Per head of each query, key and value kernel, the multiset of its values:
# with the derived layout, every head keeps exactly its own initial weights;
# with the trailing-axis grouping, heads trade weights at every sync, so
# their fan-in vectors are no longer permutations of their initial ones.
# That network may train just as well: what the wrong grouping breaks is
# the method's promise (each unit keeps its own initial values), and with
# it every per-unit analysis (weight profiles, ranking distances, cycles).

# %%
def heads_keep_their_values(params):
  """Per q/k/v kernel: for each head, whether it holds its own values."""
  kept = {}
  for block in range(model.depth):
    for name in ('query', 'key', 'value'):
      path = (f'block_{block}', 'attention', name, 'kernel')
      before, after = initial, params
      for key in path:
        before, after = before[key], after[key]
      kept['/'.join(path)] = [
          helpers.same_values(np.ravel(after[:, head]),
                              np.ravel(before[:, head]))
          for head in range(model.num_heads)]
  return kept


derived_heads = heads_keep_their_values(derived_params)
trailing_heads = heads_keep_their_values(trailing_params)
for name in derived_heads:
  print(f'{name}: heads keeping their values: derived '
        f'{sum(derived_heads[name])}/{model.num_heads}, trailing '
        f'{sum(trailing_heads[name])}/{model.num_heads}')
trailing_exact = all(
    helpers.same_values(fan_in_columns(trailing_params, path, axes),
                        fan_in_columns(initial, path, axes))
    for path, axes in kernels)
print('trailing grouping: every fan-in vector a permutation of its initial '
      f'values: {trailing_exact}')

# %% [markdown]
# ## Flax NNX: BatchNorm, Dropout, layers run by `nnx.scan`
#
# With an `nnx.Module`, `lp.derive_nnx_vector_axes` takes the model itself.
# It traces the model's other state (BatchNorm statistics, Dropout's RNG
# keys) along with its params, changes nothing, and its layout goes to
# `nnx.Optimizer` as it is. Here an MLP whose hidden blocks (Linear,
# BatchNorm, Dropout) are created by `nnx.vmap` and run by `nnx.scan`: their
# kernels are stacked as `(layers, in, out)`, where the default rule would
# make each weight vector span every layer; the derived layout is `(1,)`,
# one vector per layer and output unit. The stacked biases and BatchNorm
# scales, `(layers, width)`, have no fan-in: the warning names them.

# %%
class Block(nnx.Module):

  def __init__(self, width, rngs):
    self.linear = nnx.Linear(width, width, rngs=rngs)
    self.norm = nnx.BatchNorm(width, rngs=rngs)
    self.dropout = nnx.Dropout(0.1, rngs=rngs)

  def __call__(self, x):
    return self.dropout(nnx.relu(self.norm(self.linear(x))))


class ScannedMLP(nnx.Module):

  def __init__(self, width, depth, rngs):
    self.stem = nnx.Linear(64, width, rngs=rngs)

    @nnx.split_rngs(splits=depth)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def blocks(rngs):
      return Block(width, rngs)

    self.blocks = blocks(rngs)
    self.head = nnx.Linear(width, 10, rngs=rngs)

  def __call__(self, images):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def run(x, block):
      return block(x)

    x = nnx.relu(self.stem(images.reshape(images.shape[0], -1)))
    return self.head(run(x, self.blocks))


model = ScannedMLP(64, 2, nnx.Rngs(0))
x = x_train[:BATCH_SIZE]

layout = lp.derive_nnx_vector_axes(model, x, unknown='warn')
optimizer = nnx.Optimizer(
    model, lp.laperm(optax.adam(1e-3), 20, vector_axes=layout),
    wrt=nnx.Param)
print('blocks/linear/kernel', model.blocks.linear.kernel.shape,
      layout['blocks']['linear']['kernel'])

# %% [markdown]
# A plain NNX training loop; then `lp.synchronize` gives the weights a sync
# would give now, and `nnx.update` writes them into the model.

# %%
@nnx.jit
def nnx_train_step(model, optimizer, x, y):
  def loss_fn(model):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  optimizer.update(model, nnx.grad(loss_fn)(model))


nnx_initial = nnx.as_pure(nnx.state(model, nnx.Param))
rng = np.random.default_rng(0)
for _ in range(EPOCHS):
  for x, y in helpers.batches(rng, x_train, y_train, BATCH_SIZE):
    nnx_train_step(model, optimizer, x, y)
nnx.update(model, lp.synchronize(nnx.state(model, nnx.Param),
                                 optimizer.opt_state, vector_axes=layout))
model.eval()
nnx_accuracy = float(jnp.mean(jnp.argmax(model(x_test), axis=-1) == y_test))

nnx_synced = nnx.as_pure(nnx.state(model, nnx.Param))
nnx_exact = {}
for (path, before), after, axes in zip(
    jax.tree_util.tree_flatten_with_path(nnx_initial)[0],
    jax.tree.leaves(nnx_synced),
    jax.tree.structure(nnx_initial).flatten_up_to(layout)):
  if axes is not lp.NO_FAN_IN and before.ndim >= 2:
    nnx_exact[jax.tree_util.keystr(path)] = helpers.same_values(
        lp.as_vectors(after, vector_axes=axes),
        lp.as_vectors(before, vector_axes=axes))
print(f'held-out accuracy {nnx_accuracy:.3f}; every fan-in vector a '
      f'permutation of its initial values: {nnx_exact}')

# %%
results = {
    'settings': SETTINGS,
    'epochs': EPOCHS,
    'derived_accuracy': derived_accuracy,
    'trailing_accuracy': trailing_accuracy,
    'derived_kernels_are_permutations': all(derived_exact.values()),
    'derived_heads_keep_their_values': all(
        all(heads) for heads in derived_heads.values()),
    'trailing_heads_keeping_their_values': sum(
        sum(heads) for heads in trailing_heads.values()),
    'trailing_kernels_are_permutations': trailing_exact,
    'nnx_accuracy': nnx_accuracy,
    'nnx_kernels_are_permutations': len(nnx_exact) == 3 and all(
        nnx_exact.values()),
}
print('RESULTS', json.dumps(results))
assert results['derived_kernels_are_permutations'], results
assert results['derived_heads_keep_their_values'], results
assert not results['trailing_kernels_are_permutations'], results
assert results['derived_accuracy'] > 0.5, results  # Chance: 0.1.
assert results['nnx_kernels_are_permutations'], results
assert results['nnx_accuracy'] > 0.5, results
