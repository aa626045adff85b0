"""Preparing TFDS datasets: when to download, and the TensorFlow-free builders.

No test touches the network: downloads come from an HTTP server on
127.0.0.1 serving tiny files in the datasets' own formats, and the offline
case points the check at an address that is never routed (192.0.2.1,
TEST-NET-1 of RFC 5737).
"""

import functools
import http.server
import io
import pathlib
import socket
import tarfile
import threading
import time

import numpy as np
import pytest

from experiments import data
from experiments import download
from experiments import text
import test_data  # Its IDX writer; pytest puts this directory on sys.path.

pytest.importorskip('tensorflow_datasets')

UNROUTED = 'http://192.0.2.1/'


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

  def log_message(self, *args):  # pylint: disable=arguments-differ
    del args


@pytest.fixture(name='server')
def fixture_server(tmp_path, monkeypatch):
  """Serves a directory over HTTP on 127.0.0.1; yields (directory, URL)."""
  for variable in ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY'):
    monkeypatch.delenv(variable, raising=False)
  directory = tmp_path / 'served'
  directory.mkdir()
  handler = functools.partial(_QuietHandler, directory=str(directory))
  with http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler) as httpd:
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield directory, f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown()
  thread.join()


def _serve_from(monkeypatch, base_url: str) -> None:
  """Makes the builders download every file from ``base_url`` instead."""
  real = download._download_urls
  monkeypatch.setattr(download, '_download_urls', lambda name: {
      file: base_url + file for file in real(name)})


def _no_network_check(*args, **kwargs):
  raise AssertionError('checked the network')


def _image_to_label(images, labels):
  return {image.tobytes(): int(label) for image, label in zip(images, labels)}


def test_prepare_downloads_idx_files_and_load_reads_them(
    tmp_path, server, monkeypatch):
  served, url = server
  written = test_data._tiny_mnist(served)
  _serve_from(monkeypatch, url)
  data_dir = str(tmp_path / 'tfds')
  assert download.prepare('fashion_mnist', data_dir=data_dir)
  dataset = data.load('fashion_mnist', data_dir=data_dir, validation_size=10)
  assert dataset.image_shape == (28, 28, 1)
  assert (len(dataset.train.labels), len(dataset.test.labels)) == (50, 20)
  # TFDS shuffles examples when it writes them: compare image -> label.
  assert _image_to_label(dataset.test.images[..., 0],
                         dataset.test.labels) == _image_to_label(
                             *written['test'])
  assert data.train_size('fashion_mnist', data_dir=data_dir) == 60
  # Prepared: nothing to do, and no network check.
  monkeypatch.setattr(download, 'reachable', _no_network_check)
  assert not download.prepare('fashion_mnist', data_dir=data_dir)
  assert not download.prepare('fashion_mnist', data_dir=data_dir,
                              download=True)


def _cifar_archive(path: pathlib.Path, counts: dict[str, int]):
  """Writes CIFAR-10's binary archive layout; returns the images by file."""
  rng = np.random.default_rng(0)
  images = {}
  with tarfile.open(path, 'w:gz') as tar:

    def add(name, content):
      member = tarfile.TarInfo(f'cifar-10-batches-bin/{name}')
      member.size = len(content)
      tar.addfile(member, io.BytesIO(content))

    add('batches.meta.txt', '\n'.join(f'class{i}' for i in range(10)).encode()
        + b'\n\n')
    for name, count in counts.items():
      pixels = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
      labels = np.arange(count, dtype=np.uint8) % 10
      add(name, np.concatenate([labels[:, None], pixels.reshape(count, -1)],
                               axis=1).tobytes())
      images[name] = (pixels.transpose(0, 2, 3, 1), labels)
  return images


def test_prepare_downloads_the_cifar10_archive_and_load_reads_it(
    tmp_path, server, monkeypatch):
  served, url = server
  counts = {f'data_batch_{i}.bin': 3 for i in range(1, 6)}
  counts['test_batch.bin'] = 4
  written = _cifar_archive(served / 'cifar-10-binary.tar.gz', counts)
  _serve_from(monkeypatch, url)
  data_dir = str(tmp_path / 'tfds')
  assert download.prepare('cifar10', data_dir=data_dir)
  dataset = data.load('cifar10', data_dir=data_dir, validation_size=5)
  assert dataset.image_shape == (32, 32, 3)
  assert (len(dataset.train.labels), len(dataset.validation.labels),
          len(dataset.test.labels)) == (10, 5, 4)
  assert _image_to_label(dataset.test.images,
                         dataset.test.labels) == _image_to_label(
                             *written['test_batch.bin'])
  train = {}
  for name in counts:
    if name.startswith('data_batch'):
      train.update(_image_to_label(*written[name]))
  held = np.concatenate([dataset.train.images, dataset.validation.images])
  held_labels = np.concatenate([dataset.train.labels,
                                dataset.validation.labels])
  assert _image_to_label(held, held_labels) == train
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  names = tfds.builder('cifar10', data_dir=data_dir).info.features[
      'label'].names
  assert names == [f'class{i}' for i in range(10)]


def test_no_download_fails_without_checking_the_network(tmp_path,
                                                         monkeypatch):
  monkeypatch.setattr(download, 'reachable', _no_network_check)
  with pytest.raises(data.DataUnavailableError, match='--no-download'):
    download.prepare('mnist', data_dir=str(tmp_path), download=False)


def test_unreachable_network_fails_within_seconds(tmp_path, monkeypatch):
  _serve_from(monkeypatch, UNROUTED)
  start = time.perf_counter()
  with pytest.raises(data.DataUnavailableError,
                     match=r'no network: 192\.0\.2\.1 did not accept a '
                     r'connection within 3 s \(--download'):
    download.prepare('mnist', data_dir=str(tmp_path))
  assert time.perf_counter() - start < download.CHECK_TIMEOUT + 2
  assert not list(tmp_path.rglob('*.array_record*'))


def test_reachable_sees_listening_and_closed_ports(server):
  _, url = server
  assert download.reachable([url, url + 'file.gz'], timeout=2)
  with socket.socket() as unused:
    unused.bind(('127.0.0.1', 0))
    closed = f'http://127.0.0.1:{unused.getsockname()[1]}/'
  assert not download.reachable([url, closed], timeout=2)


def test_a_hanging_name_lookup_is_given_up_after_the_timeout(monkeypatch):
  def hang(*args, **kwargs):
    time.sleep(30)
    raise socket.gaierror('too late')

  monkeypatch.setattr(socket, 'getaddrinfo', hang)
  start = time.perf_counter()
  assert not download.reachable(['https://example.com/'], timeout=0.5)
  assert time.perf_counter() - start < 2


def test_the_check_connects_to_the_proxy_downloads_go_through(monkeypatch):
  monkeypatch.setenv('https_proxy', 'http://proxy.example:3128')
  monkeypatch.setenv('no_proxy', 'internal.example')
  assert download._address('https://storage.googleapis.com/x.gz') == (
      'proxy.example', 3128)
  assert download._address('https://internal.example/x.gz') == (
      'internal.example', 443)
  monkeypatch.delenv('https_proxy')
  assert download._address('https://storage.googleapis.com/x.gz') == (
      'storage.googleapis.com', 443)


def test_other_tfds_datasets_are_not_downloaded(tmp_path, monkeypatch):
  monkeypatch.setattr(download, 'reachable', _no_network_check)
  with pytest.raises(data.DataUnavailableError, match='needs TensorFlow'):
    download.prepare('tfds:kmnist', data_dir=str(tmp_path))


def test_other_sources_need_no_preparing(tmp_path, monkeypatch):
  monkeypatch.setattr(download, 'reachable', _no_network_check)
  assert not download.prepare('digits')
  assert not download.prepare(f'idx:{tmp_path}')


def test_a_failed_download_says_so(tmp_path, server, monkeypatch):
  _, url = server  # Serves nothing: every file is a 404.
  _serve_from(monkeypatch, url)
  with pytest.raises(data.DataUnavailableError,
                     match='downloading it failed .*404'):
    download.prepare('fashion_mnist', data_dir=str(tmp_path / 'tfds'))


def test_prepare_downloads_tiny_shakespeare_and_load_cuts_it_as_tfds(
    tmp_path, server, monkeypatch):
  served, url = server
  # Characters of 1 to 3 UTF-8 bytes: the builder cuts by character.
  content = ''.join(f'{i}: Né à Vérone, “so” it goes.\r\n'
                    for i in range(40))
  (served / 'input.txt').write_bytes(content.encode())
  _serve_from(monkeypatch, url)
  data_dir = str(tmp_path / 'tfds')
  assert download.prepare('tiny_shakespeare', data_dir=data_dir)
  dataset = data.load('tiny_shakespeare', data_dir=data_dir,
                      sequence_length=8)
  train_end = int(len(content) * 0.9)
  validation_end = train_end + int((len(content) - train_end) * 0.5)
  cuts = {'train': content[:train_end],
          'validation': content[train_end:validation_end],
          'test': content[validation_end:]}
  for split, part in cuts.items():
    inputs, labels = text.windows(part.encode(), 8)
    np.testing.assert_array_equal(getattr(dataset, split).images, inputs)
    np.testing.assert_array_equal(getattr(dataset, split).labels, labels)
  assert dataset.num_classes == 256 and data.is_text('tiny_shakespeare')
  assert data.train_size('tiny_shakespeare', data_dir=data_dir,
                         sequence_length=8) == len(dataset.train.labels)
