"""Initial weights for reconnection: random pruning and shared values.

LaPerm never changes the values of the permuted weights, only their places,
so the initial weights fix what the network can become. Section 5.4 of the
paper prunes a random fraction of every kernel before training (zeros are
values like any other: LaPerm *reconnects* the surviving weights); Section
5.5 makes every weight either 0 or one shared value (a weight-agnostic net).

Both functions here choose exactly ``round(fraction * n)`` entries (halves
rounded up) uniformly at random among the ``n`` entries of each selected leaf,
or of each weight vector with ``per_vector=True``, rather than flipping a coin
per entry as the authors' code does. Every entry is still chosen with
probability ``fraction`` (up to that rounding), but the number of zeros is
known in advance, the same for every seed, and with ``per_vector=True`` every
weight vector (the unit a sync permutes) holds the same number of them.
"""

from collections.abc import Callable
import functools
import math
from typing import Any, NamedTuple, Optional, Union
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from laperm_jax import _masks
from laperm_jax import _weight_vectors

PerLeaf = Union[float, Any, Callable[[optax.Params], Any]]

# Exponent of the size-aware rule: the kept fraction of a leaf of `n` weights
# is proportional to `n ** -0.3`. Fitted to Appendix A.5.0, where F2's kernels
# of 100352, 8192 and 640 weights kept 7%, 14% and 33%: with an overall rate
# of 92.3% this rule keeps 7.0%, 14.8% and 31.8%.
SIZE_AWARE_EXPONENT = 0.3


class PruneResult(NamedTuple):
  """What :func:`random_prune` returns.

  Attributes:
    params: The params with the pruned entries set to zero.
    rates: Per leaf (a tree like ``params``), the rate applied: after the
      size-aware rule and the first-layer cap; 0 for leaves not selected.
    num_pruned: Per leaf, the number of entries set to zero by this call
      (exactly ``round(rate * n)``, or that per weight vector, summed), as an
      int32 scalar.
    num_nonzero: Per leaf, the number of nonzero entries in the returned
      ``params`` (entries that were zero before count as zero), as an int32
      scalar. Unselected leaves are counted too.
  """

  params: optax.Params
  rates: Any
  num_pruned: Any
  num_nonzero: Any


def random_prune(
    key: jax.Array,
    params: optax.Params,
    rate: Optional[float],
    *,
    mask: Optional[_masks.Mask] = None,
    rates: Optional[PerLeaf] = None,
    size_aware: bool = False,
    first_layer: Optional[_masks.Mask] = None,
    first_layer_max: Optional[float] = 0.2,
    per_vector: bool = False,
    vector_axes: _weight_vectors.VectorAxes = None,
) -> PruneResult:
  """Sets a random fraction of the selected weights to zero (Section 5.4).

  Each selected leaf gets exactly ``round(rate * n)`` zeros (halves rounded
  up), placed uniformly at random among its ``n`` entries; with
  ``per_vector=True``, exactly ``round(rate * vector_length)`` zeros in each
  weight vector instead. LaPerm then keeps these zeros in every weight vector
  through every sync: it only moves them.

  The first layer is pruned at most ``first_layer_max`` (Appendix A.5.4:
  its weight vectors are short, and pruning it more creates a bottleneck);
  the cap applies to whatever rate that leaf would get. Biases and
  normalization scales are never pruned by default.

  Args:
    key: A PRNG key; each leaf uses its own key split from it, by position in
      the flattened ``params``.
    params: The params to prune (floating-point leaves wherever selected).
    rate: The fraction of each selected leaf to set to zero, in [0, 1]. With
      ``size_aware``, the overall fraction of all selected weights instead.
      Unused (may be None) when ``rates`` is given.
    mask: Which leaves to prune: a tree of bools with the structure of
      ``params`` (or a prefix of it), or a callable returning one, as
      ``optax.masked`` takes. Default: leaves with ``ndim >= 2`` (kernels)
      whose layout in ``vector_axes`` is not ``NO_FAN_IN``; a mask that
      selects a ``NO_FAN_IN`` leaf raises.
    rates: Per-leaf rates replacing ``rate``: a tree of floats with the
      structure of ``params`` (or a prefix of it), or a callable returning
      one. Entries of unselected leaves are ignored.
    size_aware: Distribute ``rate`` over the selected leaves so that larger
      leaves are pruned more (Appendix A.5.0), with the rates of
      :func:`size_aware_rates`.
    first_layer: The input layer's leaves, selected as ``mask`` selects
      (a tree of bools, a prefix such as ``{'Dense_0': True, 'Dense_1':
      False, ...}``, or a callable returning one); the cap applies to each
      of them that ``mask`` selects (at least one must be). Default: the
      first selected leaf in the flattened ``params`` (Flax sorts module
      names, so pass it when that is not the input layer, e.g. for
      ``Dense_10`` before ``Dense_2``). A key path string (``"['Dense_0']
      ['kernel']"``) still works but is deprecated.
    first_layer_max: The most the first layer is pruned, in [0, 1]; None
      applies no cap (Section 5.5's F2 pruned its first layer by 93%).
    per_vector: Whether to choose the zeros per weight vector (every vector
      gets the same number) rather than per leaf.
    vector_axes: Which axes of each selected leaf form one weight vector, as
      :func:`laperm_jax.laperm` takes it (default: all axes but the last);
      pass the layout LaPerm will train with. It matters with
      ``per_vector``; it is checked for every selected leaf either way.

  Returns:
    A :class:`PruneResult`: the pruned params, the rate applied per leaf, and
    the exact number of pruned and of nonzero entries per leaf.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import laperm_jax as lp
    >>> params = {'Dense_0': {'kernel': jnp.ones((64, 32)), 'bias': jnp.ones(32)},
    ...           'Dense_1': {'kernel': jnp.ones((32, 10)), 'bias': jnp.ones(10)}}
    >>> pruned = lp.random_prune(jax.random.key(0), params, 0.5)
    >>> jax.tree.map(int, pruned.num_nonzero)  # input layer capped at 20%
    {'Dense_0': {'bias': 32, 'kernel': 1638}, 'Dense_1': {'bias': 10, 'kernel': 160}}

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = [jax.tree_util.keystr(path) for path, _ in flat]
  selected = _weight_vectors.selected_with_fan_in('random_prune', mask,
                                                  vector_axes, params)
  _check_selected_leaves('random_prune', flat, selected)
  layouts = _weight_vectors.checked_layouts('random_prune', vector_axes,
                                            params, selected)
  if rates is not None and size_aware:
    raise ValueError(
        'random_prune: pass either rates or size_aware=True, not both.')
  if rates is None:
    if rate is None:
      raise ValueError('random_prune: rate is None and no rates are given.')
    _check_fraction('random_prune', 'rate', rate, allow_zero=True)
    if size_aware:
      rates = size_aware_rates(params, rate, mask=mask)
  leaf_rates = _masks.per_leaf(rate if rates is None else rates, params,
                                 'rates' if rates is not None else 'rate')
  leaf_rates = [r if is_selected else 0.0
                for r, is_selected in zip(leaf_rates, selected)]
  for name, leaf_rate, is_selected in zip(names, leaf_rates, selected):
    if is_selected:
      _check_fraction('random_prune', f'the rate of leaf {name}', leaf_rate,
                      allow_zero=True)
  if first_layer_max is not None:
    _check_fraction('random_prune', 'first_layer_max', first_layer_max,
                    allow_zero=True)
    for first in _first_layer_indices(params, names, selected, first_layer):
      leaf_rates[first] = _minimum(leaf_rates[first], first_layer_max)

  keys = jax.random.split(key, len(flat))
  chosen = [i for i, is_selected in enumerate(selected) if is_selected]
  counts = [_subset_count(jnp.shape(flat[i][1]), leaf_rates[i], per_vector,
                          layouts[i]) for i in chosen]
  new_leaves = [leaf for _, leaf in flat]
  pruned_leaves = _fill_random_subsets(
      [keys[i] for i in chosen], [new_leaves[i] for i in chosen],
      [count for count, _ in counts], None, per_vector=per_vector,
      layouts=tuple(layouts[i] for i in chosen))
  num_pruned = [jnp.zeros([], jnp.int32)] * len(flat)
  for i, leaf, (_, total) in zip(chosen, pruned_leaves, counts):
    new_leaves[i], num_pruned[i] = leaf, total
  num_nonzero = _count_nonzero(new_leaves)
  return PruneResult(
      params=treedef.unflatten(new_leaves),
      rates=treedef.unflatten(leaf_rates),
      num_pruned=treedef.unflatten(num_pruned),
      num_nonzero=treedef.unflatten(num_nonzero),
  )


def size_aware_rates(
    params: optax.Params,
    rate: float,
    *,
    mask: Optional[_masks.Mask] = None,
    exponent: float = SIZE_AWARE_EXPONENT,
) -> Any:
  """Per-leaf pruning rates that prune larger leaves more (Appendix A.5.0).

  A selected leaf of ``n`` weights keeps the fraction
  ``min(1, c * n ** -exponent)``, with ``c`` chosen so that all selected
  leaves together keep ``1 - rate`` of their weights (leaves that would keep
  more than all of theirs keep all, and the rest is shared among the
  others). ``exponent=0`` gives every leaf ``rate``. The default exponent,
  0.3, reproduces the paper's rates for F2 (93%, 86% and 67% for kernels of
  100352, 8192 and 640 weights) to within 1.5 points.

  Args:
    params: The params (only shapes are read).
    rate: The overall fraction of the selected weights to prune, in [0, 1].
    mask: Which leaves are pruned, as in :func:`random_prune`. Default:
      leaves with ``ndim >= 2``.
    exponent: How much more large leaves are pruned; >= 0.

  Returns:
    A tree like ``params`` of Python floats: the rate of each selected leaf,
    and 0 for the others. Pass it to :func:`random_prune` as ``rates``.

  Example:
    >>> import jax.numpy as jnp
    >>> import laperm_jax as lp
    >>> f2 = [jnp.zeros((784, 128)), jnp.zeros((128, 64)), jnp.zeros((64, 10))]
    >>> [round(r, 2) for r in lp.size_aware_rates(f2, 0.923)]
    [0.93, 0.85, 0.68]

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020
  """
  _check_fraction('size_aware_rates', 'rate', rate, allow_zero=True)
  if isinstance(rate, jax.core.Tracer):
    raise ValueError('size_aware_rates: rate must be a concrete number, not a '
                     'traced value.')
  if not exponent >= 0:
    raise ValueError(
        f'size_aware_rates: exponent must be >= 0, got {exponent}.')
  flat, treedef = jax.tree.flatten(params)
  selected = _masks.selected_leaves(mask, params, 'mask')
  sizes = [float(np.prod(jnp.shape(leaf))) if is_selected else 0.0
           for leaf, is_selected in zip(flat, selected)]
  kept = _water_fill(sizes, (1.0 - float(rate)) * sum(sizes), exponent)
  leaf_rates = [1.0 - density if size else 0.0
                for size, density in zip(sizes, kept)]
  return treedef.unflatten(leaf_rates)


def shared_value(
    key: jax.Array,
    params: optax.Params,
    value: float,
    keep: PerLeaf,
    *,
    mask: Optional[_masks.Mask] = None,
    per_vector: bool = False,
    vector_axes: _weight_vectors.VectorAxes = None,
) -> optax.Params:
  """Weight-agnostic initial weights: every selected weight is 0 or ``value``.

  Section 5.5 trains networks whose weights all share one value: LaPerm only
  moves the zeros and the shared values around. Each selected leaf gets exactly
  ``round(keep * n)`` entries equal to ``value`` (halves rounded up), placed
  uniformly at random; every other entry is 0. With ``per_vector=True``,
  exactly ``round(keep * vector_length)`` per weight vector instead. Like the
  authors' code, every kept weight is ``+value`` (no sign flips); pass a
  negative ``value`` for negative weights.

  Args:
    key: A PRNG key; each leaf uses its own key split from it, by position in
      the flattened ``params``.
    params: The params (floating-point leaves wherever selected); the values
      of selected leaves are ignored, only their shapes and dtypes are used.
    value: The shared nonzero weight value (the paper: 0.08 for F1, 0.03 for
      F2). It is rounded to each leaf's dtype.
    keep: The fraction of weights equal to ``value``, in (0, 1]: one number
      for all selected leaves, a tree of numbers with the structure of
      ``params`` (or a prefix of it), or a callable returning one.
    mask: Which leaves to set, as in :func:`random_prune`. Default: leaves
      with ``ndim >= 2`` (kernels) whose layout is not ``NO_FAN_IN``; the
      others are returned unchanged.
    per_vector: Whether to choose the kept entries per weight vector (every
      vector holds the same number of them) rather than per leaf.
    vector_axes: Which axes of each selected leaf form one weight vector, as
      :func:`laperm_jax.laperm` takes it (default: all axes but the last);
      pass the layout LaPerm will train with. It matters with
      ``per_vector``; it is checked for every selected leaf either way.

  Returns:
    The params with every selected leaf holding only 0 and ``value``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import laperm_jax as lp
    >>> params = {'kernel': jnp.zeros((784, 10)), 'bias': jnp.zeros(10)}
    >>> agnostic = lp.shared_value(jax.random.key(0), params, 0.08, keep=4 / 7)
    >>> jnp.unique(agnostic['kernel']), int(jnp.sum(agnostic['kernel'] != 0))
    (Array([0.  , 0.08], dtype=float32), 4480)

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020
  """
  if not isinstance(value, jax.core.Tracer) and (
      np.ndim(value) != 0 or not np.isfinite(value) or value == 0):
    raise ValueError(
        f'shared_value: value must be a finite, nonzero scalar, got {value}.')
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = [jax.tree_util.keystr(path) for path, _ in flat]
  selected = _weight_vectors.selected_with_fan_in('shared_value', mask,
                                                  vector_axes, params)
  _check_selected_leaves('shared_value', flat, selected)
  layouts = _weight_vectors.checked_layouts('shared_value', vector_axes,
                                            params, selected)
  keeps = _masks.per_leaf(keep, params, 'keep')
  for name, leaf_keep, is_selected in zip(names, keeps, selected):
    if is_selected:
      _check_fraction('shared_value', f'keep of leaf {name}', leaf_keep,
                      allow_zero=False)
  keys = jax.random.split(key, len(flat))
  chosen = [i for i, is_selected in enumerate(selected) if is_selected]
  new_leaves = [leaf for _, leaf in flat]
  filled = _fill_random_subsets(
      [keys[i] for i in chosen], [new_leaves[i] for i in chosen],
      [_subset_count(jnp.shape(new_leaves[i]), keeps[i], per_vector,
                     layouts[i])[0] for i in chosen],
      # Cast here, once from the Python number, so bfloat16 leaves get
      # `value` rounded once.
      [jnp.asarray(value, new_leaves[i].dtype) for i in chosen],
      per_vector=per_vector, layouts=tuple(layouts[i] for i in chosen))
  for i, leaf in zip(chosen, filled):
    new_leaves[i] = leaf
  return treedef.unflatten(new_leaves)


def _subset_count(shape, fraction, per_vector, axes):
  """How many entries to choose: per vector (or per leaf), and in total."""
  vector_length, num_vectors = jax.eval_shape(
      lambda leaf: _weight_vectors.as_vectors(leaf, vector_axes=axes),
      jax.ShapeDtypeStruct(shape, jnp.bool_)).shape
  if per_vector:
    count = _round_count(fraction, vector_length)
    return count, jnp.asarray(count, jnp.int32) * num_vectors
  count = _round_count(fraction, vector_length * num_vectors)
  return count, jnp.asarray(count, jnp.int32)


# One compiled function per tree of shapes: op by op, the permutations'
# sorts and the selects each compile separately and dispatch slowly.
@functools.partial(jax.jit, static_argnames=('per_vector', 'layouts'))
def _fill_random_subsets(keys, leaves, counts, values, *, per_vector, layouts):
  """Per leaf, a uniformly random subset of exactly ``count`` entries.

  With ``values`` None (pruning), the subset is set to 0 and the rest kept;
  otherwise the subset is set to the leaf's value and the rest to 0.
  """
  filled = []
  for index, (key, leaf, count, axes) in enumerate(
      zip(keys, leaves, counts, layouts)):
    subset = _random_subset(key, count, leaf.shape, per_vector, axes)
    zero = jnp.zeros([], leaf.dtype)
    if values is None:
      filled.append(jnp.where(subset, zero, leaf))
    else:
      filled.append(jnp.where(subset, values[index], zero))
  return filled


@jax.jit
def _count_nonzero(leaves):
  return [jnp.count_nonzero(leaf).astype(jnp.int32) for leaf in leaves]


def _random_subset(key, count, shape, per_vector, axes):
  """A bool array of ``shape`` with exactly ``count`` True entries.

  The True entries form a uniformly random subset of the array, or of each
  weight vector (fan-in axes ``axes``) with ``per_vector``. Every entry
  draws a distinct random position (a random permutation) and the entries
  whose position falls below ``count`` are chosen, so ``count`` may be a
  traced value.
  """
  if not per_vector:
    return jax.random.permutation(key, math.prod(shape)).reshape(shape) < count
  vector_length, num_vectors = _weight_vectors.as_vectors(
      jnp.zeros(shape, jnp.bool_), vector_axes=axes).shape
  positions = jnp.broadcast_to(
      jnp.arange(vector_length, dtype=jnp.int32)[:, None],
      (vector_length, num_vectors))
  positions = jax.random.permutation(key, positions, axis=0, independent=True)
  return _weight_vectors.from_vectors(positions < count, shape,
                                     vector_axes=axes)


def _round_count(fraction, size):
  """``round(fraction * size)`` with halves rounded up; traced or concrete."""
  if isinstance(fraction, jax.core.Tracer):
    return jnp.floor(fraction * size + 0.5).astype(jnp.int32)
  return math.floor(float(fraction) * size + 0.5)


def _minimum(rate, cap):
  if isinstance(rate, jax.core.Tracer):
    return jnp.minimum(rate, cap)
  return min(float(rate), float(cap))


def _water_fill(sizes, total_kept, exponent):
  """Kept fractions ``min(1, c * n ** -exponent)`` that keep ``total_kept``.

  Leaves of size 0 (unselected) keep 0. Each round solves for ``c`` over the
  leaves not yet full, then marks full the ones that would keep more than
  all of their weights; at most one round per leaf.
  """
  full = set()
  kept = [0.0] * len(sizes)
  while True:
    open_leaves = [i for i, size in enumerate(sizes) if size and i not in full]
    if not open_leaves:
      break
    remaining = max(0.0, total_kept - sum(sizes[i] for i in full))
    scale = remaining / sum(sizes[i] ** (1.0 - exponent) for i in open_leaves)
    overfull = [i for i in open_leaves if scale * sizes[i] ** -exponent > 1.0]
    if not overfull:
      for i in open_leaves:
        kept[i] = scale * sizes[i] ** -exponent
      break
    full.update(overfull)
  for i in full:
    kept[i] = 1.0
  return kept


def _check_selected_leaves(function, flat, selected):
  for (path, leaf), is_selected in zip(flat, selected):
    if not is_selected:
      continue
    name = jax.tree_util.keystr(path)
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise ValueError(
          f'{function}: leaf {name} has dtype {jnp.result_type(leaf)}; only '
          'floating-point leaves can be selected.')
    if jnp.ndim(leaf) == 0:
      raise ValueError(
          f'{function}: leaf {name} is a scalar, which holds no weight '
          'vector; leave it out of mask.')


def _check_fraction(function, name, fraction, *, allow_zero):
  """Raises if a concrete ``fraction`` is outside [0, 1] (or (0, 1])."""
  if isinstance(fraction, jax.core.Tracer):
    return  # Traced: only its shape can be checked here.
  if np.ndim(fraction) != 0:
    raise ValueError(
        f'{function}: {name} must be a scalar, got shape {np.shape(fraction)}.')
  low_ok = fraction >= 0 if allow_zero else fraction > 0
  if not (low_ok and fraction <= 1):  # Also rejects NaN.
    interval = '[0, 1]' if allow_zero else '(0, 1]'
    raise ValueError(
        f'{function}: {name} must be in {interval}, got {fraction}.')


def _first_layer_indices(params, names, selected, first_layer) -> list[int]:
  """Indices of the first layer's leaves that ``mask`` selects."""
  if first_layer is None:
    return [i for i, s in enumerate(selected) if s][:1]
  if isinstance(first_layer, str):
    warnings.warn(
        'random_prune: first_layer as a key path string is deprecated; pass '
        'a mask, e.g. {"Dense_0": True, ...} or a callable.',
        DeprecationWarning, stacklevel=3)
    if first_layer not in names:
      raise ValueError(
          f'random_prune: first_layer {first_layer!r} is not a leaf of '
          f'params; leaves: {names}.')
    chosen = [names.index(first_layer)]
  else:
    chosen = [i for i, s in enumerate(_masks.selected_leaves(
        first_layer, params, 'random_prune: first_layer')) if s]
  indices = [i for i in chosen if selected[i]]
  if not indices:
    raise ValueError(
        f'random_prune: first_layer {first_layer!r} is not selected by mask '
        '(it selects no leaf that mask selects).')
  return indices
