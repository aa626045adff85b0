"""Sphinx configuration of the laperm-jax site: API reference, guides, notebooks.

Build (``pip install '.[test,docs]'``)::

    sphinx-build -W -b html docs docs/_build/html

The Markdown pages (performance, experiments, results) are read by MyST. The
notebooks are executed at build time with their quick settings (about a
minute each on 2 CPU cores) into ``docs/notebooks/``, which is generated
and ignored by git, and rendered with their outputs by MyST-NB.
"""

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import laperm_jax  # pylint: disable=g-import-not-at-top,wrong-import-position

project = 'laperm-jax'
author = 'laperm-jax authors'
copyright = 'laperm-jax authors'  # pylint: disable=redefined-builtin
release = laperm_jax.__version__
version = release

extensions = [
    'myst_nb',
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
]

exclude_patterns = ['_build', 'results', 'images', 'notebooks/_work']
# The notebooks are executed below, once, before Sphinx reads them.
nb_execution_mode = 'off'
myst_heading_anchors = 3

autodoc_default_options = {'member-order': 'bysource'}
# optax's type aliases (`optax.Params`, ...) expand to long unions in
# signatures; the docstrings' Args say what each argument is.
autodoc_typehints = 'none'
# The public names are re-exported from private modules: document them as
# `laperm_jax.<name>`.
add_module_names = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = 'sphinx_book_theme'
html_title = f'laperm-jax {release}'
html_theme_options = {
    'repository_url': 'https://github.com/laperm-jax/laperm-jax',
    'use_repository_button': True,
    'show_toc_level': 2,
}


def _execute_notebooks() -> None:
  """Writes every notebook, executed with quick settings, to notebooks/."""
  import nbformat  # pylint: disable=g-import-not-at-top
  from experiments.results import notebooks  # pylint: disable=g-import-not-at-top
  out = ROOT / 'docs' / 'notebooks'
  out.mkdir(exist_ok=True)
  work = out / '_work'
  work.mkdir(exist_ok=True)
  for source in sorted((ROOT / 'notebooks').glob('[0-9]*.py')):
    notebook = notebooks.execute_notebook(
        source, cwd=work, timeout=300,
        env={'LAPERM_NOTEBOOK_SETTINGS': 'quick',
             'LAPERM_FIGURES_DIR': str(work / 'figures'),
             'XLA_FLAGS': ' '.join(filter(None, (
                 os.environ.get('XLA_FLAGS'),
                 '--xla_backend_optimization_level=0')))})
    nbformat.write(notebook, str(out / f'{source.stem}.ipynb'))


_execute_notebooks()
