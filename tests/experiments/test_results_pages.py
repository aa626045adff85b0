"""docs/RESULTS.md and README.md agree with the committed runs, and one reruns.

The tables of both pages are rendered by ``python -m experiments.results
tables`` from ``docs/results/``; ``--check`` must pass, and must fail once an artifact
changes. ``f1 --seed 0`` on Fashion-MNIST (seconds) is rerun and must give
the committed history of seed 0 bit for bit: a change that moves results has
to regenerate the artifacts in the same commit. The committed bits are
those of XLA's CPU code with fused multiply-add (x86-64 with AVX2 or
AVX-512); without FMA, F1's accuracies stay the same but its train loss
moves in the last bits (docs/RESULTS.md, section 1).
"""

import json
import pathlib
import shutil

import pytest

from experiments import cli
from experiments.results import cli as results_cli
from experiments.results import pages as pages_lib

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_RESULTS = _ROOT / 'docs' / 'results'
_FASHION_MNIST = pathlib.Path('/usr/share/datasets/fashion-mnist')


def test_pages_match_their_artifacts(capsys):
  assert results_cli.main(['tables', '--check']) == 0, (
      capsys.readouterr().out)


def test_check_fails_when_an_artifact_changes(tmp_path, capsys):
  results = tmp_path / 'results'
  shutil.copytree(_RESULTS, results)
  pages = [tmp_path / 'RESULTS.md', tmp_path / 'README.md']
  shutil.copyfile(_ROOT / 'docs' / 'RESULTS.md', pages[0])
  shutil.copyfile(_ROOT / 'README.md', pages[1])
  arguments = ['tables', '--results', str(results), '--pages',
               *map(str, pages)]
  assert results_cli.main([*arguments, '--check']) == 0
  path = results / 'f2' / 'laperm' / 'seed-3' / 'metrics.json'
  metrics = json.loads(path.read_text())
  metrics['test_accuracy_of_best'] += 0.2  # Mean over 20 seeds: +1 point.
  path.write_text(json.dumps(metrics))
  before = [page.read_text() for page in pages]
  assert results_cli.main([*arguments, '--check']) == 1
  assert 'differs' in capsys.readouterr().out
  assert [page.read_text() for page in pages] == before  # --check writes not.
  assert results_cli.main(arguments) == 0  # Rewrites both pages...
  assert results_cli.main([*arguments, '--check']) == 0  # ...which then agree.
  assert all(page.read_text() != text for page, text in zip(pages, before))


def test_unknown_or_missing_tables_are_errors(tmp_path):
  start = f'{pages_lib.GENERATED} -->\n'
  with pytest.raises(ValueError, match="unknown table 'nope'"):
    pages_lib.render(f'<!-- nope:start {start}<!-- nope:end -->', _RESULTS)
  with pytest.raises(FileNotFoundError, match="'vit'"):
    pages_lib.render(f'<!-- vit:start {start}<!-- vit:end -->', tmp_path)


def test_a_page_without_marked_tables_is_an_error(tmp_path, capsys):
  # Markers written otherwise would leave the page's tables unchecked.
  page = tmp_path / 'RESULTS.md'
  page.write_text((_ROOT / 'docs' / 'RESULTS.md').read_text().replace(
      pages_lib.GENERATED, '(generated; do not edit)'))
  with pytest.raises(SystemExit) as exit_info:
    results_cli.main(['tables', '--check', '--pages', str(page)])
  assert exit_info.value.code == 2
  assert f'error: {page} holds no table marked' in capsys.readouterr().err


@pytest.mark.skipif(not _FASHION_MNIST.is_dir(),
                    reason='scripts/get_fashion_mnist.sh installs the data')
def test_f1_seed_0_reproduces_its_committed_history(tmp_path):
  committed = json.loads(
      (_RESULTS / 'f1' / 'laperm' / 'seed-0' / 'metrics.json').read_text())
  # The committed run trained seeds 0-19 together in one step; seed 0 alone
  # gives the same bits.
  cli.run('f1', cli.parser().parse_args([
      'f1', '--dataset', f'idx:{_FASHION_MNIST}', '--seed', '0',
      '--no-progress', '--out', str(tmp_path)]))
  rerun = json.loads((tmp_path / 'laperm' / 'metrics.json').read_text())
  for metrics in (committed, rerun):
    del metrics['seconds']
  assert rerun == committed
