"""Settings shared by every experiment; presets override what differs."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The default experiment: the A.3 MLP on MNIST with LaPerm(Adam)."""
  config = ml_collections.ConfigDict()
  config.dataset = 'mnist'
  config.data_dir = ''  # TFDS data_dir; '' for TFDS's default.
  config.validation_size = 5000
  config.normalization = 'zscore'
  config.max_examples = 0  # Per split; 0 keeps all (smoke runs set it).
  config.seed = 0  # Initial weights, batch order, augmentation, dropout.
  config.data_seed = 0  # The validation split drawn from the training data.
  config.devices = 1  # Data-parallel devices; 0 for all local ones.

  config.model = ml_collections.ConfigDict()
  config.model.name = 'mlp'
  config.model.dropout_rates = (0.0, 0.0)
  config.model.blocks_per_stage = 8
  # Conv7: input gradients of two convs through patches (models.Conv7).
  config.model.patches_input_gradient = True
  # The ViT (not in the paper): token width, blocks, heads, MLP units, and
  # patches along each image side.
  config.model.width = 64
  config.model.depth = 2
  config.model.num_heads = 4
  config.model.mlp_width = 128
  config.model.patches_per_side = 4

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
  config.progress = True
  return config
