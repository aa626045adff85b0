"""Lookahead Permutation (LaPerm): train by reconnecting the initial weights."""

from collections.abc import Callable
import inspect
from typing import Any, Optional, Union
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.tree_utils import _state_utils

from laperm_jax import _masks
from laperm_jax import _state
from laperm_jax import _weight_vectors
from laperm_jax._state import FromInitialParams
from laperm_jax._state import InitialParams
from laperm_jax._state import LaPermState

SyncPeriod = Union[int, Callable[[jax.Array], jax.typing.ArrayLike]]
# The settings field of the state made for `optax.tree.map_params`.
_NOT_PARAMS = object()


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
  ``lp.derive_vector_axes`` finds the layout from the model's forward pass,
  and marks ``lp.NO_FAN_IN`` the leaves that have no fan-in (embeddings,
  biases): ``laperm(inner, k, vector_axes=layout)`` then permutes exactly
  the leaves that have one. Equal values are ranked by position (a stable
  sort), so syncs are deterministic for pruned or shared-value weights too.

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

  Frozen leaves: a permuted leaf in which every weight vector holds one
  value (a zero-initialized head, a constant kernel) cannot change under
  LaPerm: every sync gives it back as it was. ``init`` (outside jit) warns,
  naming every such leaf, rather than raising: the syncs stay exact and the
  input is valid (a weight-agnostic leaf with ``keep=1`` is one), but it is
  almost always a mistake. Leave the leaf out of ``mask`` (it then follows
  ``inner``), or initialize it randomly.

  Memory: the state holds the inner optimizer's state, two int32 counters
  and one sorted copy of the permuted leaves (and of the ``reset_mask``
  leaves). With ``initial_params``, a function that regenerates the initial
  params (the initial weights are deterministic on one platform), it holds
  no copy: each sync calls it, inside the sync branch only, and sorts what
  it returns (the regenerated values are temporaries of the sync, not
  state). Non-sync steps do not call it.

  Settings: the state carries ``vector_axes`` and ``initial_params``
  (``state.settings``) as static data, part of its tree structure rather
  than leaves: they are static under ``jit``, hold no memory, and survive
  ``optax.chain``, ``optax.inject_hyperparams``, ``optax.MultiSteps`` and
  ``optax.tree.map_params``. :func:`synchronize`,
  :func:`laperm_jax.export_permutations` and the analyses read them from
  the state. Two consequences of static data: a checkpoint holds only the
  arrays, so a state restored by orbax (or Flax's serialization) takes its
  settings from the target tree it is restored into (build the target with
  the same ``laperm``); and ``jax.tree`` functions over several states
  require equal settings (the same layout, the same function object).

  Args:
    inner: The optimizer that proposes the moves (Adam in the paper).
    sync_period: Steps between syncs (the paper's ``k``): an int >= 1, or a
      schedule mapping the update count to a period, evaluated inside jit. A
      sync happens when the steps since the last sync reach the period; a
      schedule value below 1 therefore syncs at every step.
    mask: Which leaves are permuted: a tree of bools with the structure of
      the params (or a prefix of it), or a callable returning one, as
      ``optax.masked`` takes. Default: leaves with ``ndim >= 2`` (kernels)
      whose layout is not ``NO_FAN_IN``; biases and normalization scales
      follow ``inner`` alone. A mask that selects a leaf whose layout is
      ``NO_FAN_IN`` raises, naming the leaf.
    reset_mask: Leaves set back to their initial values at every sync (the
      paper's gamma-beta reset of BatchNorm, Appendix A.5.6), in the same
      form as ``mask``; must not overlap it. Default: none.
    reset_inner_state: Whether to re-initialize the inner optimizer's state
      at every sync.
    vector_axes: Which axes of each permuted leaf form one weight vector
      (its fan-in axes; the other axes index the vectors): a tree with the
      structure of the params (or a prefix of it) whose leaves are tuples
      of ints (negative allowed), None or ``lp.NO_FAN_IN``, or a callable
      ``(key_path, leaf) -> tuple, None or NO_FAN_IN`` called per leaf
      (also inside jit, where ``leaf`` is traced: use its shape). None, at
      the root or at a leaf: all axes but the last. ``NO_FAN_IN``: the leaf
      has no weight vector and is not permuted. The state carries it.
    initial_params: A function of no arguments, traceable by ``jax.jit``,
      returning the initial params (e.g. ``lambda: model.init(key,
      x)['params']``, or the pruned or shared-value params made from a key):
      the state then holds no copy of the initial weights, and every sync
      regenerates and sorts them. ``init`` checks that its result has the
      structure, shapes and dtypes of ``params`` and, outside jit, that it
      equals the ``params`` given to ``init`` bit for bit at every permuted
      and reset leaf (else the syncs would place other values than the
      initial ones); the result inside the jitted step must be the same bits,
      as ``jax.random`` gives on one platform. The state carries it.

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
    >>> state.settings.initial_params is initial
    True
    >>> for _ in range(2):
    ...   grads = jax.grad(loss)(params)
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> exact = lp.synchronize(params, state)  # The state carries `initial`.
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
    return _init_state(params, inner, mask, reset_mask, vector_axes,
                       initial_params)

  # A sync as one optax update. The paper's step is two moves: the inner
  # step `p' = p + u`, then `p'' = permute(sorted_init, rank order of p')`.
  # Merged, the update is `p'' - p`, computed only on sync steps. Keeping the
  # pass-through as the false branch (branch 0) lets XLA forward its buffers
  # without copies (openxla/xla#46314).
  def keep(operands):
    inner_updates, inner_state, *_ = operands
    return inner_updates, inner_state

  def sync(operands):
    sync_updates = _sync_updates(vector_axes, initial_params, *operands)
    inner_state = operands[1]
    if reset_inner_state:
      params = operands[2]
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
    new_updates, inner_state = jax.lax.cond(
        sync_now, sync, keep,
        (inner_updates, inner_state, params, state.sorted_init,
         state.reset_values))
    return new_updates, state._replace(
        count=optax.safe_increment(state.count),
        steps_since_sync=jnp.where(
            sync_now, 0, state.steps_since_sync + 1).astype(jnp.int32),
        inner_state=inner_state)

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

  The layout and the regenerating function come from the state, which
  carries those :func:`laperm` was given: nothing needs repeating.

  Args:
    params: The current params. Leaves are matched with the state's by
      name, so params boxed otherwise than the state's (Flax's
      ``nn.Partitioned`` or ``nn.LogicallyPartitioned``, NNX variables)
      match; the result has the structure of ``params``.
    opt_state: An optimizer state holding a :class:`LaPermState` anywhere
      inside it (``optax.chain``, ``optax.inject_hyperparams``,
      ``optax.MultiSteps``, ...). If it holds several, each is applied in
      turn.
    vector_axes: Optional, and checked only: a layout in any form
      :func:`laperm` takes must give every permuted leaf the fan-in axes
      the state was built with, else a ``ValueError`` names the first leaf
      that differs (while tracing, so inside ``jit`` too).
    initial_params: Optional, and checked only: must be the function the
      state was built with (the same object), else a ``ValueError``, inside
      ``jit`` too. It is used only for a state that carries no function.

  Returns:
    The synchronized params, with the structure and dtypes of ``params``.

  Raises:
    ValueError: ``opt_state`` holds no LaPerm state; ``params`` do not
      match it (the message names the first leaf that differs); a repeated
      ``vector_axes`` or ``initial_params`` contradicts the state; outside
      jit, the state's sorted initial values are not sorted under its
      layout (a state restored into a target built with another layout).

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
  where = 'synchronize'
  for state in _state.states_in(where, opt_state):
    held, treedef = _state.held_leaves(where, params, state.sorted_init,
                                       state.reset_values)
    layouts = _state.layouts(where, state, params, held, vector_axes)
    function = _state.initial_params(where, state, params, initial_params)
    held = _state.regenerate(where, held, layouts, params, function)
    params = treedef.unflatten([
        sync_leaf(leaf, axes) for leaf, axes in zip(held, layouts)])
  return params


def sync_leaf(leaf: _state.HeldLeaf, axes: Optional[tuple[int, ...]]
              ) -> jax.Array:
  """The value a sync gives ``leaf.param``, whose fan-in axes are ``axes``."""
  if not _state.is_masked(leaf.sorted_values):
    return _weight_vectors.map_vectors(
        lambda _, rows, sorted_rows: _place_rows_or_nan(rows, sorted_rows),
        leaf.sorted_values, leaf.param, leaf.sorted_values, vector_axes=axes)
  if not _state.is_masked(leaf.reset_value):
    return leaf.reset_value
  return leaf.param


def _init_state(params, inner, mask, reset_mask, vector_axes,
                initial_params) -> LaPermState:
  """The initial :class:`LaPermState` of ``laperm``."""
  # Two distinct buffers: a state donated to jit must not alias itself.
  count, steps_since_sync = jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32)
  if isinstance(params, _state_utils._ParamsPlaceholder):  # pylint: disable=protected-access
    # `optax.tree.map_params` calls init with a placeholder to find which
    # fields of the state mirror the params (optax has no public name for
    # it; `optax.masked` tests for it the same way). The settings field is
    # a leaf there, which matches any settings and does not mirror the
    # params: `transform_non_params` applies to it, as to the counters.
    return LaPermState(count, steps_since_sync, params, params,
                       inner.init(params), _NOT_PARAMS)
  permuted = _weight_vectors.selected_with_fan_in('laperm', mask, vector_axes,
                                                  params)
  reset = _masks.selected_leaves(reset_mask, params, 'laperm: reset_mask',
                                 default_kernels=False)
  _check_leaves(params, permuted, reset)
  layouts = _weight_vectors.checked_layouts('laperm', vector_axes, params,
                                            permuted)
  _warn_frozen(params, layouts)
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
  settings = _state.make_settings(jax.tree.structure(params), tuple(layouts),
                                  initial_params)
  return LaPermState(count, steps_since_sync, sorted_init, reset_values,
                     inner.init(params), settings)


def _sync_updates(vector_axes, initial_params, inner_updates, inner_state,
                  params, sorted_init, reset_values):
  """The updates of a sync step: every leaf moved where a sync puts it."""
  del inner_state  # Kept or reset by the caller.
  held, _ = _state.held_leaves('laperm', params, sorted_init, reset_values)
  # The layout is static: resolved while tracing, from the params' paths
  # and shapes.
  layouts = _weight_vectors.checked_layouts(
      'laperm', vector_axes, params,
      [not _state.is_masked(leaf.sorted_values) for leaf in held])
  # Regenerated here, in the sync branch, so non-sync steps never pay it,
  # and sorted chunk by chunk in the sync: no sorted copy of a whole leaf.
  sort_rows = [isinstance(leaf.sorted_values, FromInitialParams)
               for leaf in held]
  held = _state.regenerate('laperm', held, layouts, params, initial_params,
                           sort=False)
  update_leaves, treedef = jax.tree.flatten(inner_updates,
                                            is_leaf=_state.is_masked)
  return treedef.unflatten([
      _sync_update(leaf, update, axes, sort)
      for leaf, update, axes, sort in zip(held, update_leaves, layouts,
                                          sort_rows)])


def _sync_update(leaf, update, axes, sort_rows=False):
  """The update that moves ``leaf.param`` where a sync puts it plus ``update``.

  With ``sort_rows``, ``leaf.sorted_values`` are the initial values
  unsorted, and each chunk of weight vectors is sorted where it is placed.
  """
  param, sorted_values, reset_value = (leaf.param, leaf.sorted_values,
                                       leaf.reset_value)
  if _state.is_masked(sorted_values) and _state.is_masked(reset_value):
    return update
  if _state.is_masked(sorted_values):
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


def _select(fn, params, selection, *per_leaf):
  """``fn(leaf, *per_leaf values)`` at selected leaves, else MaskedNode."""
  leaves, treedef = jax.tree.flatten(params)
  return treedef.unflatten([
      fn(leaf, *values) if selected else optax.MaskedNode()
      for leaf, selected, *values in zip(leaves, selection, *per_leaf)])


def _check_initial_params(initial_params, params, permuted, reset) -> None:
  """Raises unless ``initial_params()`` regenerates the selected leaves.

  Shapes and dtypes are always checked; values only outside jit, bit for
  bit: a function that regenerates other values (another key, another
  pruning) would silently train a permutation of other weights.
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  selected = [(_state.leaf_name(path), leaf)
              for (path, leaf), is_permuted, is_reset
              in zip(flat, permuted, reset) if is_permuted or is_reset]
  if any(isinstance(leaf, jax.core.Tracer) for _, leaf in selected):
    _state.check_initial_shapes('laperm', initial_params, params)
    return
  initial = _state.initial_leaves('laperm', initial_params, params)
  for name, leaf in selected:
    if not _state.same_bits(initial[name], leaf):
      raise ValueError(
          f'laperm: initial_params() regenerates leaf {name} with other values '
          'than the params given to init: it must return the initial params '
          'bit for bit (same key, init function, pruning and dtype).')


def _warn_frozen(params, layouts) -> None:
  """Warns, naming them, of permuted leaves LaPerm can never change."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  checked = [(_state.leaf_name(path), leaf, axes)
             for (path, leaf), axes in zip(flat, layouts)
             if axes is not None and not isinstance(leaf, jax.core.Tracer)]
  constant = _weight_vectors.vectors_hold(
      'one value', [leaf for _, leaf, _ in checked],
      tuple(axes for _, _, axes in checked))
  frozen = [name for (name, _, _), is_constant in zip(checked, constant)
            if is_constant]
  if frozen:
    warnings.warn(
        f'laperm: in the permuted leaves {frozen}, every weight vector holds '
        'one value (e.g. a zero-initialized head): a sync gives them back '
        'unchanged, so LaPerm never trains them. Leave them out of mask (to '
        'train them with the inner optimizer alone) or initialize them '
        'randomly.', UserWarning, stacklevel=3)


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
    name = _state.leaf_name(path)
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
