"""LaPerm's train step lowers for GPU and TPU, checked on a CPU-only machine.

``jax.export`` lowers a jitted function to StableHLO for platforms this
machine does not have. The checks: a ``laperm(adam)`` train step with
masks, schedules, a gamma-beta reset, shared-value weights, a non-trailing
weight-vector layout and kernels sharded over a mesh lowers for ``cuda``
and ``tpu``; the modules hold no 64-bit arrays (TPUs have no 64-bit sorts);
and each platform gets its own sort path: GPUs and TPUs one stable
key-value sort of ``(weights, positions)``, CPU the single-operand radix
pass on 64-bit words (checked too, so that the tests can tell the paths
apart).
"""

import re

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec
import optax
import pytest

import laperm_jax as lp

ACCELERATORS = ('cuda', 'tpu')
_SORT = re.compile(r'"stablehlo\.sort"\(([^)]*)\)')
_WIDE = re.compile(r'tensor<[0-9x?]*((?:[fiu]|ui)64)>')


def _params():
  key = jax.random.key(0)
  return {
      'conv': {'kernel': jax.random.normal(key, (3, 3, 2, 8)),
               'bias': jnp.zeros(8)},
      'attention': {'kernel': jax.random.normal(key, (8, 4, 6))},
      'norm': {'scale': jnp.ones(24)},
      'head': {'kernel': jax.random.normal(key, (24, 10)),
               'bias': jnp.zeros(10)},
  }


def _forward(params, images):
  x = jax.lax.conv_general_dilated(
      images, params['conv']['kernel'], (1, 1), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + params['conv']['bias']
  x = jnp.mean(jax.nn.relu(x), axis=(1, 2))
  x = jnp.einsum('bf,fhd->bhd', x, params['attention']['kernel'])
  x = x.reshape(x.shape[0], -1) * params['norm']['scale']
  return x @ params['head']['kernel'] + params['head']['bias']


# The attention kernel's fan-in is axis 0 (Flax's query/key/value layout).
LAYOUT = {'conv': None, 'attention': {'kernel': (0,)}, 'norm': None,
          'head': None}

CASES = {
    'default': {},
    'mask-and-reset': dict(
        mask=lambda p: jax.tree.map(lambda leaf: leaf.ndim >= 1, p) | {
            'norm': {'scale': False}},
        reset_mask={'conv': False, 'attention': False, 'head': False,
                    'norm': True}),
    'schedule': dict(sync_period=optax.piecewise_constant_schedule(
        20, {100: 5})),
    'layout': dict(vector_axes=LAYOUT),
}


def _train_step(**options):
  sync_period = options.pop('sync_period', 20)
  tx = lp.laperm(optax.adam(optax.exponential_decay(1e-3, 100, 0.95)),
                 sync_period, **options)

  def step(params, opt_state, images, labels):
    def loss(p):
      return optax.softmax_cross_entropy_with_integer_labels(
          _forward(p, images), labels).mean()

    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return tx, jax.jit(step)


def _batch():
  return (jax.ShapeDtypeStruct((16, 6, 6, 2), jnp.float32),
          jax.ShapeDtypeStruct((16,), jnp.int32))


def _lower(platform, step, *args):
  return jax.export.export(step, platforms=[platform])(*args).mlir_module()


def _sorts(module):
  return [len(operands.split(',')) for operands in _SORT.findall(module)]


@pytest.mark.parametrize('case', list(CASES))
def test_train_step_lowers_for_accelerators_with_their_sort(case):
  tx, step = _train_step(**CASES[case])
  params = _params()
  state = jax.eval_shape(tx.init, params)
  for platform in ACCELERATORS:
    module = _lower(platform, step, params, state, *_batch())
    assert not _WIDE.findall(module), (platform, set(_WIDE.findall(module)))
    # One stable key-value sort per permuted leaf (both cond branches hold
    # the sync once).
    assert _sorts(module) and set(_sorts(module)) == {2}, _sorts(module)
    assert 'is_stable = true' in module
  cpu = _lower('cpu', step, params, state, *_batch())
  assert set(_sorts(cpu)) == {1} and 'ui64' in cpu


def test_shared_value_weights_lower_for_accelerators():
  params = lp.shared_value(jax.random.key(1), _params(), 0.08, 0.6)
  tx, step = _train_step()
  state = jax.eval_shape(tx.init, params)
  for platform in ACCELERATORS:
    module = _lower(platform, step, params, state, *_batch())
    assert not _WIDE.findall(module)
    assert set(_sorts(module)) == {2}


def test_sharded_kernels_lower_for_a_mesh_of_accelerators():
  # Kernels sharded along their output axis over 4 devices that this
  # machine does not have: an abstract mesh lowers without them.
  mesh = AbstractMesh((4,), ('model',))
  outputs = {'conv': {'kernel': PartitionSpec(None, None, None, 'model'),
                      'bias': PartitionSpec('model')},
             'attention': {'kernel': PartitionSpec(None, 'model')},
             'norm': {'scale': PartitionSpec()},
             'head': {'kernel': PartitionSpec(), 'bias': PartitionSpec()}}
  params = jax.tree.map(
      lambda leaf, spec: jax.ShapeDtypeStruct(
          leaf.shape, leaf.dtype, sharding=NamedSharding(mesh, spec)),
      _params(), outputs)
  tx, step = _train_step(vector_axes=LAYOUT)
  state = jax.eval_shape(tx.init, params)
  images, labels = (jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=NamedSharding(mesh, PartitionSpec()))
                    for x in _batch())
  for platform in ACCELERATORS:
    exported = jax.export.export(step, platforms=[platform])(
        params, state, images, labels)
    assert exported.nr_devices == 4
    module = exported.mlir_module()
    assert not _WIDE.findall(module)
    assert set(_sorts(module)) == {2}
