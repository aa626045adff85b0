"""The README's quick start runs as written and does what it says."""

import pathlib
import re

import chex
import optax

import laperm_jax as lp

README = pathlib.Path(__file__).resolve().parent.parent / 'README.md'


def test_quick_start():
  code = re.search(r'## Quick start\s+```python\n(.*?)```', README.read_text(),
                   re.DOTALL).group(1)
  namespace = {}
  exec(compile(code, str(README), 'exec'), namespace)  # pylint: disable=exec-used
  exact = namespace['exact']
  initial = optax.tree.get(namespace['opt_state'], 'sorted_init')
  for layer in ('hidden', 'out'):
    chex.assert_trees_all_equal(lp.sort_vectors(exact[layer]['kernel']),
                                initial[layer]['kernel'])
  loss = namespace['loss_fn'](exact, namespace['x'], namespace['y'])
  assert float(loss) < 1.0  # ln(10) = 2.3 at chance.
