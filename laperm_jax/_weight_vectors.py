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

import functools

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
  become ordered integers, and each pass sorts ``digit << position_bits |
  position`` (unique, hence stable): a least-significant-digit radix sort
  whose result is bitwise the order of :func:`_comparison_rank_order`.

  The words are 64-bit, enabled for this function alone (x64 stays off
  outside it), unless the key and the position fit 32 bits: one pass for
  float32 and 16-bit floats at any vector length (a 64-bit sort costs about
  as much as a 32-bit one, and two 32-bit passes twice that), two for
  float64.
  """
  with jax.enable_x64(True):
    keys = _ordered_bits(rows)
    key_bits = jnp.iinfo(keys.dtype).bits
    position_bits = max(1, (rows.shape[1] - 1).bit_length())
    word_bits = 32 if key_bits + position_bits <= 32 else 64
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


def place_rows(rows: jax.Array, sorted_rows: jax.Array) -> jax.Array:
  """:func:`place_sorted` on weight vectors laid out as rows."""
  # vmap over rows makes a scatter with a batch dimension, which XLA's SPMD
  # partitioner keeps local when the output axis is sharded.
  return jax.vmap(_scatter_row)(_rank_order(rows), sorted_rows)


# On CPU, `map_vectors` runs large leaves in chunks of vectors, one chunk
# after the other. XLA's CPU runtime allocates a compiled step's temporary
# memory afresh at every execution, and glibc maps an allocation above
# 32 MiB anew each time, so its pages fault on every step, whether the sync
# branch runs or not (issue 5: a 784-2048-2048-10 MLP step's temporaries
# grew from 23 to 143 MiB for the sync branch). Chunks of at most
# `_CHUNK_WEIGHTS` weights keep the sync's scratch to a few MiB. A chunk is
# made of blocks of `_BLOCK` adjacent vectors (one 64-byte cache line of
# float32 per row of the leaf; single strided vectors made the sync 28%
# slower) taken at a stride, so that every device of an output-axis
# sharding holds its own part of every chunk: the loop runs locally on any
# number of devices that divides `num_vectors / (chunks * block)`, which
# `_chunking` keeps a multiple of `_LOCAL_SHARDS`.
_CHUNK_WEIGHTS = 1 << 18
_BLOCK = 16
_LOCAL_SHARDS = 8


def _chunking(num_vectors: int, vector_length: int) -> tuple[int, int]:
  """Returns ``(chunks, block)``: powers of two, ``(1, 1)`` for no chunks."""
  wanted = 1
  while vector_length * num_vectors > wanted * _CHUNK_WEIGHTS:
    wanted *= 2
  groups = num_vectors // _LOCAL_SHARDS
  if wanted == 1 or num_vectors % _LOCAL_SHARDS or not groups:
    return 1, 1
  room = groups & -groups  # The largest power of two dividing `groups`.
  block = min(_BLOCK, room)
  chunks = min(wanted, room // block)
  return (1, 1) if chunks == 1 else (chunks, block)


def _map_whole(fn, out, *leaves):
  new = fn(_rows(out), *(_rows(leaf) for leaf in leaves))
  return _from_rows(new, out.shape)


def _map_chunks(fn, out, *leaves):
  """`_map_whole` chunk by chunk, updating `out` in place."""
  length, num_vectors = as_vectors(out).shape
  chunks, block = _chunking(num_vectors, length)
  if chunks == 1:
    return _map_whole(fn, out, *leaves)
  groups = num_vectors // (chunks * block)

  def split(leaf):
    return as_vectors(leaf).reshape(length, groups, chunks, block)

  def chunk_rows(split_leaf, index):
    chunk = lax.dynamic_index_in_dim(split_leaf, index, axis=2,
                                     keepdims=False)
    return chunk.reshape(length, groups * block).T

  split_leaves = [split(leaf) for leaf in leaves]

  def body(index, split_out):
    # `out`'s chunk is read from the carry before it is overwritten, so XLA
    # updates one buffer in place.
    new = fn(chunk_rows(split_out, index),
             *(chunk_rows(leaf, index) for leaf in split_leaves))
    return lax.dynamic_update_index_in_dim(
        split_out, new.T.reshape(length, groups, block), index, axis=2)

  return lax.fori_loop(0, chunks, body, split(out)).reshape(out.shape)


def map_vectors(fn, out: jax.Array, *leaves: jax.Array) -> jax.Array:
  """Maps ``fn`` over the weight vectors of ``out`` and ``leaves``, as rows.

  ``fn(out_rows, *leaf_rows)`` gets ``(num_vectors, vector_length)`` rows
  (row ``j``: weight vector ``j`` of each array), must treat rows
  independently and return new rows for ``out``, in ``out``'s dtype. On
  CPU, large leaves go through ``fn`` in chunks of rows, one after the
  other, so that its temporary memory stays small; elsewhere in one call.
  The result is the same either way.

  Args:
    fn: the row-wise function.
    out: the array whose new value ``fn`` computes; it gives the shape.
    *leaves: further arrays of ``out``'s shape that ``fn`` reads.

  Returns:
    ``fn``'s rows put back into ``out``'s shape.
  """
  return lax.platform_dependent(
      out, *leaves, cpu=functools.partial(_map_chunks, fn),
      default=functools.partial(_map_whole, fn))


def place_sorted(leaf: jax.Array, sorted_values: jax.Array) -> jax.Array:
  """Places ``sorted_values`` in the rank order of ``leaf``, per weight vector.

  The smallest entry of each weight vector of ``leaf`` receives the smallest
  of the corresponding sorted values, and so on; equal entries are ranked by
  position. One stable sort finds the order (on GPU and TPU a key-value
  sort; on CPU, where XLA sorts single integer arrays several times faster,
  one pass of a radix sort on 64-bit words that gives bitwise the same
  order) and one scatter writes the values (not ``argsort(argsort(.))``):
  the result is bitwise a permutation of ``sorted_values``, whatever
  ``leaf`` holds.

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
  return map_vectors(lambda _, rows, sorted_rows: place_rows(rows, sorted_rows),
                     sorted_values, leaf, sorted_values)


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
