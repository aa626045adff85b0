"""Draws the figures of docs/RESULTS.md from the runs of scripts/results.sh.

  python docs/results_figures.py --runs runs/results --out docs/results

Reads each run's ``metrics.json`` and, for the conv runs, its final orbax
checkpoint; regenerates the initial weights from the run's config and seed
(``experiments.state.create_train_state``, as training did) and checks that
LaPerm's trained kernels, synchronized with ``lp.synchronize``, are exact
permutations of them. Writes (each skipped when its runs are missing):

- ``a3_training_monitor.png``: Fig. 13, the four A.3 settings, monitoring
  the input layer (``runs/a3``).
- ``conv_prune_sweep.png``: accuracy against the kept fraction.
- ``a3_weight_profiles.png``: Figs. 11-12 style, the A.3 MLP at init and
  after Adam's and SGD's 30 epochs.
- ``conv_weight_profiles.png``: three conv kernels at init, after LaPerm
  (synced) and after Adam.
- ``conv_permutation_cycles.png``: Fig. 14 style, initial -> trained.
- ``checks.json``: the exact-permutation checks (the conv run in detail,
  then every ``*/laperm`` run) and cycle statistics.
- ``vit/``: the ViT study's checks under its derived layout
  (``checks.json``) and its attention heads' weight profiles and ranking
  distances.

``--sections`` picks some of ``a3 conv prune checks vit`` (default: all).

Run from the repository root (it imports ``experiments``).
"""

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import laperm_jax as lp  # pylint: disable=g-import-not-at-top,wrong-import-position
from laperm_jax import plots  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import checkpoints  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import monitor  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import optimizers  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import state as state_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import steps  # pylint: disable=g-import-not-at-top,wrong-import-position

DPI = 70
IMAGE_SHAPE = (28, 28, 1)  # Fashion-MNIST.


def _metrics(run_dir: pathlib.Path) -> dict:
  return json.loads((run_dir / 'metrics.json').read_text())


def a3_monitor(runs: pathlib.Path, out: pathlib.Path, study: str,
               filename: str, layer_name: str) -> list[pathlib.Path]:
  """Fig. 13 from the monitor records in the A.3 runs' metrics.json."""
  study_dir = runs / study
  names = ('sgd', 'adam', 'adam-dropout', 'adam-l2')
  if not all((study_dir / name / 'metrics.json').exists() for name in names):
    print(f'skip A.3 monitor: no {study_dir}/*/metrics.json')
    return []
  # From epoch 1: the untrained net's validation loss (~3.6) would flatten
  # the loss row. Epoch 1's ranking distance is still measured from init.
  records = {name: monitor.stack(monitor.from_json(
      _metrics(study_dir / name)['monitor'])[1:]) for name in names}
  path = plots.plot_training_monitor(records, out / filename,
                                     layer_name=layer_name, dpi=DPI)
  return [path]


def prune_sweep(runs: pathlib.Path, out: pathlib.Path,
                dense_run: pathlib.Path) -> list[pathlib.Path]:
  """Validation accuracy against the kept fraction, at the steps all share.

  The dense run trains longer than the sweep, so the runs are compared at
  the evaluation steps they have in common (right after a sync); the test
  accuracy of the sweep's best weights is drawn beside them.
  """
  points = []
  if (dense_run / 'metrics.json').exists():
    points.append((1.0, _metrics(dense_run)))
  for run_dir in sorted(runs.glob('conv7-prune-*/laperm')):
    if (run_dir / 'metrics.json').exists():
      metrics = _metrics(run_dir)
      points.append((1.0 - metrics['config']['init']['prune_rate'], metrics))
  if len(points) < 2:
    print('skip prune sweep: fewer than two runs')
    return []
  points.sort(key=lambda point: point[0])
  validation = [{record['step']: record['val_accuracy']
                 for record in metrics['history'] if 'val_accuracy' in record}
                for _, metrics in points]
  shared_steps = sorted(set.intersection(*(set(v) for v in validation)))
  kept = [point[0] for point in points]
  from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  figure = figure_lib.Figure(figsize=(4.5, 3.2), layout='constrained')
  backend_agg.FigureCanvasAgg(figure)
  ax = figure.subplots()
  for step in shared_steps:
    accuracy = [v[step] for v in validation]
    ax.plot(kept, accuracy, 'o-', label=f'validation, step {step:,}')
    for x, y in zip(kept, accuracy):
      ax.annotate(f'{y:.3f}', (x, y), textcoords='offset points',
                  xytext=(0, 6), ha='center', fontsize=7)
  swept = [(x, metrics) for x, metrics in points if x < 1.0]
  epochs = swept[0][1]['config']['epochs']
  ax.plot([x for x, _ in swept],
          [metrics['test_accuracy_of_best'] for _, metrics in swept], 's--',
          label=f'test, best weights of {epochs} epochs (pruned runs)')
  ax.axhline(0.1, color='gray', linewidth=0.8, linestyle=':')
  ax.text(0.98, 0.11, 'chance', fontsize=7, color='gray')
  ax.set_xlabel('kept fraction of each kernel (input layer: at least 0.8)')
  ax.set_ylabel('accuracy (synced weights)')
  config = points[0][1]['config']
  ax.set_title(f'LaPerm, {config["model"]["name"]}, Fashion-MNIST, '
               f'k={config["optimizer"]["sync_period"]}', fontsize=8)
  ax.set_ylim(0, 1)
  ax.invert_xaxis()
  ax.legend(fontsize=7, loc='lower right')
  path = out / 'conv_prune_sweep.png'
  figure.savefig(path, dpi=110)
  return [path]


def _seed_dirs(run_dir: pathlib.Path) -> list[pathlib.Path]:
  """Where a run's metrics are: itself, or one ``seed-S`` folder per seed."""
  if (run_dir / 'metrics.json').exists():
    return [run_dir]
  return sorted(run_dir.glob('seed-*/'),
                key=lambda path: int(path.name.removeprefix('seed-')))


def _layout(config: ml_collections.ConfigDict):
  """LaPerm's weight-vector layout of a run (None: the default)."""
  return optimizers.weight_vector_layout(
      config.optimizer, models.create(config.model, 10), IMAGE_SHAPE)


def _restore_seeds(run_dir: pathlib.Path):
  """Per seed: the config, the initial params and the final arrays.

  A checkpoint holds every array with a leading seed axis: the seeds
  trained together, in the order of their ``metrics.json``, or one seed in
  each ``seed-S`` folder when they trained one after another.
  """
  configs = [ml_collections.ConfigDict(_metrics(seed_dir)['config'])
             for seed_dir in _seed_dirs(run_dir)]
  model = models.create(configs[0].model, 10)
  steps_per_epoch = 1  # Shapes only: the schedule's length is not stored.
  layout = _layout(configs[0])
  tx = optimizers.create(configs[0].optimizer, steps_per_epoch, layout)
  initials, carried = [], []
  for config in configs:
    state = state_lib.create_train_state(config, model, IMAGE_SHAPE,
                                         steps_per_epoch, tx=tx)
    initials.append(optimizers.train_params(state.params))
    eval_params = optimizers.eval_params(state.params, state.opt_state,
                                         layout)
    carried.append(checkpoints.Carried(
        state=state, best_params=eval_params,
        best_batch_stats=state.batch_stats,
        previous_kernel=models.get_leaf(
            eval_params, models.first_kernel_path(eval_params)))._asdict())
  seed_dirs = _seed_dirs(run_dir)
  if seed_dirs == [run_dir] or not all(
      (seed_dir / 'checkpoints').is_dir() for seed_dir in seed_dirs):
    arrays, step = _restore_checkpoint(run_dir, carried)
  else:  # Seeds trained one after another, each in its seed-S folder.
    arrays = []
    for seed_dir, seed_carried in zip(seed_dirs, carried):
      seed_arrays, step = _restore_checkpoint(seed_dir, [seed_carried])
      arrays += seed_arrays
  return configs, initials, arrays, step


def _restore_checkpoint(directory: pathlib.Path, carried: list):
  """The latest checkpoint in ``directory`` of seeds shaped like
  ``carried`` (a leading seed axis), one tree per seed, and its step."""
  stacked = steps.stack_seeds(carried)
  with ocp.CheckpointManager((directory / 'checkpoints').absolute()) as manager:
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(
            jax.tree.map(ocp.utils.to_shape_dtype_struct, stacked))))
  return [jax.tree.map(lambda leaf, index=index: leaf[index], restored.arrays)
          for index in range(len(carried))], step


def _restore(run_dir: pathlib.Path):
  """The run's config, its initial params and its final train state (seed 0
  of the run's seeds)."""
  configs, initials, arrays, step = _restore_seeds(run_dir)
  return configs[0], initials[0], arrays[0]['state'], step, arrays[0]


def _kernels(params) -> dict[str, jax.Array]:
  """The kernels (``models.kernel_paths``) by their ``keystr`` names."""
  return {''.join(f"['{name}']" for name in path): models.get_leaf(params, path)
          for path in models.kernel_paths(params)}


def _kernel_axes(layout, params) -> dict[str, tuple[int, ...]]:
  """Each kernel's fan-in axes in ``layout`` (empty for the default)."""
  if layout is None:
    return {}
  return {''.join(f"['{name}']" for name in path): models.get_leaf(layout, path)
          for path in models.kernel_paths(params)}


def _exact_permutation(before, after, axes) -> bool:
  """Whether every fan-in vector of ``after`` holds those of ``before``."""
  return bool(jnp.array_equal(lp.weight_profiles(before, vector_axes=axes),
                              lp.weight_profiles(after, vector_axes=axes)))


def conv_figures(runs: pathlib.Path, out: pathlib.Path,
                 checks: dict) -> list[pathlib.Path]:
  """Profiles before/after, the exact-permutation check, one cycle plot."""
  written = []
  laperm_dir = runs / 'conv7' / 'laperm'
  if not (laperm_dir / 'metrics.json').exists():
    print(f'skip conv figures: no {laperm_dir}/metrics.json')
    return written
  config, initial, state, step, _ = _restore(laperm_dir)
  synced = lp.synchronize(state.params, state.opt_state)
  # The check: every kernel's weight vectors hold exactly the initial values.
  exact, changed = {}, {}
  for name, before in _kernels(initial).items():
    after = _kernels(synced)[name]
    same_values = bool(jnp.array_equal(lp.weight_profiles(before),
                                       lp.weight_profiles(after)))
    exact[name] = same_values
    changed[name] = float(jnp.mean(before != after))
  raw_vs_synced = {name: float(jnp.max(jnp.abs(leaf - _kernels(synced)[name])))
                   for name, leaf in _kernels(state.params).items()}
  checks['conv_laperm'] = {
      'run': str(laperm_dir), 'checkpoint_step': step,
      'model': config.model.name, 'seed': config.seed,
      'kernels_exact_permutation_of_initial': exact,
      'fraction_of_entries_moved': changed,
      'max_abs_raw_minus_synced': raw_vs_synced}
  print('exact permutation of the initial kernels:', exact)
  shown = ('Conv_1', 'Conv_5', 'head')  # 288, 1600 and 128 per vector.
  profiles = {'initial': {name: initial[name]['kernel'] for name in shown},
              'laperm': {name: synced[name]['kernel'] for name in shown}}
  adam_dir = runs / 'conv7' / 'adam'
  if (adam_dir / 'metrics.json').exists():
    _, adam_initial, adam_state, _, _ = _restore(adam_dir)
    profiles['adam'] = {name: adam_state.params[name]['kernel']
                        for name in shown}
    checks['conv_adam_same_initial_weights'] = all(
        bool(jnp.array_equal(a, b)) for a, b in zip(
            jax.tree.leaves(adam_initial), jax.tree.leaves(initial)))
  written.append(plots.plot_weight_profiles(
      profiles, out / 'conv_weight_profiles.png', max_vectors=30, dpi=DPI))
  # Fig. 14: the head's weight vectors have 128 entries, as in the paper.
  kernels_initial, kernels_synced = _kernels(initial), _kernels(synced)
  name = next(key for key in kernels_initial if 'head' in key)
  summary = lp.cycle_summary(kernels_initial[name], kernels_synced[name])
  checks['conv_laperm_cycles'] = {
      'kernel': name, 'vector_length': int(kernels_initial[name].shape[0]),
      'num_cycles': summary.num_cycles.tolist(),
      'longest_cycle': summary.longest_cycle.tolist(),
      'fraction_moved': summary.fraction_moved.tolist()}
  written.append(plots.plot_permutation_cycles(
      kernels_initial[name], kernels_synced[name],
      out / 'conv_permutation_cycles.png', vector_index=0, dpi=DPI))
  return written


def a3_profiles(runs: pathlib.Path, out: pathlib.Path) -> list[pathlib.Path]:
  """Figs. 11-12 style: the A.3 MLP's kernels at init and after 30 epochs."""
  runs_shown = [name for name in ('adam', 'sgd')
                if (runs / 'a3' / name / 'metrics.json').exists()]
  if not runs_shown:
    print('skip A.3 profiles: no A.3 runs')
    return []
  profiles = {}
  for name in runs_shown:
    _, initial, _, _, arrays = _restore(runs / 'a3' / name)
    best_epoch = _metrics(runs / 'a3' / name)['best_epoch']
    if not profiles:
      profiles['initial'] = {layer: initial[layer]['kernel']
                             for layer in ('hidden1', 'hidden2', 'head')}
    profiles[f'{name} best, epoch {best_epoch}'] = {
        layer: arrays['best_params'][layer]['kernel']
        for layer in ('hidden1', 'hidden2', 'head')}
  return [plots.plot_weight_profiles(
      profiles, out / 'a3_weight_profiles.png', max_vectors=30, dpi=DPI)]


def check_all_laperm_runs(runs: pathlib.Path, checks: dict) -> None:
  """The exact-permutation check on every LaPerm run under ``runs``."""
  results = {}
  for run_dir in sorted(runs.glob('*/laperm')):
    if not _seed_dirs(run_dir):
      continue
    configs, initials, arrays, step = _restore_seeds(run_dir)
    layout = _layout(configs[0])
    axes = _kernel_axes(layout, initials[0])
    for config, initial, seed_arrays in zip(configs, initials, arrays):
      state = seed_arrays['state']
      synced = lp.synchronize(state.params, state.opt_state,
                              vector_axes=layout)
      kernels_synced = _kernels(synced)
      run_name = f'{run_dir} seed {config.seed}'
      results[run_name] = {
          'checkpoint_step': step,
          'all_kernels_exact_permutation': all(
              _exact_permutation(before, kernels_synced[name],
                                 axes.get(name))
              for name, before in _kernels(initial).items()),
          'fraction_moved': {
              name: round(float(jnp.mean(before != kernels_synced[name])), 4)
              for name, before in _kernels(initial).items()}}
      print(run_name, results[run_name]['all_kernels_exact_permutation'])
  checks['all_laperm_runs'] = results


ATTENTION = ('query', 'key', 'value', 'out')


def _head_ranking_distances(before, after, axes) -> list[float]:
  """Per head of an attention kernel, the mean ranking distance of its
  entries over the vector length (``lp.ranking_distances`` under ``axes``).

  The head axis is 1 in query/key/value kernels ``(features, heads, dim)``
  and 0 in the out kernel ``(heads, dim, features)``.
  """
  distances = np.asarray(lp.ranking_distances(before, after, vector_axes=axes))
  length = int(np.prod([before.shape[axis] for axis in axes]))
  head_axis = 0 if axes == (0, 1) else 1
  return [round(float(np.mean(np.take(distances, head, head_axis))) / length,
                4) for head in range(before.shape[head_axis])]


def _vit_seed_checks(initial, synced, best, adam_initial, axes):
  """One seed's checks: exact permutations, same start, head distances."""
  before, after = _kernels(initial), _kernels(synced)
  return {
      'kernels_exact_permutation_of_initial': {
          name: _exact_permutation(before[name], after[name], axes[name])
          for name in before},
      'best_kernels_exact_permutation_of_initial': all(
          _exact_permutation(before[name], leaf, axes[name])
          for name, leaf in _kernels(best).items()),
      'adam_same_initial_weights': all(
          bool(jnp.array_equal(a, b)) for a, b in zip(
              jax.tree.leaves(adam_initial), jax.tree.leaves(initial))),
      'fraction_moved': {name: round(float(jnp.mean(
          before[name] != after[name])), 4) for name in before},
      'ranking_distance_per_head': {
          name: _head_ranking_distances(before[name], after[name], axes[name])
          for name in before if any(f"['{projection}']" in name
                                    for projection in ATTENTION)},
  }


def vit_results(runs: pathlib.Path, out: pathlib.Path) -> list[pathlib.Path]:
  """The ViT study: checks under its derived layout, and its heads.

  Every seed's LaPerm kernels (final state synchronized, and the best
  weights) are checked to be exact permutations of the regenerated initial
  weights under the layout derived from the model; Adam's initial weights
  to equal LaPerm's. Writes ``vit/checks.json``, the attention kernels'
  weight profiles (``vit/attention_weight_profiles.png``) and the ranking
  distance per head (``vit/attention_ranking_distance.png``).
  """
  laperm_dir, adam_dir = runs / 'vit' / 'laperm', runs / 'vit' / 'adam'
  if not (_seed_dirs(laperm_dir) and _seed_dirs(adam_dir)):
    print(f'skip ViT: no {laperm_dir} and {adam_dir} runs')
    return []
  configs, initials, arrays, step = _restore_seeds(laperm_dir)
  layout = _layout(configs[0])
  axes = _kernel_axes(layout, initials[0])
  _, adam_initials, adam_arrays, _ = _restore_seeds(adam_dir)
  checks = {'layout': {name: list(value) for name, value in axes.items()},
            'checkpoint_step': step, 'seeds': {}}
  for config, initial, seed_arrays, adam_initial in zip(
      configs, initials, arrays, adam_initials):
    state = seed_arrays['state']
    synced = lp.synchronize(state.params, state.opt_state, vector_axes=layout)
    checks['seeds'][config.seed] = _vit_seed_checks(
        initial, synced, seed_arrays['best_params'], adam_initial, axes)
    print(f'ViT seed {config.seed}: exact permutations',
          checks['seeds'][config.seed]['kernels_exact_permutation_of_initial'])
  (out / 'vit').mkdir(exist_ok=True)
  path = out / 'vit' / 'checks.json'
  path.write_text(json.dumps(checks, indent=1))
  synced = lp.synchronize(arrays[0]['state'].params,
                          arrays[0]['state'].opt_state, vector_axes=layout)
  # Numbered labels: panels are drawn in key order.
  block = lambda params: {
      f'{index} {name}': params['encoder_1']['attention'][name]['kernel']
      for index, name in enumerate(ATTENTION, 1)}
  profiles = {'1 initial': block(initials[0]), '2 laperm': block(synced),
              '3 adam': block(adam_arrays[0]['state'].params)}
  written = [path, plots.plot_weight_profiles(
      profiles, out / 'vit' / 'attention_weight_profiles.png',
      vector_axes=lambda key_path, _: (0, 1) if 'out' in jax.tree_util.keystr(
          key_path) else (0,), max_vectors=16, dpi=DPI)]
  written.append(_plot_head_distances(checks['seeds'], out / 'vit' / (
      'attention_ranking_distance.png')))
  return written


def _plot_head_distances(seeds: dict, path: pathlib.Path) -> pathlib.Path:
  """Ranking distance per head, one panel per attention kernel, a dot per
  seed."""
  from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  names = list(next(iter(seeds.values()))['ranking_distance_per_head'])
  figure = figure_lib.Figure(figsize=(11, 4.4), layout='constrained')
  backend_agg.FigureCanvasAgg(figure)
  axes = figure.subplots(2, len(names) // 2, sharey=True)
  for ax, name in zip(axes.flat, names):
    for seed, seed_checks in seeds.items():
      distances = seed_checks['ranking_distance_per_head'][name]
      ax.plot(range(len(distances)), distances, 'o', label=f'seed {seed}')
    ax.set_title(name.replace("']['", '/').strip("[']").removesuffix(
        '/kernel'), fontsize=8)
    ax.set_xlabel('head', fontsize=8)
    ax.set_xticks(range(len(distances)))
  axes.flat[0].set_ylabel('ranking distance / vector length', fontsize=8)
  axes.flat[0].legend(fontsize=7)
  figure.suptitle('ViT on Fashion-MNIST, LaPerm: how far each head\'s '
                  'weights moved within their fan-in, initial -> trained',
                  fontsize=9)
  figure.savefig(path, dpi=DPI)
  return path


SECTIONS = ('a3', 'conv', 'prune', 'checks', 'vit')


def main() -> None:
  cli = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  cli.add_argument('--runs', type=pathlib.Path, default='runs/results')
  cli.add_argument('--out', type=pathlib.Path, default='docs/results')
  cli.add_argument('--sections', nargs='+', choices=SECTIONS,
                   default=SECTIONS, help='what to draw and check')
  args = cli.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  checks, written = {}, []
  if 'a3' in args.sections:
    written += a3_monitor(args.runs, args.out, 'a3',
                          'a3_training_monitor.png', 'hidden1 (784x100)')
    written += a3_profiles(args.runs, args.out)
  if 'conv' in args.sections:
    written += conv_figures(args.runs, args.out, checks)
  if 'prune' in args.sections:
    written += prune_sweep(args.runs, args.out, args.runs / 'conv7' / 'laperm')
  if 'checks' in args.sections:
    check_all_laperm_runs(args.runs, checks)
  if 'vit' in args.sections:
    written += vit_results(args.runs, args.out)
  if checks:
    path = args.out / 'checks.json'
    path.write_text(json.dumps(checks, indent=1))
    written.append(path)
  for path in written:
    print(f'wrote {path} ({path.stat().st_size // 1024} KB)')


if __name__ == '__main__':
  main()
