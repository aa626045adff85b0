"""Data parallelism over the local devices of one process.

A run on several devices uses a 1-D ``('batch',)`` mesh: datasets, params
and optimizer state are replicated on every device, every batch is sharded
along its first axis, and XLA all-reduces the gradients, the BatchNorm
statistics and the metrics. The optimizer step (LaPerm's syncs included)
runs replicated, so the weights stay identical on every device. A run on one
device has no mesh (``None``) and compiles exactly the single-device
program.
"""

from typing import Any, Callable, Optional

import jax
from jax import lax
import numpy as np

BATCH_AXIS = 'batch'

Mesh = Optional[jax.sharding.Mesh]


def make_mesh(devices: Any = 1, batch_size: Optional[int] = None) -> Mesh:
  """The data-parallel mesh: the first ``devices`` local devices.

  Args:
    devices: How many local devices to train on: an int >= 1, or ``0`` /
      ``'all'`` for all of them.
    batch_size: If given, checked to be a multiple of the device count.

  Returns:
    A 1-D mesh with axis ``'batch'``, or ``None`` when the run uses one
    device (then nothing is sharded: exactly the single-device program).

  Raises:
    ValueError: Not a device count, more devices than there are, or a batch
      size they do not divide.
  """
  available = jax.local_devices()
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
    raise ValueError(f'devices={count} but only {len(available)} local '
                     f'devices are available: {available}.')
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
  """``tree`` on the default device, or replicated on every mesh device."""
  if mesh is None:
    return jax.device_put(tree)
  return jax.device_put(tree, replicated(mesh))


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

