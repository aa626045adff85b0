"""Appendix A.3: what training does to the first weight matrix of an MLP.

784-100-100-10 ReLU on MNIST, 30 epochs, batch 50, learning rate /2 at epoch
10 and /5 at epoch 20. The monitor records, for the first kernel, weight
percentiles per vector, the ranking distance between evaluations and the
validation loss (Figure 13). These runs use ordinary optimizers: the point
is how much they *reorder* weights.
"""

from experiments.configs import base

_SETTINGS = {
    'sgd': {'optimizer.name': 'sgd', 'optimizer.learning_rate': 0.1},
    'adam': {'optimizer.name': 'adam'},
    'adam-dropout': {'optimizer.name': 'adam',
                     'model.dropout_rates': (0.4, 0.3)},
    'adam-l2': {'optimizer.name': 'adam', 'l2': 2e-4},
}


def _a3(description: str, *settings: str) -> base.Preset:
  config = base.get_config()
  config.model.name = 'mlp'
  config.optimizer.schedule = 'piecewise'
  config.optimizer.boundaries = (10, 20)
  config.optimizer.scales = (0.5, 0.2)
  config.batch_size = 50
  config.epochs = 30
  config.monitor = True
  config.seeds_in_one_step = True
  config.steps_per_call = 10
  return base.Preset(description, config,
                     {name: dict(_SETTINGS[name]) for name in settings})


def sgd() -> base.Preset:
  return _a3('A.3 MLP, SGD 0.1 (Fig. 13a)', 'sgd')


def adam() -> base.Preset:
  return _a3('A.3 MLP, Adam 1e-3 (Fig. 13b)', 'adam')


def dropout() -> base.Preset:
  return _a3('A.3 MLP, Adam with dropout 0.4/0.3 (Fig. 13c)', 'adam-dropout')


def l2() -> base.Preset:
  return _a3('A.3 MLP, Adam with L2 2e-4 (Fig. 13d)', 'adam-l2')


def all_settings() -> base.Preset:
  return _a3('A.3 MLP, the four settings side by side (Fig. 13)',
             *_SETTINGS)
