"""Weight vectors: the unit LaPerm permutes, and the sorts that permute them.

A *weight vector* is every weight feeding one output unit (its fan-in). The
*layout* of a leaf says which of its axes form one weight vector, the
*fan-in axes*; the other axes index the vectors. A leaf with fan-in axes
``F`` and other axes ``O`` holds ``prod(O)`` vectors of length ``prod(F)``:
its matrix view (:func:`as_vectors`) moves ``F`` before ``O``, each group
keeping its order, and flattens both.

The default layout (``vector_axes=None``) is *all axes but the last*: a
Dense kernel ``(in, out)`` or a Conv kernel ``(h, w, in, out)`` holds
``out`` vectors, one column or one whole filter each; a 1-D leaf is one
vector. That is the paper's weight vector for Dense and Conv kernels, but
not for every kernel: Flax attention keeps its query, key and value kernels
as ``(features, num_heads, head_dim)``, whose fan-in is axis 0 alone
(``vector_axes=(0,)``), and ``DenseGeneral`` with several output axes
needs its input axes. There a default sync would move weights between
output units (between heads). Every function that groups weights into
vectors takes ``vector_axes=``: per leaf a tuple of axes or None, and for
trees a tree of those (a prefix of the params) or a callable ``(path, leaf)
-> axes``, as :func:`per_leaf_axes` reads it. ``lp.derive_vector_axes`` finds
the layout of every kernel from the model's forward pass. This convention
is written here once; the transformation, the initial-weight tools and the
analyses all go through these functions.

Ranks are stable: equal values (pruned zeros, a shared value, ``0.0`` and
``-0.0``) are ranked by their flat position within the vector, so every
function here is deterministic. XLA flushes subnormal floats to zero in
comparisons, so they rank as ties with ``0.0``.
"""

from collections.abc import Callable
import functools
import math
import numbers
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
from jax import lax

from laperm_jax import _masks



class _NoFanIn:
  """The type of :data:`NO_FAN_IN`: one instance, kept through copies."""

  def __repr__(self) -> str:
    return 'laperm_jax.NO_FAN_IN'

  def __reduce__(self) -> str:
    # Pickling and copying give back the module's one instance.
    return 'NO_FAN_IN'


#: The layout of a leaf that has no fan-in to permute (an embedding, a bias
#: added, a leaf `derive_vector_axes` cannot read): LaPerm, the initializers
#: and the analyses leave it out, and a mask that selects it raises.
NO_FAN_IN = _NoFanIn()

# The fan-in axes of one leaf: a tuple of axes (negative allowed), None for
# the default layout, or NO_FAN_IN.
LeafAxes = Union[tuple[int, ...], None, _NoFanIn]
# The layout of a tree: a tree of `LeafAxes` (a prefix of the params), or a
# callable `(key_path, leaf) -> LeafAxes`.
VectorAxes = Union[LeafAxes, Any, Callable[[tuple, Any], LeafAxes]]


def fan_in_axes(shape: tuple[int, ...], vector_axes: LeafAxes = None, *,
                where: str = 'the leaf') -> tuple[int, ...]:
  """The fan-in axes of a leaf of ``shape``: sorted, non-negative, checked.

  Args:
    shape: The leaf's shape, of rank >= 1.
    vector_axes: A tuple of distinct axes (ints, negative counting from the
      end), or None for all axes but the last (the only axis of a 1-D leaf).
      Naming every axis makes the whole leaf one vector. ``NO_FAN_IN`` is
      an error: such a leaf has no weight vector.
    where: Names the function and the leaf in error messages.

  Returns:
    The axes as a sorted tuple of non-negative ints.

  Raises:
    ValueError: the leaf is a scalar, or ``vector_axes`` is not a non-empty
      tuple of distinct ints in range.
  """
  ndim = len(shape)
  if ndim == 0:
    raise ValueError(f'{where} is a 0-d array, which holds no weight vector.')
  if vector_axes is NO_FAN_IN:
    raise ValueError(f'{where} has the layout NO_FAN_IN: it has no fan-in, '
                     'so it holds no weight vector.')
  if vector_axes is None:
    return (0,) if ndim == 1 else tuple(range(ndim - 1))
  if not isinstance(vector_axes, tuple) or not all(
      isinstance(axis, numbers.Integral) and not isinstance(axis, bool)
      for axis in vector_axes):
    raise ValueError(
        f'{where}: vector_axes must be a tuple of ints (the fan-in axes) or '
        f'None, got {vector_axes!r}.')
  if not vector_axes:
    raise ValueError(f'{where}: vector_axes is an empty tuple; a weight vector '
                     'needs at least one axis (None selects the default).')
  axes = []
  for axis in vector_axes:
    if not -ndim <= axis < ndim:
      raise ValueError(
          f'{where}: vector_axes {vector_axes!r} names axis {int(axis)}, out '
          f'of range for shape {tuple(shape)}.')
    axes.append(int(axis) % ndim)
  if len(set(axes)) != len(axes):
    raise ValueError(
        f'{where}: vector_axes {vector_axes!r} names an axis twice (shape '
        f'{tuple(shape)}).')
  return tuple(sorted(axes))


def is_leaf_axes(x: Any) -> bool:
  """Whether ``x`` is one leaf's layout in a tree of layouts.

  Tuples are pytree nodes to JAX; a tuple or list of anything but trees
  (ints, or mistakes such as floats) is one layout, so mistakes get a clear
  error rather than a structure mismatch.
  """
  if x is None or x is NO_FAN_IN:
    return True
  return isinstance(x, (tuple, list)) and not any(
      isinstance(item, (tuple, list, dict)) or item is None for item in x)


def per_leaf_axes(vector_axes: VectorAxes, params: Any,
                  name: str = 'vector_axes') -> list[LeafAxes]:
  """Broadcasts a layout to one ``LeafAxes`` per leaf of ``params``.

  Only the form is checked here; :func:`fan_in_axes` checks each against its
  leaf's shape where the leaf is used.

  Args:
    vector_axes: None (the default layout everywhere); a tree with the
      structure of ``params`` or a prefix of it whose leaves are tuples of
      ints, None or ``NO_FAN_IN`` (a tuple at the root applies to every
      leaf); or a callable ``(key_path, leaf) -> tuple, None or
      NO_FAN_IN``, called once per leaf with its ``jax.tree_util`` key path.
    params: The params tree.
    name: The argument's name, for error messages.

  Returns:
    A list with one tuple of axes, None or ``NO_FAN_IN`` per leaf of
    ``params``, in flattened order.
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  if vector_axes is None:
    return [None] * len(flat)
  if callable(vector_axes):
    values = [vector_axes(path, leaf) for path, leaf in flat]
  else:
    values = _masks.per_leaf(vector_axes, params, name, is_leaf=is_leaf_axes)
  for (path, _), value in zip(flat, values):
    if value is not None and value is not NO_FAN_IN and not isinstance(
        value, tuple):
      raise ValueError(
          f'{name} gives leaf {jax.tree_util.keystr(path)} {value!r}; a '
          'layout is a tuple of ints, None or NO_FAN_IN.')
  return values


def has_fan_in(vector_axes: VectorAxes, params: Any,
               name: str = 'vector_axes') -> list[bool]:
  """Per leaf of ``params``: whether its layout is not ``NO_FAN_IN``."""
  return [spec is not NO_FAN_IN
          for spec in per_leaf_axes(vector_axes, params, name)]


def selected_with_fan_in(where: str, mask: Optional[_masks.Mask],
                         vector_axes: VectorAxes, params: Any, *,
                         mask_name: str = 'mask') -> list[bool]:
  """The leaves a function groups into weight vectors: ``mask`` and a fan-in.

  The default mask (leaves with ``ndim >= 2``) leaves out every leaf whose
  layout is ``NO_FAN_IN``; a ``mask`` given that selects such a leaf is a
  mistake, and raises.

  Args:
    where: The function's name, for error messages.
    mask: A mask as ``optax.masked`` takes it, or None for the default.
    vector_axes: A layout in any form :func:`per_leaf_axes` takes.
    params: The params tree.
    mask_name: The mask's argument name, for error messages.

  Returns:
    One bool per leaf of ``params``, in flattened order.

  Raises:
    ValueError: ``mask`` selects a leaf whose layout is ``NO_FAN_IN``.
  """
  fan_in = has_fan_in(vector_axes, params, f'{where}: vector_axes')
  selected = _masks.selected_leaves(mask, params, f'{where}: {mask_name}')
  if mask is None:
    return [is_selected and leaf_fan_in
            for is_selected, leaf_fan_in in zip(selected, fan_in)]
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, _), is_selected, leaf_fan_in in zip(flat, selected, fan_in):
    if is_selected and not leaf_fan_in:
      raise ValueError(
          f'{where}: {mask_name} selects leaf {jax.tree_util.keystr(path)}, '
          'whose layout in vector_axes is NO_FAN_IN (it has no fan-in to '
          f'permute): leave it out of {mask_name}.')
  return selected


def checked_layouts(where: str, vector_axes: VectorAxes, params: Any,
                    selected: list[bool]) -> list[Optional[tuple[int, ...]]]:
  """Per leaf of ``params``: its checked fan-in axes if selected, else None.

  Args:
    where: The function's name, for error messages.
    vector_axes: A layout in any form :func:`per_leaf_axes` takes.
    params: The params tree.
    selected: One bool per leaf (flattened order): the leaves the function
      groups into weight vectors. Only their layouts are checked.

  Returns:
    A list with, per leaf, the sorted non-negative fan-in axes (from
    :func:`fan_in_axes`) or None for an unselected leaf.
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  specs = per_leaf_axes(vector_axes, params, f'{where}: vector_axes')
  return [
      fan_in_axes(jnp.shape(leaf), spec,
                  where=f'{where}: leaf {jax.tree_util.keystr(path)}')
      if is_selected else None
      for (path, leaf), spec, is_selected in zip(flat, specs, selected)]


def _matrix_shape(shape, axes):
  """``(vector_length, num_vectors)``, and the axis order ``(F..., O...)``."""
  others = tuple(axis for axis in range(len(shape)) if axis not in axes)
  order = axes + others
  return (math.prod(shape[axis] for axis in axes),
          math.prod(shape[axis] for axis in others)), order


def as_vectors(leaf: jax.Array, *, vector_axes: LeafAxes = None) -> jax.Array:
  """Returns ``leaf`` as a ``(vector_length, num_vectors)`` matrix.

  Column ``j`` is the weight vector of output unit ``j``. The fan-in axes
  ``vector_axes`` are moved before the other axes (each group keeping its
  order) and both groups flattened; for the default layout, or any layout
  whose fan-in axes lead, this is a reshape, free at run time, and
  otherwise one transpose.

  Args:
    leaf: an array of rank >= 1.
    vector_axes: the fan-in axes, e.g. ``(0,)`` for an attention query
      kernel ``(features, num_heads, head_dim)``; default: all axes but the
      last (a 1-D leaf is one vector).

  Returns:
    A 2-D view of ``leaf``; a 1-D leaf (or a layout naming every axis)
    becomes a single column.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax import as_vectors
    >>> as_vectors(jnp.zeros((3, 3, 16, 32))).shape
    (144, 32)
    >>> as_vectors(jnp.zeros((16, 4, 8)), vector_axes=(0,)).shape
    (16, 32)
  """
  axes = fan_in_axes(jnp.shape(leaf), vector_axes)
  matrix, order = _matrix_shape(jnp.shape(leaf), axes)
  # Methods, not jnp functions: a NumPy array stays one (exports decode
  # with NumPy alone).
  return leaf.transpose(order).reshape(matrix)


def from_vectors(vectors: jax.Array, shape: tuple[int, ...], *,
                 vector_axes: LeafAxes = None) -> jax.Array:
  """Inverse of :func:`as_vectors`: puts weight vectors back into ``shape``."""
  axes = fan_in_axes(shape, vector_axes)
  _, order = _matrix_shape(shape, axes)
  moved = vectors.reshape(tuple(shape[axis] for axis in order))
  return moved.transpose(tuple(order.index(axis)
                               for axis in range(len(shape))))


# The sorts below run along the last axis of the transposed `(num_vectors,
# vector_length)` matrix: XLA's CPU sort is faster along the minor axis than
# along axis 0 (benchmarks/sync_cost.py, columns `sort` and `minor`), and on
# GPU the transposes fold into layouts.


def _rows(leaf: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  return as_vectors(leaf, vector_axes=axes).T


def _from_rows(rows: jax.Array, shape: tuple[int, ...],
               axes: tuple[int, ...]) -> jax.Array:
  return from_vectors(rows.T, shape, vector_axes=axes)


def sort_vectors(leaf: jax.Array, *, vector_axes: LeafAxes = None) -> jax.Array:
  """Sorts every weight vector of ``leaf`` ascending, keeping ``leaf``'s shape.

  This is the *weight profile* of the paper (Section 2). The values keep
  their bit patterns; only their places change.

  Args:
    leaf: an array of rank >= 1.
    vector_axes: the fan-in axes, as :func:`as_vectors` takes them; default:
      all axes but the last.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax import sort_vectors
    >>> sort_vectors(jnp.array([[3., 0.], [1., 2.]]))
    Array([[1., 0.],
           [3., 2.]], dtype=float32)
    >>> sort_vectors(jnp.array([[3., 0.], [1., 2.]]), vector_axes=(1,))
    Array([[0., 3.],
           [1., 2.]], dtype=float32)
  """
  return _sort_vectors(leaf, fan_in_axes(jnp.shape(leaf), vector_axes))


# Jitted so that eager calls compile once per shape, not once per operation.
@functools.partial(jax.jit, static_argnums=1)
def _sort_vectors(leaf: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  return _from_rows(jnp.sort(_rows(leaf, axes), axis=1), leaf.shape, axes)


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


def _map_whole(fn, axes, out, *leaves):
  new = fn(_rows(out, axes), *(_rows(leaf, axes) for leaf in leaves))
  return _from_rows(new, out.shape, axes)


def _map_chunks(fn, axes, out, *leaves):
  """`_map_whole` chunk by chunk, updating `out` in place."""
  (length, num_vectors), _ = _matrix_shape(out.shape, axes)
  chunks, block = _chunking(num_vectors, length)
  if chunks == 1:
    return _map_whole(fn, axes, out, *leaves)
  groups = num_vectors // (chunks * block)

  def split(leaf):
    return as_vectors(leaf, vector_axes=axes).reshape(
        length, groups, chunks, block)

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

  vectors = lax.fori_loop(0, chunks, body, split(out))
  return from_vectors(vectors.reshape(length, num_vectors), out.shape,
                      vector_axes=axes)


def map_vectors(fn, out: jax.Array, *leaves: jax.Array,
                vector_axes: LeafAxes = None) -> jax.Array:
  """Maps ``fn`` over the weight vectors of ``out`` and ``leaves``, as rows.

  ``fn(out_rows, *leaf_rows)`` gets ``(num_vectors, vector_length)`` rows
  (row ``j``: weight vector ``j`` of each array), must treat rows
  independently and return new rows for ``out``, in ``out``'s dtype. On
  CPU, large leaves go through ``fn`` in chunks of rows, one after the
  other, so that its temporary memory stays small; elsewhere in one call.
  The result is the same either way. A chunk is made of blocks of vectors
  taken at a stride, so each device of a sharding of the leading other
  (output) axis holds its own part of every chunk.

  Args:
    fn: the row-wise function.
    out: the array whose new value ``fn`` computes; it gives the shape.
    *leaves: further arrays of ``out``'s shape that ``fn`` reads.
    vector_axes: the fan-in axes, as :func:`as_vectors` takes them.

  Returns:
    ``fn``'s rows put back into ``out``'s shape.
  """
  axes = fan_in_axes(out.shape, vector_axes)
  return lax.platform_dependent(
      out, *leaves, cpu=functools.partial(_map_chunks, fn, axes),
      default=functools.partial(_map_whole, fn, axes))


def place_sorted(leaf: jax.Array, sorted_values: jax.Array, *,
                 vector_axes: LeafAxes = None) -> jax.Array:
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
      sorted ascending (as :func:`sort_vectors` returns them, with the same
      ``vector_axes``).
    vector_axes: the fan-in axes, as :func:`as_vectors` takes them; default:
      all axes but the last.

  Returns:
    An array of ``leaf``'s shape and ``sorted_values``' dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax import place_sorted
    >>> place_sorted(jnp.array([0.5, -7., 9.]), jnp.array([1., 2., 3.]))
    Array([2., 1., 3.], dtype=float32)
  """
  return _place_sorted(leaf, sorted_values,
                       fan_in_axes(jnp.shape(leaf), vector_axes))


# Jitted so that eager calls compile once per shape, not once per operation.
@functools.partial(jax.jit, static_argnums=2)
def _place_sorted(leaf: jax.Array, sorted_values: jax.Array,
                  axes: tuple[int, ...]) -> jax.Array:
  return map_vectors(lambda _, rows, sorted_rows: place_rows(rows, sorted_rows),
                     sorted_values, leaf, sorted_values, vector_axes=axes)


def ranks(leaf: jax.Array, *, vector_axes: LeafAxes = None) -> jax.Array:
  """The stable rank of every entry within its weight vector, in ``leaf``'s shape.

  Ranks run from 0 (smallest) to ``vector_length - 1``; ties are ranked by
  flat position within the vector (its position in :func:`as_vectors`'s
  column). This is the *ranking* of the paper (Section 3).

  Args:
    leaf: an array of rank >= 1.
    vector_axes: the fan-in axes, as :func:`as_vectors` takes them; default:
      all axes but the last.

  Example:
    >>> import jax.numpy as jnp
    >>> from laperm_jax import ranks
    >>> ranks(jnp.array([0.5, -7., 0.5]))
    Array([1, 0, 2], dtype=int32)
    >>> ranks(jnp.array([[3., 0.], [1., 2.]]), vector_axes=(1,))
    Array([[1, 0],
           [0, 1]], dtype=int32)
  """
  return _ranks(leaf, fan_in_axes(jnp.shape(leaf), vector_axes))


@functools.partial(jax.jit, static_argnums=1)
def _ranks(leaf: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  rows = _rows(leaf, axes)
  positions = lax.broadcasted_iota(jnp.int32, rows.shape, 1)
  return _from_rows(jax.vmap(_scatter_row)(_rank_order(rows), positions),
                    leaf.shape, axes)


# Tests of a weight vector's rows, by name, for `vectors_hold`.
_ROW_TESTS = {
    'sorted': lambda rows: jnp.all(rows[:, 1:] >= rows[:, :-1]),
    'one value': lambda rows: jnp.all(rows == rows[:, :1]),
}


def vectors_hold(test: str, leaves: list[jax.Array],
                 layouts: tuple[tuple[int, ...], ...]) -> list[bool]:
  """Per leaf, whether every weight vector under its layout passes ``test``.

  Args:
    test: ``'sorted'`` (ascending) or ``'one value'`` (constant).
    leaves: The leaves, checked in one jitted call.
    layouts: Their fan-in axes, as :func:`fan_in_axes` gives them.

  Returns:
    One bool per leaf.
  """
  if not leaves:
    return []
  return [bool(flag) for flag in jax.device_get(
      _vectors_hold(test, leaves, layouts))]


@functools.partial(jax.jit, static_argnums=(0, 2))
def _vectors_hold(test, leaves, layouts):
  return [_ROW_TESTS[test](_rows(leaf, axes))
          for leaf, axes in zip(leaves, layouts)]
