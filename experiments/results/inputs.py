"""The files the results tables are rendered from, and what they must hold.

``docs/results/`` holds one folder per study (the ``--out`` folder of one
command of ``scripts/results.sh``) and a few files beside them. Each table
of ``tables.TABLES`` declares the studies and files it reads; it reads them
through :class:`Inputs`, which refuses anything undeclared, so the
declarations are the whole list of what the pages rest on.

A study folder holds exactly what its ``summary.json`` names: per run and
seed one ``metrics.json``, ``RUN/metrics.json`` for a run of one seed and
``RUN/seed-S/metrics.json`` per seed otherwise, as training writes them.
:func:`problems` finds what breaks this: a file or folder under the
results that no table declares and ``README.md`` does not list, a run file
the summary names but that is missing, a run file whose name or seed is
not that of its place, and a summary number that its seed files do not
give (``summaries.run_summary`` recomputes each).
"""

import dataclasses
import fnmatch
import json
import pathlib
import re
from typing import Any, Iterable, Optional, Sequence

from experiments import summaries

SUMMARY = 'summary.json'
METRICS = 'metrics.json'
README = 'README.md'
# The first cell of a row of README.md's tables: its `paths` are listed.
_LISTED = re.compile(r'^\|([^|]*)\|', re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a study: every seed's ``metrics.json``, by seed."""

  name: str
  seeds: tuple[dict, ...]

  def values(self, key: str) -> list[float]:
    """Every seed's ``key``, in seed order."""
    return [metrics[key] for metrics in self.seeds]

  @property
  def config(self) -> dict:
    """The run's config (that of its first seed)."""
    return self.seeds[0]['config']


class Folder:
  """A results folder whose JSON files are each parsed once."""

  def __init__(self, root: pathlib.Path):
    self.root = root
    self._parsed: dict[str, Any] = {}

  def read(self, name: str) -> Any:
    """The parsed JSON file ``name`` (relative to the folder).

    Raises:
      ValueError: The file is not JSON.
    """
    if name not in self._parsed:
      path = self.root / name
      try:
        self._parsed[name] = json.loads(path.read_text())
      except json.JSONDecodeError as error:
        raise ValueError(f'{path}: not JSON ({error})') from error
    return self._parsed[name]

  def files(self) -> list[str]:
    """Every file under the folder, relative, in sorted order."""
    return sorted(path.relative_to(self.root).as_posix()
                  for path in self.root.rglob('*') if path.is_file())

  def run_files(self, study: str) -> dict[str, list[str]]:
    """Per run of ``study``, its seed files as its summary names them.

    Empty when the study's folder is absent (its tables skip it).

    Raises:
      FileNotFoundError: The study's folder holds no ``summary.json``.
      ValueError: The summary names no seeds of its runs.
    """
    if not (self.root / study).is_dir():
      return {}
    path = self.root / study / SUMMARY
    if not path.is_file():
      raise FileNotFoundError(f'{self.root / study}: no {SUMMARY} (it names '
                              'the runs and seeds of the study)')
    summary = self.read(f'{study}/{SUMMARY}')
    runs = summary.get('runs') if isinstance(summary, dict) else None
    if not (isinstance(runs, dict) and runs and all(
        isinstance(run, dict) and run.get('seeds') for run in runs.values())):
      raise ValueError(f'{path}: "runs" does not name each run\'s "seeds"')
    return {name: ([f'{study}/{name}/{METRICS}'] if len(run['seeds']) == 1
                   else [f'{study}/{name}/seed-{seed}/{METRICS}'
                         for seed in run['seeds']])
            for name, run in runs.items()}


class Inputs:
  """What one table may read: the studies and files it declares."""

  def __init__(self, folder: Folder, table: str, studies: Iterable[str],
               files: Iterable[str]):
    self._folder = folder
    self._table = table
    self._studies = frozenset(studies)
    self._files = frozenset(files)
    self._read: set[str] = set()

  def _declared(self, name: str, declared: frozenset[str]) -> None:
    if name not in declared:
      raise ValueError(f'table {self._table!r} reads {name!r}, which it does '
                       'not declare (tables.TABLES)')
    self._read.add(name)

  def unread(self) -> list[str]:
    """The declared studies and files not read so far, sorted."""
    return sorted((self._studies | self._files) - self._read)

  def runs(self, *studies: str) -> dict[str, Run]:
    """The runs of ``studies`` by name, seeds merged across the studies.

    Raises:
      ValueError: The table does not declare one of ``studies``.
    """
    found: dict[str, list[dict]] = {}
    for study in studies:
      self._declared(study, self._studies)
      for name, paths in self._folder.run_files(study).items():
        found.setdefault(name, []).extend(map(self._folder.read, paths))
    return {name: Run(name, tuple(sorted(seeds, key=lambda m: m['seed'])))
            for name, seeds in found.items()}

  def file(self, name: str) -> Optional[Any]:
    """The parsed JSON file ``name``, or None when it is absent.

    Raises:
      ValueError: The table does not declare ``name``.
    """
    self._declared(name, self._files)
    if not (self._folder.root / name).is_file():
      return None
    return self._folder.read(name)


def listed(folder: Folder) -> list[str]:
  """The paths ``README.md`` lists: backquoted in its tables' first column.

  Each is a pattern whose ``*`` stands for any part of one name (a folder
  is never listed whole).
  """
  readme = folder.root / README
  if not readme.is_file():
    return []
  return [name for cell in _LISTED.findall(readme.read_text())
          for name in re.findall(r'`([^`]+)`', cell)]


def _matches(name: str, pattern: str) -> bool:
  parts, pattern_parts = name.split('/'), pattern.split('/')
  return len(parts) == len(pattern_parts) and all(
      fnmatch.fnmatchcase(part, wanted)
      for part, wanted in zip(parts, pattern_parts))


def _strays(files: Iterable[str], allowed: set[str]) -> list[str]:
  """``files`` not allowed, each under its highest folder that holds none.

  A stray folder is named once (``f1/other/``), not file by file.
  """
  holding = {'/'.join(name.split('/')[:depth])
             for name in allowed for depth in range(1, name.count('/') + 1)}
  strays = set()
  for name in files:
    if name in allowed:
      continue
    parts = name.split('/')
    folders = ['/'.join(parts[:depth]) for depth in range(1, len(parts))]
    outside = [folder for folder in folders if folder not in holding]
    strays.add(f'{outside[0]}/' if outside else name)
  return sorted(strays)


def _source(where: str, paths: Sequence[str]) -> str:
  """Which seed files give the summary's number at ``where``."""
  seed = re.search(r'\.per_seed\[(\d+)\]', where)
  return f'{paths[int(seed.group(1))]} gives' if seed else (
      f'its seed files ({", ".join(paths)}) give' if len(paths) < 4 else
      f'its {len(paths)} seed files ({paths[0]}, ...) give')


def _summary_problems(folder: Folder, study: str) -> list[str]:
  """Where the study's run files break their summary's word."""
  problems = []
  summary = folder.read(f'{study}/{SUMMARY}')
  for name, paths in folder.run_files(study).items():
    missing = [path for path in paths if not (folder.root / path).is_file()]
    if missing:
      problems += [f'{folder.root / path}: named by {study}/{SUMMARY} but '
                   'missing' for path in missing]
      continue
    seeds = [folder.read(path) for path in paths]
    misplaced = [
        f'{folder.root / path}: run {metrics.get("name")!r} seed '
        f'{metrics.get("seed")!r} where {study}/{SUMMARY} puts run {name!r} '
        f'seed {seed!r}'
        for path, metrics, seed in zip(paths, seeds,
                                       summary['runs'][name]['seeds'])
        if (metrics.get('name'), metrics.get('seed')) != (name, seed)]
    problems += misplaced or [
        f'{folder.root / study / SUMMARY}: {where} is {held!r}; '
        f'{_source(where, paths)} {expected!r}'
        for where, held, expected in compare(
            summary['runs'][name], summaries.run_summary(seeds),
            f'runs.{name}')]
  return problems


class _Absent:
  """A key that one side of a comparison lacks."""

  def __repr__(self) -> str:
    return 'absent'


ABSENT = _Absent()


def compare(held: Any, expected: Any, where: str = ''
            ) -> list[tuple[str, Any, Any]]:
  """Where two JSON values differ: ``(key path, held, expected)`` per leaf.

  Dicts are compared key by key (a key one lacks is :data:`ABSENT` there),
  lists of equal length item by item; anything else, lists of other
  lengths included, is one leaf.
  """
  if isinstance(held, dict) and isinstance(expected, dict):
    keys = list(held) + [key for key in expected if key not in held]
    return [difference for key in keys for difference in compare(
        held.get(key, ABSENT), expected.get(key, ABSENT),
        f'{where}.{key}' if where else key)]
  if (isinstance(held, list) and isinstance(expected, list)
      and len(held) == len(expected)):
    return [difference for index, pair in enumerate(zip(held, expected))
            for difference in compare(*pair, f'{where}[{index}]')]
  return [] if held == expected else [(where, held, expected)]


def problems(folder: Folder, studies: Iterable[str],
             files: Iterable[str]) -> list[str]:
  """What in ``folder`` the pages cannot rest on, one line each.

  Args:
    folder: The results folder.
    studies: The studies the tables declare.
    files: The other files the tables declare.

  Returns:
    Files and folders that no table declares and ``README.md`` does not
    list; run files that are missing or misplaced; summary numbers that
    their seed files do not give. Each line names the file (and the key).
  """
  present = folder.files()
  allowed = {README, *files} & set(present)
  allowed |= {name for name in present
              if any(_matches(name, pattern) for pattern in listed(folder))}
  found = []
  for study in studies:
    runs = folder.run_files(study)
    if runs:
      allowed |= {f'{study}/{SUMMARY}', *(
          path for paths in runs.values() for path in paths)}
      found += _summary_problems(folder, study)
  return [f'{folder.root}/{stray}: belongs to no table (tables.TABLES) and '
          f'{README} does not list it' for stray in _strays(present, allowed)
          ] + found
