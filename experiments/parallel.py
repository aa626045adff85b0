"""Data parallelism over the devices of one process or of several.

A run on several devices uses a 1-D ``('batch',)`` mesh: datasets, params
and optimizer state are replicated on every device, every batch is sharded
along its first axis (each device gathers and augments only its part), and
XLA all-reduces the gradients, the BatchNorm statistics and the metrics.
The optimizer step (LaPerm's syncs included) runs replicated, so the weights
stay identical on every device. A run on one device has no mesh (``None``)
and compiles exactly the single-device program.

Several processes (a TPU pod slice, GPUs on several hosts, or local
processes for trying it, ``scripts/launch_local.sh``) run the same program
after :func:`initialize`; the mesh then spans every process's devices.
Every process reads the whole dataset and puts its devices' copies
(:func:`put`), so what a run computes does not depend on how its devices
are spread over processes. Only process 0 prints and writes files
(:func:`is_writer`); checkpoints are written by all processes together.

Also here, as settings of the JAX runtime every process shares: the
persistent compilation cache (:func:`use_compilation_cache`) and the time
that names a run's output (:func:`timestamp`, process 0's).
"""

import datetime
import hashlib
import json
import os
import pathlib
from typing import Any, Callable, Optional

import jax
from jax import lax
from jax.experimental import multihost_utils
import numpy as np

from experiments import handshake

BATCH_AXIS = 'batch'

Mesh = Optional[jax.sharding.Mesh]


def make_mesh(devices: Any = 1, batch_size: Optional[int] = None) -> Mesh:
  """The data-parallel mesh: the first ``devices`` local devices.

  Args:
    devices: How many devices to train on: an int >= 1, or ``0`` /
      ``'all'`` for all of them (all of every process's, when several
      processes run).
    batch_size: If given, checked to be a multiple of the device count.

  Returns:
    A 1-D mesh with axis ``'batch'``, or ``None`` when the run uses one
    device (then nothing is sharded: exactly the single-device program).

  Raises:
    ValueError: Not a device count, more devices than there are, or a batch
      size they do not divide.
  """
  available = jax.devices()
  if isinstance(devices, bool):
    count = -1
  elif devices in (0, 'all'):
    count = len(available)
  elif isinstance(devices, int) and devices >= 1:
    count = devices
  else:
    count = -1
  if count < 1:
    raise ValueError(f"devices must be an int >= 1, or 0 or 'all' for all "
                     f'local devices; got {devices!r}.')
  if count > len(available):
    raise ValueError(f'devices={count} but only {len(available)} '
                     f'devices are available: {available}.')
  if jax.process_count() > 1 and count != len(available):
    raise ValueError(
        f'devices={count}, but a run of {jax.process_count()} processes '
        f'trains on all {len(available)} of their devices (--devices all).')
  if batch_size is not None and batch_size % count:
    raise ValueError(f'batch_size {batch_size} is not divisible by the '
                     f'{count} devices of the run.')
  if count == 1:
    return None
  return jax.sharding.Mesh(np.array(available[:count]), (BATCH_AXIS,))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """The sharding that holds a whole copy on every device of ``mesh``."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def shard_batch(mesh: Mesh, tree: Any) -> Any:
  """Constrains every array of ``tree`` to be sharded along axis 0."""
  if mesh is None:
    return tree
  sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(BATCH_AXIS))
  return jax.tree.map(lambda x: lax.with_sharding_constraint(x, sharding),
                      tree)


def put(mesh: Mesh, tree: Any) -> Any:
  """``tree`` on the default device, or replicated on every mesh device.

  Every process must pass the same values: each puts its own devices'
  copies (a mesh may span processes, whose devices no other can reach).
  """
  if mesh is None:
    return jax.device_put(tree)
  sharding = replicated(mesh)

  def put_leaf(leaf):
    value = np.asarray(jax.device_get(leaf))
    return jax.make_array_from_callback(value.shape, sharding,
                                        lambda index: value[index])

  return jax.tree.map(put_leaf, tree)


def jit(fn: Callable[..., Any], mesh: Mesh, **kwargs: Any
        ) -> Callable[..., Any]:
  """``jax.jit(fn)``, with its outputs replicated on ``mesh`` if any."""
  if mesh is None:
    return jax.jit(fn, **kwargs)
  return jax.jit(fn, out_shardings=replicated(mesh), **kwargs)


def describe(mesh: Mesh) -> str:
  """A few words on where a run trains, for the command line's output."""
  if mesh is None:
    return ''
  return (f', data parallel on {mesh.size} '
          f'{mesh.devices.flat[0].platform} devices')


def initialize(coordinator: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *,
               timeout: int = 60, heartbeat_timeout: int = 30) -> None:
  """Joins this process to a multi-process run (``jax.distributed``).

  With no arguments, JAX detects the cluster itself (TPU pods, SLURM, Open
  MPI); otherwise all three name it, and the processes first check that
  their ids differ and their counts agree (:func:`handshake.check`). On CPU,
  processes exchange data through gloo collectives.

  Args:
    coordinator: ``HOST:PORT`` of process 0's coordinator service.
    num_processes: How many processes the run has.
    process_id: This process's index, from 0.
    timeout: Seconds to wait for every process to join before failing.
    heartbeat_timeout: Seconds after which a process that stopped answering
      (it failed, or its host did) fails the others, instead of leaving
      them waiting in a collective; also the most a process waits for the
      others at exit.

  Raises:
    ValueError: Processes claim the same id or disagree on their count.
    TimeoutError: A process did not arrive within ``timeout``.
  """
  if coordinator is not None:
    handshake.check(coordinator, num_processes, process_id, timeout)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=coordinator, num_processes=num_processes,
      process_id=process_id, initialization_timeout=timeout,
      heartbeat_timeout_seconds=heartbeat_timeout,
      shutdown_timeout_seconds=heartbeat_timeout)


def join(distributed: Optional[bool] = None,
         coordinator: Optional[str] = None,
         num_processes: Optional[int] = None,
         process_id: Optional[int] = None) -> None:
  """Joins the multi-process run the command line's options name, if any.

  Args:
    distributed: True: JAX detects the processes itself (:func:`initialize`
      with no arguments).
    coordinator: With the next two, names the processes.
    num_processes: How many processes the run has.
    process_id: This process's index, from 0.

  Raises:
    ValueError: The options are incomplete or contradict, in this process
      or between processes (:func:`initialize`).
    TimeoutError: A process did not arrive in time.
  """
  explicit = (coordinator, num_processes, process_id)
  if distributed:
    if any(value is not None for value in explicit):
      raise ValueError('--distributed detects the processes itself: give it '
                       'alone, or --coordinator, --num-processes and '
                       '--process-id without it')
    initialize()
  elif any(value is not None for value in explicit):
    if any(value is None for value in explicit):
      raise ValueError('--coordinator, --num-processes and --process-id go '
                       'together')
    if process_id >= num_processes:
      raise ValueError(f'--process-id {process_id} must be below '
                       f'--num-processes {num_processes}')
    initialize(coordinator, num_processes, process_id)


def is_writer() -> bool:
  """Whether this process prints and writes files: process 0 only."""
  return jax.process_index() == 0


def check_same_everywhere(what: str, value: Any) -> None:
  """Raises on every process unless all processes hold the same ``value``.

  Args:
    what: Names the value in the error.
    value: Anything JSON can write (e.g. a run's config as a dict).

  Raises:
    ValueError: Some process holds another value.
  """
  if jax.process_count() == 1:
    return
  digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode())
  words = np.frombuffer(digest.digest(), np.uint32)
  gathered = multihost_utils.process_allgather(words)
  if not (gathered == gathered[0]).all():
    different = [index for index, row in enumerate(gathered)
                 if not (row == gathered[0]).all()]
    raise ValueError(f'the processes disagree on {what}: processes '
                     f'{different} differ from process 0.')


def timestamp() -> str:
  """The time now as ``YYYYMMDD-HHMMSS`` (process 0's, when several run)."""
  now = datetime.datetime.now()
  fields = np.array([now.year, now.month, now.day, now.hour, now.minute,
                     now.second], np.int32)
  if jax.process_count() > 1:
    fields = multihost_utils.broadcast_one_to_all(fields)
  return '{:04d}{:02d}{:02d}-{:02d}{:02d}{:02d}'.format(*map(int, fields))


def use_compilation_cache(directory: Optional[str]) -> None:
  """Points JAX's persistent compilation cache at ``directory`` (or ``off``).

  None: ``$XDG_CACHE_HOME/laperm-jax/jax`` (``~/.cache`` when unset).

  On CPU much of a small preset's wall time is compilation, the same
  programs at every rerun; the cache keeps every program that took at least
  0.1 s to compile. JAX keys entries by program, backend and
  versions, so a stale entry is never used.
  """
  if directory == 'off':
    return
  if directory is None:
    directory = str(pathlib.Path(
        os.environ.get('XDG_CACHE_HOME', pathlib.Path.home() / '.cache'))
                    / 'laperm-jax' / 'jax')
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.1)
