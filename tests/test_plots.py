"""Tests for the figures: what is drawn, and the image written."""

import subprocess
import sys

import jax.numpy as jnp
from matplotlib import figure as figure_lib
from matplotlib import image as image_lib
import numpy as np
import pytest

import laperm_jax as lp
from laperm_jax import plots


def _read_png(path):
  pixels = image_lib.imread(path)
  assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
  return pixels[..., :3]


def _assert_not_blank(pixels):
  # A fair share of the canvas is drawn on, in more than one color.
  non_white = np.any(pixels < 0.95, axis=2).mean()
  assert non_white > 0.02, non_white
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10


def test_importing_the_library_does_not_import_matplotlib():
  code = ('import sys, laperm_jax; '
          'assert "matplotlib" not in sys.modules, "matplotlib imported"')
  subprocess.run([sys.executable, '-c', code], check=True)


def test_weight_profiles_one_line_per_vector(tmp_path):
  rng = np.random.default_rng(0)
  params = {
      'Conv_0': {'kernel': jnp.asarray(rng.normal(size=(3, 3, 1, 8))),
                 'bias': jnp.zeros(8)},
      'Dense_0': {'kernel': jnp.asarray(rng.uniform(-1, 1, size=(72, 130))),
                  'bias': jnp.zeros(130)},
      'Dense_1': {'kernel': jnp.asarray(rng.normal(size=(130, 10)))},
  }
  figure = figure_lib.Figure(figsize=(8, 6))
  path = plots.plot_weight_profiles(params, tmp_path / 'profiles.png',
                                    max_vectors=100, figure=figure, dpi=50)
  assert path == tmp_path / 'profiles.png'
  pixels = _read_png(path)
  assert pixels.shape[:2] == (300, 400)  # figsize * dpi
  _assert_not_blank(pixels)
  drawn = [ax for ax in figure.axes if ax.axison]
  # Kernels only (biases are left out), in flattened order.
  assert [ax.get_title() for ax in drawn] == [
      "['Conv_0']['kernel'] (3, 3, 1, 8)", "['Dense_0']['kernel'] (72, 130)",
      "['Dense_1']['kernel'] (130, 10)"]
  assert [len(ax.lines) for ax in drawn] == [8, 100, 10]
  # Each line is one weight vector, sorted.
  line = drawn[2].lines[3].get_ydata()
  np.testing.assert_array_equal(
      line, np.sort(np.asarray(params['Dense_1']['kernel'], np.float32)[:, 3]))


def test_weight_profiles_errors(tmp_path):
  with pytest.raises(ValueError, match='no leaf is selected'):
    plots.plot_weight_profiles({'b': jnp.zeros(3)}, tmp_path / 'x.png')
  with pytest.raises(ValueError, match='max_vectors'):
    plots.plot_weight_profiles({'w': jnp.zeros((3, 2))}, tmp_path / 'x.png',
                               max_vectors=0)


def _record(steps, vectors, seed):
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(steps, vectors))
  return {
      'epoch': np.arange(steps),
      'min': base - 2, 'p15': base - 1, 'p50': base, 'p85': base + 1,
      'max': base + 2,
      'distance_mean': rng.uniform(size=steps),
      'distance_std': rng.uniform(size=steps),
      'val_loss': np.linspace(2, 0.5, steps),
  }


@pytest.mark.parametrize('max_vectors,shown', [(100, 6), (3, 3)])
def test_training_monitor_draws_every_series(tmp_path, max_vectors, shown):
  runs = {'LaPerm': _record(12, 6, 0), 'Adam': _record(12, 6, 1)}
  figure = figure_lib.Figure(figsize=(6, 6))
  path = plots.plot_training_monitor(runs, tmp_path / 'monitor.png',
                                     layer_name='Dense_0', figure=figure,
                                     max_vectors=max_vectors, dpi=50)
  pixels = _read_png(path)
  assert pixels.shape[:2] == (300, 300)
  _assert_not_blank(pixels)
  axes = np.array(figure.axes).reshape(3, 2)
  assert [ax.get_title() for ax in axes[0]] == ['LaPerm', 'Adam']
  for column in range(2):
    weights, distance, loss = axes[:, column]
    # 15th/50th/85th percentile line per vector, one min and one max line.
    assert len(weights.lines) == 3 * shown + 2
    red = [line for line in weights.lines if line.get_color() == 'red']
    assert len(red) == shown
    assert len(distance.lines) == 2 and len(loss.lines) == 1
  np.testing.assert_array_equal(axes[2, 1].lines[0].get_ydata(),
                                runs['Adam']['val_loss'])


def test_training_monitor_rejects_bad_records(tmp_path):
  record = _record(5, 3, 0)
  del record['val_loss']
  with pytest.raises(ValueError, match=r"run 'a' lacks \['val_loss'\]"):
    plots.plot_training_monitor({'a': record}, tmp_path / 'x.png')
  record = _record(5, 3, 0)
  record['p85'] = record['p85'][:, :2]
  with pytest.raises(ValueError, match="'p85' has shape"):
    plots.plot_training_monitor({'a': record}, tmp_path / 'x.png')
  record = _record(5, 3, 0)
  record['distance_mean'] = record['distance_mean'][:4]
  with pytest.raises(ValueError, match="'distance_mean' has shape"):
    plots.plot_training_monitor({'a': record}, tmp_path / 'x.png')
  with pytest.raises(ValueError, match='runs is empty'):
    plots.plot_training_monitor({}, tmp_path / 'x.png')


def test_permutation_cycles_one_colored_path_per_cycle(tmp_path):
  rng = np.random.default_rng(0)
  before = rng.normal(size=(40, 3)).astype(np.float32)
  after = before.copy()
  # Vector 1: the cycles (0 1 2), (5 9) and (10 11 12 13); the rest stay.
  column = before[:, 1]
  after[[0, 1, 2], 1] = column[[1, 2, 0]]
  after[[5, 9], 1] = column[[9, 5]]
  after[[10, 11, 12, 13], 1] = column[[11, 12, 13, 10]]
  figure = figure_lib.Figure(figsize=(4, 4))
  path = plots.plot_permutation_cycles(jnp.asarray(before), jnp.asarray(after),
                                       tmp_path / 'cycles.png',
                                       vector_index=1, figure=figure, dpi=50)
  pixels = _read_png(path)
  assert pixels.shape[:2] == (200, 200)
  _assert_not_blank(pixels)
  (ax,) = figure.axes
  assert len(ax.lines) == 3
  colors = {tuple(line.get_color()) for line in ax.lines}
  assert len(colors) == 3  # Each cycle in its own color.
  # Closed paths through 2, 3 and 4 entries (16 points per step, then back
  # to the start), passing through each entry of its cycle.
  assert sorted(len(line.get_xdata()) for line in ax.lines) == [33, 49, 65]
  offsets = np.asarray(ax.collections[0].get_offsets())
  path = np.stack([ax.lines[0].get_xdata(), ax.lines[0].get_ydata()], 1)
  np.testing.assert_allclose(path[::16], offsets[[0, 1, 2, 0]], atol=1e-12)
  (dots,) = ax.collections
  assert len(dots.get_offsets()) == 40
  assert '3 cycles, 9 of 40 entries moved' in ax.get_title()
  # Dots sit on the circle in ascending order of value.
  angles = np.arctan2(*np.asarray(dots.get_offsets()).T[::-1]) % (2 * np.pi)
  np.testing.assert_array_equal(np.argsort(angles), np.argsort(column))


def test_permutation_cycles_errors(tmp_path):
  with pytest.raises(ValueError, match='vector_index 3 is out of range'):
    plots.plot_permutation_cycles(jnp.zeros((4, 3)), jnp.zeros((4, 3)),
                                  tmp_path / 'x.png', vector_index=3)
  with pytest.raises(ValueError, match='not a permutation'):
    plots.plot_permutation_cycles(jnp.ones((4, 3)), jnp.zeros((4, 3)),
                                  tmp_path / 'x.png')


def test_plots_of_a_real_laperm_state(tmp_path):
  # The analysis functions feed the plots directly.
  rng = np.random.default_rng(2)
  kernel = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
  moved = jnp.asarray(np.stack([rng.permutation(c) for c in np.asarray(kernel).T],
                               1))
  stats = [lp.weight_statistics(kernel), lp.weight_statistics(moved)]
  distance = lp.ranking_distance({'k': kernel}, {'k': moved})['k']
  record = {name: np.stack([s[name] for s in stats]) for name in stats[0]}
  record.update(epoch=np.arange(2), val_loss=np.ones(2),
                distance_mean=np.array([0.0, distance.mean]),
                distance_std=np.array([0.0, distance.std]))
  plots.plot_training_monitor({'run': record}, tmp_path / 'm.png', dpi=30)
  plots.plot_permutation_cycles(kernel, moved, tmp_path / 'c.png', dpi=30)
  assert (tmp_path / 'm.png').stat().st_size > 0
  assert (tmp_path / 'c.png').stat().st_size > 0


def test_plots_under_a_layout(tmp_path):
  # An attention query kernel (features, heads, head_dim): one line, and
  # one drawable vector, per (head, dim) fan-in of 10 weights.
  rng = np.random.default_rng(4)
  query = rng.normal(size=(10, 4, 3)).astype(np.float32)
  figure = figure_lib.Figure(figsize=(4, 3))
  plots.plot_weight_profiles({'query': jnp.asarray(query)},
                             tmp_path / 'p.png', vector_axes=(0,),
                             figure=figure, dpi=30)
  (ax,) = [ax for ax in figure.axes if ax.axison]
  assert len(ax.lines) == 12
  np.testing.assert_array_equal(ax.lines[5].get_ydata(),
                                np.sort(query[:, 1, 2]))
  after = query.copy()
  after[[0, 1, 2], 1, 2] = query[[1, 2, 0], 1, 2]
  figure = figure_lib.Figure(figsize=(4, 4))
  plots.plot_permutation_cycles(jnp.asarray(query), jnp.asarray(after),
                                tmp_path / 'c.png', vector_index=5,
                                vector_axes=(0,), figure=figure, dpi=30)
  assert '1 cycles, 3 of 10 entries moved' in figure.axes[0].get_title()
  with pytest.raises(ValueError, match=r"plot_weight_profiles: leaf "
                     r"\['query'\]: vector_axes \(3,\) names axis 3"):
    plots.plot_weight_profiles({'query': jnp.asarray(query)},
                               tmp_path / 'x.png', vector_axes=(3,))
