"""The command line refuses bad input: one ``error:`` line, status 2, no run."""

import json
import time

import pytest

from experiments import cli
from experiments import configs
from experiments import download
from experiments import train

PREFIX = 'python -m experiments: error: '


@pytest.mark.parametrize('argv, message', [
    (['--set', 'optimizer.sync_perod=5'],
     "--set optimizer.sync_perod=5: unknown config key "
     "'optimizer.sync_perod' (did you mean 'optimizer.sync_period'?)"),
    (['--set', 'batch_size=abc'],
     '--set batch_size=abc: batch_size takes a value of type int, like 128'),
    (['--set', 'batch_size=2.5'], 'batch_size takes a value of type int'),
    (['--set', 'batch_size=True'], 'batch_size takes a value of type int'),
    (['--set', 'progress=1'], 'progress takes a value of type bool'),
    (['--set', 'optimizer.boundaries=3'],
     'optimizer.boundaries takes a value of type tuple'),
    (['--set', 'optimizer'], "--set takes KEY=VALUE, got 'optimizer'"),
    (['--set', 'optimizer=adam'], "unknown config key 'optimizer'"),
    (['--epochs', '0'], "argument --epochs: expected an integer >= 1, got '0'"),
    (['--epochs', '-3'], 'argument --epochs: expected an integer >= 1'),
    (['--epochs', 'ten'], 'argument --epochs: expected an integer >= 1'),
    (['--set', 'epochs=0'], '--set epochs=0: epochs must be >= 1'),
    (['--prune', '1.5'],
     "argument --prune: expected a fraction in [0, 1), got '1.5'"),
    (['--prune', '-0.1'], 'argument --prune: expected a fraction in [0, 1)'),
    (['--seed', '-1'], 'argument --seed: expected an integer >= 0'),
    (['--runs', 'laperm,lapem'],
     "--runs: unknown run 'lapem' (did you mean 'laperm'?); this preset has "
     'laperm'),
    (['--dataset', 'mnsit'], "Unknown dataset 'mnsit'"),
    (['--dataset', 'tfds:mnsit'],
     "tensorflow-datasets has no 'mnsit' (did you mean 'mnist'?)"),
    (['--set', 'dataset=imagenet'], "Unknown dataset 'imagenet'"),
    (['--dataset', 'text:/nowhere'],
     "normalization='scale': text:/nowhere holds bytes that a model embeds "
     "as tokens; use normalization='none'"),
    (['--dataset', 'digits', '--set', 'validation_size=5000'],
     '--set validation_size=5000: digits has 1497 training examples; hold '
     'out from 1 to 1496'),
    (['--dataset', 'digits', '--set', 'validation_size=0'],
     'digits has 1497 training examples'),
    (['--resume'], 'holds no checkpoint to continue'),
])
def test_bad_input_stops_with_one_line_and_status_2(argv, message, tmp_path,
                                                    capsys):
  out = tmp_path / 'out'
  with pytest.raises(SystemExit) as stopped:
    cli.main(['f1', *argv, '--out', str(out)])
  assert stopped.value.code == 2
  err = capsys.readouterr().err
  assert err.splitlines()[-1].startswith(PREFIX)
  assert message in err.splitlines()[-1]
  assert 'Traceback' not in err
  assert not out.exists()  # Nothing ran.


def test_unknown_preset_suggests_the_closest(capsys):
  with pytest.raises(SystemExit) as stopped:
    cli.main(['f11'])
  assert stopped.value.code == 2
  line = capsys.readouterr().err.splitlines()[-1]
  assert line.startswith(
      PREFIX + "argument preset: unknown preset 'f11' (did you mean 'f1'?); "
      'known: demo, ')


def test_resume_needs_an_output_directory(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as stopped:
    cli.main(['f1', '--resume'])
  assert stopped.value.code == 2
  assert capsys.readouterr().err.splitlines()[-1] == (
      PREFIX + '--resume needs --out, the directory of the runs')
  assert not list(tmp_path.iterdir())


def test_resume_finds_checkpoints_of_any_run(tmp_path):
  args = cli.parser().parse_args(['f1', '--resume', '--out', str(tmp_path)])
  (tmp_path / 'laperm' / 'checkpoints').mkdir(parents=True)
  with pytest.raises(cli.UsageError, match='no checkpoint'):
    cli.check_resume(args)  # An empty checkpoints directory.
  (tmp_path / 'laperm' / 'checkpoints' / '3').mkdir()
  cli.check_resume(args)


def test_set_values_take_the_type_of_the_field():
  args = cli.parser().parse_args([
      'f1', '--set', 'optimizer.learning_rate=1', '--set',
      'optimizer.boundaries=[3, 6]', '--set', 'progress=false', '--set',
      'dataset=idx:/data/fashion mnist', '--set', "model.name='mlp'",
      '--set', 'optimizer.sync_period=7'])
  config = cli.run_configs(configs.get('f1'), args)['laperm']
  assert config.optimizer.learning_rate == 1.0
  assert isinstance(config.optimizer.learning_rate, float)
  assert config.optimizer.boundaries == (3, 6)
  assert config.progress is False
  assert config.dataset == 'idx:/data/fashion mnist'
  assert config.model.name == 'mlp'
  assert config.optimizer.sync_period == 7


def test_a_preset_validation_split_is_scaled_to_a_small_dataset():
  args = cli.parser().parse_args(['f1', '--dataset', 'digits'])
  run_configs = cli.run_configs(configs.get('f1'), args)
  assert run_configs['laperm'].validation_size == 5000
  assert train.prepare_data(run_configs) == [
      "digits has 1497 training examples: holding out 149 (10%) for "
      "validation instead of the preset's 5000"]
  assert run_configs['laperm'].validation_size == 149
  args = cli.parser().parse_args(['f1', '--dataset', 'digits', '--set',
                                  'validation_size=300'])
  run_configs = cli.run_configs(configs.get('f1'), args)
  assert not train.prepare_data(run_configs)
  assert run_configs['laperm'].validation_size == 300


def test_the_scaled_validation_split_is_said_once(tmp_path, capsys):
  out = tmp_path / 'out'
  cli.main(['f1', '--dataset', 'digits', '--epochs', '1', '--no-progress',
            '--out', str(out)])
  printed = capsys.readouterr().out.splitlines()
  assert printed[0] == ("digits has 1497 training examples: holding out 149 "
                        "(10%) for validation instead of the preset's 5000")
  assert sum('holding out' in line for line in printed) == 1
  config = json.loads((out / 'laperm' / 'metrics.json').read_text())['config']
  assert config['validation_size'] == 149


def test_download_option():
  def download_of(*argv):
    return cli.parser().parse_args(['f1', *argv]).download

  assert download_of() is None
  assert download_of('--download') is True
  assert download_of('--no-download') is False


@pytest.mark.parametrize('argv, message', [
    ([], 'no network: 192.0.2.1 did not accept a connection within 3 s'),
    (['--no-download'], '(--no-download). Prepare it where there is network'),
])
def test_missing_data_offline_stops_within_seconds(argv, message, tmp_path,
                                                   monkeypatch):
  pytest.importorskip('tensorflow_datasets')
  # An address never routed (TEST-NET-1) instead of MNIST's host: offline
  # on every machine.
  monkeypatch.setattr(download, '_download_urls',
                      lambda name: {'file.gz': 'http://192.0.2.1/file.gz'})
  out = tmp_path / 'out'
  start = time.perf_counter()
  with pytest.raises(SystemExit) as stopped:
    cli.main(['f1', '--data-dir', str(tmp_path / 'tfds'), '--out', str(out),
              *argv])
  assert time.perf_counter() - start < download.CHECK_TIMEOUT + 5
  assert stopped.value.code.startswith('error: tensorflow-datasets has no '
                                       "prepared 'mnist'")
  assert message in stopped.value.code
  assert not out.exists()
