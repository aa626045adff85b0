"""Writes the notebooks of this folder from the cells below.

The ``.ipynb`` files are generated, without outputs: edit the cells here and
run ``python notebooks/generate.py`` (``--check`` fails when a notebook
differs from what this script writes; ``tests/test_notebooks.py`` runs it).
Needs ``nbformat``.

Every notebook runs top to bottom on CPU and on a Colab GPU or TPU runtime.
Environment variables they read:

- ``LAPERM_NOTEBOOK_SETTINGS``: ``quick`` (the CI smoke run), ``cpu`` (the
  default on CPU; the README's figures) or ``accelerator`` (the default on a
  GPU or TPU: a wider network, more epochs).
- ``LAPERM_FIGURES_DIR``: where figures are written (default ``figures``
  in the working directory); ``docs/make_figures.py`` points it at a
  temporary folder and copies the README's figures into ``docs/images``.
"""

import argparse
import pathlib
import sys

import nbformat

HERE = pathlib.Path(__file__).resolve().parent
# No repository URL is published in README.md or setup.cfg: the notebooks
# install from this one, and name it in one variable (REPO) a user can change.
REPOSITORY = 'https://github.com/laperm-jax/laperm-jax'
COLAB = 'https://colab.research.google.com/github/' + REPOSITORY.removeprefix(
    'https://github.com/') + '/blob/main/notebooks/'
BADGE = ('[![Open In Colab](https://colab.research.google.com/assets/'
         'colab-badge.svg)]({url})')
PAPER = ('> Qiu & Suda, *Train-by-Reconnect: Decoupling Locations of Weights '
         'from Their Values*,\n> NeurIPS 2020, '
         '[arXiv:2003.02570](https://arxiv.org/abs/2003.02570).')

INSTALL = f'''\
# On Colab (or wherever laperm-jax is not installed), install it from the
# project's repository. REPO is that repository: change it to use a fork.
REPO = '{REPOSITORY}'
try:
  import laperm_jax  # noqa: F401
except ImportError:
  %pip install --quiet "laperm-jax[plots] @ git+{{REPO}}" flax scikit-learn'''

SETTINGS = '''\
print(jax.devices())
# 'accelerator' on a GPU or TPU (Runtime > Change runtime type on Colab),
# 'cpu' otherwise; LAPERM_NOTEBOOK_SETTINGS=quick is the CI smoke run.
SETTINGS = os.environ.get('LAPERM_NOTEBOOK_SETTINGS') or (
    'cpu' if jax.default_backend() == 'cpu' else 'accelerator')
assert SETTINGS in ('quick', 'cpu', 'accelerator'), SETTINGS
# Figures are written here; docs/make_figures.py sets it.
FIGURES = pathlib.Path(os.environ.get('LAPERM_FIGURES_DIR', 'figures'))
FIGURES.mkdir(parents=True, exist_ok=True)'''

DATA = '''\
# scikit-learn's 8x8 digits: 1797 images, shipped inside scikit-learn.
digits = datasets.load_digits()
x = (digits.data / 16.0).astype(np.float32)  # (1797, 64), pixels in [0, 1]
y = digits.target.astype(np.int32)
order = np.random.default_rng(0).permutation(len(x))
split = int(0.8 * len(x))
x_train, y_train = x[order[:split]], y[order[:split]]
# Held out; nothing is tuned or selected on it.
x_test, y_test = x[order[split:]], y[order[split:]]
print(f'{len(x_train)} training and {len(x_test)} held-out images, '
      '10 classes (chance: 10%)')'''

MLP = '''\
class MLP(nn.Module):
  """ReLU MLP with He-uniform kernels and zero biases (the paper's A.3 MLP)."""
  hidden: tuple = HIDDEN

  @nn.compact
  def __call__(self, x):
    for units in self.hidden:
      x = nn.relu(nn.Dense(units, kernel_init=nn.initializers.he_uniform())(x))
    return nn.Dense(10, kernel_init=nn.initializers.he_uniform())(x)


model = MLP()
initial = jax.jit(model.init)(jax.random.key(0), x_train[:1])['params']
print(jax.tree.map(jnp.shape, initial))'''

BATCHES = '''\
def batches(rng):
  """One epoch of shuffled training batches."""
  order = rng.permutation(len(x_train))
  for start in range(0, len(order) - BATCH_SIZE + 1, BATCH_SIZE):
    batch = order[start:start + BATCH_SIZE]
    yield x_train[batch], y_train[batch]'''

# The train step of notebooks 01 and 02.
TRAIN_STEP = '''
def loss_and_logits(params, x, y):
  logits = model.apply({'params': params}, x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, logits


@jax.jit
def train_step(state, x, y):
  grads = jax.grad(lambda p: loss_and_logits(p, x, y)[0])(state.params)
  return state.apply_gradients(grads=grads)


@jax.jit
def evaluate(params):
  loss, logits = loss_and_logits(params, x_test, y_test)
  return loss, jnp.mean(jnp.argmax(logits, axis=-1) == y_test)


synchronize = jax.jit(lp.synchronize)'''

BITWISE = '''\
def same_values(a, b):
  """Whether every weight vector (column) of ``a`` holds exactly the values of
  the same column of ``b``, compared as float32 bit patterns."""
  bits = lambda w: np.sort(np.asarray(w, np.float32).view(np.uint32), axis=0)
  return np.array_equal(bits(a), bits(b))'''


def md(text):
  return nbformat.v4.new_markdown_cell(text.strip('\n'))


def code(text):
  return nbformat.v4.new_code_cell(text.strip('\n'))


def title(name, heading, body):
  return md(f'# {heading}\n\n' + BADGE.format(url=COLAB + name) + '\n\n'
            + body.strip('\n') + '\n\n' + PAPER)


# --------------------------------------------------------------------------
# 01: quick start.

QUICK_START = [
    title('01_quick_start.ipynb', 'LaPerm quick start: train a Flax network '
          'by reconnecting it', '''
Lookahead Permutation (LaPerm) trains a network without ever changing its
weight *values*: every weight keeps one of its random initial values, and
training only decides **where** each value sits. Any inner optimizer (Adam
here, as in the paper) proposes moves as usual; every `k` steps each weight
vector (all the weights feeding one output unit) is replaced by its sorted
initial values, placed in the rank order of the current weights.

This notebook trains one Flax MLP on scikit-learn's 8x8 digits (shipped with
scikit-learn: no download) twice, with Adam and with
`lp.laperm(optax.adam(...), k)` inside `optax.chain`, compares their
accuracy, checks **bit for bit** that every LaPerm-trained kernel is a
permutation of its initial values, and draws the training curves and the
weight profiles. About a minute on a CPU; a GPU or TPU runtime picks a wider
network and more epochs.
'''),
    code(INSTALL),
    code('''
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state
from IPython.display import Image, display
from sklearn import datasets

import laperm_jax as lp
from laperm_jax import plots
''' + '\n' + SETTINGS + '''
HIDDEN, EPOCHS = {'quick': ((100, 100), 8), 'cpu': ((100, 100), 30),
                  'accelerator': ((512, 512), 60)}[SETTINGS]
BATCH_SIZE, LEARNING_RATE, SYNC_PERIOD = 50, 1e-3, 20
print(f'settings {SETTINGS!r}: hidden layers {HIDDEN}, {EPOCHS} epochs, '
      f'batch {BATCH_SIZE}, k = {SYNC_PERIOD}')
'''),
    md('## Data and model'),
    code(DATA),
    code(MLP),
    md('''
## One training loop for both optimizers

A plain Flax `TrainState`: LaPerm is only another optax transformation.
LaPerm permutes the kernels (leaves with `ndim >= 2`); biases follow Adam
alone, as in the paper. Between syncs the weights drift off their initial
values, so LaPerm is evaluated on `lp.synchronize(params, opt_state)`: the
weights a sync would give right now, an exact permutation of the initial
ones.
'''),
    code(TRAIN_STEP + '''
''' + '\n\n' + BATCHES + '''


def train(tx, uses_laperm, seed=0):
  state = train_state.TrainState.create(apply_fn=model.apply, params=initial,
                                        tx=tx)
  rng = np.random.default_rng(seed)
  history = {'epoch': [], 'loss': [], 'accuracy': []}
  for epoch in range(EPOCHS + 1):
    for x, y in (batches(rng) if epoch else ()):
      state = train_step(state, x, y)
    params = (synchronize(state.params, state.opt_state) if uses_laperm
              else state.params)
    loss, accuracy = evaluate(params)
    history['epoch'].append(epoch)
    history['loss'].append(float(loss))
    history['accuracy'].append(float(accuracy))
  return params, history
'''),
    code('''
clip = optax.clip_by_global_norm(1.0)
adam = optax.chain(clip, optax.adam(LEARNING_RATE))
laperm = optax.chain(clip, lp.laperm(optax.adam(LEARNING_RATE), SYNC_PERIOD))

adam_params, adam_history = train(adam, uses_laperm=False)
laperm_params, laperm_history = train(laperm, uses_laperm=True)
print(f"held-out accuracy after {EPOCHS} epochs: "
      f"Adam {adam_history['accuracy'][-1]:.3f}, "
      f"LaPerm (k={SYNC_PERIOD}, synced) {laperm_history['accuracy'][-1]:.3f}")
'''),
    code('''
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
'''),
    md('''
## The trained kernels are permutations of their initial values

Compared as float32 bit patterns, column by column: every weight vector of
a LaPerm-trained kernel holds exactly its initial values, in another order.
Adam's kernels hold new values.
'''),
    code(BITWISE + '''


laperm_exact, adam_exact = [], []
for name in initial:
  kernel = initial[name]['kernel']
  laperm_exact.append(same_values(laperm_params[name]['kernel'], kernel))
  adam_exact.append(same_values(adam_params[name]['kernel'], kernel))
  moved = np.mean(np.asarray(laperm_params[name]['kernel'])
                  != np.asarray(kernel))
  print(f'{name} {kernel.shape}: LaPerm permutation: {laperm_exact[-1]} '
        f'({moved:.0%} of the weights moved), '
        f'Adam permutation: {adam_exact[-1]}')
assert all(laperm_exact) and not any(adam_exact)
'''),
    md('''
## Weight profiles

Each line is one weight vector, sorted (the paper's Figures 11-12). The
profiles of the Adam-trained kernels (top) stay close to those of their
random initialization (bottom): much of what training does can be done by
reordering. LaPerm's profiles *are* the initial ones, by construction.
'''),
    code('''
kernels = lambda params: {name: {'kernel': layer['kernel']}
                          for name, layer in params.items()}
path = plots.plot_weight_profiles(
    {'1 Adam-trained': kernels(adam_params), '2 initial': kernels(initial)},
    FIGURES / 'weight_profiles.png', dpi=72)
display(Image(filename=str(path)))
'''),
    code('''
results = {
    'settings': SETTINGS,
    'epochs': EPOCHS,
    'adam_accuracy': adam_history['accuracy'][-1],
    'laperm_accuracy': laperm_history['accuracy'][-1],
    'laperm_kernels_are_permutations': all(laperm_exact),
}
print('RESULTS', json.dumps(results))
assert results['laperm_accuracy'] > 0.8, results  # Chance: 0.1.
assert results['adam_accuracy'] > 0.8, results
'''),
]


# --------------------------------------------------------------------------
# 02: reconnection tools.

RECONNECTION = [
    title('02_reconnection.ipynb', 'Reconnecting a pruned network, and '
          'watching LaPerm reorder', '''
LaPerm learns by reordering, so a pruned network keeps its zeros and
training decides where they go: it *reconnects* the network. This notebook

- prunes a Flax MLP with `lp.random_prune` (the paper's Section 5.4: an
  exact number of zeros per kernel, the first layer capped at 20%) and
  trains it with LaPerm: same zeros and same nonzero values before and after,
  in new places;
- monitors the first layer during training as in the paper's Figure 13
  (`lp.weight_statistics`, `lp.ranking_distance`,
  `plots.plot_training_monitor`): under LaPerm the weight distribution is
  fixed and only the ranking moves, under Adam it spreads;
- draws how far each weight moved in rank (`lp.ranking_distances`), and the
  permutation of one weight vector between two syncs as disjoint cycles
  (`lp.cycle_summary`, `plots.plot_permutation_cycles`, Figure 14).

On scikit-learn's 8x8 digits (shipped with scikit-learn: no download).
'''),
    code(INSTALL),
    code('''
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state
from IPython.display import Image, display
from sklearn import datasets

import laperm_jax as lp
from laperm_jax import plots
''' + '\n' + SETTINGS + '''
HIDDEN, EPOCHS = {'quick': ((100, 100), 8), 'cpu': ((100, 100), 30),
                  'accelerator': ((512, 512), 60)}[SETTINGS]
BATCH_SIZE, LEARNING_RATE, SYNC_PERIOD, PRUNE_RATE = 50, 1e-3, 20, 0.5
print(f'settings {SETTINGS!r}: hidden layers {HIDDEN}, {EPOCHS} epochs, '
      f'batch {BATCH_SIZE}, k = {SYNC_PERIOD}')
'''),
    md('## Data, model, and a pruned initialization'),
    code(DATA),
    code(MLP),
    md('''
`lp.random_prune` zeros exactly `round(rate * n)` entries of each kernel,
uniformly at random; biases are never pruned, and the first layer is pruned
at most 20% (the paper's A.5.4). It returns the rate applied and the exact
counts per leaf.
'''),
    code('''
pruned = lp.random_prune(jax.random.key(1), initial, PRUNE_RATE)
for name in initial:
  print(f"{name}: pruned {float(pruned.rates[name]['kernel']):.0%}, "
        f"{int(pruned.num_nonzero[name]['kernel'])} nonzero of "
        f"{initial[name]['kernel'].size}")
'''),
    md('''
## Training with a monitor

Each epoch records the first layer's weight statistics (per weight vector:
min, 15th, 50th, 85th percentiles, max), the ranking distance to the
previous epoch (per entry `|rank before - rank after|` within its weight
vector, over the vector length) and the held-out loss. LaPerm is measured on
`lp.synchronize(params, opt_state)`, the weights right after a sync. The
first two syncs of the unpruned LaPerm run are kept for the cycle picture.
'''),
    code(TRAIN_STEP + '''


@jax.jit
def monitor(previous, current):
  """Figure 13's record of one epoch: the first layer's statistics, its
  ranking distance to the previous epoch, and the held-out loss."""
  before, after = previous['Dense_0']['kernel'], current['Dense_0']['kernel']
  return (lp.weight_statistics(after), lp.ranking_distance(before, after),
          evaluate(current))
''' + '\n\n' + BATCHES + '''


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
    for x, y in (batches(rng) if epoch else ()):
      state = train_step(state, x, y)
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
'''),
    code('''
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
'''),
    md('''
### The training monitor (Figure 13)

Top: each weight vector's 15th, 50th (red) and 85th percentiles and the
layer's min and max. Under LaPerm these are flat lines, since the values never
change (the pruned run's median is 0: its first layer is 20% zeros); under
Adam the distribution spreads. Middle: the ranking distance between
consecutive epochs, large early and shrinking as training settles. Bottom:
the held-out loss.
'''),
    code('''
layer = f"Dense_0 ({'x'.join(map(str, initial['Dense_0']['kernel'].shape))})"
path = plots.plot_training_monitor(
    {f'LaPerm (Adam, k={SYNC_PERIOD})': laperm_record,
     f'LaPerm, {PRUNE_RATE:.0%} pruned': pruned_record,
     'Adam': adam_record},
    FIGURES / 'training_monitor.png', layer_name=layer, dpi=72)
display(Image(filename=str(path)))
'''),
    md('''
### The pruned network was reconnected

Its weight profiles before and after training are the same, zeros included,
bit for bit; what changed is which inputs each unit is connected to.
'''),
    code(BITWISE + '''


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
  pruned_exact.append(same_values(after, before)
                      and np.sum(after == 0) == np.sum(before == 0))
  rewired = np.mean((before != 0) != (after != 0))
  print(f'{name}: same values and zeros: {pruned_exact[-1]}, '
        f'{rewired:.0%} of the connections switched on or off')
assert all(pruned_exact)
'''),
    code('''
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
'''),
    md('''
### How far each weight moved in rank

`lp.ranking_distances(before, after)` gives, per entry, how many places it
moved in the rank order of its weight vector: here from the initialization to
the end of LaPerm training, over the vector length.
'''),
    code('''
kernels = lambda params: {name: {'kernel': layer['kernel']}
                          for name, layer in params.items()}
distances = jax.jit(lp.ranking_distances)(kernels(initial),
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
'''),
    md('''
### One permutation as cycles (Figure 14)

Between the first two syncs (steps `k` and `2k`), each weight vector of
`Dense_1` went through a permutation of its values. `lp.cycle_summary`
splits each into disjoint cycles; the picture shows one typical vector (the
median number of cycles) on a circle of its values in ascending order.
Early Adam steps are small, so most cycles swap values of nearby rank.
'''),
    code('''
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
'''),
    code('''
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
'''),
]


# --------------------------------------------------------------------------
# 03: weight-agnostic networks.

WEIGHT_AGNOSTIC = [
    title('03_weight_agnostic.ipynb', 'Weight-agnostic networks: every '
          'weight is 0 or one shared value', '''
The paper's Section 5.5: since LaPerm never changes weight values, a network
whose weights are all **0 or one shared value** can still be trained, by
reconnecting it. Two bias-free ReLU networks, as in the paper:

- **F1**: one dense layer (here 64 -> 10), 60% of the weights equal to 0.08,
  the rest 0, as in the paper;
- **F2**: 64 -> 128 -> 64 -> 10. The paper keeps 10% of its weights (value
  0.03) on MNIST's 784 inputs; with the 64 pixels of digits that leaves about
  6 inputs per first-layer unit, and it learns little, so here 50% of the
  weights are 0.1, the rest 0. Even so F2 stays well below F1 on digits.

`lp.shared_value` builds the initial weights; `lp.laperm` moves them. Since
the networks are bias-free and ReLU is positively homogeneous, multiplying
the shared value by any positive factor scales the logits and leaves every
prediction unchanged: what they learned is the wiring alone, which the
notebook checks by evaluating them with other shared values. On
scikit-learn's 8x8 digits (shipped with scikit-learn: no download) instead
of MNIST.
'''),
    code(INSTALL),
    code('''
import functools
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state
from sklearn import datasets

import laperm_jax as lp
''' + '\n' + SETTINGS + '''
EPOCHS = {'quick': 8, 'cpu': 40, 'accelerator': 100}[SETTINGS]
BATCH_SIZE, LEARNING_RATE = 50, 3e-3
# A weight moves from 0 to the shared value only once Adam has pushed it past
# the gap between them: longer sync periods than for a random init.
NETWORKS = {  # name: (hidden layers, shared value, fraction nonzero, k)
    'F1': ((), 0.08, 0.6, 100),
    'F2': ((128, 64), 0.1, 0.5, 100),  # The paper: 0.03, 10% on MNIST.
}
print(f'settings {SETTINGS!r}: {EPOCHS} epochs, batch {BATCH_SIZE}')
'''),
    md('## Data and the two networks'),
    code(DATA + '''
# Standardized with the training pixels' mean and standard deviation, as the
# paper does for MNIST: centered inputs give F2's ReLUs something to cut.
mean, std = x_train.mean(), x_train.std()
x_train, x_test = (x_train - mean) / std, (x_test - mean) / std'''),
    code('''
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
'''),
    md('''
## Training by reconnection

Adam proposes moves; every `k` steps LaPerm puts the initial values back, in
the new rank order. Accuracy is measured on `lp.synchronize`d weights, which
hold only 0 and the shared value.
'''),
    code('''
synchronize = jax.jit(lp.synchronize)
''' + '\n\n' + BATCHES + '''


@functools.partial(jax.jit, static_argnums=0)
def accuracy(model, params):
  logits = model.apply({'params': params}, x_test)
  return jnp.mean(jnp.argmax(logits, axis=-1) == y_test)


def train(name, seed=0):
  model, sync_period = models[name], NETWORKS[name][3]

  @jax.jit
  def train_step(state, x, y):
    def loss_fn(params):
      logits = model.apply({'params': params}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return state.apply_gradients(grads=jax.grad(loss_fn)(state.params))

  tx = lp.laperm(optax.adam(LEARNING_RATE), sync_period)
  state = train_state.TrainState.create(apply_fn=model.apply,
                                        params=initial[name], tx=tx)
  rng = np.random.default_rng(seed)
  history = []
  for epoch in range(EPOCHS + 1):
    for x, y in (batches(rng) if epoch else ()):
      state = train_step(state, x, y)
    params = synchronize(state.params, state.opt_state)
    history.append(float(accuracy(model, params)))
  return params, history


trained, histories = {}, {}
for name in NETWORKS:
  trained[name], histories[name] = train(name)
  print(f'{name}: held-out accuracy {histories[name][0]:.3f} with random '
        f'connections, {histories[name][-1]:.3f} after {EPOCHS} epochs')
'''),
    code('''
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
'''),
    md('''
## What F1 learned: its wiring

F1 has one weight vector per class: the 64 pixels connected to that class's
output, here drawn as 8x8 images (black: connected, weight 0.08). Training
turned random wirings into digit-like templates.
'''),
    code('''
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
'''),
    md('''
## Still 0 or the shared value, and agnostic to that value

Every trained kernel holds exactly its initial values (the same number of
zeros and of shared values per weight vector, bit for bit). Then every
nonzero weight is replaced by other shared values: the predictions do not
depend on it (up to float rounding), as long as it is positive. A negative
value inverts what the network learned.
'''),
    code(BITWISE + '''


def with_shared_value(params, value):
  return jax.tree.map(lambda w: jnp.where(w != 0, value, 0.0).astype(w.dtype),
                      params)


exact = {name: all(same_values(trained[name][layer]['kernel'],
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
'''),
    code('''
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
'''),
]

NOTEBOOKS = {
    '01_quick_start.ipynb': QUICK_START,
    '02_reconnection.ipynb': RECONNECTION,
    '03_weight_agnostic.ipynb': WEIGHT_AGNOSTIC,
}


def build(name):
  """The notebook ``name`` as a ``nbformat`` node, without outputs."""
  notebook = nbformat.v4.new_notebook()
  notebook.cells = NOTEBOOKS[name]
  # Stable cell ids, so that regenerating changes nothing.
  for index, cell in enumerate(notebook.cells):
    cell.id = f'cell-{index:02d}'
  notebook.metadata = {
      'colab': {'name': name, 'provenance': []},
      'kernelspec': {'display_name': 'Python 3', 'language': 'python',
                     'name': 'python3'},
      'language_info': {'name': 'python'},
  }
  nbformat.validate(notebook)
  return notebook


def render(name):
  return nbformat.writes(build(name)) + '\n'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--check', action='store_true',
                      help='fail when a notebook differs from its cells here')
  args = parser.parse_args()
  stale = []
  for name in NOTEBOOKS:
    path = HERE / name
    text = render(name)
    if args.check:
      if not path.exists() or path.read_text() != text:
        stale.append(name)
    else:
      path.write_text(text)
      print(path)
  if stale:
    sys.exit(f'{", ".join(stale)} differ from notebooks/generate.py: run '
             '`python notebooks/generate.py`.')


if __name__ == '__main__':
  main()
