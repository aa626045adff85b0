"""Shared setup of the experiments tests."""

import jax
import pytest


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """Compiles each distinct train epoch once per session.

  Every run builds its jitted functions afresh (they close over its config),
  so runs with equal configs, as in the resume tests, would otherwise
  compile the same program again; on CPU that dominates these tests.
  """
  cache = tmp_path_factory.mktemp('jax_cache')
  jax.config.update('jax_compilation_cache_dir', str(cache))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  # `python -m experiments` (cli.main) caches under $XDG_CACHE_HOME: here,
  # not in the user's home.
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('XDG_CACHE_HOME', str(cache))
    yield
