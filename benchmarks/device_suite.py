"""The timings worth taking on an accelerator, in one go, with the device.

Runs, one after the other, each as its own process on the default JAX
backend: the sync cost (`sync_cost.py`), the cost of LaPerm in a jitted
train step (`step_overhead.py`, MLP and Conv7), and one epoch of the
`conv7` and `f1` presets through the command line (run time from their
`metrics.json`). Prints the device, the JAX version and the load first,
and each script's own table. `--quick` runs small versions of everything,
on CPU in a few minutes.

Run from the repository root:
`python benchmarks/device_suite.py [--quick] [--dataset idx:DIR]`.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load() -> str:
  return ', '.join(f'{x:.2f}' for x in os.getloadavg())


def _run(title: str, argv: list[str]) -> float:
  """Runs ``python ARGV`` from the root, its output shown; returns seconds."""
  print(f'\n== {title}: python {" ".join(argv)}', flush=True)
  start = time.perf_counter()
  subprocess.run([sys.executable, *argv], cwd=ROOT, check=True)
  return time.perf_counter() - start


def _epoch(preset: str, dataset: str, quick: bool) -> None:
  """One epoch of a preset's LaPerm run; prints ms per step and run time."""
  with tempfile.TemporaryDirectory() as out:
    argv = ['-m', 'experiments', preset, '--dataset', dataset, '--epochs',
            '1', '--runs', 'laperm', '--no-progress', '--out', out]
    if quick:
      argv += ['--set', 'max_examples=512']
    wall = _run(f'one {preset} epoch', argv)
    metrics = json.loads((pathlib.Path(out) / 'laperm' /
                          'metrics.json').read_text())
    steps = metrics['history'][-1]['step']
    print(f'{preset}: {steps} steps, run time {metrics["seconds"]:.1f} s '
          f'({metrics["seconds"] / steps * 1e3:.1f} ms/step, compilation '
          f'and evaluation included), command wall {wall:.1f} s')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true',
                      help='small versions of every benchmark')
  parser.add_argument('--dataset', default='digits',
                      help="the presets' data, e.g. "
                      'idx:/usr/share/datasets/fashion-mnist')
  args = parser.parse_args()
  print(f'device: {jax.devices()} ({jax.default_backend()}), jax '
        f'{jax.__version__}; load average {_load()}', flush=True)
  _run('sync cost', ['benchmarks/sync_cost.py', '--repeats', '3'] +
       (['--quick'] if args.quick else []))
  for model in ('mlp', 'conv7'):
    _run(f'step overhead, {model}',
         ['benchmarks/step_overhead.py', '--model', model] +
         (['--repeats', '2', '--steps', '2'] if args.quick else []))
  for preset in ('conv7', 'f1'):
    _epoch(preset, args.dataset, args.quick)
  print(f'\nload average after: {_load()}')


if __name__ == '__main__':
  main()
