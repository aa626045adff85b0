"""Every preset's jitted programs lower for GPU and TPU, checked on CPU.

For every run of every preset, on its paper dataset's image shape (traced
abstractly: no data, no compilation), ``jax.export`` lowers for ``cuda``
and ``tpu`` the programs a run calls: the epoch's draw, the train call (one
step, or a loop of steps), the evaluation and the weights evaluated. The
modules hold no 64-bit floats and sort nothing 64-bit (JAX's own random
bits count in 64-bit integers, which is why the programs that draw random
numbers hold some), and LaPerm's runs sort with the stable key-value sort
meant for GPUs and TPUs: CPU's 64-bit radix pass stays out.
"""

import re

import jax
import jax.numpy as jnp
import pytest

from experiments import configs
from experiments import data
from experiments import state as state_lib
from experiments import steps

IMAGE_SHAPES = {'digits': (8, 8, 1), 'mnist': (28, 28, 1),
                'fashion_mnist': (28, 28, 1),
                'cifar10': (32, 32, 3)}
# Same blocks, BatchNorm, pruning and resets as depth 50, less to trace.
SMALLER = {'model.blocks_per_stage': 1}
_SORT = re.compile(r'"stablehlo\.sort"\(([^)]*)\)')
_FLOAT64 = re.compile(r'tensor<[0-9x?]*f64>')
# The arguments of a region (a sort's comparator, a reduction's body).
_WIDE_REGION = re.compile(r'\^bb0\([^)]*tensor<(?:[fiu]|ui)64>')
STEPS_PER_EPOCH = 4


def _run_configs(preset_name):
  preset = configs.get(preset_name)
  for name in preset.runs:
    yield name, preset.run_config(name, SMALLER)


def _programs(config):
  """The programs a run of ``config`` calls, with abstract arguments."""
  text = data.is_text(config.dataset)
  # A text source: windows of bytes, each labelled with the next bytes.
  image_shape = ((config.sequence_length,) if text
                 else IMAGE_SHAPES[config.dataset])
  rebuilt = []  # The run as training sets it up, traced without computing.

  def initial_state():
    rebuilt.append(state_lib.initial_run(
        config, (config.seed,), num_classes=256 if text else 10,
        image_shape=image_shape, steps_per_epoch=STEPS_PER_EPOCH))
    return steps.stack_seeds(rebuilt[0].states)

  state = jax.eval_shape(initial_state)
  model = rebuilt[0].model
  together = bool(config.seeds_in_one_step)
  examples = STEPS_PER_EPOCH * config.batch_size
  images = jax.ShapeDtypeStruct((examples, *image_shape),
                                jnp.int32 if text else jnp.float32)
  labels = jax.ShapeDtypeStruct(
      (examples, *image_shape) if text else (examples,), jnp.int32)
  index = jax.ShapeDtypeStruct((), jnp.int32)
  keys = jax.eval_shape(lambda: jax.random.split(
      jax.random.key(0), (1, STEPS_PER_EPOCH)))
  order = jax.ShapeDtypeStruct((1, STEPS_PER_EPOCH, config.batch_size),
                               jnp.int32)
  segment = (index, index) if config.steps_per_call > 1 else (index,)
  eval_weights = steps.make_eval_weights(None, together)
  return {
      'draw': (jax.jit(lambda key: steps.make_draw(
          config, STEPS_PER_EPOCH)(key, examples)),
               (jax.eval_shape(lambda: jax.random.split(
                   jax.random.key(0), 1)),)),
      'train': (steps.make_train_call(config, model, None, together),
                (state, images, labels, order, keys, *segment)),
      'evaluate': (steps.make_evaluate(model, 32, None, together),
                   (jax.eval_shape(eval_weights, state), state.batch_stats,
                    images, labels)),
      'eval_weights': (jax.jit(eval_weights), (state,)),
  }


@pytest.mark.parametrize('preset_name', configs.names())
def test_programs_lower_for_gpu_and_tpu(preset_name):
  for run_name, config in _run_configs(preset_name):
    for program, (function, args) in _programs(config).items():
      for platform in ('cuda', 'tpu'):
        module = jax.export.export(function, platforms=[platform])(
            *args).mlir_module()
        where = (preset_name, run_name, program, platform)
        assert not _FLOAT64.search(module), where
        assert not _WIDE_REGION.search(module), where
        sorts = [len(operands.split(','))
                 for operands in _SORT.findall(module)]
        if config.optimizer.name == 'laperm' and program in ('train',
                                                             'eval_weights'):
          assert sorts and set(sorts) == {2}, (where, sorts)
