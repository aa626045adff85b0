"""The paper's analyses: weight profiles, ranking distance, permutation cycles.

All of them work per weight vector, with the convention of
:mod:`laperm_jax._weight_vectors` (for a leaf of shape ``(..., out)``, all
axes but the last, flattened), so they apply to leaves of any rank exactly as
the transformation does. Ranks are stable: equal values (pruned zeros, shared
values) are ranked by position, so every result here is deterministic.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

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


def weight_profiles(params: optax.Params) -> optax.Params:
  """Every weight vector of every leaf sorted ascending (Section 2).

  Args:
    params: A tree of arrays.

  Returns:
    A tree like ``params``: each leaf of rank >= 1 with its weight vectors
    sorted (``sort_vectors``), and ``optax.MaskedNode()`` for scalars.

  Example:
    >>> import jax.numpy as jnp
    >>> import laperm_jax as lp
    >>> lp.weight_profiles({'w': jnp.array([[3., 0.], [1., 2.]])})['w']
    Array([[1., 0.],
           [3., 2.]], dtype=float32)
  """
  return jax.tree.map(
      lambda leaf: _weight_vectors.sort_vectors(leaf)
      if jnp.ndim(leaf) else optax.MaskedNode(), params)


def weight_statistics(leaf: jax.Array) -> dict[str, jax.Array]:
  """Per weight vector: minimum, 15th, 50th and 85th percentiles, maximum.

  These are the distribution statistics the paper follows over training
  (Figure 13, row 1). Percentiles interpolate linearly between the sorted
  values, like ``numpy.percentile``'s default method.

  Args:
    leaf: An array of rank >= 1.

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
      _weight_vectors.sort_vectors(leaf)).astype(dtype)
  stats = {'min': profile[0]}
  for name, percentile in _PERCENTILES.items():
    stats[name] = _interpolate_sorted(profile, percentile)
  stats['max'] = profile[-1]
  return stats


def ranking_distances(before: optax.Params, after: optax.Params) -> optax.Params:
  """Per entry, how far its rank within its weight vector moved (Section 3).

  Args:
    before: A tree of arrays.
    after: A tree with the structure and shapes of ``before``.

  Returns:
    A tree like ``before``: for each leaf of rank >= 1, an int32 array of its
    shape holding ``|rank_before - rank_after|`` of every entry (stable
    ranks, from 0 to ``vector_length - 1``); ``optax.MaskedNode()`` for
    scalars.

  Example:
    >>> import jax.numpy as jnp
    >>> import laperm_jax as lp
    >>> lp.ranking_distances(jnp.array([1., 2., 3.]), jnp.array([3., 2., 1.]))
    Array([2, 0, 2], dtype=int32)
  """
  def distances(path, leaf_before, leaf_after):
    _check_same_shape(path, leaf_before, leaf_after)
    if jnp.ndim(leaf_before) == 0:
      return optax.MaskedNode()
    return jnp.abs(_weight_vectors.ranks(leaf_before) -
                   _weight_vectors.ranks(leaf_after))

  return _map_pairs('ranking_distances', distances, before, after)


def ranking_distance(before: optax.Params, after: optax.Params) -> optax.Params:
  """Mean and standard deviation of the ranking distance, per leaf (A.3).

  The ranking distance of an entry is ``|rank_before - rank_after|`` within
  its weight vector (:func:`ranking_distances`). Per leaf, its mean and
  standard deviation over all entries are divided by the vector length, as
  the paper plots them (``D_t / 784``, ``SD[D_t] / 784``): 0 means no
  reordering, and the values compare across layers of different sizes.

  Args:
    before: A tree of arrays, e.g. the params at one epoch.
    after: A tree with the structure and shapes of ``before``.

  Returns:
    A tree like ``before`` holding a :class:`RankingDistance` of float32
    scalars at each leaf of rank >= 1, and ``optax.MaskedNode()`` for
    scalars. Map over it with
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
  def summarize(distances):
    if isinstance(distances, optax.MaskedNode):
      return distances
    vector_length = _weight_vectors.as_vectors(distances).shape[0]
    distances = distances.astype(jnp.float32)
    return RankingDistance(mean=jnp.mean(distances) / vector_length,
                           std=jnp.std(distances) / vector_length)

  return jax.tree.map(summarize, ranking_distances(before, after),
                      is_leaf=lambda x: isinstance(x, optax.MaskedNode))


def permutation_between(before: jax.Array, after: jax.Array) -> jax.Array:
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

  Returns:
    An int32 array of ``before``'s shape: per weight vector, indices into
    that vector (from 0 to ``vector_length - 1``).

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
  _check_same_shape((), before, after)
  _check_same_values(before, after)
  rank_before = _weight_vectors.as_vectors(_weight_vectors.ranks(before))
  rank_after = _weight_vectors.as_vectors(_weight_vectors.ranks(after))
  # position_of_rank[r] is where rank r sits in `before`; the entry of rank r
  # in `after` is that one (the same value, ties matched in order).
  positions = jax.lax.broadcasted_iota(jnp.int32, rank_before.shape, 0)
  position_of_rank = jnp.put_along_axis(
      jnp.zeros_like(positions), rank_before, positions, axis=0, inplace=False)
  source = jnp.take_along_axis(position_of_rank, rank_after, axis=0)
  return _weight_vectors.from_vectors(source, before.shape)


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


def cycle_summary(before: jax.Array, after: jax.Array) -> CycleSummary:
  """Cycle statistics of the permutation of every weight vector of a leaf.

  Args:
    before: An array of rank >= 1, e.g. a kernel right after one sync.
    after: The same kernel after the next sync (the same values in every
      weight vector, in another order).

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
      permutation_between(before, after)))
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


def _map_pairs(function, fn, before, after):
  """``fn(path, leaf_before, leaf_after)`` over two trees of one structure."""
  flat_before, treedef = jax.tree_util.tree_flatten_with_path(before)
  flat_after, treedef_after = jax.tree_util.tree_flatten_with_path(after)
  if treedef != treedef_after:
    raise ValueError(
        f'{function}: before and after have different structures: {treedef} '
        f'and {treedef_after}.')
  return treedef.unflatten([
      fn(path, leaf_before, leaf_after)
      for (path, leaf_before), (_, leaf_after) in zip(flat_before, flat_after)
  ])


def _check_same_shape(path, leaf_before, leaf_after):
  if jnp.shape(leaf_before) != jnp.shape(leaf_after):
    where = f'leaf {jax.tree_util.keystr(path)}' if path else 'the leaves'
    raise ValueError(
        f'{where}: before has shape {jnp.shape(leaf_before)} but after has '
        f'shape {jnp.shape(leaf_after)}.')


def _check_not_scalar(function, name, leaf):
  if jnp.ndim(leaf) == 0:
    raise ValueError(
        f'{function}: {name} is a scalar, which holds no weight vector.')


def _check_same_values(before, after):
  """Raises if some weight vector of ``after`` is not one of ``before``."""
  if isinstance(before, jax.core.Tracer) or isinstance(after, jax.core.Tracer):
    return  # Inside jit the values cannot be seen; the result is garbage-in.
  same = np.asarray(_weight_vectors.sort_vectors(before) ==
                    _weight_vectors.sort_vectors(after))
  if not same.all():
    vector = int(np.argmin(np.all(_weight_vectors.as_vectors(same), axis=0)))
    raise ValueError(
        'permutation_between: after is not a permutation of before within '
        f'each weight vector (weight vector {vector} holds other values).')
