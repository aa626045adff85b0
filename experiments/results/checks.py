"""The exact-permutation checks of trained runs against their initial weights.

LaPerm's promise: after a sync, every weight vector of every kernel holds
exactly the values it was initialized with, in another order. These checks
compare a run's trained kernels (synchronized with ``lp.synchronize``)
with the initial weights rebuilt from its config (``restore.py``), under
the run's weight-vector layout, and say how much moved.
"""

import pathlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

import laperm_jax as lp
from experiments import models
from experiments.results import restore

ATTENTION = ('query', 'key', 'value', 'out')


def kernels(params: Any) -> dict[str, jax.Array]:
  """The kernels (``models.kernel_paths``) by their ``keystr`` names."""
  return {''.join(f"['{name}']" for name in path): models.get_leaf(params, path)
          for path in models.kernel_paths(params)}


def kernel_axes(layout: Optional[Any], params: Any
                ) -> dict[str, tuple[int, ...]]:
  """Each kernel's fan-in axes in ``layout`` (empty for the default)."""
  if layout is None:
    return {}
  return {''.join(f"['{name}']" for name in path): models.get_leaf(layout, path)
          for path in models.kernel_paths(params)}


def exact_permutation(before: jax.Array, after: jax.Array,
                      axes: Optional[tuple[int, ...]]) -> bool:
  """Whether every fan-in vector of ``after`` holds those of ``before``."""
  return bool(jnp.array_equal(lp.weight_profiles(before, vector_axes=axes),
                              lp.weight_profiles(after, vector_axes=axes)))


def same_weights(a: Any, b: Any) -> bool:
  """Whether two trees of weights are equal bit for bit."""
  return all(bool(jnp.array_equal(x, y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def fraction_moved(before: Any, after: Any) -> dict[str, float]:
  """Per kernel, the share of entries that changed (4 decimals)."""
  after = kernels(after)
  return {name: round(float(jnp.mean(leaf != after[name])), 4)
          for name, leaf in kernels(before).items()}


def conv_run(run_dir: pathlib.Path, run: restore.Restored,
             synced: Any) -> dict[str, Any]:
  """A run's seed 0 in detail, as ``checks.json`` holds the Conv7 run.

  Args:
    run_dir: The run's folder.
    run: The run, restored.
    synced: Seed 0's final params, synchronized.

  Returns:
    Per kernel: whether it is an exact permutation of its initial weights,
    the share of its entries that moved, and how far the raw params lie
    from the synced ones; with the run, step, model and seed.
  """
  axes = kernel_axes(run.layout, run.initials[0])
  before = kernels(run.initials[0])
  after = kernels(synced)
  raw = kernels(run.arrays[0]['state'].params)
  return {
      'run': str(run_dir), 'checkpoint_step': run.step,
      'model': run.configs[0].model.name, 'seed': run.configs[0].seed,
      'kernels_exact_permutation_of_initial': {
          name: exact_permutation(leaf, after[name], axes.get(name))
          for name, leaf in before.items()},
      'fraction_of_entries_moved': {
          name: float(jnp.mean(leaf != after[name]))
          for name, leaf in before.items()},
      'max_abs_raw_minus_synced': {
          name: float(jnp.max(jnp.abs(leaf - after[name])))
          for name, leaf in raw.items()}}


def all_laperm_runs(runs: pathlib.Path) -> dict[str, dict[str, Any]]:
  """The exact-permutation check on every LaPerm run under ``runs``.

  Args:
    runs: The output folder of ``scripts/results.sh``: every
      ``STUDY/laperm`` run in it is checked, each seed.

  Returns:
    Per ``'RUN_DIR seed S'``: the checkpoint's step, whether every kernel is
    an exact permutation of its initial weights, and the share of each
    kernel's entries that moved.
  """
  results = {}
  for run_dir in sorted(runs.glob('*/laperm')):
    if not restore.seed_dirs(run_dir):
      continue
    run = restore.restore(run_dir)
    axes = kernel_axes(run.layout, run.initials[0])
    for config, initial, arrays in zip(run.configs, run.initials, run.arrays):
      state = arrays['state']
      synced = lp.synchronize(state.params, state.opt_state,
                              vector_axes=run.layout)
      kernels_synced = kernels(synced)
      run_name = f'{run_dir} seed {config.seed}'
      results[run_name] = {
          'checkpoint_step': run.step,
          'all_kernels_exact_permutation': all(
              exact_permutation(before, kernels_synced[name], axes.get(name))
              for name, before in kernels(initial).items()),
          'fraction_moved': fraction_moved(initial, synced)}
      print(run_name, results[run_name]['all_kernels_exact_permutation'])
  return results


def _head_ranking_distances(before: jax.Array, after: jax.Array,
                            axes: tuple[int, ...]) -> list[float]:
  """Per head of an attention kernel, the mean ranking distance of its
  entries over the vector length (``lp.ranking_distance_per_entry`` under
  ``axes``).

  The head axis is 1 in query/key/value kernels ``(features, heads, dim)``
  and 0 in the out kernel ``(heads, dim, features)``.
  """
  distances = np.asarray(lp.ranking_distance_per_entry(before, after,
                                                      vector_axes=axes))
  length = int(np.prod([before.shape[axis] for axis in axes]))
  head_axis = 0 if axes == (0, 1) else 1
  return [round(float(np.mean(np.take(distances, head, head_axis))) / length,
                4) for head in range(before.shape[head_axis])]


def derived_layout_seed(initial: Any, synced: Any, best: Any, adam_initial: Any,
             axes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
  """One seed's checks under a derived layout (the ViT's, the language
  model's): exact permutations, same start, head distances.

  Args:
    initial: LaPerm's initial params.
    synced: LaPerm's final params, synchronized.
    best: LaPerm's best params (as evaluated: synchronized).
    adam_initial: Adam's initial params, which must equal LaPerm's.
    axes: Each kernel's fan-in axes (:func:`kernel_axes`).

  Returns:
    The checks, by name, as ``vit/checks.json`` holds them per seed.
  """
  before, after = kernels(initial), kernels(synced)
  return {
      'kernels_exact_permutation_of_initial': {
          name: exact_permutation(before[name], after[name], axes[name])
          for name in before},
      'best_kernels_exact_permutation_of_initial': all(
          exact_permutation(before[name], leaf, axes[name])
          for name, leaf in kernels(best).items()),
      'adam_same_initial_weights': same_weights(adam_initial, initial),
      'fraction_moved': fraction_moved(initial, synced),
      'ranking_distance_per_head': {
          name: _head_ranking_distances(before[name], after[name], axes[name])
          for name in before if any(f"['{projection}']" in name
                                    for projection in ATTENTION)},
  }
