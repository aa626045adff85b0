"""Command line: ``python -m experiments PRESET [options]``.

Parses the arguments into each run's config (the policy, such as what
``--quick`` shrinks, is the configs'), checks them, and hands the runs to
``train``.
"""

import argparse
import difflib
import json
import pathlib
from typing import Any, Callable, Optional, Sequence, Union

import ml_collections

from experiments import checkpoints
from experiments import configs
from experiments import data
from experiments import download
from experiments import errors
from experiments import parallel
from experiments import report
from experiments import train


class UsageError(ValueError):
  """Bad command-line input; ``main`` reports it as argparse does."""


def _parse_preset(text: str) -> str:
  """The positional preset: one of ``configs.names()``."""
  if text not in configs.names():
    close = ''.join(f' (did you mean {name!r}?)' for name in
                    difflib.get_close_matches(text, configs.names(), n=1))
    raise argparse.ArgumentTypeError(f'unknown preset {text!r}{close}; known: '
                                     f'{", ".join(configs.names())}')
  return text


def _number_parser(kind: type, accepts: Callable[[Any], bool], expected: str
                   ) -> Callable[[str], Any]:
  """An argparse type: a ``kind`` that ``accepts``, else 'expected ...'."""

  def parse(text: str) -> Any:
    try:
      value = kind(text)
    except ValueError:
      value = None
    if value is None or not accepts(value):
      raise argparse.ArgumentTypeError(f'expected {expected}, got {text!r}')
    return value

  return parse


def _integer_from(minimum: int) -> Callable[[str], int]:
  return _number_parser(int, lambda value: value >= minimum,
                        f'an integer >= {minimum}')


def _parse_devices(text: str) -> int:
  """``--devices``: a count >= 1, or ``0`` / ``all`` for every local device."""
  if text.strip().lower() == 'all':
    return 0
  return _number_parser(int, lambda count: count >= 0,
                        "a device count >= 1, or 0 or 'all'")(text)


def _parse_seeds(text: str) -> Union[int, tuple[int, ...]]:
  """``--seeds``: a count (``5``) or a comma-separated list (``0,3,7``)."""
  if ',' not in text:
    return _number_parser(int, lambda count: count >= 1, 'a number of seeds '
                          '>= 1, or a list like 0,3,7')(text)
  try:
    seeds = tuple(int(seed) for seed in text.split(',') if seed.strip())
  except ValueError:
    seeds = ()
  if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
    raise argparse.ArgumentTypeError(
        f'expected distinct seeds >= 0 like 0,3,7; got {text!r}')
  return seeds


def parser() -> argparse.ArgumentParser:
  """The command-line parser."""
  cli = argparse.ArgumentParser(
      prog='python -m experiments',
      description='Train the experiments of "Train-by-Reconnect" (LaPerm).')
  add = cli.add_argument
  add('preset', nargs='?', type=_parse_preset,
      help='one of: ' + ', '.join(configs.names()))
  add('--list', action='store_true', help='list the presets and exit')
  add('--dataset', help="'digits' (embedded), 'idx:DIR', 'text:DIR', or a "
      f"TFDS name ({', '.join(data.TFDS_NAMES)}); default: the preset's")
  add('--data-dir', help="TFDS data_dir holding prepared data (default: "
      "TFDS's, ~/tensorflow_datasets)")
  add('--download', action=argparse.BooleanOptionalAction, help=(
      f'download and prepare a TFDS dataset ({", ".join(data.TFDS_NAMES)}) '
      'missing from --data-dir, without checking the network first (TFDS '
      'retries for minutes where there is none); default: if its download '
      f'host answers within {download.CHECK_TIMEOUT:g} s, else stop at once'))
  add('--out', type=pathlib.Path,
      help='output directory (default: runs/PRESET-TIMESTAMP)')
  add('--resume', action='store_true',
      help='continue the runs checkpointed in --out')
  add('--quick', action='store_true',
      help='smoke run: 2 epochs on 256 examples per split')
  add('--prune', metavar='RATE', help='prune this fraction of each kernel '
      'first (5.4)', type=_number_parser(
          float, lambda rate: 0 <= rate < 1, 'a fraction in [0, 1)'))
  add('--epochs', type=_integer_from(1))
  add('--seed', type=_integer_from(0))  # NumPy takes no negative seeds.
  add('--seeds', type=_parse_seeds, metavar='N|S1,S2,...',
      help='train every run for several seeds: a count N (seeds --seed .. '
      '--seed+N-1, from 0 by default) or a comma-separated list; results '
      'are given as mean +- std')
  add('--runs', help='comma-separated subset of the runs')
  add('--devices', type=_parse_devices, metavar='N',
      help="train data parallel on N local devices (0 or 'all': every one; "
      'default 1); the batch size must be a multiple of N')
  add('--set', action='append', default=[], metavar='KEY=VALUE',
      help='override a config field, e.g. optimizer.sync_period=100')
  add('--no-progress', action='store_true', help='hide the progress bars')
  add('--compilation-cache', metavar='DIR|off',
      help="JAX's persistent compilation cache: a rerun of a preset skips "
      'compiling what it compiled before (default: $XDG_CACHE_HOME/'
      'laperm-jax/jax, ~/.cache if unset; off: none)')
  add('--debug', action='store_true',
      help='tracebacks instead of one error line for failures of I/O')
  add = cli.add_argument_group(
      'several processes', 'one process per host, all with the same '
      'arguments (docs/several_hosts.md); they train on all their devices'
  ).add_argument
  add('--distributed', action='store_true', help='join the processes JAX '
      'detects itself (TPU pod slices, SLURM, Open MPI)')
  add('--coordinator', metavar='HOST:PORT',
      help="process 0's address, with --num-processes and --process-id")
  add('--num-processes', type=_integer_from(1))
  add('--process-id', type=_integer_from(0))
  return cli


def run_configs(preset: configs.Preset, args: argparse.Namespace
                ) -> dict[str, ml_collections.ConfigDict]:
  """The config of each run: preset, run overrides, then the command line."""
  try:
    overrides = configs.parse_overrides(preset.config, args.set)
  except ValueError as error:
    raise UsageError(f'--set {error}') from error
  for field, value in (('dataset', args.dataset), ('data_dir', args.data_dir),
                       ('epochs', args.epochs), ('seed', args.seed),
                       ('devices', args.devices)):
    if value is not None:
      overrides[field] = value
  if args.devices is None and (args.distributed or args.coordinator or (
      args.num_processes or args.process_id is not None)):
    overrides['devices'] = 0
  if args.prune is not None:
    overrides.update({'init.kind': 'prune', 'init.prune_rate': args.prune},
                     **preset.prune_overrides)
  if args.no_progress:
    overrides['progress'] = False
  try:
    by_name = {name: preset.run_config(name, overrides, quick=args.quick)
               for name in (args.runs.split(',') if args.runs else preset.runs)}
  except ValueError as error:
    raise UsageError(f'--runs: {error}') from error
  for config in by_name.values():
    try:
      data.check_spec(config.dataset)
      data.check_normalization(config.dataset, config.normalization)
    except ValueError as error:
      raise UsageError(str(error)) from error
    if config.epochs < 1:
      raise UsageError(f'--set epochs={config.epochs}: epochs must be >= 1')
  return by_name


def check_resume(args: argparse.Namespace) -> None:
  """Raises UsageError unless ``--resume`` finds checkpoints in ``--out``."""
  if not args.resume:
    return
  if args.out is None:
    raise UsageError('--resume needs --out, the directory of the runs')
  runs = args.runs.split(',') if args.runs else configs.get(args.preset).runs
  try:
    checkpoints.check_resumable(args.out, runs)
  except checkpoints.CheckpointError as error:
    raise UsageError(f'--resume: {error}') from error


def run(preset_name: str, args: argparse.Namespace
        ) -> list[list[report.RunResult]]:
  """Checks a preset's runs, gets their data ready and trains them.

  Returns:
    Per run, one result per seed.
  """
  preset = configs.get(preset_name)
  by_name = run_configs(preset, args)
  check_resume(args)
  try:
    parallel.check_same_everywhere(
        'the preset, its runs and their settings',
        [preset_name, {name: json.loads(config.to_json())
                       for name, config in by_name.items()}])
    meshes = {name: parallel.make_mesh(config.devices, config.batch_size)
              for name, config in by_name.items()}
  except ValueError as error:
    raise SystemExit(f'error: {error}') from error
  try:  # A validation split asked for with --set is never scaled.
    notes = train.prepare_data(
        by_name, download=args.download, scale_validation=not any(
            pair.startswith('validation_size=') for pair in args.set))
  except configs.ValidationSizeError as error:
    raise UsageError(f'--set {error}') from error
  if parallel.is_writer() and notes:
    print('\n'.join(notes))
  out = args.out or (pathlib.Path('runs') /
                     f'{preset_name}-{parallel.timestamp()}')
  return train.train_preset(
      preset_name, preset.description, by_name, out=out, meshes=meshes,
      seeds={name: configs.run_seeds(config, args.seeds)
             for name, config in by_name.items()}, resume=args.resume)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Parses the command line and runs the preset.

  Bad input stops with one ``error:`` line and status 2 before anything runs
  (argparse's); missing data or a file that fails (``errors``), status 1.
  """
  cli = parser()
  args = cli.parse_args(argv)
  if args.list or args.preset is None:
    for name in configs.names():
      print(f'{name:16} {configs.get(name).description}')
    return
  parallel.use_compilation_cache(args.compilation_cache)
  with errors.reported(debug=args.debug):
    try:
      parallel.join(args.distributed, args.coordinator, args.num_processes,
                    args.process_id)
    except ValueError as error:  # The processes' options contradict.
      cli.error(str(error))
    try:
      run(args.preset, args)
    except UsageError as error:
      cli.error(str(error))
