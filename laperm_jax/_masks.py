"""Which leaves a function applies to: masks and per-leaf values.

Masks and per-leaf settings take the forms ``optax.masked`` takes: a tree with
the structure of the params (or a prefix of it), or a callable returning one.
Written once here for the transformation, the initial-weight tools and the
plots.
"""

from collections.abc import Callable
from typing import Any, Optional, Union

import jax
import numpy as np
import optax

Mask = Union[Any, Callable[[optax.Params], Any]]


def per_leaf(spec: Any, params: optax.Params, name: str, *,
             is_leaf: Optional[Callable[[Any], bool]] = None) -> list[Any]:
  """Broadcasts ``spec`` (a tree prefix or a callable) to one value per leaf.

  Args:
    spec: A tree with the structure of ``params`` or a prefix of it, or a
      callable ``params -> tree``.
    params: The params tree.
    name: The argument's name, for error messages.
    is_leaf: Which nodes of ``spec`` are values, for values that are pytree
      nodes to JAX (tuples of axes); default: JAX's leaves.

  Returns:
    A list with one value per leaf of ``params``, in flattened order.
  """
  tree = spec(params) if callable(spec) else spec
  values, spec_treedef = jax.tree.flatten(tree, is_leaf=is_leaf)
  try:
    subtrees = spec_treedef.flatten_up_to(params)
  except (ValueError, TypeError) as error:
    raise ValueError(
        f'{name} does not match the structure of params (it must be the same '
        f'tree, a prefix of it, or a callable returning one): {error}'
    ) from error
  return [value for value, subtree in zip(values, subtrees)
          for _ in jax.tree.leaves(subtree)]


def selected_leaves(mask: Optional[Mask], params: optax.Params, name: str,
                    *, default_kernels: bool = True) -> list[bool]:
  """One Python bool per leaf of ``params``, in flattened order.

  Args:
    mask: A mask as ``optax.masked`` takes it, or None for the default.
    params: The params tree.
    name: The argument's name, for error messages.
    default_kernels: What None selects: leaves with ``ndim >= 2`` (kernels)
      if True, no leaf if False.

  Returns:
    A list of bools, one per leaf.
  """
  leaves = jax.tree.leaves(params)
  if mask is None:
    return [default_kernels and np.ndim(leaf) >= 2 for leaf in leaves]
  values = per_leaf(mask, params, name)
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  for path, value in zip(paths, values):
    if not isinstance(value, (bool, np.bool_)):
      raise ValueError(
          f'{name} must hold Python bools, but holds {value!r} for leaf '
          f'{jax.tree_util.keystr(path)}.')
  return [bool(value) for value in values]
