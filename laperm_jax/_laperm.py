"""Lookahead Permutation (LaPerm): train by reconnecting the initial weights."""

from collections.abc import Callable
import inspect
from typing import Any, NamedTuple, Optional, Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax
from optax.tree_utils import _state_utils

from laperm_jax import _masks
from laperm_jax import _weight_vectors

SyncPeriod = Union[int, Callable[[jax.Array], jax.typing.ArrayLike]]
InitialParams = Callable[[], optax.Params]


class FromInitialParams(NamedTuple):
  """Marks a leaf of a :class:`LaPermState` that ``initial_params`` regenerates.

  :func:`laperm` built with ``initial_params`` puts it where the state would
  otherwise hold a leaf's sorted initial values or reset values. Like
  ``optax.MaskedNode`` it is a pytree node without leaves: it holds no
  memory, and the state stays made of arrays only.
  """


class LaPermState(NamedTuple):
  """State of the `GradientTransformation` returned by :func:`laperm`.

  Attributes:
    count: Number of updates made so far; the step a ``sync_period`` schedule
      is evaluated at.
    steps_since_sync: Number of updates since the last synchronization.
    sorted_init: The params tree with every permuted leaf holding its initial
      weight vectors sorted ascending (in the leaf's shape and dtype), or
      :class:`FromInitialParams` when :func:`laperm` was given
      ``initial_params``, and ``optax.MaskedNode()`` at every other leaf.
    reset_values: The params tree with every leaf of ``reset_mask`` holding
      its initial values (or :class:`FromInitialParams`, as above), and
      ``optax.MaskedNode()`` at every other leaf.
    inner_state: State of the inner optimizer.
  """

  count: jax.Array
  steps_since_sync: jax.Array
  sorted_init: optax.Params
  reset_values: optax.Params
  inner_state: optax.OptState


def laperm(
    inner: optax.GradientTransformation,
    sync_period: SyncPeriod,
    *,
    mask: Optional[_masks.Mask] = None,
    reset_mask: Optional[_masks.Mask] = None,
    reset_inner_state: bool = False,
    vector_axes: _weight_vectors.VectorAxes = None,
    initial_params: Optional[InitialParams] = None,
) -> optax.GradientTransformationExtraArgs:
  """Lookahead Permutation: the inner optimizer only chooses where weights go.

  ``init`` keeps every weight vector of the permuted leaves sorted ascending.
  ``update`` runs ``inner`` as usual; every ``sync_period`` steps it instead
  returns the updates that move each permuted weight vector to its sorted
  initial values placed in the rank order of ``params + inner_updates``: the
  smallest current weight receives the smallest initial value, and so on.
  Between syncs the weights move freely; at each sync they become again a
  permutation of the initial ones. The inner optimizer's state is kept
  across syncs (as in the paper) unless ``reset_inner_state``.

  A *weight vector* is every weight feeding one output unit (its fan-in).
  By default it is everything but the last axis of a leaf, flattened (a
  Dense kernel's column, a Conv kernel's whole filter; a 1-D leaf is one
  vector). That is not the fan-in of every kernel: Flax attention's query,
  key and value kernels ``(features, num_heads, head_dim)`` need
  ``vector_axes=(0,)``, and ``DenseGeneral`` with several output axes its
  input axes, or a sync moves weights between output units (between heads).
  ``lp.derive_vector_axes`` finds the layout from the model's forward pass.
  Equal values are ranked by position (a stable sort), so syncs are
  deterministic for pruned or shared-value weights too.

  Exactness: a sync is an optax update ``t - p``, and ``p + (t - p)`` rounds,
  so after ``optax.apply_updates`` the weights are within the rounding of one
  addition of the exact permutation (the error does not accumulate: each
  sync starts again from the sorted initial values in the state). Call
  :func:`synchronize` for bit-exact permuted weights, e.g. to evaluate
  right after a sync or to export.

  Non-finite values: a weight vector that holds a NaN or an infinity after
  the inner step has no rank order, so a sync turns the whole vector into
  NaN rather than into finite initial values. ``optax.apply_if_finite``
  around this transformation then skips that step. ``init`` rejects
  non-finite initial values (when called outside jit, where it can see
  them).

  Memory: the state holds the inner optimizer's state, two int32 counters
  and one sorted copy of the permuted leaves (and of the ``reset_mask``
  leaves). With ``initial_params``, a function that regenerates the initial
  params (the initial weights are deterministic on one platform), it holds
  no copy: each sync calls it, inside the sync branch only, and sorts what
  it returns (the regenerated values are temporaries of the sync, not
  state). Non-sync steps do not call it.

  Args:
    inner: The optimizer that proposes the moves (Adam in the paper).
    sync_period: Steps between syncs (the paper's ``k``): an int >= 1, or a
      schedule mapping the update count to a period, evaluated inside jit. A
      sync happens when the steps since the last sync reach the period; a
      schedule value below 1 therefore syncs at every step.
    mask: Which leaves are permuted: a tree of bools with the structure of
      the params (or a prefix of it), or a callable returning one, as
      ``optax.masked`` takes. Default: leaves with ``ndim >= 2`` (kernels);
      biases and normalization scales follow ``inner`` alone.
    reset_mask: Leaves set back to their initial values at every sync (the
      paper's gamma-beta reset of BatchNorm, Appendix A.5.6), in the same
      form as ``mask``; must not overlap it. Default: none.
    reset_inner_state: Whether to re-initialize the inner optimizer's state
      at every sync.
    vector_axes: Which axes of each permuted leaf form one weight vector
      (its fan-in axes; the other axes index the vectors): a tree of tuples
      of ints (negative allowed) or None with the structure of the params
      (or a prefix of it), or a callable ``(key_path, leaf) -> tuple or
      None`` called per leaf (also inside jit, where ``leaf`` is traced: use
      its shape). None, at the root or at a leaf: all axes but the last.
      The state does not record it: pass the same ``vector_axes`` to
      :func:`synchronize` and :func:`laperm_jax.export_permutations`.
    initial_params: A function of no arguments, traceable by ``jax.jit``,
      returning the initial params (e.g. ``lambda: model.init(key,
      x)['params']``, or the pruned or shared-value params made from a key):
      the state then holds no copy of the initial weights, and every sync
      regenerates and sorts them. ``init`` checks that its result has the
      structure, shapes and dtypes of ``params`` and, outside jit, that it
      equals the ``params`` given to ``init`` bit for bit at every permuted
      and reset leaf (else the syncs would place other values than the
      initial ones); the result inside the jitted step must be the same bits,
      as ``jax.random`` gives on one platform. Pass the same function to
      :func:`synchronize` and :func:`laperm_jax.export_permutations`.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`; extra keyword
    arguments of ``update`` go to ``inner``. ``update`` needs ``params``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import laperm_jax as lp
    >>> params = {'w': jax.random.normal(jax.random.key(0), (3, 2))}
    >>> tx = lp.laperm(optax.adam(1e-1), sync_period=2)
    >>> state = tx.init(params)
    >>> loss = lambda p: jnp.sum((p['w'] - 1.0) ** 2)
    >>> for _ in range(2):
    ...   grads = jax.grad(loss)(params)
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> exact = lp.synchronize(params, state)
    >>> bool(jnp.all(jnp.sort(exact['w'], axis=0) == state.sorted_init['w']))
    True

    Without the copy of the initial weights in the state:

    >>> initial = lambda: {'w': jax.random.normal(jax.random.key(0), (3, 2))}
    >>> params = initial()
    >>> tx = lp.laperm(optax.adam(1e-1), 2, initial_params=initial)
    >>> state = tx.init(params)
    >>> state.sorted_init
    {'w': FromInitialParams()}
    >>> for _ in range(2):
    ...   grads = jax.grad(loss)(params)
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> exact = lp.synchronize(params, state, initial_params=initial)
    >>> bool(jnp.all(jnp.sort(exact['w'], axis=0) == jnp.sort(initial()['w'],
    ...                                                        axis=0)))
    True

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020
  """
  if not callable(sync_period):
    _check_sync_period(sync_period)
  if initial_params is not None:
    _check_no_arguments(initial_params)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params: optax.Params) -> LaPermState:
    # Two distinct buffers: a state donated to jit must not alias itself.
    count, steps_since_sync = jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32)
    if isinstance(params, _state_utils._ParamsPlaceholder):  # pylint: disable=protected-access
      # `optax.tree.map_params` calls init with a placeholder to find which
      # fields of the state mirror the params.
      return LaPermState(count, steps_since_sync, params, params,
                         inner.init(params))
    permuted = _masks.selected_leaves(mask, params, 'laperm: mask')
    reset = _masks.selected_leaves(reset_mask, params, 'laperm: reset_mask',
                                   default_kernels=False)
    _check_leaves(params, permuted, reset)
    layouts = _weight_vectors.checked_layouts('laperm', vector_axes, params,
                                              permuted)
    if initial_params is None:
      sorted_init = _select(
          lambda leaf, axes: _weight_vectors.sort_vectors(leaf,
                                                          vector_axes=axes),
          params, permuted, layouts)
      reset_values = _select(lambda leaf: leaf, params, reset)
    else:
      _check_initial_params(initial_params, params, permuted, reset)
      sorted_init = _select(lambda _: FromInitialParams(), params, permuted)
      reset_values = _select(lambda _: FromInitialParams(), params, reset)
    return LaPermState(
        count=count,
        steps_since_sync=steps_since_sync,
        sorted_init=sorted_init,
        reset_values=reset_values,
        inner_state=inner.init(params),
    )

  # A sync as one optax update. The paper's step is two moves: the inner
  # step `p' = p + u`, then `p'' = permute(sorted_init, rank order of p')`.
  # Merged, the update is `p'' - p`, computed only on sync steps. Keeping the
  # pass-through as the false branch (branch 0) lets XLA forward its buffers
  # without copies (openxla/xla#46314).
  def keep(operands):
    inner_updates, inner_state, *_ = operands
    return inner_updates, inner_state

  def sync(operands):
    inner_updates, inner_state, params, sorted_init, reset_values = operands
    held, _ = _zip_leaves(params, sorted_init, reset_values)
    # The layout is static: resolved while tracing, from the params' paths
    # and shapes.
    layouts = _weight_vectors.checked_layouts(
        'laperm', vector_axes, params,
        [not _is_masked(sorted_values) for _, sorted_values, _ in held])
    # Regenerated here, in the sync branch, so non-sync steps never pay it,
    # and sorted chunk by chunk in the sync: no sorted copy of a whole leaf.
    sort_rows = [isinstance(sorted_values, FromInitialParams)
                 for _, sorted_values, _ in held]
    held = _regenerate('laperm', held, layouts, params, initial_params,
                       sort=False)
    update_leaves, treedef = jax.tree.flatten(inner_updates, is_leaf=_is_masked)
    sync_updates = treedef.unflatten([
        _sync_update(*leaf, update, axes, sort)
        for leaf, update, axes, sort in zip(held, update_leaves, layouts,
                                            sort_rows)])
    if reset_inner_state:
      inner_state = inner.init(optax.apply_updates(params, sync_updates))
    return sync_updates, inner_state

  def update_fn(
      updates: optax.Updates,
      state: LaPermState,
      params: Optional[optax.Params] = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, LaPermState]:
    if params is None:
      raise ValueError(
          'laperm needs the current params: call update(grads, state, params).')
    inner_updates, inner_state = inner.update(
        updates, state.inner_state, params, **extra_args)
    period = sync_period(state.count) if callable(sync_period) else sync_period
    sync_now = state.steps_since_sync + 1 >= period

    # Whole trees go in as operands, not closures, so that eager calls reuse
    # the traced branches instead of tracing and compiling them anew.
    new_updates, inner_state = lax.cond(
        sync_now, sync, keep,
        (inner_updates, inner_state, params, state.sorted_init,
         state.reset_values))
    new_state = LaPermState(
        count=optax.safe_increment(state.count),
        steps_since_sync=jnp.where(
            sync_now, 0, state.steps_since_sync + 1).astype(jnp.int32),
        sorted_init=state.sorted_init,
        reset_values=state.reset_values,
        inner_state=inner_state,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def synchronize(
    params: optax.Params,
    opt_state: optax.OptState,
    *,
    vector_axes: _weight_vectors.VectorAxes = None,
    initial_params: Optional[InitialParams] = None,
) -> optax.Params:
  """Returns ``params`` synchronized exactly, as a LaPerm sync would set them.

  Every permuted leaf becomes its sorted initial values placed in the rank
  order of ``params``, per weight vector, bit for bit (a sync made through
  ``optax.apply_updates`` is only within rounding of this); leaves of
  ``reset_mask`` become their initial values; all other leaves are returned
  as they are. Use it to evaluate "right after a sync", to export, or to
  analyze the learned permutation. Weight vectors holding a non-finite value
  become all NaN, as in a sync.

  Args:
    params: The current params.
    opt_state: An optimizer state holding a :class:`LaPermState` anywhere
      inside it (``optax.chain``, ``optax.inject_hyperparams``,
      ``optax.MultiSteps``, ...). If it holds several, each is applied in
      turn.
    vector_axes: The layout :func:`laperm` was given (the state holds only
      arrays, not the layout), in the same form. A different layout gives
      other weights; outside jit, a layout under which the state's sorted
      initial values are not sorted (e.g. the default for a state built with
      ``vector_axes=(0,)`` on attention kernels) raises a ``ValueError``. A
      layout whose weight vectors are parts of the state's (a subset of its
      fan-in axes) cannot be told apart that way, nor any layout for a state
      that holds no sorted values (built with ``initial_params``).
    initial_params: The function :func:`laperm` was given as
      ``initial_params``; needed (and only called) when the state holds no
      copy of the initial weights.

  Returns:
    The synchronized params, with the structure and dtypes of ``params``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import laperm_jax as lp
    >>> params = {'w': jnp.array([[1.0], [2.0], [3.0]])}
    >>> tx = optax.chain(optax.clip(1.0), lp.laperm(optax.sgd(1.0), 10))
    >>> state = tx.init(params)
    >>> moved = {'w': jnp.array([[0.5], [-7.0], [9.0]])}
    >>> lp.synchronize(moved, state)['w'].ravel()
    Array([2., 1., 3.], dtype=float32)

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020
  """
  states = [
      leaf for leaf in jax.tree.leaves(
          opt_state, is_leaf=lambda x: isinstance(x, LaPermState))
      if isinstance(leaf, LaPermState)
  ]
  if not states:
    raise ValueError(
        'synchronize: opt_state holds no LaPermState; pass the state of an '
        'optimizer built with laperm_jax.laperm.')
  for state in states:
    held, treedef = _zip_leaves(params, state.sorted_init, state.reset_values)
    layouts = _state_layouts('synchronize', vector_axes, params, held)
    held = _regenerate('synchronize', held, layouts, params, initial_params)
    params = treedef.unflatten([
        _sync_leaf(*leaf, axes) for leaf, axes in zip(held, layouts)])
  return params


def _zip_leaves(params, sorted_init, reset_values):
  """Pairs each leaf of ``params`` with what the LaPerm state holds for it.

  Leaves are matched by key path, so params wrapped differently from the
  state (Flax NNX ``Param`` variables against the optimizer's own) match.

  Returns:
    A list of ``(param, sorted_values, reset_value)`` and the treedef of
    ``params``.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(params,
                                                       is_leaf=_is_masked)
  held_flat = jax.tree_util.tree_flatten_with_path(sorted_init,
                                                   is_leaf=_is_placeholder)[0]
  reset_leaves = jax.tree.leaves(reset_values, is_leaf=_is_placeholder)
  paths = [jax.tree_util.keystr(path) for path, _ in flat]
  held_paths = [jax.tree_util.keystr(path) for path, _ in held_flat]
  if paths != held_paths:
    raise ValueError(
        f'params with leaves {paths} do not match the structure of the params '
        f'the LaPerm state was initialized with, {held_paths}.')
  sorted_leaves = [held for _, held in held_flat]
  for name, (_, param), held in zip(paths, flat, sorted_leaves):
    if not _is_placeholder(held) and jnp.shape(param) != held.shape:
      raise ValueError(
          f'leaf {name} has shape {jnp.shape(param)} but the LaPerm state '
          f'holds {held.shape} for it: params do not match the structure of '
          'the params the state was initialized with.')
  leaves = [(param, held, reset) for (_, param), held, reset in zip(
      flat, sorted_leaves, reset_leaves)]
  return leaves, treedef


def _state_layouts(where, vector_axes, params, held):
  """`checked_layouts` of the leaves ``held`` permutes, checked against it.

  The state does not record the layout, but its sorted initial values are
  sorted along the layout they were made with: outside jit, a layout under
  which they are not sorted is a mismatch, and raises.
  """
  permuted = [not _is_masked(sorted_values) for _, sorted_values, _ in held]
  layouts = _weight_vectors.checked_layouts(where, vector_axes, params,
                                            permuted)
  names = _paths(params)
  checked = [(name, sorted_values, axes)
             for name, (_, sorted_values, _), axes in zip(names, held, layouts)
             if axes is not None and not isinstance(
                 sorted_values, (jax.core.Tracer, FromInitialParams))]
  is_sorted = _weight_vectors.vectors_are_sorted(
      [sorted_values for _, sorted_values, _ in checked],
      tuple(axes for _, _, axes in checked))
  for (name, _, axes), leaf_sorted in zip(checked, is_sorted):
    if not leaf_sorted:
      raise ValueError(
          f'{where}: the LaPerm state holds sorted initial values for leaf '
          f'{name} that are not sorted along its weight vectors under '
          f'vector_axes {axes}: pass the vector_axes laperm was built with.')
  return layouts


def _regenerate(where, held, layouts, params, initial_params, *, sort=True):
  """``held`` with every :class:`FromInitialParams` replaced by its values.

  Sorted values are ``initial_params()``'s leaf sorted under its layout
  (left unsorted unless ``sort``); reset values are the leaf itself.
  """
  if not any(isinstance(value, FromInitialParams)
             for _, sorted_values, reset_value in held
             for value in (sorted_values, reset_value)):
    return held
  if initial_params is None:
    raise ValueError(
        f'{where}: the LaPerm state holds no copy of the initial weights '
        '(laperm was built with initial_params): pass the same function as '
        'initial_params.')
  initial = _initial_leaves(where, initial_params, params)

  def resolve(name, value, axes, sort_values):
    if not isinstance(value, FromInitialParams):
      return value
    if sort_values:
      return _weight_vectors.sort_vectors(initial[name], vector_axes=axes)
    return initial[name]

  names = _paths(params)
  return [(param, resolve(name, sorted_values, axes, sort_values=sort),
           resolve(name, reset_value, axes, sort_values=False))
          for name, (param, sorted_values, reset_value), axes
          in zip(names, held, layouts)]


def _initial_leaves(where, initial_params, params) -> dict[str, jax.Array]:
  """``initial_params()``'s leaves by path, checked to have ``params``' shapes.

  Called through ``jax.jit`` so that every call, eager or inside a train
  step, runs the same computation.
  """
  _check_initial_shapes(where, initial_params, params)
  values = jax.jit(initial_params)()
  return {jax.tree_util.keystr(path): leaf for path, leaf in
          jax.tree_util.tree_flatten_with_path(values)[0]}


def _check_initial_shapes(where, initial_params, params) -> None:
  """Raises unless ``initial_params()`` has ``params``' leaves, shapes, dtypes."""
  shapes = jax.eval_shape(initial_params)
  expected = {jax.tree_util.keystr(path): leaf for path, leaf in
              jax.tree_util.tree_flatten_with_path(params,
                                                   is_leaf=_is_masked)[0]}
  found = {jax.tree_util.keystr(path): leaf for path, leaf in
           jax.tree_util.tree_flatten_with_path(shapes)[0]}
  if list(found) != list(expected):
    missing = [name for name in expected if name not in found]
    extra = [name for name in found if name not in expected]
    raise ValueError(
        f'{where}: initial_params() returns a tree whose leaves do not match '
        f'the params: leaves of the params it lacks: {missing}; leaves it '
        f'has that the params do not: {extra}' +
        ('' if missing or extra else '; the same leaves in another order') +
        '.')
  for name, leaf in expected.items():
    if _is_masked(leaf):
      continue
    shape, dtype = tuple(jnp.shape(leaf)), jnp.result_type(leaf)
    if (found[name].shape, found[name].dtype) != (shape, dtype):
      raise ValueError(
          f'{where}: initial_params() returns leaf {name} as '
          f'{found[name].dtype}{list(found[name].shape)}, but the params '
          f'hold {dtype}{list(shape)}.')


def _check_initial_params(initial_params, params, permuted, reset) -> None:
  """Raises unless ``initial_params()`` regenerates the selected leaves.

  Shapes and dtypes are always checked; values only outside jit, bit for
  bit: a function that regenerates other values (another key, another
  pruning) would silently train a permutation of other weights.
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  selected = [(jax.tree_util.keystr(path), leaf)
              for (path, leaf), is_permuted, is_reset
              in zip(flat, permuted, reset) if is_permuted or is_reset]
  if any(isinstance(leaf, jax.core.Tracer) for _, leaf in selected):
    _check_initial_shapes('laperm', initial_params, params)
    return
  initial = _initial_leaves('laperm', initial_params, params)
  for name, leaf in selected:
    if not _same_bits(initial[name], leaf):
      raise ValueError(
          f'laperm: initial_params() regenerates leaf {name} with other values '
          'than the params given to init: it must return the initial params '
          'bit for bit (same key, init function, pruning and dtype).')


def _same_bits(a: jax.Array, b: jax.Array) -> bool:
  """Whether ``a`` and ``b`` hold the same bits (NaN == NaN, -0.0 != 0.0)."""
  bits = jnp.dtype(f'uint{jnp.dtype(jnp.result_type(a)).itemsize * 8}')
  return bool(jnp.array_equal(lax.bitcast_convert_type(a, bits),
                              lax.bitcast_convert_type(b, bits)))


def _paths(params) -> list[str]:
  return [jax.tree_util.keystr(path) for path, _ in
          jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_masked)[0]]


def _sync_leaf(leaf, sorted_values, reset_value, axes):
  """The value a sync gives ``leaf``, whose fan-in axes are ``axes``."""
  if not _is_masked(sorted_values):
    return _weight_vectors.map_vectors(
        lambda _, rows, sorted_rows: _place_rows_or_nan(rows, sorted_rows),
        sorted_values, leaf, sorted_values, vector_axes=axes)
  if not _is_masked(reset_value):
    return reset_value
  return leaf


def _sync_update(param, sorted_values, reset_value, update, axes,
                 sort_rows=False):
  """The update that moves ``param`` where a sync puts ``param + update``.

  With ``sort_rows``, ``sorted_values`` are the initial values unsorted, and
  each chunk of weight vectors is sorted where it is placed.
  """
  if _is_masked(sorted_values) and _is_masked(reset_value):
    return update
  if _is_masked(sorted_values):
    return (reset_value - param).astype(update.dtype)

  # Row by row (in chunks on CPU), the update is computed into the buffer of
  # the inner update, so the sync branch needs no leaf-sized temporaries.
  def sync_rows(update_rows, param_rows, sorted_rows):
    if sort_rows:
      sorted_rows = jnp.sort(sorted_rows, axis=1)
    target = optax.apply_updates(param_rows, update_rows)
    new = _place_rows_or_nan(target, sorted_rows)
    return (new - param_rows).astype(update_rows.dtype)

  return _weight_vectors.map_vectors(sync_rows, update, param, sorted_values,
                                     vector_axes=axes)


def _place_rows_or_nan(rows: jax.Array, sorted_rows: jax.Array) -> jax.Array:
  """`place_rows`, with vectors holding a non-finite value set to NaN."""
  placed = _weight_vectors.place_rows(rows, sorted_rows)
  finite = jnp.all(jnp.isfinite(rows), axis=1, keepdims=True)
  return jnp.where(finite, placed, jnp.nan).astype(sorted_rows.dtype)


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def _is_placeholder(x: Any) -> bool:
  """A leaf of the state that holds no array: masked, or regenerated."""
  return isinstance(x, (optax.MaskedNode, FromInitialParams))


def _select(fn, params, selection, *per_leaf):
  """``fn(leaf, *per_leaf values)`` at selected leaves, else MaskedNode."""
  leaves, treedef = jax.tree.flatten(params)
  return treedef.unflatten([
      fn(leaf, *values) if selected else optax.MaskedNode()
      for leaf, selected, *values in zip(leaves, selection, *per_leaf)])


def _check_sync_period(sync_period) -> None:
  if isinstance(sync_period, jax.core.Tracer):
    return  # Injected as a hyperparameter; a value below 1 syncs every step.
  if np.ndim(sync_period) != 0:
    raise ValueError(
        f'laperm: sync_period must be a scalar, got shape {np.shape(sync_period)}.')
  if sync_period < 1:
    raise ValueError(f'laperm: sync_period must be >= 1, got {sync_period}.')


def _check_no_arguments(initial_params) -> None:
  if not callable(initial_params):
    raise TypeError(
        'laperm: initial_params must be a function of no arguments returning '
        f'the initial params, got {type(initial_params).__name__}.')
  try:
    inspect.signature(initial_params).bind()
  except TypeError as error:
    raise TypeError(
        'laperm: initial_params must be callable with no arguments (it '
        f'regenerates the initial params by itself): {error}.') from error
  except ValueError:
    pass  # No signature to check (a builtin): the first call will tell.


def _check_leaves(params, permuted, reset) -> None:
  """Raises a ValueError naming the first selected leaf LaPerm cannot take."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, leaf), is_permuted, is_reset in zip(flat, permuted, reset):
    name = jax.tree_util.keystr(path)
    if is_permuted and is_reset:
      raise ValueError(
          f'laperm: leaf {name} is in both mask and reset_mask; a leaf is '
          'either permuted or reset at a sync, not both.')
    if not (is_permuted or is_reset):
      continue
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise ValueError(
          f'laperm: leaf {name} has dtype {jnp.result_type(leaf)}; only '
          'floating-point leaves can be permuted or reset.')
    if is_permuted and jnp.ndim(leaf) == 0:
      raise ValueError(
          f'laperm: leaf {name} is a scalar, which holds no weight vector; '
          'leave it out of mask.')
    # Checked on the device: no host copy of a large kernel.
    if not isinstance(leaf, jax.core.Tracer) and not bool(
        jnp.all(jnp.isfinite(leaf))):
      raise ValueError(
          f'laperm: leaf {name} has non-finite initial values.')
