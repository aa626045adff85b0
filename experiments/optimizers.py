"""Optimizers compared in the paper, their schedules, and what to evaluate.

``create`` builds ``laperm(adam)``, ``adam``, ``sgd`` or
``lookahead(adam)`` from a config, with the paper's learning-rate schedules
as optax schedules counted in steps. ``eval_params`` gives the weights each
one is judged by: LaPerm's exactly synchronized weights (``lp.synchronize``:
reported accuracies are measured right after a sync), Lookahead's slow
weights, and the plain weights otherwise.
"""

from typing import Any

import jax
import ml_collections
import optax

import laperm_jax as lp
from experiments import models

NAMES = ('laperm', 'adam', 'sgd', 'lookahead')


def learning_rate(config: ml_collections.ConfigDict,
                  steps_per_epoch: int) -> optax.Schedule:
  """The learning-rate schedule of a config, in steps.

  Args:
    config: The ``optimizer`` section: ``learning_rate`` and ``schedule``:
      ``constant``; ``exponential`` (multiply by ``decay_rate`` every
      ``decay_epochs`` epochs: 0.95 per epoch in 5.1 and 5.5, 0.6 every 10
      epochs in 5.2); or ``piecewise`` (multiply by ``scales[i]`` at epoch
      ``boundaries[i]``: /2 at 10 and /5 at 20 in A.3; /10 at 80, 120, 160
      and /2 at 180 in 5.4).
    steps_per_epoch: Train steps in one epoch.

  Returns:
    An optax schedule.
  """
  if config.schedule == 'constant':
    return optax.constant_schedule(config.learning_rate)
  if config.schedule == 'exponential':
    return optax.exponential_decay(
        config.learning_rate, transition_steps=config.decay_epochs *
        steps_per_epoch, decay_rate=config.decay_rate, staircase=True)
  if config.schedule == 'piecewise':
    return optax.piecewise_constant_schedule(
        config.learning_rate,
        {epoch * steps_per_epoch: scale
         for epoch, scale in zip(config.boundaries, config.scales)})
  raise ValueError(f'Unknown schedule {config.schedule!r}; use constant, '
                   'exponential or piecewise.')


def _biases_and_kernels(params: optax.Params) -> Any:
  """A mask of every leaf but BatchNorm's scale and offset."""
  return jax.tree.map(lambda is_bn: not is_bn, models.batch_norm_mask(params))


def create(config: ml_collections.ConfigDict,
           steps_per_epoch: int) -> optax.GradientTransformation:
  """Builds the optimizer a config names.

  Args:
    config: The ``optimizer`` section: ``name`` (one of :data:`NAMES`), the
      schedule fields of :func:`learning_rate`, ``sync_period`` (LaPerm's
      k), ``permute_biases`` (LaPerm permutes 1-D leaves too, each as one
      weight vector, as the authors' Conv7 notebook does with
      ``skip_bias=False``), ``gamma_beta_reset`` (LaPerm resets BatchNorm scale and offset to 1
      and 0 at each sync, A.5.6), ``lookahead_sync_period`` and
      ``lookahead_step_size`` (TensorFlow's defaults, 6 and 0.5, in 5.1).
    steps_per_epoch: Train steps in one epoch.

  Returns:
    The optax transformation. ``lookahead`` expects
    ``optax.LookaheadParams`` (see :func:`wrap_params`).
  """
  schedule = learning_rate(config, steps_per_epoch)
  if config.name == 'laperm':
    return lp.laperm(
        optax.adam(schedule), config.sync_period,
        mask=_biases_and_kernels if config.permute_biases else None,
        reset_mask=models.batch_norm_mask if config.gamma_beta_reset else None)
  if config.name == 'adam':
    return optax.adam(schedule)
  if config.name == 'sgd':
    return optax.sgd(schedule)
  if config.name == 'lookahead':
    return optax.lookahead(optax.adam(schedule),
                           config.lookahead_sync_period,
                           config.lookahead_step_size)
  raise ValueError(f'Unknown optimizer {config.name!r}; use one of {NAMES}.')


def wrap_params(config: ml_collections.ConfigDict,
                params: optax.Params) -> optax.Params:
  """The params as the optimizer holds them (Lookahead: fast and slow)."""
  if config.name == 'lookahead':
    return optax.LookaheadParams.init_synced(params)
  return params


def train_params(params: optax.Params) -> optax.Params:
  """The weights the gradient is taken at (Lookahead: the fast ones)."""
  if isinstance(params, optax.LookaheadParams):
    return params.fast
  return params


def eval_params(params: optax.Params,
                opt_state: optax.OptState) -> optax.Params:
  """The weights an optimizer is evaluated with.

  LaPerm: the params synchronized exactly (each kernel a permutation of its
  initial weights), whether or not this step was a sync. Lookahead: the slow
  weights. Others: the params.
  """
  if isinstance(params, optax.LookaheadParams):
    return params.slow
  if any(isinstance(leaf, lp.LaPermState) for leaf in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, lp.LaPermState))):
    return lp.synchronize(params, opt_state)
  return params
