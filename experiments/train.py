"""The run driver: train seeds, evaluate, keep the best weights, checkpoint.

A preset: :func:`prepare_data` gets its runs' datasets ready, then
:func:`train_preset` trains the runs and writes the table, summary and
figures. A run (:func:`train_seeds`; :func:`train_and_evaluate` for one
seed) reads top to bottom: set the run up (``state.initial_run``), restore
its checkpoint or start, train epoch by epoch (each epoch a few segments of
steps, an evaluation after those that :func:`record_points` marks), save,
and score the best weights on the test split. The pieces live in their own
modules: the jitted functions in ``steps``, the train state in ``state``,
checkpoints in ``checkpoints``, results in ``report``, devices in
``parallel``.

Seeds: with ``config.seeds_in_one_step`` (small dense nets) the seeds of a
run train together, one jitted call for all; a seed's results equal those
of the same seed trained alone, bit for bit. Otherwise this module trains
them one after another, each in its own ``seed-S`` directory.

Evaluation: every ``eval_every`` epochs, or every ``eval_every_steps``
steps counted from the start (equal to LaPerm's sync period: right after
every sync), on the validation split, with the weights the optimizer is
judged by (``optimizers.eval_params``: for LaPerm, exactly synchronized
weights). The best such weights are kept, per seed, and scored on the test
split at the end. Test data never picks weights.
"""

import dataclasses
import pathlib
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from experiments import checkpoints
from experiments import configs
from experiments import data
from experiments import download as download_lib
from experiments import models
from experiments import monitor
from experiments import parallel
from experiments import report
from experiments import state as state_lib
from experiments import steps


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


@dataclasses.dataclass(frozen=True)
class _Run:
  """What a run holds fixed from start to end: data, model and programs."""

  config: ml_collections.ConfigDict
  seed_configs: list[ml_collections.ConfigDict]
  name: str
  workdir: pathlib.Path
  mesh: parallel.Mesh
  splits: dict[str, data.Split]
  train_split: Any
  validation: Any
  steps_per_epoch: int
  draw: Callable[..., Any]
  train: Callable[..., Any]
  evaluate: Callable[..., Any]
  eval_weights: Callable[..., Any]
  base_keys: jax.Array

  @property
  def seeds(self) -> list[int]:
    return [seed_config.seed for seed_config in self.seed_configs]


def train_preset(preset: str, description: str,
                 run_configs: dict[str, ml_collections.ConfigDict], *,
                 seeds: dict[str, Sequence[int]],
                 meshes: dict[str, parallel.Mesh], out: pathlib.Path,
                 resume: bool = False) -> list[list[report.RunResult]]:
  """Trains a preset's runs; prints the table, writes summary and figures.

  Args:
    preset: The preset's name, for the output.
    description: What the preset shows, printed first.
    run_configs: Run name -> its config, with its data prepared
      (:func:`prepare_data`).
    seeds: Run name -> its seeds.
    meshes: Run name -> its devices (``parallel.make_mesh(config.devices,
      config.batch_size)``).
    out: The output directory: one folder per run, ``summary.json`` and the
      figures.
    resume: Continue from the runs' latest checkpoints.

  Returns:
    Per run, one result per seed.
  """
  out.mkdir(parents=True, exist_ok=True)
  say = print if parallel.is_writer() else lambda *_: None
  say(f'{preset}: {description}\noutput: {out}')
  loaded = {}
  results = []
  for name, config in run_configs.items():
    source = data.split_source(config)
    if source not in loaded:
      loaded[source] = data.load_splits(config)
    splits, num_classes, image_shape = loaded[source]
    say(f'{name}: {config.model.name} with {config.optimizer.name} on '
        f'{config.dataset} {image_shape}, {len(splits["train"].labels)} '
        f'train / {len(splits["validation"].labels)} validation / '
        f'{len(splits["test"].labels)} test, {config.epochs} epochs'
        f'{parallel.describe(meshes[name])}')
    results.append(train_seeds(config, seeds[name], splits, num_classes,
                               out / name, mesh=meshes[name], name=name,
                               resume=resume))
  if parallel.is_writer():
    print(report.table(
        results, [config.optimizer.name for config in run_configs.values()],
        bits_per_byte=all(data.is_text(config.dataset)
                          for config in run_configs.values())))
    report.write_summary(results, preset, out / 'summary.json')
    for path in report.write_figures(results, out):
      print(f'figure: {path}')
  return results


def prepare_data(run_configs: dict[str, ml_collections.ConfigDict], *,
                 download: Optional[bool] = None, scale_validation: bool = True
                 ) -> list[str]:
  """Gets each run's dataset ready and fits its validation split to it.

  Args:
    run_configs: Run name -> its config; validation sizes that do not fit
      are updated in place (:func:`experiments.configs.fit_validation`).
    download: Whether to download a TFDS dataset that is not prepared
      (:func:`experiments.download.prepare`; None: if its host answers).
    scale_validation: Whether a validation split that does not fit the
      dataset is scaled to it; else it is an error.

  Returns:
    One line per change of a validation split, to print.

  Raises:
    DataUnavailableError: A dataset is not on this machine.
    ValidationSizeError: ``scale_validation`` is off and a split does not
      fit.
  """
  sizes, notes = {}, {}
  for config in run_configs.values():
    source = (config.dataset, config.data_dir or None)
    if source not in sizes:
      download_lib.prepare(config.dataset, data_dir=source[1],
                           download=download)
      sizes[source] = data.train_size(config.dataset, data_dir=source[1])
    note = configs.fit_validation(config, sizes[source],
                                  scale=scale_validation)
    if note:
      notes[note] = None
  return list(notes)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       splits: dict[str, data.Split], num_classes: int,
                       workdir: pathlib.Path, *, name: str = 'run',
                       resume: bool = False) -> report.RunResult:
  """Trains the run of ``config.seed`` on the devices ``config.devices`` names.

  See :func:`train_seeds` for the arguments.
  """
  mesh = parallel.make_mesh(config.devices, config.batch_size)
  return _train_together(config, (config.seed,), splits, num_classes,
                         workdir, mesh, name, resume)[0]


def train_seeds(config: ml_collections.ConfigDict, seeds: Sequence[int],
                splits: dict[str, data.Split], num_classes: int,
                workdir: pathlib.Path, *, mesh: parallel.Mesh,
                name: str = 'run', resume: bool = False
                ) -> list[report.RunResult]:
  """Trains one run per seed, evaluates and checkpoints them, writes metrics.

  Args:
    config: The run's config (see ``experiments/configs/base.py``).
      ``config.seed`` is replaced by each seed.
    seeds: The seeds: initial weights, batch order, augmentation, dropout.
      The validation split is drawn with ``config.data_seed``, the same for
      every seed.
    splits: Normalized ``train``, ``validation`` and ``test`` splits.
    num_classes: Classes of the dataset.
    workdir: Where the runs write ``checkpoints/`` and ``metrics.json``
      (``seed-S/metrics.json`` per seed when there are several; seeds that
      do not train together also checkpoint there).
    mesh: The devices, as ``parallel.make_mesh(config.devices,
      config.batch_size)`` gives them (None: one device).
    name: The run's name, shown on the progress bar.
    resume: Continue from the latest checkpoint in ``workdir`` if any.

  Returns:
    One :class:`report.RunResult` per seed, in the order of ``seeds``.
  """
  seeds = tuple(int(seed) for seed in seeds)
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f'seeds must be distinct and at least one; got {seeds}.')
  if len(seeds) > 1 and not config.seeds_in_one_step:
    return [_train_together(config, (seed,), splits, num_classes,
                            workdir / f'seed-{seed}', mesh, name, resume)[0]
            for seed in seeds]
  return _train_together(config, seeds, splits, num_classes, workdir, mesh,
                         name, resume)


def _train_together(config, seeds, splits, num_classes, workdir, mesh, name,
                    resume) -> list[report.RunResult]:
  """Trains ``seeds`` in one program: restore or start, epochs, results."""
  start_time = time.perf_counter()
  run, initial = _set_up(config, seeds, splits, num_classes, workdir, mesh,
                         name)
  with checkpoints.manager(workdir) as manager:
    carried, epochs_done, progress, resumed = _restore_or_start(
        run, initial, manager, resume)
    bar = tqdm.trange(epochs_done, config.epochs, desc=name,
                      initial=epochs_done, total=config.epochs,
                      disable=not (config.progress and parallel.is_writer()),
                      unit='epoch')
    for epoch in bar:
      carried, last_record = _train_epoch(run, carried, progress, epoch)
      bar.set_postfix({key: f'{value:.4f}' for key, value in
                       last_record.items() if key not in ('epoch', 'step')})
      if (epoch + 1) % config.checkpoint_every == 0 or (
          epoch + 1 == config.epochs):
        checkpoints.save(manager, epoch + 1, carried, run.seeds, progress,
                         config, resumed)
  return _results(run, carried, progress, start_time, resumed)


def _set_up(config, seeds, splits, num_classes, workdir, mesh, name
            ) -> tuple[_Run, checkpoints.Carried]:
  """The run's data on its devices, its programs, and its initial arrays."""
  workdir.mkdir(parents=True, exist_ok=True)
  train_split = parallel.put(mesh, splits['train'])
  validation = parallel.put(mesh, splits['validation'])
  steps_per_epoch = len(splits['train'].labels) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'batch_size {config.batch_size} exceeds the '
                     f'{len(splits["train"].labels)} training examples.')
  setup = state_lib.initial_run(
      config, seeds, num_classes=num_classes,
      image_shape=splits['train'].images.shape[1:],
      steps_per_epoch=steps_per_epoch)
  state = steps.stack_seeds(setup.states)
  if mesh is not None:
    state = parallel.put(mesh, state)
  together = bool(config.seeds_in_one_step)
  run = _Run(
      config=config, seed_configs=setup.seed_configs, name=name,
      workdir=workdir, mesh=mesh, splits=splits, train_split=train_split,
      validation=validation, steps_per_epoch=steps_per_epoch,
      draw=steps.make_draw(config, steps_per_epoch),
      train=steps.make_train(config, setup.model, mesh, together),
      evaluate=steps.make_evaluate(setup.model, config.eval_batch_size, mesh,
                                   together),
      eval_weights=steps.make_eval_weights(mesh, together),
      base_keys=jnp.stack([jax.random.fold_in(jax.random.key(seed), 1)
                           for seed in seeds]))
  params = run.eval_weights(state)
  initial = checkpoints.Carried(
      state=state, best_params=params, best_batch_stats=state.batch_stats,
      previous_kernel=_monitored_kernels(config, params))
  return run, initial


def _restore_or_start(run: _Run, initial: checkpoints.Carried, manager,
                      resume: bool
                      ) -> tuple[checkpoints.Carried, int,
                                 list[checkpoints.Progress],
                                 list[dict[str, Any]]]:
  """The latest checkpoint with ``resume``, else a fresh start.

  Returns:
    The carried arrays, the epochs done, every seed's progress, and the
    resumes that changed settings (``checkpoints.Restored.resumed``).

  Raises:
    FileExistsError: Not resuming, but the directory holds checkpoints.
    CheckpointError: The checkpoint is damaged, or of other settings.
  """
  if resume:
    restored = checkpoints.restore(manager, initial, run.seeds, run.config,
                                   run.workdir)
    if restored is not None:
      return restored
  elif manager.latest_step() is not None:
    raise FileExistsError(
        f'{run.workdir} already holds checkpoints: pass resume=True '
        '(--resume) to continue them, or another output directory.')
  progress = [checkpoints.Progress() for _ in run.seeds]
  if run.config.monitor:
    val_loss, _ = run.evaluate(initial.best_params, initial.state.batch_stats,
                               *run.validation)
    for index, seed_progress in enumerate(progress):
      seed_progress.monitor.extend(_monitor_records(
          run.config, (0, 0), initial.previous_kernel,
          initial.previous_kernel, index, val_loss[index]))
  return initial, 0, progress, []


def _train_epoch(run: _Run, carried: checkpoints.Carried,
                 progress: list[checkpoints.Progress], epoch: int
                 ) -> tuple[checkpoints.Carried, dict[str, float]]:
  """Trains epoch ``epoch`` (0-based) in segments, recording after each.

  Returns:
    The carried arrays after the epoch, and the first seed's last record.
  """
  order, step_keys = run.draw(
      jax.vmap(jax.random.fold_in, in_axes=(0, None))(run.base_keys, epoch),
      run.train_split.images.shape[0])
  done = 0
  for stop, evaluates in record_points(run.config, run.steps_per_epoch,
                                       epoch).items():
    state, metrics = run.train(carried.state, *run.train_split, order,
                               step_keys, done, stop)
    carried = carried._replace(state=state)
    done = stop
    step = epoch * run.steps_per_epoch + stop
    means = {key: values.mean(1) for key, values in metrics.items()}
    records = [{'epoch': epoch + 1, 'step': step,
                **{key: float(values[index]) for key, values in means.items()}}
               for index in range(len(progress))]
    if evaluates:
      carried = _evaluate_and_keep_best(run, carried, progress, records,
                                        epoch + 1, step)
    for seed_progress, record in zip(progress, records):
      seed_progress.history.append(record)
  return carried, records[0]


def _evaluate_and_keep_best(run: _Run, carried: checkpoints.Carried,
                            progress: list[checkpoints.Progress],
                            records: list[dict[str, float]], epoch: int,
                            step: int) -> checkpoints.Carried:
  """Validates every seed, adds to its record, keeps its best weights."""
  state = carried.state
  params = run.eval_weights(state)
  val_loss, val_accuracy = (np.asarray(value) for value in run.evaluate(
      params, state.batch_stats, *run.validation))
  improved = np.array([
      seed_progress.improves(float(loss), float(accuracy),
                             run.config.best_by)
      for loss, accuracy, seed_progress in zip(val_loss, val_accuracy,
                                               progress)])
  best_params, best_batch_stats = steps.where_improved(
      improved, (params, state.batch_stats),
      (carried.best_params, carried.best_batch_stats))
  carried = carried._replace(best_params=best_params,
                             best_batch_stats=best_batch_stats)
  for index, seed_progress in enumerate(progress):
    records[index].update(val_loss=float(val_loss[index]),
                          val_accuracy=float(val_accuracy[index]))
    if improved[index]:
      seed_progress.best_epoch, seed_progress.best_step = epoch, step
      seed_progress.best_val_accuracy = float(val_accuracy[index])
      seed_progress.best_val_loss = float(val_loss[index])
  if run.config.monitor:
    kernels = _monitored_kernels(run.config, params)
    for index, seed_progress in enumerate(progress):
      seed_progress.monitor.extend(_monitor_records(
          run.config, (epoch, step), kernels, carried.previous_kernel, index,
          val_loss[index]))
    carried = carried._replace(previous_kernel=kernels)
  return carried


def _monitored_kernels(config: ml_collections.ConfigDict,
                       params: Any) -> tuple[jax.Array, ...]:
  """The kernels the A.3 monitor follows (``monitor.kernel_paths``), with
  their seed axis."""
  return tuple(models.get_leaf(params, path) for path in
               monitor.kernel_paths(config, steps.take_seed(params, 0)))


def _monitor_records(config: ml_collections.ConfigDict,
                     epoch_and_step: tuple[int, int],
                     kernels: Sequence[jax.Array],
                     previous: Sequence[jax.Array], index: int,
                     val_loss: float) -> list[dict[str, Any]]:
  """Seed ``index``'s monitor entries: one per kernel, named if several."""
  records = []
  for position, (kernel, before) in enumerate(zip(kernels, previous)):
    record = monitor.record(*epoch_and_step, kernel[index], before[index],
                            val_loss)
    if config.monitor_kernels:
      record['kernel'] = config.monitor_kernels[position]
    records.append(record)
  return records


def _results(run: _Run, carried: checkpoints.Carried,
             progress: list[checkpoints.Progress], start_time: float,
             resumed: Sequence[dict[str, Any]]) -> list[report.RunResult]:
  """Scores every seed on the test split and writes its ``metrics.json``
  (with the resumes that changed settings, ``resumed``)."""
  test = parallel.put(run.mesh, run.splits['test'])
  best = (carried.best_params, carried.best_batch_stats)
  final = (run.eval_weights(carried.state), carried.state.batch_stats)
  test_loss, test_accuracy = run.evaluate(*best, *test)
  # The last evaluation is often the best: its test score is then known.
  if jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), final,
                               best)):
    final_test_loss, final_test_accuracy = test_loss, test_accuracy
  else:
    final_test_loss, final_test_accuracy = run.evaluate(*final, *test)
  seconds = (time.perf_counter() - start_time) / len(progress)
  results = []
  for index, (seed_config, seed_progress) in enumerate(
      zip(run.seed_configs, progress)):
    result = report.RunResult(
        name=run.name, seed=seed_config.seed, history=seed_progress.history,
        best_epoch=seed_progress.best_epoch,
        best_step=seed_progress.best_step,
        best_val_accuracy=seed_progress.best_val_accuracy,
        best_val_loss=seed_progress.best_val_loss,
        test_accuracy=float(test_accuracy[index]),
        final_test_accuracy=float(final_test_accuracy[index]),
        test_loss=float(test_loss[index]),
        final_test_loss=float(final_test_loss[index]),
        seconds=seconds, monitor=seed_progress.monitor,
        state=steps.take_seed(carried.state, index),
        best_params=steps.take_seed(carried.best_params, index))
    results.append(result)
    if parallel.is_writer():
      metrics_dir = run.workdir if len(progress) == 1 else (
          run.workdir / f'seed-{seed_config.seed}')
      metrics_dir.mkdir(exist_ok=True)
      report.write_metrics(result, seed_config, metrics_dir / 'metrics.json',
                           resumed=resumed)
  return results
