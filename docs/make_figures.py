"""Generates the README's pictures of the reconnection tools.

A small MLP (64-100-100-10, ReLU, uniform init) is trained on scikit-learn's
8x8 digits twice, with Adam and with LaPerm around the same Adam, and three
pictures are written to ``docs/images/``:

- ``weight_profiles.png``: the weight profiles of the Adam-trained kernels
  above those of their initialization (Figures 11-12 of the paper);
- ``training_monitor.png``: per epoch, the first layer's percentiles, the
  ranking distance between consecutive epochs and the validation loss, one
  column per optimizer (Figure 13);
- ``permutation_cycles.png``: the permutation of one weight vector of the
  second layer (the one with the median number of cycles) between the
  first two LaPerm syncs, as cycles (Figure 14).

Usage (about a minute on 2 CPU cores)::

    python docs/make_figures.py [--out docs/images] [--epochs 30]
"""

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn import datasets

import laperm_jax as lp
from laperm_jax import plots

LAYERS = (64, 100, 100, 10)
BATCH_SIZE = 50
SYNC_PERIOD = 20
LEARNING_RATE = 1e-3


def load_digits(seed=0):
  """Digits scaled to [0, 1], split 80/20 into train and validation."""
  digits = datasets.load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(x))
  split = int(0.8 * len(x))
  return (x[order[:split]], y[order[:split]]), (x[order[split:]],
                                                y[order[split:]])


def init_mlp(key):
  """Glorot-uniform kernels (the paper's MLP init, A.3) and zero biases."""
  params = {}
  keys = jax.random.split(key, len(LAYERS) - 1)
  for index, (key, fan_in, fan_out) in enumerate(
      zip(keys, LAYERS[:-1], LAYERS[1:])):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    params[f'Dense_{index}'] = {
        'kernel': jax.random.uniform(key, (fan_in, fan_out), jnp.float32,
                                     -limit, limit),
        'bias': jnp.zeros(fan_out),
    }
  return params


def forward(params, x):
  h = x
  for index in range(len(LAYERS) - 1):
    layer = params[f'Dense_{index}']
    h = h @ layer['kernel'] + layer['bias']
    if index < len(LAYERS) - 2:
      h = jax.nn.relu(h)
  return h


def loss_fn(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(
      forward(params, x), y).mean()


def train(tx, params, data, epochs, seed=0, on_step=None):
  """Trains; returns the final params and a Figure-13 record per epoch.

  For LaPerm, every epoch is measured on ``lp.synchronize(params)``: the
  weights a sync at that moment would give (an exact permutation of the
  initial ones), as the paper measures right after a sync.
  """
  (x_train, y_train), (x_val, y_val) = data
  opt_state = tx.init(params)
  uses_laperm = tx is not None and _holds_laperm(opt_state)

  @jax.jit
  def step(params, opt_state, x, y):
    grads = jax.grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def measured(params, opt_state):
    return lp.synchronize(params, opt_state) if uses_laperm else params

  rng = np.random.default_rng(seed)
  record = {key: [] for key in ('epoch', 'min', 'p15', 'p50', 'p85', 'max',
                                'distance_mean', 'distance_std', 'val_loss')}
  previous = measured(params, opt_state)
  count = 0
  for epoch in range(epochs + 1):
    if epoch:
      order = rng.permutation(len(x_train))
      for start in range(0, len(order) - BATCH_SIZE + 1, BATCH_SIZE):
        batch = order[start:start + BATCH_SIZE]
        params, opt_state = step(params, opt_state, x_train[batch],
                                 y_train[batch])
        count += 1
        if on_step is not None:
          on_step(count, measured(params, opt_state))
    current = measured(params, opt_state)
    stats = lp.weight_statistics(current['Dense_0']['kernel'])
    distance = lp.ranking_distance(previous, current)['Dense_0']['kernel']
    record['epoch'].append(epoch)
    for name, values in stats.items():
      record[name].append(np.asarray(values))
    record['distance_mean'].append(float(distance.mean))
    record['distance_std'].append(float(distance.std))
    record['val_loss'].append(float(loss_fn(current, x_val, y_val)))
    previous = current
  accuracy = float(np.mean(np.argmax(_logits(current, x_val), 1) == y_val))
  return current, {key: np.asarray(value) for key, value in record.items()
                   }, accuracy


def _logits(params, x):
  return np.asarray(forward(params, x))


def _holds_laperm(opt_state):
  return any(isinstance(leaf, lp.LaPermState) for leaf in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, lp.LaPermState)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=str(
      pathlib.Path(__file__).resolve().parent / 'images'))
  parser.add_argument('--epochs', type=int, default=30)
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  data = load_digits()
  initial = init_mlp(jax.random.key(0))

  adam_params, adam_record, adam_accuracy = train(
      optax.adam(LEARNING_RATE), initial, data, args.epochs)
  # The first two syncs of LaPerm, for the cycle picture.
  syncs = []
  def keep_first_syncs(count, synced):
    if count in (SYNC_PERIOD, 2 * SYNC_PERIOD):
      syncs.append(synced['Dense_1']['kernel'])
  laperm_params, laperm_record, laperm_accuracy = train(
      lp.laperm(optax.adam(LEARNING_RATE), SYNC_PERIOD), initial, data,
      args.epochs, on_step=keep_first_syncs)
  print(f'validation accuracy: Adam {adam_accuracy:.3f}, '
        f'LaPerm (k={SYNC_PERIOD}, synced) {laperm_accuracy:.3f}')
  kernels = lambda p: {name: {'kernel': layer['kernel']}
                       for name, layer in p.items()}
  print(plots.plot_weight_profiles(
      {'1 Adam-trained': kernels(adam_params), '2 initial': kernels(initial)},
      out / 'weight_profiles.png', dpi=72))
  print(plots.plot_training_monitor(
      {f'LaPerm (Adam, k={SYNC_PERIOD})': laperm_record, 'Adam': adam_record},
      out / 'training_monitor.png', layer_name='Dense_0 (64x100)', dpi=72))
  summary = lp.cycle_summary(syncs[0], syncs[1])
  # A typical weight vector: the median number of cycles.
  vector = int(np.argsort(summary.num_cycles, kind='stable')[
      len(summary.num_cycles) // 2])
  print(f'cycles between the first two syncs of Dense_1: per vector '
        f'{summary.num_cycles.mean():.1f} on average, longest '
        f'{summary.longest_cycle.max()}, {summary.fraction_moved.mean():.2f} '
        'of the entries moved')
  print(plots.plot_permutation_cycles(syncs[0], syncs[1],
                                      out / 'permutation_cycles.png',
                                      vector_index=vector, dpi=72))
  del laperm_params


if __name__ == '__main__':
  main()
