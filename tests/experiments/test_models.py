"""The paper's networks: output shapes on every input size, layer counts."""

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import models
from experiments.configs import base


def _create(name, **options):
  config = base.get_config().model
  config.name = name
  config.update(options)
  return models.create(config, num_classes=10)


def _init(model, shape):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, *shape)))


def _kernels(variables):
  return [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(
      variables['params'])[0] if path[-1].key == 'kernel']


@pytest.mark.parametrize('name', ['mlp', 'f1', 'f2', 'conv7', 'conv2',
                                  'conv4', 'conv13', 'resnet'])
@pytest.mark.parametrize('shape', [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
def test_every_model_takes_every_dataset_shape(name, shape):
  model = _create(name)
  variables = _init(model, shape)
  logits = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((2, *shape)), train=False),
      variables)
  assert logits.shape == (2, 10)


def test_conv7_follows_the_paper_on_mnist():
  kernels = _kernels(_init(_create('conv7'), (28, 28, 1)))
  assert [k.shape for k in kernels] == [
      (3, 3, 1, 32), (3, 3, 32, 32), (5, 5, 32, 32), (3, 3, 32, 64),
      (3, 3, 64, 64), (5, 5, 64, 64), (4, 4, 64, 128), (128, 10)]


def test_resnet50_has_50_layers_and_the_paper_filters():
  kernels = _kernels(_init(_create('resnet', blocks_per_stage=8),
                           (32, 32, 3)))
  three_by_three = [k for k in kernels if k.shape[:2] == (3, 3)]
  projections = [k for k in kernels if k.shape[:2] == (1, 1)]
  # 6n + 1 convs on the main path plus the output layer: depth 6n + 2.
  assert len(three_by_three) + 1 == 50
  assert sorted({k.shape[-1] for k in three_by_three}) == [16, 32, 64]
  assert len(projections) == 2  # At the two stage changes.


def test_conv13_has_13_convs_and_pools_down_to_one_pixel():
  kernels = _kernels(_init(_create('conv13'), (32, 32, 3)))
  assert len([k for k in kernels if k.ndim == 4]) == 13
  assert [k.shape for k in kernels if k.ndim == 2] == [(512, 512), (512, 10)]


def test_f1_and_f2_are_bias_free_dense_nets():
  for name, shapes in (('f1', {'head': (64, 10)}),
                       ('f2', {'hidden1': (64, 128), 'hidden2': (128, 64),
                               'head': (64, 10)})):
    params = _init(_create(name), (8, 8, 1))['params']
    assert {layer: params[layer]['kernel'].shape for layer in params} == shapes
    assert all(set(layer) == {'kernel'} for layer in params.values())


def test_he_uniform_bias_is_bounded_by_its_length():
  bias = models.he_uniform_bias(jax.random.key(0), (64,))
  limit = np.sqrt(6.0 / 64)
  assert np.all(np.abs(bias) <= limit) and np.std(bias) > limit / 4


def test_dropout_only_in_training():
  model = _create('mlp', dropout_rates=(0.4, 0.3))
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  variables = model.init(jax.random.key(0), x)
  eval_a = model.apply(variables, x)
  np.testing.assert_array_equal(eval_a, model.apply(variables, x))
  train_a, train_b = (model.apply(variables, x, train=True,
                                  rngs={'dropout': jax.random.key(i)})
                      for i in (1, 2))
  assert not np.allclose(train_a, train_b)


def test_unknown_model_is_an_error():
  with pytest.raises(ValueError, match='Unknown model'):
    _create('conv99')


def test_batch_norm_models_hold_batch_stats():
  for name, has_stats in (('conv2', True), ('resnet', True), ('conv7', False),
                          ('mlp', False)):
    variables = _init(_create(name, blocks_per_stage=1), (8, 8, 1))
    assert ('batch_stats' in variables) == has_stats, name


@pytest.mark.parametrize('name, image_shape, expected_shape', [
    ('mlp', (28, 28, 1), (784, 100)),
    ('f1', (28, 28, 1), (784, 10)),
    ('f2', (28, 28, 1), (784, 128)),
    ('conv7', (28, 28, 1), (3, 3, 1, 32)),
    ('conv13', (32, 32, 3), (3, 3, 3, 64)),
])
def test_first_kernel_is_the_input_layers(name, image_shape, expected_shape):
  model = models.create(ml_collections.ConfigDict(
      {'name': name, 'dropout_rates': (0.0, 0.0)}), 10)
  # A jitted init returns dict keys sorted: `head` before `hidden1`.
  params = jax.eval_shape(
      jax.jit(lambda key: model.init(key, jnp.zeros((1, *image_shape)))),
      jax.random.key(0))['params']
  leaf = params
  for key in models.first_kernel_path(params):
    leaf = leaf[key]
  assert leaf.shape == expected_shape


def _params(name, image_shape):
  model = models.create(ml_collections.ConfigDict(
      {'name': name, 'dropout_rates': (0.0, 0.0), 'blocks_per_stage': 1}), 10)
  return jax.eval_shape(
      jax.jit(lambda key: model.init(key, jnp.zeros((1, *image_shape)))),
      jax.random.key(0))['params']


def test_kernels_run_from_input_to_head():
  # Conv13's 13 convs: `Conv_10` sorts before `Conv_2` as a string.
  params = _params('conv13', (32, 32, 3))
  paths = models.kernel_paths(params)
  assert [path[0] for path in paths] == (
      [f'Conv_{i}' for i in range(13)] + ['Dense_0', 'head'])
  channels = [models.get_leaf(params, path).shape[-1] for path in paths]
  assert channels[:13] == [64, 64, 128, 128] + [256] * 3 + [512] * 6
  with pytest.raises(ValueError, match='no kernel'):
    models.kernel_paths({'bias': jnp.zeros(3)})


def test_masks_of_hidden_kernels_and_batch_norm():
  params = _params('conv2', (8, 8, 1))
  hidden = {jax.tree_util.keystr(path) for path, selected in
            jax.tree_util.tree_flatten_with_path(
                models.hidden_kernel_mask(params))[0] if selected}
  assert hidden == {"['Conv_0']['kernel']", "['Conv_1']['kernel']",
                    "['Dense_0']['kernel']", "['Dense_1']['kernel']"}
  batch_norm = {jax.tree_util.keystr(path) for path, selected in
                jax.tree_util.tree_flatten_with_path(
                    models.batch_norm_mask(params))[0] if selected}
  assert batch_norm == {f"['BatchNorm_{i}']['{name}']" for i in (0, 1)
                        for name in ('bias', 'scale')}


def test_patches_input_gradient_has_one_default():
  config = base.get_config().model
  assert config.patches_input_gradient is models.Conv7.patches_input_gradient
  config.name = 'conv7'
  for setting in (True, False):
    config.patches_input_gradient = setting
    assert models.create(config, 10).patches_input_gradient is setting
  # A config without the option gets the module's default.
  assert models.create(ml_collections.ConfigDict({'name': 'conv7'}),
                       10).patches_input_gradient is True


def test_committed_runs_build_the_models_they_trained():
  results = pathlib.Path(__file__).resolve().parents[2] / 'docs' / 'results'
  built = set()
  for path in sorted(results.rglob('metrics.json')):
    config = ml_collections.ConfigDict(
        json.loads(path.read_text())['config']).model
    model = models.create(config, 10)
    if config.name == 'conv7':  # Every committed Conv7 run records it.
      assert model.patches_input_gradient is config.patches_input_gradient
    built.add(config.name)
  assert {'conv7', 'f1', 'f2', 'mlp', 'vit'} <= built
