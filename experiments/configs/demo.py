"""The main demo: LaPerm beside Adam on the embedded digits, in ~a minute.

Runs on any machine with no network: scikit-learn's 8x8 digits, the A.3 MLP
(64-100-100-10) trained by LaPerm(Adam) and by Adam, plus a weight-agnostic
F1-style net (one dense layer, weights in {0, 0.08}) trained by LaPerm. The
monitor records the first kernel's weight statistics and ranking distance.
"""

from experiments.configs import base


def demo() -> base.Preset:
  config = base.get_config()
  config.dataset = 'digits'
  config.validation_size = 300
  config.model.name = 'mlp'
  # 3x the paper's rate: digits gives few steps per epoch.
  config.optimizer.learning_rate = 3e-3
  config.optimizer.schedule = 'exponential'
  config.optimizer.decay_rate = 0.95
  config.optimizer.sync_period = 20
  config.batch_size = 50
  config.eval_batch_size = 300
  config.epochs = 40
  config.checkpoint_every = 10
  config.monitor = True
  config.seeds_in_one_step = True
  config.steps_per_call = 10
  return base.Preset(
      'Demo on digits: LaPerm vs Adam, and a weight-agnostic net', config,
      {'laperm': {'optimizer.name': 'laperm'},
       'adam': {'optimizer.name': 'adam'},
       'laperm-weight-agnostic': {
           # Moving a weight past the gap between 0 and the shared value
           # takes more steps than a random init's gaps: a longer k.
           'optimizer.name': 'laperm', 'optimizer.sync_period': 100,
           'model.name': 'f1',
           'init.kind': 'shared_value', 'init.value': 0.08,
           'init.keep': 0.6}})
