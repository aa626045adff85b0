"""The ``lm`` preset's pieces: a causal byte-level Transformer, its layout,
its loss in bits per byte, its best weights by validation loss, and text
generation."""

import doctest
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import laperm_jax as lp
from experiments import checkpoints
from experiments import cli
from experiments import configs
from experiments import generate
from experiments import models
from experiments import monitor
from experiments import optimizers
from experiments import steps
from experiments import summaries
from experiments.results import checks as checks_lib
from experiments.results import restore

TINY = dict(width=16, depth=1, num_heads=2, mlp_width=32, max_length=8)


def _tiny_model_and_params(seed=0, **overrides):
  model = models.ByteTransformer(**{**TINY, **overrides})
  params = model.init(jax.random.key(seed),
                      jnp.zeros((1, model.max_length), jnp.int32))['params']
  return model, params


def test_the_model_is_causal():
  model, params = _tiny_model_and_params()
  tokens = jnp.array([[3, 1, 4, 1, 5, 9, 2, 6]])
  changed = tokens.at[0, 5].set(200)
  before = model.apply({'params': params}, tokens)
  after = model.apply({'params': params}, changed)
  assert before.shape == (1, 8, 256)
  np.testing.assert_array_equal(before[0, :5], after[0, :5])
  assert not np.array_equal(before[0, 5:], after[0, 5:])


def test_the_preset_permutes_every_kernel_by_its_fan_in():
  config = configs.get('lm').run_config('laperm')
  config.model.update(TINY)
  model = models.create(config.model, 256)
  layout = optimizers.weight_vector_layout(config.optimizer, model, (8,))
  attention = layout['decoder_1']['attention']
  assert {name: attention[name]['kernel'] for name in attention} == {
      'query': (0,), 'key': (0,), 'value': (0,), 'out': (0, 1)}
  assert layout['decoder_1']['mlp_1']['kernel'] == (0,)
  assert layout['head']['kernel'] == (0,)
  # Read by a gather and an addition (no fan-in), and the LayerNorm scales:
  # one weight vector each.
  assert layout['token_embedding']['embedding'] == (0, 1)
  assert layout['pos_embedding'] == (0, 1)
  assert layout['norm']['scale'] == (0,)
  # The inner optimizer's alone.
  assert layout['norm']['bias'] is lp.NO_FAN_IN
  assert layout['decoder_1']['attention']['query']['bias'] is lp.NO_FAN_IN


def test_adamw_decays_the_kernels_only():
  config = configs.get('lm').run_config('adamw')
  model, params = _tiny_model_and_params()
  tx = optimizers.create(config.optimizer, steps_per_epoch=1)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  decay = config.optimizer.learning_rate * config.optimizer.weight_decay
  for path in models.kernel_paths(params):
    np.testing.assert_allclose(models.get_leaf(updates, path),
                               -decay * models.get_leaf(params, path),
                               rtol=1e-6)
  assert not np.any(updates['token_embedding']['embedding'])
  assert not np.any(updates['norm']['scale'])


@pytest.mark.parametrize('count, batch_size', [(5, 2), (4, 4)])
def test_evaluation_gives_the_mean_loss_per_byte(count, batch_size):
  model, params = _tiny_model_and_params()
  tokens = np.random.default_rng(0).integers(0, 256, (count, 9))
  inputs, labels = tokens[:, :-1], tokens[:, 1:].astype(np.int32)
  evaluate = steps.make_evaluate(model, batch_size)
  loss, accuracy = evaluate(steps.stack_seeds([params]), {},
                            jnp.asarray(inputs, jnp.float32), labels)
  # By hand: -log of each next byte's softmax probability, averaged over
  # every byte of every example.
  logits = np.asarray(model.apply({'params': params}, inputs), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nats = -np.take_along_axis(log_probs, labels[..., None], -1).mean()
  np.testing.assert_allclose(float(loss[0]), nats, rtol=1e-5)
  assert summaries.bits(float(loss[0])) == float(loss[0]) / math.log(2)
  np.testing.assert_allclose(
      float(accuracy[0]), np.mean(logits.argmax(-1) == labels), rtol=1e-6)


def test_best_weights_by_validation_loss():
  progress = checkpoints.Progress()
  assert not progress.improves(math.nan, 0.9, 'val_loss')
  assert progress.improves(2.0, 0.1, 'val_loss')
  progress.best_val_loss = 2.0
  assert not progress.improves(2.0, 0.9, 'val_loss')  # Ties keep the first.
  assert progress.improves(1.5, 0.0, 'val_loss')
  assert progress.improves(1.0, 0.5, 'val_accuracy')
  with pytest.raises(ValueError, match="best_by 'loss'"):
    progress.improves(1.0, 0.5, 'loss')


def test_monitored_kernels_are_named_by_path():
  _, params = _tiny_model_and_params()
  config = ml_collections.ConfigDict({'monitor_kernels': (
      'decoder_1/mlp_1/kernel', 'head/kernel')})
  assert monitor.kernel_paths(config, params) == [
      ('decoder_1', 'mlp_1', 'kernel'), ('head', 'kernel')]
  config.monitor_kernels = ('decoder_1/mlp/kernel',)
  with pytest.raises(ValueError, match=r"\['decoder_1/mlp/kernel'\] name no"):
    monitor.kernel_paths(config, params)
  config.monitor_kernels = ()
  assert monitor.kernel_paths(config, params) == [
      ('decoder_1', 'attention', 'query', 'kernel')]


def _greedy_by_hand(model, params, prompt, length):
  text = list(prompt)
  for _ in range(length):
    window = jnp.array([text[-model.max_length:]])
    text.append(int(jnp.argmax(model.apply({'params': params}, window)[0, -1])))
  return bytes(text[len(prompt):])


def test_greedy_generation_equals_a_loop_by_hand():
  # 5 + 12 bytes: the window slides past the 8 positions.
  model, params = _tiny_model_and_params(seed=3)
  written = generate.generate(model, params, b'hello', 12, jax.random.key(0))
  assert written == _greedy_by_hand(model, params, b'hello', 12)


def test_sampled_generation_is_reproducible_from_the_key():
  model, params = _tiny_model_and_params()
  def write(seed):
    return generate.generate(model, params, b'The ', 24,
                             jax.random.key(seed), temperature=1.0)
  assert write(1) == write(1)
  assert write(1) != write(2)
  assert len(write(1)) == 24
  with pytest.raises(ValueError, match='at least one byte'):
    generate.generate(model, params, b'', 4, jax.random.key(0))


def _write_text_corpus(directory):
  """60 small files of English-like text; every split gets some."""
  words = ('the list type has methods append extend insert remove pop '
           'index count sort reverse copy and a dictionary maps keys to '
           'values while a set holds unique items').split()
  rng = np.random.default_rng(0)
  for index in range(60):
    path = directory / f'part{index % 3}' / f'doc{index}.rst.txt'
    path.parent.mkdir(parents=True, exist_ok=True)
    sentences = [' '.join(rng.choice(words, 12)).capitalize() + '.'
                 for _ in range(30)]
    path.write_text('\n'.join(sentences))


def test_lm_quick_trains_both_optimizers_on_a_small_text(tmp_path, capsys):
  corpus = tmp_path / 'corpus'
  _write_text_corpus(corpus)
  argv = ['lm', '--quick', '--dataset', f'text:{corpus}', '--no-progress',
          '--out', str(tmp_path / 'out'), '--set', 'model.depth=1',
          '--set', 'model.width=32', '--set', 'model.mlp_width=64']
  results = cli.run('lm', cli.parser().parse_args(argv))
  assert [seeds[0].name for seeds in results] == ['laperm', 'adamw']
  laperm, adamw = results[0][0], results[1][0]
  for result in (laperm, adamw):
    assert all(np.isfinite(record['train_loss'])
               for record in result.history)
    # Best weights by validation loss; the losses are per byte, in nats.
    val_losses = [record['val_loss'] for record in result.history
                  if 'val_loss' in record]
    assert result.best_val_loss == min(val_losses)
    assert 0 < result.test_loss < math.log(256) + 1
  metrics = json.loads((tmp_path / 'out' / 'laperm' / 'metrics.json'
                        ).read_text())
  assert metrics['test_loss_of_best'] == laperm.test_loss
  # Two monitored kernels, named, at every evaluation.
  assert {entry['kernel'] for entry in laperm.monitor} == set(
      configs.get('lm').config.monitor_kernels)
  # Rebuilt from its files as the results pipeline does: LaPerm's kernels
  # are permutations of the same initial weights as AdamW's, fan-in by
  # fan-in, bit for bit.
  restored = {name: restore.restore(tmp_path / 'out' / name)
              for name in ('laperm', 'adamw')}
  laperm_run = restored['laperm']
  arrays = laperm_run.arrays[0]
  checks = checks_lib.derived_layout_seed(
      laperm_run.initials[0],
      lp.synchronize(arrays['state'].params, arrays['state'].opt_state),
      arrays['best_params'], restored['adamw'].initials[0],
      checks_lib.kernel_axes(laperm_run.layout, laperm_run.initials[0]))
  assert len(checks['kernels_exact_permutation_of_initial']) == 7
  assert all(checks['kernels_exact_permutation_of_initial'].values())
  assert checks['best_kernels_exact_permutation_of_initial']
  assert checks['adam_same_initial_weights']
  assert sum(checks['fraction_moved'].values()) > 0
  table = capsys.readouterr().out
  assert 'test bpb' in table and 'laperm' in table


def test_generate_docstring_example_runs():
  # experiments/ is outside pytest's doctest paths.
  test = doctest.DocTestParser().get_doctest(
      generate.generate.__doc__, dict(vars(generate)), 'generate', None, 0)
  assert test.examples
  runner = doctest.DocTestRunner()
  runner.run(test)
  assert runner.failures == 0
