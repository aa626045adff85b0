"""Shared setup of the fault tests."""

import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """One compilation cache for the session, never the user's.

  ``python -m experiments`` (``cli.main``) caches under
  ``$XDG_CACHE_HOME``, and subprocesses inherit it.
  """
  cache = tmp_path_factory.mktemp('jax_cache')
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('XDG_CACHE_HOME', str(cache))
    yield


@pytest.fixture
def environment() -> dict[str, str]:
  """A subprocess's environment: one CPU device, this checkout first."""
  env = dict(os.environ)
  flags = [flag for flag in env.get('XLA_FLAGS', '').split()
           if 'xla_force_host_platform_device_count' not in flag]
  env['XLA_FLAGS'] = ' '.join(
      flags + ['--xla_force_host_platform_device_count=1'])
  env.update(JAX_PLATFORMS='cpu', PYTHON=sys.executable,
             PYTHONPATH=os.pathsep.join(
                 [str(ROOT)] + [p for p in [env.get('PYTHONPATH')] if p]))
  return env


@pytest.fixture
def error_line():
  """``error_line(stderr)``: its one ``error:`` line; fails on a traceback
  or on several such lines."""
  def one(stderr: str) -> str:
    assert 'Traceback' not in stderr, stderr[-5000:]
    lines = [line for line in stderr.splitlines() if 'error:' in line]
    assert len(lines) == 1, stderr[-5000:]
    return lines[0]

  return one
