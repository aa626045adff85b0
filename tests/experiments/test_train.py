"""The training loop: bitwise resume, LaPerm's exact weights, optimizers."""

import json
import logging

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import laperm_jax as lp
from experiments import data
from experiments import models
from experiments import optimizers
from experiments import state as state_lib
from experiments import steps
from experiments import train
from experiments.configs import base


def _config(**overrides):
  config = base.get_config()
  config.update_from_flattened_dict({
      'dataset': 'digits', 'validation_size': 100, 'max_examples': 200,
      'batch_size': 20, 'eval_batch_size': 64, 'epochs': 3,
      'optimizer.sync_period': 7, 'progress': False, **overrides})
  return config


def _splits(config):
  splits, num_classes, _ = data.load_splits(config)
  return splits, num_classes


def _run(config, workdir, **kwargs):
  splits, num_classes = _splits(config)
  return train.train_and_evaluate(config, splits, num_classes, workdir,
                                  **kwargs)


@pytest.mark.parametrize('overrides', [
    # Dropout; 10 steps per epoch against k = 7: epochs end mid-period.
    {'model.dropout_rates': (0.4, 0.3), 'monitor': True},
    # BatchNorm, augmentation, gamma-beta reset, pruned initial weights.
    {'model.name': 'conv2', 'augment.rotation': 15.0, 'augment.shift': 0.1,
     'augment.horizontal_flip': True, 'optimizer.gamma_beta_reset': True,
     'init.kind': 'prune', 'init.prune_rate': 0.5, 'epochs': 2},
], ids=['mlp-dropout', 'conv2-bn-augment'])
def test_resume_equals_uninterrupted_bitwise(tmp_path, overrides):
  config = _config(**overrides)
  uninterrupted = _run(config, tmp_path / 'uninterrupted')
  stopped = ml_collections.ConfigDict(config.to_dict())
  stopped.epochs = config.epochs - 1
  _run(stopped, tmp_path / 'resumed')
  resumed = _run(config, tmp_path / 'resumed', resume=True)
  chex.assert_trees_all_equal(resumed.state.params,
                              uninterrupted.state.params)
  chex.assert_trees_all_equal(resumed.state.opt_state,
                              uninterrupted.state.opt_state)
  chex.assert_trees_all_equal(resumed.state.batch_stats,
                              uninterrupted.state.batch_stats)
  chex.assert_trees_all_equal(resumed.best_params, uninterrupted.best_params)
  assert resumed.history == uninterrupted.history
  assert len(resumed.monitor) == len(uninterrupted.monitor)
  for entry, expected in zip(resumed.monitor, uninterrupted.monitor):
    chex.assert_trees_all_equal(entry, expected)


def test_checkpoints_are_not_overwritten_without_resume(tmp_path):
  config = _config(epochs=1)
  _run(config, tmp_path)
  with pytest.raises(FileExistsError, match='resume'):
    _run(config, tmp_path)


def test_laperm_learns_with_exactly_permuted_weights(tmp_path):
  config = _config(**{'max_examples': 0, 'epochs': 6, 'batch_size': 50,
                      'optimizer.learning_rate': 3e-3,
                      'optimizer.sync_period': 20})
  result = _run(config, tmp_path)
  initial = state_lib.create_train_state(config, models.create(
      config.model, 10), (8, 8, 1), 1).params
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      result.best_params)[0]:
    initial_leaf = initial
    for key in path:
      initial_leaf = initial_leaf[key.key]
    if leaf.ndim >= 2:  # Kernels: the same values, reconnected.
      chex.assert_trees_all_equal(lp.sort_vectors(leaf),
                                  lp.sort_vectors(initial_leaf))
      assert not np.array_equal(leaf, initial_leaf)
  assert result.test_accuracy > 0.8, result.test_accuracy  # Chance: 0.1.
  metrics = json.loads((tmp_path / 'metrics.json').read_text())
  assert [h['epoch'] for h in metrics['history']] == list(range(1, 7))
  assert metrics['best_val_accuracy'] == max(
      h['val_accuracy'] for h in metrics['history'])


def test_lookahead_is_evaluated_on_its_slow_weights(tmp_path):
  result = _run(_config(**{'optimizer.name': 'lookahead', 'epochs': 1}),
                tmp_path)
  params = result.state.params
  assert isinstance(params, optax.LookaheadParams)
  chex.assert_trees_all_equal(result.best_params, params.slow)


@pytest.mark.parametrize('name', optimizers.NAMES)
def test_every_optimizer_trains(tmp_path, name):
  result = _run(_config(**{'optimizer.name': name, 'epochs': 1}), tmp_path)
  assert np.isfinite(result.history[0]['train_loss'])
  assert 0.0 <= result.test_accuracy <= 1.0


def test_learning_rate_schedules_follow_the_paper():
  config = base.get_config().optimizer
  config.learning_rate = 1.0
  config.schedule = 'exponential'
  config.decay_rate, config.decay_epochs = 0.6, 10
  schedule = optimizers.learning_rate(config, steps_per_epoch=5)
  np.testing.assert_allclose([schedule(49), schedule(50), schedule(100)],
                             [1.0, 0.6, 0.36], rtol=1e-6)
  config.schedule = 'piecewise'
  config.boundaries, config.scales = (10, 20), (0.5, 0.2)
  schedule = optimizers.learning_rate(config, steps_per_epoch=5)
  np.testing.assert_allclose([schedule(49), schedule(50), schedule(100)],
                             [1.0, 0.5, 0.1], rtol=1e-6)


def test_l2_penalty_covers_hidden_kernels_only():
  params = {'hidden1': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)},
            'head': {'kernel': jnp.ones((3, 4))}}
  assert float(steps.l2_penalty(params)) == 6.0


def test_pruned_and_shared_value_initial_weights():
  config = _config()
  config.model.name = 'f2'
  model = models.create(config.model, 10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))['params']
  config.init.kind, config.init.prune_rate = 'prune', 0.5
  pruned = state_lib.initial_params(config.init, jax.random.key(1), params)
  zeros = {name: float(jnp.mean(layer['kernel'] == 0))
           for name, layer in pruned.items()}
  # The input layer is capped at 20% (A.5.4), even though 'head' sorts first.
  assert zeros == pytest.approx({'hidden1': 0.2, 'hidden2': 0.5,
                                 'head': 0.5}, abs=0.01)
  config.init.kind, config.init.value, config.init.keep = (
      'shared_value', 0.03, 0.1)
  config.init.size_aware = True
  shared = state_lib.initial_params(config.init, jax.random.key(1), params)
  nonzero = {name: float(jnp.mean(layer['kernel'] != 0))
             for name, layer in shared.items()}
  assert all(set(np.unique(layer['kernel']).tolist()) <= {0.0, np.float32(0.03)}
             for layer in shared.values())
  # Size-aware: larger kernels keep smaller fractions (on 8x8 inputs the
  # two hidden kernels both hold 8192 weights).
  assert nonzero['hidden1'] == nonzero['hidden2'] < nonzero['head']


def test_unavailable_dataset_is_an_error_not_a_fallback(tmp_path):
  with pytest.raises(data.DataUnavailableError):
    _splits(_config(dataset=f'idx:{tmp_path}'))


def _assert_same_run(result, expected):
  chex.assert_trees_all_equal(result.state.params, expected.state.params)
  chex.assert_trees_all_equal(result.state.opt_state,
                              expected.state.opt_state)
  chex.assert_trees_all_equal(result.best_params, expected.best_params)
  assert result.history == expected.history
  assert (result.best_step, result.test_accuracy,
          result.final_test_accuracy) == (expected.best_step,
                                          expected.test_accuracy,
                                          expected.final_test_accuracy)


@pytest.mark.parametrize('overrides', [
    {},
    # F1-like: shared-value kernels, blocks of scanned steps.
    {'model.name': 'f1', 'init.kind': 'shared_value', 'init.value': 0.08,
     'steps_per_call': 4},
], ids=['mlp', 'f1-blocks'])
def test_seeds_trained_together_equal_each_seed_alone(tmp_path, overrides):
  config = _config(seeds_in_one_step=True, epochs=2, **overrides)
  splits, num_classes = _splits(config)
  together = train.train_seeds(config, (3, 1, 2), splits, num_classes,
                               tmp_path / 'together', mesh=None)
  alone = train.train_seeds(config, (1,), splits, num_classes,
                            tmp_path / 'alone', mesh=None)[0]
  assert [result.seed for result in together] == [3, 1, 2]
  _assert_same_run(together[1], alone)
  # Different seeds: different initial weights, different runs.
  assert not np.array_equal(together[0].best_params['head']['kernel'],
                            alone.best_params['head']['kernel'])
  metrics = json.loads((tmp_path / 'together' / 'seed-2' /
                        'metrics.json').read_text())
  assert (metrics['seed'], metrics['config']['seed']) == (2, 2)
  assert metrics['test_accuracy_of_best'] == together[2].test_accuracy


def test_seeds_of_a_run_share_their_initialization_programs(caplog):
  config = _config()
  model = models.create(config.model, 10)
  tx = optimizers.create(config.optimizer, 10)
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    states = [state_lib.create_train_state(_config(seed=seed), model, (8, 8, 1),
                                       10, tx=tx) for seed in (0, 1, 2)]
  compiled = [record.getMessage() for record in caplog.records
              if record.getMessage().startswith('Compiling jit(')]
  assert sum('jit(init)' in message for message in compiled) == 1
  assert sum('jit(create)' in message for message in compiled) == 1
  kernels = [state.params['hidden1']['kernel'] for state in states]
  assert not np.array_equal(kernels[0], kernels[1])
  assert not np.array_equal(kernels[1], kernels[2])


def test_initial_run_rebuilds_the_initial_weights_training_starts_from(
    tmp_path):
  config = _config(**{'epochs': 1, 'optimizer.sync_period': 3})
  splits, num_classes = _splits(config)
  result = train.train_and_evaluate(config, splits, num_classes, tmp_path)
  saved = ml_collections.ConfigDict(
      json.loads((tmp_path / 'metrics.json').read_text())['config'])
  rebuilt = state_lib.initial_run(saved, (config.seed, 7), num_classes=10,
                                  image_shape=(8, 8, 1), steps_per_epoch=1)
  assert [c.seed for c in rebuilt.seed_configs] == [config.seed, 7]
  assert rebuilt.layout is None  # The default layout: all axes but the last.
  initial = optimizers.train_params(rebuilt.states[0].params)
  trained = result.best_params  # Synchronized: permutations of the initial.
  chex.assert_trees_all_equal(lp.sort_vectors(trained['hidden1']['kernel']),
                              lp.sort_vectors(initial['hidden1']['kernel']))
  assert not np.array_equal(
      optimizers.train_params(rebuilt.states[1].params)['hidden1']['kernel'],
      initial['hidden1']['kernel'])
  # One optimizer for every seed, so that their states stack.
  assert jax.tree.structure(rebuilt.states[0].opt_state) == jax.tree.structure(
      rebuilt.states[1].opt_state)


def test_seeds_not_trained_together_train_one_after_another(tmp_path):
  config = _config(epochs=1)
  splits, num_classes = _splits(config)
  results = train.train_seeds(config, (4, 1), splits, num_classes,
                              tmp_path / 'apart', mesh=None)
  alone = train.train_seeds(config, (1,), splits, num_classes,
                            tmp_path / 'alone', mesh=None)[0]
  assert [result.seed for result in results] == [4, 1]
  _assert_same_run(results[1], alone)
  for seed in (4, 1):  # Each seed checkpoints in its own directory.
    assert (tmp_path / 'apart' / f'seed-{seed}' / 'checkpoints').is_dir()
    metrics = json.loads((tmp_path / 'apart' / f'seed-{seed}' /
                          'metrics.json').read_text())
    assert metrics['seed'] == seed
  with pytest.raises(ValueError, match='distinct'):
    train.train_seeds(config, (1, 1), splits, num_classes, tmp_path / 'x',
                      mesh=None)


def test_loops_of_steps_equal_single_steps_in_one_program(tmp_path, caplog):
  # 10 steps per epoch, evaluated after every 7th: segments of 7, 3, 4 and
  # 6 steps, run in loops of at most 3 (3, 3, 1, 3, 3, 1, 3, 3).
  single = _run(_config(epochs=2, eval_every_steps=7), tmp_path / 'single')
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    loops = _run(_config(epochs=2, eval_every_steps=7, steps_per_call=3),
                 tmp_path / 'loops')
  _assert_same_run(loops, single)
  compiled = [record.getMessage() for record in caplog.records
              if record.getMessage().startswith('Compiling jit(')]
  assert sum('jit(block)' in message for message in compiled) == 1


def test_evaluation_right_after_every_sync(tmp_path):
  # 10 steps per epoch, k = 7: syncs after steps 7, 14, 21, 28.
  config = _config(eval_every_steps=7, **{'optimizer.sync_period': 7})
  result = _run(config, tmp_path)
  evaluated = [h['step'] for h in result.history if 'val_accuracy' in h]
  assert evaluated == [7, 14, 21, 28, 30]  # And at the end of training.
  assert [h['step'] for h in result.history] == [7, 10, 14, 20, 21, 28, 30]
  assert [h['epoch'] for h in result.history] == [1, 1, 2, 2, 3, 3, 3]
  best = max((h for h in result.history if 'val_accuracy' in h),
             key=lambda h: h['val_accuracy'])
  assert (result.best_step, result.best_val_accuracy) == (
      best['step'], best['val_accuracy'])
  # The weights kept are right-after-sync weights: exact permutations.
  initial = state_lib.create_train_state(config, models.create(
      config.model, 10), (8, 8, 1), 1).params
  chex.assert_trees_all_equal(
      lp.sort_vectors(result.best_params['hidden1']['kernel']),
      lp.sort_vectors(initial['hidden1']['kernel']))


def test_record_points_cover_epochs_and_evaluations():
  config = _config(eval_every_steps=4, epochs=2)
  assert train.record_points(config, 10, 0) == {4: True, 8: True, 10: False}
  assert train.record_points(config, 10, 1) == {2: True, 6: True, 10: True}
  config = _config(eval_every=2, epochs=3)
  assert [train.record_points(config, 5, epoch) for epoch in range(3)] == [
      {5: False}, {5: True}, {5: True}]


@pytest.mark.parametrize('overrides,final_is_best', [
    ({'epochs': 1}, True),  # One evaluation: the best weights are the final.
    ({'epochs': 3, 'optimizer.learning_rate': 0.3}, False),
])
def test_final_weights_are_scored_on_test_unless_they_are_the_best(
    tmp_path, monkeypatch, overrides, final_is_best):
  config = _config(**overrides)
  splits, num_classes = _splits(config)
  test_size = len(splits['test'].labels)
  test_calls = []
  make_evaluate = steps.make_evaluate

  def counting_make_evaluate(*args, **kwargs):
    evaluate = make_evaluate(*args, **kwargs)

    def counted(params, batch_stats, images, labels):
      if images.shape[0] == test_size:
        test_calls.append(params)
      return evaluate(params, batch_stats, images, labels)
    return counted

  monkeypatch.setattr(steps, 'make_evaluate', counting_make_evaluate)
  result = train.train_and_evaluate(config, splits, num_classes, tmp_path)
  last_step = result.history[-1]['step']
  assert (result.best_step == last_step) == final_is_best
  assert len(test_calls) == (1 if final_is_best else 2)
  if final_is_best:
    assert result.final_test_accuracy == result.test_accuracy
