"""Classification data: one interface, images and text from four sources.

``load(spec)`` returns a :class:`Dataset` with train, validation and test
splits of ``uint8`` inputs and ``int32`` labels: NHWC images and their
classes, or windows of text bytes and the byte after each. ``spec`` names
the source:

- ``digits``: scikit-learn's 8x8 digits (1797 images, shipped inside the
  package: no network, no system package). The embedded default.
- ``idx:DIR``: a directory of MNIST-format IDX ``.gz`` files, e.g. Debian's
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
- a name of :data:`TFDS_DATASETS` (``mnist``, ``fashion_mnist``,
  ``cifar10``; ``tiny_shakespeare``, text), or ``tfds:NAME`` for any other
  image dataset: a tensorflow-datasets dataset prepared as
  ``array_record`` under ``data_dir``, read with ``tfds.data_source`` (no
  TensorFlow needed); :mod:`experiments.download` prepares those of the
  table where there is network. Adding a dataset in a format it parses is
  one entry in that table.
- ``text:DIR``: every file under a directory as bytes, split into train,
  validation and test by file (:mod:`experiments.text`), e.g. the Python
  documentation's sources that Debian's ``python3.11-doc`` installs
  (``scripts/get_text_corpus.sh``).

Text (``text:DIR``, ``tiny_shakespeare``) is for next-byte prediction:
examples are windows of ``sequence_length`` bytes, ``(n,
sequence_length)``, and their labels the byte after each (256 classes);
keep them as integer tokens with the normalization ``none``.

A source that is not available raises :class:`DataUnavailableError` saying
how to get it; nothing falls back to another dataset. The validation split
of an image source is held out from its training data (a seeded draw), so
best weights are picked without looking at the test set; a text source has
a validation split of its own (files of a directory, the TFDS builder's
split), so ``validation_size`` does not apply to it (:func:`is_text`).
"""

import contextlib
import dataclasses
import difflib
import gzip
import pathlib
from collections.abc import Iterator
from typing import Any, NamedTuple, Optional
import zlib

import ml_collections
import numpy as np

from experiments import text

EMBEDDED = 'digits'
TEXT_PREFIX = 'text:'


class TfdsDataset(NamedTuple):
  """A tensorflow-datasets dataset that the presets can name.

  Attributes:
    builder: The registered TFDS builder class, as ``MODULE.CLASS`` under
      ``tensorflow_datasets``.
    file_format: How its downloaded files are laid out, which decides how
      :mod:`experiments.download` parses them without TensorFlow: ``idx``
      (MNIST's four gzipped IDX files), ``cifar`` (CIFAR-10's binary
      archive) or ``text`` (one text file that the builder cuts into
      train, validation and test; a text source).
  """

  builder: str
  file_format: str


# The datasets a spec may name: one entry each. A dataset in a format that
# experiments.download parses needs nothing else.
TFDS_DATASETS = {
    'mnist': TfdsDataset('image_classification.mnist.MNIST', 'idx'),
    'fashion_mnist': TfdsDataset('image_classification.mnist.FashionMNIST',
                                 'idx'),
    'cifar10': TfdsDataset('image_classification.cifar.Cifar10', 'cifar'),
    'tiny_shakespeare': TfdsDataset(
        'datasets.tiny_shakespeare.tiny_shakespeare_dataset_builder.Builder',
        'text'),
}
TFDS_NAMES = tuple(TFDS_DATASETS)
IDX_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
# Magic numbers of IDX files: unsigned bytes, with 3 (images) or 1 (labels)
# dimensions.
_IDX_IMAGES, _IDX_LABELS = 0x0803, 0x0801


class DataUnavailableError(RuntimeError):
  """The requested dataset is not on this machine; the message says how."""


class Split(NamedTuple):
  """Inputs and their ``int32`` labels.

  Attributes:
    images: Images ``(n, height, width, channels)``, or text: windows of
      bytes ``(n, sequence_length)``.
    labels: Classes ``(n,)``, or for text the byte after each input byte
      ``(n, sequence_length)``.
  """

  images: np.ndarray
  labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A classification dataset with a validation split apart from train.

  Attributes:
    name: The spec it was loaded from.
    train: The training split (without the validation examples).
    validation: Held out from the training data (for text, a split of its
      own); picks the best weights.
    test: The test split, for the final number only.
    num_classes: Number of classes (256 byte values for text).
    pixel_max: The largest possible input value (255; 16 for digits).
  """

  name: str
  train: Split
  validation: Split
  test: Split
  num_classes: int
  pixel_max: float

  @property
  def image_shape(self) -> tuple[int, ...]:
    return self.train.images.shape[1:]


def load(spec: str, *, data_dir: Optional[str] = None,
         validation_size: int = 5000, seed: int = 0,
         sequence_length: int = text.DEFAULT_SEQUENCE_LENGTH) -> Dataset:
  """Loads a dataset and holds out a validation split from its training data.

  Args:
    spec: ``digits``, ``idx:DIR``, ``text:DIR``, or a TFDS name (``mnist``,
      ``fashion_mnist``, ``cifar10``, ``tiny_shakespeare``, optionally as
      ``tfds:NAME``).
    data_dir: Where TFDS data is prepared (TFDS's default when None).
    validation_size: Training examples held out for validation; not used
      by text sources (:func:`is_text`), whose validation split is their
      own.
    seed: Seed of the validation draw (and of the digits train/test split);
      not used by text sources.
    sequence_length: Bytes per example of a text source; not used by the
      other sources.

  Returns:
    The :class:`Dataset`.

  Raises:
    DataUnavailableError: The data is not on this machine.
    ValueError: Unknown spec, a validation split too large, or a split of
      a text source that makes no example.
  """
  check_spec(spec)
  if is_text(spec):
    return _load_text(spec, data_dir, sequence_length)
  if spec == EMBEDDED:
    train, test, pixel_max = _load_digits(seed)
  elif spec.startswith('idx:'):
    train, test, pixel_max = _load_idx(pathlib.Path(spec[len('idx:'):]))
  else:
    train, test, pixel_max = _load_tfds(tfds_name(spec), data_dir)
  if not 0 < validation_size < len(train.labels):
    raise ValueError(
        f'validation_size {validation_size} must be in (0, '
        f'{len(train.labels)}) for {spec}.')
  order = np.random.default_rng(seed).permutation(len(train.labels))
  held_out, kept = order[:validation_size], np.sort(order[validation_size:])
  return Dataset(
      name=spec,
      train=Split(train.images[kept], train.labels[kept]),
      validation=Split(train.images[held_out], train.labels[held_out]),
      test=test,
      num_classes=int(max(train.labels.max(), test.labels.max())) + 1,
      pixel_max=pixel_max,
  )


def tfds_name(spec: str) -> Optional[str]:
  """The tensorflow-datasets name ``spec`` asks for; None for other sources."""
  if spec.startswith('tfds:'):
    return spec[len('tfds:'):]
  return spec if spec in TFDS_NAMES else None


def text_directory(spec: str) -> Optional[pathlib.Path]:
  """The corpus directory of a ``text:DIR`` spec; None for other sources."""
  if spec.startswith(TEXT_PREFIX):
    return pathlib.Path(spec[len(TEXT_PREFIX):])
  return None


def is_text(spec: str) -> bool:
  """Whether ``spec`` is a text source (next-byte examples).

  A text source has a validation split of its own (``text:DIR``: files of
  its own; ``tiny_shakespeare``: the builder's), where an image source
  holds ``validation_size`` examples out of its training data.
  """
  name = tfds_name(spec)
  return text_directory(spec) is not None or (
      name in TFDS_DATASETS and TFDS_DATASETS[name].file_format == 'text')


def check_spec(spec: str) -> None:
  """Raises ValueError unless ``spec`` names a source :func:`load` knows."""
  if (spec != EMBEDDED and not spec.startswith('idx:') and
      not tfds_name(spec) and text_directory(spec) is None):
    raise ValueError(
        f'Unknown dataset {spec!r}: use {EMBEDDED!r} (embedded), '
        f'"idx:DIR" (MNIST-format IDX .gz files), "text:DIR" (every file '
        f'under DIR as bytes, for next-byte prediction), or one of '
        f'{TFDS_NAMES} (tensorflow-datasets data).')
  if spec == TEXT_PREFIX:
    raise ValueError(f'{spec!r} names no directory: use "text:DIR".')
  if spec.startswith('tfds:') and tfds_name(spec) not in TFDS_NAMES:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    known = tfds.list_builders(with_community_datasets=False)
    if tfds_name(spec) not in known:
      close = difflib.get_close_matches(tfds_name(spec), known, n=1)
      raise ValueError(
          f'Unknown dataset {spec!r}: tensorflow-datasets has no '
          f'{tfds_name(spec)!r}' + (f' (did you mean {close[0]!r}?)'
                                    if close else ''))


def check_normalization(spec: str, method: str) -> None:
  """Raises ValueError unless ``method`` suits ``spec``: ``none`` for text.

  Text sources hold bytes that a model embeds as tokens; scaling them as
  pixels would make them meaningless.
  """
  if is_text(spec) and method != 'none':
    raise ValueError(
        f'normalization={method!r}: {spec} holds bytes that a model embeds '
        "as tokens; use normalization='none'.")


def train_size(spec: str, *, data_dir: Optional[str] = None,
               seed: int = 0,
               sequence_length: int = text.DEFAULT_SEQUENCE_LENGTH) -> int:
  """Training examples of a source, validation included, without its images.

  Args:
    spec: As for :func:`load`; a TFDS dataset must be prepared.
    data_dir: Where TFDS data is prepared (TFDS's default when None).
    seed: Seed of the digits train/test split (its size does not depend on
      it).
    sequence_length: Bytes per example of a text source.

  Returns:
    The size of the source's training split; for a text source the
    examples of its train split alone (its validation split is apart),
    from the files' sizes for ``text:DIR``.

  Raises:
    DataUnavailableError: The data is not on this machine.
  """
  check_spec(spec)
  directory = text_directory(spec)
  if directory is not None:
    with _unavailable_if_unreadable():
      return text.num_windows(text.split_bytes(directory)['train'],
                              sequence_length)
  if is_text(spec):
    train_text = _tfds_texts(tfds_name(spec), data_dir, ('train',))['train']
    return text.num_windows(len(train_text), sequence_length)
  if spec == EMBEDDED:
    return len(_load_digits(seed)[0].labels)
  if spec.startswith('idx:'):
    directory = pathlib.Path(spec[len('idx:'):])
    _check_idx_files(directory)
    return len(read_idx(directory / IDX_FILES['train'][1]))
  return _tfds_builder(tfds_name(spec), data_dir).info.splits[
      'train'].num_examples


def take(dataset: Dataset, max_examples: int) -> Dataset:
  """At most ``max_examples`` of every split (smoke runs, a text budget).

  Images: the first ones. Text windows: evenly spaced over the split, so
  that a budget of windows reads from every file region rather than from
  the files that sort first.
  """
  spread = is_text(dataset.name)

  def subset(split):
    count = len(split.labels)
    if count <= max_examples:
      return split
    kept = (np.linspace(0, count - 1, max_examples).round().astype(np.int64)
            if spread else slice(max_examples))
    return Split(split.images[kept], split.labels[kept])

  return dataclasses.replace(dataset, train=subset(dataset.train),
                             validation=subset(dataset.validation),
                             test=subset(dataset.test))


def normalize(dataset: Dataset, method: str) -> dict[str, Split]:
  """Float32 splits normalized as the paper does, with training statistics.

  Args:
    dataset: A dataset of integer pixels (or bytes).
    method: ``zscore``: subtract the training mean and divide by the
      training standard deviation, per channel (MNIST, Section 5.1; CIFAR-10,
      A.5.3). ``pixel_mean``: scale to [0, 1] and subtract the mean training
      image, per pixel (ResNet, Section 5.4). ``scale``: to [0, 1] only.
      ``none``: the integers as they are, as ``int32`` (tokens that a model
      embeds, e.g. text bytes).

  Returns:
    ``{'train': ..., 'validation': ..., 'test': ...}`` with float32 images
    (``int32`` for ``none``).

  Raises:
    ValueError: Unknown method.
  """
  if method == 'none':
    return {name: Split(split.images.astype(np.int32), split.labels)
            for name, split in _named_splits(dataset)}
  if method == 'zscore':
    train = dataset.train.images.astype(np.float32)
    mean = train.mean(axis=(0, 1, 2))
    scale = train.std(axis=(0, 1, 2))
  elif method == 'pixel_mean':
    mean = dataset.train.images.astype(np.float32).mean(axis=0)
    scale = np.float32(dataset.pixel_max)
  elif method == 'scale':
    mean, scale = None, np.float32(dataset.pixel_max)
  else:
    raise ValueError(f'Unknown normalization {method!r}; use zscore, '
                     'pixel_mean, scale or none.')

  def normalized(images: np.ndarray) -> np.ndarray:
    # In place on one float32 copy: the same float32 operations as
    # `(images - mean) / scale`, a third of the passes over the data.
    images = images.astype(np.float32)
    if mean is not None:
      np.subtract(images, mean, out=images)
    np.divide(images, scale, out=images)
    return images

  return {name: Split(normalized(split.images), split.labels)
          for name, split in _named_splits(dataset)}


def _named_splits(dataset: Dataset) -> tuple[tuple[str, Split], ...]:
  return (('train', dataset.train), ('validation', dataset.validation),
          ('test', dataset.test))


def split_source(config: ml_collections.ConfigDict) -> tuple[Any, ...]:
  """The config fields :func:`load_splits` reads: runs that share them share splits."""
  return (config.dataset, config.data_dir, config.validation_size,
          config.data_seed, config.normalization, config.max_examples,
          config.sequence_length)


def load_splits(config: ml_collections.ConfigDict
                ) -> tuple[dict[str, Split], int, tuple[int, ...]]:
  """A config's normalized splits, its number of classes and image shape.

  Args:
    config: An experiment config: ``dataset``, ``data_dir``,
      ``validation_size``, ``data_seed``, ``max_examples`` (0 for all),
      ``normalization`` and ``sequence_length`` (text only).

  Returns:
    ``({'train': ..., 'validation': ..., 'test': ...}, num_classes,
    image_shape)``; for a text source, ``image_shape`` is
    ``(sequence_length,)``.

  Raises:
    ValueError: A text source with a normalization other than ``none``.
  """
  check_normalization(config.dataset, config.normalization)
  dataset = load(config.dataset, data_dir=config.data_dir or None,
                 validation_size=config.validation_size,
                 seed=config.data_seed,
                 sequence_length=config.sequence_length)
  if config.max_examples:
    dataset = take(dataset, config.max_examples)
  return (normalize(dataset, config.normalization), dataset.num_classes,
          dataset.image_shape)


def _load_digits(seed: int) -> tuple[Split, Split, float]:
  """scikit-learn's digits with a fixed, stratified 1497/300 train/test split."""
  from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top
  images, labels = datasets.load_digits(return_X_y=True)
  images = images.reshape(-1, 8, 8, 1).astype(np.uint8)
  train_images, test_images, train_labels, test_labels = (
      model_selection.train_test_split(images, labels.astype(np.int32),
                                       test_size=300, random_state=seed,
                                       stratify=labels))
  return (Split(train_images, train_labels), Split(test_images, test_labels),
          16.0)


@contextlib.contextmanager
def _unavailable_if_unreadable() -> Iterator[None]:
  """Raises a corpus that cannot be read as DataUnavailableError."""
  try:
    yield
  except OSError as error:
    raise DataUnavailableError(
        f'{error}. A text:DIR source reads every file under DIR; '
        'scripts/get_text_corpus.sh installs the sources of the Python '
        "documentation (Debian's python3.11-doc) and prints their "
        'text:DIR.') from error


def _load_text(spec: str, data_dir: Optional[str], sequence_length: int
               ) -> Dataset:
  """A text source as next-byte examples (experiments.text)."""
  directory = text_directory(spec)
  if directory is None:
    splits = text.examples(_tfds_texts(tfds_name(spec), data_dir),
                           sequence_length, spec)
  else:
    with _unavailable_if_unreadable():
      splits = text.load(directory, sequence_length)
  return Dataset(name=spec, **{name: Split(*examples)
                               for name, examples in splits.items()},
                 num_classes=text.NUM_TOKENS, pixel_max=255.0)


def read_idx(path: pathlib.Path) -> np.ndarray:
  """Reads one gzipped IDX file of unsigned bytes (MNIST format).

  Raises:
    ValueError: The file is not gzip, is cut short or damaged, or holds no
      IDX array of unsigned bytes.
  """
  try:
    with gzip.open(path, 'rb') as f:
      content = f.read()
  except (gzip.BadGzipFile, EOFError, zlib.error) as error:
    raise ValueError(f'{path} cannot be read as gzip: {error}') from error
  magic = int.from_bytes(content[:4], 'big')
  if magic not in (_IDX_IMAGES, _IDX_LABELS):
    raise ValueError(f'{path} is not an IDX file of unsigned bytes (magic '
                     f'{magic:#06x}).')
  ndim = magic & 0xFF
  if len(content) < 4 + 4 * ndim:
    raise ValueError(f'{path} ends inside its IDX header.')
  shape = tuple(int.from_bytes(content[4 + 4 * i:8 + 4 * i], 'big')
                for i in range(ndim))
  data = np.frombuffer(content, np.uint8, offset=4 + 4 * ndim)
  if data.size != np.prod(shape):
    raise ValueError(f'{path} holds {data.size} bytes of data; its header '
                     f'says {shape}.')
  return data.reshape(shape)


def _check_idx_files(directory: pathlib.Path) -> None:
  missing = [name for files in IDX_FILES.values() for name in files
             if not (directory / name).is_file()]
  if missing:
    raise DataUnavailableError(
        f'{directory} lacks the MNIST-format files {missing}. On Debian or '
        'Ubuntu, `apt-get install dataset-fashion-mnist` puts Fashion-MNIST '
        'in /usr/share/datasets/fashion-mnist; or copy the four IDX .gz '
        'files of MNIST there.')


def _load_idx(directory: pathlib.Path) -> tuple[Split, Split, float]:
  _check_idx_files(directory)
  splits = []
  for images_file, labels_file in IDX_FILES.values():
    images = read_idx(directory / images_file)[..., None]
    labels = read_idx(directory / labels_file).astype(np.int32)
    if len(images) != len(labels):
      raise ValueError(f'{directory / images_file} holds {len(images)} '
                       f'images but {labels_file} {len(labels)} labels.')
    splits.append(Split(images, labels))
  return splits[0], splits[1], 255.0


def not_prepared(name: str, data_dir: str, reason: str
                 ) -> DataUnavailableError:
  """The error for a TFDS dataset that is not prepared, saying why and how."""
  return DataUnavailableError(
      f'tensorflow-datasets has no prepared {name!r} in {data_dir}{reason}. '
      'Prepare it where there is network (`python -m experiments` downloads '
      f'it there, see --download; or `tfds build {name} '
      '--file_format=array_record`, which needs TensorFlow), then copy it '
      'here and pass --data-dir; or run on the embedded set with --dataset '
      'digits, or on local IDX files with --dataset idx:DIR.')


def _tfds_builder(name: str, data_dir: Optional[str]):
  """The registered builder of a prepared dataset; raises if unprepared."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # Without network, reading an unprepared dataset retries DNS for minutes
  # before failing: check for prepared data first.
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise not_prepared(name, builder.data_dir, '')
  return builder


def _load_tfds(name: str, data_dir: Optional[str]) -> tuple[Split, Split,
                                                             float]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _tfds_builder(name, data_dir)
  sources = tfds.data_source(name, data_dir=data_dir)
  splits = []
  for split in ('train', 'test'):
    source = sources[split]
    # A damaged file raises array_record's RuntimeError, or PIL's OSError
    # for an image it cannot decode.
    try:
      examples = source.__getitems__(range(len(source)))
    except (RuntimeError, OSError) as error:
      raise ValueError(f'the {split} split of {name!r} in '
                       f'{builder.data_dir} cannot be read: {error}'
                       ) from error
    splits.append(Split(
        np.stack([example['image'] for example in examples]).astype(np.uint8),
        np.array([example['label'] for example in examples], np.int32)))
  return splits[0], splits[1], 255.0


def _tfds_texts(name: str, data_dir: Optional[str],
                splits: tuple[str, ...] = text.SPLITS) -> dict[str, bytes]:
  """A prepared TFDS text dataset's splits, each its examples' text joined."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _tfds_builder(name, data_dir)
  sources = tfds.data_source(name, data_dir=data_dir)
  return {split: b''.join(
      example['text'] for example in sources[split].__getitems__(
          range(len(sources[split])))) for split in splits}
