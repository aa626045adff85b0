"""Text corpora: the split by file, next-byte windows, load_splits, errors."""

import hashlib
import json
import pathlib
import re
import shutil

import numpy as np
import pytest

from experiments import data
from experiments import text
from experiments.configs import base

SEQUENCE_LENGTH = 16


def _write_corpus(directory: pathlib.Path, count: int = 60
                  ) -> dict[str, bytes]:
  """Writes ``count`` files of random lengths in nested folders."""
  rng = np.random.default_rng(0)
  written = {}
  for index in range(count):
    path = f'part{index % 3}/sub{index % 2}/doc{index}.rst.txt'
    content = rng.integers(0, 256, rng.integers(40, 400),
                           dtype=np.uint8).tobytes()
    (directory / path).parent.mkdir(parents=True, exist_ok=True)
    (directory / path).write_bytes(content)
    written[path] = content
  return written


@pytest.fixture(name='corpus')
def fixture_corpus(tmp_path):
  directory = tmp_path / 'corpus'
  directory.mkdir()
  return directory, _write_corpus(directory)


def _config(directory, **overrides):
  config = base.get_config()
  config.dataset = f'text:{directory}'
  config.normalization = 'none'
  config.sequence_length = SEQUENCE_LENGTH
  config.update_from_flattened_dict(overrides)
  return config


def test_files_are_split_disjointly_and_deterministically(corpus, tmp_path):
  directory, written = corpus
  splits = text.split_files(directory)
  assert tuple(splits) == text.SPLITS
  assert all(splits.values()), 'the test corpus fills every split'
  listed = [path for paths in splits.values() for path in paths]
  assert sorted(listed) == sorted(written)  # Every file, each once.
  assert all(paths == sorted(paths) for paths in splits.values())
  assert text.split_files(directory) == splits
  # Relative paths decide, wherever the corpus lies.
  elsewhere = shutil.copytree(directory, tmp_path / 'elsewhere')
  assert text.split_files(elsewhere) == splits
  for split, paths in splits.items():
    assert {text.split_of(path) for path in paths} == {split}


def test_adding_a_file_moves_no_other_file(corpus):
  directory, _ = corpus
  before = text.split_files(directory)
  (directory / 'part0' / 'new.rst.txt').write_bytes(b'added')
  after = text.split_files(directory)
  assert sum('part0/new.rst.txt' in paths for paths in after.values()) == 1
  for split in text.SPLITS:
    assert [p for p in after[split] if p != 'part0/new.rst.txt'] == (
        before[split])


def test_the_split_of_a_path_is_pinned():
  # Files of the Python documentation's sources: a committed split record
  # stays true only while these hold.
  pinned = {'bugs.rst.txt': 'train', 'c-api/abstract.rst.txt': 'train',
            'c-api/code.rst.txt': 'validation',
            'extending/windows.rst.txt': 'validation',
            'about.rst.txt': 'test', 'faq/general.rst.txt': 'test'}
  assert {path: text.split_of(path) for path in pinned} == pinned


def test_windows_are_exact_next_byte_pairs():
  content = bytes(range(256)) * 3 + b'tail'
  inputs, labels = text.windows(content, SEQUENCE_LENGTH)
  count = len(content) // (SEQUENCE_LENGTH + 1)
  assert inputs.shape == labels.shape == (count, SEQUENCE_LENGTH)
  assert (inputs.dtype, labels.dtype) == (np.uint8, np.int32)
  flat = np.frombuffer(content, np.uint8).astype(np.int32)
  starts = np.arange(count)[:, None] * (SEQUENCE_LENGTH + 1)
  positions = starts + np.arange(SEQUENCE_LENGTH)
  np.testing.assert_array_equal(inputs, flat[positions])
  np.testing.assert_array_equal(labels, flat[positions + 1])
  # 772 bytes: 45 windows of 17, and a tail of 7 bytes that makes none.
  assert count == 45
  assert text.windows(b'x' * SEQUENCE_LENGTH, SEQUENCE_LENGTH)[0].shape == (
      0, SEQUENCE_LENGTH)
  with pytest.raises(ValueError, match='sequence_length must be >= 1'):
    text.windows(content, 0)


def test_load_splits_gives_the_files_windows_as_untouched_tokens(corpus):
  directory, written = corpus
  splits, num_classes, shape = data.load_splits(_config(directory))
  assert (num_classes, shape) == (256, (SEQUENCE_LENGTH,))
  for split, paths in text.split_files(directory).items():
    # Files concatenated in sorted order: windows run across their ends.
    inputs, labels = text.windows(
        b''.join(written[path] for path in sorted(paths)), SEQUENCE_LENGTH)
    assert splits[split].images.dtype == np.int32
    np.testing.assert_array_equal(splits[split].images, inputs)
    np.testing.assert_array_equal(splits[split].labels, labels)
  assert data.train_size(f'text:{directory}',
                         sequence_length=SEQUENCE_LENGTH) == len(
                             splits['train'].labels)
  # A budget of windows spreads over the whole split: first, middle, last.
  quick, _, _ = data.load_splits(_config(directory, max_examples=3))
  for split in text.SPLITS:
    count = len(splits[split].labels)
    for name in ('images', 'labels'):
      np.testing.assert_array_equal(
          getattr(quick[split], name),
          getattr(splits[split], name)[[0, round((count - 1) / 2), count - 1]])


def test_a_text_source_must_keep_its_tokens(corpus):
  directory, _ = corpus
  with pytest.raises(ValueError, match="use normalization='none'"):
    data.load_splits(_config(directory, normalization='zscore'))


def test_sequence_length_decides_the_splits(corpus):
  directory, _ = corpus
  config = _config(directory)
  longer = _config(directory, sequence_length=2 * SEQUENCE_LENGTH)
  assert data.split_source(config) != data.split_source(longer)
  assert data.load_splits(longer)[2] == (2 * SEQUENCE_LENGTH,)


def test_validation_size_does_not_apply_to_text(corpus):
  directory, _ = corpus
  config = _config(directory, validation_size=5000)
  assert data.is_text(config.dataset)
  assert base.fit_validation(config, 10) is None
  assert config.validation_size == 5000
  with pytest.raises(base.ValidationSizeError, match='files of its own'):
    base.fit_validation(config, 10, scale=False)


@pytest.mark.parametrize('make', ['missing', 'file', 'empty'])
def test_a_corpus_that_is_not_there_says_how_to_get_one(tmp_path, make):
  directory = tmp_path / 'corpus'
  if make == 'file':
    directory.write_bytes(b'not a directory')
  elif make == 'empty':
    directory.mkdir()
  spec = f'text:{directory}'
  data.check_spec(spec)
  for load in (lambda: data.load(spec), lambda: data.train_size(spec)):
    with pytest.raises(
        data.DataUnavailableError,
        match=f'{re.escape(str(directory))}.*get_text_corpus.sh'):
      load()


def test_an_empty_split_is_named(tmp_path):
  (tmp_path / 'only.txt').write_bytes(b'one file fills one split only' * 9)
  with pytest.raises(ValueError, match=f'split of {re.escape(str(tmp_path))} '
                     'holds 0 bytes, too few for one example of '
                     r'sequence_length \+ 1 = 129 bytes'):
    data.load(f'text:{tmp_path}')


def test_unknown_specs_list_the_text_source():
  with pytest.raises(ValueError, match='"text:DIR"'):
    data.check_spec('txt:somewhere')
  with pytest.raises(ValueError, match="'text:' names no directory"):
    data.check_spec('text:')


def test_the_split_record_lists_every_file_and_its_checksum(corpus,
                                                             tmp_path,
                                                             capsys):
  directory, written = corpus
  out = tmp_path / 'split.json'
  text.main(['split', str(directory), '--out', str(out),
             '--sequence-length', str(SEQUENCE_LENGTH)])
  record = json.loads(out.read_text())
  assert record['rule'] == text.SPLIT_RULE
  splits = text.split_files(directory)
  printed = capsys.readouterr().out.splitlines()
  for line, (split, paths) in zip(printed[1:], splits.items()):
    summary = record['splits'][split]
    assert [entry['path'] for entry in summary['entries']] == paths
    for entry in summary['entries']:
      content = written[entry['path']]
      assert entry['bytes'] == len(content)
      assert entry['sha256'] == hashlib.sha256(content).hexdigest()
    concatenated = b''.join(written[path] for path in paths)
    assert summary['sha256'] == hashlib.sha256(concatenated).hexdigest()
    assert (summary['files'], summary['bytes']) == (len(paths),
                                                    len(concatenated))
    assert line.split() == [split, str(len(paths)), str(len(concatenated)),
                            str(len(concatenated) // (SEQUENCE_LENGTH + 1))]
