"""The A.3 training monitor: how the first weight matrix changes (Figure 13).

At each evaluation it records the first kernel's per-vector percentiles
(``lp.weight_statistics``), the ranking distance from the previous
evaluation (``lp.ranking_distance``, divided by the vector length), and the
validation loss. ``stack`` turns the records into the arrays
``laperm_jax.plots.plot_training_monitor`` takes.
"""

from typing import Any

import jax
import numpy as np

import laperm_jax as lp

STATISTICS = ('min', 'p15', 'p50', 'p85', 'max')


@jax.jit
def _summarize(previous_kernel, kernel):
  return (lp.weight_statistics(kernel),
          lp.ranking_distance(previous_kernel, kernel))


def record(epoch: int, kernel: jax.Array, previous_kernel: jax.Array,
           val_loss: float) -> dict[str, Any]:
  """One monitor entry, as host values."""
  statistics, distance = _summarize(previous_kernel, kernel)
  entry = {name: np.asarray(value) for name, value in statistics.items()}
  entry.update(epoch=epoch, distance_mean=float(distance.mean),
               distance_std=float(distance.std), val_loss=float(val_loss))
  return entry


def stack(entries: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Entries over time as arrays: scalars ``(T,)``, statistics ``(T, vectors)``."""
  return {name: np.stack([np.asarray(entry[name]) for entry in entries])
          for name in entries[0]}


def to_json(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
  return [{name: np.asarray(value).tolist() for name, value in entry.items()}
          for entry in entries]


def from_json(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
  return [{name: (np.asarray(value, np.float32) if name in STATISTICS
                  else value) for name, value in entry.items()}
          for entry in entries]
