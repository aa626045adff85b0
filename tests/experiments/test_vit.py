"""The ``vit`` preset: a ViT trained by LaPerm with its derived layout.

LaPerm permutes each weight vector within itself; for attention's query,
key and value kernels ``(features, heads, head_dim)`` a weight vector is
axis 0 (one output unit's fan-in), not the trailing rule's ``features x
heads``. These tests train the preset through the command line and check,
bit for bit, that every kernel is a permutation of its own initial fan-in
vectors under the layout read from the model.
"""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import laperm_jax as lp
from experiments import cli
from experiments import configs
from experiments import models
from experiments import optimizers
from experiments import state as state_lib

DIGITS = (8, 8, 1)
PRESET = ('vit', '--quick', '--dataset', 'digits')
# Runs that train: one encoder block compiles faster and holds every kind
# of kernel.
QUICK = (*PRESET, '--set', 'model.depth=1')
ATTENTION = {'query': (0,), 'key': (0,), 'value': (0,), 'out': (0, 1)}


def _preset_config(run: str, argv=PRESET) -> ml_collections.ConfigDict:
  args = cli.parser().parse_args(list(argv))
  return cli.run_configs(configs.get('vit'), args)[run]


def _params(model, image_shape=DIGITS):
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                        jnp.zeros((1, *image_shape)))['params']


def _sorted_fan_ins(leaf, fan_in):
  """Each fan-in vector of ``leaf`` sorted: (vector length, vectors)."""
  leaf = np.asarray(leaf)
  others = [axis for axis in range(leaf.ndim) if axis not in fan_in]
  vectors = np.transpose(leaf, (*fan_in, *others)).reshape(
      int(np.prod([leaf.shape[axis] for axis in fan_in])), -1)
  return np.sort(vectors, axis=0)


def _kernels(params):
  return {'/'.join(path): models.get_leaf(params, path)
          for path in models.kernel_paths(params)}


def _layout_of_kernels(layout, config):
  return {'/'.join(path): models.get_leaf(layout, path)
          for path in models.kernel_paths(_params(models.create(
              config.model, 10)))}


def test_kernels_run_from_patches_to_head():
  params = _params(models.create(_preset_config('laperm').model, 10),
                   (28, 28, 1))
  names = list(_kernels(params))
  block = [f'attention/{name}/kernel' for name in ATTENTION] + [
      'mlp_1/kernel', 'mlp_2/kernel']
  assert names == (['embedding/kernel']
                   + [f'encoder_1/{name}' for name in block]
                   + [f'encoder_2/{name}' for name in block] + ['head/kernel'])
  # 7x7 patches on 28x28 images, 2x2 on digits: a 4x4 grid and a class token.
  assert params['embedding']['kernel'].shape == (7, 7, 1, 64)
  assert params['pos_embedding'].shape == (1, 17, 64)
  assert params['encoder_1']['attention']['query']['kernel'].shape == (
      64, 4, 16)


def test_layout_is_derived_from_the_forward_pass():
  config = _preset_config('laperm')
  model = models.create(config.model, 10)
  layout = optimizers.weight_vector_layout(config.optimizer, model, DIGITS)
  expected = {'embedding/kernel': (0, 1, 2), 'head/kernel': (0,)}
  for block in ('encoder_1', 'encoder_2'):
    for name, axes in ATTENTION.items():
      expected[f'{block}/attention/{name}/kernel'] = axes
    expected[f'{block}/mlp_1/kernel'] = expected[f'{block}/mlp_2/kernel'] = (
        0,)
  assert _layout_of_kernels(layout, config) == expected
  # Everything else is left to Adam, explicitly.
  assert layout['cls_token'] is lp.NO_FAN_IN
  assert layout['pos_embedding'] is lp.NO_FAN_IN
  assert layout['norm'] == {'scale': lp.NO_FAN_IN, 'bias': lp.NO_FAN_IN}
  assert layout['encoder_1']['attention']['query']['bias'] is lp.NO_FAN_IN
  # Named leaves follow LaPerm as one vector each.
  config.optimizer.also_permute = ('scale', 'pos_embedding', 'cls_token')
  layout = optimizers.weight_vector_layout(config.optimizer, model, DIGITS)
  assert layout['pos_embedding'] == (0, 1, 2)
  assert layout['cls_token'] == (0, 1, 2)
  assert layout['encoder_2']['norm_1'] == {'scale': (0,),
                                           'bias': lp.NO_FAN_IN}
  # Adam needs no layout.
  assert optimizers.weight_vector_layout(
      _preset_config('adam').optimizer, model, DIGITS) is None


def test_layout_settings_are_checked():
  config = _preset_config('laperm')
  model = models.create(config.model, 10)
  layout = optimizers.weight_vector_layout(config.optimizer, model, DIGITS)
  with pytest.raises(ValueError, match="build it with weight_vector_layout"):
    optimizers.create(config.optimizer, 10)
  config.optimizer.also_permute = ('pos_embeding',)
  with pytest.raises(ValueError, match=r"names no leaf: \['pos_embeding'\]"):
    optimizers.weight_vector_layout(config.optimizer, model, DIGITS)
  config.optimizer.also_permute = ()
  config.optimizer.permute_biases = True
  with pytest.raises(ValueError, match='also_permute'):
    optimizers.create(config.optimizer, 10, layout)
  config.optimizer.vector_axes = 'default'
  config.optimizer.permute_biases = False
  with pytest.raises(ValueError, match="build it with weight_vector_layout"):
    optimizers.create(config.optimizer, 10, layout)
  config.optimizer.also_permute = ('scale',)
  with pytest.raises(ValueError, match="also_permute needs"):
    optimizers.weight_vector_layout(config.optimizer, model, DIGITS)
  config.optimizer.vector_axes = 'trailing'
  with pytest.raises(ValueError, match="Unknown optimizer.vector_axes"):
    optimizers.weight_vector_layout(config.optimizer, model, DIGITS)


def test_adam_starts_from_laperms_initial_weights():
  model = models.create(_preset_config('laperm', QUICK).model, 10)
  initial = {
      run: optimizers.train_params(state_lib.create_train_state(
          _preset_config(run, QUICK), model, DIGITS, steps_per_epoch=8).params)
      for run in ('laperm', 'adam')}
  chex.assert_trees_all_equal(initial['laperm'], initial['adam'])


def test_default_layout_moves_weights_between_heads():
  # What the derived layout prevents: with the trailing rule, a sync of the
  # preset's LaPerm mixes the heads of a query kernel, so its fan-in
  # vectors are no longer permutations of their initial values (the check
  # of the next test would fail).
  config = _preset_config('laperm')
  model = models.create(config.model, 10)
  query = ('encoder_1', 'attention', 'query', 'kernel')
  initial = {'query': models.get_leaf(jax.jit(model.init)(
      jax.random.key(0), jnp.zeros((1, *DIGITS)))['params'], query)}
  config.optimizer.vector_axes = 'default'
  config.optimizer.sync_period = 1  # The update is a sync.
  config.optimizer.learning_rate = 0.1
  tx = optimizers.create(config.optimizer, 10)

  @jax.jit
  def one_sync(params):
    grads = {'query': jax.random.normal(jax.random.key(1),
                                        params['query'].shape)}
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return lp.synchronize(optax.apply_updates(params, updates), opt_state)

  trained = one_sync(initial)['query']
  assert not np.array_equal(_sorted_fan_ins(trained, (0,)),
                            _sorted_fan_ins(initial['query'], (0,)))


def test_vit_trains_on_digits_by_exact_permutations(tmp_path):
  argv = [*QUICK, '--no-progress', '--out', str(tmp_path), '--runs', 'laperm']
  (result,), = cli.run('vit', cli.parser().parse_args(argv))
  assert np.isfinite(result.history[-1]['train_loss'])
  assert 'val_accuracy' in result.history[-1]
  config = _preset_config('laperm', QUICK)
  model = models.create(config.model, 10)
  layout = optimizers.weight_vector_layout(config.optimizer, model, DIGITS)
  initial = _kernels(optimizers.train_params(state_lib.create_train_state(
      config, model, DIGITS, steps_per_epoch=8).params))
  # The weights the run was judged by, and the final state synchronized.
  final = lp.synchronize(result.state.params, result.state.opt_state,
                         vector_axes=layout)
  for trained in (_kernels(result.best_params), _kernels(final)):
    for name, axes in _layout_of_kernels(layout, config).items():
      np.testing.assert_array_equal(
          _sorted_fan_ins(trained[name], axes),
          _sorted_fan_ins(initial[name], axes), err_msg=name)
  # The attention kernels moved: the check above is not about untouched
  # weights. (The patch embedding's fan-ins of 4 weights, far apart, may
  # not swap in these few steps.)
  for name, before in initial.items():
    if '/attention/' in name:
      assert not np.array_equal(_kernels(final)[name], before), name
