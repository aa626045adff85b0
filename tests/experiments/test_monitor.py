"""The monitor watches the input layer, whatever order the params come in."""

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from experiments import models
from experiments import monitor


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
  for key in monitor.first_kernel_path(params):
    leaf = leaf[key]
  assert leaf.shape == expected_shape
