"""Section 5.4 and A.5.6: ResNet50 on CIFAR-10, pruned and with BN reset.

CIFAR ResNet v1 (depth 6n+2, n=8), pixel-mean subtracted, augmented like
5.2, 200 epochs, learning rate /10 at epochs 80, 120, 160 and /2 at 180;
k = 400 dense, 800 pruned.
"""

import ml_collections

from experiments.configs import base

DENSE_SYNC_PERIOD = 400
PRUNED_SYNC_PERIOD = 800


def _resnet() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.dataset = 'cifar10'
  config.normalization = 'pixel_mean'
  config.model.name = 'resnet'
  config.model.blocks_per_stage = 8
  config.augment.rotation = 15.0
  config.augment.shift = 0.1
  config.augment.horizontal_flip = True
  config.optimizer.schedule = 'piecewise'
  config.optimizer.boundaries = (80, 120, 160, 180)
  config.optimizer.scales = (0.1, 0.1, 0.1, 0.5)
  config.optimizer.sync_period = DENSE_SYNC_PERIOD
  config.batch_size = 50
  config.epochs = 200
  return config


def resnet50() -> base.Preset:
  """LaPerm and Adam; ``--prune RATE`` prunes the kernels first (k=800)."""
  return base.Preset(
      'ResNet50 on CIFAR-10: LaPerm and Adam (5.4)', _resnet(),
      {'laperm': {'optimizer.name': 'laperm'},
       'adam': {'optimizer.name': 'adam'}},
      prune_overrides={'optimizer.sync_period': PRUNED_SYNC_PERIOD})


def prune_sweep() -> base.Preset:
  """LaPerm on ResNet50 dense and pruned by 30, 50 and 70% (Table 5.4)."""
  runs = {'dense': {'init.kind': 'random'}}
  for rate in (0.3, 0.5, 0.7):
    runs[f'pruned-{round(rate * 100)}'] = {
        'init.kind': 'prune', 'init.prune_rate': rate,
        'optimizer.sync_period': PRUNED_SYNC_PERIOD}
  return base.Preset('ResNet50, LaPerm on random sparse nets (5.4)', _resnet(),
                     runs)


def gamma_beta() -> base.Preset:
  """LaPerm with and without resetting BN's gamma and beta (A.5.6), k=800."""
  config = _resnet()
  config.optimizer.sync_period = PRUNED_SYNC_PERIOD
  return base.Preset(
      'ResNet50, gamma-beta reset at each sync vs none (A.5.6)', config,
      {'laperm': {'optimizer.gamma_beta_reset': False},
       'laperm-gamma-beta-reset': {'optimizer.gamma_beta_reset': True}})
