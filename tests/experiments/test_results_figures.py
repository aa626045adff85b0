"""``python -m experiments.results figures``: the exact-permutation checks
behind RESULTS.md."""

import json
import pathlib
import shutil

import pytest

from experiments import cli
from experiments.results import cli as results_cli
from experiments.results import restore
import test_data  # Its IDX writer; pytest puts this directory on sys.path.


def _claim_another_shared_value(metrics_path: pathlib.Path) -> None:
  metrics = json.loads(metrics_path.read_text())
  metrics['config']['init']['value'] = 0.07
  metrics_path.write_text(json.dumps(metrics))


def test_checks_confirm_trained_runs_and_catch_a_wrong_config(
    tmp_path, capsys):
  (tmp_path / 'idx').mkdir()
  test_data._tiny_mnist(tmp_path / 'idx', train=300, test=50)  # pylint: disable=protected-access
  runs = tmp_path / 'runs'
  cli.run('f1', cli.parser().parse_args([
      'f1', '--quick', '--dataset', f'idx:{tmp_path / "idx"}',
      '--no-progress', '--seeds', '0,1', '--out', str(runs / 'f1'),
      # Steps large enough to swap zeros and shared values within 4 steps.
      '--set', 'optimizer.learning_rate=0.05']))
  # The same run, its config claiming another shared value: the
  # regenerated initial weights are then not those it trained from.
  shutil.copytree(runs / 'f1', runs / 'f1-wrong')
  for seed in (0, 1):
    _claim_another_shared_value(
        runs / 'f1-wrong' / 'laperm' / f'seed-{seed}' / 'metrics.json')

  out = tmp_path / 'out'
  assert results_cli.main(['figures', '--runs', str(runs),
                           '--out', str(out)]) == 0

  checks = json.loads((out / 'checks.json').read_text())['all_laperm_runs']
  exact = {name.removeprefix(str(runs) + '/'): check[
      'all_kernels_exact_permutation'] for name, check in checks.items()}
  assert exact == {'f1/laperm seed 0': True, 'f1/laperm seed 1': True,
                   'f1-wrong/laperm seed 0': False,
                   'f1-wrong/laperm seed 1': False}
  moved = checks[f'{runs}/f1/laperm seed 0']['fraction_moved']
  assert list(moved) == ["['head']['kernel']"]  # F1's one kernel.
  assert 0.0 < moved["['head']['kernel']"] <= 1.0
  # Figures whose runs are missing are skipped, each saying so.
  printed = capsys.readouterr().out
  assert 'skip conv figures' in printed and 'skip prune sweep' in printed
  assert sorted(path.name for path in out.iterdir()) == ['checks.json']
  # Seeds whose configs disagree are not one run: an error names the file.
  shutil.copytree(runs / 'f1', tmp_path / 'mixed')
  _claim_another_shared_value(
      tmp_path / 'mixed' / 'laperm' / 'seed-1' / 'metrics.json')
  with pytest.raises(ValueError, match=r"seed-1/metrics.json: config differs "
                     r".*seed-0's in \['init'\]"):
    restore.restore(tmp_path / 'mixed' / 'laperm')
