"""The notebooks in notebooks/ run top to bottom and show what they say.

Each notebook's source is a jupytext percent-format ``.py`` file, paired with
an ``.ipynb`` (the file Colab opens). The pairs are checked to hold the same
cells, and the ``.ipynb`` to be stripped of outputs. Each source is executed
(nbclient, in an ipykernel of this Python, see
``experiments.results.notebooks.execute_notebook``) with its CI settings
(``LAPERM_NOTEBOOK_SETTINGS=quick``); its own last cell asserts, and the test
reads the ``RESULTS`` line it printed back from the executed outputs.
"""

import os
import pathlib

import jupytext
import jupytext.compare
import nbformat
import pytest

from experiments.results import notebooks

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / 'notebooks'
NAMES = ('01_quick_start', '02_reconnection', '03_weight_agnostic',
         '04_your_own_model')


def _execute(name, tmp_path):
  notebook = notebooks.execute_notebook(
      NOTEBOOKS / f'{name}.py', cwd=tmp_path, timeout=300,
      env={'LAPERM_NOTEBOOK_SETTINGS': 'quick',
           'LAPERM_FIGURES_DIR': str(tmp_path / 'figures'),
           # These runs are compile-bound: XLA's CPU backend compiles several
           # times faster without LLVM optimizations, which change no result
           # the notebooks check.
           'XLA_FLAGS': ' '.join(filter(None, (
               os.environ.get('XLA_FLAGS'),
               '--xla_backend_optimization_level=0')))})
  return notebook, notebooks.printed_results(notebook)


def test_every_notebook_is_a_pair():
  assert sorted(p.stem for p in NOTEBOOKS.glob('*.ipynb')) == list(NAMES)
  sources = {p.stem for p in NOTEBOOKS.glob('*.py')}
  assert sources == {*NAMES, 'notebook_helpers'}


@pytest.mark.parametrize('name', NAMES)
def test_pair_agrees_and_ipynb_is_stripped(name):
  source = jupytext.read(NOTEBOOKS / f'{name}.py')
  notebook = nbformat.read(str(NOTEBOOKS / f'{name}.ipynb'), as_version=4)
  nbformat.validate(notebook)
  # Both halves name the pairing, so Jupyter (with jupytext) saves both.
  for half in (source, notebook):
    assert half.metadata['jupytext']['formats'] == 'ipynb,py:percent'
  # The same cells, in the same order, with the same sources; raises with
  # the first difference.
  jupytext.compare.compare_notebooks(notebook, source, fmt='py:percent',
                                     allow_expected_differences=False)
  assert [cell.source for cell in notebook.cells] == [
      cell.source for cell in source.cells]
  # Without outputs.
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert cell.outputs == [] and cell.execution_count is None
  # A title, the paper, a Colab badge for itself, and an install cell first.
  first, install = notebook.cells[0], notebook.cells[1]
  assert first.cell_type == 'markdown' and first.source.startswith('# ')
  assert 'arXiv:2003.02570' in first.source
  assert 'colab.research.google.com/github/' in first.source
  assert first.source.count(f'/notebooks/{name}.ipynb)') == 1
  assert install.cell_type == 'code' and "REPO = '" in install.source
  for step in ("'git', 'clone'", "'pip', 'install'", "'notebook_helpers'",
               "'laperm_jax'"):
    assert step in install.source, step


def test_quick_start(tmp_path):
  notebook, results = _execute('01_quick_start', tmp_path)
  assert results['settings'] == 'quick'
  assert results['laperm_kernels_are_permutations'] is True
  assert results['laperm_accuracy'] > 0.8  # Chance: 0.1.
  # The NNX section: nnx.Optimizer with LaPerm, synchronized NNX state.
  assert results['nnx_kernels_are_permutations'] is True
  assert results['nnx_accuracy'] > 0.8
  # Figures were drawn and shown.
  assert (tmp_path / 'figures' / 'weight_profiles.png').stat().st_size > 0
  assert (tmp_path / 'figures' / 'training_curves.png').stat().st_size > 0
  assert any(output.get('output_type') == 'display_data'
             for cell in notebook.cells for output in cell.get('outputs', ()))


def test_reconnection(tmp_path):
  _, results = _execute('02_reconnection', tmp_path)
  assert results['pruned_kernels_keep_their_values'] is True
  assert results['laperm_distribution_fixed'] is True
  assert 0 < results['first_epoch_ranking_distance'] < 1
  assert results['cycles_per_vector'] >= 1
  assert results['laperm_accuracy'] > 0.8
  assert results['pruned_accuracy'] > 0.7
  for figure in ('training_monitor.png', 'permutation_cycles.png',
                 'pruned_weight_profiles.png'):
    assert (tmp_path / 'figures' / figure).stat().st_size > 0


def test_weight_agnostic(tmp_path):
  _, results = _execute('03_weight_agnostic', tmp_path)
  assert results['kernels_keep_their_values'] is True
  assert results['largest_accuracy_spread_over_positive_values'] <= 0.01
  for name in ('F1', 'F2'):
    # Well above chance, and above the random wiring it started from.
    assert results[f'{name}_accuracy'] > 0.3
    assert (results[f'{name}_accuracy']
            > results[f'{name}_initial_accuracy'] + 0.15)


def test_your_own_model(tmp_path):
  _, results = _execute('04_your_own_model', tmp_path)
  assert results['derived_kernels_are_permutations'] is True
  assert results['derived_heads_keep_their_values'] is True
  # The trailing-axis grouping moves weights between heads.
  assert results['trailing_kernels_are_permutations'] is False
  assert results['trailing_heads_keeping_their_values'] == 0
  assert results['derived_accuracy'] > 0.5  # Chance: 0.1.


def test_notebooks_command_draws_the_readme_figures():
  drawn = [figure for figures in notebooks.README_FIGURES.values()
           for figure in figures]
  # Every README figure is one `python -m experiments.results notebooks`
  # makes (the demo's comes from `python -m experiments demo`).
  readme = (ROOT / 'README.md').read_text()
  for figure in drawn:
    assert f'(docs/images/{figure})' in readme, figure
    assert (ROOT / 'docs' / 'images' / figure).exists()
  for name in notebooks.README_FIGURES:
    source = (NOTEBOOKS / name).read_text()
    for figure in notebooks.README_FIGURES[name]:
      assert f"FIGURES / '{figure}'" in source, (name, figure)
