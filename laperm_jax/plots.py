"""Figures of the paper: weight profiles, training monitor, permutation cycles.

Needs matplotlib (the ``plots`` extra: ``pip install 'laperm-jax[plots]'``).
It is imported when a function here is called, not when ``laperm_jax`` is,
and only through ``matplotlib.figure.Figure`` with the Agg canvas: no
pyplot, no window, no change to the global backend. Every function writes a
file and returns its path. Pass ``figure=`` (an empty
``matplotlib.figure.Figure``) to draw into a figure you keep, e.g. to
inspect its artists.
"""

import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any, Optional, Union

import jax
import numpy as np
import optax

from laperm_jax import _analysis
from laperm_jax import _weight_vectors

PathLike = Union[str, os.PathLike]

_STATISTICS = ('min', 'p15', 'p50', 'p85', 'max')
_SERIES = ('epoch', 'distance_mean', 'distance_std', 'val_loss')


def plot_weight_profiles(
    params: optax.Params,
    path: PathLike,
    *,
    mask: Optional[Any] = None,
    vector_axes: _weight_vectors.VectorAxes = None,
    max_vectors: int = 100,
    figure: Optional[Any] = None,
    dpi: int = 100,
) -> pathlib.Path:
  """Draws the weight profiles of a model, one panel per leaf (Figs. 11-12).

  Each weight vector is sorted ascending and drawn as one line against its
  position in the sorted order, so a panel shows the distribution of every
  weight vector of the leaf side by side. Trained networks and their random
  initializations have strikingly similar profiles (Section 2).

  Args:
    params: A tree of arrays.
    path: Where to write the image; the format follows the extension.
    mask: Which leaves get a panel: a tree of bools with the structure of
      ``params`` (or a prefix of it), or a callable returning one. Default:
      leaves with ``ndim >= 2`` (kernels) whose layout is not ``NO_FAN_IN``.
    vector_axes: Which axes of each leaf form one weight vector, in any form
      :func:`laperm_jax.laperm` takes; default: all axes but the last.
    max_vectors: The most weight vectors drawn per panel; larger leaves show
      that many, evenly spaced over the output units.
    figure: An empty ``matplotlib.figure.Figure`` to draw into; default: a
      new one sized to the panels.
    dpi: Resolution of the written image.

  Returns:
    ``path``, as a ``pathlib.Path``.

  Example:
    >>> import os, tempfile
    >>> import jax
    >>> from laperm_jax import plots
    >>> params = {'kernel': jax.random.normal(jax.random.key(0), (64, 10))}
    >>> path = os.path.join(tempfile.mkdtemp(), 'profiles.png')
    >>> plots.plot_weight_profiles(params, path).name
    'profiles.png'

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020
  """
  if max_vectors < 1:
    raise ValueError(f'max_vectors must be >= 1, got {max_vectors}.')
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  selected = _weight_vectors.selected_with_fan_in('plot_weight_profiles',
                                                  mask, vector_axes, params)
  if not any(selected):
    raise ValueError('plot_weight_profiles: no leaf is selected by mask.')
  for (path_, leaf), is_selected in zip(flat, selected):
    if is_selected and np.ndim(leaf) == 0:
      raise ValueError(
          f'plot_weight_profiles: leaf {jax.tree_util.keystr(path_)} is a '
          'scalar, which holds no weight vector; leave it out of mask.')
  layouts = _weight_vectors.checked_layouts('plot_weight_profiles',
                                            vector_axes, params, selected)
  panels = [(jax.tree_util.keystr(path_), leaf, axes)
            for (path_, leaf), is_selected, axes in zip(flat, selected, layouts)
            if is_selected]
  columns = math.ceil(math.sqrt(len(panels)))
  rows = math.ceil(len(panels) / columns)
  figure = _new_figure(figure, (4.5 * columns, 3.0 * rows))
  axes = figure.subplots(rows, columns, squeeze=False).ravel()
  for ax, (name, leaf, leaf_axes) in zip(axes, panels):
    profile = np.asarray(_weight_vectors.as_vectors(
        _weight_vectors.sort_vectors(leaf, vector_axes=leaf_axes),
        vector_axes=leaf_axes), np.float32)
    shown = _spread(profile.shape[1], max_vectors)
    ax.plot(np.arange(profile.shape[0]), profile[:, shown], linewidth=0.8)
    ax.set_title(f'{name} {tuple(np.shape(leaf))}', fontsize=9)
    ax.set_xlabel('position in sorted weight vector', fontsize=8)
    ax.set_ylabel('weight', fontsize=8)
  for ax in axes[len(panels):]:
    ax.set_axis_off()
  return _save(figure, path, dpi)


def plot_training_monitor(
    runs: Mapping[str, Mapping[str, Any]],
    path: PathLike,
    *,
    layer_name: str = 'first layer',
    max_vectors: int = 100,
    figure: Optional[Any] = None,
    dpi: int = 100,
) -> pathlib.Path:
  """Draws the training monitor of Figure 13, one column per run.

  Rows, top to bottom: the distribution of the layer's weight vectors over
  time (each vector's 15th, 50th (red) and 85th percentiles as one line per
  vector, and the layer's minimum and maximum as single lines); the mean and
  standard deviation of the ranking distance between consecutive records,
  divided by the vector length; the validation loss. Rows share their
  y-axis, so runs compare side by side.

  Args:
    runs: Maps a run name (the column title) to its record: a mapping with
      numpy-convertible arrays ``'epoch'`` of shape ``(T,)``, ``'min'``,
      ``'p15'``, ``'p50'``, ``'p85'``, ``'max'`` of shape
      ``(T, num_vectors)`` (rows of :func:`laperm_jax.weight_statistics`),
      and ``'distance_mean'``, ``'distance_std'`` (a
      :class:`laperm_jax.RankingDistance` per record) and ``'val_loss'`` of
      shape ``(T,)``.
    path: Where to write the image; the format follows the extension.
    layer_name: Names the monitored layer in the row labels.
    max_vectors: The most weight vectors whose percentile lines are drawn,
      evenly spaced over the output units (the paper draws all 100).
    figure: An empty ``matplotlib.figure.Figure`` to draw into; default: a
      new one.
    dpi: Resolution of the written image.

  Returns:
    ``path``, as a ``pathlib.Path``.

  Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from laperm_jax import plots
    >>> steps, vectors = 5, 3
    >>> record = {name: np.random.default_rng(0).normal(size=(steps, vectors))
    ...           for name in ('min', 'p15', 'p50', 'p85', 'max')}
    >>> record.update(epoch=np.arange(steps), distance_mean=np.zeros(steps),
    ...               distance_std=np.zeros(steps), val_loss=np.ones(steps))
    >>> path = os.path.join(tempfile.mkdtemp(), 'monitor.png')
    >>> plots.plot_training_monitor({'adam': record}, path).name
    'monitor.png'

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020 (A.3)
  """
  if not runs:
    raise ValueError('plot_training_monitor: runs is empty.')
  if max_vectors < 1:
    raise ValueError(f'max_vectors must be >= 1, got {max_vectors}.')
  records = {name: _check_record(name, record) for name, record in runs.items()}
  figure = _new_figure(figure, (4.0 * len(records), 8.0))
  axes = figure.subplots(3, len(records), sharex='col', sharey='row',
                         squeeze=False)
  for column, (name, record) in enumerate(records.items()):
    weights_ax, distance_ax, loss_ax = axes[:, column]
    epoch = record['epoch']
    shown = _spread(record['p50'].shape[1], max_vectors)
    weights_ax.plot(epoch, record['p15'][:, shown], color='tab:blue',
                    linewidth=0.5, alpha=0.5)
    weights_ax.plot(epoch, record['p85'][:, shown], color='tab:green',
                    linewidth=0.5, alpha=0.5)
    weights_ax.plot(epoch, record['p50'][:, shown], color='red',
                    linewidth=0.5, alpha=0.7)
    weights_ax.plot(epoch, record['max'].max(axis=1), color='black',
                    linewidth=1.0)
    weights_ax.plot(epoch, record['min'].min(axis=1), color='black',
                    linewidth=1.0)
    weights_ax.set_title(name)
    distance_ax.plot(epoch, record['distance_mean'], label='mean / length')
    distance_ax.plot(epoch, record['distance_std'], label='SD / length')
    distance_ax.legend(fontsize=7, loc='upper right')
    loss_ax.plot(epoch, record['val_loss'], color='tab:purple')
    loss_ax.set_xlabel('epoch')
  axes[0, 0].set_ylabel(f'{layer_name}: min, p15/p50/p85, max', fontsize=8)
  axes[1, 0].set_ylabel('ranking distance / vector length', fontsize=8)
  axes[2, 0].set_ylabel('validation loss', fontsize=8)
  return _save(figure, path, dpi)


def plot_permutation_cycles(
    before: Any,
    after: Any,
    path: PathLike,
    *,
    vector_index: int = 0,
    vector_axes: Optional[tuple[int, ...]] = None,
    figure: Optional[Any] = None,
    dpi: int = 100,
) -> pathlib.Path:
  """Draws the permutation of one weight vector as cycles on a circle (Fig. 14).

  The entries of weight vector ``vector_index`` of ``before`` sit on a
  circle, counterclockwise in ascending order of value. The permutation that
  turns ``before`` into ``after`` (:func:`laperm_jax.permutation_between`)
  is split into disjoint cycles (:func:`laperm_jax.permutation_cycles`);
  each cycle is drawn as one closed path through its entries, in its own
  color. Each step of a path bends toward the center, so swaps between
  neighbors on the circle stay visible. Entries that did not move are dots
  only.

  Args:
    before: One leaf (rank >= 1) at one sync, e.g. a synced kernel.
    after: The same leaf at a later sync: in every weight vector, the same
      values in another order.
    path: Where to write the image; the format follows the extension.
    vector_index: Which weight vector (output unit) to draw: a column of
      ``lp.as_vectors(before, vector_axes=vector_axes)``.
    vector_axes: The leaf's fan-in axes, a tuple of ints; default: all axes
      but the last.
    figure: An empty ``matplotlib.figure.Figure`` to draw into; default: a
      new one.
    dpi: Resolution of the written image.

  Returns:
    ``path``, as a ``pathlib.Path``.

  Example:
    >>> import os, tempfile
    >>> import jax.numpy as jnp
    >>> from laperm_jax import plots
    >>> path = os.path.join(tempfile.mkdtemp(), 'cycles.png')
    >>> plots.plot_permutation_cycles(jnp.array([1., 2., 3., 4.]),
    ...                               jnp.array([2., 3., 1., 4.]), path).name
    'cycles.png'

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020 (A.4)
  """
  source = np.asarray(_weight_vectors.as_vectors(
      _analysis.permutation_between(before, after, vector_axes=vector_axes),
      vector_axes=vector_axes))
  if not 0 <= vector_index < source.shape[1]:
    raise ValueError(
        f'plot_permutation_cycles: vector_index {vector_index} is out of '
        f'range for {source.shape[1]} weight vectors.')
  source = source[:, vector_index]
  rank = np.asarray(_weight_vectors.as_vectors(
      _weight_vectors.ranks(before, vector_axes=vector_axes),
      vector_axes=vector_axes))[:, vector_index]
  angle = 2 * np.pi * rank / source.size
  x, y = np.cos(angle), np.sin(angle)
  cycles = _analysis.permutation_cycles(source)

  import matplotlib  # pylint: disable=g-import-not-at-top
  colors = matplotlib.colormaps['turbo'](
      np.linspace(0.05, 0.95, max(len(cycles), 1)))
  figure = _new_figure(figure, (6.0, 6.0))
  ax = figure.subplots()
  for cycle, color in zip(cycles, colors):
    curve_x, curve_y = _cycle_curve(x[cycle], y[cycle])
    ax.plot(curve_x, curve_y, color=color, linewidth=1.5, alpha=0.9)
  ax.scatter(x, y, s=8, color='black', zorder=3)
  moved = int(np.sum(source != np.arange(source.size)))
  ax.set_title(f'weight vector {vector_index}: {len(cycles)} cycles, '
               f'{moved} of {source.size} entries moved')
  ax.set_aspect('equal')
  ax.set_axis_off()
  return _save(figure, path, dpi)


# Points per step of a cycle's path (a quadratic Bezier curve).
_CURVE_POINTS = 16


def _cycle_curve(x, y):
  """A closed path through the points, each step bent toward the origin.

  Returns:
    The x and y coordinates: ``_CURVE_POINTS`` per step, then the start.
  """
  t = np.linspace(0.0, 1.0, _CURVE_POINTS, endpoint=False)[:, None]
  start = np.stack([x, y])
  end = np.roll(start, -1, axis=1)
  # The control point is the chord's midpoint pulled halfway to the center.
  control = 0.25 * (start + end)
  curve = ((1 - t)**2)[None] * start[:, None] + (2 * t * (1 - t))[None] * (
      control[:, None]) + (t**2)[None] * end[:, None]
  curve = curve.transpose(0, 2, 1).reshape(2, -1)  # (2, steps * points)
  curve = np.concatenate([curve, start[:, :1]], axis=1)
  return curve[0], curve[1]


def _spread(count: int, most: int) -> np.ndarray:
  """Up to ``most`` indices evenly spaced over ``range(count)``."""
  if count <= most:
    return np.arange(count)
  return np.unique(np.linspace(0, count - 1, most).round().astype(int))


def _check_record(name, record):
  """The record as float numpy arrays, after checking keys and shapes."""
  missing = [key for key in _STATISTICS + _SERIES if key not in record]
  if missing:
    raise ValueError(
        f'plot_training_monitor: run {name!r} lacks {missing}.')
  arrays = {key: np.asarray(record[key], np.float64)
            for key in _STATISTICS + _SERIES}
  steps = arrays['epoch'].shape
  if len(steps) != 1:
    raise ValueError(
        f"plot_training_monitor: run {name!r}: 'epoch' must have shape (T,), "
        f'got {steps}.')
  for key in _SERIES:
    if arrays[key].shape != steps:
      raise ValueError(
          f"plot_training_monitor: run {name!r}: {key!r} has shape "
          f"{arrays[key].shape}, but 'epoch' has {steps}.")
  vectors = arrays['p50'].shape
  for key in _STATISTICS:
    if arrays[key].ndim != 2 or arrays[key].shape[0] != steps[0] or (
        arrays[key].shape != vectors):
      raise ValueError(
          f"plot_training_monitor: run {name!r}: {key!r} has shape "
          f"{arrays[key].shape}; the statistics must all have shape "
          f'(T, num_vectors) with T = {steps[0]}.')
  return arrays


def _new_figure(figure, size):
  """``figure``, or a new Agg figure of ``size`` inches."""
  # Imported here so `import laperm_jax` never imports matplotlib.
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
  if figure is None:
    figure = figure_lib.Figure(figsize=size, layout='constrained')
    backend_agg.FigureCanvasAgg(figure)
  return figure


def _save(figure, path, dpi):
  path = pathlib.Path(path)
  figure.savefig(path, dpi=dpi)
  return path
