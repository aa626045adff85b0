"""Checkpoints of a run: its arrays and, per seed, its progress.

An orbax checkpoint is written every ``checkpoint_every`` epochs and at the
end. It holds the arrays a run carries from epoch to epoch
(:class:`Carried`) and, as JSON, the epoch and every seed's
:class:`Progress`. A resumed run continues bit for bit, since every random
draw comes from the seed and the epoch number; arrays are restored to the
shardings of the run that resumes them, so a run checkpointed on several
devices resumes on one and the other way round.
"""

import dataclasses
import math
import pathlib
from typing import Any, NamedTuple, Optional, Sequence

import jax
import orbax.checkpoint as ocp

from experiments import monitor


class Carried(NamedTuple):
  """The arrays a run carries from epoch to epoch, with a seed axis each.

  Attributes:
    state: The train state.
    best_params: The best weights on validation so far (as evaluated: for
      LaPerm, synchronized).
    best_batch_stats: The BatchNorm statistics that go with them.
    previous_kernel: The monitored kernels at the last evaluation (the A.3
      monitor's ranking distance is measured from them), a tuple.
  """

  state: Any
  best_params: Any
  best_batch_stats: Any
  previous_kernel: Any


@dataclasses.dataclass
class Progress:
  """What one seed's run tracks besides its arrays; all checkpointed.

  Attributes:
    history: One dict of metrics per record (see ``train.train_seeds``).
    best_epoch: The epoch of the best validation score so far (by
      ``config.best_by``).
    best_step: Its step.
    best_val_accuracy: The validation accuracy there (-1 before the first
      evaluation).
    best_val_loss: The validation loss there (None before the first
      evaluation).
    monitor: The A.3 monitor entries.
  """

  history: list[dict[str, float]] = dataclasses.field(default_factory=list)
  best_epoch: int = 0
  best_step: int = 0
  best_val_accuracy: float = -1.0
  best_val_loss: Optional[float] = None
  monitor: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  def improves(self, val_loss: float, val_accuracy: float,
               best_by: str) -> bool:
    """Whether an evaluation beats the best so far.

    Args:
      val_loss: Its validation loss.
      val_accuracy: Its validation accuracy.
      best_by: ``'val_accuracy'`` (higher is better; the paper's choice) or
        ``'val_loss'`` (lower is better; a language model's).

    Raises:
      ValueError: An unknown ``best_by``.
    """
    if best_by == 'val_accuracy':
      return val_accuracy > self.best_val_accuracy
    if best_by == 'val_loss':  # A NaN loss never improves.
      return val_loss < (math.inf if self.best_val_loss is None
                         else self.best_val_loss)
    raise ValueError(f"Unknown best_by {best_by!r}; use 'val_accuracy' or "
                     "'val_loss'.")

  def to_json(self) -> dict[str, Any]:
    return dict(dataclasses.asdict(self),
                monitor=monitor.to_json(self.monitor))

  @classmethod
  def from_json(cls, values: dict[str, Any]) -> 'Progress':
    return cls(**dict(values, monitor=monitor.from_json(values['monitor'])))


def manager(workdir: pathlib.Path) -> ocp.CheckpointManager:
  """The checkpoint manager of a run's directory; keeps the latest only."""
  return ocp.CheckpointManager(
      (workdir / 'checkpoints').absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=1))


def restore(checkpoints: ocp.CheckpointManager, like: Carried,
            seeds: Sequence[int], workdir: pathlib.Path
            ) -> Optional[tuple[Carried, int, list[Progress]]]:
  """The latest checkpoint as ``(carried, epochs done, progress)``, if any.

  Args:
    checkpoints: The run's manager.
    like: Arrays of the shapes, dtypes and shardings to restore to.
    seeds: The run's seeds; the checkpoint must hold the same.
    workdir: The run's directory, for the error message.

  Raises:
    ValueError: The checkpoint holds other seeds.
  """
  step = checkpoints.latest_step()
  if step is None:
    return None
  restored = checkpoints.restore(step, args=ocp.args.Composite(
      arrays=ocp.args.StandardRestore(
          jax.tree.map(ocp.utils.to_shape_dtype_struct, like._asdict())),
      progress=ocp.args.JsonRestore()))
  if restored.progress['seeds'] != list(seeds):
    raise ValueError(f'{workdir} holds the seeds '
                     f'{restored.progress["seeds"]}, not {list(seeds)}.')
  return (Carried(**restored.arrays), restored.progress['epoch'],
          [Progress.from_json(values) for values in restored.progress['runs']])


def save(checkpoints: ocp.CheckpointManager, epoch: int, carried: Carried,
         seeds: Sequence[int], progress: Sequence[Progress]) -> None:
  """Writes the checkpoint of ``epoch`` epochs done."""
  checkpoints.save(epoch, args=ocp.args.Composite(
      arrays=ocp.args.StandardSave(carried._asdict()),
      progress=ocp.args.JsonSave({
          'epoch': epoch, 'seeds': list(seeds),
          'runs': [seed_progress.to_json() for seed_progress in progress]})))
