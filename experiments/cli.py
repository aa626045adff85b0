"""Command line: ``python -m experiments PRESET [overrides]``.

Runs every run of a preset on one dataset, prints a comparison table, and
writes ``summary.json``, per-run ``metrics.json`` and checkpoints, and the
figures into the output directory.
"""

import argparse
import ast
import datetime
import pathlib
import sys
from typing import Any, Optional, Sequence

import ml_collections

from experiments import configs
from experiments import data
from experiments import report
from experiments import train

# Smoke runs: a few steps on a few examples, with syncs inside them.
QUICK_OVERRIDES = {'epochs': 2, 'max_examples': 256, 'batch_size': 32,
                   'eval_batch_size': 128}
QUICK_MAX_SYNC_PERIOD = 4
QUICK_MAX_VALIDATION = 128


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


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


def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
  overrides = {}
  for pair in pairs:
    key, separator, value = pair.partition('=')
    if not separator:
      raise SystemExit(f'--set takes KEY=VALUE, got {pair!r}.')
    overrides[key] = _parse_value(value)
  return overrides


def parser() -> argparse.ArgumentParser:
  """The command-line parser."""
  cli = argparse.ArgumentParser(
      prog='python -m experiments',
      description='Train the experiments of "Train-by-Reconnect" (LaPerm).')
  cli.add_argument('preset', nargs='?', help='one of: ' +
                   ', '.join(configs.names()))
  cli.add_argument('--list', action='store_true',
                   help='list the presets and exit')
  cli.add_argument('--dataset', help="'digits' (embedded), 'idx:DIR', or a "
                   'TFDS name (mnist, fashion_mnist, cifar10); default: the '
                   "preset's")
  cli.add_argument('--data-dir', help='TFDS data_dir holding prepared data')
  cli.add_argument('--out', type=pathlib.Path,
                   help='output directory (default: runs/PRESET-TIMESTAMP)')
  cli.add_argument('--resume', action='store_true',
                   help='continue the runs checkpointed in --out')
  cli.add_argument('--quick', action='store_true',
                   help='smoke run: 2 epochs on 256 examples per split')
  cli.add_argument('--prune', type=float, metavar='RATE',
                   help='prune this fraction of each kernel first (5.4)')
  cli.add_argument('--epochs', type=int)
  cli.add_argument('--seed', type=int)
  cli.add_argument('--runs', help='comma-separated subset of the runs')
  cli.add_argument('--devices', type=_parse_devices, metavar='N',
                   help='train data parallel on N local devices (0 or '
                   "'all': every one; default 1); the batch size must be a "
                   'multiple of N')
  cli.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='override a config field, e.g. optimizer.sync_period=100')
  cli.add_argument('--no-progress', action='store_true',
                   help='hide the progress bars')
  return cli


def run_configs(preset: configs.Preset, args: argparse.Namespace
                ) -> dict[str, ml_collections.ConfigDict]:
  """The config of each run: preset, run overrides, then the command line."""
  overrides = _parse_overrides(args.set)
  for field, value in (('dataset', args.dataset), ('data_dir', args.data_dir),
                       ('epochs', args.epochs), ('seed', args.seed),
                       ('devices', args.devices)):
    if value is not None:
      overrides[field] = value
  if args.prune is not None:
    overrides.update({'init.kind': 'prune', 'init.prune_rate': args.prune},
                     **preset.prune_overrides)
  if args.no_progress:
    overrides['progress'] = False
  names = list(preset.runs) if not args.runs else args.runs.split(',')
  unknown = set(names) - set(preset.runs)
  if unknown:
    raise SystemExit(f'Unknown runs {sorted(unknown)}; this preset has '
                     f'{list(preset.runs)}.')
  run_configs_by_name = {}
  for name in names:
    config = ml_collections.ConfigDict(preset.config.to_dict())
    config.update_from_flattened_dict(preset.runs[name])
    config.update_from_flattened_dict(overrides)
    if args.quick:
      config.update_from_flattened_dict(QUICK_OVERRIDES)
      config.optimizer.sync_period = min(config.optimizer.sync_period,
                                         QUICK_MAX_SYNC_PERIOD)
      config.validation_size = min(config.validation_size,
                                   QUICK_MAX_VALIDATION)
    run_configs_by_name[name] = config
  return run_configs_by_name


def load_splits(config: ml_collections.ConfigDict
                ) -> tuple[dict[str, data.Split], int, tuple[int, ...]]:
  """The normalized splits a config asks for, and the number of classes."""
  dataset = data.load(config.dataset, data_dir=config.data_dir or None,
                      validation_size=config.validation_size,
                      seed=config.seed)
  if config.max_examples:
    dataset = data.take(dataset, config.max_examples)
  return (data.normalize(dataset, config.normalization), dataset.num_classes,
          dataset.image_shape)


def run(preset_name: str, args: argparse.Namespace) -> list[train.RunResult]:
  """Runs a preset's runs, prints the table, writes summary and figures."""
  preset = configs.get(preset_name)
  run_configs_by_name = run_configs(preset, args)
  if args.resume and args.out is None:
    raise SystemExit('--resume needs --out, the directory of the runs.')
  out = args.out or pathlib.Path('runs') / (
      f'{preset_name}-{datetime.datetime.now():%Y%m%d-%H%M%S}')
  out.mkdir(parents=True, exist_ok=True)
  print(f'{preset_name}: {preset.description}\noutput: {out}')
  loaded = {}
  results = []
  for name, config in run_configs_by_name.items():
    data_key = (config.dataset, config.data_dir, config.validation_size,
                config.seed, config.normalization, config.max_examples)
    try:
      mesh = train.make_mesh(config.devices)
    except ValueError as error:
      raise SystemExit(f'error: {error}') from error
    if mesh is not None and config.batch_size % mesh.size:
      raise SystemExit(f'error: batch_size {config.batch_size} of run {name} '
                       f'is not divisible by --devices {mesh.size}.')
    if data_key not in loaded:
      loaded[data_key] = load_splits(config)
    splits, num_classes, image_shape = loaded[data_key]
    devices = '' if mesh is None else (
        f', data parallel on {mesh.size} {mesh.devices.flat[0].platform} '
        'devices')
    print(f'{name}: {config.model.name} with {config.optimizer.name} on '
          f'{config.dataset} {image_shape}, {len(splits["train"].labels)} '
          f'train / {len(splits["validation"].labels)} validation / '
          f'{len(splits["test"].labels)} test, {config.epochs} epochs'
          f'{devices}')
    results.append(train.train_and_evaluate(
        config, splits, num_classes, out / name, name=name,
        resume=args.resume))
  print(report.table(results, [config.optimizer.name
                               for config in run_configs_by_name.values()]))
  report.write_summary(results, preset_name, out / 'summary.json')
  for path in report.write_figures(results, out):
    print(f'figure: {path}')
  return results


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parser().parse_args(argv)
  if args.list or args.preset is None:
    for name in configs.names():
      print(f'{name:16} {configs.get(name).description}')
    return
  try:
    run(args.preset, args)
  except data.DataUnavailableError as error:
    sys.exit(f'error: {error}')
