"""Every preset builds and trains a few steps on digits (``--quick``).

Each run compiles its own train step, which on CPU takes from seconds (the
MLPs) to minutes (Conv13). The default suite runs one preset per model
family that no other test trains; set ``LAPERM_SLOW_TESTS=1`` to run every
preset (about 7 minutes with ``-n 2`` on 2 CPU cores).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from experiments import cli
from experiments import configs
from experiments.configs import base
from experiments import models
from experiments import state as state_lib
from experiments import summaries

# One run per preset keeps the suite fast (each run compiles its own train
# step); the run picked is the one the preset exists for. ResNet presets run
# with n = 1 (depth 8): same blocks, BatchNorm, pruning and resets, less to
# compile.
RUNS = {
    'a3-all': 'adam-dropout', 'conv7': 'lookahead', 'prune-sweep': 'pruned-50',
    'gamma-beta': 'laperm-gamma-beta-reset', 'demo': 'laperm-weight-agnostic',
    'conv13': 'adam',
}
SMALLER = {'resnet50': ['model.blocks_per_stage=1'],
           'prune-sweep': ['model.blocks_per_stage=1'],
           'gamma-beta': ['model.blocks_per_stage=1']}


FAST = ('demo', 'a3-all', 'a3-sgd', 'f1', 'f2-size-aware')
RUN_ALL = bool(os.environ.get('LAPERM_SLOW_TESTS'))


@pytest.mark.parametrize('preset', [
    pytest.param(name, marks=pytest.mark.skipif(
        name not in FAST and not RUN_ALL, reason='slow to compile on CPU; '
        'set LAPERM_SLOW_TESTS=1'))
    for name in configs.names()])
def test_preset_runs_quick_on_digits(preset, tmp_path, capsys):
  preset_runs = configs.get(preset).runs
  run = RUNS.get(preset, next(iter(preset_runs)))
  argv = [preset, '--quick', '--dataset', 'digits', '--no-progress',
          '--out', str(tmp_path), '--runs', run]
  for override in SMALLER.get(preset, []):
    argv += ['--set', override]
  results = cli.run(preset, cli.parser().parse_args(argv))
  assert [[result.name for result in seeds] for seeds in results] == [[run]]
  history = results[0][0].history
  assert sorted({h['epoch'] for h in history}) == [1, 2]
  assert all(np.isfinite(h['train_loss']) for h in history)
  assert 'val_accuracy' in history[-1]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert 0.0 <= summary['runs'][run]['test_accuracy_of_best']['mean'] <= 1.0
  assert (tmp_path / run / 'metrics.json').is_file()
  assert run in capsys.readouterr().out  # The final table.


@pytest.mark.parametrize('preset', configs.names())
def test_quick_runs_are_small_with_syncs_inside(preset):
  for run in configs.get(preset).runs:
    full = configs.get(preset).run_config(run)
    quick = configs.get(preset).run_config(run, quick=True)
    for key, value in base.QUICK_OVERRIDES.items():
      assert quick[key] == value, (run, key)
    assert quick.optimizer.sync_period == min(full.optimizer.sync_period,
                                              base.QUICK_MAX_SYNC_PERIOD)
    assert quick.validation_size <= base.QUICK_MAX_VALIDATION
    if full.eval_every_steps:
      assert quick.eval_every_steps <= base.QUICK_MAX_SYNC_PERIOD
    # Everything else is the run's: the model, the optimizer, the data.
    assert quick.model == full.model and quick.init == full.init
    assert quick.optimizer.name == full.optimizer.name
    assert quick.dataset == full.dataset
    # Syncs inside the run, even if the validation split came out of the
    # examples kept.
    steps = quick.epochs * ((quick.max_examples - quick.validation_size) //
                            quick.batch_size)
    assert steps >= 2 * quick.optimizer.sync_period, run


@pytest.mark.parametrize('preset', configs.names())
def test_a_validation_split_too_large_for_digits_is_scaled(preset):
  for run in configs.get(preset).runs:
    config = configs.get(preset).run_config(run, {'dataset': 'digits'})
    asked = config.validation_size
    note = base.fit_validation(config, 1497)
    if asked < 1497:
      assert note is None and config.validation_size == asked
    else:
      assert config.validation_size == 149
      assert note.endswith(f"instead of the preset's {asked}")


def test_a_validation_split_asked_for_is_never_scaled():
  config = configs.get('f1').run_config('laperm')
  with pytest.raises(base.ValidationSizeError,
                     match='hold out from 1 to 1496'):
    base.fit_validation(config, 1497, scale=False)
  assert config.validation_size == 5000


def test_quick_and_prune_overrides():
  args = cli.parser().parse_args(['resnet50', '--quick', '--prune', '0.5'])
  config = cli.run_configs(configs.get('resnet50'), args)['laperm']
  assert (config.init.kind, config.init.prune_rate) == ('prune', 0.5)
  assert config.epochs == 2 and config.max_examples == 256
  assert config.optimizer.sync_period == base.QUICK_MAX_SYNC_PERIOD
  args = cli.parser().parse_args(['resnet50', '--prune', '0.5'])
  config = cli.run_configs(configs.get('resnet50'), args)['laperm']
  assert config.optimizer.sync_period == 800  # The paper's k when pruned.
  assert config.dataset == 'cifar10'  # Presets keep their paper dataset.


def test_presets_follow_the_paper_table():
  conv7 = configs.get('conv7').config
  assert (conv7.batch_size, conv7.epochs, conv7.optimizer.decay_rate) == (
      50, 45, 0.95)
  conv4 = configs.get('conv4').config
  assert (conv4.epochs, conv4.optimizer.decay_rate,
          conv4.optimizer.decay_epochs, conv4.optimizer.sync_period,
          conv4.l2) == (125, 0.6, 10, 1000, 1e-4)
  f1 = configs.get('f1').config
  assert (f1.batch_size, f1.epochs, f1.optimizer.sync_period,
          f1.init.value) == (128, 10, 250, 0.08)
  assert set(configs.get('a3-all').runs) == {'sgd', 'adam', 'adam-dropout',
                                             'adam-l2'}


@pytest.mark.parametrize('preset, normalization', [
    # The authors' MNIST notebooks (F1_and_F2, Conv7) divide pixels by 255.
    ('f1', 'scale'), ('f2', 'scale'), ('f2-size-aware', 'scale'),
    ('conv7', 'scale'),
    # The paper z-scores CIFAR-10 (A.5.3); ResNet50 subtracts the pixel mean.
    ('conv2', 'zscore'), ('conv13', 'zscore'), ('resnet50', 'pixel_mean'),
])
def test_presets_normalize_as_the_authors(preset, normalization):
  assert configs.get(preset).config.normalization == normalization


def test_weight_agnostic_presets_follow_the_authors():
  f1, f2, size_aware = (configs.get(name).config
                        for name in ('f1', 'f2', 'f2-size-aware'))
  assert (f1.init.keep, f2.init.keep) == (0.6, 0.1)  # A.5.5.
  # The notebook's exact rates, not A.5.0's rounded 7/14/33%.
  assert size_aware.init.keep_per_kernel == (1 / 15, 1 / 7, 1 / 3)
  assert not size_aware.init.size_aware
  for config in (f1, f2, size_aware):
    # Evaluated right after every sync, seeds trained together.
    assert config.eval_every_steps == config.optimizer.sync_period == 250
    assert config.seeds_in_one_step


def test_size_aware_f2_keeps_one_fraction_per_kernel():
  config = configs.get('f2-size-aware').config
  model = models.create(config.model, 10)
  state = state_lib.create_train_state(config, model, (28, 28, 1), 1)
  kernels = {name: state.params[name]['kernel']
             for name in ('hidden1', 'hidden2', 'head')}
  for (name, kernel), keep in zip(kernels.items(), (1 / 15, 1 / 7, 1 / 3)):
    assert int(np.count_nonzero(kernel)) == round(keep * kernel.size), name
    np.testing.assert_array_equal(np.unique(kernel),
                                  np.array([0, 0.03], np.float32))


def test_conv7_permutes_biases_as_the_authors_notebook():
  config = configs.get('conv7').config
  assert config.optimizer.permute_biases
  assert config.optimizer.sync_period == 20
  assert config.eval_every_steps % config.optimizer.sync_period == 0
  model = models.create(config.model, 10)
  state = state_lib.create_train_state(config, model, (28, 28, 1), 1)
  sorted_init = optax.tree.get(state.opt_state, 'sorted_init')
  held = jax.tree.leaves(
      sorted_init, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  biases = [leaf for leaf in jax.tree.leaves(state.params) if leaf.ndim == 1]
  assert biases and len(held) == len(jax.tree.leaves(state.params))
  assert not any(isinstance(leaf, optax.MaskedNode) for leaf in held)


def test_command_line_keeps_compiled_programs_for_reruns(tmp_path):
  command = [sys.executable, '-m', 'experiments', 'f1', '--quick',
             '--dataset', 'digits', '--no-progress', '--compilation-cache']
  # JAX logs persistent-cache hits to stderr when it logs compilations.
  env = dict(os.environ, JAX_LOG_COMPILES='1')

  def run(cache, out):
    return subprocess.run(command + [cache, '--out', str(tmp_path / out)],
                          check=True, capture_output=True, text=True,
                          timeout=300, env=env).stderr

  hit = 'Persistent compilation cache hit'
  assert hit not in run(str(tmp_path / 'cache'), 'first')
  assert any((tmp_path / 'cache').iterdir())
  assert hit in run(str(tmp_path / 'cache'), 'rerun')
  assert hit not in run('off', 'off')


def test_command_line_reports_unavailable_data(tmp_path):
  completed = subprocess.run(
      [sys.executable, '-m', 'experiments', 'f1', '--dataset',
       f'idx:{tmp_path}', '--out', str(tmp_path / 'out')],
      capture_output=True, text=True, timeout=120, check=False)
  assert completed.returncode == 1
  assert 'apt-get install dataset-fashion-mnist' in completed.stderr


@pytest.mark.parametrize('text, seeds', [('3', (5, 6, 7)), ('4,1', (4, 1)),
                                         ('2,', (2,))])
def test_seeds_option_is_a_count_from_seed_or_a_list(text, seeds):
  args = cli.parser().parse_args(['f1', '--seed', '5', '--seeds', text])
  config = cli.run_configs(configs.get('f1'), args)['laperm']
  assert configs.run_seeds(config, args.seeds) == seeds


@pytest.mark.parametrize('text', ['0', '-2', 'a', '1,1', '1,-1'])
def test_seeds_option_refuses_bad_input(text, capsys):
  with pytest.raises(SystemExit) as error:
    cli.parser().parse_args(['f1', '--seeds', text])
  assert error.value.code == 2
  assert '--seeds' in capsys.readouterr().err


@pytest.mark.parametrize('together', [True, False])
def test_seeds_give_mean_and_std_in_the_summary(tmp_path, together):
  argv = ['f1', '--quick', '--dataset', 'digits', '--no-progress', '--out',
          str(tmp_path), '--seeds', '0,2',
          '--set', f'seeds_in_one_step={together}']
  results = cli.run('f1', cli.parser().parse_args(argv))
  assert [[result.seed for result in seeds] for seeds in results] == [[0, 2]]
  summary = json.loads((tmp_path / 'summary.json').read_text())['runs'][
      'laperm']
  tests = [result.test_accuracy for result in results[0]]
  assert summary['seeds'] == [0, 2]
  assert [seed['test_accuracy_of_best'] for seed in summary['per_seed']] == (
      tests)
  np.testing.assert_allclose(
      [summary['test_accuracy_of_best'][key] for key in ('mean', 'std')],
      [np.mean(tests), np.std(tests)])
  assert summary['seconds'] == pytest.approx(
      sum(result.seconds for result in results[0]))
  seed_files = [json.loads(
      (tmp_path / 'laperm' / f'seed-{seed}' / 'metrics.json').read_text())
                for seed in (0, 2)]
  # What the results check recomputes from the committed seed files.
  assert summary == summaries.run_summary(seed_files)
  # Together: one checkpoint of both seeds; apart: one per seed.
  assert (tmp_path / 'laperm' / 'checkpoints').is_dir() == together


def test_per_kernel_fractions_are_checked():
  config = configs.get('f2-size-aware').config
  config.init.keep_per_kernel = (0.5, 0.5)
  model = models.create(config.model, 10)
  with pytest.raises(ValueError, match='3 kernels'):
    state_lib.create_train_state(config, model, (28, 28, 1), 1)
  config.init.keep_per_kernel = (0.5, 0.5, 0.5)
  config.init.size_aware = True
  with pytest.raises(ValueError, match='size_aware'):
    state_lib.create_train_state(config, model, (28, 28, 1), 1)
