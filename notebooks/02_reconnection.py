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
# # Reconnecting a pruned network, and watching LaPerm reorder
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/laperm-jax/laperm-jax/blob/main/notebooks/02_reconnection.ipynb)
#
# LaPerm learns by reordering, so a pruned network keeps its zeros and
# training decides where they go: it *reconnects* the network. This notebook
#
# - prunes a Flax MLP with `lp.random_prune` (the paper's Section 5.4: an
#   exact number of zeros per kernel, the first layer capped at 20%) and
#   trains it with LaPerm: same zeros and same nonzero values before and after,
#   in new places;
# - monitors the first layer during training as in the paper's Figure 13
#   (`lp.weight_statistics`, `lp.ranking_distance`,
#   `plots.plot_training_monitor`): under LaPerm the weight distribution is
#   fixed and only the ranking moves, under Adam it spreads;
# - draws how far each weight moved in rank
#   (`lp.ranking_distance_per_entry`), and the
#   permutation of one weight vector between two syncs as disjoint cycles
#   (`lp.cycle_summary`, `plots.plot_permutation_cycles`, Figure 14).
#
# On scikit-learn's 8x8 digits (shipped with scikit-learn: no download).
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
BATCH_SIZE, LEARNING_RATE, SYNC_PERIOD, PRUNE_RATE = 50, 1e-3, 20, 0.5
print(f'settings {SETTINGS!r}: hidden layers {HIDDEN}, {EPOCHS} epochs, '
      f'batch {BATCH_SIZE}, k = {SYNC_PERIOD}')

# %% [markdown]
# ## Data, model, and a pruned initialization

# %%
# The digits, the MLP and the train step of notebook 01 (notebook_helpers).
x_train, y_train, x_test, y_test = helpers.load_digits()
model = helpers.MLP(HIDDEN)
initial = jax.jit(model.init)(jax.random.key(0), x_train[:1])['params']
print(jax.tree.map(jnp.shape, initial))

# %% [markdown]
# `lp.random_prune` zeros exactly `round(rate * n)` entries of each kernel,
# uniformly at random; biases are never pruned, and the first layer is pruned
# at most 20% (the paper's A.5.4). It returns the rate applied and the exact
# counts per leaf.

# %%
pruned = lp.random_prune(jax.random.key(1), initial, PRUNE_RATE)
for name in initial:
  print(f"{name}: pruned {float(pruned.rates[name]['kernel']):.0%}, "
        f"{int(pruned.num_nonzero[name]['kernel'])} nonzero of "
        f"{initial[name]['kernel'].size}")


# %% [markdown]
# ## Training with a monitor
#
# Each epoch records the first layer's weight statistics (per weight vector:
# min, 15th, 50th, 85th percentiles, max), the ranking distance to the
# previous epoch (per entry `|rank before - rank after|` within its weight
# vector, over the vector length) and the held-out loss. LaPerm is measured on
# `lp.synchronize(params, opt_state)`, the weights right after a sync. The
# first two syncs of the unpruned LaPerm run are kept for the cycle picture.

# %%
synchronize = jax.jit(lp.synchronize)


@jax.jit
def monitor(previous, current):
  """Figure 13's record of one epoch: the first layer's statistics, its
  ranking distance to the previous epoch, and the held-out loss."""
  before, after = previous['Dense_0']['kernel'], current['Dense_0']['kernel']
  return (lp.weight_statistics(after), lp.ranking_distance(before, after),
          helpers.evaluate(model.apply, current, x_test, y_test))


def train(tx, params, uses_laperm, keep_syncs=(), seed=0):
  """Trains; returns the final (synced) params, the monitor record, the
  held-out accuracy and the params at the steps in ``keep_syncs``."""
  state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                        tx=tx)
  measured = lambda s: (synchronize(s.params, s.opt_state) if uses_laperm
                        else s.params)
  rng = np.random.default_rng(seed)
  record = {key: [] for key in ('epoch', 'min', 'p15', 'p50', 'p85', 'max',
                                'distance_mean', 'distance_std', 'val_loss')}
  kept, step, previous = {}, 0, measured(state)
  for epoch in range(EPOCHS + 1):
    for x, y in (helpers.batches(rng, x_train, y_train, BATCH_SIZE)
                 if epoch else ()):
      state = helpers.train_step(state, x, y)
      step += 1
      if step in keep_syncs:
        kept[step] = measured(state)
    current = measured(state)
    statistics, distance, (loss, accuracy) = monitor(previous, current)
    for name, values in statistics.items():
      record[name].append(np.asarray(values))
    record['epoch'].append(epoch)
    record['distance_mean'].append(float(distance.mean))
    record['distance_std'].append(float(distance.std))
    record['val_loss'].append(float(loss))
    previous = current
  record = {key: np.asarray(value) for key, value in record.items()}
  return current, record, float(accuracy), kept


# %%
clip = optax.clip_by_global_norm(1.0)
laperm = optax.chain(clip, lp.laperm(optax.adam(LEARNING_RATE), SYNC_PERIOD))
adam = optax.chain(clip, optax.adam(LEARNING_RATE))

laperm_params, laperm_record, laperm_accuracy, syncs = train(
    laperm, initial, uses_laperm=True,
    keep_syncs=(SYNC_PERIOD, 2 * SYNC_PERIOD))
pruned_params, pruned_record, pruned_accuracy, _ = train(
    laperm, pruned.params, uses_laperm=True)
adam_params, adam_record, adam_accuracy, _ = train(
    adam, initial, uses_laperm=False)
print(f'held-out accuracy after {EPOCHS} epochs: LaPerm {laperm_accuracy:.3f}, '
      f'LaPerm {PRUNE_RATE:.0%} pruned {pruned_accuracy:.3f}, '
      f'Adam {adam_accuracy:.3f}')

# %% [markdown]
# ### The training monitor (Figure 13)
#
# Top: each weight vector's 15th, 50th (red) and 85th percentiles and the
# layer's min and max. Under LaPerm these are flat lines, since the values never
# change (the pruned run's median is 0: its first layer is 20% zeros); under
# Adam the distribution spreads. Middle: the ranking distance between
# consecutive epochs, large early and shrinking as training settles. Bottom:
# the held-out loss.

# %%
layer = f"Dense_0 ({'x'.join(map(str, initial['Dense_0']['kernel'].shape))})"
path = plots.plot_training_monitor(
    {f'LaPerm (Adam, k={SYNC_PERIOD})': laperm_record,
     f'LaPerm, {PRUNE_RATE:.0%} pruned': pruned_record,
     'Adam': adam_record},
    FIGURES / 'training_monitor.png', layer_name=layer, dpi=72)
display(Image(filename=str(path)))


# %% [markdown]
# ### The pruned network was reconnected
#
# Its weight profiles before and after training are the same, zeros included,
# bit for bit; what changed is which inputs each unit is connected to.

# %%
kernels = lambda params: {name: {'kernel': layer['kernel']}
                          for name, layer in params.items()}
path = plots.plot_weight_profiles(
    {'1 pruned, initial': kernels(pruned.params),
     '2 pruned, after LaPerm': kernels(pruned_params)},
    FIGURES / 'pruned_weight_profiles.png', dpi=72)
display(Image(filename=str(path)))

pruned_exact = []
for name in initial:
  before = np.asarray(pruned.params[name]['kernel'])
  after = np.asarray(pruned_params[name]['kernel'])
  pruned_exact.append(helpers.same_values(after, before)
                      and np.sum(after == 0) == np.sum(before == 0))
  rewired = np.mean((before != 0) != (after != 0))
  print(f'{name}: same values and zeros: {pruned_exact[-1]}, '
        f'{rewired:.0%} of the connections switched on or off')
assert all(pruned_exact)

# %%
before = np.asarray(pruned.params['Dense_1']['kernel']) != 0
after = np.asarray(pruned_params['Dense_1']['kernel']) != 0
figure, axes = plt.subplots(1, 3, figsize=(10, 3.6), layout='constrained')
for ax, image, name in ((axes[0], before, 'connected before'),
                        (axes[1], after, 'connected after'),
                        (axes[2], before != after, 'switched')):
  ax.imshow(image, cmap='Greys', interpolation='nearest')
  ax.set(title=f'Dense_1: {name}', xlabel='output unit', ylabel='input')
figure.savefig(FIGURES / 'pruned_connections.png', dpi=72)
plt.show()

# %% [markdown]
# ### How far each weight moved in rank
#
# `lp.ranking_distance_per_entry(before, after)` gives, per entry, how many
# places it moved in the rank order of its weight vector: here from the initialization to
# the end of LaPerm training, over the vector length.

# %%
distances = jax.jit(lp.ranking_distance_per_entry)(kernels(initial),
                                                   kernels(laperm_params))
figure, axes = plt.subplots(1, len(initial), figsize=(10, 2.8),
                            layout='constrained', sharey=True)
for ax, name in zip(axes, initial):
  length = initial[name]['kernel'].shape[0]
  ax.hist(np.asarray(distances[name]['kernel']).ravel() / length, bins=30)
  ax.set(title=name, xlabel='ranking distance / vector length')
axes[0].set_ylabel('weights')
figure.savefig(FIGURES / 'ranking_distances.png', dpi=72)
plt.show()
summary = jax.jit(lp.ranking_distance)(kernels(initial),
                                       kernels(laperm_params))
for name in initial:
  print(f"{name}: mean {float(summary[name]['kernel'].mean):.3f}, "
        f"SD {float(summary[name]['kernel'].std):.3f}")

# %% [markdown]
# ### One permutation as cycles (Figure 14)
#
# Between the first two syncs (steps `k` and `2k`), each weight vector of
# `Dense_1` went through a permutation of its values. `lp.cycle_summary`
# splits each into disjoint cycles; the picture shows one typical vector (the
# median number of cycles) on a circle of its values in ascending order.
# Early Adam steps are small, so most cycles swap values of nearby rank.

# %%
first, second = (syncs[step]['Dense_1']['kernel']
                 for step in (SYNC_PERIOD, 2 * SYNC_PERIOD))
summary = lp.cycle_summary(first, second)
vector = int(np.argsort(summary.num_cycles, kind='stable')[
    len(summary.num_cycles) // 2])
print(f'per weight vector: {np.mean(summary.num_cycles):.1f} cycles on '
      f'average, the longest has {int(np.max(summary.longest_cycle))} '
      f'entries, {np.mean(summary.fraction_moved):.0%} of the entries moved')
path = plots.plot_permutation_cycles(first, second,
                                     FIGURES / 'permutation_cycles.png',
                                     vector_index=vector, dpi=72)
display(Image(filename=str(path)))

# %%
# LaPerm's distribution never changes: the percentiles of every epoch are
# those of the first, bit for bit; Adam's move.
laperm_fixed = all(np.array_equal(record[name], record[name][:1].repeat(
    len(record[name]), axis=0)) for record in (laperm_record, pruned_record)
                   for name in ('min', 'p15', 'p50', 'p85', 'max'))
results = {
    'settings': SETTINGS,
    'epochs': EPOCHS,
    'laperm_accuracy': laperm_accuracy,
    'pruned_accuracy': pruned_accuracy,
    'adam_accuracy': adam_accuracy,
    'pruned_kernels_keep_their_values': all(pruned_exact),
    'laperm_distribution_fixed': laperm_fixed,
    'first_epoch_ranking_distance': float(laperm_record['distance_mean'][1]),
    'cycles_per_vector': float(np.mean(summary.num_cycles)),
}
print('RESULTS', json.dumps(results))
assert laperm_fixed and all(pruned_exact), results
assert not np.array_equal(adam_record['p50'][0], adam_record['p50'][-1])
assert results['first_epoch_ranking_distance'] > 0, results
assert results['laperm_accuracy'] > 0.8, results  # Chance: 0.1.
assert results['pruned_accuracy'] > 0.7, results
