"""Real-time data augmentation on device, with dm_pix.

The paper augments with Keras' ``ImageDataGenerator``: random rotation,
width and height shifts, zoom, and horizontal flips (A.5.2, A.5.3). Here one
random affine map per image (rotation, zoom and shift composed, so the image
is resampled once) goes to ``dm_pix.affine_transform`` with nearest-edge
filling, Keras' default, and ``dm_pix.random_flip_left_right`` flips.
Everything is jittable and runs inside the training scan.
"""

import jax
import jax.numpy as jnp
import dm_pix as pix
import ml_collections


def _pull_matrix(key: jax.Array, height: int, width: int,
                 config: ml_collections.ConfigDict) -> jax.Array:
  """A random homogeneous map from output to input pixel coordinates.

  Acts on ``(row, column, channel, 1)`` and leaves channels alone. Rotation
  and zoom are about the image center; shifts are fractions of the size.
  """
  angle_key, zoom_key, shift_key = jax.random.split(key, 3)
  angle = jnp.deg2rad(config.rotation) * jax.random.uniform(
      angle_key, minval=-1.0, maxval=1.0)
  zoom = jax.random.uniform(zoom_key, (2,), minval=1.0 - config.zoom,
                            maxval=1.0 + config.zoom)
  size = jnp.array([height, width], jnp.float32)
  shift = config.shift * size * jax.random.uniform(
      shift_key, (2,), minval=-1.0, maxval=1.0)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  linear = jnp.array([[cos, -sin], [sin, cos]]) * zoom[None, :]
  center = (size - 1.0) / 2.0
  offset = center - linear @ center + shift
  matrix = jnp.eye(4)
  matrix = matrix.at[:2, :2].set(linear)
  return matrix.at[:2, 3].set(offset)


def augment_image(key: jax.Array, image: jax.Array,
                  config: ml_collections.ConfigDict) -> jax.Array:
  """Randomly rotates, zooms, shifts and (optionally) flips one HWC image."""
  transform_key, flip_key = jax.random.split(key)
  height, width = image.shape[:2]
  matrix = _pull_matrix(transform_key, height, width, config)
  image = pix.affine_transform(image, matrix, mode='nearest')
  if config.horizontal_flip:
    image = pix.random_flip_left_right(flip_key, image)
  return image


def augment_batch(key: jax.Array, images: jax.Array,
                  config: ml_collections.ConfigDict) -> jax.Array:
  """Augments a batch of NHWC images, each with its own random transform.

  Args:
    key: A PRNG key.
    images: Float images ``(batch, height, width, channels)``.
    config: ``rotation`` (degrees), ``shift`` and ``zoom`` (fractions) and
      ``horizontal_flip`` (bool), as Keras' ``ImageDataGenerator`` takes
      them.

  Returns:
    Augmented images of the same shape and dtype, in the same order (labels
    stay aligned).
  """
  keys = jax.random.split(key, images.shape[0])
  augmented = jax.vmap(lambda k, image: augment_image(k, image, config))(
      keys, images)
  return augmented.astype(images.dtype)


def is_enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether a config asks for any augmentation."""
  return bool(config.rotation or config.shift or config.zoom
              or config.horizontal_flip)
