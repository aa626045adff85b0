"""Training and evaluation: jitted steps, seeds, checkpoints, best weights.

The training split sits on the device; per epoch one jitted call draws the
shuffled batch indices and step keys, and jitted calls of one step each (or,
with ``steps_per_call > 1``, one loop over up to that many steps) gather
each batch on the device, augment it and take the step. Conv presets keep
one step per call: XLA's CPU backend runs the convolutions of a loop body
about ten times slower than those of a plain jitted step (measured on
Conv7); small dense nets run faster in blocks (fewer dispatches).

Seeds: ``train_seeds`` trains several seeds of one run. With
``config.seeds_in_one_step`` (the presets of small dense nets) they train
together, one jitted call for all (a ``lax.map`` over the seeds), so that
five seeds of F1 cost about two runs (10 epochs: 39 s against 21 s for
one, at load 2-3); a seed's results equal those of the same seed trained
alone, bit for bit. The conv presets train one seed per
call.

Evaluation: every ``eval_every`` epochs, or every ``eval_every_steps``
steps (the weight-agnostic presets: right after every sync, as the authors'
code validates), the model is evaluated on the validation split with the
weights its optimizer is judged by (``optimizers.eval_params``: for LaPerm,
exactly synchronized weights); the best such weights are kept, per seed,
and scored on the test split at the end. Test data never picks weights.

An orbax checkpoint is written every ``checkpoint_every`` epochs (default
1) and at the end; a resumed run continues bit for bit, since every random
draw comes from the seed and the epoch number.

Data parallel: ``config.devices`` (``--devices``; default 1, 0 for all local
devices) runs every step on that many devices of a 1-D ``('batch',)``
``Mesh``. The datasets, params and optimizer state are replicated on each
device; every drawn batch is sharded along its batch axis (a sharding
constraint inside the jitted step, so each device gathers and augments only
its part), and XLA all-reduces the gradients, the BatchNorm statistics and
the metrics. The optimizer step, LaPerm's syncs included, runs replicated, so
the weights stay identical on every device. Results equal one device's up to
the order of those reductions. Evaluation batches are sharded the same way.
Checkpoints hold the (replicated) arrays once, and a run resumes on any
device count.
"""

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any, Callable, Optional, Sequence

from flax import linen as nn
from flax.training import train_state
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

import laperm_jax as lp
from experiments import augment
from experiments import data
from experiments import models
from experiments import monitor
from experiments import optimizers


class TrainState(train_state.TrainState):
  """Flax's train state plus BatchNorm statistics (``{}`` without BN)."""

  batch_stats: Any


@dataclasses.dataclass
class RunResult:
  """What one training run produced.

  Attributes:
    name: The run's name.
    seed: The run's seed.
    history: One dict of metrics per record: at every evaluation and at the
      end of every epoch, with the ``epoch`` (1-based) and ``step`` (steps
      done) it was made at; train metrics are means since the last record.
    best_epoch: The epoch of the best validation accuracy.
    best_step: The step of the best validation accuracy.
    best_val_accuracy: That accuracy.
    test_accuracy: Test accuracy of the best weights.
    final_test_accuracy: Test accuracy of the last epoch's weights.
    seconds: Wall time of the run, compilation included; seeds trained
      together share their call's time equally.
    monitor: The A.3 monitor entries (empty unless ``config.monitor``).
    state: The final train state.
    best_params: The best weights (as evaluated: synchronized for LaPerm).
  """

  name: str
  seed: int
  history: list[dict[str, float]]
  best_epoch: int
  best_step: int
  best_val_accuracy: float
  test_accuracy: float
  final_test_accuracy: float
  seconds: float
  monitor: list[dict[str, Any]]
  state: TrainState
  best_params: Any


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
  if batch_stats:
    return {'params': params, 'batch_stats': batch_stats}
  return {'params': params}


BATCH_AXIS = 'batch'


def make_mesh(devices: Any = 1) -> Optional[jax.sharding.Mesh]:
  """The data-parallel mesh: the first ``devices`` local devices.

  Args:
    devices: How many local devices to train on: an int >= 1, or ``0`` /
      ``'all'`` for all of them.

  Returns:
    A 1-D mesh with axis ``'batch'``, or ``None`` when the run uses one
    device (then nothing is sharded: exactly the single-device program).
  """
  available = jax.local_devices()
  if isinstance(devices, bool):
    count = -1
  elif devices in (0, 'all'):
    count = len(available)
  elif isinstance(devices, int) and devices >= 1:
    count = devices
  else:
    count = -1
  if count < 1:
    raise ValueError(f"devices must be an int >= 1, or 0 or 'all' for all "
                     f'local devices; got {devices!r}.')
  if count > len(available):
    raise ValueError(f'devices={count} but only {len(available)} local '
                     f'devices are available: {available}.')
  if count == 1:
    return None
  return jax.sharding.Mesh(np.array(available[:count]), (BATCH_AXIS,))


def _replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _shard_batch(mesh: Optional[jax.sharding.Mesh], tree: Any) -> Any:
  """Constrains every array of ``tree`` to be sharded along axis 0."""
  if mesh is None:
    return tree
  sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(BATCH_AXIS))
  return jax.tree.map(lambda x: lax.with_sharding_constraint(x, sharding),
                      tree)


def _device_put(mesh: Optional[jax.sharding.Mesh], tree: Any) -> Any:
  """``tree`` on the default device, or replicated on every mesh device."""
  if mesh is None:
    return jax.device_put(tree)
  return jax.device_put(tree, _replicated(mesh))


def l2_penalty(params: Any) -> jax.Array:
  """Keras' L2: the sum of squared kernel weights, output layer excluded."""
  def penalty(path, leaf):
    names = [str(getattr(key, 'key', '')) for key in path]
    if names[-1] != 'kernel' or 'head' in names:
      return jnp.zeros([])
    return jnp.sum(jnp.square(leaf))

  return sum(jax.tree.leaves(jax.tree_util.tree_map_with_path(penalty,
                                                              params)))


def _kernel_paths_in_layer_order(params: Any) -> list[str]:
  """Key paths of the kernels, input layer first and ``head`` last.

  The models of ``experiments.models`` name their layers so that sorted key
  order is layer order once ``head`` is moved last (see
  ``monitor.first_kernel_path``).
  """
  paths = [jax.tree_util.keystr(path) for path, leaf in
           jax.tree_util.tree_flatten_with_path(params)[0]
           if np.ndim(leaf) >= 2]
  return sorted(paths, key=lambda path: path.startswith("['head']"))


def _per_kernel(values: Sequence[float], params: Any) -> Any:
  """A tree of ``values`` at the kernels, in layer order, and 1 elsewhere."""
  kernels = _kernel_paths_in_layer_order(params)
  if len(values) != len(kernels):
    raise ValueError(f'init.keep_per_kernel has {len(values)} values but the '
                     f'model has {len(kernels)} kernels ({", ".join(kernels)}):'
                     ' give one per kernel, from input to output.')
  by_path = dict(zip(kernels, values))
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: by_path.get(jax.tree_util.keystr(path), 1.0),
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
                          for name in monitor.first_kernel_path(params))
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
    tx = optimizers.create(config.optimizer, steps_per_epoch)
  init_model, create = _state_programs(
      model, tx, ml_collections.FrozenConfigDict(config.init),
      ml_collections.FrozenConfigDict(config.optimizer))
  variables = init_model(init_key, jnp.zeros((1, *image_shape)))
  return create(weights_key, variables)


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

  def create(weights_key, variables):
    params = initial_params(init_config, weights_key, variables['params'])
    state = TrainState.create(
        apply_fn=model.apply,
        params=optimizers.wrap_params(optimizer_config, params), tx=tx,
        batch_stats=variables.get('batch_stats', {}))
    # An int32 array from the start, as a restored checkpoint holds it.
    return state.replace(step=jnp.zeros([], jnp.int32))

  return jax.jit(model.init), jax.jit(create)


def _stack(trees: list[Any]) -> Any:
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _seed(tree: Any, index: int) -> Any:
  return jax.tree.map(lambda leaf: leaf[index], tree)


def _over_seeds(fn: Callable[..., Any], in_axes: tuple[Optional[int], ...],
                together: bool) -> Callable[..., Any]:
  """``fn`` mapped over a leading seed axis of the arguments marked 0.

  ``together``: every seed in one call, a ``lax.map`` over the seeds of the
  unbatched ``fn``. Not ``jax.vmap``: XLA's CPU backend rounds a batched
  dot differently depending on the batch size and the position in it, so a
  vmapped seed's results would depend on its company; and on CPU the
  ``lax.map`` step of F1 and F2 ran twice as fast as the vmapped one (5
  seeds). Otherwise the seed axis holds one seed, which ``fn`` sees without
  it: the program of a plain single-seed step (a loop body runs XLA CPU's
  convolutions slower).
  """
  if together:
    def mapped(*args):
      seeded = [arg for arg, axis in zip(args, in_axes) if axis is not None]

      def one(seeded_args):
        seeded_args = iter(seeded_args)
        return fn(*[next(seeded_args) if axis is not None else arg
                    for arg, axis in zip(args, in_axes)])

      return lax.map(one, seeded)
    return mapped

  def one_seed(*args):
    args = [arg if axis is None else _seed(arg, 0)
            for arg, axis in zip(args, in_axes)]
    return jax.tree.map(lambda leaf: leaf[None], fn(*args))

  return one_seed


def make_train_steps(config: ml_collections.ConfigDict, model: nn.Module,
                     steps_per_epoch: int,
                     mesh: Optional[jax.sharding.Mesh] = None,
                     together: bool = False
                     ) -> tuple[Callable[..., Any], ...]:
  """The jitted functions that train a stack of seeds.

  Args:
    config: The run's config (``steps_per_call`` steps per jitted call).
    model: The Flax module.
    steps_per_epoch: Train steps in one epoch.
    mesh: The data-parallel mesh, or None.
    together: Whether all seeds train in one step (else exactly one seed is
      trained; see :func:`_over_seeds`).

  Returns:
    ``draw(epoch_keys, count) -> (order, step_keys)``: per seed, the epoch's
    batches as indices into the ``count`` training examples and a key per
    step; and ``train(state, images, labels, order, step_keys, start, stop)
    -> (state, metrics)``: steps ``start`` to ``stop`` of the epoch, metrics
    of shape ``(seeds, stop - start)`` as NumPy arrays. With
    ``steps_per_call > 1``, every call runs a loop of up to that many steps,
    one program for every count (fewer dispatches: faster for small dense
    nets; XLA's CPU backend runs the convolutions of a loop body about ten
    times slower, measured on Conv7, so conv presets keep 1).
  """
  augment_config = config.augment if augment.is_enabled(
      config.augment) else None

  def train_step(state, images, labels, key):
    augment_key, dropout_key = jax.random.split(key)
    if augment_config is not None:
      images = augment.augment_batch(augment_key, images, augment_config)

    def loss_fn(params):
      logits, updates = model.apply(
          _variables(params, state.batch_stats), images, train=True,
          rngs={'dropout': dropout_key}, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
      return loss + config.l2 * l2_penalty(params), (loss, logits, updates)

    grads, (loss, logits, updates) = jax.grad(loss_fn, has_aux=True)(
        optimizers.train_params(state.params))
    state = state.apply_gradients(
        grads=grads,
        batch_stats=updates.get('batch_stats', state.batch_stats))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return state, {'train_loss': loss, 'train_accuracy': accuracy}

  def draw_one(key, count):
    order_key, steps_key = jax.random.split(key)
    order = jax.random.permutation(order_key, count)
    order = order[:steps_per_epoch * config.batch_size].reshape(
        steps_per_epoch, config.batch_size)
    return order, jax.random.split(steps_key, steps_per_epoch)

  draw = jax.jit(jax.vmap(draw_one, in_axes=(0, None)), static_argnums=1)

  def one_step(state, images, labels, order, step_keys, index):
    batch_images, batch_labels = _shard_batch(
        mesh, (images[order[index]], labels[order[index]]))
    return train_step(state, batch_images, batch_labels, step_keys[index])

  seeded_step = _over_seeds(one_step, (0, None, None, 0, 0, None), together)

  def block(state, images, labels, order, step_keys, start, count):
    # A loop of `count` <= steps_per_call steps: one program for every
    # segment length, so segments cut short by evaluations need no single
    # steps. Metrics go to a buffer of steps_per_call columns.
    shapes = jax.eval_shape(seeded_step, state, images, labels, order,
                            step_keys, start)[1]
    buffers = jax.tree.map(
        lambda shape: jnp.zeros((*shape.shape, config.steps_per_call),
                                shape.dtype), shapes)

    def body(step, carry):
      state, buffers = carry
      state, metrics = seeded_step(state, images, labels, order, step_keys,
                                   start + step)
      return state, jax.tree.map(
          lambda buffer, value: buffer.at[..., step].set(value), buffers,
          metrics)

    return lax.fori_loop(0, count, body, (state, buffers))

  # Not donated: the best weights kept between evaluations may share the
  # state's buffers.
  jit = jax.jit if mesh is None else functools.partial(
      jax.jit, out_shardings=_replicated(mesh))
  seeded_step, block = jit(seeded_step), jit(block)

  def train(state, images, labels, order, step_keys, start, stop):
    metrics, counts = [], []
    for index in range(start, stop, config.steps_per_call):
      count = min(config.steps_per_call, stop - index)
      if config.steps_per_call > 1:
        state, block_metrics = block(state, images, labels, order, step_keys,
                                     index, count)
      else:
        state, block_metrics = seeded_step(state, images, labels, order,
                                           step_keys, index)
      metrics.append(block_metrics)
      counts.append(count)
    # On the host: eager ops on the device would compile anew for every
    # segment length.
    metrics = jax.device_get(metrics)
    return state, jax.tree.map(
        lambda *values: np.concatenate(
            [value.reshape(len(value), -1)[:, :count]
             for value, count in zip(values, counts)], 1),
        *metrics)

  return draw, train


def make_evaluate(model: nn.Module, batch_size: int,
                  mesh: Optional[jax.sharding.Mesh] = None,
                  together: bool = False) -> Callable[..., Any]:
  """The jitted ``(params, batch_stats, images, labels) -> (loss, accuracy)``.

  ``params`` and ``batch_stats`` hold a leading seed axis (see
  :func:`make_train_steps`); loss and accuracy are per seed. Batches are
  scanned over on device; the last one is padded and the padding weighted
  out. With a ``mesh``, batches are sharded along its ``'batch'`` axis
  (their size rounded up to a multiple of its devices).
  """
  def evaluate(params, batch_stats, images, labels):
    count = images.shape[0]
    size = min(batch_size, count)
    if mesh is not None:
      size = -(-size // mesh.size) * mesh.size
    padding = -count % size
    weights = (jnp.arange(count + padding) < count).astype(jnp.float32)
    images = jnp.pad(images, [(0, padding)] + [(0, 0)] * (images.ndim - 1))
    labels = jnp.pad(labels, (0, padding))
    batches = jax.tree.map(lambda x: x.reshape(-1, size, *x.shape[1:]),
                           (images, labels, weights))

    def body(totals, batch):
      x, y, w = _shard_batch(mesh, batch)
      logits = model.apply(_variables(params, batch_stats), x, train=False)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
      return (totals[0] + jnp.sum(loss * w),
              totals[1] + jnp.sum(correct * w)), None

    (loss, correct), _ = lax.scan(body, (jnp.zeros([]), jnp.zeros([])),
                                  batches)
    return loss / count, correct / count

  evaluate = _over_seeds(evaluate, (0, 0, None, None), together)
  if mesh is None:
    return jax.jit(evaluate)
  return jax.jit(evaluate, out_shardings=_replicated(mesh))


@jax.jit
def _where_improved(improved: jax.Array, new: Any, old: Any) -> Any:
  """Per seed, ``new`` where ``improved`` else ``old``."""
  return jax.tree.map(
      lambda n, o: jnp.where(improved.reshape((-1,) + (1,) * (n.ndim - 1)),
                             n, o), new, old)


def record_points(config: ml_collections.ConfigDict, steps_per_epoch: int,
                  epoch: int) -> dict[int, bool]:
  """Where epoch ``epoch`` (0-based) records metrics, and whether it evaluates.

  Returns:
    ``{steps into the epoch: evaluate}``, sorted. With ``eval_every_steps``,
    an evaluation follows every step count that is a multiple of it (counted
    from the start of training: with it equal to LaPerm's sync period, right
    after every sync); else every ``eval_every`` epochs. Every epoch ends
    with a record, and the last one with an evaluation.
  """
  first = epoch * steps_per_epoch
  points = {}
  if config.eval_every_steps:
    period = config.eval_every_steps
    for done in range(-(-(first + 1) // period) * period,
                      first + steps_per_epoch + 1, period):
      points[done - first] = True
  end = (not config.eval_every_steps and
         (epoch + 1) % config.eval_every == 0) or epoch + 1 == config.epochs
  points[steps_per_epoch] = points.get(steps_per_epoch, False) or end
  return dict(sorted(points.items()))


@dataclasses.dataclass
class _Progress:
  """What one seed's run tracks besides the train state; all checkpointed."""

  history: list[dict[str, float]]
  best_epoch: int
  best_step: int
  best_val_accuracy: float
  monitor: list[dict[str, Any]]

  def to_json(self) -> dict[str, Any]:
    return dict(dataclasses.asdict(self),
                monitor=monitor.to_json(self.monitor))

  @classmethod
  def from_json(cls, values: dict[str, Any]) -> '_Progress':
    return cls(**dict(values, monitor=monitor.from_json(values['monitor'])))


def _checkpoint_manager(workdir: pathlib.Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      (workdir / 'checkpoints').absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=1))


def train_and_evaluate(config: ml_collections.ConfigDict,
                       splits: dict[str, data.Split], num_classes: int,
                       workdir: pathlib.Path, *, name: str = 'run',
                       resume: bool = False) -> RunResult:
  """Trains the run of ``config.seed``; see :func:`train_seeds`."""
  return train_seeds(config, (config.seed,), splits, num_classes, workdir,
                     name=name, resume=resume)[0]


def train_seeds(config: ml_collections.ConfigDict, seeds: Sequence[int],
                splits: dict[str, data.Split], num_classes: int,
                workdir: pathlib.Path, *, name: str = 'run',
                resume: bool = False) -> list[RunResult]:
  """Trains one run per seed, evaluates and checkpoints them, writes metrics.

  With ``config.seeds_in_one_step`` the seeds train together: one jitted
  step (or block of steps) for all of them, so that a few seeds of a small
  net cost little more than one. A seed's results do not depend on which
  other seeds train beside it (bitwise; tested). Without it, exactly one
  seed is accepted (run several seeds one after another).

  Args:
    config: The run's config (see ``experiments/configs/base.py``; its
      ``devices`` field asks for data parallelism over that many local
      devices, 0 for all). ``config.seed`` is replaced by each seed.
    seeds: The seeds: initial weights, batch order, augmentation, dropout.
      The validation split is drawn with ``config.data_seed``, the same for
      every seed.
    splits: Normalized ``train``, ``validation`` and ``test`` splits.
    num_classes: Classes of the dataset.
    workdir: Where the runs write ``checkpoints/`` and ``metrics.json``
      (``seed-S/metrics.json`` per seed when there are several).
    name: The run's name, shown on the progress bar.
    resume: Continue from the latest checkpoint in ``workdir`` if any.

  Returns:
    One :class:`RunResult` per seed, in the order of ``seeds``.
  """
  start_time = time.perf_counter()
  seeds = tuple(int(seed) for seed in seeds)
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f'seeds must be distinct and at least one; got {seeds}.')
  if len(seeds) > 1 and not config.seeds_in_one_step:
    raise ValueError(f'{len(seeds)} seeds given but config.seeds_in_one_step is '
                     'off: train one seed per call.')
  mesh = make_mesh(config.devices)
  if mesh is not None and config.batch_size % mesh.size:
    raise ValueError(f'batch_size {config.batch_size} is not divisible by '
                     f'the {mesh.size} devices of the run.')
  workdir.mkdir(parents=True, exist_ok=True)
  train = _device_put(mesh, splits['train'])
  validation = _device_put(mesh, splits['validation'])
  steps_per_epoch = len(splits['train'].labels) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'batch_size {config.batch_size} exceeds the '
                     f'{len(splits["train"].labels)} training examples.')
  model = models.create(config.model, num_classes)
  tx = optimizers.create(config.optimizer, steps_per_epoch)
  seed_configs = []
  for seed in seeds:
    seed_config = ml_collections.ConfigDict(config.to_dict())
    seed_config.seed = seed
    seed_configs.append(seed_config)
  state = _stack([
      create_train_state(seed_config, model, splits['train'].images.shape[1:],
                         steps_per_epoch, tx=tx)
      for seed_config in seed_configs])
  if mesh is not None:
    state = _device_put(mesh, state)
  together = bool(config.seeds_in_one_step)
  draw, train_steps = make_train_steps(config, model, steps_per_epoch, mesh,
                                       together)
  evaluate = make_evaluate(model, config.eval_batch_size, mesh, together)
  eval_params = _over_seeds(optimizers.eval_params, (0, 0), together)
  eval_params = jax.jit(eval_params) if mesh is None else jax.jit(
      eval_params, out_shardings=_replicated(mesh))

  def eval_weights(state):
    return eval_params(state.params, state.opt_state)

  kernel_path = monitor.first_kernel_path(_seed(eval_weights(state), 0))
  best_params, best_batch_stats = eval_weights(state), state.batch_stats
  previous_kernel = monitor.get_leaf(best_params, kernel_path)
  epoch = 0
  progress = [_Progress(history=[], best_epoch=0, best_step=0,
                        best_val_accuracy=-1.0, monitor=[]) for _ in seeds]

  def tracked():
    return {'state': state, 'best_params': best_params,
            'best_batch_stats': best_batch_stats,
            'previous_kernel': previous_kernel}

  base_keys = jnp.stack([jax.random.fold_in(jax.random.key(seed), 1)
                         for seed in seeds])
  with _checkpoint_manager(workdir) as manager:
    if resume and manager.latest_step() is not None:
      restored = manager.restore(
          manager.latest_step(),
          args=ocp.args.Composite(
              arrays=ocp.args.StandardRestore(
                  jax.tree.map(ocp.utils.to_shape_dtype_struct, tracked())),
              progress=ocp.args.JsonRestore()))
      state = restored.arrays['state']
      best_params = restored.arrays['best_params']
      best_batch_stats = restored.arrays['best_batch_stats']
      previous_kernel = restored.arrays['previous_kernel']
      if restored.progress['seeds'] != list(seeds):
        raise ValueError(f'{workdir} holds the seeds '
                         f'{restored.progress["seeds"]}, not {list(seeds)}.')
      epoch = restored.progress['epoch']
      progress = [_Progress.from_json(values)
                  for values in restored.progress['runs']]
    elif manager.latest_step() is not None:
      raise FileExistsError(
          f'{workdir} already holds checkpoints: pass resume=True (--resume) '
          'to continue them, or another output directory.')
    elif config.monitor:
      val_loss, _ = evaluate(best_params, state.batch_stats, *validation)
      for index, seed_progress in enumerate(progress):
        seed_progress.monitor.append(monitor.record(
            0, previous_kernel[index], previous_kernel[index],
            val_loss[index]))

    bar = tqdm.trange(epoch, config.epochs, desc=name, initial=epoch,
                      total=config.epochs, disable=not config.progress,
                      unit='epoch')
    for epoch in bar:
      order, step_keys = draw(
          jax.vmap(jax.random.fold_in, in_axes=(0, None))(base_keys, epoch),
          train.images.shape[0])
      done = 0
      for stop, evaluates in record_points(config, steps_per_epoch,
                                           epoch).items():
        state, metrics = train_steps(state, *train, order, step_keys, done,
                                     stop)
        done = stop
        step = epoch * steps_per_epoch + stop
        metrics = jax.tree.map(lambda values: values.mean(1), metrics)
        records = [{'epoch': epoch + 1, 'step': step,
                    **{key: float(values[index])
                       for key, values in metrics.items()}}
                   for index in range(len(seeds))]
        if evaluates:
          params = eval_weights(state)
          val_loss, val_accuracy = evaluate(params, state.batch_stats,
                                            *validation)
          val_loss, val_accuracy = np.asarray(val_loss), np.asarray(
              val_accuracy)
          improved = np.array([
              accuracy > seed_progress.best_val_accuracy
              for accuracy, seed_progress in zip(val_accuracy, progress)])
          best_params, best_batch_stats = _where_improved(
              improved, (params, state.batch_stats),
              (best_params, best_batch_stats))
          if config.monitor:
            kernel = monitor.get_leaf(params, kernel_path)
          for index, seed_progress in enumerate(progress):
            records[index].update(val_loss=float(val_loss[index]),
                                  val_accuracy=float(val_accuracy[index]))
            if improved[index]:
              seed_progress.best_epoch, seed_progress.best_step = (
                  epoch + 1, step)
              seed_progress.best_val_accuracy = float(val_accuracy[index])
            if config.monitor:
              seed_progress.monitor.append(monitor.record(
                  epoch + 1, kernel[index], previous_kernel[index],
                  val_loss[index]))
          if config.monitor:
            previous_kernel = kernel
        for seed_progress, record in zip(progress, records):
          seed_progress.history.append(record)
      bar.set_postfix({key: f'{value:.4f}' for key, value in records[0].items()
                       if key not in ('epoch', 'step')})
      if (epoch + 1) % config.checkpoint_every == 0 or (
          epoch + 1 == config.epochs):
        manager.save(epoch + 1, args=ocp.args.Composite(
            arrays=ocp.args.StandardSave(tracked()),
            progress=ocp.args.JsonSave({
                'epoch': epoch + 1, 'seeds': list(seeds),
                'runs': [seed_progress.to_json()
                         for seed_progress in progress]})))

  test = _device_put(mesh, splits['test'])
  _, test_accuracy = evaluate(best_params, best_batch_stats, *test)
  _, final_test_accuracy = evaluate(eval_weights(state), state.batch_stats,
                                    *test)
  seconds = (time.perf_counter() - start_time) / len(seeds)
  results = []
  for index, (seed_config, seed_progress) in enumerate(zip(seed_configs,
                                                           progress)):
    result = RunResult(
        name=name, seed=seed_config.seed, history=seed_progress.history,
        best_epoch=seed_progress.best_epoch,
        best_step=seed_progress.best_step,
        best_val_accuracy=seed_progress.best_val_accuracy,
        test_accuracy=float(test_accuracy[index]),
        final_test_accuracy=float(final_test_accuracy[index]),
        seconds=seconds, monitor=seed_progress.monitor,
        state=_seed(state, index), best_params=_seed(best_params, index))
    results.append(result)
    metrics_dir = workdir if len(seeds) == 1 else (
        workdir / f'seed-{seed_config.seed}')
    metrics_dir.mkdir(exist_ok=True)
    write_metrics(result, seed_config, metrics_dir / 'metrics.json')
  return results


def write_metrics(result: RunResult, config: ml_collections.ConfigDict,
                  path: pathlib.Path) -> None:
  """Writes a run's config, per-epoch history and final numbers as JSON."""
  path.write_text(json.dumps({
      'name': result.name,
      'seed': result.seed,
      'config': json.loads(config.to_json()),
      'history': result.history,
      'best_epoch': result.best_epoch,
      'best_step': result.best_step,
      'best_val_accuracy': result.best_val_accuracy,
      'test_accuracy_of_best': result.test_accuracy,
      'final_test_accuracy': result.final_test_accuracy,
      'seconds': result.seconds,
      'monitor': monitor.to_json(result.monitor),
  }, indent=1))
