"""The jitted functions a run calls, over a leading axis of seeds.

Every array a run keeps per seed (train state, best weights) has a leading
seed axis. With ``together`` (the presets of small dense nets) all seeds
train in one jitted call; otherwise the axis holds exactly one seed, which
the functions see without it, so the program is that of a plain
single-seed step (see :func:`over_seeds`).

The training split sits on the device. Per epoch, :func:`make_draw`'s call
draws the shuffled batch indices and a key per step; :func:`make_train`'s
calls then gather each batch on the device, augment it and take the step,
one step per call or, with ``steps_per_call > 1``, a loop of up to that many
steps per call (fewer dispatches: faster for small dense nets; XLA's CPU
backend runs the convolutions of a loop body much slower, so conv presets
keep one step per call).
"""

from typing import Any, Callable, Optional, Sequence

from flax import linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import augment
from experiments import models
from experiments import optimizers
from experiments import parallel
from experiments import state as state_lib


def stack_seeds(trees: Sequence[Any]) -> Any:
  """One tree per seed stacked into one tree with a leading seed axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def take_seed(tree: Any, index: int) -> Any:
  """Seed ``index`` of a tree with a leading seed axis."""
  return jax.tree.map(lambda leaf: leaf[index], tree)


def over_seeds(fn: Callable[..., Any], in_axes: tuple[Optional[int], ...],
               together: bool) -> Callable[..., Any]:
  """``fn`` mapped over a leading seed axis of the arguments marked 0.

  ``together``: every seed in one call, a ``lax.map`` over the seeds of the
  unbatched ``fn``. Not ``jax.vmap``: XLA's CPU backend rounds a batched
  dot differently depending on the batch size and the position in it, so a
  vmapped seed's results would depend on its company (and on CPU the
  ``lax.map`` step of F1 and F2 ran faster than the vmapped one).
  Otherwise the seed axis holds one seed, which ``fn`` sees without it: the
  program of a plain single-seed step.
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
    args = [arg if axis is None else take_seed(arg, 0)
            for arg, axis in zip(args, in_axes)]
    return jax.tree.map(lambda leaf: leaf[None], fn(*args))

  return one_seed


def l2_penalty(params: Any) -> jax.Array:
  """Keras' L2: the sum of squared kernel weights, output layer excluded."""
  hidden = jax.tree.leaves(models.hidden_kernel_mask(params))
  return sum(jnp.sum(jnp.square(leaf))
             for leaf, is_hidden in zip(jax.tree.leaves(params), hidden)
             if is_hidden)


def make_train_step(config: ml_collections.ConfigDict, model: nn.Module
                    ) -> Callable[..., Any]:
  """``(state, images, labels, key) -> (state, metrics)``: one step, one seed.

  Augments the batch (if the config asks), applies dropout, and adds the L2
  penalty of the hidden kernels to the cross-entropy.
  """
  augment_config = config.augment if augment.is_enabled(
      config.augment) else None

  def train_step(state, images, labels, key):
    augment_key, dropout_key = jax.random.split(key)
    if augment_config is not None:
      images = augment.augment_batch(augment_key, images, augment_config)

    def loss_fn(params):
      logits, updates = model.apply(
          state_lib.variables(params, state.batch_stats), images, train=True,
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

  return train_step


def make_draw(config: ml_collections.ConfigDict, steps_per_epoch: int
              ) -> Callable[..., Any]:
  """The jitted ``(epoch_keys, count) -> (order, step_keys)``.

  Per seed (a key each), the epoch's batches as indices into the ``count``
  training examples, ``(steps_per_epoch, batch_size)``, and a key per step.
  """
  def draw_one(key, count):
    order_key, steps_key = jax.random.split(key)
    order = jax.random.permutation(order_key, count)
    order = order[:steps_per_epoch * config.batch_size].reshape(
        steps_per_epoch, config.batch_size)
    return order, jax.random.split(steps_key, steps_per_epoch)

  return jax.jit(jax.vmap(draw_one, in_axes=(0, None)), static_argnums=1)


def make_train_call(config: ml_collections.ConfigDict, model: nn.Module,
                    mesh: parallel.Mesh = None, together: bool = False
                    ) -> Callable[..., Any]:
  """The jitted program that one call of :func:`make_train`'s ``train`` runs.

  With ``steps_per_call > 1``, ``block(state, images, labels, order,
  step_keys, start, count) -> (state, metrics)``: a loop of ``count`` <=
  ``steps_per_call`` steps from step ``start``, one program for every count,
  metrics in buffers of ``steps_per_call`` columns. Otherwise
  ``seeded_step(state, images, labels, order, step_keys, index)``: step
  ``index``. Both gather their batches from the training split on the
  device; ``state`` and the metrics have a leading seed axis.

  Args:
    config: The run's config.
    model: The Flax module.
    mesh: The data-parallel mesh, or None.
    together: Whether all seeds train in one step (see :func:`over_seeds`).
  """
  train_step = make_train_step(config, model)

  def one_step(state, images, labels, order, step_keys, index):
    batch_images, batch_labels = parallel.shard_batch(
        mesh, (images[order[index]], labels[order[index]]))
    return train_step(state, batch_images, batch_labels, step_keys[index])

  seeded_step = over_seeds(one_step, (0, None, None, 0, 0, None), together)
  # Not donated: the best weights kept between evaluations may share the
  # state's buffers.
  if config.steps_per_call == 1:
    return parallel.jit(seeded_step, mesh)

  def block(state, images, labels, order, step_keys, start, count):
    # One program for every segment length, so segments cut short by
    # evaluations need no single steps.
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

  return parallel.jit(block, mesh)


def make_train(config: ml_collections.ConfigDict, model: nn.Module,
               mesh: parallel.Mesh = None, together: bool = False
               ) -> Callable[..., Any]:
  """``(state, images, labels, order, step_keys, start, stop) -> (state, metrics)``.

  Takes steps ``start`` to ``stop`` of the epoch drawn by :func:`make_draw`
  for a stack of seeds, in calls of :func:`make_train_call`'s program;
  metrics come back as NumPy arrays of shape ``(seeds, stop - start)``.

  Args:
    config: The run's config.
    model: The Flax module.
    mesh: The data-parallel mesh, or None.
    together: Whether all seeds train in one step (see :func:`over_seeds`).
  """
  call = make_train_call(config, model, mesh, together)

  def train(state, images, labels, order, step_keys, start, stop):
    metrics, counts = [], []
    for index in range(start, stop, config.steps_per_call):
      count = min(config.steps_per_call, stop - index)
      if config.steps_per_call > 1:
        state, call_metrics = call(state, images, labels, order, step_keys,
                                   index, count)
      else:
        state, call_metrics = call(state, images, labels, order, step_keys,
                                   index)
      metrics.append(call_metrics)
      counts.append(count)
    # On the host: eager ops on the device would compile anew for every
    # segment length.
    metrics = jax.device_get(metrics)
    return state, jax.tree.map(
        lambda *values: np.concatenate(
            [value.reshape(len(value), -1)[:, :count]
             for value, count in zip(values, counts)], 1),
        *metrics)

  return train


def make_evaluate(model: nn.Module, batch_size: int,
                  mesh: parallel.Mesh = None,
                  together: bool = False) -> Callable[..., Any]:
  """The jitted ``(params, batch_stats, images, labels) -> (loss, accuracy)``.

  ``params`` and ``batch_stats`` hold a leading seed axis; loss and accuracy
  are per seed, and per label: labels of shape ``(n, length)`` (a language
  model's next tokens) count each token once. Batches are scanned over on
  device; the last one is padded and the padding weighted out. With a ``mesh``, batches are sharded along
  its ``'batch'`` axis (their size rounded up to a multiple of its devices).
  """
  def evaluate(params, batch_stats, images, labels):
    count = images.shape[0]
    size = min(batch_size, count)
    if mesh is not None:
      size = -(-size // mesh.size) * mesh.size
    padding = -count % size
    weights = (jnp.arange(count + padding) < count).astype(jnp.float32)
    images = jnp.pad(images, [(0, padding)] + [(0, 0)] * (images.ndim - 1))
    labels = jnp.pad(labels, [(0, padding)] + [(0, 0)] * (labels.ndim - 1))
    batches = jax.tree.map(lambda x: x.reshape(-1, size, *x.shape[1:]),
                           (images, labels, weights))

    def body(totals, batch):
      x, y, w = parallel.shard_batch(mesh, batch)
      logits = model.apply(state_lib.variables(params, batch_stats), x,
                           train=False)
      # Per example: its label's loss, or the mean over a sequence's labels.
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
      loss, correct = (value.reshape(value.shape[0], -1).mean(1)
                       for value in (loss, correct))
      return (totals[0] + jnp.sum(loss * w),
              totals[1] + jnp.sum(correct * w)), None

    (loss, correct), _ = lax.scan(body, (jnp.zeros([]), jnp.zeros([])),
                                  batches)
    return loss / count, correct / count

  return parallel.jit(over_seeds(evaluate, (0, 0, None, None), together),
                      mesh)


def make_eval_weights(mesh: parallel.Mesh = None, together: bool = False
                      ) -> Callable[[state_lib.TrainState], Any]:
  """``state -> params``: per seed, the weights its optimizer is judged by.

  For LaPerm, exactly synchronized weights (``optimizers.eval_params``)
  under the layout its state carries.
  """
  eval_params = parallel.jit(
      over_seeds(optimizers.eval_params, (0, 0), together), mesh)

  def eval_weights(state):
    return eval_params(state.params, state.opt_state)

  return eval_weights


@jax.jit
def where_improved(improved: jax.Array, new: Any, old: Any) -> Any:
  """Per seed, ``new`` where ``improved`` else ``old``."""
  return jax.tree.map(
      lambda n, o: jnp.where(improved.reshape((-1,) + (1,) * (n.ndim - 1)),
                             n, o), new, old)
