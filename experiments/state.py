"""The train state: a model's initial weights and its optimizer.

The initial weights are the model's initializer's, pruned (Section 5.4) or
set to a shared value (Section 5.5) as the config's ``init`` section says;
every draw comes from ``config.seed``, so a run can always regenerate them.
:func:`initial_run` rebuilds a run from its config (model, LaPerm's layout,
optimizer, each seed's initial state): training starts from it, and the
results figures call it to check that trained kernels are exact
permutations of the initial ones.
"""

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

from flax import linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import optax

import laperm_jax as lp
from experiments import models
from experiments import optimizers


class TrainState(train_state.TrainState):
  """Flax's train state plus BatchNorm statistics (``{}`` without BN)."""

  batch_stats: Any


def variables(params: Any, batch_stats: Any) -> dict[str, Any]:
  """The variables ``model.apply`` takes (no ``batch_stats`` without BN)."""
  if batch_stats:
    return {'params': params, 'batch_stats': batch_stats}
  return {'params': params}


def _per_kernel(values: Sequence[float], params: Any) -> Any:
  """A tree of ``values`` at the kernels, in layer order, and 1 elsewhere."""
  kernels = models.kernel_paths(params)
  if len(values) != len(kernels):
    names = ', '.join('/'.join(path) for path in kernels)
    raise ValueError(f'init.keep_per_kernel has {len(values)} values but the '
                     f'model has {len(kernels)} kernels ({names}): give one '
                     'per kernel, from input to output.')
  by_path = dict(zip(kernels, values))
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: by_path.get(tuple(key.key for key in path), 1.0),
      params)


def initial_params(config: ml_collections.ConfigDict, key: jax.Array,
                   params: Any) -> Any:
  """The kernels' initial weights: as initialized, pruned, or shared-value.

  Args:
    config: The ``init`` section: ``kind`` is ``random`` (unchanged),
      ``prune`` (zero ``prune_rate`` of each kernel, the input layer at most
      ``first_layer_max``, Section 5.4; ``size_aware`` prunes large kernels
      more, A.5.0) or ``shared_value`` (every kernel weight 0 or ``value``, a
      fraction ``keep`` of them nonzero, Section 5.5; ``keep_per_kernel``,
      if given, one fraction per kernel from input to output layer instead;
      ``size_aware`` spreads ``keep`` over the kernels by the n^-0.3 rule of
      ``lp.size_aware_rates``, A.5.0).
    key: A PRNG key.
    params: The model's freshly initialized params.

  Returns:
    The params to start from.
  """
  if config.kind == 'random':
    return params
  if config.kind == 'prune':
    first_layer = ''.join(f"['{name}']"
                          for name in models.first_kernel_path(params))
    return lp.random_prune(
        key, params, config.prune_rate, size_aware=config.size_aware,
        first_layer=first_layer, first_layer_max=config.first_layer_max).params
  if config.kind == 'shared_value':
    if config.keep_per_kernel and config.size_aware:
      raise ValueError('init.size_aware derives the fraction of each kernel; '
                       'it cannot be combined with init.keep_per_kernel.')
    keep = config.keep
    if config.keep_per_kernel:
      keep = _per_kernel(config.keep_per_kernel, params)
    elif config.size_aware:
      keep = jax.tree.map(lambda rate: 1.0 - rate,
                          lp.size_aware_rates(params, 1.0 - config.keep))
    return lp.shared_value(key, params, config.value, keep)
  raise ValueError(f'Unknown init kind {config.kind!r}; use random, prune or '
                   'shared_value.')


def create_train_state(config: ml_collections.ConfigDict, model: nn.Module,
                       image_shape: tuple[int, ...], steps_per_epoch: int, *,
                       tx: Optional[optax.GradientTransformation] = None
                       ) -> TrainState:
  """Initializes the model, its initial weights and the optimizer.

  Args:
    config: The run's config; ``config.seed`` draws the initial weights.
    model: The Flax module.
    image_shape: Shape of one input image.
    steps_per_epoch: Train steps in one epoch (for the schedules).
    tx: The optimizer; built from ``config.optimizer`` when None. Runs of
      several seeds share one, so that their states stack.

  Returns:
    The train state of one seed.
  """
  init_key, weights_key = jax.random.split(jax.random.key(config.seed))
  if tx is None:
    _, tx = _layout_and_optimizer(config.optimizer, model, image_shape,
                                  steps_per_epoch)
  init_model, create = _state_programs(
      model, tx, ml_collections.FrozenConfigDict(config.init),
      ml_collections.FrozenConfigDict(config.optimizer))
  initial_variables = init_model(init_key, jnp.zeros((1, *image_shape)))
  return create(weights_key, initial_variables)


class InitialRun(NamedTuple):
  """A run rebuilt from its config, before its first step.

  Attributes:
    model: The Flax module.
    layout: LaPerm's weight-vector layout (``optimizers.weight_vector_layout``;
      None: all axes but the last).
    tx: The optimizer, shared by the seeds so that their states stack.
    seed_configs: The run's config with each seed in ``seed``.
    states: Each seed's initial train state, in the order of the seeds.
  """

  model: nn.Module
  layout: Any
  tx: optax.GradientTransformation
  seed_configs: list[ml_collections.ConfigDict]
  states: list[TrainState]


def initial_run(config: ml_collections.ConfigDict, seeds: Sequence[int], *,
                num_classes: int, image_shape: tuple[int, ...],
                steps_per_epoch: int) -> InitialRun:
  """Rebuilds a run from its config: model, layout, optimizer, initial states.

  The one way a run is set up: training starts from it, and a finished run
  (its ``metrics.json`` config) regenerates its initial weights with it.

  Args:
    config: The run's config; ``config.seed`` is replaced by each seed.
    seeds: The seeds, each drawing its own initial weights.
    num_classes: Classes of the dataset.
    image_shape: Shape of one input image.
    steps_per_epoch: Train steps in one epoch (for the schedules; any value
      gives the same shapes and initial weights).

  Returns:
    The model, layout, optimizer, per-seed configs and initial states.
  """
  model = models.create(config.model, num_classes)
  layout, tx = _layout_and_optimizer(config.optimizer, model, image_shape,
                                     steps_per_epoch)
  seed_configs = []
  for seed in seeds:
    seed_config = ml_collections.ConfigDict(config.to_dict())
    seed_config.seed = int(seed)
    seed_configs.append(seed_config)
  states = [create_train_state(seed_config, model, image_shape,
                               steps_per_epoch, tx=tx)
            for seed_config in seed_configs]
  return InitialRun(model, layout, tx, seed_configs, states)


def _layout_and_optimizer(config: ml_collections.ConfigDict, model: nn.Module,
                          image_shape: tuple[int, ...], steps_per_epoch: int
                          ) -> tuple[Any, optax.GradientTransformation]:
  """LaPerm's layout of ``model``'s weights, and the optimizer built on it."""
  layout = optimizers.weight_vector_layout(config, model, image_shape)
  return layout, optimizers.create(config, steps_per_epoch, layout)


@functools.lru_cache(maxsize=8)
def _state_programs(model: nn.Module, tx: optax.GradientTransformation,
                    init_config: ml_collections.FrozenConfigDict,
                    optimizer_config: ml_collections.FrozenConfigDict
                    ) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """The jitted ``model.init`` and train-state builder, made once per run.

  Jitted because eager initialization compiles every op on its own, which
  costs seconds on CPU; cached so that the seeds of a run (which share
  ``tx``) trace and compile them once. ``model.init`` is a program of its
  own, so its rounding cannot depend on what follows it; the builder only
  selects, sorts and fills, exact in any program.
  """

  def create(weights_key, initial_variables):
    params = initial_params(init_config, weights_key,
                            initial_variables['params'])
    state = TrainState.create(
        apply_fn=model.apply,
        params=optimizers.wrap_params(optimizer_config, params), tx=tx,
        batch_stats=initial_variables.get('batch_stats', {}))
    # An int32 array from the start, as a restored checkpoint holds it.
    return state.replace(step=jnp.zeros([], jnp.int32))

  return jax.jit(model.init), jax.jit(create)
