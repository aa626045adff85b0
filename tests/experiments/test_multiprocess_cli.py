"""``python -m experiments`` as two processes (``scripts/launch_local.sh``).

Each process has one CPU device and the processes are joined by JAX's
multi-process runtime. Against one process with two CPU devices, the same
mesh: F1 on digits gives the same history, bit for bit (an all-reduce of
two values sums them in one order); a checkpoint written by two processes
resumes in one and the other way round, ending as the uninterrupted run; a
batch that the devices do not divide, or processes started with different
settings, stop both processes with the error; only process 0 writes files.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / 'scripts' / 'launch_local.sh'
# Evaluated after every epoch, so that a run stopped after its first epoch
# records what the uninterrupted run records.
ARGS = ['f1', '--dataset', 'digits', '--no-progress', '--runs', 'laperm',
        '--set', 'eval_every_steps=0']
TIMEOUT = 600


def _env(host_devices: int = 1) -> dict[str, str]:
  env = dict(os.environ)
  flags = [flag for flag in env.get('XLA_FLAGS', '').split()
           if 'xla_force_host_platform_device_count' not in flag]
  env['XLA_FLAGS'] = ' '.join(
      flags + [f'--xla_force_host_platform_device_count={host_devices}'])
  env.update(JAX_PLATFORMS='cpu', PYTHON=sys.executable, GRACE='5',
             PYTHONPATH=os.pathsep.join(
                 [str(ROOT)] + [p for p in [env.get('PYTHONPATH')] if p]))
  return env


def _two_processes(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(['bash', str(LAUNCHER), '2', *ARGS, *args],
                        env=_env(), cwd=ROOT, capture_output=True, text=True,
                        timeout=TIMEOUT, check=False)


def _one_process(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, '-m', 'experiments', *ARGS, '--devices', '2', *args],
      env=_env(2), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
      check=False)


def _history(out: pathlib.Path) -> list[dict]:
  return json.loads((out / 'laperm' / 'metrics.json').read_text())['history']


def _run_all(out: pathlib.Path) -> dict:
  results = {}
  for name, launch in (('two', _two_processes), ('one', _one_process)):
    completed = launch('--epochs', '2', '--out', str(out / name))
    assert completed.returncode == 0, completed.stderr[-5000:]
    results[name] = _history(out / name)
    results[f'{name}_stdout'] = completed.stdout
  # Epoch 1 in one setting, epoch 2 resumed in the other.
  for first, then in ((_two_processes, _one_process),
                      (_one_process, _two_processes)):
    name = f'{first.__name__}_then{then.__name__}'
    for epochs, extra in (('1', []), ('2', ['--resume'])):
      completed = (first if epochs == '1' else then)(
          '--epochs', epochs, '--out', str(out / name), *extra)
      assert completed.returncode == 0, completed.stderr[-5000:]
    results[name] = _history(out / name)
  start = time.perf_counter()
  completed = _two_processes('--set', 'batch_size=33', '--out',
                             str(out / 'bad'))
  results['bad'] = {'seconds': time.perf_counter() - start,
                    'returncode': completed.returncode,
                    'stderr': completed.stderr}
  results['disagree'] = _disagreeing_processes(out / 'disagree')
  return results


def _disagreeing_processes(out: pathlib.Path) -> list[dict]:
  """Two processes of one run, started with different epochs."""
  with socket.socket() as sock:
    sock.bind(('localhost', 0))
    port = sock.getsockname()[1]
  processes = [subprocess.Popen(
      [sys.executable, '-m', 'experiments', *ARGS, '--epochs', str(1 + index),
       '--out', str(out), '--coordinator', f'localhost:{port}',
       '--num-processes', '2', '--process-id', str(index)],
      env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for index in range(2)]
  finished = []
  for process in processes:
    _, stderr = process.communicate(timeout=TIMEOUT)
    finished.append({'returncode': process.returncode, 'stderr': stderr})
  return finished


@pytest.fixture(scope='module')
def runs(once_per_session, tmp_path_factory):
  out = tmp_path_factory.mktemp('multiprocess_experiments')
  return once_per_session('multiprocess_experiments', lambda: _run_all(out))


def test_two_processes_give_the_history_of_one_with_two_devices(runs):
  assert runs['two'] == runs['one']
  assert len(runs['two']) >= 2 and 'val_accuracy' in runs['two'][-1]


def test_only_process_zero_prints_the_table(runs):
  assert runs['two_stdout'].count('test acc') == 1


@pytest.mark.parametrize('name', ['_two_processes_then_one_process',
                                  '_one_process_then_two_processes'])
def test_checkpoints_resume_on_another_process_count(runs, name):
  assert runs[name] == runs['one']


def test_a_batch_the_devices_do_not_divide_stops_both_processes(runs):
  bad = runs['bad']
  assert bad['returncode'] != 0
  assert bad['stderr'].count('batch_size 33 is not divisible') == 2
  assert bad['seconds'] < 120, bad['seconds']


def test_processes_that_disagree_on_the_settings_all_stop(runs):
  for process in runs['disagree']:
    assert process['returncode'] != 0
    assert 'the processes disagree on the preset' in process['stderr'], (
        process['stderr'][-2000:])
