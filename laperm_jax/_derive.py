"""The weight-vector layout of every leaf, read from the model's forward pass.

LaPerm permutes each weight vector, the weights feeding one output unit,
within itself. Which axes of a leaf form its vectors (its *fan-in axes*)
cannot be told from shapes: a ``(3, 4, 4)`` kernel is ``(width, in, out)``
in a 1-D convolution (fan-in: axes 0 and 1) and ``(features, heads,
head_dim)`` in an attention projection (fan-in: axis 0). The forward pass
can tell: the ``dot_general`` that consumes a kernel contracts exactly its
fan-in axes, and a ``conv_general_dilated`` sums over its kernel's spatial
and input-feature axes.

So :func:`derive_vector_axes` traces the forward pass abstractly
(``jax.make_jaxpr``: nothing runs) and follows each leaf through the
operations that only move its entries around (reshape, transpose,
broadcast, squeeze, slices, concatenation, padding, dtype conversions,
nested jits, remat, custom derivatives, scans, conds), keeping for every
axis of the current array the set of the leaf's axes it spans, until a
product or a convolution reads it. An array may hold several leaves
(kernels concatenated before one product, as Flax's ``OptimizedLSTMCell``
does with its gates): it has one view per leaf.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Optional
import warnings

import jax
from jax import lax
from jax.extend import core
import numpy as np

from laperm_jax import _weight_vectors

Axes = frozenset[int]

# A pseudo axis of the leaf in `_View.origins`: the array's axis also holds
# entries that are not the leaf's (another array concatenated to it, or
# padding), so a product summing over that axis sums over more than the leaf.
_OTHER_ENTRIES = -1

# Operations whose output lays out the same entries as their operand, axis
# for axis.
_SAME_LAYOUT = frozenset([
    lax.convert_element_type_p,
    lax.copy_p,
    lax.reduce_precision_p,
    lax.rev_p,  # Reverses entries within each axis.
    lax.sharding_constraint_p,
    lax.stop_gradient_p,
])
# `jnp.stack` and `jnp.unstack` have their own primitives in newer JAX
# versions only.
_STACK = getattr(lax, 'stack_p', None)
_UNSTACK = getattr(lax, 'unstack_p', None)


class _View(NamedTuple):
  """How an array of the traced program holds the entries of one leaf.

  Attributes:
    leaf: The leaf's index in the flattened params.
    origins: Per axis of the array, the leaf's axes it spans (empty for an
      axis added by a broadcast; several after a reshape merges axes; the
      same one on several axes after a reshape splits it), and
      ``_OTHER_ENTRIES`` where the axis also holds entries of something else.
    fixed: The leaf's axes indexed away: the array holds one position of
      each (a static index, or one step of a scan over stacked layers).
    partial: The leaf's axes of which the array holds a slice only.
  """

  leaf: int
  origins: tuple[Axes, ...]
  fixed: Axes = frozenset()
  partial: Axes = frozenset()


# The views of one array: one per leaf whose entries it holds (none for an
# array that holds no leaf's entries; several after a concatenation).
Views = tuple[_View, ...]


class _Use(NamedTuple):
  """One place where the forward pass reads a leaf.

  Attributes:
    fan_in: The leaf's axes summed over for one output unit, or None where
      the use gives no fan-in.
    other: The leaf's axes that tell output units apart.
    description: The operation, or what is wrong with it, for messages.
  """

  fan_in: Optional[Axes]
  other: Axes
  description: str


def _union(axes_sets) -> Axes:
  return frozenset().union(*axes_sets)


def _leaf_axes(axes_sets) -> Axes:
  """The union of ``axes_sets`` without the pseudo axis ``_OTHER_ENTRIES``."""
  return _union(axes_sets) - {_OTHER_ENTRIES}


def _reshape(view: _View, in_shape, out_shape) -> _View:
  """Follows a row-major reshape: matches groups of axes of equal size."""
  fixed = view.fixed | _held_at_one_position(
      view, [axis for axis, size in enumerate(in_shape) if size == 1])
  in_axes = [axis for axis, size in enumerate(in_shape) if size != 1]
  out_axes = [axis for axis, size in enumerate(out_shape) if size != 1]
  origins = [frozenset()] * len(out_shape)
  i = j = 0
  while i < len(in_axes):
    group_in, group_out = [in_axes[i]], [out_axes[j]]
    in_size, out_size = in_shape[in_axes[i]], out_shape[out_axes[j]]
    i, j = i + 1, j + 1
    while in_size != out_size:
      if in_size < out_size:
        group_in.append(in_axes[i])
        in_size *= in_shape[in_axes[i]]
        i += 1
      else:
        group_out.append(out_axes[j])
        out_size *= out_shape[out_axes[j]]
        j += 1
    spanned = _union(view.origins[axis] for axis in group_in)
    for axis in group_out:
      origins[axis] = spanned
  return view._replace(origins=tuple(origins), fixed=fixed)


def _held_at_one_position(view: _View, axes: Sequence[int]) -> Axes:
  """The sliced leaf axes behind ``view``'s axes ``axes``, of size 1 each.

  An axis of size 1 spans leaf axes of size 1, or leaf axes sliced down to
  one position: without it, the array holds that one position of them, as
  after a static index.
  """
  return _union(view.origins[axis] for axis in axes) & view.partial


def _drop_axes(view: _View, gone: Sequence[int]) -> _View:
  """``view`` without its axes ``gone``, of size 1 each."""
  return view._replace(
      origins=tuple(axes for axis, axes in enumerate(view.origins)
                    if axis not in gone),
      fixed=view.fixed | _held_at_one_position(view, gone))


def _sliced(view: _View, axes: Sequence[int]) -> _View:
  """``view`` after its axes ``axes`` are cut down to a slice."""
  return view._replace(
      partial=view.partial | _leaf_axes(view.origins[axis] for axis in axes))


def _cut(view: _View, in_shape, out_shape) -> _View:
  """``view`` after a slice from ``in_shape`` to ``out_shape``."""
  return _sliced(view, [axis for axis, size in enumerate(in_shape)
                        if out_shape[axis] != size])


def _with_other_entries(view: _View, axes: Sequence[int]) -> _View:
  """``view`` after its axes ``axes`` gain entries that are not the leaf's."""
  origins = list(view.origins)
  for axis in axes:
    origins[axis] = origins[axis] | {_OTHER_ENTRIES}
  return view._replace(origins=tuple(origins))


def _pad(view: _View, padding_config) -> _View:
  """``view`` after ``lax.pad``: padding adds entries, negative padding cuts."""
  grown = [axis for axis, (low, high, interior) in enumerate(padding_config)
           if max(low, high, interior) > 0]
  cut = [axis for axis, (low, high, _) in enumerate(padding_config)
         if min(low, high) < 0]
  return _with_other_entries(_sliced(view, cut), grown)


def _stacked(view: _View, axis: int, num_operands: int) -> _View:
  """``view`` after a stack of ``num_operands`` arrays along a new ``axis``.

  Each operand holds one position of the new axis: with more than one, the
  others' entries lie along it.
  """
  view = view._replace(
      origins=view.origins[:axis] + (frozenset(),) + view.origins[axis:])
  return _with_other_entries(view, [axis] if num_operands > 1 else [])


def _layout_rule(eqn, view: _View) -> Optional[list[_View]]:
  """The views of the outputs of a layout op on ``view``; None if not one."""
  primitive, params = eqn.primitive, eqn.params
  in_shape = eqn.invars[0].aval.shape
  if primitive in _SAME_LAYOUT:
    return [view]
  if primitive is lax.transpose_p:
    return [view._replace(
        origins=tuple(view.origins[axis] for axis in params['permutation']))]
  if primitive is lax.reshape_p and params['dimensions'] is None:
    return [_reshape(view, in_shape, params['new_sizes'])]
  if primitive is lax.squeeze_p:
    return [_drop_axes(view, params['dimensions'])]
  if primitive is _UNSTACK:
    # Each output is one position along the axis.
    axis = params['axis']
    return [_drop_axes(_sliced(view, [axis]), [axis])] * len(eqn.outvars)
  if primitive is lax.broadcast_in_dim_p:
    origins = [frozenset()] * len(params['shape'])
    for axis, out_axis in enumerate(params['broadcast_dimensions']):
      origins[out_axis] = view.origins[axis]
    return [view._replace(origins=tuple(origins))]
  if primitive in (lax.slice_p, lax.dynamic_slice_p, lax.split_p):
    return [_cut(view, in_shape, out.aval.shape) for out in eqn.outvars]
  if primitive is lax.pad_p:
    return [_pad(view, params['padding_config'])]
  return None


def _layout_outputs(eqn, views: Views) -> Optional[list[Views]]:
  """The views of the outputs of a layout op on ``views``; None if not one."""
  per_view = [_layout_rule(eqn, view) for view in views]
  if any(outputs is None for outputs in per_view):
    return None
  return [tuple(outputs) for outputs in zip(*per_view)]


def _product_use(view: _View, summed: Sequence[int], name: str) -> _Use:
  """The use of ``view`` by a product that sums over its axes ``summed``."""
  spanned = _union(view.origins[axis] for axis in summed)
  fan_in = spanned - {_OTHER_ENTRIES}
  other = view.fixed | _union(
      axes for axis, axes in enumerate(view.origins) if axis not in summed)
  other -= {_OTHER_ENTRIES}
  if _OTHER_ENTRIES in spanned:
    return _Use(None, other, f'read by {name}, which sums over it '
                'concatenated or padded with other entries')
  if not fan_in:
    return _Use(None, other, f'read by {name}, which sums over none of its '
                'axes')
  if fan_in & view.partial:
    return _Use(None, other, f'read by {name}, which sums over a slice of its '
                f'axes {sorted(fan_in & view.partial)}')
  if fan_in & other:
    return _Use(None, other, f'read by {name}, which sums over part of its '
                f'axes {sorted(fan_in & other)} (reshaped or broadcast)')
  return _Use(fan_in, other, f'{name} summing over axes {sorted(fan_in)}')


def _called_jaxpr(eqn) -> Optional[core.Jaxpr]:
  """The jaxpr that ``eqn`` calls on its operands, or None if not a call.

  jit, remat, custom_jvp, custom_vjp and closed_call each hold one jaxpr
  that takes the operands and gives the results, shape for shape: found so
  rather than by name, as their primitives differ between JAX versions.
  (Loops and conds, which also hold jaxprs, are handled before.)
  """
  jaxprs = [value.jaxpr if isinstance(value, core.ClosedJaxpr) else value
            for value in eqn.params.values()
            if isinstance(value, (core.Jaxpr, core.ClosedJaxpr))]
  if len(jaxprs) != 1:
    return None
  jaxpr, = jaxprs

  def types(variables):
    return [(var.aval.shape, var.aval.dtype) for var in variables]

  if (types(jaxpr.invars) != types(eqn.invars)
      or types(jaxpr.outvars) != types(eqn.outvars)):
    return None
  return jaxpr


def _unread(description: str) -> _Use:
  """A use that gives no fan-in, and why."""
  return _Use(None, frozenset(), description)


class _Tracer:
  """Walks a jaxpr, following leaves and recording their uses."""

  def __init__(self):
    self.uses: dict[int, list[_Use]] = {}

  def record(self, view: _View, use: _Use):
    self.uses.setdefault(view.leaf, []).append(use)

  def run(self, jaxpr, in_views: Sequence[Views]) -> list[Views]:
    """Follows ``in_views`` through ``jaxpr``; returns its outputs' views."""
    env = {var: views for var, views in zip(jaxpr.invars, in_views) if views}

    def read(var) -> Views:
      return env.get(var, ()) if isinstance(var, core.Var) else ()

    for eqn in jaxpr.eqns:
      views = [read(var) for var in eqn.invars]
      if any(views):
        out_views = self.equation(eqn, views)
        env.update((var, views) for var, views in zip(eqn.outvars, out_views)
                   if views)
    return [read(var) for var in jaxpr.outvars]

  def equation(self, eqn, views: list[Views]) -> Sequence[Views]:
    """Records the uses in ``eqn``; returns the views of its outputs."""
    primitive = eqn.primitive
    name = primitive.name
    first, *rest = views
    if first and not any(rest):
      out_views = _layout_outputs(eqn, first)
      if out_views is not None:
        return out_views
    if primitive is lax.concatenate_p:
      axis = eqn.params['dimension']
      return [tuple(_with_other_entries(view, [axis])
                    for operand in views for view in operand)]
    if primitive is _STACK:
      axis = eqn.params['axis']
      return [tuple(_stacked(view, axis, len(views))
                    for operand in views for view in operand)]
    if primitive in (lax.device_put_p, lax.optimization_barrier_p):
      return views
    if primitive is lax.dot_general_p:
      contracting, _ = eqn.params['dimension_numbers']
      for operand, summed in zip(views, contracting):
        for view in operand:
          self.record(view, _product_use(view, summed, name))
      return [()]
    if primitive is lax.conv_general_dilated_p:
      lhs, rhs = views
      self.record_unread([lhs], f'the input of {name}')
      # rhs_spec is (output feature, input feature, *spatial): with feature
      # groups too, one output channel sums over all but the first (its
      # group's inputs).
      rhs_spec = eqn.params['dimension_numbers'].rhs_spec
      for view in rhs:
        self.record(view, _product_use(view, rhs_spec[1:], name))
      return [()]
    if primitive is lax.cond_p:
      return self.cond(eqn, views)
    if primitive is lax.scan_p:
      return self.scan(eqn, views)
    if primitive is lax.while_p:
      return self.while_loop(eqn, views)
    called = _called_jaxpr(eqn)
    if called is not None:
      return self.run(called, views)
    self.record_unread(views, f'read by {name}, which is neither a product '
                       'nor a convolution')
    return [()] * len(eqn.outvars)

  def record_unread(self, views: Sequence[Views], description: str):
    for operand in views:
      for view in operand:
        self.record(view, _unread(description))

  def cond(self, eqn, views):
    index, *operands = views
    self.record_unread([index], 'the index of a cond')
    branch_outs = [self.run(branch.jaxpr, operands)
                   for branch in eqn.params['branches']]
    outs = []
    for out_views in zip(*branch_outs):
      if all(views == out_views[0] for views in out_views):
        outs.append(out_views[0])
      else:
        self.record_unread(out_views, 'returned by cond branches with '
                           'different layouts')
        outs.append(())
    return outs

  def scan(self, eqn, views):
    num_consts, num_carry = eqn.params['num_consts'], eqn.params['num_carry']
    consts = views[:num_consts]
    carry = views[num_consts:num_consts + num_carry]
    xs = views[num_consts + num_carry:]
    self.record_unread(carry, 'carried by a scan')
    # Each step reads one slice of xs along axis 0, e.g. one layer of
    # stacked layers: that axis tells outputs apart.
    steps = [tuple(view._replace(origins=view.origins[1:],
                                 fixed=view.fixed | view.origins[0])
                   for view in operand) for operand in xs]
    body_outs = self.run(eqn.params['jaxpr'].jaxpr,
                         list(consts) + [()] * num_carry + steps)
    self.record_unread(body_outs, 'returned by a scan body')
    return [()] * len(eqn.outvars)

  def while_loop(self, eqn, views):
    cond_nconsts = eqn.params['cond_nconsts']
    body_nconsts = eqn.params['body_nconsts']
    cond_consts = views[:cond_nconsts]
    body_consts = views[cond_nconsts:cond_nconsts + body_nconsts]
    carry = views[cond_nconsts + body_nconsts:]
    self.record_unread(carry, 'carried by a while loop')
    no_carry = [()] * len(carry)
    self.run(eqn.params['cond_jaxpr'].jaxpr, list(cond_consts) + no_carry)
    body_outs = self.run(eqn.params['body_jaxpr'].jaxpr,
                         list(body_consts) + no_carry)
    self.record_unread(body_outs, 'returned by a while loop body')
    return [()] * len(eqn.outvars)


def _resolve(shape: tuple[int, ...], uses: Sequence[_Use]):
  """Returns ``(fan_in_axes, None)`` or ``(None, what_went_wrong)``."""
  if not uses:
    return None, 'not read by fn'
  for use in uses:
    if use.fan_in is None:
      return None, use.description
  ones = frozenset(axis for axis, size in enumerate(shape) if size == 1)
  first = uses[0]
  for use in uses[1:]:
    # Axes of size 1 may sit on either side: every split is the same.
    if use.fan_in - ones != first.fan_in - ones:
      return None, (f'read with different fan-ins: {first.description} and '
                    f'{use.description}')
  # Axes of size 1 that a reshape or squeeze dropped join the fan-in.
  dropped = ones - first.fan_in - first.other
  return tuple(sorted(first.fan_in | dropped)), None


def _is_array(value) -> bool:
  return isinstance(value, (jax.Array, np.ndarray, np.generic,
                            jax.ShapeDtypeStruct))


_UNKNOWN = ('error', 'warn', 'default')


def _derived_layout(fn, params, args, kwargs) -> tuple[Any, list[str]]:
  """The layout of ``params``, and one line per unread leaf of rank >= 2."""
  paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [jax.tree_util.keystr(path) for path, _ in paths_and_leaves]
  shapes = []
  for path, (_, leaf) in zip(paths, paths_and_leaves):
    if not _is_array(leaf):
      raise ValueError(
          f'params leaf {path} is a {type(leaf).__name__}, not an array or '
          'jax.ShapeDtypeStruct.')
    shapes.append(tuple(leaf.shape))

  # Arrays among the inputs are traced; other values (flags) stay static.
  input_leaves, input_tree = jax.tree.flatten((args, kwargs))
  traced = [_is_array(leaf) for leaf in input_leaves]

  def forward(params, traced_inputs):
    traced_iter = iter(traced_inputs)
    leaves = [next(traced_iter) if is_traced else leaf
              for leaf, is_traced in zip(input_leaves, traced)]
    call_args, call_kwargs = jax.tree.unflatten(input_tree, leaves)
    return fn(params, *call_args, **call_kwargs)

  jaxpr = jax.make_jaxpr(forward)(
      params, [leaf for leaf, is_traced in zip(input_leaves, traced)
               if is_traced]).jaxpr
  tracer = _Tracer()
  in_views = [
      (_View(index, tuple(frozenset([axis]) for axis in range(len(shape)))),)
      for index, shape in enumerate(shapes)]
  in_views += [()] * (len(jaxpr.invars) - len(shapes))
  tracer.record_unread(tracer.run(jaxpr, in_views), 'returned by fn')

  layouts, unread = [], []
  for index, (path, shape) in enumerate(zip(paths, shapes)):
    fan_in, problem = _resolve(shape, tracer.uses.get(index, []))
    layouts.append(_weight_vectors.NO_FAN_IN if problem else fan_in)
    if problem and len(shape) >= 2:
      unread.append(f'  {path} (shape {shape}): {problem}')
  return jax.tree_util.tree_unflatten(treedef, layouts), unread


def _report(unread: list[str], unknown: str, where: str):
  """Raises or warns, as ``unknown`` says, about the leaves ``unread``."""
  if not unread:
    return
  if unknown == 'error':
    raise ValueError(
        f'{where} cannot read the fan-in of these leaves:\n'
        + '\n'.join(unread) + "\nPass unknown='warn' to derive the rest and "
        'leave these out of LaPerm (lp.NO_FAN_IN: the inner optimizer alone '
        'trains them), or give their layout by hand.')
  renamed = ("\n(unknown='default' is the former name of unknown='warn': "
             'these leaves no longer get the default layout.)'
             if unknown == 'default' else '')
  warnings.warn(
      f'{where} cannot read the fan-in of these leaves; they get '
      'lp.NO_FAN_IN, and LaPerm leaves them to the inner optimizer:\n'
      + '\n'.join(unread) + renamed, stacklevel=3)


def _check_unknown(unknown: str):
  if unknown not in _UNKNOWN:
    raise ValueError(f"unknown must be 'error' or 'warn', got {unknown!r}.")


def derive_vector_axes(fn: Callable[..., Any], params: Any, *args: Any,
                       unknown: str = 'error', **kwargs: Any) -> Any:
  """The fan-in axes of every leaf, read from the forward pass ``fn``.

  A *weight vector* is every weight feeding one output unit: the entries of
  a leaf that one output sums over. By default the library takes all axes
  but the last, which is right for Dense ``(in, out)`` and Conv ``(h, w,
  in, out)`` kernels but not for attention (Flax keeps query, key and value
  kernels as ``(features, heads, head_dim)``: the fan-in is axis 0),
  ``DenseGeneral`` with several axes, or layers stacked by ``nn.scan`` (a
  ``(layers, in, out)`` kernel: the fan-in is axis 1, while the default
  would make each vector span every layer). Shapes cannot tell these
  layouts apart; the forward pass can. This function traces ``fn(params,
  *args, **kwargs)`` with :func:`jax.make_jaxpr` (abstractly: nothing runs,
  and the arguments may be :class:`jax.ShapeDtypeStruct`), follows every
  leaf through the operations that only move entries (reshape, transpose,
  broadcast, squeeze, slicing and splitting, concatenation and padding along
  axes no product sums over, dtype conversion, nested jit, remat, custom
  derivatives, scans over stacked layers, conds), and reads its fan-in where
  it is consumed: the contracting axes of a ``dot_general``, or the spatial
  and input-feature axes of a ``conv_general_dilated`` kernel (with feature
  groups, depthwise included, likewise: one output channel sums over its
  group's inputs). A leaf read twice with the same fan-in (weight tying) is
  fine, and so are kernels concatenated along their output axis before one
  product (the gates of Flax's ``OptimizedLSTMCell``, fused projections).

  A leaf without a fan-in to read gets :data:`laperm_jax.NO_FAN_IN`, never
  a guess: one read by any other operation (an embedding lookup, a bias or
  position embedding added, a scale multiplied, a reduction), read by
  products with different fan-ins, summed over part of an axis or over a
  concatenation with other arrays, carried by a loop, returned by ``fn`` or
  not read at all. :func:`laperm_jax.laperm` leaves such leaves to the inner
  optimizer. Those of rank >= 2, which LaPerm would permute by default, are
  reported as ``unknown`` says; those of rank <= 1 (biases, normalization
  scales) are not, as LaPerm leaves them to the inner optimizer by default
  anyway.

  Args:
    fn: The forward pass, called as ``fn(params, *args, **kwargs)``: e.g.
      ``lambda p, x: model.apply({'params': p}, x)`` for Flax Linen. For a
      Flax NNX model, :func:`derive_nnx_vector_axes` writes it.
    params: The params tree (arrays or :class:`jax.ShapeDtypeStruct`).
    *args: Example inputs of ``fn``. Arrays and
      :class:`jax.ShapeDtypeStruct` (in any pytree) are traced; anything
      else (a flag, a rate) is passed to ``fn`` as is.
    unknown: What to do about leaves of rank >= 2 whose fan-in cannot be
      read: ``'error'`` (the default) raises a ``ValueError`` naming every
      such leaf and why; ``'warn'`` gives them :data:`laperm_jax.NO_FAN_IN`
      and warns once, naming every such leaf and why (``'default'`` is its
      former name), e.g. to derive the rest of a model with an embedding.
    **kwargs: Further inputs of ``fn``, as ``args``.

  Returns:
    A tree with the structure of ``params`` whose leaves are sorted tuples
    of the fan-in axes, or :data:`laperm_jax.NO_FAN_IN`. Pass it on as it
    is: ``lp.laperm(inner, k, vector_axes=layout)`` permutes the leaves it
    gives a fan-in (of rank >= 2, unless ``mask`` narrows them further) and
    leaves the others to ``inner``.

  Raises:
    ValueError: If ``unknown`` is not ``'error'`` or ``'warn'``, if a leaf of
      ``params`` is not an array, or, with ``unknown='error'``, if the
      fan-in of a leaf of rank >= 2 cannot be read.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import laperm_jax as lp
    >>> params = {'query': jnp.zeros((16, 4, 8)),  # (features, heads, dim)
    ...           'out': jnp.zeros((4, 8, 16)),    # (heads, dim, features)
    ...           'bias': jnp.zeros(16)}
    >>> def attention_projections(params, x):
    ...   query = jnp.einsum('bf,fhd->bhd', x, params['query'])
    ...   out = jnp.einsum('bhd,hdf->bf', query, params['out'])
    ...   return out + params['bias']
    >>> lp.derive_vector_axes(attention_projections, params,
    ...                       jax.ShapeDtypeStruct((2, 16), jnp.float32))
    {'bias': laperm_jax.NO_FAN_IN, 'out': (0, 1), 'query': (0,)}

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020
  """
  _check_unknown(unknown)
  layout, unread = _derived_layout(fn, params, args, kwargs)
  _report(unread, unknown, 'derive_vector_axes')
  return layout


def derive_nnx_vector_axes(model: Any, *args: Any, unknown: str = 'error',
                           **kwargs: Any) -> Any:
  """The fan-in axes of every ``nnx.Param`` of a Flax NNX model.

  :func:`derive_vector_axes` on ``model(*args, **kwargs)``, for
  ``nnx.Optimizer(model, lp.laperm(inner, k, vector_axes=layout),
  wrt=nnx.Param)``. The model's other state (BatchNorm statistics, Dropout
  RNG keys) is traced along with the params, so models that hold it, in
  train or eval mode, and layers stacked by ``nnx.vmap`` and run by
  ``nnx.scan`` derive as any other (a stacked ``(layers, in, out)`` kernel
  gets ``(1,)``). The model is not changed: nothing runs.

  Args:
    model: The ``nnx.Module``, called as ``model(*args, **kwargs)``.
    *args: Example inputs, as :func:`derive_vector_axes` takes them.
    unknown: As :func:`derive_vector_axes` takes it.
    **kwargs: Further inputs, as ``args``.

  Returns:
    The layout of ``nnx.state(model, nnx.Param)`` as a tree of plain
    values (an ``nnx.State`` of tuples and :data:`laperm_jax.NO_FAN_IN`,
    without ``Variable`` wrappers): a prefix of both trees ``nnx.Optimizer``
    gives its transformation, the params with their ``Variable`` wrappers
    at ``init`` and the pure arrays at ``update``.

  Raises:
    ValueError: As :func:`derive_vector_axes`.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from flax import nnx
    >>> import laperm_jax as lp
    >>> class Model(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.linear = nnx.Linear(4, 8, rngs=rngs)
    ...     self.norm = nnx.BatchNorm(8, rngs=rngs)
    ...     self.dropout = nnx.Dropout(0.1, rngs=rngs)
    ...   def __call__(self, x):
    ...     return self.dropout(self.norm(self.linear(x)))
    >>> model = Model(nnx.Rngs(0))
    >>> x = jnp.ones((2, 4))
    >>> layout = lp.derive_nnx_vector_axes(model, x, unknown='warn')
    >>> optimizer = nnx.Optimizer(
    ...     model, lp.laperm(optax.adam(1e-3), 20, vector_axes=layout),
    ...     wrt=nnx.Param)
    >>> layout['linear']['kernel'], layout['norm']['scale']
    ((0,), laperm_jax.NO_FAN_IN)
  """
  from flax import nnx  # pylint: disable=import-outside-toplevel
  _check_unknown(unknown)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def forward(params, rest, *args, **kwargs):
    return nnx.merge(graphdef, params, rest)(*args, **kwargs)

  layout, unread = _derived_layout(forward, nnx.as_pure(params),
                                   (rest,) + args, kwargs)
  _report(unread, unknown, 'derive_nnx_vector_axes')
  return layout
