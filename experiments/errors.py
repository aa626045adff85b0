"""Failures outside the program, reported as one ``error:`` line.

A file system that refuses a write (no such directory, no permission, a
full disk), a checkpoint file that is damaged or missing, or a dataset that
cannot be had or read stops ``python -m experiments`` with one line and exit
status 1 (:func:`reported`). Anything else is a bug and keeps its
traceback, as does every failure under ``--debug``.

A failure counts as one of reading or writing files when it is

- an ``OSError``, wherever it comes from;
- an exception class that the checkpoint or data layer defines for the
  user (``DataUnavailableError``, the checkpoints' error for a damaged
  checkpoint): its message is written for the command line;
- a ``ValueError``, ``KeyError``, ``EOFError`` or ``zlib.error`` raised
  inside a module that reads or writes files (:data:`READERS`): JSON, gzip,
  orbax and the TensorStore it drives (whose failures are ``ValueError``),
  and the layers of experiments that read checkpoints and datasets.

Libraries print tracebacks of their own for such a failure before it
reaches the main thread: orbax logs each failure of its background threads,
and TensorStore's late callbacks to orbax's closed event loop fail. Outside
``--debug``, these are dropped: the ``error:`` line reports the failure.
"""

import contextlib
import logging
import re
import sys
import traceback
import zlib
from typing import Any, Iterator, Optional

# Layers of experiments whose exception classes carry messages for the user.
LAYERS = {'experiments.checkpoints': 'checkpoint', 'experiments.data':
          'dataset'}
# Modules (with their submodules) whose failures to read or write a file
# surface as one of _READ_FAILURES.
READERS = ('json', 'gzip', 'orbax', 'tensorstore', *LAYERS)
_READ_FAILURES = (ValueError, KeyError, EOFError, zlib.error)
# TensorStore appends its whole JSON spec to a message, as
# `[tensorstore_spec='{...}']`: the path in the message says enough.
_SPEC = re.compile(r"\s*\[[\w ]+(\[\d+\])?='[^']*'\]")


def _within(module: str, packages: tuple[str, ...]) -> bool:
  return any(module == package or module.startswith(package + '.')
             for package in packages)


def _modules(error: BaseException) -> list[str]:
  """The modules of ``error``'s traceback, outermost first."""
  return [frame.f_globals.get('__name__', '')
          for frame, _ in traceback.walk_tb(error.__traceback__)]


def _first_line(message: str) -> str:
  return _SPEC.sub('', message.splitlines()[0] if message else '')


def io_failure(error: BaseException) -> Optional[str]:
  """The line that reports ``error`` if it is an I/O failure, else None.

  Args:
    error: An exception that stopped the command line.

  Returns:
    The message, one line without ``error:``; None for an exception that
    is none of the failures this module's docstring lists.
  """
  if isinstance(error, OSError):
    if error.filename is None:
      return error.strerror or _first_line(str(error))
    names = ' -> '.join(str(name) for name in (error.filename, error.filename2)
                        if name is not None)
    return f'{names}: {error.strerror or error}'
  if type(error).__module__ in LAYERS:
    return _first_line(str(error))
  modules = _modules(error)
  if not (isinstance(error, _READ_FAILURES) and modules and
          _within(modules[-1], READERS)):
    return None
  if modules[-1] in LAYERS:  # Raised by experiments: a message for the user.
    return _first_line(str(error))
  # KeyError's str() is the repr of its key; the message is its argument.
  message = str(error.args[0]) if isinstance(error, KeyError) else str(error)
  layer = next((name for module, name in LAYERS.items() if module in modules),
               'file')
  return f'{layer}: {_first_line(message)} ({type(error).__name__})'


class _NoTracebacks(logging.Filter):
  """Drops log records that carry an exception (and so a traceback)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.exc_info


def _closed_loop_callback(unraisable: Any) -> bool:
  """Whether an unraisable exception is a callback to a closed event loop.

  When one read of an orbax restore fails, orbax closes its event loop
  while TensorStore still completes the other reads; each completion then
  raises 'Event loop is closed' in asyncio, with nothing to catch it.
  """
  tb = unraisable.exc_traceback
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return (isinstance(unraisable.exc_value, RuntimeError) and
          str(unraisable.exc_value) == 'Event loop is closed' and
          tb is not None and
          tb.tb_frame.f_globals.get('__name__', '').startswith('asyncio.'))


def _quiet_library_tracebacks() -> None:
  """Drops, for the rest of the process, the tracebacks that libraries print
  for a failure that also reaches the main thread: orbax's log records (it
  logs through absl's logger) and TensorStore's callbacks to a closed loop.
  """
  absl = logging.getLogger('absl')
  if not any(isinstance(each, _NoTracebacks) for each in absl.filters):
    absl.addFilter(_NoTracebacks())
  if getattr(sys.unraisablehook, 'drops_closed_loop_callbacks', False):
    return
  default_hook = sys.unraisablehook

  def hook(unraisable: Any) -> None:
    if not _closed_loop_callback(unraisable):
      default_hook(unraisable)

  hook.drops_closed_loop_callbacks = True
  sys.unraisablehook = hook


@contextlib.contextmanager
def reported(debug: bool = False) -> Iterator[None]:
  """Turns an I/O failure inside into one ``error:`` line and status 1.

  Outside ``debug``, the tracebacks that libraries print for such a failure
  are dropped for the rest of the process (the command line runs once per
  process).

  Args:
    debug: Let every exception through with its traceback, and keep the
      tracebacks that libraries print.

  Yields:
    Nothing; the body runs inside.

  Raises:
    SystemExit: With the ``error:`` line, for an I/O failure.
  """
  if not debug:
    _quiet_library_tracebacks()
  try:
    yield
  except (OSError, RuntimeError, *_READ_FAILURES) as error:
    line = None if debug else io_failure(error)
    if line is None:
      raise
    raise SystemExit(f'error: {line}') from None
