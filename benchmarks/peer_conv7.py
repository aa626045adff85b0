"""Conv7 epoch time: this project's real loop beside the authors' TensorFlow one.

Ours: the command line itself, ``python -m experiments conv7 --dataset
idx:DIR --epochs 1 --runs laperm --no-progress --set max_examples=N`` in a
subprocess (N = steps * 50 training examples); the run time is
``metrics.json``'s ``seconds`` (model init, compilation, the epoch, one
validation and one test evaluation, two when the best weights are not the
final ones; a warm compilation cache skips most compilation:
``--compilation-cache`` is passed through), the wall time includes the
imports and data loading.

Theirs (when a TensorFlow python and a checkout of
github.com/ihsuy/Train-by-Reconnect are given): their ``LaPermTrainLoop``
with their Conv7 notebook's model, Adam 1e-3, k = 20, batch 50 and
``ImageDataGenerator`` augmentation, on the same Fashion-MNIST arrays (the
first N training images), no validation during the epoch; then, as ours
does, one evaluation of 5,000 images and two of the test images (their
``evaluate``). Their run time is ``fit`` plus those evaluations (tf.function
tracing included); their steady ms/step is the median time between steps
after the first 40 (tracing and the first sync done). Their code is not
changed: a driver written to a temporary directory puts a ``tqdm.notebook``
shim in ``sys.modules`` (their module imports it) and sets
``TF_USE_LEGACY_KERAS=1`` (tf_keras).

The two sides alternate ``--repeats`` times; medians, the ratio ours /
theirs and the load average before and after are printed. Without
TensorFlow or their repository only our side is timed, with a message.

Setup of the peer (once; never commit it):

  python -m venv /work/scratch/tfvenv
  /work/scratch/tfvenv/bin/pip install 'tensorflow==2.21.*' tf_keras \\
      'numpy<2' scipy tqdm
  # their repository, e.g. git clone, or `git archive` of a mirror:
  export LAPERM_PEER_PYTHON=/work/scratch/tfvenv/bin/python
  export LAPERM_PEER_REPO=/work/scratch/tbr

Run from the repository root:

  python benchmarks/peer_conv7.py [--steps 300] [--repeats 2]
      [--dataset-dir /usr/share/datasets/fashion-mnist]

``--steps 1100`` is the preset's full epoch (55,000 training images).
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Optional

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_BATCH_SIZE = 50

# Run by the peer's python: reads the IDX files, builds the notebook's Conv7
# and runs their LaPermTrainLoop for one epoch. Prints one JSON line.
_PEER_DRIVER = textwrap.dedent('''
    import functools, gzip, json, os, sys, time, types
    os.environ['TF_USE_LEGACY_KERAS'] = '1'
    import numpy as np
    import tqdm

    settings = json.loads(sys.argv[1])
    # Their LaPerm.py imports tqdm.notebook's trange (their option 2).
    shim = types.ModuleType('tqdm.notebook')
    shim.trange = functools.partial(tqdm.trange, disable=True)
    sys.modules['tqdm.notebook'] = shim
    sys.path.insert(0, settings['repo'])
    import tensorflow as tf
    from tensorflow.keras.layers import Conv2D, Dense, Dropout, Flatten
    from tensorflow.keras.models import Sequential
    from tensorflow.keras.preprocessing.image import ImageDataGenerator
    from train_by_reconnect.LaPerm import LaPermTrainLoop

    def idx(name):
      with gzip.open(os.path.join(settings['data_dir'], name)) as f:
        raw = f.read()
      dims = raw[3]
      shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big')
               for i in range(dims)]
      return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)

    count = settings['steps'] * settings['batch_size']
    x_all = np.expand_dims(
        idx('train-images-idx3-ubyte.gz').astype('float32') / 255.0, -1)
    y_all = idx('train-labels-idx1-ubyte.gz').astype('int64')
    x_train, y_train = x_all[:count], y_all[:count]
    x_val, y_val = x_all[-5000:], y_all[-5000:]
    test_count = min(count, 10000)
    x_test = np.expand_dims(idx('t10k-images-idx3-ubyte.gz')[:test_count]
                            .astype('float32') / 255.0, -1)
    y_test = idx('t10k-labels-idx1-ubyte.gz')[:test_count].astype('int64')

    # Their Conv7 notebook, verbatim in substance.
    datagen = ImageDataGenerator(rotation_range=10, zoom_range=0.10,
                                 width_shift_range=0.1,
                                 height_shift_range=0.1)
    datagen.fit(x_train)
    initializer = 'he_uniform'
    conv = functools.partial(Conv2D, activation='relu',
                             kernel_initializer=initializer,
                             bias_initializer=initializer)
    model = Sequential([
        conv(32, kernel_size=3, input_shape=(28, 28, 1)),
        conv(32, kernel_size=3),
        conv(32, kernel_size=5, strides=2, padding='same'),
        Dropout(0.4),
        conv(64, kernel_size=3), conv(64, kernel_size=3),
        conv(64, kernel_size=5, strides=2, padding='same'),
        Dropout(0.4),
        conv(128, kernel_size=4), Flatten(), Dropout(0.4),
        Dense(10, activation='softmax', kernel_initializer=initializer,
              bias_initializer=initializer)])
    loop = LaPermTrainLoop(
        model=model, loss='sparse_categorical_crossentropy',
        inner_optimizer=tf.keras.optimizers.Adam(),
        k_schedule=lambda epoch: 20,
        lr_schedule=lambda epoch: 1e-3 * 0.95 ** epoch, skip_bias=False)
    step_starts = []
    grad = loop.grad
    def timed_grad(x, y):
      step_starts.append(time.perf_counter())
      return grad(x, y)
    loop.grad = timed_grad  # An instance attribute: their class unchanged.

    start = time.perf_counter()
    loop.fit(x_train, y_train, batch_size=settings['batch_size'], epochs=1,
             datagen=datagen, validation_data=(x_val, y_val),
             validation_freq=None)
    fit_seconds = time.perf_counter() - start
    loop.evaluate(x_val, y_val)
    loop.evaluate(x_test, y_test)
    loop.evaluate(x_test, y_test)
    seconds = time.perf_counter() - start
    gaps = np.diff(step_starts[40:])
    print(json.dumps({
        'tensorflow': tf.__version__, 'steps': len(step_starts),
        'fit_seconds': fit_seconds, 'seconds': seconds,
        'steady_ms_per_step': float(np.median(gaps) * 1000)
                              if len(gaps) else None}))
''')


def _load() -> str:
  return ', '.join(f'{x:.2f}' for x in os.getloadavg())


def _run_ours(args: argparse.Namespace) -> dict[str, float]:
  """One epoch of the conv7 preset's laperm run through the command line."""
  with tempfile.TemporaryDirectory() as out:
    command = [sys.executable, '-m', 'experiments', 'conv7',
               '--dataset', f'idx:{args.dataset_dir}', '--epochs', '1',
               '--runs', 'laperm', '--no-progress', '--out', out,
               '--set', f'max_examples={args.steps * _BATCH_SIZE}']
    if args.compilation_cache:
      command += ['--compilation-cache', args.compilation_cache]
    start = time.perf_counter()
    subprocess.run(command, cwd=_ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    metrics_files = list(pathlib.Path(out).rglob('metrics.json'))
    if len(metrics_files) != 1:
      raise RuntimeError(f'Expected one metrics.json under {out}, found '
                         f'{metrics_files}.')
    metrics = json.loads(metrics_files[0].read_text())
  return {'seconds': metrics['seconds'], 'wall': wall,
          'steps': metrics['history'][-1]['step']}


def _run_peer(args: argparse.Namespace, python: str, repo: str,
              driver: pathlib.Path) -> dict[str, float]:
  """One epoch of the authors' LaPermTrainLoop (see the module docstring)."""
  settings = json.dumps({'repo': repo, 'data_dir': args.dataset_dir,
                         'steps': args.steps, 'batch_size': _BATCH_SIZE})
  start = time.perf_counter()
  result = subprocess.run([python, str(driver), settings], check=True,
                          capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  wall = time.perf_counter() - start
  return dict(json.loads(result.stdout.strip().splitlines()[-1]), wall=wall)


def _peer_or_reason() -> tuple[str, str, str]:
  """(python, repo, '') when the peer can run, else ('', '', why not)."""
  python = os.environ.get('LAPERM_PEER_PYTHON', '')
  repo = os.environ.get('LAPERM_PEER_REPO', '')
  if not python or not repo:
    return '', '', ('LAPERM_PEER_PYTHON and LAPERM_PEER_REPO are not both '
                    'set (see this script\'s docstring)')
  if not (pathlib.Path(repo) / 'train_by_reconnect' / 'LaPerm.py').exists():
    return '', '', f'{repo} holds no train_by_reconnect/LaPerm.py'
  check = subprocess.run([python, '-c', 'import tensorflow, tf_keras, tqdm'],
                         capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  if check.returncode:
    return '', '', (f'{python} cannot import tensorflow, tf_keras and tqdm: '
                    f'{check.stderr.strip().splitlines()[-1:]}')
  return python, repo, ''


def _ms(milliseconds: Optional[float]) -> str:
  if milliseconds is None:
    return 'n/a (needs over 41 steps)'
  return f'{milliseconds:.1f} ms/step'


def _median(runs: list[dict[str, float]], key: str) -> float:
  return statistics.median(run[key] for run in runs)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=300,
                      help='train steps of the epoch (1100: all of '
                           'Fashion-MNIST\'s 55,000 training images)')
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--dataset-dir',
                      default='/usr/share/datasets/fashion-mnist')
  parser.add_argument('--compilation-cache', default='',
                      help="passed to our command line (DIR or 'off'); "
                           'default: its default cache')
  args = parser.parse_args()
  if not 1 <= args.steps <= 1100 or args.repeats < 1:
    parser.error('--steps must be in [1, 1100] and --repeats >= 1.')
  python, repo, reason = _peer_or_reason()
  if reason:
    print(f'Peer not timed: {reason}. Timing our side only.')
  print(f'load before: {_load()}', flush=True)
  ours, theirs = [], []
  with tempfile.TemporaryDirectory() as scratch:
    driver = pathlib.Path(scratch) / 'peer_driver.py'
    driver.write_text(_PEER_DRIVER)
    for repeat in range(args.repeats):
      ours.append(_run_ours(args))
      print(f'[{repeat + 1}] ours: {ours[-1]["seconds"]:.1f} s run time '
            f'({ours[-1]["wall"]:.1f} s wall) for {ours[-1]["steps"]} '
            'steps', flush=True)
      if python:
        theirs.append(_run_peer(args, python, repo, driver))
        print(f'[{repeat + 1}] theirs (TF {theirs[-1]["tensorflow"]}): '
              f'{theirs[-1]["seconds"]:.1f} s run time (fit '
              f'{theirs[-1]["fit_seconds"]:.1f} s; {theirs[-1]["wall"]:.1f} '
              f's wall) for {theirs[-1]["steps"]} steps, steady '
              f'{_ms(theirs[-1]["steady_ms_per_step"])}', flush=True)
  print(f'load after: {_load()}')
  steps = ours[0]['steps']
  print(f'ours:   run time {_median(ours, "seconds"):.1f} s = '
        f'{_median(ours, "seconds") / steps * 1000:.1f} ms/step, wall '
        f'{_median(ours, "wall"):.1f} s (medians of {args.repeats})')
  if theirs:
    print(f'theirs: run time {_median(theirs, "seconds"):.1f} s = '
          f'{_median(theirs, "seconds") / steps * 1000:.1f} ms/step, wall '
          f'{_median(theirs, "wall"):.1f} s, steady '
          f'{_ms(theirs[0]["steady_ms_per_step"] and _median(theirs, "steady_ms_per_step"))}')
    print(f'ratio ours / theirs: run time '
          f'{_median(ours, "seconds") / _median(theirs, "seconds"):.2f}, '
          f'our run time / their fit alone '
          f'{_median(ours, "seconds") / _median(theirs, "fit_seconds"):.2f}, '
          f'wall {_median(ours, "wall") / _median(theirs, "wall"):.2f}')


if __name__ == '__main__':
  main()
