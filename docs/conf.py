"""Sphinx configuration of the laperm-jax API reference.

Build (``pip install '.[docs]'``)::

    sphinx-build -W -b html docs docs/_build/html
"""

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
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
]

# Only the .rst pages are the site: RESULTS.md, its results/ and images/ and
# the figure scripts live here for the README, not for the reference.
exclude_patterns = ['_build', 'RESULTS.md', 'results', 'images']

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

html_theme = 'alabaster'
html_title = f'laperm-jax {release}'
html_theme_options = {
    'description': 'Lookahead Permutation (LaPerm) as an optax transformation',
    'fixed_sidebar': True,
}
