"""Weight vectors: the unit LaPerm permutes, and the sorts that permute them.

A *weight vector* is every weight feeding one output unit. JAX and Flax put
the output axis last (Dense ``(in, out)``, Conv ``(h, w, in, out)``), so a
leaf of shape ``(..., out)`` holds ``out`` weight vectors of length
``prod(...)``: all axes but the last, flattened. A 1-D leaf is one vector.
This convention is written here once; the transformation, the initial-weight
tools and the analyses all go through these functions.

Ranks are stable: equal values (pruned zeros, a shared value, ``0.0`` and
``-0.0``) are ranked by their flat position within the vector, so every
function here is deterministic. XLA flushes subnormal floats to zero in
comparisons, so they rank as ties with ``0.0``.
"""

import jax
import jax.numpy as jnp
from jax import lax


def as_vectors(leaf: jax.Array) -> jax.Array:
  """Returns ``leaf`` as a ``(vector_length, num_vectors)`` matrix.

  Column ``j`` is the weight vector of output unit ``j``. For a row-major
  array this is a reshape, free at run time.

  Args:
    leaf: an array of rank >= 1.

  Returns:
    A 2-D view of ``leaf``; a 1-D leaf becomes a single column.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax import as_vectors
    >>> as_vectors(jnp.zeros((3, 3, 16, 32))).shape
    (144, 32)
  """
  if leaf.ndim == 0:
    raise ValueError('A 0-d array holds no weight vector.')
  if leaf.ndim == 1:
    return leaf[:, None]
  return leaf.reshape(-1, leaf.shape[-1])


def from_vectors(vectors: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Inverse of :func:`as_vectors`: puts weight vectors back into ``shape``."""
  return vectors.reshape(shape)


# The sorts below run along the last axis of the transposed `(num_vectors,
# vector_length)` matrix: XLA's CPU sort is faster along the minor axis than
# along axis 0 (benchmarks/sync_cost.py, columns `sort` and `minor`), and on
# GPU the transposes fold into layouts.


def _rows(leaf: jax.Array) -> jax.Array:
  return as_vectors(leaf).T


def _from_rows(rows: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return from_vectors(rows.T, shape)


def sort_vectors(leaf: jax.Array) -> jax.Array:
  """Sorts every weight vector of ``leaf`` ascending, keeping ``leaf``'s shape.

  This is the *weight profile* of the paper (Section 2). The values keep
  their bit patterns; only their places change.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax import sort_vectors
    >>> sort_vectors(jnp.array([[3., 0.], [1., 2.]]))
    Array([[1., 0.],
           [3., 2.]], dtype=float32)
  """
  return _sort_vectors(leaf)


# Jitted so that eager calls compile once per shape, not once per operation.
@jax.jit
def _sort_vectors(leaf: jax.Array) -> jax.Array:
  return _from_rows(jnp.sort(_rows(leaf), axis=1), leaf.shape)


def _comparison_rank_order(rows: jax.Array) -> jax.Array:
  """Per row, the stable ascending order: one key-value sort (GPU, TPU)."""
  positions = lax.broadcasted_iota(jnp.int32, rows.shape, 1)
  _, order = lax.sort((rows, positions), dimension=1, num_keys=1,
                      is_stable=True)
  return order


_UNSIGNED = {16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}
_SIGNED = {16: jnp.int16, 32: jnp.int32, 64: jnp.int64}


def _ordered_bits(rows: jax.Array) -> jax.Array:
  """Unsigned integers ordered as ``lax.sort`` orders the floats ``rows``.

  Like ``lax.sort``'s comparator: zeros (``-0.0``, and subnormals where the
  backend flushes them) compare equal to ``0.0`` and every NaN equals every
  other NaN, after ``+inf``. Negative floats have their bits flipped and
  the others their sign bit set, so unsigned order is float order.
  """
  bits = jnp.finfo(rows.dtype).bits
  signed = lax.bitcast_convert_type(rows, _SIGNED[bits])
  signed = jnp.where(rows == 0, jnp.zeros_like(signed), signed)
  nan = jnp.array(jnp.nan, rows.dtype)
  signed = jnp.where(jnp.isnan(rows),
                     lax.bitcast_convert_type(nan, _SIGNED[bits]), signed)
  unsigned = lax.bitcast_convert_type(signed, _UNSIGNED[bits])
  sign_bit = jnp.array(1 << (bits - 1), unsigned.dtype)
  return jnp.where(signed < 0, ~unsigned, unsigned | sign_bit)


def _radix_rank_order(rows: jax.Array) -> jax.Array:
  """Per row, the stable ascending order from single-operand integer sorts.

  XLA's CPU sort is several times faster on one integer operand than on a
  key-value pair or on floats (benchmarks/sync_cost.py). So the float keys
  become ordered integers, split into digits, and each pass sorts
  ``digit << position_bits | position`` (unique, hence stable): a
  least-significant-digit radix sort whose result is bitwise the order of
  :func:`_comparison_rank_order`.
  """
  keys = _ordered_bits(rows)
  key_bits = jnp.iinfo(keys.dtype).bits
  position_bits = max(1, (rows.shape[1] - 1).bit_length())
  word_bits = 64 if key_bits > 32 else 32
  word = _UNSIGNED[word_bits]
  digit_bits = word_bits - position_bits
  num_passes = -(-key_bits // digit_bits)
  keys = keys.astype(word)
  positions = lax.broadcasted_iota(word, rows.shape, 1)
  order = None
  for pass_index in range(num_passes):
    current = keys if order is None else jnp.take_along_axis(
        keys, order, axis=1, mode='promise_in_bounds')
    digit = (current >> (pass_index * digit_bits)) & ((1 << digit_bits) - 1)
    packed = lax.sort((digit << position_bits) | positions, dimension=1)
    moved = (packed & ((1 << position_bits) - 1)).astype(jnp.int32)
    order = moved if order is None else jnp.take_along_axis(
        order, moved, axis=1, mode='promise_in_bounds')
  return order


def _rank_order(rows: jax.Array) -> jax.Array:
  """Per row, the positions of its entries in ascending, stable order."""
  return lax.platform_dependent(rows, cpu=_radix_rank_order,
                                default=_comparison_rank_order)


def _scatter_row(order: jax.Array, values: jax.Array) -> jax.Array:
  return jnp.zeros_like(values).at[order].set(
      values, unique_indices=True, mode='promise_in_bounds')


def place_sorted(leaf: jax.Array, sorted_values: jax.Array) -> jax.Array:
  """Places ``sorted_values`` in the rank order of ``leaf``, per weight vector.

  The smallest entry of each weight vector of ``leaf`` receives the smallest
  of the corresponding sorted values, and so on; equal entries are ranked by
  position. One stable sort finds the order (on GPU and TPU a key-value
  sort; on CPU, where XLA sorts single integer arrays several times faster,
  two passes of a radix sort that give bitwise the same order) and one
  scatter writes the values (not ``argsort(argsort(.))``): the result is
  bitwise a permutation of ``sorted_values``, whatever ``leaf`` holds.

  Args:
    leaf: an array of rank >= 1 whose order decides the placement.
    sorted_values: an array of ``leaf``'s shape whose weight vectors are
      sorted ascending (as :func:`sort_vectors` returns them).

  Returns:
    An array of ``leaf``'s shape and ``sorted_values``' dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax import place_sorted
    >>> place_sorted(jnp.array([0.5, -7., 9.]), jnp.array([1., 2., 3.]))
    Array([2., 1., 3.], dtype=float32)
  """
  return _place_sorted(leaf, sorted_values)


# Jitted so that eager calls compile once per shape, not once per operation.
@jax.jit
def _place_sorted(leaf: jax.Array, sorted_values: jax.Array) -> jax.Array:
  order = _rank_order(_rows(leaf))
  # vmap over rows makes a scatter with a batch dimension, which XLA's SPMD
  # partitioner keeps local when the output axis is sharded.
  placed = jax.vmap(_scatter_row)(order, _rows(sorted_values))
  return _from_rows(placed, leaf.shape)


def ranks(leaf: jax.Array) -> jax.Array:
  """The stable rank of every entry within its weight vector, in ``leaf``'s shape.

  Ranks run from 0 (smallest) to ``vector_length - 1``; ties are ranked by
  flat position. This is the *ranking* of the paper (Section 3).

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax import ranks
    >>> ranks(jnp.array([0.5, -7., 0.5]))
    Array([1, 0, 2], dtype=int32)
  """
  return _ranks(leaf)


@jax.jit
def _ranks(leaf: jax.Array) -> jax.Array:
  rows = _rows(leaf)
  positions = lax.broadcasted_iota(jnp.int32, rows.shape, 1)
  return _from_rows(jax.vmap(_scatter_row)(_rank_order(rows), positions),
                    leaf.shape)
