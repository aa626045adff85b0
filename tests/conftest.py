"""Shared fixtures of the test suite."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

# `--xla_force_host_platform_device_count` only acts before JAX starts, so
# multi-device checks run in a subprocess that sees this many CPU devices.
HOST_DEVICES = 8
ROOT = pathlib.Path(__file__).resolve().parent.parent


def _host_devices_env() -> dict[str, str]:
  env = dict(os.environ)
  flags = [flag for flag in env.get('XLA_FLAGS', '').split()
           if 'xla_force_host_platform_device_count' not in flag]
  env['XLA_FLAGS'] = ' '.join(
      flags + [f'--xla_force_host_platform_device_count={HOST_DEVICES}'])
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = os.pathsep.join(
      [str(ROOT)] + [p for p in [env.get('PYTHONPATH')] if p])
  return env


@pytest.fixture(scope='session')
def once_per_session(tmp_path_factory):
  """``once(name, compute)``: ``compute()``'s JSON result, computed once.

  Once per session even under pytest-xdist: workers of one session share the
  parent of their base temporary directories, and the first to take the
  lock computes while the others wait and read its result.
  """
  def once(name: str, compute):
    if not os.environ.get('PYTEST_XDIST_WORKER'):
      return compute()
    import fcntl  # pylint: disable=import-outside-toplevel
    shared = tmp_path_factory.getbasetemp().parent / f'{name}.json'
    with open(f'{shared}.lock', 'w', encoding='utf-8') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if shared.is_file():
        return json.loads(shared.read_text())
      result = compute()
      shared.write_text(json.dumps(result))
      return result

  return once


@pytest.fixture(scope='session')
def run_on_host_devices(once_per_session):
  """``run(script, *args)``: the JSON that ``script``'s last line prints.

  The script runs with ``HOST_DEVICES`` CPU devices, once per session.
  """
  def run(script: pathlib.Path, *args: str):
    def compute():
      completed = subprocess.run(
          [sys.executable, str(script), *args], env=_host_devices_env(),
          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
      assert completed.returncode == 0, completed.stderr[-10000:]
      return json.loads(completed.stdout.strip().splitlines()[-1])

    return once_per_session(script.stem, compute)

  return run
