"""LaPerm across processes: JAX's multi-process runtime on one machine.

A TPU pod slice or a GPU cluster runs one JAX process per host, with global
arrays made of every process's shards. This module runs itself as a script
in two ways and compares what they print:

- **two processes**, one CPU device each, joined by
  ``jax.distributed.initialize`` on localhost with gloo CPU collectives;
- **one process with two CPU devices** (``--xla_force_host_platform_device_count``),
  the same program on the same global mesh.

The program: a data-parallel ``laperm(adam)`` train step (params and state
replicated, the global batch sharded, each process feeding only its part
with ``jax.make_array_from_process_local_data``), and a model-parallel one
(kernels sharded along their output axis, one half per process, the same
gradients), 5 steps with 2 syncs each; then ``lp.synchronize``,
``lp.ranking_distance`` and ``lp.weight_statistics`` on the sharded global
arrays. What the tests check: the results are bitwise those of one process
with two devices; the compiled model-parallel step holds no collective
(each process sorts its own weight vectors); and what the export needs
(addressable arrays) is said clearly, with the gather that gives them.
"""

import hashlib
import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT = 300  # Seconds for a subprocess; the program itself takes a few.
STEPS, SYNC_PERIOD = 5, 2


def _env(host_devices: int) -> dict[str, str]:
  env = dict(os.environ)
  flags = [flag for flag in env.get('XLA_FLAGS', '').split()
           if 'xla_force_host_platform_device_count' not in flag]
  if host_devices > 1:
    flags.append(f'--xla_force_host_platform_device_count={host_devices}')
  env.update(XLA_FLAGS=' '.join(flags), JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join(
                 [str(ROOT)] + [p for p in [env.get('PYTHONPATH')] if p]))
  return env


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('localhost', 0))
    return sock.getsockname()[1]


def _last_json(completed: subprocess.CompletedProcess) -> dict:
  assert completed.returncode == 0, completed.stderr[-10000:]
  return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def runs(once_per_session):
  """What the program prints: per process of the pair, and the reference."""
  return once_per_session('multiprocess', _run_all)


def _run_all() -> tuple[list[dict], dict]:
  script = str(pathlib.Path(__file__).resolve())
  port = str(_free_port())
  pair = [subprocess.Popen(
      [sys.executable, script, 'process', str(index), port],
      env=_env(1), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for index in range(2)]
  reference = subprocess.run(
      [sys.executable, script, 'reference'], env=_env(2), cwd=ROOT,
      capture_output=True, text=True, timeout=TIMEOUT, check=False)
  outputs = []
  for process in pair:
    try:
      stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
      for other in pair:
        other.kill()
      raise
    outputs.append(_last_json(subprocess.CompletedProcess(
        process.args, process.returncode, stdout, stderr)))
  return outputs, _last_json(reference)


def test_two_processes_see_one_device_each(runs):
  pair, reference = runs
  assert [run['process_index'] for run in pair] == [0, 1]
  assert all(run['devices'] == 2 and run['local_devices'] == 1
             for run in pair)
  assert (reference['devices'], reference['local_devices']) == (2, 2)


@pytest.mark.parametrize('layout', ['data_parallel', 'model_parallel'])
def test_synced_weights_bitwise_equal_one_process(runs, layout):
  pair, reference = runs
  for run in pair:
    assert run[layout] == reference[layout]
  assert reference[layout]['syncs'] == STEPS // SYNC_PERIOD


def test_kernels_are_permutations_of_their_initial_values(runs):
  pair, _ = runs
  for run in pair:
    assert run['exact_permutations'] is True
    assert run['moved'] is True


def test_model_parallel_step_has_no_collective(runs):
  pair, reference = runs
  for run in [*pair, reference]:
    assert run['collectives'] == [], run['collectives']


def test_synchronize_and_analyses_work_on_global_arrays(runs):
  pair, reference = runs
  for run in pair:
    assert run['synchronize'] == reference['synchronize']
    assert run['analyses'] == reference['analyses']


def test_export_needs_addressable_arrays_and_says_how(runs):
  pair, reference = runs
  for run in pair:
    assert 'process_allgather' in run['export_of_sharded'], run
    assert run['export_of_gathered'] == reference['export_of_gathered']


# ---------------------------------------------------------------------------
# The program, run as a script.


def _digest(tree) -> str:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  sha = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    if not leaf.is_fully_addressable:
      leaf = multihost_utils.process_allgather(leaf, tiled=True)
    sha.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return sha.hexdigest()


def _program() -> dict:
  # pylint: disable=import-outside-toplevel
  import tempfile
  import jax
  import jax.numpy as jnp
  from jax.experimental import multihost_utils
  from jax.sharding import NamedSharding, PartitionSpec
  import numpy as np
  import optax
  import laperm_jax as lp
  from tests.test_sharding import collectives
  # pylint: enable=import-outside-toplevel

  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('devices',))
  replicated = NamedSharding(mesh, PartitionSpec())
  key = jax.random.key(0)
  host_params = {
      'dense': {'kernel': np.asarray(jax.random.normal(key, (64, 32))),
                'bias': np.zeros(32, np.float32)},
      'conv': {'kernel': np.asarray(
          jax.random.normal(jax.random.fold_in(key, 1), (3, 3, 8, 16)))},
  }
  out = {'process_index': jax.process_index(), 'devices': jax.device_count(),
         'local_devices': jax.local_device_count()}
  tx = lp.laperm(optax.adam(0.05), SYNC_PERIOD)

  def put(tree, shardings):
    """Global arrays from host values every process holds in full."""
    return jax.tree.map(
        lambda value, sharding: jax.make_array_from_callback(
            value.shape, sharding, lambda index: value[index]),
        tree, shardings)

  # Data parallel: each process feeds only its half of the global batch.
  images = np.asarray(jax.random.normal(jax.random.fold_in(key, 2),
                                        (16, 64)))
  labels = (np.arange(16) % 10).astype(np.int32)
  batch_sharding = NamedSharding(mesh, PartitionSpec('devices'))
  local = slice(jax.process_index() * 16 // jax.process_count(),
                (jax.process_index() + 1) * 16 // jax.process_count())
  batch = [jax.make_array_from_process_local_data(batch_sharding, x[local])
           for x in (images, labels)]
  params = put(host_params, jax.tree.map(lambda _: replicated, host_params))
  state = jax.jit(tx.init, out_shardings=replicated)(params)

  @jax.jit
  def train_step(params, state, images, labels):
    def loss(p):
      hidden = jnp.tanh(images @ p['dense']['kernel'] + p['dense']['bias'])
      logits = hidden[:, :10] + jnp.sum(p['conv']['kernel']) * 0.0
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()

    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(STEPS):
    params, state = train_step(params, state, *batch)
  out['data_parallel'] = {'params': _digest(params), 'state': _digest(state),
                          'syncs': STEPS // SYNC_PERIOD}

  # Model parallel: kernels sharded along their output axis, the same
  # gradients everywhere.
  output_axis = {'dense': {'kernel': PartitionSpec(None, 'devices'),
                           'bias': PartitionSpec('devices')},
                 'conv': {'kernel': PartitionSpec(None, None, None,
                                                  'devices')}}
  shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec),
                           output_axis)
  params = put(host_params, shardings)
  initial = params
  def is_masked(x):
    return isinstance(x, optax.MaskedNode)

  # The state's leaves that mirror params take their shardings.
  state_shardings = optax.tree.map_params(
      tx, lambda leaf, sharding: leaf if is_masked(leaf) else sharding,
      jax.eval_shape(tx.init, params), shardings, is_leaf=is_masked,
      transform_non_params=lambda _: replicated)
  state = jax.jit(tx.init, out_shardings=state_shardings)(params)
  update = jax.jit(tx.update, out_shardings=(shardings, state_shardings))
  for step in range(STEPS):
    grads = put(jax.tree.map(
        lambda leaf, step=step: np.asarray(jax.random.normal(
            jax.random.fold_in(key, 10 + step), leaf.shape)), host_params),
                shardings)
    if step == SYNC_PERIOD - 1:  # A sync step: both branches compiled.
      out['collectives'] = collectives(
          update.lower(grads, state, params).compile().as_text())
    updates, state = update(grads, state, params)
    params = jax.jit(optax.apply_updates, out_shardings=shardings)(
        params, updates)
  out['model_parallel'] = {'params': _digest(params), 'state': _digest(state),
                           'syncs': STEPS // SYNC_PERIOD}

  synced = jax.jit(lp.synchronize, out_shardings=shardings)(params, state)
  out['synchronize'] = _digest(synced)
  gathered = multihost_utils.process_allgather(synced, tiled=True)
  gathered_initial = multihost_utils.process_allgather(initial, tiled=True)
  exact = moved = True
  for name in ('dense', 'conv'):
    final, start = (np.asarray(tree[name]['kernel']).reshape(
        -1, tree[name]['kernel'].shape[-1])
                    for tree in (gathered, gathered_initial))
    exact &= np.array_equal(np.sort(final, 0), np.sort(start, 0))
    moved &= not np.array_equal(final, start)
  out['exact_permutations'], out['moved'] = bool(exact), bool(moved)
  distance = jax.jit(lp.ranking_distance)(initial, synced)
  statistics = jax.jit(lp.weight_statistics)(synced['dense']['kernel'])
  out['analyses'] = _digest((distance, statistics))

  with tempfile.TemporaryDirectory() as directory:
    try:
      lp.export_permutations(synced, state,
                             pathlib.Path(directory) / 'sharded.npz')
      out['export_of_sharded'] = 'exported'
    except (ValueError, RuntimeError) as error:
      out['export_of_sharded'] = str(error)
    path = pathlib.Path(directory) / 'gathered.npz'
    lp.export_permutations(
        gathered, multihost_utils.process_allgather(state, tiled=True), path)
    out['export_of_gathered'] = hashlib.sha256(path.read_bytes()).hexdigest()
  return out


def _main(argv: list[str]) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  if argv[0] == 'process':
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
        coordinator_address=f'localhost:{argv[2]}', num_processes=2,
        process_id=int(argv[1]), initialization_timeout=60)
  print(json.dumps(_program()), flush=True)


if __name__ == '__main__':
  _main(sys.argv[1:])
