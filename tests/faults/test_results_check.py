"""``tables --check`` against edits too small for the pages and stray files.

Each test damages a copy of ``docs/results`` (and of the two pages) as a
hand edit or a stale collection would, and expects a line naming the file
(and the key), exit status 1 from ``--check`` and nothing written; or, for
files no table declares, exit status 2 from ``tables`` too, with the pages
and ``MANIFEST.json`` unchanged.
"""

import json
import pathlib
import shutil

import pytest

from experiments.results import cli as results_cli
from experiments.results import inputs
from experiments.results import pages as pages_lib
from experiments.results import tables

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_RESULTS = _ROOT / 'docs' / 'results'


@pytest.fixture
def copy(tmp_path):
  """A copy of the results and pages; the arguments of ``tables`` on it."""
  results = tmp_path / 'results'
  shutil.copytree(_RESULTS, results)
  pages = [tmp_path / 'RESULTS.md', tmp_path / 'README.md']
  shutil.copyfile(_ROOT / 'docs' / 'RESULTS.md', pages[0])
  shutil.copyfile(_ROOT / 'README.md', pages[1])
  return results, ['tables', '--results', str(results), '--pages',
                   *map(str, pages)]


def _written(results: pathlib.Path, arguments: list[str]) -> list[str]:
  """What ``tables`` may write: the manifest and the two pages."""
  return [path.read_text() for path in [results / 'MANIFEST.json',
                                        *map(pathlib.Path, arguments[4:])]]


def _add(path: pathlib.Path, keys: tuple, amount: float) -> None:
  """Adds ``amount`` to the number at ``keys`` of the JSON file ``path``."""
  content = json.loads(path.read_text())
  parent = content
  for key in keys[:-1]:
    parent = parent[key]
  parent[keys[-1]] += amount
  path.write_text(json.dumps(content, indent=1))


def _check(arguments: list[str], capsys) -> str:
  """Runs ``tables --check``, which must fail; what it printed."""
  capsys.readouterr()
  assert results_cli.main([*arguments, '--check']) == 1
  return capsys.readouterr().out


def test_the_copy_passes(copy, capsys):
  results, arguments = copy
  assert results_cli.main([*arguments, '--check']) == 0, (
      capsys.readouterr().out)


@pytest.mark.parametrize('file, keys, named', [
    ('f1/laperm/seed-0/metrics.json', ('best_val_accuracy',),
     'best_val_accuracy is '),
    ('conv7/laperm/metrics.json', ('test_accuracy_of_best',),
     'test_accuracy_of_best is '),
    ('f2/laperm/seed-7/metrics.json', ('history', 3, 'val_accuracy'),
     'history[3] differs'),
    ('a3/adam/metrics.json', ('monitor', 30, 'p15', 5), 'monitor[30] differs'),
    ('vit/laperm/seed-1/metrics.json', ('config', 'optimizer',
                                        'learning_rate'),
     'config.optimizer.learning_rate is '),
    ('checks.json', ('conv_laperm_cycles', 'fraction_moved', 0),
     'conv_laperm_cycles.fraction_moved differs'),
    ('vit/checks.json', ('seeds', '1', 'fraction_moved',
                         "['embedding']['kernel']"),
     "seeds.1.fraction_moved.['embedding']['kernel'] is "),
])
def test_a_millionth_on_any_number_fails(copy, capsys, file, keys, named):
  results, arguments = copy
  before = _written(results, arguments)
  _add(results / file, keys, 1e-6)
  out = _check(arguments, capsys)
  assert f'{results / file}: {named}' in out, out
  assert _written(results, arguments) == before


def test_a_file_reformatted_fails_though_its_values_are_the_same(copy,
                                                                 capsys):
  results, arguments = copy
  path = results / 'f1' / 'laperm' / 'seed-9' / 'metrics.json'
  path.write_text(json.dumps(json.loads(path.read_text()), indent=2))
  assert (f'{path}: its bytes differ from those the pages were rendered '
          'from, its values do not (formatting)') in _check(arguments, capsys)


def test_an_edited_summary_fails_naming_its_key(copy, capsys):
  results, arguments = copy
  before = _written(results, arguments)
  summary = results / 'f2-size-aware' / 'summary.json'
  keys = ('runs', 'laperm', 'test_accuracy_of_best', 'mean')
  committed = json.loads(summary.read_text())['runs']['laperm'][
      'test_accuracy_of_best']['mean']
  _add(summary, keys, 1e-6)
  out = _check(arguments, capsys).splitlines()
  named = f'{summary}: {".".join(keys)} is {committed + 1e-6!r}; '
  # Against the manifest, and against the summary of its 20 seed files.
  assert f'{named}the pages were rendered from {committed!r}' in out, out
  assert (f'{named}its 20 seed files (f2-size-aware/laperm/seed-0/'
          f'metrics.json, ...) give {committed!r}') in out, out
  assert _written(results, arguments) == before


def test_a_summary_its_seed_files_do_not_give_is_refused(copy, capsys):
  # Rendering from it would record (in the manifest) a summary that the
  # seed files contradict.
  results, arguments = copy
  seed_file = results / 'f1' / 'laperm' / 'seed-4' / 'metrics.json'
  _add(seed_file, ('final_test_accuracy',), 1e-6)
  before = _written(results, arguments)
  with pytest.raises(SystemExit) as exit_info:
    results_cli.main(arguments)
  assert exit_info.value.code == 2
  assert (f'{results}/f1/summary.json: runs.laperm.per_seed[4].'
          'final_test_accuracy is ') in capsys.readouterr().err
  assert _written(results, arguments) == before


@pytest.mark.parametrize('stray, named', [
    ('f1/other/metrics.json', 'f1/other/'),
    ('f1/laperm/seed-3/extra/metrics.json', 'f1/laperm/seed-3/extra/'),
    ('f1/laperm/notes.txt', 'f1/laperm/notes.txt'),
    ('extra.json', 'extra.json'),
    ('gpt/summary.json', 'gpt/'),  # A study that no table declares.
])
def test_a_stray_file_or_folder_fails_naming_it(copy, capsys, stray, named):
  results, arguments = copy
  before = _written(results, arguments)
  (results / stray).parent.mkdir(parents=True, exist_ok=True)
  shutil.copyfile(results / 'f1' / 'laperm' / 'seed-3' / 'metrics.json',
                  results / stray)
  message = f'{results}/{named}: belongs to no table'
  assert message in _check(arguments, capsys)
  with pytest.raises(SystemExit) as exit_info:
    results_cli.main(arguments)  # Rendering refuses too, writing nothing.
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
  assert _written(results, arguments) == before


def test_a_missing_seed_file_fails_naming_it(copy, capsys):
  results, arguments = copy
  (results / 'f2' / 'laperm' / 'seed-11' / 'metrics.json').unlink()
  out = _check(arguments, capsys)
  assert (f'{results}/f2/laperm/seed-11/metrics.json: named by '
          'f2/summary.json but missing') in out


@pytest.mark.parametrize('content, error', [
    (None, 'f1: no summary.json'),
    ('{"runs": {"laperm": {}}}', 'f1/summary.json: "runs" does not name'),
    ('{"runs"', 'f1/summary.json: not JSON'),
])
def test_a_study_without_a_sound_summary_is_an_error(copy, capsys, content,
                                                     error):
  results, arguments = copy
  summary = results / 'f1' / 'summary.json'
  summary.unlink()
  if content is not None:
    summary.write_text(content)
  for check in ([], ['--check']):
    with pytest.raises(SystemExit) as exit_info:
      results_cli.main([*arguments, *check])
    assert exit_info.value.code == 2
    assert f'error: {results}/{error}' in capsys.readouterr().err


def test_a_table_reads_only_what_it_declares(monkeypatch):
  folder = inputs.Folder(_RESULTS)
  start = f'{pages_lib.GENERATED} -->\n'
  monkeypatch.setitem(tables.TABLES, 'vit', tables.Table(tables.vit, ()))
  with pytest.raises(ValueError, match="table 'vit' reads 'vit', which it "
                     'does not declare'):
    pages_lib.render(f'<!-- vit:start {start}<!-- vit:end -->', folder)
  monkeypatch.setitem(tables.TABLES, 'vit',
                      tables.Table(tables.vit, ('vit', 'f1')))
  with pytest.raises(ValueError, match=r"table 'vit' declares \['f1'\] but "
                     'does not read them'):
    pages_lib.render(f'<!-- vit:start {start}<!-- vit:end -->', folder)
