"""Failures of I/O stop ``python -m experiments`` with one ``error:`` line.

An ``--out`` that cannot be made, a full disk, a damaged or missing
checkpoint file and a dataset file that cannot be read each end in exit
status 1, one line and no traceback, and leave the files already there as
they were; ``--debug`` shows the traceback, and a bug always does. Most
cases run the command line in this process; the full disk and a truncated
array file run it in a subprocess, as a user does, so that what libraries
print from their threads is seen too.
"""

import gzip
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments import cli
from experiments import data
from experiments import train

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARGS = ['f1', '--dataset', 'digits', '--quick', '--no-progress', '--runs',
        'laperm']
# Bytes a file of the full-disk run may hold: less than its first
# checkpoint's largest file.
FILE_SIZE_LIMIT = 1024


def _stops(capsys, argv: list[str]) -> str:
  """Runs the command line here; its ``error:`` line, checked to be one."""
  with pytest.raises(SystemExit) as stopped:
    cli.main(argv)
  assert 'Traceback' not in capsys.readouterr().err
  message = stopped.value.code
  assert isinstance(message, str), message  # A message means status 1.
  assert message.startswith('error: ') and '\n' not in message, message
  return message


def _files(directory: pathlib.Path) -> dict[str, bytes]:
  return {str(path.relative_to(directory)): path.read_bytes()
          for path in sorted(directory.rglob('*')) if path.is_file()}


@pytest.fixture(scope='module')
def finished_run(once_per_session, tmp_path_factory) -> pathlib.Path:
  """A finished run, trained once per session; tests damage copies of it."""
  def train_once() -> str:
    out = tmp_path_factory.mktemp('finished') / 'run'
    cli.main([*ARGS, '--out', str(out)])
    return str(out)

  return pathlib.Path(once_per_session('faults_finished_run', train_once))


def _damaged_copy(finished_run: pathlib.Path, directory: pathlib.Path,
                  pattern: str, damage: str) -> pathlib.Path:
  """A copy of the run with the latest checkpoint's first file of
  ``pattern`` (under ``checkpoints/STEP/``; the one ``--resume`` reads) cut
  to half its size, or deleted."""
  run = directory / 'run'
  shutil.copytree(finished_run, run)
  checkpoints = run / 'laperm' / 'checkpoints'
  latest = max((path for path in checkpoints.iterdir() if path.name.isdigit()),
               key=lambda path: int(path.name))
  target = sorted(latest.glob(pattern))[0]
  if damage == 'delete':
    shutil.rmtree(target) if target.is_dir() else target.unlink()
  else:
    target.write_bytes(target.read_bytes()[:target.stat().st_size // 2])
  return run


@pytest.mark.parametrize('pattern, damage', [
    ('progress/metadata', 'truncate'),
    ('progress/metadata', 'delete'),
    ('arrays/_METADATA', 'truncate'),
    ('arrays/manifest.ocdbt', 'truncate'),
    ('arrays', 'delete'),
])
def test_a_damaged_checkpoint_stops_the_resume(finished_run, tmp_path, capsys,
                                               pattern, damage):
  run = _damaged_copy(finished_run, tmp_path, pattern, damage)
  before = _files(run)
  message = _stops(capsys, [*ARGS, '--out', str(run), '--resume'])
  assert 'checkpoint' in message.lower(), message
  assert _files(run) == before


def test_a_truncated_array_file_stops_the_resume_with_one_line(
    finished_run, tmp_path, environment, error_line):
  run = _damaged_copy(finished_run, tmp_path, 'arrays/d/*', 'truncate')
  before = _files(run)
  completed = subprocess.run(
      [sys.executable, '-m', 'experiments', *ARGS, '--out', str(run),
       '--resume'], env=environment, cwd=ROOT, capture_output=True,
      text=True, timeout=300, check=False)
  assert completed.returncode == 1, completed.stderr[-5000:]
  line = error_line(completed.stderr)
  assert line.startswith('error: ') and 'checkpoint' in line.lower(), line
  assert _files(run) == before


def test_debug_shows_the_traceback(finished_run, tmp_path):
  run = _damaged_copy(finished_run, tmp_path, 'progress/metadata', 'truncate')
  with pytest.raises(ValueError):  # JSON's, or the checkpoints' own.
    cli.main([*ARGS, '--out', str(run), '--resume', '--debug'])


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
  def broken(*args, **kwargs):
    raise ValueError('a bug')

  monkeypatch.setattr(train, 'train_preset', broken)
  with pytest.raises(ValueError, match='a bug'):
    cli.main([*ARGS, '--out', str(tmp_path / 'out')])


def test_the_checkpoint_layers_own_errors_are_one_line(tmp_path, monkeypatch,
                                                       capsys):
  # Whatever the checkpoint layer raises for a damaged checkpoint, with a
  # message of its own, wherever it is raised from.
  class CheckpointError(ValueError):
    pass

  CheckpointError.__module__ = 'experiments.checkpoints'

  def damaged(*args, **kwargs):
    raise CheckpointError('checkpoint 2 is damaged: arrays/d/0 differs')

  monkeypatch.setattr(train, 'train_preset', damaged)
  assert _stops(capsys, [*ARGS, '--out', str(tmp_path / 'out')]) == (
      'error: checkpoint 2 is damaged: arrays/d/0 differs')


def test_an_out_under_a_file_stops(tmp_path, capsys):
  file = tmp_path / 'file'
  file.write_text('')
  out = file / 'out'
  assert _stops(capsys, [*ARGS, '--out', str(out)]) == (
      f'error: {out}: Not a directory')


@pytest.fixture
def unwritable(tmp_path) -> pathlib.Path:
  """A directory that this user cannot create."""
  if os.geteuid() == 0:  # Permissions do not stop root; sysfs does.
    if not pathlib.Path('/sys').is_dir():
      pytest.skip('no /sys to be refused by')
    return pathlib.Path('/sys/laperm-jax-out')
  locked = tmp_path / 'locked'
  locked.mkdir(mode=0o555)
  return locked / 'out'


def test_an_out_without_permission_stops(unwritable, capsys):
  message = _stops(capsys, [*ARGS, '--out', str(unwritable)])
  assert message.startswith(f'error: {unwritable}: '), message
  assert not unwritable.exists()


def test_a_full_disk_stops_the_run(finished_run, tmp_path, environment,
                                   error_line):
  # The size limit as bash sets it (blocks of 1024 bytes), with SIGXFSZ
  # ignored, so that a write past it fails (EFBIG) instead of killing the
  # process. The compilation cache holds the run's programs where this
  # process trained `finished_run` (else JAX warns, in lines that are no
  # error, that it cannot write them).
  command = ' '.join([
      "trap '' XFSZ;", f'ulimit -f {FILE_SIZE_LIMIT // 1024};', 'exec',
      sys.executable, '-m', 'experiments', *ARGS, '--out',
      str(tmp_path / 'out')])
  completed = subprocess.run(
      ['bash', '-c', command], env=environment, cwd=ROOT, capture_output=True,
      text=True, timeout=300, check=False)
  assert completed.returncode == 1, completed.stderr[-5000:]
  line = error_line(completed.stderr)
  assert line.startswith('error: ') and 'File too large' in line, line


def _write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  header = (0x0800 | array.ndim).to_bytes(4, 'big') + b''.join(
      size.to_bytes(4, 'big') for size in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize('damage, message', [
    ('truncate', 'cannot be read as gzip: Compressed file ended'),
    ('not gzip', 'cannot be read as gzip: Not a gzipped file'),
    ('directory', 'lacks the MNIST-format files'),
])
def test_an_unreadable_dataset_file_stops(tmp_path, capsys, damage, message):
  images = np.random.default_rng(0).integers(0, 256, (300, 28, 28))
  for split in ('train', 'test'):
    images_file, labels_file = data.IDX_FILES[split]
    _write_idx(tmp_path / images_file, images)
    _write_idx(tmp_path / labels_file, np.arange(len(images)) % 10)
  damaged = tmp_path / data.IDX_FILES['train'][0]
  if damage == 'truncate':
    damaged.write_bytes(damaged.read_bytes()[:1000])
  elif damage == 'not gzip':
    damaged.write_bytes(b'not a gzip file')
  else:
    damaged.unlink()
    damaged.mkdir()
  line = _stops(capsys, ['f1', '--dataset', f'idx:{tmp_path}', '--quick',
                         '--out', str(tmp_path / 'out')])
  assert message in line and damaged.name in line, line
