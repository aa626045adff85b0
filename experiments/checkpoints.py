"""Checkpoints of a run: its arrays, per seed its progress, and their digests.

An orbax checkpoint is written every ``checkpoint_every`` epochs and at the
end; the latest two are kept. It holds the arrays a run carries from epoch
to epoch (:class:`Carried`); as JSON, the epoch, every seed's
:class:`Progress` and the run's whole config; and a SHA-256 digest of every
array (its shape, dtype and bytes, per leaf) and of that JSON record. A
resumed run continues bit for bit, since every random draw comes from the
seed and the epoch number; arrays are restored to the shardings of the run
that resumes them, so a run checkpointed on several devices resumes on one
and the other way round.

What a resume refuses (:class:`CheckpointError`, one line):

- A damaged checkpoint: a file that cannot be read (truncated, missing,
  not JSON) or an array or record that does not match its digest. The
  message names the step and the file or leaf, and the earlier checkpoint
  that is intact, if any. Nothing falls back by itself: the damaged step is
  removed by hand, and ``--resume`` then continues from the intact one.
  Damaged weights are never trained on.
- Other settings: every key of the config that differs from the
  checkpoint's is listed with both values. Exempt are the keys of
  :data:`UNCHECKED_SETTINGS`, which change neither the arrays nor the
  results: ``devices`` (arrays are restored to any device count; results
  equal up to the reduction order, as across device counts in any run),
  ``checkpoint_every`` (when to save) and ``progress`` (the progress bar).
  ``epochs`` may change to any count not below the epochs done: the run is
  then extended (or ended early); the final epoch's evaluation falls where
  the new count puts it.
- Other seeds.

A resume that changes any setting is recorded (:func:`resume_record`):
``metrics.json`` lists it under ``resumed`` with the epoch and each changed
key's checkpoint and given values, so the config it records is never
mistaken for the settings of the whole run.
"""

import dataclasses
import hashlib
import json
import math
import pathlib
from typing import Any, NamedTuple, Optional, Sequence

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from experiments import monitor

# Config keys a resume may change: they change neither arrays nor results.
UNCHECKED_SETTINGS = ('checkpoint_every', 'devices', 'progress')


class CheckpointError(ValueError):
  """A checkpoint that cannot be resumed: damaged, or of other settings."""


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


class Restored(NamedTuple):
  """A verified checkpoint, as :func:`restore` gives it.

  Attributes:
    carried: The arrays.
    epochs_done: The epochs trained.
    progress: Per seed, its progress.
    resumed: Every resume that changed a setting (:func:`resume_record`),
      this one last if it does; to save with the next checkpoints.
  """

  carried: Carried
  epochs_done: int
  progress: list[Progress]
  resumed: list[dict[str, Any]]


def check_resumable(out: pathlib.Path, runs: Sequence[str]) -> None:
  """Raises unless ``out`` holds a checkpoint of one of ``runs``.

  ``out`` must be the directory a preset wrote: its runs' checkpoints are
  ``OUT/RUN/checkpoints`` or, per seed, ``OUT/RUN/seed-S/checkpoints``.
  Checkpoints nested deeper belong to another output directory and are
  never resumed; the error says where they lie.

  Raises:
    CheckpointError: None of ``runs`` has a checkpoint in ``out``.
  """
  if any(_holds_checkpoints(out / run) for run in runs):
    return
  elsewhere = sorted(path.parent for path in out.glob('**/checkpoints')
                     if path.is_dir() and any(path.iterdir()))
  hint = ''
  if elsewhere:
    run_dir = elsewhere[0]
    if _is_seed_folder(run_dir):
      run_dir = run_dir.parent
    hint = (f' (checkpoints lie in {elsewhere[0]}: --out must be the '
            f'directory that holds the run folders, e.g. {run_dir.parent})')
  raise CheckpointError(f'{out} holds no checkpoint to continue of the runs '
                        f'{", ".join(runs)}{hint}')


def _holds_checkpoints(run_dir: pathlib.Path) -> bool:
  """Whether ``run_dir/checkpoints`` or a ``run_dir/seed-S/checkpoints``
  holds a checkpoint."""
  folders = [run_dir] + [folder for folder in run_dir.glob('seed-*')
                         if _is_seed_folder(folder)]
  return any((folder / 'checkpoints').is_dir() and
             any((folder / 'checkpoints').iterdir()) for folder in folders)


def _is_seed_folder(folder: pathlib.Path) -> bool:
  """Whether ``folder`` is a run's ``seed-S`` folder."""
  return (folder.name.startswith('seed-') and
          folder.name[len('seed-'):].isdigit())


def manager(workdir: pathlib.Path) -> ocp.CheckpointManager:
  """The checkpoint manager of a run's directory; keeps the latest two.

  The one before the latest is what a run falls back to when the latest is
  damaged.
  """
  return ocp.CheckpointManager(
      (workdir / 'checkpoints').absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=2))


def save(checkpoints: ocp.CheckpointManager, epoch: int, carried: Carried,
         seeds: Sequence[int], progress: Sequence[Progress],
         config: ml_collections.ConfigDict,
         resumed: Sequence[dict[str, Any]] = ()) -> None:
  """Writes the checkpoint of ``epoch`` epochs done, with its digests.

  Args:
    checkpoints: The run's manager.
    epoch: The epochs done.
    carried: The arrays.
    seeds: The run's seeds.
    progress: Per seed, its progress.
    config: The run's config, recorded whole.
    resumed: The resumes that changed settings so far.
  """
  record = {'epoch': epoch, 'seeds': list(seeds),
            'runs': [seed_progress.to_json() for seed_progress in progress],
            'config': json.loads(config.to_json()), 'resumed': list(resumed)}
  checkpoints.save(epoch, args=ocp.args.Composite(
      arrays=ocp.args.StandardSave(carried._asdict()),
      progress=ocp.args.JsonSave(record),
      digests=ocp.args.JsonSave({
          'arrays': array_digests(carried._asdict()),
          'progress': _record_digest(record)})))


def restore(checkpoints: ocp.CheckpointManager, like: Carried,
            seeds: Sequence[int], config: ml_collections.ConfigDict,
            workdir: pathlib.Path) -> Optional[Restored]:
  """The latest checkpoint, verified against its digests and the settings.

  Args:
    checkpoints: The run's manager.
    like: Arrays of the shapes, dtypes and shardings to restore to.
    seeds: The run's seeds; the checkpoint must hold the same.
    config: The run's config; see the module's docstring for what may
      differ from the checkpoint's.
    workdir: The run's directory, for the messages.

  Returns:
    The restored checkpoint, or None if there is none.

  Raises:
    CheckpointError: The checkpoint is damaged (naming the step, the file or
      leaf, and an earlier intact checkpoint), holds other seeds, or was
      written with other settings (listing each).
  """
  step = checkpoints.latest_step()
  if step is None:
    return None
  try:
    record, digests = _read_record(checkpoints, step, workdir)
  except CheckpointError as error:
    raise CheckpointError(
        f'{error}. {_fallback(checkpoints, step, like, workdir)}') from error
  if record['seeds'] != list(seeds):
    raise CheckpointError(f'{workdir} holds the seeds {record["seeds"]}, '
                          f'not {list(seeds)}.')
  changed = setting_changes(record['config'], config, record['epoch'],
                            f'{workdir} (checkpoint {step})')
  try:
    arrays = _read_arrays(checkpoints, step, like, digests, workdir)
  except CheckpointError as error:
    raise CheckpointError(
        f'{error}. {_fallback(checkpoints, step, like, workdir)}') from error
  resumed = list(record['resumed'])
  if changed:
    resumed.append(resume_record(record['epoch'], changed))
  return Restored(Carried(**arrays), record['epoch'],
                  [Progress.from_json(values) for values in record['runs']],
                  resumed)


def setting_changes(saved: dict[str, Any], config: ml_collections.ConfigDict,
                    epochs_done: int, where: str
                    ) -> dict[str, tuple[Any, Any]]:
  """The settings a resume changes, if it may change them.

  Args:
    saved: The checkpoint's config, as JSON.
    config: The config of the run that resumes.
    epochs_done: The checkpoint's epochs.
    where: The checkpoint, for the message.

  Returns:
    ``{flattened key: (checkpoint value, given value)}`` of the keys that
    differ, all in :data:`UNCHECKED_SETTINGS` or ``epochs``.

  Raises:
    CheckpointError: Any other key differs, or ``epochs`` is below the
      epochs done; listing every such key with both values.
  """
  checkpoint, given = _flatten(saved), _flatten(json.loads(config.to_json()))
  missing = '(absent)'
  changed = {key: (checkpoint.get(key, missing), given.get(key, missing))
             for key in sorted(checkpoint.keys() | given.keys())
             if checkpoint.get(key, missing) != given.get(key, missing)}
  refused = {key: values for key, values in changed.items()
             if key not in UNCHECKED_SETTINGS and not (
                 key == 'epochs' and values[1] >= epochs_done)}
  if refused:
    listed = '; '.join(
        f'{key}: checkpoint {old!r}, given {new!r}' + (
            f' (below the {epochs_done} epochs done)' if key == 'epochs'
            else '') for key, (old, new) in refused.items())
    raise CheckpointError(
        f'--resume: the settings differ from those {where} was written with: '
        f'{listed}. Resume with the same settings, or train in another '
        'output directory.')
  return changed


def resume_record(epoch: int, changed: dict[str, tuple[Any, Any]]
                  ) -> dict[str, Any]:
  """What ``metrics.json`` lists under ``resumed`` for a resume at ``epoch``."""
  return {'epoch': epoch, 'changed': {
      key: {'checkpoint': old, 'given': new}
      for key, (old, new) in changed.items()}}


def array_digests(tree: Any) -> dict[str, str]:
  """The SHA-256 of every leaf of ``tree``: its shape, dtype and bytes.

  Args:
    tree: Arrays; global arrays of several processes are read whole (a
      replicated one from this process's copy, others gathered: every
      process must call this).

  Returns:
    ``{leaf path ('state/params/head/kernel'): hex digest}``.
  """
  digests = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    value = np.ascontiguousarray(_host_value(leaf))
    digest = hashlib.sha256(f'{value.shape} {value.dtype}\n'.encode())
    digest.update(value.tobytes())
    digests[jax.tree_util.keystr(path, simple=True, separator='/')] = (
        digest.hexdigest())
  return digests


def _host_value(leaf: Any) -> np.ndarray:
  """The whole of ``leaf`` in this process's memory."""
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    if leaf.sharding.is_fully_replicated:
      return np.asarray(leaf.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
  return np.asarray(leaf)


def _record_digest(record: dict[str, Any]) -> str:
  return hashlib.sha256(
      json.dumps(record, sort_keys=True).encode()).hexdigest()


def _flatten(values: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """A nested JSON dict as ``{'optimizer.learning_rate': value}``."""
  flat = {}
  for key, value in values.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[prefix + key] = value
  return flat


def _read_record(checkpoints: ocp.CheckpointManager, step: int,
                 workdir: pathlib.Path
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
  """The JSON record of checkpoint ``step`` and its digests, verified.

  Raises:
    CheckpointError: Either cannot be read, or they do not match.
  """
  directory = workdir / 'checkpoints' / str(step)
  record, digests = (_read_json(checkpoints, step, item, directory)
                     for item in ('progress', 'digests'))
  if _record_digest(record) != digests.get('progress'):
    raise CheckpointError(
        f'checkpoint {step} is damaged: {directory}/progress/metadata does '
        f'not match its SHA-256 digest in {directory}/digests/metadata (one '
        'of the two files is damaged)')
  return record, digests


def _read_json(checkpoints: ocp.CheckpointManager, step: int, item: str,
               directory: pathlib.Path) -> dict[str, Any]:
  """The JSON item ``item`` of checkpoint ``step``."""
  if not (directory / item).is_dir():
    raise CheckpointError(
        f'checkpoint {step} is damaged: it has no {directory}/{item} (a '
        'checkpoint written before they held digests and settings cannot be '
        'verified either)')
  try:
    return checkpoints.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.JsonRestore()}))[item]
  except Exception as error:  # pylint: disable=broad-except
    # Orbax raises OSError, ValueError (JSONDecodeError), KeyError (a
    # missing item) and more for files cut short, missing or garbled.
    raise CheckpointError(f'checkpoint {step} is damaged: {directory}/{item} '
                          f'cannot be read ({_first_line(error)})') from error


def _read_arrays(checkpoints: ocp.CheckpointManager, step: int, like: Carried,
                 digests: dict[str, Any], workdir: pathlib.Path
                 ) -> dict[str, Any]:
  """The arrays of checkpoint ``step``, verified against ``digests``.

  Raises:
    CheckpointError: They cannot be read, or a leaf does not match its
      digest (naming the first such leaf).
  """
  directory = workdir / 'checkpoints' / str(step) / 'arrays'
  try:
    arrays = checkpoints.restore(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(jax.tree.map(
            ocp.utils.to_shape_dtype_struct, like._asdict())))).arrays
  except Exception as error:  # pylint: disable=broad-except
    # TensorStore's errors: ValueError (DATA_LOSS, a garbled manifest), a
    # bare Exception for an array file cut short, JSONDecodeError.
    raise CheckpointError(f'checkpoint {step} is damaged: {directory} cannot '
                          f'be read ({_first_line(error)})') from error
  restored, recorded = array_digests(arrays), digests.get('arrays', {})
  for leaf in sorted(restored.keys() | recorded.keys()):
    if restored.get(leaf) != recorded.get(leaf):
      raise CheckpointError(
          f'checkpoint {step} is damaged: the leaf {leaf} of {directory} '
          f'does not match its SHA-256 digest in {directory.parent}/digests/'
          'metadata (one of the two files is damaged)')
  return arrays


def _fallback(checkpoints: ocp.CheckpointManager, damaged: int, like: Carried,
              workdir: pathlib.Path) -> str:
  """Which earlier checkpoint a resume can fall back to, as advice."""
  for step in sorted(checkpoints.all_steps(), reverse=True):
    if step >= damaged:
      continue
    try:
      _, digests = _read_record(checkpoints, step, workdir)
      _read_arrays(checkpoints, step, like, digests, workdir)
    except CheckpointError:
      continue
    return (f'Checkpoint {step} is intact: remove {workdir / "checkpoints"}/'
            f'{damaged} and --resume again to continue from epoch {step}.')
  return (f'No earlier checkpoint in {workdir / "checkpoints"} is intact: '
          'train again in another output directory.')


def _first_line(error: Exception) -> str:
  """An exception as one short line (TensorStore's run to many)."""
  lines = str(error).strip().splitlines() or ['']
  line = lines[0].split(' See full TensorStore details')[0].rstrip('.')
  line = line if len(line) <= 300 else line[:297] + '...'
  return f'{type(error).__name__}: {line}'
