"""What a finished experiment shows: a table, a summary file and figures."""

import json
import pathlib
from typing import Sequence

from experiments import monitor
from experiments import train

_COLUMNS = (('run', 24), ('optimizer', 10), ('best ep', 8),
            ('val acc', 8), ('test acc', 9), ('final test', 11),
            ('seconds', 8))


def table(results: Sequence[train.RunResult],
          optimizer_names: Sequence[str]) -> str:
  """A plain-text table: one row per run.

  ``test acc`` is the test accuracy of the weights that did best on
  validation, ``final test`` that of the last epoch's; for LaPerm both are
  measured on exactly synchronized weights.
  """
  header = ' '.join(f'{name:>{width}}' for name, width in _COLUMNS)
  rows = [header, '-' * len(header)]
  for result, optimizer in zip(results, optimizer_names):
    values = (result.name, optimizer, result.best_epoch,
              f'{result.best_val_accuracy:.4f}',
              f'{result.test_accuracy:.4f}',
              f'{result.final_test_accuracy:.4f}', f'{result.seconds:.1f}')
    rows.append(' '.join(f'{value!s:>{width}}'
                         for value, (_, width) in zip(values, _COLUMNS)))
  return '\n'.join(rows)


def write_summary(results: Sequence[train.RunResult], preset: str,
                  path: pathlib.Path) -> None:
  path.write_text(json.dumps({
      'preset': preset,
      'runs': {result.name: {
          'best_epoch': result.best_epoch,
          'best_val_accuracy': result.best_val_accuracy,
          'test_accuracy_of_best': result.test_accuracy,
          'final_test_accuracy': result.final_test_accuracy,
          'seconds': result.seconds,
      } for result in results},
  }, indent=1))


def write_figures(results: Sequence[train.RunResult],
                  out: pathlib.Path) -> list[pathlib.Path]:
  """Writes the training monitor and each run's weight profiles.

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
  monitored = {result.name: monitor.stack(result.monitor)
               for result in results if result.monitor}
  if monitored:
    path = out / 'training_monitor.png'
    plots.plot_training_monitor(monitored, path)
    written.append(path)
  for result in results:
    path = out / f'{result.name}-weight_profiles.png'
    plots.plot_weight_profiles(result.best_params, path)
    written.append(path)
  return written
