"""The API reference (docs/, Sphinx) documents every public name, and its
examples run as written.

The site itself is built with warnings as errors in CI (``.ci/run``:
``sphinx-build -W -b html docs ...``); these tests check, without Sphinx,
that no public name is missing from its pages and that the reconnection
example of the analyses page does what it says.
"""

import inspect
import pathlib
import re
import textwrap

import chex

import laperm_jax as lp
from laperm_jax import plots

DOCS = pathlib.Path(__file__).resolve().parent.parent / 'docs'


def _documented():
  """``{module: {name}}`` of every ``autofunction``/``autoclass``/``autodata``."""
  documented = {}
  for page in DOCS.glob('*.rst'):
    module = None
    for line in page.read_text().splitlines():
      if match := re.match(r'\.\. currentmodule:: (\S+)', line):
        module = match.group(1)
      elif match := re.match(r'\.\. auto(?:function|class|data):: (\S+)',
                               line):
        documented.setdefault(module, set()).add(match.group(1))
  return documented


def test_every_public_name_has_a_reference_entry():
  documented = _documented()
  assert documented['laperm_jax'] == set(lp.__all__)
  public_plots = {name for name, value in vars(plots).items()
                  if inspect.isfunction(value) and not name.startswith('_')
                  and value.__module__ == plots.__name__}
  assert documented['laperm_jax.plots'] == public_plots


def test_index_lists_every_page():
  index = (DOCS / 'index.rst').read_text()
  toctree = index[index.index('.. toctree::'):]
  pages = {page.stem for pattern in ('*.rst', '*.md')
           for page in DOCS.glob(pattern)} - {'index'}
  for page in pages:
    assert f'\n   {page}\n' in toctree + '\n', page


def _run_example(page):
  """Runs the first ``.. code-block:: python`` of ``docs/<page>.rst``."""
  text = (DOCS / f'{page}.rst').read_text()
  block = re.search(r'\.\. code-block:: python\n\n(.*?)\n(?=\S)', text,
                    re.DOTALL).group(1)
  code = textwrap.dedent(block)
  namespace = {}
  exec(compile(code, f'docs/{page}.rst', 'exec'), namespace)  # pylint: disable=exec-used
  return namespace


def test_reconnection_example():
  namespace = _run_example('analysis')
  pruned, synced = namespace['pruned'], namespace['synced']
  assert int(pruned.num_nonzero['Dense_0']['kernel']) == round(0.8 * 64 * 32)
  for layer in ('Dense_0', 'Dense_1'):
    # Two syncs later, each vector holds the pruned values, zeros included.
    chex.assert_trees_all_equal(
        lp.sort_vectors(synced[2][layer]['kernel']),
        lp.sort_vectors(pruned.params[layer]['kernel']))
  distance = lp.ranking_distance(synced[1], synced[2])['Dense_0']['kernel']
  assert 0 < float(distance.mean) < 1
