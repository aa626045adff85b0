"""Command line: ``python -m experiments PRESET [overrides]``.

Runs every run of a preset on one dataset, prints a comparison table, and
writes ``summary.json``, per-run ``metrics.json`` and checkpoints, and the
figures into the output directory.
"""

import argparse
import ast
import datetime
import difflib
import json
import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any, Optional, Sequence, Union

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from experiments import configs
from experiments import data
from experiments import download
from experiments import parallel
from experiments import report
from experiments import train

# Smoke runs: a few steps on a few examples, with syncs inside them.
QUICK_OVERRIDES = {'epochs': 2, 'max_examples': 256, 'batch_size': 32,
                   'eval_batch_size': 128}
QUICK_MAX_SYNC_PERIOD = 4
QUICK_MAX_VALIDATION = 128
# A preset's validation split that does not fit a small dataset becomes this
# fraction of its training examples (CIFAR-10's 5000 of 50000).
SMALL_VALIDATION_FRACTION = 0.1


class UsageError(ValueError):
  """Bad command-line input; ``main`` reports it as argparse does."""


def _closest(word: str, known: Sequence[str]) -> str:
  """`` (did you mean X?)`` for the known word closest to ``word``, if any."""
  close = difflib.get_close_matches(word, known, n=1)
  return f' (did you mean {close[0]!r}?)' if close else ''


def _parse_preset(text: str) -> str:
  """The positional preset: one of ``configs.names()``."""
  if text not in configs.names():
    raise argparse.ArgumentTypeError(
        f'unknown preset {text!r}{_closest(text, configs.names())}; known: '
        f'{", ".join(configs.names())}')
  return text


def _integer_from(minimum: int) -> Callable[[str], int]:
  """An argparse type: integers >= ``minimum``."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      value = minimum - 1
    if value < minimum:
      raise argparse.ArgumentTypeError(
          f'expected an integer >= {minimum}, got {text!r}')
    return value

  return parse


def _parse_rate(text: str) -> float:
  """``--prune``: a fraction in [0, 1)."""
  try:
    rate = float(text)
  except ValueError:
    rate = -1.0
  if not 0 <= rate < 1:
    raise argparse.ArgumentTypeError(
        f'expected a fraction in [0, 1), got {text!r}')
  return rate


def _parse_value(key: str, text: str, current: Any) -> Any:
  """``--set KEY=TEXT``'s value, of the type of the field's current value.

  Strings are taken as written (quotes optional); other values are Python
  literals (``True``, ``1e-3``, ``(10, 20)``; ``true`` and ``false`` too).
  """
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  number = isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(current, str):
    return value if isinstance(value, str) else text
  if isinstance(current, bool):
    if isinstance(value, bool) or text.lower() in ('true', 'false'):
      return text.lower() == 'true'
  elif isinstance(current, int):
    if number and isinstance(value, int):
      return value
  elif isinstance(current, float):
    if number:
      return float(value)
  elif isinstance(current, (tuple, list)):
    if isinstance(value, (tuple, list)):
      return type(current)(value)
  else:
    return value
  raise UsageError(f'--set {key}={text}: {key} takes a value of type '
                   f'{type(current).__name__}, like {current!r}')


def _parse_devices(text: str) -> int:
  """``--devices``: a count >= 1, or ``0`` / ``all`` for every local device."""
  if text.strip().lower() == 'all':
    return 0
  try:
    count = int(text)
  except ValueError:
    count = -1
  if count < 0:
    raise argparse.ArgumentTypeError(
        f"expected a device count >= 1, or 0 or 'all'; got {text!r}")
  return count


def _parse_seeds(text: str) -> Union[int, tuple[int, ...]]:
  """``--seeds``: a count (``5``) or a comma-separated list (``0,3,7``)."""
  try:
    values = tuple(int(value) for value in text.split(',') if value.strip())
  except ValueError:
    values = ()
  if ',' in text:
    if not values or min(values) < 0 or len(set(values)) != len(values):
      raise argparse.ArgumentTypeError(
          f'expected distinct seeds >= 0 like 0,3,7; got {text!r}')
    return values
  if len(values) != 1 or values[0] < 1:
    raise argparse.ArgumentTypeError(
        f'expected a number of seeds >= 1, or a list like 0,3,7; got {text!r}')
  return values[0]


def _fields(config: ml_collections.ConfigDict, prefix: str = ''
            ) -> dict[str, Any]:
  """Every field of a config by flattened key (``optimizer.name``)."""
  fields = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      fields.update(_fields(value, f'{prefix}{key}.'))
    else:
      fields[prefix + key] = value
  return fields


def _parse_overrides(pairs: Sequence[str], config: ml_collections.ConfigDict
                     ) -> dict[str, Any]:
  """``--set`` pairs checked against the fields of ``config``."""
  fields = _fields(config)
  overrides = {}
  for pair in pairs:
    key, separator, text = pair.partition('=')
    if not separator:
      raise UsageError(f'--set takes KEY=VALUE, got {pair!r}')
    if key not in fields:
      raise UsageError(f'--set {pair}: unknown config key {key!r}'
                       f'{_closest(key, list(fields))}')
    overrides[key] = _parse_value(key, text, fields[key])
  return overrides


def parser() -> argparse.ArgumentParser:
  """The command-line parser."""
  cli = argparse.ArgumentParser(
      prog='python -m experiments',
      description='Train the experiments of "Train-by-Reconnect" (LaPerm).')
  cli.add_argument('preset', nargs='?', type=_parse_preset,
                   help='one of: ' + ', '.join(configs.names()))
  cli.add_argument('--list', action='store_true',
                   help='list the presets and exit')
  cli.add_argument('--dataset', help="'digits' (embedded), 'idx:DIR', or a "
                   'TFDS name (mnist, fashion_mnist, cifar10); default: the '
                   "preset's")
  cli.add_argument('--data-dir', help='TFDS data_dir holding prepared data '
                   "(default: TFDS's, ~/tensorflow_datasets)")
  cli.add_argument('--download', action=argparse.BooleanOptionalAction,
                   help='download and prepare a TFDS dataset (mnist, '
                   'fashion_mnist, cifar10) missing from --data-dir, without '
                   'checking the network first (TFDS retries for minutes '
                   'where there is none); default: if its download host '
                   f'answers within {download.CHECK_TIMEOUT:g} s, else stop '
                   'at once')
  cli.add_argument('--out', type=pathlib.Path,
                   help='output directory (default: runs/PRESET-TIMESTAMP)')
  cli.add_argument('--resume', action='store_true',
                   help='continue the runs checkpointed in --out')
  cli.add_argument('--quick', action='store_true',
                   help='smoke run: 2 epochs on 256 examples per split')
  cli.add_argument('--prune', type=_parse_rate, metavar='RATE',
                   help='prune this fraction of each kernel first (5.4)')
  cli.add_argument('--epochs', type=_integer_from(1))
  # NumPy's generators take no negative seeds.
  cli.add_argument('--seed', type=_integer_from(0))
  cli.add_argument('--seeds', type=_parse_seeds, metavar='N|S1,S2,...',
                   help='train every run for several seeds: a count N '
                   '(seeds --seed .. --seed+N-1, from 0 by default) or a '
                   'comma-separated list; results are given as mean +- std')
  cli.add_argument('--runs', help='comma-separated subset of the runs')
  cli.add_argument('--devices', type=_parse_devices, metavar='N',
                   help='train data parallel on N local devices (0 or '
                   "'all': every one; default 1); the batch size must be a "
                   'multiple of N')
  cli.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='override a config field, e.g. optimizer.sync_period=100')
  cli.add_argument('--no-progress', action='store_true',
                   help='hide the progress bars')
  cli.add_argument('--compilation-cache', metavar='DIR|off',
                   help="JAX's persistent compilation cache: a rerun of a "
                   'preset skips compiling what it compiled before '
                   '(default: $XDG_CACHE_HOME/laperm-jax/jax, ~/.cache if '
                   'unset; off: none)')
  processes = cli.add_argument_group(
      'several processes', 'one process per host, all with the same '
      'arguments (docs/several_hosts.md); they train on all their devices')
  processes.add_argument('--distributed', action='store_true',
                         help='join the processes JAX detects itself (TPU '
                         'pod slices, SLURM, Open MPI)')
  processes.add_argument('--coordinator', metavar='HOST:PORT',
                         help="process 0's address, with --num-processes "
                         'and --process-id')
  processes.add_argument('--num-processes', type=_integer_from(1))
  processes.add_argument('--process-id', type=_integer_from(0))
  return cli


def run_configs(preset: configs.Preset, args: argparse.Namespace
                ) -> dict[str, ml_collections.ConfigDict]:
  """The config of each run: preset, run overrides, then the command line."""
  overrides = _parse_overrides(args.set, preset.config)
  for field, value in (('dataset', args.dataset), ('data_dir', args.data_dir),
                       ('epochs', args.epochs), ('seed', args.seed),
                       ('devices', args.devices)):
    if value is not None:
      overrides[field] = value
  if joins_processes(args) and args.devices is None:
    overrides.setdefault('devices', 0)
  if args.prune is not None:
    overrides.update({'init.kind': 'prune', 'init.prune_rate': args.prune},
                     **preset.prune_overrides)
  if args.no_progress:
    overrides['progress'] = False
  names = list(preset.runs) if not args.runs else args.runs.split(',')
  for name in names:
    if name not in preset.runs:
      raise UsageError(f'--runs: unknown run {name!r}'
                       f'{_closest(name, list(preset.runs))}; this preset '
                       f'has {", ".join(preset.runs)}')
  run_configs_by_name = {}
  for name in names:
    config = ml_collections.ConfigDict(preset.config.to_dict())
    config.update_from_flattened_dict(preset.runs[name])
    config.update_from_flattened_dict(overrides)
    if args.quick:
      config.update_from_flattened_dict(QUICK_OVERRIDES)
      config.optimizer.sync_period = min(config.optimizer.sync_period,
                                         QUICK_MAX_SYNC_PERIOD)
      if config.eval_every_steps:
        config.eval_every_steps = min(config.eval_every_steps,
                                      QUICK_MAX_SYNC_PERIOD)
      config.validation_size = min(config.validation_size,
                                   QUICK_MAX_VALIDATION)
    try:
      data.check_spec(config.dataset)
    except ValueError as error:
      raise UsageError(str(error)) from error
    if config.epochs < 1:
      raise UsageError(f'--set epochs={config.epochs}: epochs must be >= 1')
    run_configs_by_name[name] = config
  return run_configs_by_name


def prepare_data(run_configs_by_name: dict[str, ml_collections.ConfigDict],
                 args: argparse.Namespace) -> None:
  """Gets each run's dataset ready and fits its validation split to it.

  A TFDS dataset that is not prepared is downloaded as ``--download`` says
  (see :func:`experiments.download.prepare`). A preset's validation split
  that does not fit the training examples of a small dataset (5000 on
  digits' 1497) is scaled to ``SMALL_VALIDATION_FRACTION`` of them, said in
  one printed line; one asked for with ``--set validation_size`` is an
  error instead.

  Args:
    run_configs_by_name: From :func:`run_configs`; validation sizes are
      updated in place.
    args: The parsed command line.

  Raises:
    DataUnavailableError: A dataset is not on this machine.
    UsageError: ``--set validation_size`` does not fit the dataset.
  """
  asked = any(pair.partition('=')[0] == 'validation_size'
              for pair in args.set)
  sizes, notes = {}, {}
  for config in run_configs_by_name.values():
    source = (config.dataset, config.data_dir or None)
    if source not in sizes:
      download.prepare(config.dataset, data_dir=source[1],
                       download=args.download)
      sizes[source] = data.train_size(config.dataset, data_dir=source[1])
    size = sizes[source]
    if 0 < config.validation_size < size:
      continue
    if asked:
      raise UsageError(
          f'--set validation_size={config.validation_size}: {config.dataset} '
          f'has {size} training examples; hold out from 1 to {size - 1}')
    scaled = max(1, int(size * SMALL_VALIDATION_FRACTION))
    notes[config.dataset, config.validation_size] = (
        f'{config.dataset} has {size} training examples: holding out {scaled} '
        f'({SMALL_VALIDATION_FRACTION:.0%}) for validation instead of the '
        f"preset's {config.validation_size}")
    config.validation_size = scaled
  for note in notes.values():
    if parallel.is_writer():
      print(note)


def joins_processes(args: argparse.Namespace) -> bool:
  """Whether the command line asks to join a multi-process run."""
  return bool(getattr(args, 'distributed', False) or
              getattr(args, 'coordinator', None) or
              getattr(args, 'num_processes', None) is not None or
              getattr(args, 'process_id', None) is not None)


def join_processes(args: argparse.Namespace) -> None:
  """Joins the multi-process run the command line names, if any.

  Raises:
    UsageError: The process options are incomplete or contradict.
  """
  explicit = (args.coordinator, args.num_processes, args.process_id)
  if args.distributed:
    if any(value is not None for value in explicit):
      raise UsageError('--distributed detects the processes itself: give it '
                       'alone, or --coordinator, --num-processes and '
                       '--process-id without it')
    parallel.initialize()
  elif any(value is not None for value in explicit):
    if any(value is None for value in explicit):
      raise UsageError('--coordinator, --num-processes and --process-id go '
                       'together')
    if args.process_id >= args.num_processes:
      raise UsageError(f'--process-id {args.process_id} must be below '
                       f'--num-processes {args.num_processes}')
    parallel.initialize(*explicit)


def check_resume(args: argparse.Namespace) -> None:
  """Raises UsageError unless a ``--resume`` has checkpoints to continue."""
  if not args.resume:
    return
  if args.out is None:
    raise UsageError('--resume needs --out, the directory of the runs')
  if not any(path.is_dir() and any(path.iterdir())
             for path in args.out.glob('**/checkpoints')):
    raise UsageError(f'--resume: {args.out} holds no checkpoint to continue')


def run_seeds(config: ml_collections.ConfigDict,
              args: argparse.Namespace) -> tuple[int, ...]:
  """The seeds of a run: ``--seeds`` (a count starts at ``config.seed``)."""
  seeds = getattr(args, 'seeds', None)
  if seeds is None:
    return (config.seed,)
  if isinstance(seeds, int):
    return tuple(range(config.seed, config.seed + seeds))
  return seeds


def run(preset_name: str, args: argparse.Namespace
        ) -> list[list[report.RunResult]]:
  """Runs a preset's runs, prints the table, writes summary and figures.

  Returns:
    Per run, one result per seed.
  """
  preset = configs.get(preset_name)
  run_configs_by_name = run_configs(preset, args)
  check_resume(args)
  try:
    parallel.check_same_everywhere(
        'the preset, its runs and their settings',
        [preset_name, {name: json.loads(config.to_json())
                       for name, config in run_configs_by_name.items()}])
    for name, config in run_configs_by_name.items():
      parallel.make_mesh(config.devices, config.batch_size)
  except ValueError as error:
    raise SystemExit(f'error: {error}') from error
  prepare_data(run_configs_by_name, args)
  out = args.out or pathlib.Path('runs') / f'{preset_name}-{_timestamp()}'
  out.mkdir(parents=True, exist_ok=True)
  say = print if parallel.is_writer() else lambda *_: None
  say(f'{preset_name}: {preset.description}\noutput: {out}')
  loaded = {}
  results = []
  for name, config in run_configs_by_name.items():
    source = data.split_source(config)
    if source not in loaded:
      loaded[source] = data.load_splits(config)
    splits, num_classes, image_shape = loaded[source]
    mesh = parallel.make_mesh(config.devices)
    say(f'{name}: {config.model.name} with {config.optimizer.name} on '
          f'{config.dataset} {image_shape}, {len(splits["train"].labels)} '
          f'train / {len(splits["validation"].labels)} validation / '
          f'{len(splits["test"].labels)} test, {config.epochs} epochs'
          f'{parallel.describe(mesh)}')
    results.append(train.train_seeds(
        config, run_seeds(config, args), splits, num_classes, out / name,
        name=name, resume=args.resume))
  if parallel.is_writer():
    print(report.table(results, [config.optimizer.name
                                 for config in run_configs_by_name.values()]))
    report.write_summary(results, preset_name, out / 'summary.json')
    for path in report.write_figures(results, out):
      print(f'figure: {path}')
  return results


def _timestamp() -> str:
  """The time now (process 0's, when several processes run)."""
  now = datetime.datetime.now()
  fields = np.array([now.year, now.month, now.day, now.hour, now.minute,
                     now.second], np.int32)
  if jax.process_count() > 1:
    fields = multihost_utils.broadcast_one_to_all(fields)
  return '{:04d}{:02d}{:02d}-{:02d}{:02d}{:02d}'.format(*map(int, fields))


def use_compilation_cache(directory: Optional[str]) -> None:
  """Points JAX's persistent compilation cache at ``directory`` (or ``off``).

  None: ``$XDG_CACHE_HOME/laperm-jax/jax`` (``~/.cache`` when unset).

  On CPU much of a small preset's wall time is compilation, the same
  programs at every rerun; the cache keeps every program that took at least
  0.1 s to compile. JAX keys entries by program, backend and
  versions, so a stale entry is never used.
  """
  if directory == 'off':
    return
  if directory is None:
    directory = str(pathlib.Path(
        os.environ.get('XDG_CACHE_HOME', pathlib.Path.home() / '.cache'))
                    / 'laperm-jax' / 'jax')
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.1)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Parses the command line and runs the preset.

  Bad input stops with one ``error:`` line and exit status 2 before anything
  runs (argparse's convention); data that cannot be had, with status 1.
  """
  cli = parser()
  args = cli.parse_args(argv)
  if args.list or args.preset is None:
    for name in configs.names():
      print(f'{name:16} {configs.get(name).description}')
    return
  use_compilation_cache(args.compilation_cache)
  try:
    join_processes(args)
    run(args.preset, args)
  except UsageError as error:
    cli.error(str(error))
  except data.DataUnavailableError as error:
    sys.exit(f'error: {error}')
