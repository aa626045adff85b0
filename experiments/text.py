"""Byte-level text corpora as next-byte prediction examples.

A corpus is a directory: every regular file under it, at any depth, read as
bytes (symbolic links to files count; links to directories are not
followed). Debian's ``python3.11-doc`` installs one, the reStructuredText
sources of the Python documentation, in
``/usr/share/doc/python3.11/html/_sources`` (``scripts/get_text_corpus.sh``).

**The split, by file.** A file's split depends on its path relative to the
directory alone: the first 8 bytes of the SHA-256 of that path (as POSIX
text, its file-system bytes) read as a big-endian integer and divided by
2**64 give a number in [0, 1); the file is in ``train`` below 0.9,
``validation`` below 0.95, else ``test`` (:data:`SPLIT_BOUNDS`). So the
splits hold 90%, 5% and 5% of the files in expectation (not exactly, nor
of the bytes); no file is cut between splits; the split is the same on
every machine; and adding, removing or editing a file moves no other
file. :func:`split_record` writes it down
with each file's size and SHA-256.

**Examples.** A split's files are concatenated in sorted order of their
relative paths and cut into consecutive, non-overlapping windows of
``sequence_length + 1`` bytes. A window's first ``sequence_length`` bytes
are the inputs (``uint8``), its last ``sequence_length`` the labels
(``int32``): the byte that follows each input. Windows run across the
boundary between two files, with no separator between them (every byte
value is a token; none is free to mark the end of a file). The tail of the
concatenation, fewer than ``sequence_length + 1`` bytes, is dropped. The
first byte of each window is an input only, never a label: a split's labels
are ``sequence_length`` of every ``sequence_length + 1`` of its bytes.
"""

import argparse
import hashlib
import json
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any, Optional, Union

import numpy as np

SPLITS = ('train', 'validation', 'test')
# A file's split: the first whose bound exceeds the position its path
# hashes to, else the last (test).
SPLIT_BOUNDS = {'train': 0.9, 'validation': 0.95}
DEFAULT_SEQUENCE_LENGTH = 128
NUM_TOKENS = 256  # Byte values.
SPLIT_RULE = (
    'The first 8 bytes of the SHA-256 of a file\'s path relative to the '
    'directory (POSIX, file-system bytes), read as a big-endian integer and '
    'divided by 2**64: below {train} the file is in train, below '
    '{validation} in validation, else in test.').format(**SPLIT_BOUNDS)

PathLike = Union[str, os.PathLike]


def file_paths(directory: PathLike) -> list[str]:
  """Every regular file under ``directory``, as sorted relative POSIX paths.

  Args:
    directory: The corpus.

  Returns:
    The paths, relative to ``directory``.

  Raises:
    FileNotFoundError: ``directory`` is not a directory or holds no file.
    PermissionError: A folder under it cannot be read (naming it).
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f'{directory} is not a directory')

  def fail(error: OSError):
    raise error

  paths = []
  for root, _, names in os.walk(directory, onerror=fail):
    for name in names:
      path = pathlib.Path(root, name)
      if path.is_file():
        paths.append(path.relative_to(directory).as_posix())
  if not paths:
    raise FileNotFoundError(f'{directory} holds no file')
  return sorted(paths)


def split_of(relative_path: str) -> str:
  """The split of the file at ``relative_path`` (see the module docstring)."""
  digest = hashlib.sha256(os.fsencode(relative_path)).digest()
  position = int.from_bytes(digest[:8], 'big') / 2**64
  return next((split for split, bound in SPLIT_BOUNDS.items()
               if position < bound), SPLITS[-1])


def split_files(directory: PathLike) -> dict[str, list[str]]:
  """The files of each split, as sorted relative paths.

  Args:
    directory: The corpus.

  Returns:
    ``{'train': [...], 'validation': [...], 'test': [...]}``; a split may
    be empty.

  Raises:
    FileNotFoundError: ``directory`` is not a directory or holds no file.
  """
  splits = {split: [] for split in SPLITS}
  for path in file_paths(directory):
    splits[split_of(path)].append(path)
  return splits


def split_bytes(directory: PathLike) -> dict[str, int]:
  """The size in bytes of each split's files together, without reading them."""
  directory = pathlib.Path(directory)
  return {split: sum((directory / path).stat().st_size for path in paths)
          for split, paths in split_files(directory).items()}


def num_windows(num_bytes: int, sequence_length: int) -> int:
  """Examples that ``num_bytes`` of text make (the tail is dropped).

  Raises:
    ValueError: ``sequence_length`` is below 1.
  """
  if sequence_length < 1:
    raise ValueError(f'sequence_length must be >= 1; got {sequence_length}')
  return num_bytes // (sequence_length + 1)


def windows(content: bytes, sequence_length: int
            ) -> tuple[np.ndarray, np.ndarray]:
  """Next-byte examples of ``content``: inputs and the bytes that follow them.

  Args:
    content: The text.
    sequence_length: Bytes per example.

  Returns:
    ``(inputs, labels)``: ``uint8`` and ``int32`` arrays of shape
    ``(len(content) // (sequence_length + 1), sequence_length)``, where
    ``labels[i, j]`` is the byte after ``inputs[i, j]``.

  Raises:
    ValueError: ``sequence_length`` is below 1.
  """
  count = num_windows(len(content), sequence_length)
  cut = np.frombuffer(content, np.uint8, count * (sequence_length + 1))
  cut = cut.reshape(count, sequence_length + 1)
  return np.ascontiguousarray(cut[:, :-1]), cut[:, 1:].astype(np.int32)


def read_files(directory: PathLike, paths: Iterable[str]) -> bytes:
  """The files at ``paths`` under ``directory``, concatenated in that order."""
  directory = pathlib.Path(directory)
  return b''.join((directory / path).read_bytes() for path in paths)


def examples(contents: dict[str, bytes], sequence_length: int, source: str
             ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Each split's text as next-byte examples (:func:`windows`).

  Args:
    contents: Split name -> its text.
    sequence_length: Bytes per example.
    source: Where the text comes from, for the error message.

  Returns:
    Split name -> ``(inputs, labels)``.

  Raises:
    ValueError: ``sequence_length`` is below 1, or a split's text makes no
      example (at most ``sequence_length`` bytes).
  """
  num_windows(0, sequence_length)  # Checks it.
  for split, content in contents.items():
    if num_windows(len(content), sequence_length) == 0:
      raise ValueError(
          f'The {split} split of {source} holds {len(content)} bytes, too '
          f'few for one example of sequence_length + 1 = '
          f'{sequence_length + 1} bytes.')
  return {split: windows(content, sequence_length)
          for split, content in contents.items()}


def read_splits(directory: PathLike) -> dict[str, bytes]:
  """Each split's files, concatenated in sorted order (:func:`split_files`)."""
  return {split: read_files(directory, paths)
          for split, paths in split_files(directory).items()}


def load(directory: PathLike,
         sequence_length: int = DEFAULT_SEQUENCE_LENGTH
         ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Each split of a corpus as next-byte examples (:func:`windows`).

  Args:
    directory: The corpus.
    sequence_length: Bytes per example.

  Returns:
    ``{'train': (inputs, labels), 'validation': ..., 'test': ...}``.

  Raises:
    FileNotFoundError: ``directory`` is not a directory or holds no file.
    ValueError: ``sequence_length`` is below 1, or a split's files make no
      example (none of the files falls in it, or they hold at most
      ``sequence_length`` bytes).
  """
  num_windows(0, sequence_length)  # Checks it before reading the files.
  return examples(read_splits(directory), sequence_length, str(directory))


def split_record(directory: PathLike) -> dict[str, Any]:
  """The split written down: the rule, and each split's files and checksums.

  Args:
    directory: The corpus.

  Returns:
    A JSON-ready dict: ``directory``, ``rule``, ``bounds``, and per split
    its number of ``files``, ``bytes``, the ``sha256`` of its files
    concatenated in order (what :func:`load` cuts into examples) and
    ``entries``, each file's ``path``, ``bytes`` and ``sha256``.
  """
  record = {'directory': str(directory), 'rule': SPLIT_RULE,
            'bounds': SPLIT_BOUNDS, 'splits': {}}
  for split, paths in split_files(directory).items():
    concatenated = hashlib.sha256()
    entries = []
    for path in paths:
      content = read_files(directory, [path])
      concatenated.update(content)
      entries.append({'path': path, 'bytes': len(content),
                      'sha256': hashlib.sha256(content).hexdigest()})
    record['splits'][split] = {
        'files': len(paths),
        'bytes': sum(entry['bytes'] for entry in entries),
        'sha256': concatenated.hexdigest(), 'entries': entries}
  return record


def write_split_record(directory: PathLike, path: PathLike) -> dict[str, Any]:
  """Writes :func:`split_record` of ``directory`` to ``path`` as JSON."""
  record = split_record(directory)
  pathlib.Path(path).write_text(json.dumps(record, indent=1) + '\n')
  return record


def main(argv: Optional[Sequence[str]] = None) -> None:
  """``python -m experiments.text split DIR [--out FILE]``: split sizes."""
  cli = argparse.ArgumentParser(
      prog='python -m experiments.text',
      description='The train/validation/test split of a text corpus.')
  commands = cli.add_subparsers(dest='command', required=True)
  split = commands.add_parser(
      'split', help="print each split's files, bytes and examples")
  split.add_argument('directory', type=pathlib.Path)
  split.add_argument('--out', type=pathlib.Path,
                     help='write the split as JSON, with every file and its '
                     'SHA-256')
  split.add_argument('--sequence-length', type=int,
                     default=DEFAULT_SEQUENCE_LENGTH,
                     help='bytes per example (default: %(default)s)')
  args = cli.parse_args(argv)
  if args.sequence_length < 1:
    cli.error(f'--sequence-length must be >= 1; got {args.sequence_length}')
  try:
    record = (write_split_record(args.directory, args.out) if args.out
              else split_record(args.directory))
  except OSError as error:
    cli.error(str(error))
  print(f"{'split':10} {'files':>6} {'bytes':>10} "
        f'{"examples of " + str(args.sequence_length):>16}')
  for name, summary in record['splits'].items():
    print(f"{name:10} {summary['files']:6} {summary['bytes']:10} "
          f"{num_windows(summary['bytes'], args.sequence_length):16}")


if __name__ == '__main__':
  main()
