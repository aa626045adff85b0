"""Optimizers compared in the paper, their schedules, and what to evaluate.

``create`` builds ``laperm(adam)``, ``adam``, ``sgd`` or
``lookahead(adam)`` from a config, with the paper's learning-rate schedules
as optax schedules counted in steps. ``eval_params`` gives the weights each
one is judged by: LaPerm's exactly synchronized weights (``lp.synchronize``:
reported accuracies are measured right after a sync), Lookahead's slow
weights, and the plain weights otherwise.
"""

from typing import Any, Optional

from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

import laperm_jax as lp
from experiments import models

NAMES = ('laperm', 'adam', 'adamw', 'sgd', 'lookahead')


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


def _permuted_mask(also_permute: tuple[str, ...]):
  """LaPerm's mask of the leaves :func:`weight_vector_layout` gives axes.

  Those are the kernels and the leaves named in ``also_permute``: a 1-D leaf
  among them is selected by this mask, not by LaPerm's default (rank >= 2).
  """
  def mask(params: optax.Params) -> Any:
    kernels = set(models.kernel_paths(params))
    return jax.tree_util.tree_map_with_path(
        lambda path, _: (tuple(key.key for key in path) in kernels
                         or path[-1].key in also_permute), params)
  return mask


def weight_vector_layout(config: ml_collections.ConfigDict,
                         model: nn.Module, image_shape: tuple[int, ...]
                         ) -> Optional[Any]:
  """LaPerm's weight-vector layout that a config asks for, or None.

  With ``vector_axes = 'derived'`` (for ``laperm`` only), every kernel's
  fan-in axes are read from the model's forward pass by
  ``lp.derive_vector_axes`` (traced abstractly: nothing runs; it warns
  once, naming the leaves of rank >= 2 it cannot read), the leaves named in
  ``also_permute`` are one weight vector each (every axis), and every other
  leaf (biases, normalization scales, embeddings the forward pass only
  adds) is ``lp.NO_FAN_IN``: LaPerm leaves it to the inner optimizer.

  Args:
    config: The ``optimizer`` section: ``name``, ``vector_axes``
      (``'default'``: all axes but the last, the paper's rule for Dense and
      Conv kernels; or ``'derived'``) and ``also_permute`` (leaf names).
    model: The Flax module (without BatchNorm statistics).
    image_shape: Shape of one input image.

  Returns:
    None for the default layout (or an optimizer other than LaPerm), else a
    params-shaped tree of tuples of fan-in axes and ``lp.NO_FAN_IN``, for
    :func:`create` and :func:`eval_params`.

  Raises:
    ValueError: An unknown ``vector_axes``; ``also_permute`` without
      ``'derived'`` or naming no leaf; a kernel whose fan-in the forward
      pass does not give.
  """
  if config.vector_axes not in ('default', 'derived'):
    raise ValueError(f'Unknown optimizer.vector_axes {config.vector_axes!r}; '
                     "use 'default' or 'derived'.")
  if config.vector_axes == 'default':
    if config.also_permute:
      raise ValueError("optimizer.also_permute needs optimizer.vector_axes = "
                       "'derived'.")
    return None
  if config.name != 'laperm':
    return None
  images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                             images)
  if set(variables) != {'params'}:
    raise ValueError("optimizer.vector_axes = 'derived' reads models with "
                     f'params only; this one also holds {set(variables)}.')
  params = variables['params']
  derived = lp.derive_vector_axes(
      lambda p, x: model.apply({'params': p}, x), params, images,
      unknown='warn')
  kernels = set(models.kernel_paths(params))
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  layouts = []
  for (path, leaf), axes in zip(flat, treedef.flatten_up_to(derived)):
    names = tuple(key.key for key in path)
    if names in kernels:
      if axes is lp.NO_FAN_IN:
        raise ValueError(f'optimizer.vector_axes: the forward pass gives the '
                         f'kernel {"/".join(names)} no fan-in.')
      layouts.append(axes)
    else:
      layouts.append(tuple(range(leaf.ndim))
                     if names[-1] in config.also_permute else lp.NO_FAN_IN)
  unknown = set(config.also_permute) - {
      tuple(key.key for key in path)[-1] for path, _ in flat}
  if unknown:
    raise ValueError(f'optimizer.also_permute names no leaf: '
                     f'{sorted(unknown)}.')
  return treedef.unflatten(layouts)


def _biases_and_kernels(params: optax.Params) -> Any:
  """A mask of every leaf but BatchNorm's scale and offset."""
  return jax.tree.map(lambda is_bn: not is_bn, models.batch_norm_mask(params))


def create(config: ml_collections.ConfigDict, steps_per_epoch: int,
           layout: Optional[Any] = None) -> optax.GradientTransformation:
  """Builds the optimizer a config names.

  Args:
    config: The ``optimizer`` section: ``name`` (one of :data:`NAMES`), the
      schedule fields of :func:`learning_rate`, ``sync_period`` (LaPerm's
      k), ``permute_biases`` (LaPerm permutes 1-D leaves too, each as one
      weight vector, as the authors' Conv7 notebook does with
      ``skip_bias=False``), ``gamma_beta_reset`` (LaPerm resets BatchNorm scale and offset to 1
      and 0 at each sync, A.5.6), ``lookahead_sync_period`` and
      ``lookahead_step_size`` (TensorFlow's defaults, 6 and 0.5, in 5.1);
      ``vector_axes`` (see :func:`weight_vector_layout`); ``weight_decay``
      (``adamw``'s, on the kernels only, as is usual for Transformers).
    steps_per_epoch: Train steps in one epoch.
    layout: LaPerm's layout from :func:`weight_vector_layout`: it permutes
      exactly the leaves the layout gives axes. None: the default layout.

  Returns:
    The optax transformation. ``lookahead`` expects
    ``optax.LookaheadParams`` (see :func:`wrap_params`).

  Raises:
    ValueError: A ``layout`` missing for, or given without, ``'derived'``
      LaPerm; ``permute_biases`` with it (use ``also_permute``).
  """
  schedule = learning_rate(config, steps_per_epoch)
  derived = config.name == 'laperm' and config.vector_axes == 'derived'
  if derived != (layout is not None):
    raise ValueError("A layout goes with optimizer.vector_axes = 'derived' "
                     "and 'laperm' only: build it with weight_vector_layout().")
  if derived:
    if config.permute_biases:
      raise ValueError('optimizer.permute_biases takes the default layout; '
                       "with 'derived', name leaves in also_permute.")
    return lp.laperm(
        optax.adam(schedule), config.sync_period,
        mask=_permuted_mask(tuple(config.also_permute)),
        reset_mask=models.batch_norm_mask if config.gamma_beta_reset else None,
        vector_axes=layout)
  if config.name == 'laperm':
    return lp.laperm(
        optax.adam(schedule), config.sync_period,
        mask=_biases_and_kernels if config.permute_biases else None,
        reset_mask=models.batch_norm_mask if config.gamma_beta_reset else None)
  if config.name == 'adam':
    return optax.adam(schedule)
  if config.name == 'adamw':
    return optax.adamw(schedule, weight_decay=config.weight_decay,
                       mask=_permuted_mask(()))  # The kernels.
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
  initial weights, under the layout its state carries), whether or not this
  step was a sync. Lookahead: the slow weights. Others: the params.
  """
  if isinstance(params, optax.LookaheadParams):
    return params.slow
  if lp.laperm_states(opt_state):
    return lp.synchronize(params, opt_state)
  return params
