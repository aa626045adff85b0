"""The shape of ``experiments/``: the import layers its README draws, no
private names used across modules, and short functions."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / 'experiments'
MAX_CODE_LINES = 80
# The command line parses arguments and dispatches; policy lives in configs.
MAX_CLI_LINES = 250


SUBPACKAGES = ('configs', 'results')


def _modules() -> dict[str, ast.Module]:
  """Every module of ``experiments``; ``PACKAGE.NAME`` for a subpackage's
  (``configs.conv``), ``PACKAGE`` for its ``__init__``."""
  modules = {path.stem: ast.parse(path.read_text())
             for path in PACKAGE.glob('*.py')}
  for package in SUBPACKAGES:
    for path in (PACKAGE / package).glob('*.py'):
      name = package if path.stem == '__init__' else f'{package}.{path.stem}'
      modules[name] = ast.parse(path.read_text())
  return modules


def _experiments_imports(tree: ast.Module) -> set[str]:
  """The modules of ``experiments`` that ``tree`` imports, as ``_modules``
  names them."""
  submodules = {package: {path.stem for path in (PACKAGE / package).glob(
      '*.py')} for package in SUBPACKAGES}
  imported = set()
  for node in ast.walk(tree):
    if not (isinstance(node, ast.ImportFrom) and node.module and
            node.module.split('.')[0] == 'experiments'):
      continue
    parts = node.module.split('.')[1:]
    if not parts:  # from experiments import configs, data
      imported.update(alias.name for alias in node.names)
    elif len(parts) == 1 and parts[0] in SUBPACKAGES:
      # from experiments.configs import base
      imported.update(f'{parts[0]}.{alias.name}'
                      if alias.name in submodules[parts[0]] else parts[0]
                      for alias in node.names)
    else:  # from experiments.configs.base import X; experiments.data
      imported.add('.'.join(parts[:2]) if parts[0] in SUBPACKAGES
                    else parts[0])
  return imported


def _drawn_layers() -> list[tuple[set[str], set[str]]]:
  """The README's drawing: per line, its modules and what they import."""
  text = (PACKAGE / 'README.md').read_text()
  drawing = re.search(r'```text\n(.*?)```', text, re.DOTALL).group(1)
  layers = []
  for line in drawing.strip().splitlines():
    line = re.sub(r'\(.*\)', '', line)
    names, _, imports = line.partition('->')
    layers.append(({name.strip() for name in names.split(',')},
                   {name.strip() for name in imports.split(',')
                    if name.strip()}))
  return layers


def test_imports_are_the_drawn_layers():
  # configs' modules included: no arrow back up inside the presets either.
  actual = {name: _experiments_imports(tree) - {name}
            for name, tree in _modules().items()}
  assert {'configs', 'configs.base', 'configs.demo'} <= set(actual)
  layers = _drawn_layers()
  drawn = {name for names, _ in layers for name in names}
  assert drawn == set(actual) - {'__init__'}, 'every module is drawn once'
  above = set()
  for names, imports in layers:
    for name in names:
      assert actual[name] == imports, (name, actual[name])
      assert imports <= above, f'{name} imports from below: {imports - above}'
    above |= names


def test_no_module_of_experiments_is_imported_inside_a_function():
  """Such an import would hide a loop the drawing cannot show."""
  for name, tree in _modules().items():
    for function in ast.walk(tree):
      if isinstance(function, ast.FunctionDef):
        body = ast.Module(body=function.body, type_ignores=[])
        assert not _experiments_imports(body), f'{name}.{function.name}'


def test_command_line_is_short():
  lines = len((PACKAGE / 'cli.py').read_text().splitlines())
  assert lines < MAX_CLI_LINES, f'cli.py has {lines} lines'


def _private_uses(tree: ast.Module, modules: set[str]) -> list[str]:
  """``module._name`` and ``from experiments.module import _name`` uses."""
  aliases = {}
  uses = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and (
        node.module.startswith('experiments')):
      for alias in node.names:
        if alias.name.startswith('_') and alias.name != '__main__':
          uses.append(alias.name)
        if alias.name in modules:
          aliases[alias.asname or alias.name] = alias.name
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and node.attr.startswith('_') and
        not node.attr.startswith('__') and
        isinstance(node.value, ast.Name) and node.value.id in aliases):
      uses.append(f'{node.value.id}.{node.attr}')
  return uses


# Tests may reach the private helpers of the module they test.
@pytest.mark.parametrize('folder', ['experiments', 'benchmarks', 'scripts',
                                    'docs', 'notebooks'])
def test_no_private_names_across_modules(folder):
  modules = {name.split('.')[-1] for name in _modules()}
  for path in sorted((ROOT / folder).rglob('*.py')):
    uses = _private_uses(ast.parse(path.read_text()), modules)
    assert not uses, f'{path.relative_to(ROOT)} uses {uses}'


def test_library_never_imports_experiments():
  for path in (ROOT / 'laperm_jax').glob('*.py'):
    assert not _experiments_imports(ast.parse(path.read_text())), path


def _code_lines(function: ast.FunctionDef, lines: list[str]) -> int:
  body = function.body
  has_docstring = isinstance(body[0], ast.Expr) and isinstance(
      getattr(body[0], 'value', None), ast.Constant)
  start = body[0].end_lineno if has_docstring else body[0].lineno - 1
  return sum(1 for line in lines[start:function.end_lineno]
             if line.strip() and not line.strip().startswith('#'))


@pytest.mark.parametrize('package', ['experiments', 'laperm_jax'])
def test_functions_are_short(package):
  for path in sorted((ROOT / package).rglob('*.py')):
    text = path.read_text()
    lines = text.splitlines()
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, ast.FunctionDef):
        count = _code_lines(node, lines)
        assert count <= MAX_CODE_LINES, (
            f'{path.relative_to(ROOT)}:{node.lineno} {node.name} has {count} '
            'lines of code')
