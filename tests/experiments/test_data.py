"""Data sources: embedded digits, IDX files, prepared TFDS data; normalization."""

import gzip
import io
import pathlib
import time

import numpy as np
from PIL import Image
import pytest

from experiments import data


def _write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  magic = (0x0800 | array.ndim).to_bytes(4, 'big')
  dims = b''.join(n.to_bytes(4, 'big') for n in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(magic + dims + array.astype(np.uint8).tobytes())


def _tiny_mnist(directory: pathlib.Path, train: int = 60, test: int = 20):
  """Writes MNIST-format files whose every image is unique and known."""
  rng = np.random.default_rng(0)
  splits = {}
  for split, count in (('train', train), ('test', test)):
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = np.arange(count, dtype=np.uint8) % 10
    images_file, labels_file = data.IDX_FILES[split]
    _write_idx(directory / images_file, images)
    _write_idx(directory / labels_file, labels)
    splits[split] = (images, labels)
  return splits


def _rows(images):
  return {image.tobytes() for image in images}


def test_digits_splits_are_disjoint_and_fixed():
  dataset = data.load('digits', validation_size=300)
  assert dataset.image_shape == (8, 8, 1)
  assert dataset.train.images.dtype == np.uint8
  assert dataset.train.labels.dtype == np.int32
  sizes = [len(s.labels) for s in (dataset.train, dataset.validation,
                                   dataset.test)]
  assert sizes == [1197, 300, 300] and dataset.num_classes == 10
  assert dataset.pixel_max == 16 and dataset.train.images.max() == 16
  again = data.load('digits', validation_size=300)
  np.testing.assert_array_equal(again.validation.images,
                                dataset.validation.images)
  other_seed = data.load('digits', validation_size=300, seed=1)
  assert not np.array_equal(other_seed.validation.labels,
                            dataset.validation.labels)


def test_idx_directory_loads_with_labels_aligned(tmp_path):
  written = _tiny_mnist(tmp_path)
  dataset = data.load(f'idx:{tmp_path}', validation_size=10)
  assert dataset.image_shape == (28, 28, 1)
  assert (len(dataset.train.labels), len(dataset.validation.labels),
          len(dataset.test.labels)) == (50, 10, 20)
  np.testing.assert_array_equal(dataset.test.images[..., 0],
                                written['test'][0])
  # Train and validation partition the written train split, labels kept.
  train_images, train_labels = written['train']
  label_of = {image.tobytes(): label
              for image, label in zip(train_images, train_labels)}
  held = np.concatenate([dataset.train.images, dataset.validation.images])
  held_labels = np.concatenate([dataset.train.labels,
                                dataset.validation.labels])
  assert _rows(held[..., 0]) == _rows(train_images)
  assert all(label_of[image[..., 0].tobytes()] == label
             for image, label in zip(held, held_labels))
  assert not _rows(dataset.train.images) & _rows(dataset.validation.images)


def test_missing_idx_files_say_how_to_get_them(tmp_path):
  with pytest.raises(data.DataUnavailableError, match='apt-get install'):
    data.load(f'idx:{tmp_path}')


def test_a_file_that_is_not_idx_is_rejected(tmp_path):
  path = tmp_path / 'bad.gz'
  with gzip.open(path, 'wb') as f:
    f.write(b'\x00\x00\x0d\x03' + b'\x00' * 12)
  with pytest.raises(ValueError, match='not an IDX file'):
    data.read_idx(path)


def test_unknown_dataset_is_an_error():
  with pytest.raises(ValueError, match='Unknown dataset'):
    data.load('imagenet')
  with pytest.raises(ValueError, match='Unknown dataset'):
    data.check_spec('tfds:')
  with pytest.raises(ValueError, match="no 'mnsit' \\(did you mean 'mnist'"):
    data.check_spec('tfds:mnsit')
  data.check_spec('tfds:kmnist')


def test_train_size_counts_training_examples_without_loading_them(tmp_path):
  assert data.train_size('digits') == 1497
  _tiny_mnist(tmp_path, train=70)
  assert data.train_size(f'idx:{tmp_path}') == 70
  with pytest.raises(data.DataUnavailableError, match='apt-get install'):
    data.train_size(f'idx:{tmp_path / "missing"}')
  with pytest.raises(data.DataUnavailableError, match='tfds build mnist'):
    data.train_size('mnist', data_dir=str(tmp_path / 'tfds'))


def test_unprepared_tfds_dataset_fails_fast(tmp_path):
  start = time.perf_counter()
  with pytest.raises(data.DataUnavailableError, match='tfds build mnist'):
    data.load('mnist', data_dir=str(tmp_path))
  # Reading it would retry DNS for minutes without network.
  assert time.perf_counter() - start < 30


def _prepare_tiny_fashion_mnist(tmp_path):
  """Tiny IDX files prepared as TFDS's fashion_mnist; (data_dir, written)."""
  tfds = pytest.importorskip('tensorflow_datasets')
  from tensorflow_datasets.image_classification import mnist  # pylint: disable=g-import-not-at-top
  idx_dir = tmp_path / 'idx'
  idx_dir.mkdir()
  written = _tiny_mnist(idx_dir)

  class LocalFashionMnist(mnist.FashionMNIST, skip_registration=True):
    """The registered builder, fed from local IDX files as PNG bytes.

    The stock builder downloads and needs TensorFlow to encode PNGs.
    """

    name = 'fashion_mnist'  # Prepared where data_source looks for it.

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in written}

    def _generate_examples(self, split):
      images, labels = written[split]
      for index, (image, label) in enumerate(zip(images, labels)):
        png = io.BytesIO()
        Image.fromarray(image).save(png, format='PNG')
        yield index, {'image': png.getvalue(), 'label': int(label)}

  data_dir = tmp_path / 'tfds'
  LocalFashionMnist(data_dir=str(data_dir), file_format='array_record'
                    ).download_and_prepare(
                        download_config=tfds.download.DownloadConfig(
                            try_download_gcs=False))
  return data_dir, written


def test_tfds_path_reads_a_dataset_prepared_offline(tmp_path):
  data_dir, written = _prepare_tiny_fashion_mnist(tmp_path)
  dataset = data.load('fashion_mnist', data_dir=str(data_dir),
                      validation_size=10)
  assert dataset.image_shape == (28, 28, 1)
  assert len(dataset.train.labels) == 50
  # TFDS shuffles examples when it writes them: compare image -> label.
  images, labels = written['test']
  label_of = {image.tobytes(): label for image, label in zip(images, labels)}
  assert {image[..., 0].tobytes(): label for image, label in zip(
      dataset.test.images, dataset.test.labels)} == label_of


def test_normalization_uses_training_statistics():
  dataset = data.load('digits', validation_size=300)
  zscore = data.normalize(dataset, 'zscore')
  assert zscore['train'].images.dtype == np.float32
  np.testing.assert_allclose(zscore['train'].images.mean(), 0, atol=1e-5)
  np.testing.assert_allclose(zscore['train'].images.std(), 1, atol=1e-5)
  assert abs(zscore['test'].images.mean()) > 1e-4  # Not its own statistics.
  pixel_mean = data.normalize(dataset, 'pixel_mean')
  np.testing.assert_allclose(pixel_mean['train'].images.mean(axis=0), 0,
                             atol=1e-6)
  scaled = data.normalize(dataset, 'scale')
  assert scaled['train'].images.max() == 1.0
  np.testing.assert_array_equal(scaled['validation'].labels,
                                dataset.validation.labels)


def test_a_damaged_tfds_file_is_named(tmp_path):
  data_dir, _ = _prepare_tiny_fashion_mnist(tmp_path)
  records, = data_dir.glob('fashion_mnist/*/fashion_mnist-train.array_record*')
  records.write_bytes(records.read_bytes()[:records.stat().st_size // 2])
  with pytest.raises(ValueError, match=r"the train split of 'fashion_mnist' "
                     'in .* cannot be read: '):
    data.load('fashion_mnist', data_dir=str(data_dir), validation_size=10)
