"""Augmentation keeps shapes, dtypes and the image-label pairing."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import augment


def _config(rotation=0.0, shift=0.0, zoom=0.0, horizontal_flip=False):
  return ml_collections.ConfigDict(dict(
      rotation=rotation, shift=shift, zoom=zoom,
      horizontal_flip=horizontal_flip))


PAPER_CIFAR = _config(rotation=15.0, shift=0.1, horizontal_flip=True)
PAPER_MNIST = _config(rotation=10.0, shift=0.1, zoom=0.1)


def _augment(key, images, config):
  # Jitted as in training (eager dm_pix compiles op by op, slowly).
  return jax.jit(functools.partial(augment.augment_batch, config=config))(
      key, images)


def test_each_image_stays_with_its_label():
  # A constant image stays constant under any affine map with edge filling,
  # so image i must still hold value i: the order is kept.
  labels = jnp.arange(16)
  images = jnp.broadcast_to(labels[:, None, None, None].astype(jnp.float32),
                            (16, 32, 32, 3))
  for config in (PAPER_CIFAR, PAPER_MNIST):
    out = _augment(jax.random.key(0), images, config)
    assert out.shape == images.shape and out.dtype == images.dtype
    np.testing.assert_allclose(out, images, atol=1e-5)


def test_shapes_and_dtypes_are_kept():
  for shape, dtype in (((5, 8, 8, 1), jnp.float32),
                       ((5, 8, 8, 1), jnp.bfloat16),
                       ((5, 32, 32, 3), jnp.float32)):
    images = jax.random.normal(jax.random.key(1), shape).astype(dtype)
    out = _augment(jax.random.key(0), images, PAPER_CIFAR)
    assert out.shape == shape and out.dtype == dtype


def test_no_augmentation_is_the_identity():
  images = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
  config = _config()
  assert not augment.is_enabled(config)
  out = _augment(jax.random.key(0), images, config)
  np.testing.assert_allclose(out, images, atol=1e-5)


def test_transforms_are_random_per_image_and_flips_mirror():
  image = jax.random.normal(jax.random.key(1), (28, 28, 1))
  images = jnp.stack([image] * 8)
  out = _augment(jax.random.key(0), images, PAPER_MNIST)
  assert not np.allclose(out[0], image)
  assert not np.allclose(out[0], out[1])
  flipped = _augment(jax.random.key(0), images,
                     _config(horizontal_flip=True))
  kept = [np.allclose(f, image, atol=1e-5) for f in flipped]
  mirrored = [np.allclose(f, image[:, ::-1], atol=1e-5) for f in flipped]
  assert all(k or m for k, m in zip(kept, mirrored))
  assert any(kept) and any(mirrored)


def test_a_pure_shift_moves_the_content():
  image = jnp.zeros((9, 9, 1)).at[4, 4, 0].set(1.0)
  out = _augment(jax.random.key(3), image[None], _config(shift=0.3))[0]
  peak = np.unravel_index(np.argmax(out[..., 0]), (9, 9))
  assert peak != (4, 4)
  np.testing.assert_allclose(np.sum(out), 1.0, atol=1e-5)
