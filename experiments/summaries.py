"""``summary.json``: per run, statistics over its seeds and each seed's numbers.

One function computes a run's summary from its seeds' numbers, the keys
that every ``metrics.json`` holds too; training writes it (``report.py``)
and the results check recomputes it from the committed seed files
(``results/inputs.py``), so both agree by construction. NumPy only: the
results pipeline reads summaries without importing JAX.
"""

import math
from typing import Any, Mapping, Sequence

import numpy as np

# Each seed's numbers in a summary, named as in its metrics.json.
PER_SEED_KEYS = ('seed', 'best_epoch', 'best_step', 'best_val_accuracy',
                 'test_accuracy_of_best', 'final_test_accuracy', 'seconds')
# The accuracies summarized over seeds.
ACCURACIES = ('best_val_accuracy', 'test_accuracy_of_best',
              'final_test_accuracy')
# The losses (nats per label) summarized over seeds, and kept per seed,
# where every seed's file holds them (runs since the language model).
LOSSES = ('best_val_loss', 'test_loss_of_best', 'final_test_loss')


def bits(nats: float) -> float:
  """A loss in bits: per byte for a byte-level language model."""
  return nats / math.log(2)


def statistics(values: Sequence[float]) -> dict[str, float]:
  """Mean, standard deviation (``ddof=0``), min and max of ``values``."""
  values = np.asarray(values, np.float64)
  return {'mean': float(values.mean()), 'std': float(values.std()),
          'min': float(values.min()), 'max': float(values.max())}


def run_summary(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """A run's entry of ``summary.json`` from its seeds' numbers.

  Args:
    per_seed: Per seed, in training order, a mapping holding at least
      :data:`PER_SEED_KEYS` (a ``metrics.json`` does).

  Returns:
    The seeds, the statistics of each of :data:`ACCURACIES` (and of
    :data:`LOSSES` where every seed holds them), the seconds of all seeds
    (seeds trained together share theirs) and each seed's
    :data:`PER_SEED_KEYS` (and losses).
  """
  losses = LOSSES if all(key in seed for seed in per_seed
                         for key in LOSSES) else ()
  return {
      'seeds': [seed['seed'] for seed in per_seed],
      **{key: statistics([seed[key] for seed in per_seed])
         for key in ACCURACIES + losses},
      'seconds': sum(seed['seconds'] for seed in per_seed),
      'per_seed': [{key: seed[key] for key in PER_SEED_KEYS + losses}
                   for seed in per_seed],
  }
