"""Training and evaluation: jitted steps, checkpoints, best-weights tracking.

The training split sits on the device; per epoch one jitted call draws the
shuffled batch indices and step keys, and one jitted, state-donating call
per step gathers its batch on the device, augments it and takes the step.
(Not a ``jax.lax.scan`` over the steps: XLA's CPU backend runs the
convolutions of a loop body about ten times slower than those of a plain
jitted step; measured on Conv7.) After every
``eval_every`` epochs the model is evaluated on the validation split with
the weights its optimizer is judged by (``optimizers.eval_params``: for
LaPerm, exactly synchronized weights); the best such weights are kept and
scored on the test split at the end. An orbax checkpoint is written every
``checkpoint_every`` epochs (default 1) and at the end; a resumed run
continues bit for bit, since every random draw comes from the seed and the
epoch number.

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
from typing import Any, Callable, Optional

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
    history: One dict of metrics per epoch.
    best_epoch: The epoch of the best validation accuracy.
    best_val_accuracy: That accuracy.
    test_accuracy: Test accuracy of the best weights.
    final_test_accuracy: Test accuracy of the last epoch's weights.
    seconds: Wall time of the run, compilation included.
    monitor: The A.3 monitor entries (empty unless ``config.monitor``).
    state: The final train state.
    best_params: The best weights (as evaluated: synchronized for LaPerm).
  """

  name: str
  history: list[dict[str, float]]
  best_epoch: int
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


def initial_params(config: ml_collections.ConfigDict, key: jax.Array,
                   params: Any) -> Any:
  """The kernels' initial weights: as initialized, pruned, or shared-value.

  Args:
    config: The ``init`` section: ``kind`` is ``random`` (unchanged),
      ``prune`` (zero ``prune_rate`` of each kernel, the input layer at most
      ``first_layer_max``, Section 5.4; ``size_aware`` prunes large kernels
      more, A.5.0) or ``shared_value`` (every kernel weight 0 or ``value``,
      a fraction ``keep`` of them nonzero, Section 5.5; ``size_aware`` spreads
      ``keep`` over the kernels by size).
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
    keep = config.keep
    if config.size_aware:
      keep = jax.tree.map(lambda rate: 1.0 - rate,
                          lp.size_aware_rates(params, 1.0 - config.keep))
    return lp.shared_value(key, params, config.value, keep)
  raise ValueError(f'Unknown init kind {config.kind!r}; use random, prune or '
                   'shared_value.')


def create_train_state(config: ml_collections.ConfigDict, model: nn.Module,
                       image_shape: tuple[int, ...],
                       steps_per_epoch: int) -> TrainState:
  """Initializes the model, its initial weights and the optimizer."""
  init_key, weights_key = jax.random.split(jax.random.key(config.seed))
  # Jitted: eager initialization compiles every op on its own, which costs
  # seconds on CPU.
  variables = jax.jit(model.init)(init_key, jnp.zeros((1, *image_shape)))
  params = initial_params(config.init, weights_key, variables['params'])
  tx = optimizers.create(config.optimizer, steps_per_epoch)
  state = TrainState.create(
      apply_fn=model.apply,
      params=optimizers.wrap_params(config.optimizer, params), tx=tx,
      batch_stats=variables.get('batch_stats', {}))
  # An int32 array from the start, as a restored checkpoint holds it.
  return state.replace(step=jnp.zeros([], jnp.int32))


def make_train_epoch(config: ml_collections.ConfigDict, model: nn.Module,
                     steps_per_epoch: int,
                     mesh: Optional[jax.sharding.Mesh] = None
                     ) -> Callable[..., Any]:
  """The ``(state, images, labels, key) -> (state, metrics)`` epoch.

  With a ``mesh``, each batch is sharded along the mesh's ``'batch'`` axis
  and the returned state and metrics are replicated.
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

  @functools.partial(jax.jit, static_argnums=1)
  def draw(key, count):
    order_key, steps_key = jax.random.split(key)
    order = jax.random.permutation(order_key, count)
    order = order[:steps_per_epoch * config.batch_size].reshape(
        steps_per_epoch, config.batch_size)
    return order, jax.random.split(steps_key, steps_per_epoch)

  def step(state, images, labels, order, step_keys, index):
    batch_images, batch_labels = _shard_batch(
        mesh, (images[order[index]], labels[order[index]]))
    return train_step(state, batch_images, batch_labels, step_keys[index])

  # Not donated: the best weights kept between epochs may share the
  # state's buffers.
  step = jax.jit(step) if mesh is None else jax.jit(
      step, out_shardings=_replicated(mesh))

  def train_epoch(state, images, labels, key):
    order, step_keys = draw(key, images.shape[0])
    metrics = []
    for index in range(steps_per_epoch):
      state, step_metrics = step(state, images, labels, order, step_keys,
                                 index)
      metrics.append(step_metrics)
    return state, jax.tree.map(lambda *values: jnp.mean(jnp.stack(values)),
                               *metrics)

  return train_epoch


def make_evaluate(model: nn.Module, batch_size: int,
                  mesh: Optional[jax.sharding.Mesh] = None
                  ) -> Callable[..., Any]:
  """The jitted ``(params, batch_stats, images, labels) -> (loss, accuracy)``.

  Batches are scanned over on device; the last one is padded and the
  padding weighted out. With a ``mesh``, batches are sharded along its
  ``'batch'`` axis (their size rounded up to a multiple of its devices).
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

  if mesh is None:
    return jax.jit(evaluate)
  return jax.jit(evaluate, out_shardings=_replicated(mesh))


@dataclasses.dataclass
class _Progress:
  """What a run tracks besides the train state; all of it is checkpointed."""

  epoch: int
  history: list[dict[str, float]]
  best_epoch: int
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
  """Trains one run, evaluates and checkpoints it, writes its metrics.

  Args:
    config: The run's config (see ``experiments/configs/base.py``; its
      ``devices`` field asks for data parallelism over that many local
      devices, 0 for all).
    splits: Normalized ``train``, ``validation`` and ``test`` splits.
    num_classes: Classes of the dataset.
    workdir: Where the run writes ``checkpoints/`` and ``metrics.json``.
    name: The run's name, shown on the progress bar.
    resume: Continue from the latest checkpoint in ``workdir`` if any.

  Returns:
    The :class:`RunResult`.
  """
  start = time.perf_counter()
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
  state = create_train_state(config, model, splits['train'].images.shape[1:],
                             steps_per_epoch)
  if mesh is not None:
    state = _device_put(mesh, state)
  train_epoch = make_train_epoch(config, model, steps_per_epoch, mesh)
  evaluate = make_evaluate(model, config.eval_batch_size, mesh)

  eval_params = jax.jit(optimizers.eval_params) if mesh is None else jax.jit(
      optimizers.eval_params, out_shardings=_replicated(mesh))

  def eval_weights(state):
    return eval_params(state.params, state.opt_state)

  kernel_path = monitor.first_kernel_path(eval_weights(state))
  best_params, best_batch_stats = eval_weights(state), state.batch_stats
  previous_kernel = monitor.get_leaf(best_params, kernel_path)
  progress = _Progress(epoch=0, history=[], best_epoch=0,
                       best_val_accuracy=-1.0, monitor=[])

  def tracked():
    return {'state': state, 'best_params': best_params,
            'best_batch_stats': best_batch_stats,
            'previous_kernel': previous_kernel}

  base_key = jax.random.fold_in(jax.random.key(config.seed), 1)
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
      progress = _Progress.from_json(restored.progress)
    elif manager.latest_step() is not None:
      raise FileExistsError(
          f'{workdir} already holds checkpoints: pass resume=True (--resume) '
          'to continue them, or another output directory.')
    elif config.monitor:
      val_loss, _ = evaluate(best_params, state.batch_stats, *validation)
      progress.monitor.append(monitor.record(0, previous_kernel,
                                             previous_kernel, val_loss))

    bar = tqdm.trange(progress.epoch, config.epochs, desc=name,
                      initial=progress.epoch, total=config.epochs,
                      disable=not config.progress, unit='epoch')
    for epoch in bar:
      state, metrics = train_epoch(state, *train,
                                   jax.random.fold_in(base_key, epoch))
      record = {'epoch': epoch + 1,
                **{key: float(value) for key, value in metrics.items()}}
      if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
        params = eval_weights(state)
        val_loss, val_accuracy = evaluate(params, state.batch_stats,
                                          *validation)
        record.update(val_loss=float(val_loss),
                      val_accuracy=float(val_accuracy))
        if record['val_accuracy'] > progress.best_val_accuracy:
          progress.best_epoch = epoch + 1
          progress.best_val_accuracy = record['val_accuracy']
          best_params, best_batch_stats = params, state.batch_stats
        if config.monitor:
          kernel = monitor.get_leaf(params, kernel_path)
          progress.monitor.append(monitor.record(epoch + 1, kernel,
                                                 previous_kernel, val_loss))
          previous_kernel = kernel
      progress.history.append(record)
      progress.epoch = epoch + 1
      bar.set_postfix({key: f'{value:.4f}' for key, value in record.items()
                       if key != 'epoch'})
      if (epoch + 1) % config.checkpoint_every == 0 or (
          epoch + 1 == config.epochs):
        manager.save(epoch + 1, args=ocp.args.Composite(
            arrays=ocp.args.StandardSave(tracked()),
            progress=ocp.args.JsonSave(progress.to_json())))

  test = _device_put(mesh, splits['test'])
  _, test_accuracy = evaluate(best_params, best_batch_stats, *test)
  _, final_test_accuracy = evaluate(eval_weights(state), state.batch_stats,
                                    *test)
  result = RunResult(
      name=name, history=progress.history, best_epoch=progress.best_epoch,
      best_val_accuracy=progress.best_val_accuracy,
      test_accuracy=float(test_accuracy),
      final_test_accuracy=float(final_test_accuracy),
      seconds=time.perf_counter() - start, monitor=progress.monitor,
      state=state, best_params=best_params)
  write_metrics(result, config, workdir / 'metrics.json')
  return result


def write_metrics(result: RunResult, config: ml_collections.ConfigDict,
                  path: pathlib.Path) -> None:
  """Writes a run's config, per-epoch history and final numbers as JSON."""
  path.write_text(json.dumps({
      'name': result.name,
      'config': json.loads(config.to_json()),
      'history': result.history,
      'best_epoch': result.best_epoch,
      'best_val_accuracy': result.best_val_accuracy,
      'test_accuracy_of_best': result.test_accuracy,
      'final_test_accuracy': result.final_test_accuracy,
      'seconds': result.seconds,
      'monitor': monitor.to_json(result.monitor),
  }, indent=1))
