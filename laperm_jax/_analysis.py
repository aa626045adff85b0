"""The paper's analyses: weight profiles, ranking distance, permutation cycles.

All of them work per weight vector, with the convention of
:mod:`laperm_jax._weight_vectors` (by default all axes but the last of a
leaf, flattened; ``vector_axes=`` names the fan-in axes where that is not
the fan-in, e.g. attention kernels), so they apply to leaves of any rank
exactly as the transformation does, given the layout it was given (or the
optimizer state, which carries it). Leaves whose layout is ``NO_FAN_IN``
hold no weight vector and are skipped, like scalars. Ranks are stable: equal values (pruned zeros, shared values) are ranked by
position, so every result here is deterministic.
"""

import math
from typing import Any, NamedTuple, Optional
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from laperm_jax import _state
from laperm_jax import _weight_vectors

# The percentiles of Figure 13, besides the minimum and maximum.
_PERCENTILES = {'p15': 15.0, 'p50': 50.0, 'p85': 85.0}


class RankingDistance(NamedTuple):
  """Ranking distance of one leaf, relative to its weight-vector length.

  Attributes:
    mean: Mean over all entries of the leaf of ``|rank_before - rank_after|``,
      divided by the vector length (the paper's ``D_t / 784``); 0 when no
      entry changed rank.
    std: Standard deviation (population) of the same distances, divided by
      the vector length (``SD[D_t] / 784``).
  """

  mean: jax.Array
  std: jax.Array


class CycleSummary(NamedTuple):
  """Cycle structure of the permutation of each weight vector of a leaf.

  Fixed points (entries that kept their place) are not counted as cycles.

  Attributes:
    num_cycles: Per weight vector, the number of cycles of length >= 2.
    longest_cycle: Per weight vector, the length of the longest cycle; 0 when
      no entry moved.
    fraction_moved: Per weight vector, the fraction of its entries that
      changed place.
  """

  num_cycles: np.ndarray
  longest_cycle: np.ndarray
  fraction_moved: np.ndarray


def weight_profiles(
    params: optax.Params,
    *,
    vector_axes: _weight_vectors.VectorAxes = None,
    opt_state: Optional[optax.OptState] = None,
) -> optax.Params:
  """Every weight vector of every leaf sorted ascending (Section 2).

  Args:
    params: A tree of arrays.
    vector_axes: Which axes of each leaf form one weight vector, in any form
      :func:`laperm_jax.laperm` takes; default: all axes but the last.
    opt_state: An optimizer state holding one :class:`laperm_jax.LaPermState`:
      the leaves it permutes are analyzed under its layout, the others are
      skipped (``vector_axes``, if given, must agree with it).

  Returns:
    A tree like ``params``: each leaf with weight vectors sorted
    (``sort_vectors``), and ``optax.MaskedNode()`` for scalars and leaves
    without weight vectors.

  Example:
    >>> import jax.numpy as jnp
    >>> import laperm_jax as lp
    >>> lp.weight_profiles({'w': jnp.array([[3., 0.], [1., 2.]])})['w']
    Array([[1., 0.],
           [3., 2.]], dtype=float32)
  """
  leaves, treedef = jax.tree.flatten(params)
  layouts = _tree_layouts('weight_profiles', vector_axes, opt_state, params)
  return treedef.unflatten([
      optax.MaskedNode() if axes is None
      else _weight_vectors.sort_vectors(leaf, vector_axes=axes)
      for leaf, axes in zip(leaves, layouts)])


def weight_statistics(
    leaf: jax.Array,
    *,
    vector_axes: _weight_vectors.LeafAxes = None,
) -> dict[str, jax.Array]:
  """Per weight vector: minimum, 15th, 50th and 85th percentiles, maximum.

  These are the distribution statistics the paper follows over training
  (Figure 13, row 1). Percentiles interpolate linearly between the sorted
  values, like ``numpy.percentile``'s default method.

  Args:
    leaf: An array of rank >= 1.
    vector_axes: The leaf's fan-in axes, a tuple of ints (e.g. ``(0,)`` for
      an attention query kernel); default: all axes but the last.

  Returns:
    A dict with keys ``'min'``, ``'p15'``, ``'p50'``, ``'p85'``, ``'max'``,
    each an array of shape ``(num_vectors,)`` in ``leaf``'s dtype promoted to
    at least float32.

  Example:
    >>> import jax.numpy as jnp
    >>> import laperm_jax as lp
    >>> stats = lp.weight_statistics(jnp.arange(12.).reshape(3, 4))
    >>> stats['min'], stats['p50'], stats['max']
    (Array([0., 1., 2., 3.], dtype=float32), Array([4., 5., 6., 7.], dtype=float32), Array([ 8.,  9., 10., 11.], dtype=float32))

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020
  """
  leaf = jnp.asarray(leaf)
  _check_not_scalar('weight_statistics', 'leaf', leaf)
  dtype = jnp.promote_types(leaf.dtype, jnp.float32)
  profile = _weight_vectors.as_vectors(
      _weight_vectors.sort_vectors(leaf, vector_axes=vector_axes),
      vector_axes=vector_axes).astype(dtype)
  stats = {'min': profile[0]}
  for name, percentile in _PERCENTILES.items():
    stats[name] = _interpolate_sorted(profile, percentile)
  stats['max'] = profile[-1]
  return stats


def ranking_distance_per_entry(
    before: optax.Params,
    after: optax.Params,
    *,
    vector_axes: _weight_vectors.VectorAxes = None,
    opt_state: Optional[optax.OptState] = None,
) -> optax.Params:
  """Per entry, how far its rank within its weight vector moved (Section 3).

  Args:
    before: A tree of arrays.
    after: A tree with the leaves and shapes of ``before`` (boxed or not).
    vector_axes: Which axes of each leaf form one weight vector, in any form
      :func:`laperm_jax.laperm` takes (read against ``before``); default:
      all axes but the last.
    opt_state: An optimizer state holding one :class:`laperm_jax.LaPermState`,
      read as :func:`weight_profiles` reads it.

  Returns:
    A tree like ``before``: for each leaf with weight vectors, an int32
    array of its shape holding ``|rank_before - rank_after|`` of every
    entry (stable ranks, from 0 to ``vector_length - 1``);
    ``optax.MaskedNode()`` for scalars and leaves without weight vectors.

  Example:
    >>> import jax.numpy as jnp
    >>> import laperm_jax as lp
    >>> lp.ranking_distance_per_entry(jnp.array([1., 2., 3.]),
    ...                               jnp.array([3., 2., 1.]))
    Array([2, 0, 2], dtype=int32)
  """
  return _per_entry('ranking_distance_per_entry', before, after, vector_axes,
                    opt_state)


def ranking_distances(
    before: optax.Params,
    after: optax.Params,
    *,
    vector_axes: _weight_vectors.VectorAxes = None,
) -> optax.Params:
  """Deprecated name of :func:`ranking_distance_per_entry`.

  One letter from :func:`ranking_distance`, which summarizes per leaf.
  """
  warnings.warn('lp.ranking_distances is deprecated: call '
                'lp.ranking_distance_per_entry.', DeprecationWarning,
                stacklevel=2)
  return _per_entry('ranking_distances', before, after, vector_axes, None)


def _per_entry(function, before, after, vector_axes, opt_state):
  """:func:`ranking_distance_per_entry`, naming ``function`` in errors."""
  return _map_pairs(function, _distances, before, after,
                    _tree_layouts(function, vector_axes, opt_state, before))


def ranking_distance(
    before: optax.Params,
    after: optax.Params,
    *,
    vector_axes: _weight_vectors.VectorAxes = None,
    opt_state: Optional[optax.OptState] = None,
) -> optax.Params:
  """Mean and standard deviation of the ranking distance, per leaf (A.3).

  The ranking distance of an entry is ``|rank_before - rank_after|`` within
  its weight vector (:func:`ranking_distance_per_entry`). Per leaf, its mean and
  standard deviation over all entries are divided by the vector length, as
  the paper plots them (``D_t / 784``, ``SD[D_t] / 784``): 0 means no
  reordering, and the values compare across layers of different sizes.

  Args:
    before: A tree of arrays, e.g. the params at one epoch.
    after: A tree with the structure and shapes of ``before``.
    vector_axes: Which axes of each leaf form one weight vector, as
      :func:`ranking_distance_per_entry` takes it; it also gives the vector
      length.
    opt_state: An optimizer state holding one :class:`laperm_jax.LaPermState`,
      read as :func:`weight_profiles` reads it.

  Returns:
    A tree like ``before`` holding a :class:`RankingDistance` of float32
    scalars at each leaf with weight vectors, and ``optax.MaskedNode()``
    for scalars and leaves without weight vectors. Map over it with
    ``is_leaf=lambda x: isinstance(x, lp.RankingDistance)``.

  Example:
    >>> import jax.numpy as jnp
    >>> import laperm_jax as lp
    >>> w = {'kernel': jnp.array([[1., 5.], [2., 6.], [3., 7.], [4., 8.]])}
    >>> moved = {'kernel': w['kernel'][::-1]}
    >>> d = lp.ranking_distance(w, moved)['kernel']
    >>> float(d.mean), float(d.std)
    (0.5, 0.25)
    >>> float(lp.ranking_distance(w, w)['kernel'].mean)
    0.0

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020
  """
  layouts = _tree_layouts('ranking_distance', vector_axes, opt_state, before)
  distance_leaves, treedef = jax.tree.flatten(
      _map_pairs('ranking_distance', _distances, before, after, layouts),
      is_leaf=lambda x: isinstance(x, optax.MaskedNode))

  def summarize(distances, axes):
    if axes is None:
      return distances
    vector_length = _weight_vectors.as_vectors(
        distances, vector_axes=axes).shape[0]
    distances = distances.astype(jnp.float32)
    return RankingDistance(mean=jnp.mean(distances) / vector_length,
                           std=jnp.std(distances) / vector_length)

  return treedef.unflatten([summarize(distances, axes) for distances, axes
                            in zip(distance_leaves, layouts)])


def permutation_between(
    before: jax.Array,
    after: jax.Array,
    *,
    vector_axes: _weight_vectors.LeafAxes = None,
) -> jax.Array:
  """The permutation of each weight vector that turns ``before`` into ``after``.

  For two synced states of a leaf (each weight vector a permutation of the
  same values), returns ``source`` of ``before``'s shape such that, in every
  weight vector, the entry at flat position ``i`` of ``after`` is the entry
  at position ``source[i]`` of ``before``. Equal values (pruned zeros,
  shared values) are matched in order of position (stable ranks), so the
  result is deterministic and leaves tied entries in place where it can.

  Args:
    before: An array of rank >= 1.
    after: An array of the same shape whose every weight vector holds the
      same values as ``before``'s (checked when the arrays are concrete;
      ``0.0`` and ``-0.0`` count as equal).
    vector_axes: The leaf's fan-in axes, a tuple of ints; default: all axes
      but the last.

  Returns:
    An int32 array of ``before``'s shape: per weight vector, indices into
    that vector (from 0 to ``vector_length - 1``, positions in its column
    of ``lp.as_vectors(..., vector_axes=vector_axes)``).

  Example:
    >>> import jax.numpy as jnp
    >>> import laperm_jax as lp
    >>> lp.permutation_between(jnp.array([1., 2., 3.]), jnp.array([2., 3., 1.]))
    Array([1, 2, 0], dtype=int32)

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020 (A.4)
  """
  before, after = jnp.asarray(before), jnp.asarray(after)
  _check_not_scalar('permutation_between', 'before', before)
  _check_same_shape('', before, after)
  axes = _weight_vectors.fan_in_axes(before.shape, vector_axes,
                                     where='permutation_between: before')
  _check_same_values(before, after, axes)
  rank_before = _weight_vectors.as_vectors(
      _weight_vectors.ranks(before, vector_axes=axes), vector_axes=axes)
  rank_after = _weight_vectors.as_vectors(
      _weight_vectors.ranks(after, vector_axes=axes), vector_axes=axes)
  # position_of_rank[r] is where rank r sits in `before`; the entry of rank r
  # in `after` is that one (the same value, ties matched in order).
  positions = jax.lax.broadcasted_iota(jnp.int32, rank_before.shape, 0)
  position_of_rank = jnp.put_along_axis(
      jnp.zeros_like(positions), rank_before, positions, axis=0, inplace=False)
  source = jnp.take_along_axis(position_of_rank, rank_after, axis=0)
  return _weight_vectors.from_vectors(source, before.shape, vector_axes=axes)


def permutation_cycles(permutation: Any) -> list[np.ndarray]:
  """Decomposes the permutation of one weight vector into disjoint cycles (A.4).

  Each cycle ``c`` satisfies ``permutation[c[j]] == c[(j + 1) % len(c)]``: for
  a ``source`` from :func:`permutation_between`, the value at ``c[j + 1]``
  moved to ``c[j]``. Fixed points are left out. Cycles are listed by their
  smallest index, which each starts at, so the result is deterministic; the
  walk visits every index once (linear time).

  Args:
    permutation: A 1-D array of integers holding each of ``0 .. n - 1`` once,
      e.g. one weight vector of :func:`permutation_between`
      (``lp.as_vectors(source)[:, j]``).

  Returns:
    A list of int arrays, the cycles of length >= 2.

  Example:
    >>> import laperm_jax as lp
    >>> lp.permutation_cycles([1, 2, 0, 3, 5, 4])
    [array([0, 1, 2]), array([4, 5])]
  """
  permutation = np.asarray(permutation)
  if permutation.ndim != 1 or not (
      np.issubdtype(permutation.dtype, np.integer) or permutation.size == 0):
    raise ValueError(
        'permutation_cycles: permutation must be a 1-D array of integers, got '
        f'shape {permutation.shape} and dtype {permutation.dtype}.')
  size = permutation.size
  if size and (permutation.min() < 0 or permutation.max() >= size or np.any(
      np.bincount(permutation, minlength=size) != 1)):
    raise ValueError(
        'permutation_cycles: permutation must hold each of 0 .. '
        f'{size - 1} exactly once.')
  successor = permutation.tolist()
  visited = [False] * size
  cycles = []
  for start in range(size):
    if visited[start] or successor[start] == start:
      continue
    cycle, index = [], start
    while not visited[index]:
      visited[index] = True
      cycle.append(index)
      index = successor[index]
    cycles.append(np.asarray(cycle))
  return cycles


def cycle_summary(
    before: jax.Array,
    after: jax.Array,
    *,
    vector_axes: _weight_vectors.LeafAxes = None,
) -> CycleSummary:
  """Cycle statistics of the permutation of every weight vector of a leaf.

  Args:
    before: An array of rank >= 1, e.g. a kernel right after one sync.
    after: The same kernel after the next sync (the same values in every
      weight vector, in another order).
    vector_axes: The leaf's fan-in axes, a tuple of ints; default: all axes
      but the last.

  Returns:
    A :class:`CycleSummary` of numpy arrays of shape ``(num_vectors,)``.

  Example:
    >>> import jax.numpy as jnp
    >>> import laperm_jax as lp
    >>> lp.cycle_summary(jnp.array([1., 2., 3., 4.]), jnp.array([2., 1., 3., 4.]))
    CycleSummary(num_cycles=array([1]), longest_cycle=array([2]), fraction_moved=array([0.5]))

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020 (A.4)
  """
  source = np.asarray(_weight_vectors.as_vectors(
      permutation_between(before, after, vector_axes=vector_axes),
      vector_axes=vector_axes))
  num_cycles, longest_cycle = [], []
  for vector in source.T:
    lengths = [len(cycle) for cycle in permutation_cycles(vector)]
    num_cycles.append(len(lengths))
    longest_cycle.append(max(lengths, default=0))
  moved = source != np.arange(source.shape[0])[:, None]
  return CycleSummary(num_cycles=np.asarray(num_cycles),
                      longest_cycle=np.asarray(longest_cycle),
                      fraction_moved=moved.mean(axis=0))


def _interpolate_sorted(profile: jax.Array, percentile: float) -> jax.Array:
  """Linear-interpolation percentile of each column of a sorted matrix."""
  position = percentile / 100.0 * (profile.shape[0] - 1)
  below = math.floor(position)
  above = min(below + 1, profile.shape[0] - 1)
  fraction = position - below
  return profile[below] + fraction * (profile[above] - profile[below])


def _tree_layouts(function, vector_axes, opt_state, params):
  """Per leaf, its checked fan-in axes; None for the leaves skipped.

  Without ``opt_state``: every leaf of rank >= 1 whose layout is not
  ``NO_FAN_IN``. With it: the leaves its LaPerm state permutes, under the
  layout the state carries.
  """
  if opt_state is not None:
    state = _state.states_in(function, opt_state, exactly_one=True)[0]
    held, _ = _state.held_leaves(function, params, state.sorted_init,
                                 state.reset_values)
    return _state.layouts(function, state, params, held, vector_axes)
  fan_in = _weight_vectors.has_fan_in(vector_axes, params,
                                      f'{function}: vector_axes')
  return _weight_vectors.checked_layouts(
      function, vector_axes, params,
      [jnp.ndim(leaf) > 0 and leaf_fan_in
       for leaf, leaf_fan_in in zip(jax.tree.leaves(params), fan_in)])


def _distances(name, leaf_before, leaf_after, axes):
  """Per entry of one leaf, ``|rank_before - rank_after|``."""
  _check_same_shape(name, leaf_before, leaf_after)
  if axes is None:
    return optax.MaskedNode()
  return jnp.abs(_weight_vectors.ranks(leaf_before, vector_axes=axes) -
                 _weight_vectors.ranks(leaf_after, vector_axes=axes))


def _map_pairs(function, fn, before, after, layouts):
  """``fn(name, leaf_before, leaf_after, axes)`` over two trees alike.

  Leaves are matched by name, so boxed and unboxed params match; the
  result has the structure of ``before``.
  """
  flat_before, treedef = jax.tree_util.tree_flatten_with_path(before)
  flat_after = jax.tree_util.tree_flatten_with_path(after)[0]
  names = [_state.leaf_name(path) for path, _ in flat_before]
  after_names = [_state.leaf_name(path) for path, _ in flat_after]
  if names != after_names:
    raise ValueError(
        f'{function}: before and after have different structures: '
        + _state.first_difference(names, after_names, 'before', 'after'))
  return treedef.unflatten([
      fn(name, leaf_before, leaf_after, axes)
      for name, (_, leaf_before), (_, leaf_after), axes in zip(
          names, flat_before, flat_after, layouts)
  ])


def _check_same_shape(name, leaf_before, leaf_after):
  if jnp.shape(leaf_before) != jnp.shape(leaf_after):
    where = f'leaf {name}' if name else 'the leaves'
    raise ValueError(
        f'{where}: before has shape {jnp.shape(leaf_before)} but after has '
        f'shape {jnp.shape(leaf_after)}.')


def _check_not_scalar(function, name, leaf):
  if jnp.ndim(leaf) == 0:
    raise ValueError(
        f'{function}: {name} is a scalar, which holds no weight vector.')


def _check_same_values(before, after, axes):
  """Raises if some weight vector of ``after`` is not one of ``before``."""
  if isinstance(before, jax.core.Tracer) or isinstance(after, jax.core.Tracer):
    return  # Inside jit the values cannot be seen; the result is garbage-in.
  same = np.asarray(_weight_vectors.sort_vectors(before, vector_axes=axes) ==
                    _weight_vectors.sort_vectors(after, vector_axes=axes))
  if not same.all():
    vector = int(np.argmin(np.all(
        _weight_vectors.as_vectors(same, vector_axes=axes), axis=0)))
    raise ValueError(
        'permutation_between: after is not a permutation of before within '
        f'each weight vector (weight vector {vector} holds other values).')
