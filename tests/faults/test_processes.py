"""Processes of one run that contradict each other stop at once, all of them.

Two processes with one ``--process-id``, or processes that disagree on
``--num-processes``, stop within seconds (JAX alone waits for its timeout,
then aborts with a check-failure stack, or accepts them), every one with
one ``error:`` line saying what differs. ``scripts/launch_local.sh``
returns as soon as every process has ended, with the first failure's exit
status. The handshake itself is also run in threads, for more cases than
processes could afford.
"""

import pathlib
import socket
import subprocess
import sys
import threading
import time

import pytest

from experiments import handshake

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARGS = ['f1', '--dataset', 'digits', '--quick', '--no-progress']
# Python, JAX and the command line start in a few seconds each; JAX's own
# timeout here is 60 s.
SECONDS = 40


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('localhost', 0))
    return sock.getsockname()[1]


def _processes(tmp_path, environment, counts_and_ids) -> list[dict]:
  """Starts one process per ``(num_processes, process_id)``; their ends."""
  coordinator = f'localhost:{_free_port()}'
  start = time.perf_counter()
  processes = [subprocess.Popen(
      [sys.executable, '-m', 'experiments', *ARGS, '--out',
       str(tmp_path / 'out'), '--coordinator', coordinator,
       '--num-processes', str(count), '--process-id', str(index)],
      env=environment, cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for count, index in counts_and_ids]
  ended = []
  for process in processes:
    _, stderr = process.communicate(timeout=300)
    ended.append({'returncode': process.returncode, 'stderr': stderr,
                  'seconds': time.perf_counter() - start})
  return ended


@pytest.mark.parametrize('counts_and_ids, message', [
    ([(2, 0), (2, 0)], '2 processes have --process-id 0'),
    ([(2, 0), (3, 1)], 'the processes disagree on --num-processes: '
     '2 (process 0), 3 (process 1)'),
])
def test_contradicting_processes_all_stop_saying_what_differs(
    tmp_path, environment, error_line, counts_and_ids, message):
  for process in _processes(tmp_path, environment, counts_and_ids):
    assert process['returncode'] == 2, process['stderr'][-5000:]
    assert error_line(process['stderr']).endswith(f'error: {message}')
    assert process['seconds'] < SECONDS, process['seconds']
  assert not (tmp_path / 'out').exists()


def test_the_launcher_returns_when_every_process_has_ended(tmp_path,
                                                           environment):
  grace = 120  # What the launcher used to wait after a failure.
  start = time.perf_counter()
  completed = subprocess.run(
      ['bash', str(ROOT / 'scripts' / 'launch_local.sh'), '2', *ARGS,
       '--epochs', '0', '--out', str(tmp_path / 'out')],
      env=dict(environment, GRACE=str(grace)), cwd=ROOT, capture_output=True,
      text=True, timeout=300, check=False)
  seconds = time.perf_counter() - start
  assert completed.returncode == 2, completed.stderr[-5000:]
  assert completed.stderr.count('expected an integer >= 1') == 2
  assert seconds < grace / 2, seconds


def _handshakes(counts_and_ids, timeout: float = 10) -> list[str]:
  """:func:`handshake.check` in one thread per process; what each raised
  (``'ok'`` for nothing)."""
  coordinator = f'localhost:{_free_port()}'
  outcomes = [''] * len(counts_and_ids)

  def one(slot: int, count: int, index: int) -> None:
    try:
      handshake.check(coordinator, count, index, timeout)
      outcomes[slot] = 'ok'
    except (ValueError, OSError) as error:
      outcomes[slot] = f'{type(error).__name__}: {error}'

  threads = [threading.Thread(target=one, args=(slot, *pair))
             for slot, pair in enumerate(counts_and_ids)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  return outcomes


@pytest.mark.parametrize('counts_and_ids, outcome', [
    ([(3, 0), (3, 1), (3, 2)], 'ok'),
    ([(3, 0), (3, 2), (3, 2)], 'ValueError: 2 processes have --process-id 2'),
    ([(2, 0), (3, 1), (3, 2)], 'ValueError: the processes disagree on '
     '--num-processes: 2 (process 0), 3 (processes 1, 2)'),
    ([(3, 0), (2, 1), (2, 1)], 'ValueError: 2 processes have --process-id 1; '
     'the processes disagree on --num-processes: 2 (processes 1, 1), 3 '
     '(process 0)'),
])
def test_every_process_gets_the_same_answer(counts_and_ids, outcome):
  assert _handshakes(counts_and_ids) == [outcome] * len(counts_and_ids)


def test_a_process_that_never_arrives_is_named_to_all_that_did():
  start = time.perf_counter()
  outcomes = _handshakes([(3, 0), (3, 2)], timeout=1)
  assert len(set(outcomes)) == 1
  assert outcomes[0].startswith('TimeoutError: only processes [0, 2] of 3 '
                                'reached the coordinator'), outcomes
  assert time.perf_counter() - start < 5


def test_without_process_zero_the_others_give_up():
  outcomes = _handshakes([(2, 1)], timeout=0.5)
  assert outcomes[0].startswith('TimeoutError: process 0 did not answer at ')
