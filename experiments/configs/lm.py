"""A byte-level language model trained by reconnection (not in the paper).

The paper stops at image classifiers; this preset asks whether LaPerm
trains a causal Transformer on text. Where each setting comes from:

- Data: the reStructuredText sources of the Python documentation that
  Debian's ``python3.11-doc`` installs (``scripts/get_text_corpus.sh``),
  split by file into train, validation and test; examples are 128-byte
  windows, each byte predicting the next (``experiments.text``).
- Model (``models.ByteTransformer``): 256 byte tokens, a learned position
  embedding, 2 pre-norm causal blocks of 4-head attention and a GELU MLP
  (width 128, MLP 512), a final LayerNorm and an untied ``head``: GPT-2's
  layout, sized so that a run fits about ten minutes of a 2-core CPU.
- Weight vectors: derived from the forward pass (``lp.derive_vector_axes``),
  the fan-in of each output unit, as for the ViT. Every kernel is permuted:
  query/key/value/out, MLP and head. The token and position embeddings are
  read by a gather and an addition (no fan-in): each is permuted as one
  weight vector (``optimizer.also_permute``), and so are the LayerNorm
  scales (ones, so a sync resets them). That validated marginally better
  than leaving them to the inner Adam in a 300-step trial
  (docs/RESULTS.md), and leaves only biases and LayerNorm offsets free.
  The head is untied: tied, the token embedding would be a gather table
  and the head's kernel at once; untied keeps the two questions apart (a
  tied head is not tried here).
- Optimizers: LaPerm over Adam (the paper's inner optimizer), beside AdamW
  (weight decay 0.1 on the kernels, as is usual for Transformers), from the
  same initial weights in the same data order, both at a constant learning
  rate; ``k`` and the learning rates are the best on validation of short
  trials (docs/RESULTS.md).
- Budget: 800 steps of 32 windows: one pass over 25,600 windows spread
  evenly over the training files (``data.take``); validation every 200
  steps on all validation files; the best weights by validation loss,
  reported in bits per byte on the test files. Three seeds trained
  together take about half an hour on a quiet 2-core CPU.
- Seeds: trained together, one jitted step for all (``--seeds 3``).
- Monitor: the ranking distance of one attention kernel and one MLP kernel
  (the A.3 view, for a language model).
"""

from experiments.configs import base

CORPUS = 'text:/usr/share/doc/python3.11/html/_sources'


def lm() -> base.Preset:
  """A byte-level Transformer on Python's docs: LaPerm beside AdamW."""
  config = base.get_config()
  config.dataset = CORPUS
  config.normalization = 'none'
  config.sequence_length = 128
  config.model.name = 'byte_transformer'
  config.model.width = 128
  config.model.depth = 2
  config.model.num_heads = 4
  config.model.mlp_width = 512
  config.model.max_length = 128
  config.optimizer.learning_rate = 1e-3
  config.optimizer.sync_period = 100
  config.optimizer.vector_axes = 'derived'
  config.optimizer.also_permute = ('embedding', 'pos_embedding', 'scale')
  config.optimizer.weight_decay = 0.1
  config.batch_size = 32
  config.eval_batch_size = 128
  config.max_examples = 25600  # 800 steps: one pass.
  config.epochs = 1
  config.eval_every_steps = 200
  config.best_by = 'val_loss'
  config.seeds_in_one_step = True  # One program for --seeds: one compile.
  config.monitor = True
  config.monitor_kernels = ('decoder_1/attention/query/kernel',
                            'decoder_1/mlp_1/kernel')
  return base.Preset(
      'A byte-level Transformer on Python docs: LaPerm, AdamW',
      config, {'laperm': {'optimizer.name': 'laperm'},
               'adamw': {'optimizer.name': 'adamw'}})
