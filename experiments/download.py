"""Downloads and prepares the presets' TFDS datasets, without TensorFlow.

The stock tensorflow-datasets builders of MNIST, Fashion-MNIST, CIFAR-10
and tiny_shakespeare cannot prepare their data without TensorFlow: they
read and extract the downloaded files with ``tf.io.gfile`` and encode NumPy
images with ``tf.image.encode_png``. The builders here are the registered
ones (same name, version and features, so ``tfds.data_source`` reads what
they write) with only the parsing replaced: ``gzip``, ``tarfile``, NumPy
and Python's ``open`` read the downloaded files and Pillow hands over the
images. TFDS still downloads the files (with ``requests``, which honours
``HTTPS_PROXY``) and checks them against its registered checksums. Other
TFDS datasets need their stock builder, hence TensorFlow: ``tfds build
NAME --file_format=array_record``.

:func:`prepare` decides whether to download. Prepared data is used as it
is. Otherwise, by default, it downloads if the download host (or the proxy)
accepts a TCP connection within a few seconds, and raises
:class:`~experiments.data.DataUnavailableError` at once if not: TFDS itself
would retry for minutes before failing.
"""

import importlib
import socket
import tarfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any, Optional

import numpy as np

from experiments import data

# Seconds the network check waits for the download host.
CHECK_TIMEOUT = 3.0


def prepare(spec: str, *, data_dir: Optional[str] = None,
            download: Optional[bool] = None,
            timeout: float = CHECK_TIMEOUT) -> bool:
  """Makes sure a TFDS dataset is prepared, downloading it if allowed.

  Args:
    spec: A dataset spec of :func:`experiments.data.load`; only TFDS ones
      (``mnist``, ``fashion_mnist``, ``cifar10``, ``tiny_shakespeare``,
      ``tfds:NAME``) are prepared, the others are left to ``load``.
    data_dir: TFDS ``data_dir`` to prepare into (TFDS's default when None).
    download: What to do when the dataset is not prepared: True downloads
      it (no network check, e.g. where only a proxy that the check cannot
      see reaches the internet), False never does, None (default) downloads
      if the download host accepts a connection within ``timeout`` seconds.
    timeout: Seconds the network check waits.

  Returns:
    Whether it downloaded and prepared the dataset.

  Raises:
    DataUnavailableError: The dataset is not prepared and was not
      downloaded: ``download`` is False, the network is unreachable, the
      download failed, or there is no TensorFlow-free builder for it.
  """
  name = data.tfds_name(spec)
  if name is None:
    return False
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  registered = tfds.builder(name, data_dir=data_dir)
  if registered.is_prepared():
    return False
  where = registered.data_dir
  if download is False:
    raise data.not_prepared(name, where, ' (--no-download)')
  if name not in data.TFDS_NAMES:
    raise data.not_prepared(
        name, where, ': its tensorflow-datasets builder needs TensorFlow to '
        f'prepare it, and only {", ".join(data.TFDS_NAMES)} are downloaded '
        'without')
  urls = _download_urls(name)
  if download is None and not reachable(urls.values(), timeout):
    hosts = sorted({urllib.parse.urlsplit(url).netloc
                    for url in urls.values()})
    raise data.not_prepared(
        name, where, f', and no network: {", ".join(hosts)} did not accept a '
        f'connection within {timeout:g} s (--download tries anyway)')
  builder = _builder(name, data_dir)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except (OSError, tfds.download.DownloadError) as error:
    raise data.not_prepared(name, where,
                            f': downloading it failed ({error})') from error
  return True


def reachable(urls: Iterable[str], timeout: float = CHECK_TIMEOUT) -> bool:
  """Whether the host of each URL (or its proxy) accepts a TCP connection.

  The whole check, name lookups included (they ignore socket timeouts),
  runs in a daemon thread that is given up after ``timeout`` seconds.

  Args:
    urls: ``http`` or ``https`` URLs.
    timeout: Seconds to wait for all of them together.

  Returns:
    True if every connection opened in time.
  """
  urls = list(urls)
  opened = []

  def check():
    try:
      for address in {_address(url) for url in urls}:
        with socket.create_connection(address, timeout=timeout):
          pass
    except OSError:
      return
    opened.append(True)

  thread = threading.Thread(target=check, daemon=True)
  thread.start()
  thread.join(timeout)
  return bool(opened)


def _address(url: str) -> tuple[str, int]:
  """Host and port a download of ``url`` connects to: its proxy's, if any."""
  parts = urllib.parse.urlsplit(url)
  proxy = urllib.request.getproxies().get(parts.scheme)
  if proxy and not urllib.request.proxy_bypass(parts.hostname):
    parts = urllib.parse.urlsplit(proxy if '://' in proxy else
                                  f'http://{proxy}')
  return parts.hostname, parts.port or (443 if parts.scheme == 'https'
                                        else 80)


def _registered_builder(name: str) -> type[Any]:
  """The builder class TFDS registers for ``name`` (``data.TFDS_DATASETS``)."""
  module, class_name = data.TFDS_DATASETS[name].builder.rsplit('.', 1)
  return getattr(importlib.import_module(f'tensorflow_datasets.{module}'),
                 class_name)


def _download_urls(name: str) -> dict[str, str]:
  """The files the builder of ``name`` downloads, by file name."""
  registered = _registered_builder(name)
  if data.TFDS_DATASETS[name].file_format in ('cifar', 'text'):
    return {urllib.parse.urlsplit(url).path.rsplit('/', 1)[-1]: url
            for url in registered.url_infos}
  return {file: urllib.parse.urljoin(registered.URL, file)
          for files in data.IDX_FILES.values() for file in files}


def _builder(name: str, data_dir: Optional[str]):
  """The registered builder of ``name`` with TensorFlow-free parsing."""
  registered = _registered_builder(name)
  split_generators = _SPLIT_GENERATORS[data.TFDS_DATASETS[name].file_format]

  class Builder(registered, skip_registration=True):
    """The registered builder, its files parsed with NumPy and Pillow."""

    # The registered name: where tfds.data_source looks for the data.
    name = registered.name

    def _split_generators(self, dl_manager):
      return split_generators(self, dl_manager)

  return Builder(data_dir=data_dir, file_format='array_record')


def _idx_split_generators(builder, dl_manager):
  """MNIST-format splits read from their IDX files with NumPy."""
  paths = dl_manager.download(_download_urls(builder.name))
  return {split: _idx_examples(paths[images], paths[labels])
          for split, (images, labels) in data.IDX_FILES.items()}


def _cifar_split_generators(builder, dl_manager):
  """CIFAR-10's splits read from its binary archive with tarfile and NumPy."""
  (archive,) = dl_manager.download(_download_urls(builder.name)).values()
  info = builder._cifar_info  # pylint: disable=protected-access
  with tarfile.open(archive, 'r:gz') as tar:
    files = {member.name.removeprefix(info.prefix):
             tar.extractfile(member).read()
             for member in tar if member.isfile()}
  (label_file,) = info.label_files
  builder.info.features['label'].names = [
      label for label in files[label_file].decode().split('\n') if label]
  return {
      'train': _cifar_examples(
          'train_', [files[file] for file in info.train_files]),
      'test': _cifar_examples(
          'test_', [files[file] for file in info.test_files]),
  }


def _text_split_generators(builder, dl_manager):
  """The splits of one downloaded text file, cut as the stock builder cuts.

  The stock tiny_shakespeare builder reads the file as UTF-8 text and cuts
  it by position: train is the first ``int(0.9 * n)`` of its ``n``
  characters, validation the first half (``int(0.5 * rest)``) of the
  rest, test what remains. Each split is one example.
  """
  (path,) = dl_manager.download(_download_urls(builder.name)).values()
  # newline='': as tf.io.gfile reads it, with no newline translation.
  with open(path, encoding='utf-8', newline='') as file:
    content = file.read()
  train_end = int(len(content) * 0.9)
  validation_end = train_end + int((len(content) - train_end) * 0.5)
  cuts = {'train': content[:train_end],
          'validation': content[train_end:validation_end],
          'test': content[validation_end:]}
  return {split: iter([(split, {'text': part})])
          for split, part in cuts.items()}


def _idx_examples(images_path, labels_path
                  ) -> Iterator[tuple[int, dict[str, Any]]]:
  """Examples keyed by index, as the stock MNIST builder yields them."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images, labels = data.read_idx(images_path), data.read_idx(labels_path)
  for index, (image, label) in enumerate(zip(images, labels)):
    yield index, {'image': Image.fromarray(image), 'label': int(label)}


def _cifar_examples(id_prefix: str, contents: list[bytes]
                    ) -> Iterator[tuple[int, dict[str, Any]]]:
  """Examples keyed by index, as the stock CIFAR-10 builder yields them.

  Each record of CIFAR-10's binary files is one label byte and a 32x32 RGB
  image stored channel by channel.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  records = np.frombuffer(b''.join(contents), np.uint8).reshape(
      -1, 1 + 3 * 32 * 32)
  for index, record in enumerate(records):
    yield index, {'id': f'{id_prefix}{index:05d}',
                  'image': Image.fromarray(
                      record[1:].reshape(3, 32, 32).transpose(1, 2, 0)),
                  'label': int(record[0])}


_SPLIT_GENERATORS = {'idx': _idx_split_generators,
                     'cifar': _cifar_split_generators,
                     'text': _text_split_generators}
