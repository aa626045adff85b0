"""What every experiment shares: the base config, the preset, run policy.

Presets (one module per study) override what differs from
:func:`get_config`. A preset's run config is the preset's config, its run's
overrides, then the command line's (:meth:`Preset.run_config`); a smoke run
(``quick``) shrinks it, and :func:`fit_validation` fits its validation split
to a small dataset.
"""

import ast
import difflib
import functools
from typing import Any, NamedTuple, Optional, Sequence, Union

import ml_collections

from experiments import data
from experiments import models
from experiments import text

# Smoke runs: a few steps on a few examples, with syncs inside them.
QUICK_OVERRIDES = {'epochs': 2, 'max_examples': 256, 'batch_size': 32,
                   'eval_batch_size': 128}
QUICK_MAX_SYNC_PERIOD = 4
QUICK_MAX_VALIDATION = 128
# A preset's validation split that does not fit a small dataset becomes this
# fraction of its training examples (CIFAR-10's 5000 of 50000).
SMALL_VALIDATION_FRACTION = 0.1


def get_config() -> ml_collections.ConfigDict:
  """The default experiment: the A.3 MLP on MNIST with LaPerm(Adam)."""
  config = ml_collections.ConfigDict()
  config.dataset = 'mnist'
  config.data_dir = ''  # TFDS data_dir; '' for TFDS's default.
  config.validation_size = 5000
  config.normalization = 'zscore'
  config.max_examples = 0  # Per split; 0 keeps all (smoke runs set it).
  # Bytes per example of a text source (text:DIR); other sources ignore it.
  config.sequence_length = text.DEFAULT_SEQUENCE_LENGTH
  config.seed = 0  # Initial weights, batch order, augmentation, dropout.
  config.data_seed = 0  # The validation split drawn from the training data.
  config.devices = 1  # Data-parallel devices; 0 for all local ones.

  config.model = ml_collections.ConfigDict()
  config.model.name = 'mlp'
  config.model.dropout_rates = (0.0, 0.0)
  config.model.blocks_per_stage = 8
  # Conv7: input gradients of two convs through patches (the model's default).
  config.model.patches_input_gradient = models.Conv7.patches_input_gradient
  # The ViT (not in the paper): token width, blocks, heads, MLP units, and
  # patches along each image side.
  config.model.width = 64
  config.model.depth = 2
  config.model.num_heads = 4
  config.model.mlp_width = 128
  config.model.patches_per_side = 4
  config.model.max_length = 128  # Positions of the language model.

  # Initial weights of the kernels: 'random' (the model's initializer),
  # 'prune' (Section 5.4) or 'shared_value' (Section 5.5).
  config.init = ml_collections.ConfigDict()
  config.init.kind = 'random'
  config.init.prune_rate = 0.0
  config.init.size_aware = False
  config.init.first_layer_max = 0.2
  config.init.value = 0.08
  config.init.keep = 0.6
  config.init.keep_per_kernel = ()  # If given, replaces keep: input first.

  config.augment = ml_collections.ConfigDict()
  config.augment.rotation = 0.0  # Degrees.
  config.augment.shift = 0.0  # Fraction of the image size.
  config.augment.zoom = 0.0  # Fraction.
  config.augment.horizontal_flip = False

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'laperm'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = 'constant'
  config.optimizer.decay_rate = 0.95
  config.optimizer.decay_epochs = 1
  config.optimizer.boundaries = (10, 20)
  config.optimizer.scales = (0.5, 0.2)
  config.optimizer.sync_period = 20
  config.optimizer.permute_biases = False  # LaPerm permutes 1-D leaves too.
  config.optimizer.gamma_beta_reset = False
  # LaPerm's weight vectors: 'default' (all axes but the last) or 'derived'
  # (each kernel's fan-in read from the model's forward pass; leaves it
  # cannot read follow the inner optimizer unless named in also_permute).
  config.optimizer.vector_axes = 'default'
  config.optimizer.also_permute = ()  # Leaf names permuted as one vector each.
  config.optimizer.lookahead_sync_period = 6
  config.optimizer.lookahead_step_size = 0.5
  config.optimizer.weight_decay = 0.0  # AdamW's, on kernels only.

  config.l2 = 0.0  # On every kernel but the output layer's (Keras-style sum).
  config.batch_size = 50
  config.eval_batch_size = 1000
  config.epochs = 30
  config.eval_every = 1  # Epochs between evaluations.
  # Steps between evaluations, counted from the start; 0: every eval_every
  # epochs. Equal to LaPerm's sync period: right after every sync.
  config.eval_every_steps = 0
  config.steps_per_call = 1  # Train steps per jitted call (a loop).
  config.seeds_in_one_step = False  # Train several seeds in one jitted step.
  config.checkpoint_every = 1  # Epochs; the last epoch is always saved.
  config.monitor = False  # Record the A.3 monitor of the first kernel.
  config.monitor_kernels = ()  # Paths ('decoder_1/mlp_1/kernel'): instead.
  config.best_by = 'val_accuracy'  # Or 'val_loss': what picks best weights.
  config.progress = True
  return config


class Preset(NamedTuple):
  """An experiment: what it shows, its config, and its side-by-side runs.

  Attributes:
    description: One line on what the experiment reproduces.
    config: Settings shared by all runs.
    runs: Run name -> overrides of ``config`` as flattened keys
      (``{'optimizer.name': 'adam'}``), applied in order.
    prune_overrides: Further overrides when the command line asks to prune
      (e.g. ResNet50's k = 800 for pruned nets).
  """

  description: str
  config: ml_collections.ConfigDict
  runs: dict[str, dict[str, Any]]
  prune_overrides: dict[str, Any] = {}

  def run_config(self, run: str, overrides: Optional[dict[str, Any]] = None,
                 *, quick: bool = False) -> ml_collections.ConfigDict:
    """The config of run ``run``: the preset's, the run's, then ``overrides``.

    Args:
      run: One of ``runs``.
      overrides: Flattened keys (``{'optimizer.sync_period': 100}``),
        applied last.
      quick: Shrink the run to a smoke run (:func:`quick_config`).

    Returns:
      A fresh config.

    Raises:
      ValueError: ``run`` is not one of ``runs`` (naming the closest).
    """
    if run not in self.runs:
      raise ValueError(f'unknown run {run!r}{_closest(run, list(self.runs))}; '
                       f'this preset has {", ".join(self.runs)}')
    config = ml_collections.ConfigDict(self.config.to_dict())
    config.update_from_flattened_dict(self.runs[run])
    config.update_from_flattened_dict(overrides or {})
    return quick_config(config) if quick else config


def quick_config(config: ml_collections.ConfigDict
                 ) -> ml_collections.ConfigDict:
  """A smoke run of ``config``: 2 epochs on 256 examples, syncs inside.

  Args:
    config: A run's config; left as it is.

  Returns:
    A copy with ``QUICK_OVERRIDES``, LaPerm's sync period and the steps
    between evaluations at most ``QUICK_MAX_SYNC_PERIOD``, and at most
    ``QUICK_MAX_VALIDATION`` validation examples.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  config.update_from_flattened_dict(QUICK_OVERRIDES)
  config.optimizer.sync_period = min(config.optimizer.sync_period,
                                     QUICK_MAX_SYNC_PERIOD)
  if config.eval_every_steps:
    config.eval_every_steps = min(config.eval_every_steps,
                                  QUICK_MAX_SYNC_PERIOD)
  config.validation_size = min(config.validation_size, QUICK_MAX_VALIDATION)
  return config


def run_seeds(config: ml_collections.ConfigDict,
              seeds: Union[None, int, Sequence[int]] = None
              ) -> tuple[int, ...]:
  """A run's seeds: ``config.seed``, ``seeds`` of them from it, or ``seeds``.

  Args:
    config: A run's config.
    seeds: None (the config's seed), a count (that many seeds from
      ``config.seed``), or the seeds themselves.

  Returns:
    The seeds, in order.
  """
  if seeds is None:
    return (config.seed,)
  if isinstance(seeds, int):
    return tuple(range(config.seed, config.seed + seeds))
  return tuple(seeds)


class ValidationSizeError(ValueError):
  """A validation split asked for does not fit the dataset's examples."""


def fit_validation(config: ml_collections.ConfigDict, train_size: int, *,
                   scale: bool = True) -> Optional[str]:
  """Fits a run's validation split to a dataset of ``train_size`` examples.

  A preset's validation split that does not fit a small dataset (5000 on
  digits' 1497) becomes ``SMALL_VALIDATION_FRACTION`` of its training
  examples. A text source has a validation split of its own
  (:func:`experiments.data.is_text`): nothing to fit.

  Args:
    config: A run's config; its ``validation_size`` is updated in place.
    train_size: The dataset's training examples, validation included.
    scale: Whether a split that does not fit is scaled; else it is an error
      (a size the user asked for).

  Returns:
    None when the split fits or the source is text, else a line saying
    what changed.

  Raises:
    ValidationSizeError: The split does not fit and ``scale`` is off; or
      ``scale`` is off (a size the user asked for) and the source is text.
  """
  if data.is_text(config.dataset):
    if scale:
      return None
    raise ValidationSizeError(
        f'validation_size={config.validation_size}: {config.dataset} is '
        'text, with a validation split of its own (files of its own for '
        'text:DIR), so validation_size does not apply')
  if 0 < config.validation_size < train_size:
    return None
  if not scale:
    raise ValidationSizeError(
        f'validation_size={config.validation_size}: {config.dataset} has '
        f'{train_size} training examples; hold out from 1 to {train_size - 1}')
  scaled = max(1, int(train_size * SMALL_VALIDATION_FRACTION))
  note = (f'{config.dataset} has {train_size} training examples: holding out '
          f'{scaled} ({SMALL_VALIDATION_FRACTION:.0%}) for validation instead '
          f"of the preset's {config.validation_size}")
  config.validation_size = scaled
  return note


def _closest(word: str, known: Sequence[str]) -> str:
  """`` (did you mean X?)`` for the known word closest to ``word``, if any."""
  close = difflib.get_close_matches(word, known, n=1)
  return f' (did you mean {close[0]!r}?)' if close else ''


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


def parse_overrides(config: ml_collections.ConfigDict, pairs: Sequence[str]
                    ) -> dict[str, Any]:
  """``KEY=TEXT`` pairs as overrides of ``config``, typed by its fields.

  A string field takes the text as written (quotes optional); other fields
  take a Python literal (``1e-3``, ``(10, 20)``; ``true`` and ``false``
  too), which ConfigDict's type-safe assignment checks against the field
  and casts (an int to a float field, a list to a tuple field). A bool and
  a number never stand for each other.

  Args:
    config: The config the pairs override; left as it is.
    pairs: ``KEY=TEXT`` with a flattened key (``optimizer.sync_period=100``).

  Returns:
    The typed values by flattened key.

  Raises:
    ValueError: A pair without ``=``, an unknown key (naming the closest
      known one), or a value of another type than its field's.
  """
  typed = ml_collections.ConfigDict(config.to_dict())
  fields = _fields(typed)
  overrides = {}
  for pair in pairs:
    key, separator, text = pair.partition('=')
    if not separator:
      raise ValueError(f'takes KEY=VALUE, got {pair!r}')
    if key not in fields:
      raise ValueError(f'{pair}: unknown config key {key!r}'
                       f'{_closest(key, list(fields))}')
    current = fields[key]
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError):
      value = {'true': True, 'false': False}.get(text.lower(), text)
    if isinstance(current, str) and not isinstance(value, str):
      value = text
    try:
      if isinstance(value, bool) != isinstance(current, bool):
        raise TypeError(f'{value!r} is not a {type(current).__name__}')
      typed.update_from_flattened_dict({key: value})
    except TypeError:
      raise ValueError(f'{pair}: {key} takes a value of type '
                       f'{type(current).__name__}, like {current!r}') from None
    overrides[key] = functools.reduce(getattr, key.split('.'), typed)
  return overrides
