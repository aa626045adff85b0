"""The A.3 training monitor: how the first weight matrix changes (Figure 13).

At each evaluation it records, for the first kernel (or the kernels
``config.monitor_kernels`` names, each entry then naming its kernel), the
per-vector percentiles (``lp.weight_statistics``), the ranking distance
from the previous evaluation (``lp.ranking_distance``, divided by the
vector length), and the validation loss. ``stack`` turns the records into the arrays
``laperm_jax.plots.plot_training_monitor`` takes.
"""

from typing import Any

import jax
import ml_collections
import numpy as np

import laperm_jax as lp
from experiments import models

STATISTICS = ('min', 'p15', 'p50', 'p85', 'max')
KERNEL = 'kernel'  # Names an entry's kernel when a run follows several.


def kernel_paths(config: ml_collections.ConfigDict,
                 params: Any) -> list[models.KeyPath]:
  """The paths of the kernels a run monitors (one seed's ``params``).

  Args:
    config: The run's config: ``monitor_kernels`` names them
      (``'decoder_1/mlp_1/kernel'``); empty, the first kernel alone.
    params: One seed's params.

  Raises:
    ValueError: A name that is not a kernel's path.
  """
  if not config.monitor_kernels:
    return [models.first_kernel_path(params)]
  known = models.kernel_paths(params)
  paths = [tuple(name.split('/')) for name in config.monitor_kernels]
  unknown = [name for name, path in zip(config.monitor_kernels, paths)
             if path not in known]
  if unknown:
    raise ValueError(f'monitor_kernels: {unknown} name no kernel; the kernels '
                     f'are {["/".join(path) for path in known]}.')
  return paths


@jax.jit
def _summarize(previous_kernel, kernel):
  return (lp.weight_statistics(kernel),
          lp.ranking_distance(previous_kernel, kernel))


def record(epoch: int, step: int, kernel: jax.Array,
           previous_kernel: jax.Array, val_loss: float) -> dict[str, Any]:
  """One monitor entry, as host values, made after ``step`` steps."""
  statistics, distance = _summarize(previous_kernel, kernel)
  entry = {name: np.asarray(value) for name, value in statistics.items()}
  entry.update(epoch=epoch, step=step, distance_mean=float(distance.mean),
               distance_std=float(distance.std), val_loss=float(val_loss))
  return entry


def stack(entries: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Entries over time as arrays: scalars ``(T,)``, statistics ``(T, vectors)``.

  The entries are of one kernel (:func:`by_kernel`); its name is left out.
  """
  return {name: np.stack([np.asarray(entry[name]) for entry in entries])
          for name in entries[0] if name != KERNEL}


def by_kernel(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
  """Entries grouped by the kernel they follow, in order of first entry.

  A run that monitors several kernels (``config.monitor_kernels``) names
  each entry's kernel; the first kernel's entries are unnamed (key ``''``).
  """
  groups = {}
  for entry in entries:
    groups.setdefault(entry.get(KERNEL, ''), []).append(entry)
  return groups


def to_json(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
  return [{name: np.asarray(value).tolist() for name, value in entry.items()}
          for entry in entries]


def from_json(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
  return [{name: (np.asarray(value, np.float32) if name in STATISTICS
                  else value) for name, value in entry.items()}
          for entry in entries]
