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
# # Weight-agnostic networks: every weight is 0 or one shared value
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/laperm-jax/laperm-jax/blob/main/notebooks/03_weight_agnostic.ipynb)
#
# The paper's Section 5.5: since LaPerm never changes weight values, a network
# whose weights are all **0 or one shared value** can still be trained, by
# reconnecting it. Two bias-free ReLU networks, as in the paper:
#
# - **F1**: one dense layer (here 64 -> 10), 60% of the weights equal to 0.08,
#   the rest 0, as in the paper;
# - **F2**: 64 -> 128 -> 64 -> 10. The paper keeps 10% of its weights (value
#   0.03) on MNIST's 784 inputs; with the 64 pixels of digits that leaves about
#   6 inputs per first-layer unit, and it learns little, so here 50% of the
#   weights are 0.1, the rest 0. Even so F2 stays well below F1 on digits.
#
# `lp.shared_value` builds the initial weights; `lp.laperm` moves them. Since
# the networks are bias-free and ReLU is positively homogeneous, multiplying
# the shared value by any positive factor scales the logits and leaves every
# prediction unchanged: what they learned is the wiring alone, which the
# notebook checks by evaluating them with other shared values. On
# scikit-learn's 8x8 digits (shipped with scikit-learn: no download) instead
# of MNIST.
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
from flax import linen as nn
from flax.training import train_state

import laperm_jax as lp
import notebook_helpers as helpers

print(jax.devices())
# 'accelerator' on a GPU or TPU (Runtime > Change runtime type on Colab),
# 'cpu' otherwise; LAPERM_NOTEBOOK_SETTINGS=quick is the CI smoke run.
# Figures are written to FIGURES (LAPERM_FIGURES_DIR, default 'figures').
SETTINGS, FIGURES = helpers.settings()
EPOCHS = {'quick': 8, 'cpu': 40, 'accelerator': 100}[SETTINGS]
BATCH_SIZE, LEARNING_RATE = 50, 3e-3
# A weight moves from 0 to the shared value only once Adam has pushed it past
# the gap between them: longer sync periods than for a random init.
NETWORKS = {  # name: (hidden layers, shared value, fraction nonzero, k)
    'F1': ((), 0.08, 0.6, 100),
    'F2': ((128, 64), 0.1, 0.5, 100),  # The paper: 0.03, 10% on MNIST.
}
print(f'settings {SETTINGS!r}: {EPOCHS} epochs, batch {BATCH_SIZE}')

# %% [markdown]
# ## Data and the two networks

# %%
# The digits of notebook 01 (notebook_helpers), pixels in [0, 1].
x_train, y_train, x_test, y_test = helpers.load_digits()
# Standardized with the training pixels' mean and standard deviation: on
# these 8x8 digits, centered inputs give F2's ReLUs something to cut. (The
# authors' MNIST notebooks, and the f1/f2 presets, keep pixels in [0, 1].)
mean, std = x_train.mean(), x_train.std()
x_train, x_test = (x_train - mean) / std, (x_test - mean) / std


# %%
class BiasFreeMLP(nn.Module):
  """Dense ReLU layers without biases (F1: no hidden layer)."""
  hidden: tuple

  @nn.compact
  def __call__(self, x):
    for units in self.hidden:
      x = nn.relu(nn.Dense(units, use_bias=False)(x))
    return nn.Dense(10, use_bias=False)(x)


models, initial = {}, {}
for index, (name, (hidden, value, keep, _)) in enumerate(NETWORKS.items()):
  models[name] = BiasFreeMLP(hidden)
  shapes = jax.jit(models[name].init)(jax.random.key(index),
                                      x_train[:1])['params']
  # Exactly round(keep * n) weights of each kernel are `value`, the rest 0.
  initial[name] = lp.shared_value(jax.random.key(10 + index), shapes, value,
                                  keep)
  for layer, params in initial[name].items():
    kernel = np.asarray(params['kernel'])
    print(f'{name} {layer} {kernel.shape}: values {np.unique(kernel)}, '
          f'{np.mean(kernel != 0):.0%} nonzero')

# %% [markdown]
# ## Training by reconnection
#
# Adam proposes moves; every `k` steps LaPerm puts the initial values back, in
# the new rank order. Accuracy is measured on `lp.synchronize`d weights, which
# hold only 0 and the shared value.

# %%
synchronize = jax.jit(lp.synchronize)


def accuracy(model, params):
  return helpers.evaluate(model.apply, params, x_test, y_test)[1]


def train(name, seed=0):
  model, sync_period = models[name], NETWORKS[name][3]

  tx = lp.laperm(optax.adam(LEARNING_RATE), sync_period)
  state = train_state.TrainState.create(apply_fn=model.apply,
                                        params=initial[name], tx=tx)
  rng = np.random.default_rng(seed)
  history = []
  for epoch in range(EPOCHS + 1):
    for x, y in (helpers.batches(rng, x_train, y_train, BATCH_SIZE)
                 if epoch else ()):
      state = helpers.train_step(state, x, y)
    params = synchronize(state.params, state.opt_state)
    history.append(float(accuracy(model, params)))
  return params, history


trained, histories = {}, {}
for name in NETWORKS:
  trained[name], histories[name] = train(name)
  print(f'{name}: held-out accuracy {histories[name][0]:.3f} with random '
        f'connections, {histories[name][-1]:.3f} after {EPOCHS} epochs')

# %%
figure, ax = plt.subplots(figsize=(5, 3.2), layout='constrained')
for name, history in histories.items():
  hidden, value, keep, k = NETWORKS[name]
  ax.plot(history, label=f'{name}: weights 0 or {value}, {keep:.0%} '
          f'nonzero, k={k}')
ax.axhline(0.1, color='gray', linestyle=':', label='chance')
ax.set(xlabel='epoch', ylabel='held-out accuracy', ylim=(0, 1))
ax.legend(fontsize=8)
figure.savefig(FIGURES / 'weight_agnostic_accuracy.png', dpi=72)
plt.show()

# %% [markdown]
# ## What F1 learned: its wiring
#
# F1 has one weight vector per class: the 64 pixels connected to that class's
# output, here drawn as 8x8 images (black: connected, weight 0.08). Training
# turned random wirings into digit-like templates.

# %%
figure, axes = plt.subplots(2, 10, figsize=(10, 2.5), layout='constrained')
for row, (label, params) in enumerate((('initial', initial['F1']),
                                       ('trained', trained['F1']))):
  kernel = np.asarray(params['Dense_0']['kernel'])  # (64, 10)
  for digit in range(10):
    axes[row, digit].imshow(kernel[:, digit].reshape(8, 8) != 0,
                            cmap='Greys', interpolation='nearest')
    axes[row, digit].set_axis_off()
    axes[row, digit].set_title(f'{label} {digit}' if digit == 0 else str(digit),
                               fontsize=8)
figure.savefig(FIGURES / 'f1_connections.png', dpi=72)
plt.show()


# %% [markdown]
# ## Still 0 or the shared value, and agnostic to that value
#
# Every trained kernel holds exactly its initial values (the same number of
# zeros and of shared values per weight vector, bit for bit). Then every
# nonzero weight is replaced by other shared values: the predictions do not
# depend on it (up to float rounding), as long as it is positive. A negative
# value inverts what the network learned.

# %%
def with_shared_value(params, value):
  return jax.tree.map(lambda w: jnp.where(w != 0, value, 0.0).astype(w.dtype),
                      params)


exact = {name: all(helpers.same_values(trained[name][layer]['kernel'],
                                       initial[name][layer]['kernel'])
                   for layer in initial[name]) for name in NETWORKS}
print('kernels hold exactly their initial values:', exact)
VALUES = (0.001, 0.03, 0.08, 1.0, 10.0, -0.08)
agnostic = {}
for name in NETWORKS:
  scores = {value: float(accuracy(models[name],
                                  with_shared_value(trained[name], value)))
            for value in VALUES}
  print(name, ', '.join(f'value {value:g}: {score:.3f}'
                        for value, score in scores.items()))
  positive = [score for value, score in scores.items() if value > 0]
  agnostic[name] = max(positive) - min(positive)

# %%
results = {
    'settings': SETTINGS,
    'epochs': EPOCHS,
    **{f'{name}_accuracy': histories[name][-1] for name in NETWORKS},
    **{f'{name}_initial_accuracy': histories[name][0] for name in NETWORKS},
    'kernels_keep_their_values': all(exact.values()),
    'largest_accuracy_spread_over_positive_values': max(agnostic.values()),
}
print('RESULTS', json.dumps(results))
assert results['kernels_keep_their_values'], results
assert results['largest_accuracy_spread_over_positive_values'] <= 0.01, results
assert results['F1_accuracy'] > 0.5, results  # Chance: 0.1.
assert results['F2_accuracy'] > 0.3, results
