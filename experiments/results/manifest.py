"""``MANIFEST.json``: every run file the pages were rendered from, exactly.

``python -m experiments.results tables`` writes it into the results folder
each time it renders the pages; ``tables --check`` computes it again from
the files and names each file and key that differs. The tables round to
0.1%, so comparing rendered pages alone lets small edits through; the
manifest does not. Per JSON file under the results folder (read by a table
or not) it holds:

- ``sha256``: the SHA-256 of the file's bytes. Any change to any byte of a
  run file (a number's last digit, a key or record added or dropped, a
  duplicated key that parsing would hide) changes it, so no edit passes
  the check, whichever key it touches and whether or not a page shows it.
- ``values``: the file's content, to say where it changed: numbers and
  strings verbatim at their key paths (``best_val_accuracy``,
  ``config.optimizer.sync_period``, ``runs.laperm.seconds``), and each
  record of a list of records (``history[12]``, ``monitor[3]``,
  ``runs.laperm.per_seed[0]``) and each other list (a seed list, a
  monitor's per-vector statistics) by the first 12 hex digits of the
  SHA-256 of its JSON (``sha256:...``): the file's digest proves a change,
  these only locate it.

A file the manifest holds that is gone, and a JSON file it does not hold,
differ too.
"""

import hashlib
import json
from typing import Any

from experiments.results import inputs

NAME = 'MANIFEST.json'
_DIGEST = 'sha256:'


def _digest(value: Any) -> str:
  text = json.dumps(value, sort_keys=True, separators=(',', ':'))
  return _DIGEST + hashlib.sha256(text.encode()).hexdigest()[:12]


def _values(value: Any) -> Any:
  """``value`` with its lists replaced by digests (see the docstring)."""
  if isinstance(value, dict):
    return {key: _values(item) for key, item in value.items()}
  if isinstance(value, list):
    if value and all(isinstance(item, dict) for item in value):
      return [_digest(item) for item in value]
    return _digest(value)
  return value


def record(folder: inputs.Folder) -> dict[str, dict[str, Any]]:
  """The manifest's entry of every JSON file in ``folder``, by name."""
  return {name: {'sha256': hashlib.sha256(
      (folder.root / name).read_bytes()).hexdigest(),
                 'values': _values(folder.read(name))}
          for name in folder.files()
          if name.endswith('.json') and name != NAME}


def write(folder: inputs.Folder) -> bool:
  """Writes the manifest of ``folder``; whether it changed."""
  path = folder.root / NAME
  text = json.dumps({'files': record(folder)}, indent=1) + '\n'
  if path.is_file() and path.read_text() == text:
    return False
  path.write_text(text)
  return True


def _change(where: str, recorded: Any, current: Any) -> str:
  """One difference between the manifest and the files, in words."""
  if recorded is inputs.ABSENT:
    return f'{where} is new since the pages were rendered'
  if current is inputs.ABSENT:
    return f'{where} is gone since the pages were rendered'
  if isinstance(current, list) and isinstance(recorded, list):
    return (f'{where} holds {len(current)} entries; the pages were rendered '
            f'from {len(recorded)}')
  if any(isinstance(value, str) and value.startswith(_DIGEST)
         for value in (recorded, current)):
    return f'{where} differs from what the pages were rendered from'
  return f'{where} is {current!r}; the pages were rendered from {recorded!r}'


def differences(folder: inputs.Folder) -> list[str]:
  """Where ``folder`` differs from its manifest: one line per file and key.

  Raises:
    ValueError: A file is not JSON, or the manifest is not one.
  """
  path = folder.root / NAME
  if not path.is_file():
    return [f'{path}: missing (python -m experiments.results tables writes '
            'it)']
  recorded = folder.read(NAME)['files']
  current = record(folder)
  lines = []
  for name in sorted(set(recorded) | set(current)):
    file = folder.root / name
    if name not in current:
      lines.append(f'{file}: gone since the pages were rendered from it')
    elif name not in recorded:
      lines.append(f'{file}: not among the files the pages were rendered '
                   'from')
    elif current[name]['sha256'] != recorded[name]['sha256']:
      lines += [f'{file}: {_change(*difference)}' for difference in
                inputs.compare(recorded[name]['values'],
                               current[name]['values'])] or [
          f'{file}: its bytes differ from those the pages were rendered '
          'from, its values do not (formatting)']
  return lines
