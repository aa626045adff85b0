"""The LaPerm state: its fields, the settings it carries, and reading it.

:func:`laperm_jax.laperm` keeps its state in a :class:`LaPermState`; every
function that reads one (:func:`laperm_jax.synchronize`, the export, the
analyses) finds it inside an optimizer state, matches its leaves with the
params and reads its settings through this module.

The settings (the layout, resolved per leaf, and the regenerating function
``initial_params``) are static: they live in the *type* of the
:class:`LaPermSettings` node, a NamedTuple without fields. JAX, Flax's
serialization and orbax treat a NamedTuple without fields as a node without
leaves and rebuild it from its type, so the settings travel with the tree
structure: they are static under ``jit``, hold no array, and a state
restored from a checkpoint takes them from the target it is restored into.
"""

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
import optax

from laperm_jax import _weight_vectors

InitialParams = Callable[[], optax.Params]


class FromInitialParams(NamedTuple):
  """Marks a leaf of a :class:`LaPermState` that ``initial_params`` regenerates.

  :func:`laperm` built with ``initial_params`` puts it where the state would
  otherwise hold a leaf's sorted initial values or reset values. Like
  ``optax.MaskedNode`` it is a pytree node without leaves: it holds no
  memory, and the state stays made of arrays only.
  """


class LaPermSettings(NamedTuple):
  """The settings of :func:`laperm_jax.laperm` that its state carries.

  A NamedTuple without fields: the settings are attributes of its type (one
  type per distinct settings, made by ``init``), so they are part of the
  tree structure, not leaves. The layout is recorded resolved, per leaf, so
  equivalent layouts (a prefix tree, a callable, the explicit default) give
  equal settings; two states are the same tree only if their settings are
  equal (the same fan-in axes, the same function object).

  Attributes:
    treedef: The tree structure of the params ``init`` was given (None for
      a state made without settings).
    leaf_axes: Per leaf of those params (flattened order), its sorted fan-in
      axes if permuted, else None.
    initial_params: The function ``laperm`` was given as ``initial_params``,
      or None.
  """

  treedef = None
  leaf_axes = ()
  initial_params = None

  @property
  def vector_axes(self) -> Any:
    """The layout as a params tree: fan-in axes, ``NO_FAN_IN`` elsewhere."""
    if self.treedef is None:
      return None
    return self.treedef.unflatten([
        _weight_vectors.NO_FAN_IN if axes is None else axes
        for axes in self.leaf_axes])

  def __repr__(self) -> str:
    return (f'LaPermSettings(leaf_axes={self.leaf_axes!r}, '
            f'initial_params={self.initial_params!r})')

  def __reduce__(self):
    # Pickling and copying rebuild the node from its settings.
    return make_settings, (self.treedef, self.leaf_axes, self.initial_params)


_SETTINGS_TYPES: dict[Any, type] = {}


def make_settings(treedef: Any, leaf_axes: tuple[Any, ...],
                  initial_params: Optional[InitialParams]) -> LaPermSettings:
  """The :class:`LaPermSettings` node of these settings (one type per value)."""
  key = (treedef, tuple(leaf_axes), initial_params)
  if key not in _SETTINGS_TYPES:
    # staticmethod: a function kept on a class would otherwise bind to the
    # instance when read.
    _SETTINGS_TYPES[key] = type('LaPermSettings', (LaPermSettings,), {
        '__slots__': (), 'treedef': treedef, 'leaf_axes': tuple(leaf_axes),
        'initial_params': staticmethod(initial_params)})
  return _SETTINGS_TYPES[key]()


class LaPermState(NamedTuple):
  """State of the `GradientTransformation` returned by :func:`laperm`.

  Its settings are static data, not arrays: the state jits (the settings
  are compile-time constants, and a function given another layout raises
  while tracing), shards and checkpoints as a tree of arrays, and maps with
  ``optax.tree.map_params`` (the settings are a field that does not mirror
  the params). The price of static data: a checkpoint holds only the
  arrays, so a state restored by orbax or Flax's serialization takes its
  settings from the target tree (build the target with the same
  :func:`laperm`, e.g. ``jax.eval_shape(tx.init, params)``); and
  ``jax.tree`` functions over several states need equal settings.

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
    settings: The layout (resolved per leaf) and the regenerating function
      :func:`laperm` was given, as a :class:`LaPermSettings`
      (``settings.vector_axes``, ``settings.initial_params``): static data,
      no leaves. :func:`synchronize`, the export and the analyses read them
      from here.
  """

  count: jax.Array
  steps_since_sync: jax.Array
  sorted_init: optax.Params
  reset_values: optax.Params
  inner_state: optax.OptState
  settings: LaPermSettings = make_settings(None, (), None)


def laperm_states(opt_state: optax.OptState) -> list[LaPermState]:
  """Every :class:`LaPermState` inside an optimizer state, in tree order.

  Args:
    opt_state: Any optimizer state (``optax.chain``,
      ``optax.inject_hyperparams``, ``optax.MultiSteps``, ...).

  Returns:
    A list of the LaPerm states it holds; empty if none.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import laperm_jax as lp
    >>> tx = optax.chain(optax.clip(1.0), lp.laperm(optax.sgd(1.0), 10))
    >>> params = jnp.arange(6.0).reshape(3, 2)
    >>> [type(s).__name__ for s in lp.laperm_states(tx.init(params))]
    ['LaPermState']
  """
  is_state = lambda x: isinstance(x, LaPermState)
  return [leaf for leaf in jax.tree.leaves(opt_state, is_leaf=is_state)
          if is_state(leaf)]


def states_in(where: str, opt_state: optax.OptState, *,
              exactly_one: bool = False) -> list[LaPermState]:
  """:func:`laperm_states`, raising if there are none (or not exactly one)."""
  found = laperm_states(opt_state)
  if exactly_one and len(found) != 1:
    raise ValueError(
        f'{where}: opt_state must hold exactly one LaPermState (the state of '
        f'an optimizer built with laperm_jax.laperm), found {len(found)}.')
  if not found:
    raise ValueError(
        f'{where}: opt_state holds no LaPermState; pass the state of an '
        'optimizer built with laperm_jax.laperm.')
  return found


# ---------------------------------------------------------------------------
# Leaves: the params matched with what the state holds for them.


def is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def is_placeholder(x: Any) -> bool:
  """A leaf of the state that holds no array: masked, or regenerated."""
  return isinstance(x, (optax.MaskedNode, FromInitialParams))


def leaf_name(path: tuple) -> str:
  """A leaf's key path as ``keystr`` writes it, without the boxes around it.

  Flax's boxed params (``nn.Partitioned``, ``nn.LogicallyPartitioned``) and
  NNX variables hold their array as ``.value``: the same leaf boxed and
  unboxed gets the same name.
  """
  while path and path[-1] == jax.tree_util.GetAttrKey('value'):
    path = path[:-1]
  return jax.tree_util.keystr(path)


def leaf_names(tree: Any) -> list[str]:
  """:func:`leaf_name` of every leaf of ``tree`` (MaskedNodes are leaves)."""
  return [leaf_name(path) for path, _ in
          jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_masked)[0]]


def first_difference(names: list[str], others: list[str], what: str,
                     other: str) -> str:
  """One line naming the first leaf where two lists of leaf names differ."""
  index = next((i for i, (a, b) in enumerate(zip(names, others)) if a != b),
               min(len(names), len(others)))
  found = names[index] if index < len(names) else 'no leaf'
  wanted = others[index] if index < len(others) else 'no leaf'
  return f'leaf {index} is {found} in {what}, {wanted} in {other}.'


def check_same_leaves(where: str, names: list[str], expected: list[str],
                      what: str) -> None:
  """Raises a one-line error naming the first leaf where the trees differ."""
  if names != expected:
    raise ValueError(
        f'{where}: params do not match the structure of {what}: '
        + first_difference(names, expected, 'the params', what))


class HeldLeaf(NamedTuple):
  """One leaf of the params and what a LaPerm state holds for it."""

  name: str
  param: Any
  sorted_values: Any
  reset_value: Any


def held_leaves(where: str, params: optax.Params, sorted_init: Any,
                reset_values: Any) -> tuple[list[HeldLeaf], Any]:
  """Pairs each leaf of ``params`` with what a LaPerm state holds for it.

  Leaves are matched by name (:func:`leaf_name`), so params boxed
  differently from the state's (Flax boxes, NNX variables) match.

  Args:
    where: The caller's name, for error messages.
    params: The params.
    sorted_init: The state's ``sorted_init``.
    reset_values: The state's ``reset_values``.

  Returns:
    A list of :class:`HeldLeaf` and the treedef of ``params``.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(params,
                                                       is_leaf=is_masked)
  held_flat = jax.tree_util.tree_flatten_with_path(sorted_init,
                                                   is_leaf=is_placeholder)[0]
  reset = jax.tree.leaves(reset_values, is_leaf=is_placeholder)
  names = [leaf_name(path) for path, _ in flat]
  check_same_leaves(where, names, [leaf_name(path) for path, _ in held_flat],
                    'the params the LaPerm state was initialized with')
  for name, (_, param), (_, held) in zip(names, flat, held_flat):
    if not is_placeholder(held) and jnp.shape(param) != held.shape:
      raise ValueError(
          f'{where}: leaf {name} has shape {jnp.shape(param)} but the LaPerm '
          f'state holds {held.shape} for it: params do not match the '
          'structure of the params the state was initialized with.')
  return [HeldLeaf(name, param, held, reset_value) for name, (_, param),
          (_, held), reset_value in zip(names, flat, held_flat, reset)], treedef


# ---------------------------------------------------------------------------
# Settings: read from the state, checked against the ones a caller repeats.


def layouts(where: str, state: LaPermState, params: optax.Params,
            held: list[HeldLeaf], vector_axes: Any = None
            ) -> list[Optional[tuple[int, ...]]]:
  """The fan-in axes of every permuted leaf (None for the others).

  They come from the state's settings. A ``vector_axes`` the caller repeats
  must give every permuted leaf the same fan-in axes (checked while
  tracing, so inside ``jit`` too). Outside jit, sorted initial values that
  are not sorted under the layout (a state restored into a target built
  with another layout) raise as well.
  """
  permuted = [not is_masked(leaf.sorted_values) for leaf in held]
  if state.settings.treedef is None:  # A state made without settings.
    own = _weight_vectors.checked_layouts(where, vector_axes, params,
                                          permuted)
  else:
    own = list(state.settings.leaf_axes)
  if vector_axes is not None and state.settings.treedef is not None:
    given = _weight_vectors.checked_layouts(where, vector_axes, params,
                                            permuted)
    for leaf, axes, given_axes in zip(held, own, given):
      if axes != given_axes:
        raise ValueError(
            f'{where}: vector_axes gives leaf {leaf.name} the fan-in axes '
            f'{given_axes}, but the LaPerm state was built with {axes}: pass '
            'the vector_axes laperm was built with, or none (the state '
            'carries it).')
  checked = [(leaf, axes) for leaf, axes in zip(held, own)
             if axes is not None and not isinstance(
                 leaf.sorted_values, (jax.core.Tracer, FromInitialParams))]
  is_sorted = _weight_vectors.vectors_hold(
      'sorted', [leaf.sorted_values for leaf, _ in checked],
      tuple(axes for _, axes in checked))
  for (leaf, axes), leaf_sorted in zip(checked, is_sorted):
    if not leaf_sorted:
      raise ValueError(
          f'{where}: the LaPerm state holds sorted initial values for leaf '
          f'{leaf.name} that are not sorted along its weight vectors under '
          f'vector_axes {axes}: pass the vector_axes laperm was built with.')
  return own


def initial_params(where: str, state: LaPermState, params: optax.Params,
                   given: Optional[InitialParams] = None
                   ) -> Optional[InitialParams]:
  """The state's regenerating function; one the caller repeats must be it."""
  own = state.settings.initial_params
  if given is None or given is own:
    return own if own is not None else given
  if own is None:
    return given  # A state built before it carried its function.
  check_initial_shapes(where, given, params)
  raise ValueError(
      f'{where}: initial_params is not the function the LaPerm state was '
      'built with: pass the same function, or none (the state carries it).')


def regenerate(where: str, held: list[HeldLeaf], layouts_: list[Any],
               params: optax.Params, function: Optional[InitialParams], *,
               sort: bool = True) -> list[HeldLeaf]:
  """``held`` with every :class:`FromInitialParams` replaced by its values.

  Sorted values are ``function()``'s leaf sorted under its layout (left
  unsorted unless ``sort``); reset values are the leaf itself.
  """
  if not any(isinstance(value, FromInitialParams) for leaf in held
             for value in (leaf.sorted_values, leaf.reset_value)):
    return held
  if function is None:
    raise ValueError(
        f'{where}: the LaPerm state holds no copy of the initial weights '
        '(laperm was built with initial_params) and no function to '
        'regenerate them: pass the same function as initial_params.')
  initial = initial_leaves(where, function, params)

  def resolve(name, value, axes, sort_values):
    if not isinstance(value, FromInitialParams):
      return value
    if sort_values:
      return _weight_vectors.sort_vectors(initial[name], vector_axes=axes)
    return initial[name]

  return [leaf._replace(
      sorted_values=resolve(leaf.name, leaf.sorted_values, axes, sort),
      reset_value=resolve(leaf.name, leaf.reset_value, axes, False))
          for leaf, axes in zip(held, layouts_)]


def initial_leaves(where: str, function: InitialParams,
                   params: optax.Params) -> dict[str, jax.Array]:
  """``function()``'s leaves by name, checked to have ``params``' shapes.

  Called through ``jax.jit`` so that every call, eager or inside a train
  step, runs the same computation.
  """
  check_initial_shapes(where, function, params)
  values = jax.jit(function)()
  return {leaf_name(path): leaf for path, leaf in
          jax.tree_util.tree_flatten_with_path(values)[0]}


def check_initial_shapes(where: str, function: InitialParams,
                         params: optax.Params) -> None:
  """Raises unless ``function()`` has ``params``' leaves, shapes and dtypes."""
  shapes = jax.eval_shape(function)
  expected = {leaf_name(path): leaf for path, leaf in
              jax.tree_util.tree_flatten_with_path(params,
                                                   is_leaf=is_masked)[0]}
  found = {leaf_name(path): leaf for path, leaf in
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
    if is_masked(leaf):
      continue
    shape, dtype = tuple(jnp.shape(leaf)), jnp.result_type(leaf)
    if (found[name].shape, found[name].dtype) != (shape, dtype):
      raise ValueError(
          f'{where}: initial_params() returns leaf {name} as '
          f'{found[name].dtype}{list(found[name].shape)}, but the params '
          f'hold {dtype}{list(shape)}.')


def same_bits(a: jax.Array, b: jax.Array) -> bool:
  """Whether ``a`` and ``b`` hold the same bits (NaN == NaN, -0.0 != 0.0)."""
  bits = jnp.dtype(f'uint{jnp.dtype(jnp.result_type(a)).itemsize * 8}')
  return bool(jnp.array_equal(lax.bitcast_convert_type(a, bits),
                              lax.bitcast_convert_type(b, bits)))
