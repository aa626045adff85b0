"""What the notebooks of this folder share: settings, data, model, train step.

Not part of the library: the notebooks import it from this folder (their
first cell puts a clone of the repository on ``sys.path`` where laperm-jax
is not installed, e.g. on Colab). Environment variables read by
:func:`settings`:

- ``LAPERM_NOTEBOOK_SETTINGS``: ``quick`` (the CI smoke run), ``cpu`` (the
  default on CPU; the README's figures) or ``accelerator`` (the default on a
  GPU or TPU: a wider network, more epochs).
- ``LAPERM_FIGURES_DIR``: where figures are written (default ``figures``
  in the working directory); ``python -m experiments.results notebooks``
  points it at a temporary folder and copies the README's figures into
  ``docs/images``.
"""

import functools
import os
import pathlib

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn import datasets

SETTINGS = ('quick', 'cpu', 'accelerator')


def settings() -> tuple[str, pathlib.Path]:
  """The notebook's settings and the folder its figures go to (created)."""
  name = os.environ.get('LAPERM_NOTEBOOK_SETTINGS') or (
      'cpu' if jax.default_backend() == 'cpu' else 'accelerator')
  if name not in SETTINGS:
    raise ValueError(f'LAPERM_NOTEBOOK_SETTINGS={name!r}: expected one of '
                     f'{SETTINGS}.')
  figures = pathlib.Path(os.environ.get('LAPERM_FIGURES_DIR', 'figures'))
  figures.mkdir(parents=True, exist_ok=True)
  return name, figures


def load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """scikit-learn's 8x8 digits (1797 images, shipped inside scikit-learn).

  Returns:
    ``x_train, y_train, x_test, y_test``: 80% of the images for training, the
    rest held out (nothing is tuned or selected on them); pixels as float32
    in [0, 1], flattened to 64 features; labels as int32.
  """
  digits = datasets.load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(x))
  split = int(0.8 * len(x))
  print(f'{split} training and {len(x) - split} held-out images, '
        '10 classes (chance: 10%)')
  return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


def batches(rng: np.random.Generator, x: np.ndarray, y: np.ndarray,
            batch_size: int):
  """Yields one epoch of shuffled ``(x, y)`` batches (the last partial one is
  dropped)."""
  order = rng.permutation(len(x))
  for start in range(0, len(order) - batch_size + 1, batch_size):
    batch = order[start:start + batch_size]
    yield x[batch], y[batch]


class MLP(nn.Module):
  """ReLU MLP with He-uniform kernels and zero biases (the paper's A.3 MLP)."""
  hidden: tuple[int, ...]

  @nn.compact
  def __call__(self, x):
    for units in self.hidden:
      x = nn.relu(nn.Dense(units, kernel_init=nn.initializers.he_uniform())(x))
    return nn.Dense(10, kernel_init=nn.initializers.he_uniform())(x)


def _loss_and_logits(apply_fn, params, x, y):
  logits = apply_fn({'params': params}, x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, logits


@jax.jit
def train_step(state, x, y):
  """One step of a Flax ``TrainState`` on the cross-entropy of ``x, y``."""
  grads = jax.grad(
      lambda p: _loss_and_logits(state.apply_fn, p, x, y)[0])(state.params)
  return state.apply_gradients(grads=grads)


@functools.partial(jax.jit, static_argnums=0)
def evaluate(apply_fn, params, x, y):
  """The mean cross-entropy and the accuracy of ``params`` on ``x, y``."""
  loss, logits = _loss_and_logits(apply_fn, params, x, y)
  return loss, jnp.mean(jnp.argmax(logits, axis=-1) == y)


def same_values(a, b) -> bool:
  """Whether every weight vector (column) of ``a`` holds exactly the values of
  the same column of ``b``, compared as float32 bit patterns."""
  bits = lambda w: np.sort(np.asarray(w, np.float32).view(np.uint32), axis=0)
  return np.array_equal(bits(a), bits(b))
