"""The shape of ``laperm_jax/``: no private names used across its modules,
and no private module of another package imported where a public name
exists (the rules ``experiments/`` follows, applied to the library; the
length of its functions is checked with ``experiments/``'s, in
``tests/experiments/test_layout.py``)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'laperm_jax'
# Private modules of other packages the library imports, and why: optax has
# no public name for the placeholder `optax.tree.map_params` passes to init
# (`optax.masked` tests for it the same way).
ALLOWED_PRIVATE_IMPORTS = {('_laperm.py', 'optax.tree_utils._state_utils')}


def _sources() -> dict[str, ast.Module]:
  return {path.name: ast.parse(path.read_text())
          for path in sorted(PACKAGE.glob('*.py'))}


def _private_uses(tree: ast.Module) -> list[str]:
  """``module._name`` of a library module, and ``from ... import _name``."""
  modules = {}
  uses = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and (
        node.module.split('.')[0] == 'laperm_jax'):
      for alias in node.names:
        if node.module == 'laperm_jax':  # `from laperm_jax import _module`
          modules[alias.asname or alias.name] = alias.name
        elif alias.name.startswith('_'):
          uses.append(f'{node.module}.{alias.name}')
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and node.attr.startswith('_') and
        not node.attr.startswith('__') and
        isinstance(node.value, ast.Name) and node.value.id in modules):
      uses.append(f'{node.value.id}.{node.attr}')
  return uses


def test_no_private_names_across_modules():
  uses = {name: _private_uses(tree) for name, tree in _sources().items()}
  assert not {name: found for name, found in uses.items() if found}


def _foreign_private_imports(tree: ast.Module) -> set[str]:
  """Modules of other packages with a private part that ``tree`` imports."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f'{node.module}.{alias.name}' for alias in node.names]
    else:
      continue
    for name in names:
      parts = name.split('.')
      if parts[0] != 'laperm_jax' and any(
          part.startswith('_') and not part.startswith('__')
          for part in parts):
        found.add(name)
  return found


def test_no_private_imports_from_other_packages():
  found = {(name, module) for name, tree in _sources().items()
           for module in _foreign_private_imports(tree)}
  assert found <= ALLOWED_PRIVATE_IMPORTS, found - ALLOWED_PRIVATE_IMPORTS


def test_the_rules_see_a_private_use():
  tree = ast.parse('from laperm_jax import _state as s\ns._secret()\n'
                   'from laperm_jax._state import _hidden\n')
  assert _private_uses(tree) == ['laperm_jax._state._hidden', 's._secret']
