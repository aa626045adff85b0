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
broadcast, squeeze, slices, dtype conversions, nested jits, remat, custom
derivatives, scans, conds), keeping for every axis of the current array the
set of the leaf's axes it spans, until a product or a convolution reads it.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Optional

import jax
from jax import lax
from jax.extend import core
import numpy as np

Axes = frozenset[int]

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
# `jnp.unstack` has its own primitive in newer JAX versions only.
_UNSTACK = getattr(lax, 'unstack_p', None)


class _View(NamedTuple):
  """How an array of the traced program holds the entries of one leaf.

  Attributes:
    leaf: The leaf's index in the flattened params.
    origins: Per axis of the array, the leaf's axes it spans (empty for an
      axis added by a broadcast; several after a reshape merges axes; the
      same one on several axes after a reshape splits it).
    fixed: The leaf's axes indexed away: the array holds one position of
      each (a static index, or one step of a scan over stacked layers).
    partial: The leaf's axes of which the array holds a slice only.
  """

  leaf: int
  origins: tuple[Axes, ...]
  fixed: Axes = frozenset()
  partial: Axes = frozenset()


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


def _cut(view: _View, in_shape, out_shape) -> _View:
  """``view`` after a slice from ``in_shape`` to ``out_shape``."""
  cut = [axis for axis, size in enumerate(in_shape) if out_shape[axis] != size]
  return view._replace(
      partial=view.partial | _union(view.origins[axis] for axis in cut))


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
    sliced = view._replace(partial=view.partial | view.origins[axis])
    return [_drop_axes(sliced, [axis])] * len(eqn.outvars)
  if primitive is lax.broadcast_in_dim_p:
    origins = [frozenset()] * len(params['shape'])
    for axis, out_axis in enumerate(params['broadcast_dimensions']):
      origins[out_axis] = view.origins[axis]
    return [view._replace(origins=tuple(origins))]
  if primitive in (lax.slice_p, lax.dynamic_slice_p, lax.split_p):
    return [_cut(view, in_shape, out.aval.shape) for out in eqn.outvars]
  return None


def _product_use(view: _View, summed: Sequence[int], name: str) -> _Use:
  """The use of ``view`` by a product that sums over its axes ``summed``."""
  fan_in = _union(view.origins[axis] for axis in summed)
  other = view.fixed | _union(
      axes for axis, axes in enumerate(view.origins) if axis not in summed)
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

  def run(self, jaxpr, in_views: Sequence[Optional[_View]]):
    """Follows ``in_views`` through ``jaxpr``; returns its outputs' views."""
    env = {var: view for var, view in zip(jaxpr.invars, in_views)
           if view is not None}

    def read(var):
      return env.get(var) if isinstance(var, core.Var) else None

    for eqn in jaxpr.eqns:
      views = [read(var) for var in eqn.invars]
      if any(view is not None for view in views):
        out_views = self.equation(eqn, views)
        env.update((var, view) for var, view in zip(eqn.outvars, out_views)
                   if view is not None)
    return [read(var) for var in jaxpr.outvars]

  def equation(self, eqn, views) -> Sequence[Optional[_View]]:
    """Records the uses in ``eqn``; returns the views of its outputs."""
    primitive = eqn.primitive
    name = primitive.name
    first, *rest = views
    if first is not None and all(view is None for view in rest):
      out_views = _layout_rule(eqn, first)
      if out_views is not None:
        return out_views
    if primitive in (lax.device_put_p, lax.optimization_barrier_p):
      return views
    if primitive is lax.dot_general_p:
      contracting, _ = eqn.params['dimension_numbers']
      for view, summed in zip(views, contracting):
        if view is not None:
          self.record(view, _product_use(view, summed, name))
      return [None]
    if primitive is lax.conv_general_dilated_p:
      lhs, rhs = views
      self.record_unread([lhs], f'the input of {name}')
      if rhs is not None:
        rhs_spec = eqn.params['dimension_numbers'].rhs_spec
        # rhs_spec is (output feature, input feature, *spatial): with
        # feature groups too, one output channel sums over all but the
        # first (its group's inputs).
        self.record(rhs, _product_use(rhs, rhs_spec[1:], name))
      return [None]
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
    return [None] * len(eqn.outvars)

  def record_unread(self, views, description: str):
    for view in views:
      if view is not None:
        self.record(view, _unread(description))

  def cond(self, eqn, views):
    index, *operands = views
    self.record_unread([index], 'the index of a cond')
    branch_outs = [self.run(branch.jaxpr, operands)
                   for branch in eqn.params['branches']]
    outs = []
    for out_views in zip(*branch_outs):
      if all(view == out_views[0] for view in out_views):
        outs.append(out_views[0])
      else:
        self.record_unread(out_views, 'returned by cond branches with '
                           'different layouts')
        outs.append(None)
    return outs

  def scan(self, eqn, views):
    num_consts, num_carry = eqn.params['num_consts'], eqn.params['num_carry']
    consts = views[:num_consts]
    carry = views[num_consts:num_consts + num_carry]
    xs = views[num_consts + num_carry:]
    self.record_unread(carry, 'carried by a scan')
    # Each step reads one slice of xs along axis 0, e.g. one layer of
    # stacked layers: that axis tells outputs apart.
    steps = [None if view is None else view._replace(
        origins=view.origins[1:], fixed=view.fixed | view.origins[0])
             for view in xs]
    body_outs = self.run(eqn.params['jaxpr'].jaxpr,
                         list(consts) + [None] * num_carry + steps)
    self.record_unread(body_outs, 'returned by a scan body')
    return [None] * len(eqn.outvars)

  def while_loop(self, eqn, views):
    cond_nconsts = eqn.params['cond_nconsts']
    body_nconsts = eqn.params['body_nconsts']
    cond_consts = views[:cond_nconsts]
    body_consts = views[cond_nconsts:cond_nconsts + body_nconsts]
    carry = views[cond_nconsts + body_nconsts:]
    self.record_unread(carry, 'carried by a while loop')
    no_carry = [None] * len(carry)
    self.run(eqn.params['cond_jaxpr'].jaxpr, list(cond_consts) + no_carry)
    body_outs = self.run(eqn.params['body_jaxpr'].jaxpr,
                         list(body_consts) + no_carry)
    self.record_unread(body_outs, 'returned by a while loop body')
    return [None] * len(eqn.outvars)


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


def derive_vector_axes(fn: Callable[..., Any], params: Any, *args: Any,
                       unknown: str = 'error', **kwargs: Any) -> Any:
  """The fan-in axes of every leaf, read from the forward pass ``fn``.

  A *weight vector* is every weight feeding one output unit: the entries of
  a leaf that one output sums over. By default the library takes all axes
  but the last, which is right for Dense ``(in, out)`` and Conv ``(h, w,
  in, out)`` kernels but not for attention (Flax keeps query, key and value
  kernels as ``(features, heads, head_dim)``: the fan-in is axis 0) nor for
  ``DenseGeneral`` with several axes. Shapes cannot tell these layouts
  apart; the forward pass can. This function traces ``fn(params, *args,
  **kwargs)`` with :func:`jax.make_jaxpr` (abstractly: nothing runs, and
  the arguments may be :class:`jax.ShapeDtypeStruct`), follows every leaf
  through the operations that only move entries (reshape, transpose,
  broadcast, squeeze, slicing, dtype conversion, nested jit, remat, custom
  derivatives, scans over stacked layers, conds), and reads its fan-in where
  it is consumed: the contracting axes of a ``dot_general``, or the spatial
  and input-feature axes of a ``conv_general_dilated`` kernel (with feature
  groups, depthwise included, likewise: one output channel sums over its
  group's inputs). A leaf read twice with the same fan-in (weight tying) is
  fine.

  A leaf it cannot read is reported, never guessed: one read by any other
  operation (an embedding lookup, a bias or position embedding added, a
  scale multiplied, a reduction, a concatenation), read by products with
  different fan-ins, summed over part of an axis, carried by a loop,
  returned by ``fn`` or not read at all. Leaves of rank <= 1 have a single
  layout (one vector, the default) and get None whenever they are not read
  by products only.

  Args:
    fn: The forward pass, called as ``fn(params, *args, **kwargs)``: e.g.
      ``lambda p, x: model.apply({'params': p}, x)`` for Flax Linen, or
      ``lambda state, x: nnx.merge(graphdef, state)(x)`` with ``graphdef,
      state = nnx.split(model)`` for Flax NNX.
    params: The params tree (arrays or :class:`jax.ShapeDtypeStruct`).
    *args: Example inputs of ``fn``. Arrays and
      :class:`jax.ShapeDtypeStruct` are traced; anything else (a flag, a
      rate) is passed to ``fn`` as is.
    unknown: What a leaf of rank >= 2 that cannot be read gets: ``'error'``
      (the default) raises a ``ValueError`` naming every such leaf and what
      was seen; ``'default'`` gives it None, the default layout, e.g. to
      derive the rest of a model with an embedding.
    **kwargs: Further inputs of ``fn``, as ``args``.

  Returns:
    A tree with the structure of ``params`` whose leaves are sorted tuples
    of the fan-in axes, or None. Tuples and None are *leaves* here: pass the
    tree on as it is (``lp.laperm(inner, k, vector_axes=derived)``); a plain
    ``jax.tree.map`` over it needs ``is_leaf=lambda x: isinstance(x,
    tuple)``.

  Raises:
    ValueError: If ``unknown`` is neither ``'error'`` nor ``'default'``, if
      a leaf of ``params`` is not an array, or, with ``unknown='error'``, if
      a leaf of rank >= 2 cannot be read.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import laperm_jax as lp
    >>> params = {'query': jnp.zeros((16, 4, 8)),  # (features, heads, dim)
    ...           'out': jnp.zeros((4, 8, 16))}    # (heads, dim, features)
    >>> def attention_projections(params, x):
    ...   query = jnp.einsum('bf,fhd->bhd', x, params['query'])
    ...   return jnp.einsum('bhd,hdf->bf', query, params['out'])
    >>> lp.derive_vector_axes(attention_projections, params,
    ...                       jax.ShapeDtypeStruct((2, 16), jnp.float32))
    {'out': (0, 1), 'query': (0,)}

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020
  """
  if unknown not in ('error', 'default'):
    raise ValueError(
        f"unknown must be 'error' or 'default', got {unknown!r}.")
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

  closed = jax.make_jaxpr(forward)(
      params, [leaf for leaf, is_traced in zip(input_leaves, traced)
               if is_traced])
  jaxpr = closed.jaxpr
  tracer = _Tracer()
  in_views = [
      _View(index, tuple(frozenset([axis]) for axis in range(len(shape))))
      for index, shape in enumerate(shapes)]
  in_views += [None] * (len(jaxpr.invars) - len(shapes))
  tracer.record_unread(tracer.run(jaxpr, in_views), 'returned by fn')

  axes, problems = [], []
  for index, (path, shape) in enumerate(zip(paths, shapes)):
    fan_in, problem = _resolve(shape, tracer.uses.get(index, []))
    if problem is not None and len(shape) >= 2:
      problems.append(f'  {path} (shape {shape}): {problem}')
    axes.append(fan_in)
  if problems and unknown == 'error':
    raise ValueError(
        'derive_vector_axes cannot read the fan-in of these leaves:\n'
        + '\n'.join(problems) + "\nPass unknown='default' to give them None "
        '(the default layout) and derive the rest, and keep them out of '
        "LaPerm's mask; or give their layout by hand.")
  return jax.tree_util.tree_unflatten(treedef, axes)
