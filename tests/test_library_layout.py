"""The shape of ``laperm_jax/``: short functions, no private names used
across its modules, and no private module of another package imported where
a public name exists (the rules ``experiments/`` follows, applied to the
library)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'laperm_jax'
MAX_CODE_LINES = 80
# Private modules of other packages the library imports, and why: optax has
# no public name for the placeholder `optax.tree.map_params` passes to init
# (`optax.masked` tests for it the same way).
ALLOWED_PRIVATE_IMPORTS = {('_laperm.py', 'optax.tree_utils._state_utils')}


def _sources() -> dict[str, ast.Module]:
  return {path.name: ast.parse(path.read_text())
          for path in sorted(PACKAGE.glob('*.py'))}


def _code_lines(function: ast.FunctionDef, lines: list[str]) -> int:
  body = function.body
  has_docstring = isinstance(body[0], ast.Expr) and isinstance(
      getattr(body[0], 'value', None), ast.Constant)
  start = body[0].end_lineno if has_docstring else body[0].lineno - 1
  return sum(1 for line in lines[start:function.end_lineno]
             if line.strip() and not line.strip().startswith('#'))


def test_functions_are_short():
  too_long = []
  for path in sorted(PACKAGE.glob('*.py')):
    lines = path.read_text().splitlines()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        count = _code_lines(node, lines)
        if count > MAX_CODE_LINES:
          too_long.append(f'{path.name}:{node.lineno} {node.name} ({count})')
  assert not too_long, f'functions over {MAX_CODE_LINES} lines: {too_long}'


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
