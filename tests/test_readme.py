"""The README's examples run as written and do what they say."""

import pathlib
import re

import chex
import numpy as np
import optax
import pytest

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


def test_own_model():
  with pytest.warns(UserWarning, match=r"\['query'\]\['bias'\]"):
    namespace = _run_example('### Your own model')
  layout, params = namespace['layout'], namespace['params']
  synced = namespace['synced']
  assert layout['query']['bias'] is lp.NO_FAN_IN
  for name in ('query', 'key', 'value', 'out'):
    axes = layout[name]['kernel']
    assert axes == ((0, 1) if name == 'out' else (0,))
    # Each fan-in holds its initial values, bit for bit, in a new order.
    chex.assert_trees_all_equal(
        lp.sort_vectors(synced[name]['kernel'], vector_axes=axes),
        lp.sort_vectors(params[name]['kernel'], vector_axes=axes))
    assert not np.array_equal(synced[name]['kernel'], params[name]['kernel'])
    # The biases followed Adam alone.
    assert not np.array_equal(synced[name]['bias'], params[name]['bias'])
