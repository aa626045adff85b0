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
# # LaPerm quick start: train a Flax network by reconnecting it
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/laperm-jax/laperm-jax/blob/main/notebooks/01_quick_start.ipynb)
#
# Lookahead Permutation (LaPerm) trains a network without ever changing its
# weight *values*: every weight keeps one of its random initial values, and
# training only decides **where** each value sits. Any inner optimizer (Adam
# here, as in the paper) proposes moves as usual; every `k` steps each weight
# vector (all the weights feeding one output unit) is replaced by its sorted
# initial values, placed in the rank order of the current weights.
#
# This notebook trains one Flax MLP on scikit-learn's 8x8 digits (shipped with
# scikit-learn: no download) twice, with Adam and with
# `lp.laperm(optax.adam(...), k)` inside `optax.chain`, compares their
# accuracy, checks **bit for bit** that every LaPerm-trained kernel is a
# permutation of its initial values, and draws the training curves and the
# weight profiles. Then it trains the same MLP as a Flax NNX module with
# `nnx.Optimizer`. About a minute on a CPU; a GPU or TPU runtime picks a
# wider network and more epochs.
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
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from flax.training import train_state
from IPython.display import Image, display

import laperm_jax as lp
import notebook_helpers as helpers
from laperm_jax import plots

print(jax.devices())
# 'accelerator' on a GPU or TPU (Runtime > Change runtime type on Colab),
# 'cpu' otherwise; LAPERM_NOTEBOOK_SETTINGS=quick is the CI smoke run.
# Figures are written to FIGURES (LAPERM_FIGURES_DIR, default 'figures').
SETTINGS, FIGURES = helpers.settings()
HIDDEN, EPOCHS = {'quick': ((100, 100), 8), 'cpu': ((100, 100), 30),
                  'accelerator': ((512, 512), 60)}[SETTINGS]
BATCH_SIZE, LEARNING_RATE, SYNC_PERIOD = 50, 1e-3, 20
print(f'settings {SETTINGS!r}: hidden layers {HIDDEN}, {EPOCHS} epochs, '
      f'batch {BATCH_SIZE}, k = {SYNC_PERIOD}')

# %% [markdown]
# ## Data and model
#
# `notebook_helpers` (in this folder) holds what the notebooks share: the
# digits split 80/20 (pixels in [0, 1]), shuffled batches, the paper's A.3
# MLP (ReLU, He-uniform kernels), and a plain Flax train step and evaluation.

# %%
x_train, y_train, x_test, y_test = helpers.load_digits()
model = helpers.MLP(HIDDEN)
initial = jax.jit(model.init)(jax.random.key(0), x_train[:1])['params']
print(jax.tree.map(jnp.shape, initial))


# %% [markdown]
# ## One training loop for both optimizers
#
# A plain Flax `TrainState`: LaPerm is only another optax transformation, and
# `helpers.train_step` is the usual `state.apply_gradients(grads=...)`.
# LaPerm permutes the kernels (leaves with `ndim >= 2`); biases follow Adam
# alone, as in the paper. Between syncs the weights drift off their initial
# values, so LaPerm is evaluated on `lp.synchronize(params, opt_state)`: the
# weights a sync would give right now, an exact permutation of the initial
# ones.

# %%
synchronize = jax.jit(lp.synchronize)


def train(tx, uses_laperm, seed=0):
  state = train_state.TrainState.create(apply_fn=model.apply, params=initial,
                                        tx=tx)
  rng = np.random.default_rng(seed)
  history = {'epoch': [], 'loss': [], 'accuracy': []}
  for epoch in range(EPOCHS + 1):
    for x, y in (helpers.batches(rng, x_train, y_train, BATCH_SIZE)
                 if epoch else ()):
      state = helpers.train_step(state, x, y)
    params = (synchronize(state.params, state.opt_state) if uses_laperm
              else state.params)
    loss, accuracy = helpers.evaluate(model.apply, params, x_test, y_test)
    history['epoch'].append(epoch)
    history['loss'].append(float(loss))
    history['accuracy'].append(float(accuracy))
  return params, history


# %%
clip = optax.clip_by_global_norm(1.0)
adam = optax.chain(clip, optax.adam(LEARNING_RATE))
laperm = optax.chain(clip, lp.laperm(optax.adam(LEARNING_RATE), SYNC_PERIOD))

adam_params, adam_history = train(adam, uses_laperm=False)
laperm_params, laperm_history = train(laperm, uses_laperm=True)
print(f"held-out accuracy after {EPOCHS} epochs: "
      f"Adam {adam_history['accuracy'][-1]:.3f}, "
      f"LaPerm (k={SYNC_PERIOD}, synced) {laperm_history['accuracy'][-1]:.3f}")

# %%
figure, (loss_ax, accuracy_ax) = plt.subplots(1, 2, figsize=(9, 3.2),
                                              layout='constrained')
for name, history in (('Adam', adam_history),
                      (f'LaPerm (Adam, k={SYNC_PERIOD})', laperm_history)):
  loss_ax.plot(history['epoch'], history['loss'], label=name)
  accuracy_ax.plot(history['epoch'], history['accuracy'], label=name)
loss_ax.set(xlabel='epoch', ylabel='held-out loss')
accuracy_ax.set(xlabel='epoch', ylabel='held-out accuracy', ylim=(0, 1))
accuracy_ax.legend()
figure.savefig(FIGURES / 'training_curves.png', dpi=72)
plt.show()

# %% [markdown]
# ## The trained kernels are permutations of their initial values
#
# Compared as float32 bit patterns, column by column
# (`helpers.same_values`): every weight vector of a LaPerm-trained kernel
# holds exactly its initial values, in another order. Adam's kernels hold new
# values.

# %%
laperm_exact, adam_exact = [], []
for name in initial:
  kernel = initial[name]['kernel']
  laperm_exact.append(helpers.same_values(laperm_params[name]['kernel'],
                                          kernel))
  adam_exact.append(helpers.same_values(adam_params[name]['kernel'], kernel))
  moved = np.mean(np.asarray(laperm_params[name]['kernel'])
                  != np.asarray(kernel))
  print(f'{name} {kernel.shape}: LaPerm permutation: {laperm_exact[-1]} '
        f'({moved:.0%} of the weights moved), '
        f'Adam permutation: {adam_exact[-1]}')
assert all(laperm_exact) and not any(adam_exact)

# %% [markdown]
# ## Weight profiles
#
# Each line is one weight vector, sorted (the paper's Figures 11-12). The
# profiles of the Adam-trained kernels (top) stay close to those of their
# random initialization (bottom): much of what training does can be done by
# reordering. LaPerm's profiles *are* the initial ones, by construction.

# %%
kernels = lambda params: {name: {'kernel': layer['kernel']}
                          for name, layer in params.items()}
path = plots.plot_weight_profiles(
    {'1 Adam-trained': kernels(adam_params), '2 initial': kernels(initial)},
    FIGURES / 'weight_profiles.png', dpi=72)
display(Image(filename=str(path)))


# %% [markdown]
# ## The same with Flax NNX
#
# With an `nnx.Module`, LaPerm goes into `nnx.Optimizer` like any optax
# transformation; `wrt=nnx.Param` makes the optimizer see the parameters
# only. `lp.synchronize` takes the module's `nnx.Param` state and the
# optimizer's state (`optimizer.opt_state`, a `lp.LaPermState` here), and
# `nnx.update` writes the synced weights back into the module.

# %%
class NnxMLP(nnx.Module):
  """The same MLP as an NNX module: ReLU, He-uniform kernels, zero biases."""

  def __init__(self, hidden, rngs):
    sizes = (x_train.shape[1], *hidden, 10)
    self.layers = nnx.List([
        nnx.Linear(inputs, outputs,
                   kernel_init=nnx.initializers.he_uniform(), rngs=rngs)
        for inputs, outputs in zip(sizes[:-1], sizes[1:])])

  def __call__(self, x):
    for layer in self.layers[:-1]:
      x = nnx.relu(layer(x))
    return self.layers[-1](x)


nnx_model = NnxMLP(HIDDEN, nnx.Rngs(0))
nnx_initial = [np.asarray(layer.kernel[...]) for layer in nnx_model.layers]
optimizer = nnx.Optimizer(
    nnx_model, lp.laperm(optax.adam(LEARNING_RATE), SYNC_PERIOD),
    wrt=nnx.Param)


@nnx.jit
def nnx_train_step(model, optimizer, x, y):
  def loss_fn(model):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  optimizer.update(model, nnx.grad(loss_fn)(model))


rng = np.random.default_rng(0)
for epoch in range(EPOCHS):
  for x, y in helpers.batches(rng, x_train, y_train, BATCH_SIZE):
    nnx_train_step(nnx_model, optimizer, x, y)
print(f'{int(optimizer.opt_state.count[...])} steps, '
      f'{int(optimizer.opt_state.steps_since_sync[...])} since the last sync')

# %% [markdown]
# The last sync was a few steps ago, so the weights have drifted off the
# initial values; `lp.synchronize` gives the weights a sync would give now.
# Each synced kernel, sorted per weight vector (`lp.sort_vectors`), equals
# the sorted initial values LaPerm keeps in its state (`sorted_init`), bit
# for bit.

# %%
params = nnx.state(nnx_model, nnx.Param)
synced = lp.synchronize(params, optimizer.opt_state)
nnx.update(nnx_model, synced)
nnx_exact = []
for index, layer in enumerate(nnx_model.layers):
  kernel = np.asarray(layer.kernel[...])
  sorted_init = optimizer.opt_state.sorted_init['layers'][index]['kernel']
  np.testing.assert_array_equal(lp.sort_vectors(kernel), sorted_init[...])
  nnx_exact.append(helpers.same_values(kernel, nnx_initial[index]))
  print(f'layers[{index}] {kernel.shape}: permutation of the initial kernel: '
        f'{nnx_exact[-1]} ({np.mean(kernel != nnx_initial[index]):.0%} of '
        'the weights moved)')
nnx_accuracy = float(jnp.mean(jnp.argmax(nnx_model(x_test), axis=-1)
                              == y_test))
print(f'NNX, LaPerm (k={SYNC_PERIOD}, synced): held-out accuracy '
      f'{nnx_accuracy:.3f}')

# %%
results = {
    'settings': SETTINGS,
    'epochs': EPOCHS,
    'adam_accuracy': adam_history['accuracy'][-1],
    'laperm_accuracy': laperm_history['accuracy'][-1],
    'laperm_kernels_are_permutations': all(laperm_exact),
    'nnx_accuracy': nnx_accuracy,
    'nnx_kernels_are_permutations': all(nnx_exact),
}
print('RESULTS', json.dumps(results))
assert results['laperm_accuracy'] > 0.8, results  # Chance: 0.1.
assert results['adam_accuracy'] > 0.8, results
assert results['nnx_kernels_are_permutations'], results
assert results['nnx_accuracy'] > 0.8, results
