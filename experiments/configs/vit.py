"""A small Vision Transformer trained by reconnection (not in the paper).

The paper trains MLPs, conv nets and ResNets only; this preset asks whether
LaPerm trains attention too. Where each setting comes from:

- Model (``models.ViT``): 4x4 patches per image (7x7 pixels on 28x28, 2x2
  on 8x8 digits) embedded by a strided conv, a class token, a learned
  position embedding, 2 pre-norm blocks of 4-head attention and a GELU MLP
  (width 64, MLP 128), a LayerNorm and the ``head``: the ViT paper's
  layout, sized for a 2-core CPU. Flax's initializers (LeCun-normal
  kernels, zero biases), as for any Flax model; no dropout.
- Weight vectors: derived from the forward pass
  (``optimizer.vector_axes = 'derived'``, ``lp.derive_vector_axes``): the
  fan-in of each output unit, so a sync never moves a weight between
  attention heads (the trailing-axis rule would, on the query, key and value
  kernels ``(features, heads, head_dim)``). Every kernel is permuted: patch
  embedding, query/key/value/out, MLP and head.
- Leaves without a fan-in (biases, LayerNorm scales and offsets, position
  embedding, class token) follow Adam alone, as the paper leaves biases and
  BatchNorm to the inner optimizer by default. Permuting the LayerNorm
  scales, the position embedding and the class token too (each leaf one
  vector: ``optimizer.also_permute``) validated no better in a 3-epoch
  trial (docs/RESULTS.md).
- Optimizer: Adam 1e-3 times 0.95 per epoch (the paper's 5.1 and 5.5
  schedule), batch 128 (5.5).
- ``k = 100``: the best on validation of 20, 100, 400 and 1000 (the
  paper's range) in a 3-epoch trial (docs/RESULTS.md). Evaluated every 4
  syncs (400 steps, about an epoch), right after a sync.
- 15 epochs, seeds one after another with one step per call (faster here
  than the seeds together in loops of steps): what fits the study's budget
  of about 45 minutes on a shared 2-core CPU.
"""

from experiments.configs import base


def vit() -> base.Preset:
  """A ViT on Fashion-MNIST: LaPerm (derived layout) beside Adam."""
  config = base.get_config()
  config.dataset = 'fashion_mnist'
  config.normalization = 'scale'
  config.model.name = 'vit'
  config.optimizer.schedule = 'exponential'
  config.optimizer.decay_rate = 0.95
  config.optimizer.decay_epochs = 1
  config.optimizer.sync_period = 100
  config.optimizer.vector_axes = 'derived'
  config.eval_every_steps = 400  # A multiple of k: right after a sync.
  config.batch_size = 128
  config.epochs = 15
  return base.Preset(
      'A ViT on Fashion-MNIST: LaPerm with derived weight vectors, Adam',
      config, {'laperm': {'optimizer.name': 'laperm'},
               'adam': {'optimizer.name': 'adam'}})
