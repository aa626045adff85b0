"""Sphinx configuration of the laperm-jax site: API reference, guides, notebooks.

Build (``pip install '.[test,docs]'``)::

    sphinx-build -W -b html docs docs/_build/html

The Markdown pages (performance, experiments, results) are read by MyST. The
notebooks are executed at build time with their quick settings (about a
minute each on 2 CPU cores) into ``docs/notebooks/``, which is generated
and ignored by git, and rendered with their outputs by MyST-NB; the
gallery's thumbnails are the figures they write there.
"""

import collections.abc
import functools
import glob
import importlib
import os
import pathlib
import pkgutil
import sys
import types
import typing

import docutils.nodes

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import laperm_jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import sphinx.ext.autosummary  # pylint: disable=g-import-not-at-top,wrong-import-position
from sphinx.util.typing import stringify_annotation  # pylint: disable=g-import-not-at-top,wrong-import-position

project = 'laperm-jax'
author = 'laperm-jax authors'
copyright = 'laperm-jax authors'  # pylint: disable=redefined-builtin
release = laperm_jax.__version__
version = release

extensions = [
    'myst_nb',
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.intersphinx',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
    'sphinx_design',
]

exclude_patterns = ['_build', 'results', 'images', 'notebooks/_work']
# The notebooks are executed below, once, before Sphinx reads them.
nb_execution_mode = 'off'
myst_heading_anchors = 3

autodoc_default_options = {'member-order': 'bysource'}
# Types in signatures, without module paths (`Array`, not
# `jax.jaxlib._jax.Array`); the unions behind the tree types and the
# library's aliases are printed by name (see `_short_type`).
autodoc_typehints = 'signature'
autodoc_typehints_format = 'short'
# Signatures longer than this put one parameter per line.
python_maximum_signature_line_length = 88
# The public names are re-exported from private modules: document them as
# `laperm_jax.<name>`.
add_module_names = True
# The API pages' summary tables link to the entries below them on the same
# page; no stub pages are generated.
autosummary_generate = False
# Their summaries are the docstrings' first sentences; "(Figs. 11-12)" cites
# the paper and does not end one.
sphinx.ext.autosummary.WELL_KNOWN_ABBREVIATIONS += ('Fig.', 'Figs.')
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Inventories are read from disk only: the build needs no network. The
# Python documentation ships one (Debian/Ubuntu `python3-doc`); JAX, optax
# and Flax ship none in their wheels: their names are linked plainly by
# `_link_without_inventory`.
_PYTHON_INVENTORIES = sorted(
    glob.glob('/usr/share/doc/python3*/html/objects.inv'))
intersphinx_mapping = {
    'python': ('https://docs.python.org/3', _PYTHON_INVENTORIES[-1]),
} if _PYTHON_INVENTORIES else {}

html_theme = 'sphinx_book_theme'
html_title = f'laperm-jax {release}'
html_static_path = ['_static']
html_css_files = ['laperm.css']
html_theme_options = {
    'repository_url': 'https://github.com/laperm-jax/laperm-jax',
    'use_repository_button': True,
    'show_toc_level': 2,
    # One search box: the sidebar's (the header's duplicate is dropped).
    'navbar_persistent': [],
}


@functools.cache
def _type_aliases() -> dict[str, str]:
  """The printed form (in 'smart' mode) of each alias whose union is long.

  The library's own aliases (`VectorAxes`, `Mask`, ...: module-level unions
  and callables of its modules) and the tree and array types of optax and
  JAX (optax's `Params`, `Updates` and `OptState` are one union), each
  mapped to its name.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  aliases = [('ArrayTree', optax.Params), ('ArrayLike', jax.typing.ArrayLike)]
  for module_info in pkgutil.iter_modules(laperm_jax.__path__):
    module = importlib.import_module(f'laperm_jax.{module_info.name}')
    aliases += [(name, value) for name, value in vars(module).items()
                if not name.startswith('_') and typing.get_origin(value) in (
                    typing.Union, types.UnionType, collections.abc.Callable)]
  return {stringify_annotation(value, 'smart'): name
          for name, value in aliases}


def _short_type(text: str) -> str:
  """`text`, a type printed in 'smart' mode, with each alias's union named."""
  for union in sorted(_type_aliases(), key=len, reverse=True):
    text = text.replace(union, _type_aliases()[union])
  return text


def _short_signature(app, what, name, obj, options, signature,
                     return_annotation):
  """`autodoc-process-signature`: the aliases' names in signatures."""
  del app, what, name, obj, options  # The same for every object.
  return (signature and _short_type(signature),
          return_annotation and _short_type(return_annotation))


def _short_attribute_types(app, what, name, obj, options, lines):
  """`autodoc-process-docstring`: short types for a NamedTuple's fields.

  Napoleon writes each field of the ``Attributes:`` section as an
  ``.. attribute::`` with a fully qualified ``:type:`` line; this runs after
  it and prints the field's annotation as the signatures do.
  """
  del app, what, name, options  # Only the class's annotations matter.
  annotations = getattr(obj, '__annotations__', {})
  field = None
  for i, line in enumerate(lines):
    if line.startswith('.. attribute:: '):
      field = line.removeprefix('.. attribute:: ').strip()
    elif line.lstrip().startswith(':type:') and field in annotations:
      indent = line[:len(line) - len(line.lstrip())]
      lines[i] = (f'{indent}:type: '
                  + _short_type(stringify_annotation(annotations[field],
                                                     'smart')))


# Where a public name of a project without an installed inventory is
# documented: JAX has one page per name; optax and Flax group their names
# by topic, so their names link to a search of their site.
_PLAIN_LINKS = {
    'jax': 'https://docs.jax.dev/en/latest/_autosummary/{name}.html',
    'optax': 'https://optax.readthedocs.io/en/latest/search.html?q={name}',
    'flax': 'https://flax.readthedocs.io/en/latest/search.html?q={name}',
}


def _public_name(target: str) -> str | None:
  """The public name of `target`, or None outside `_PLAIN_LINKS`'s projects.

  A name under a private module is taken as exported at the top level of
  its project under its last component, where the project has that name
  (`jax.Array` for `jax.jaxlib._jax.Array`).
  """
  parts = target.split('.')
  project, name = parts[0], parts[-1]
  if project not in _PLAIN_LINKS or len(parts) == 1:
    return None
  if all(not part.startswith('_') and part != 'jaxlib' for part in parts):
    return target
  module = importlib.import_module(project)
  return f'{project}.{name}' if hasattr(module, name) else None


def _link_without_inventory(app, env, node, contnode):
  """`missing-reference`: a plain link for a JAX, optax or Flax name."""
  del app, env  # The link depends on the name only.
  if node.get('refdomain') != 'py':
    return None
  name = _public_name(node['reftarget'])
  if name is None:
    return None
  project = name.split('.')[0]
  return docutils.nodes.reference(
      '', '', contnode, internal=False,
      refuri=_PLAIN_LINKS[project].format(name=name),
      reftitle=f'{name} ({project} documentation)')


def setup(app):
  app.connect('autodoc-process-signature', _short_signature)
  # After napoleon (priority 500), which writes the ``:type:`` lines.
  app.connect('autodoc-process-docstring', _short_attribute_types,
              priority=600)
  # After intersphinx (priority 500), which resolves what it has.
  app.connect('missing-reference', _link_without_inventory, priority=900)


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
