"""Text from a byte-level language model: a prompt continued byte by byte.

Each new byte is drawn from the model's next-byte distribution at the last
filled position (greedy at temperature 0), with the key folded with the
byte's index, so a key gives the same text every time. The window slides
once it holds ``max_length`` bytes. One jitted loop; no cache of keys and
values (the models here are small).
"""

import functools

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def generate(model: nn.Module, params: dict, prompt: bytes, length: int,
             key: jax.Array, temperature: float = 0.0) -> bytes:
  """Continues ``prompt`` by ``length`` bytes.

  Example (an untrained model writes noise)::

    >>> import jax
    >>> from experiments import generate, models
    >>> model = models.ByteTransformer(width=16, depth=1, mlp_width=32,
    ...                                max_length=16)
    >>> params = model.init(jax.random.key(0),
    ...                     jax.numpy.zeros((1, 16), 'int32'))['params']
    >>> text = generate.generate(model, params, b'def ', 8,
    ...                          jax.random.key(1), temperature=1.0)
    >>> len(text)
    8

  Args:
    model: A :class:`experiments.models.ByteTransformer`.
    params: Its params (one seed's).
    prompt: At least one byte; only its last ``model.max_length`` are read.
    length: Bytes to write.
    key: The draws' key (unused at temperature 0).
    temperature: Divides the logits; 0 takes the most likely byte.

  Returns:
    The ``length`` new bytes (without the prompt).

  Raises:
    ValueError: An empty prompt, or a negative length or temperature.
  """
  if not prompt:
    raise ValueError('generate: the prompt must hold at least one byte.')
  if length < 0 or temperature < 0:
    raise ValueError(f'generate: length ({length}) and temperature '
                     f'({temperature}) must be >= 0.')
  window = np.frombuffer(prompt, np.uint8)[-model.max_length:]
  buffer = np.zeros(model.max_length, np.int32)
  buffer[:len(window)] = window
  written = _write(model, length, float(temperature), params,
                   jnp.asarray(buffer), len(window), key)
  return bytes(np.asarray(written, np.uint8))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _write(model, length, temperature, params, buffer, filled, key):
  """The generation loop: ``length`` bytes after ``buffer[:filled]``."""
  size = buffer.shape[0]

  def step(index, carry):
    buffer, filled, written = carry
    logits = model.apply({'params': params}, buffer[None])[0, filled - 1]
    if temperature == 0:
      byte = jnp.argmax(logits)
    else:
      byte = jax.random.categorical(jax.random.fold_in(key, index),
                                    logits / temperature)
    full = filled == size
    buffer = jnp.where(full, jnp.roll(buffer, -1), buffer)
    buffer = buffer.at[jnp.where(full, size - 1, filled)].set(byte)
    return (buffer, jnp.minimum(filled + 1, size),
            written.at[index].set(byte))

  _, _, written = jax.lax.fori_loop(
      0, length, step, (buffer, jnp.asarray(filled),
                        jnp.zeros(length, jnp.int32)))
  return written
