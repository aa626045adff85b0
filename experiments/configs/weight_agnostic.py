"""Section 5.5 and A.5.0: weight-agnostic F1 and F2 on MNIST.

Every kernel weight is 0 or one shared value; LaPerm only moves them. No
augmentation, learning rate 1e-3 * 0.95^epoch, batch 128, k = 250.
"""

import ml_collections

from experiments.configs import Preset
from experiments.configs import base


def _weight_agnostic(model: str, value: float,
                     epochs: int) -> ml_collections.ConfigDict:
  config = base.get_config()
  config.dataset = 'mnist'
  config.model.name = model
  config.init.kind = 'shared_value'
  config.init.value = value
  config.optimizer.name = 'laperm'
  config.optimizer.schedule = 'exponential'
  config.optimizer.decay_rate = 0.95
  config.optimizer.sync_period = 250
  config.batch_size = 128
  config.epochs = epochs
  return config


def f1() -> Preset:
  """F1: one dense layer, weights in {0, 0.08}, 40% zeros."""
  config = _weight_agnostic('f1', 0.08, 10)
  config.init.keep = 0.6
  return Preset('F1 weight-agnostic on MNIST (5.5)', config, {'laperm': {}})


def f2() -> Preset:
  """F2: 784-128-64-10, weights in {0, 0.03}, 90% zeros, L2 1e-4 hidden."""
  config = _weight_agnostic('f2', 0.03, 25)
  config.init.keep = 0.1
  config.l2 = 1e-4
  return Preset('F2 weight-agnostic on MNIST, 10% nonzero (5.5)', config,
                {'laperm': {}})


def f2_size_aware() -> Preset:
  """F2 with size-aware rates: about 7%, 14% and 33% nonzero (A.5.0)."""
  config = _weight_agnostic('f2', 0.03, 25)
  config.init.size_aware = True
  config.init.keep = 1 - 0.923  # Overall, as A.5.0's 7/14/33% add up to.
  config.l2 = 1e-4
  return Preset('F2 weight-agnostic on MNIST, size-aware rates (A.5.0)',
                config, {'laperm': {}})
