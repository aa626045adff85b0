"""What a finished experiment shows: per-run files, a table, a summary, figures.

Every run has one :class:`RunResult` per seed, written to its
``metrics.json``; the table and ``summary.json`` give the mean, standard
deviation (over seeds, ``ddof=0``), min and max of the validation accuracy
(and loss) of the best weights, the test accuracy (and loss) of those
weights, and those of the last weights, and keep every seed's numbers.
"""

import dataclasses
import json
import pathlib
from typing import Any, Sequence

import ml_collections
import numpy as np

from experiments import monitor
from experiments import summaries


@dataclasses.dataclass
class RunResult:
  """What one training run produced.

  Attributes:
    name: The run's name.
    seed: The run's seed.
    history: One dict of metrics per record: at every evaluation and at the
      end of every epoch, with the ``epoch`` (1-based) and ``step`` (steps
      done) it was made at; train metrics are means since the last record.
    best_epoch: The epoch of the best validation score (accuracy, or loss
      with ``config.best_by = 'val_loss'``).
    best_step: Its step.
    best_val_accuracy: The validation accuracy there.
    best_val_loss: The validation loss there (mean cross-entropy per label,
      in nats).
    test_accuracy: Test accuracy of the best weights.
    final_test_accuracy: Test accuracy of the last epoch's weights.
    test_loss: Test loss of the best weights.
    final_test_loss: Test loss of the last epoch's weights.
    seconds: Wall time of the run, compilation included; seeds trained
      together share their call's time equally.
    monitor: The A.3 monitor entries (empty unless ``config.monitor``).
    state: The final train state.
    best_params: The best weights (as evaluated: synchronized for LaPerm).
  """

  name: str
  seed: int
  history: list[dict[str, float]]
  best_epoch: int
  best_step: int
  best_val_accuracy: float
  best_val_loss: float
  test_accuracy: float
  final_test_accuracy: float
  test_loss: float
  final_test_loss: float
  seconds: float
  monitor: list[dict[str, Any]]
  state: Any
  best_params: Any


def write_metrics(result: RunResult, config: ml_collections.ConfigDict,
                  path: pathlib.Path,
                  resumed: Sequence[dict[str, Any]] = ()) -> None:
  """Writes a run's config, per-epoch history and final numbers as JSON.

  ``config`` is the last resume's; ``resumed`` (``checkpoints``), written
  when not empty, says from which epoch on each changed setting held.
  """
  path.write_text(json.dumps({
      'name': result.name,
      'seed': result.seed,
      'config': json.loads(config.to_json()),
      'history': result.history,
      'best_epoch': result.best_epoch,
      'best_step': result.best_step,
      'best_val_accuracy': result.best_val_accuracy,
      'test_accuracy_of_best': result.test_accuracy,
      'final_test_accuracy': result.final_test_accuracy,
      'best_val_loss': result.best_val_loss,
      'test_loss_of_best': result.test_loss,
      'final_test_loss': result.final_test_loss,
      'seconds': result.seconds,
      'monitor': monitor.to_json(result.monitor),
      **({'resumed': list(resumed)} if resumed else {}),
  }, indent=1))

_COLUMNS = (('run', 24), ('optimizer', 10), ('seeds', 5), ('best ep', 8),
            ('val acc', 15), ('test acc', 15), ('final test', 15),
            ('seconds', 8))
_BITS_COLUMNS = (('run', 24), ('optimizer', 10), ('seeds', 5),
                 ('best step', 9), ('val bpb', 15), ('test bpb', 15),
                 ('final bpb', 15), ('seconds', 8))
_METRICS = {'best_val_accuracy': 'best_val_accuracy',
            'test_accuracy_of_best': 'test_accuracy',
            'final_test_accuracy': 'final_test_accuracy'}
_LOSSES = {'best_val_loss': 'best_val_loss',
           'test_loss_of_best': 'test_loss',
           'final_test_loss': 'final_test_loss'}


def _mean_std(values: Sequence[float]) -> str:
  if len(values) == 1:
    return f'{values[0]:.4f}'
  stats = summaries.statistics(values)
  return f'{stats["mean"]:.4f}+-{stats["std"]:.4f}'


def table(results: Sequence[Sequence[RunResult]],
          optimizer_names: Sequence[str], *,
          bits_per_byte: bool = False) -> str:
  """A plain-text table: one row per run, mean +- std over its seeds.

  ``test acc`` is the test accuracy of the weights that did best on
  validation, ``final test`` that of the last weights; for LaPerm both are
  measured on exactly synchronized weights. ``best ep`` is the median best
  epoch; ``seconds`` the wall time of all seeds. With ``bits_per_byte`` (a
  byte-level language model) the losses in bits per byte take the
  accuracies' place, and ``best step`` the best epoch's.
  """
  columns, fields = ((_BITS_COLUMNS, _LOSSES) if bits_per_byte
                     else (_COLUMNS, _METRICS))
  header = ' '.join(f'{name:>{width}}' for name, width in columns)
  rows = [header, '-' * len(header)]
  for seeds, optimizer in zip(results, optimizer_names):
    best = [result.best_step if bits_per_byte else result.best_epoch
            for result in seeds]
    convert = summaries.bits if bits_per_byte else float
    values = (seeds[0].name, optimizer, len(seeds), int(np.median(best)),
              *(_mean_std([convert(getattr(result, field))
                           for result in seeds])
                for field in fields.values()),
              f'{_seconds(seeds):.1f}')
    rows.append(' '.join(f'{value!s:>{width}}'
                         for value, (_, width) in zip(values, columns)))
  return '\n'.join(rows)


def _seconds(seeds: Sequence[RunResult]) -> float:
  """Wall time of a run's seeds (seeds trained together share theirs)."""
  return sum(result.seconds for result in seeds)


def _per_seed(result: RunResult) -> dict[str, Any]:
  return {'seed': result.seed, 'best_epoch': result.best_epoch,
          'best_step': result.best_step,
          **{key: getattr(result, field)
             for key, field in {**_METRICS, **_LOSSES}.items()},
          'seconds': result.seconds}


def write_summary(results: Sequence[Sequence[RunResult]], preset: str,
                  path: pathlib.Path) -> None:
  """Writes ``summary.json``: per run, ``summaries.run_summary``."""
  path.write_text(json.dumps({
      'preset': preset,
      'runs': {seeds[0].name: summaries.run_summary(
          [_per_seed(result) for result in seeds]) for seeds in results},
  }, indent=1))


def write_figures(results: Sequence[Sequence[RunResult]],
                  out: pathlib.Path) -> list[pathlib.Path]:
  """Writes the training monitor and each run's weight profiles (first seed).

  Uses ``laperm_jax.plots`` (matplotlib, the ``plots`` extra). When it is
  not installed, prints why and writes nothing.

  Returns:
    The paths written.
  """
  try:
    from laperm_jax import plots  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    print(f'Figures skipped: laperm_jax.plots is not available ({error}). '
          "Install the 'plots' extra to get them.")
    return []
  written = []
  monitored = {
      f'{seeds[0].name} {kernel}'.strip(): monitor.stack(entries)
      for seeds in results
      for kernel, entries in monitor.by_kernel(seeds[0].monitor).items()}
  if monitored:
    path = out / 'training_monitor.png'
    plots.plot_training_monitor(monitored, path)
    written.append(path)
  for seeds in results:
    path = out / f'{seeds[0].name}-weight_profiles.png'
    plots.plot_weight_profiles(seeds[0].best_params, path)
    written.append(path)
  return written
