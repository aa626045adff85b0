"""Damaged checkpoints and changed settings stop a resume; nothing is written.

One tiny run (F1 on the embedded digits, a smoke run: 2 epochs, checkpoints
1 and 2) is trained once; every test resumes a copy of it after damaging a
file of checkpoint 2 or changing a setting, and expects one clear
``CheckpointError`` and the copy unchanged, byte for byte.
"""

import hashlib
import json
import pathlib
import shutil

import chex
import jax
import pytest

from experiments import checkpoints
from experiments import cli
from experiments import configs
from experiments import data
from experiments import train

DIGEST_MISMATCH = 'does not match its SHA-256 digest'
FALLBACK = 'Checkpoint 1 is intact: remove {}/2 and --resume again'


def _config(**overrides):
  return configs.get('f1').run_config('laperm', {
      'dataset': 'digits', 'validation_size': 100, 'progress': False,
      **overrides}, quick=True)


@pytest.fixture(scope='module', autouse=True)
def compilation_cache(tmp_path_factory):
  """Compiles each program once: every resume builds its programs afresh."""
  settings = {'jax_compilation_cache_dir': str(
      tmp_path_factory.mktemp('jax_cache')),
              'jax_persistent_cache_min_compile_time_secs': 0.0}
  before = {name: getattr(jax.config, name) for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  yield
  for name, value in before.items():
    jax.config.update(name, value)


@pytest.fixture(scope='module')
def splits():
  return data.load_splits(_config())[:2]


def _train(config, workdir, splits, resume=False):
  return train.train_and_evaluate(config, *splits, workdir, name='laperm',
                                  resume=resume)


@pytest.fixture(scope='module')
def finished(tmp_path_factory, splits):
  """A finished run's directory and its result."""
  workdir = tmp_path_factory.mktemp('finished') / 'laperm'
  return workdir, _train(_config(), workdir, splits)


@pytest.fixture
def run_copy(finished, tmp_path):
  workdir = tmp_path / 'laperm'
  shutil.copytree(finished[0], workdir)
  return workdir


def _snapshot(directory: pathlib.Path) -> dict[str, str]:
  return {str(path.relative_to(directory)):
          hashlib.sha256(path.read_bytes()).hexdigest()
          for path in sorted(directory.rglob('*')) if path.is_file()}


def _largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
  files = (step_dir / 'arrays').glob('ocdbt.process_*/d/*')
  return max(files, key=lambda path: path.stat().st_size)


def _flip_bit(path: pathlib.Path, offset: int, bit: int = 0x10) -> None:
  data_bytes = bytearray(path.read_bytes())
  data_bytes[offset] ^= bit
  path.write_bytes(bytes(data_bytes))


def _flip_digit(path: pathlib.Path) -> None:
  """Flips the lowest bit of the last even digit: still JSON, other values."""
  text = path.read_bytes()
  _flip_bit(path, max(text.rfind(digit) for digit in (b'2', b'4', b'6', b'8')),
            bit=0x01)


def _truncate(path: pathlib.Path) -> None:
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


# (what is damaged, how, what the message must name)
DAMAGE = {
    'array data, bit': (
        lambda step: _flip_bit(_largest_array_file(step),
                               _largest_array_file(step).stat().st_size // 2),
        DIGEST_MISMATCH),
    'array data, truncated': (
        lambda step: _truncate(_largest_array_file(step)), 'cannot be read'),
    'array metadata, bit': (
        lambda step: _flip_bit(step / 'arrays' / '_METADATA', 100),
        'arrays cannot be read (JSONDecodeError'),
    'array metadata, missing': (
        lambda step: (step / 'arrays' / '_METADATA').unlink(),
        'arrays cannot be read'),
    'array manifest, bit': (
        lambda step: _flip_bit(step / 'arrays' / 'manifest.ocdbt', 50),
        'arrays cannot be read'),
    'progress JSON, bit in a number': (
        lambda step: _flip_digit(step / 'progress' / 'metadata'),
        'progress/metadata does not match its SHA-256 digest'),
    'progress JSON, truncated': (
        lambda step: _truncate(step / 'progress' / 'metadata'),
        'progress cannot be read (JSONDecodeError'),
    'digests, missing (as in checkpoints written before digests)': (
        lambda step: shutil.rmtree(step / 'digests'), 'has no '),
    'digests JSON, bit': (
        lambda step: _flip_digit(step / 'digests' / 'metadata'),
        DIGEST_MISMATCH),
}


# A garbled manifest leaves an orbax thread reporting to a closed event loop.
@pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('damage', list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_naming_an_intact_one(
    run_copy, splits, damage):
  damage_file, names = DAMAGE[damage]
  damage_file(run_copy / 'checkpoints' / '2')
  before = _snapshot(run_copy)
  with pytest.raises(checkpoints.CheckpointError) as error:
    _train(_config(), run_copy, splits, resume=True)
  message = str(error.value)
  assert message.startswith('checkpoint 2 is damaged: ')
  assert names in message
  assert FALLBACK.format(run_copy / 'checkpoints') in message
  assert '\n' not in message
  assert _snapshot(run_copy) == before


def test_without_an_intact_checkpoint_the_message_says_so(run_copy, splits):
  for step in ('1', '2'):
    _flip_bit(_largest_array_file(run_copy / 'checkpoints' / step), 100)
  with pytest.raises(checkpoints.CheckpointError,
                     match='No earlier checkpoint .* is intact'):
    _train(_config(), run_copy, splits, resume=True)


def test_the_intact_checkpoint_resumes_to_the_uninterrupted_run(
    finished, run_copy, splits):
  _flip_bit(_largest_array_file(run_copy / 'checkpoints' / '2'), 100)
  shutil.rmtree(run_copy / 'checkpoints' / '2')  # As the message advises.
  resumed = _train(_config(), run_copy, splits, resume=True)
  uninterrupted = finished[1]
  chex.assert_trees_all_equal(
      (resumed.state.params, resumed.state.opt_state),
      (uninterrupted.state.params, uninterrupted.state.opt_state))
  chex.assert_trees_all_equal(resumed.best_params, uninterrupted.best_params)
  assert resumed.history == uninterrupted.history


@pytest.mark.parametrize('overrides, listed', [
    ({'optimizer.learning_rate': 0.5},
     ['optimizer.learning_rate: checkpoint 0.001, given 0.5']),
    ({'init.value': 0.5}, ['init.value: checkpoint 0.08, given 0.5']),
    ({'epochs': 1}, ['epochs: checkpoint 2, given 1 (below the 2 epochs '
                     'done)']),
    ({'optimizer.learning_rate': 0.5, 'init.value': 0.5, 'batch_size': 16},
     ['batch_size: checkpoint 32, given 16', 'init.value: checkpoint 0.08',
      'optimizer.learning_rate: checkpoint 0.001']),
], ids=['learning rate', 'init value', 'fewer epochs', 'three at once'])
def test_changed_settings_are_refused_listing_each(run_copy, splits,
                                                   overrides, listed):
  config = _config()
  config.update_from_flattened_dict(overrides)
  before = _snapshot(run_copy)
  with pytest.raises(checkpoints.CheckpointError) as error:
    _train(config, run_copy, splits, resume=True)
  message = str(error.value)
  assert message.startswith('--resume: the settings differ from those ')
  for item in listed:
    assert item in message
  assert message.count(' given ') == len(overrides)
  assert _snapshot(run_copy) == before


def test_more_epochs_extend_the_run_and_say_so(run_copy, splits):
  config = _config(devices=0)  # 0: every device; exempt, but recorded.
  config.epochs = 3
  _train(config, run_copy, splits, resume=True)
  metrics = json.loads((run_copy / 'metrics.json').read_text())
  assert metrics['config']['epochs'] == 3
  assert [record['epoch'] for record in metrics['history']][-1] == 3
  assert metrics['resumed'] == [{'epoch': 2, 'changed': {
      'devices': {'checkpoint': 1, 'given': 0},
      'epochs': {'checkpoint': 2, 'given': 3}}}]


def test_resume_needs_the_directory_that_names_the_runs(tmp_path, capsys):
  for run_dir in ('myrun/laperm', 'laperm/extra', 'seeds/laperm/seed-3'):
    (tmp_path / run_dir / 'checkpoints' / '2').mkdir(parents=True)
  before = sorted(tmp_path.rglob('*'))
  with pytest.raises(SystemExit) as stopped:
    cli.main(['f1', '--dataset', 'digits', '--resume', '--out',
              str(tmp_path)])
  assert stopped.value.code == 2
  line = capsys.readouterr().err.splitlines()[-1]
  assert f'{tmp_path} holds no checkpoint to continue of the runs laperm' in (
      line)
  assert (f'checkpoints lie in {tmp_path}/laperm/extra: --out must be the '
          f'directory that holds the run folders, e.g. {tmp_path}/laperm)'
          in line)
  assert sorted(tmp_path.rglob('*')) == before
  for out in ('myrun', 'seeds'):  # The directories that name the run.
    cli.check_resume(cli.parser().parse_args(
        ['f1', '--resume', '--out', str(tmp_path / out)]))
