"""The README's examples run as written and do what they say."""

import pathlib
import re

import chex
import optax

import laperm_jax as lp

README = pathlib.Path(__file__).resolve().parent.parent / 'README.md'


def _run_example(section):
  """Runs the first python block after the heading ``section``."""
  code = re.search(section + r'.*?```python\n(.*?)```', README.read_text(),
                   re.DOTALL).group(1)
  namespace = {}
  exec(compile(code, str(README), 'exec'), namespace)  # pylint: disable=exec-used
  return namespace


def test_quick_start():
  namespace = _run_example('## Quick start')
  exact = namespace['exact']
  initial = optax.tree.get(namespace['opt_state'], 'sorted_init')
  for layer in ('hidden', 'out'):
    chex.assert_trees_all_equal(lp.sort_vectors(exact[layer]['kernel']),
                                initial[layer]['kernel'])
  loss = namespace['loss_fn'](exact, namespace['x'], namespace['y'])
  assert float(loss) < 1.0  # ln(10) = 2.3 at chance.
