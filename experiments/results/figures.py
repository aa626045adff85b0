"""Draws the figures of docs/RESULTS.md from the runs of scripts/results.sh.

Reads each run's ``metrics.json`` and, for the conv and ViT runs, its last
orbax checkpoint; rebuilds the initial weights from the run's config and
seed as training built them (``restore.py``) and checks that LaPerm's
trained kernels, synchronized with ``lp.synchronize``, are exact
permutations of them (``checks.py``). :func:`draw` writes (each skipped,
saying so, when its runs are missing):

- ``a3_training_monitor.png``: Fig. 13, the four A.3 settings, monitoring
  the input layer (``RUNS/a3``).
- ``a3_weight_profiles.png``: Figs. 11-12 style, the A.3 MLP at init and
  after Adam's and SGD's 30 epochs.
- ``conv_weight_profiles.png``: three conv kernels at init, after LaPerm
  (synced) and after Adam.
- ``conv_permutation_cycles.png``: Fig. 14 style, initial -> trained.
- ``conv_prune_sweep.png``: accuracy against the kept fraction.
- ``checks.json``: the exact-permutation checks (the conv run in detail,
  then every ``*/laperm`` run) and cycle statistics.
- ``vit/``: the ViT study's checks under its derived layout
  (``checks.json``) and its attention heads' weight profiles and ranking
  distances.
- ``lm/``: the language model's checks (``checks.json``), a text sample of
  each optimizer's best weights (``samples.json``), validation bits per
  byte against steps and the ranking-distance monitor of two kernels.
"""

import json
import pathlib
from typing import Any, Sequence

import jax
from matplotlib import figure as figure_lib
from matplotlib.backends import backend_agg
import numpy as np

import laperm_jax as lp
from laperm_jax import plots
from experiments import generate
from experiments import models
from experiments import monitor
from experiments import summaries
from experiments.results import checks as checks_lib
from experiments.results import restore

DPI = 70
SECTIONS = ('a3', 'conv', 'prune', 'checks', 'vit', 'lm')


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
      restore.read_metrics(study_dir / name)['monitor'])[1:])
      for name in names}
  path = plots.plot_training_monitor(records, out / filename,
                                     layer_name=layer_name, dpi=DPI)
  return [path]


def a3_profiles(runs: pathlib.Path, out: pathlib.Path) -> list[pathlib.Path]:
  """Figs. 11-12 style: the A.3 MLP's kernels at init and after 30 epochs."""
  runs_shown = [name for name in ('adam', 'sgd')
                if (runs / 'a3' / name / 'metrics.json').exists()]
  if not runs_shown:
    print('skip A.3 profiles: no A.3 runs')
    return []
  profiles = {}
  for name in runs_shown:
    run = restore.restore(runs / 'a3' / name)
    best_epoch = restore.read_metrics(runs / 'a3' / name)['best_epoch']
    if not profiles:
      profiles['initial'] = {layer: run.initials[0][layer]['kernel']
                             for layer in ('hidden1', 'hidden2', 'head')}
    profiles[f'{name} best, epoch {best_epoch}'] = {
        layer: run.arrays[0]['best_params'][layer]['kernel']
        for layer in ('hidden1', 'hidden2', 'head')}
  return [plots.plot_weight_profiles(
      profiles, out / 'a3_weight_profiles.png', max_vectors=30, dpi=DPI)]


def conv_figures(runs: pathlib.Path, out: pathlib.Path,
                 checks: dict[str, Any]) -> list[pathlib.Path]:
  """Profiles before/after, the exact-permutation check, one cycle plot.

  Adds the Conv7 LaPerm run's checks (seed 0) to ``checks``.
  """
  laperm_dir = runs / 'conv7' / 'laperm'
  if not (laperm_dir / 'metrics.json').exists():
    print(f'skip conv figures: no {laperm_dir}/metrics.json')
    return []
  run = restore.restore(laperm_dir)
  initial, state = run.initials[0], run.arrays[0]['state']
  synced = lp.synchronize(state.params, state.opt_state,
                          vector_axes=run.layout)
  checks['conv_laperm'] = checks_lib.conv_run(laperm_dir, run, synced)
  print('exact permutation of the initial kernels:',
        checks['conv_laperm']['kernels_exact_permutation_of_initial'])
  shown = ('Conv_1', 'Conv_5', 'head')  # 288, 1600 and 128 per vector.
  profiles = {'initial': {name: initial[name]['kernel'] for name in shown},
              'laperm': {name: synced[name]['kernel'] for name in shown}}
  adam_dir = runs / 'conv7' / 'adam'
  if (adam_dir / 'metrics.json').exists():
    adam = restore.restore(adam_dir)
    profiles['adam'] = {name: adam.arrays[0]['state'].params[name]['kernel']
                        for name in shown}
    checks['conv_adam_same_initial_weights'] = checks_lib.same_weights(
        adam.initials[0], initial)
  written = [plots.plot_weight_profiles(
      profiles, out / 'conv_weight_profiles.png', max_vectors=30, dpi=DPI)]
  # Fig. 14: the head's weight vectors have 128 entries, as in the paper.
  kernels_initial = checks_lib.kernels(initial)
  kernels_synced = checks_lib.kernels(synced)
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


def prune_sweep(runs: pathlib.Path, out: pathlib.Path,
                dense_run: pathlib.Path) -> list[pathlib.Path]:
  """Validation accuracy against the kept fraction, at the steps all share.

  The dense run trains longer than the sweep, so the runs are compared at
  the evaluation steps they have in common (right after a sync); the test
  accuracy of the sweep's best weights is drawn beside them.
  """
  points = []
  if (dense_run / 'metrics.json').exists():
    points.append((1.0, restore.read_metrics(dense_run)))
  for run_dir in sorted(runs.glob('conv7-prune-*/laperm')):
    if (run_dir / 'metrics.json').exists():
      metrics = restore.read_metrics(run_dir)
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
  if not (restore.seed_dirs(laperm_dir) and restore.seed_dirs(adam_dir)):
    print(f'skip ViT: no {laperm_dir} and {adam_dir} runs')
    return []
  laperm, adam = restore.restore(laperm_dir), restore.restore(adam_dir)
  axes = checks_lib.kernel_axes(laperm.layout, laperm.initials[0])
  checks = {'layout': {name: list(value) for name, value in axes.items()},
            'checkpoint_step': laperm.step, 'seeds': {}}
  synced = [lp.synchronize(arrays['state'].params, arrays['state'].opt_state,
                           vector_axes=laperm.layout)
            for arrays in laperm.arrays]
  for config, initial, seed_synced, arrays, adam_initial in zip(
      laperm.configs, laperm.initials, synced, laperm.arrays, adam.initials):
    checks['seeds'][config.seed] = checks_lib.derived_layout_seed(
        initial, seed_synced, arrays['best_params'], adam_initial, axes)
    print(f'ViT seed {config.seed}: exact permutations',
          checks['seeds'][config.seed]['kernels_exact_permutation_of_initial'])
  (out / 'vit').mkdir(exist_ok=True)
  path = out / 'vit' / 'checks.json'
  path.write_text(json.dumps(checks, indent=1))
  # Numbered labels: panels are drawn in key order.
  block = lambda params: {
      f'{index} {name}': params['encoder_1']['attention'][name]['kernel']
      for index, name in enumerate(checks_lib.ATTENTION, 1)}
  profiles = {'1 initial': block(laperm.initials[0]),
              '2 laperm': block(synced[0]),
              '3 adam': block(adam.arrays[0]['state'].params)}
  return [path, plots.plot_weight_profiles(
      profiles, out / 'vit' / 'attention_weight_profiles.png',
      vector_axes=lambda key_path, _: (0, 1) if 'out' in jax.tree_util.keystr(
          key_path) else (0,), max_vectors=16, dpi=DPI),
          _plot_head_distances(checks['seeds'], out / 'vit' / (
              'attention_ranking_distance.png'))]


def _plot_head_distances(seeds: dict, path: pathlib.Path) -> pathlib.Path:
  """Ranking distance per head, one panel per attention kernel, a dot per
  seed."""
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


def lm_results(runs: pathlib.Path, out: pathlib.Path) -> list[pathlib.Path]:
  """The language model: checks, samples and two figures into ``out/lm``.

  Every seed's LaPerm kernels are checked as the ViT's are
  (``checks.derived_layout_seed``: exact permutations of the regenerated initial
  fan-in vectors, the same initial weights as AdamW's). The first seed's
  best weights of each optimizer continue :data:`SAMPLE_PROMPT` (see
  :func:`samples`). The figures are drawn from the runs' ``metrics.json``.
  """
  run_dirs = {name: runs / 'lm' / name for name in LM_RUNS}
  if not all(restore.seed_dirs(path) for path in run_dirs.values()):
    print(f'skip LM: no {" and ".join(map(str, run_dirs.values()))} runs')
    return []
  restored = {name: restore.restore(path) for name, path in run_dirs.items()}
  laperm = restored['laperm']
  axes = checks_lib.kernel_axes(laperm.layout, laperm.initials[0])
  checks = {'layout': {name: list(value) for name, value in axes.items()},
            'checkpoint_step': laperm.step, 'seeds': {}}
  for config, initial, arrays, adamw_initial in zip(
      laperm.configs, laperm.initials, laperm.arrays,
      restored['adamw'].initials):
    synced = lp.synchronize(arrays['state'].params, arrays['state'].opt_state)
    checks['seeds'][config.seed] = checks_lib.derived_layout_seed(
        initial, synced, arrays['best_params'], adamw_initial, axes)
    print(f'LM seed {config.seed}: exact permutations',
          checks['seeds'][config.seed]['kernels_exact_permutation_of_initial'])
  (out / 'lm').mkdir(exist_ok=True)
  written = [out / 'lm' / 'checks.json', out / 'lm' / 'samples.json']
  written[0].write_text(json.dumps(checks, indent=1))
  written[1].write_text(json.dumps(samples(restored), indent=1))
  metrics = {name: [restore.read_metrics(folder)
                    for folder in restore.seed_dirs(path)]
             for name, path in run_dirs.items()}
  return written + [_plot_bits_per_byte(metrics, out / 'lm'),
                    _plot_lm_monitor(metrics, out / 'lm')]


LM_RUNS = ('laperm', 'adamw')
SAMPLE_PROMPT = 'The list data type has some more methods. '
SAMPLE = {'length': 300, 'temperature': 0.8, 'key': 0}


def samples(restored: dict[str, restore.Restored]) -> dict[str, Any]:
  """Each run's first seed's best weights continuing :data:`SAMPLE_PROMPT`:
  :data:`SAMPLE`'s bytes at its temperature, drawn with its key."""
  written = {'prompt': SAMPLE_PROMPT, **SAMPLE, 'texts': {}}
  for name, run in restored.items():
    model = models.create(run.configs[0].model, restore.BYTES)
    text = generate.generate(
        model, run.arrays[0]['best_params'], SAMPLE_PROMPT.encode(),
        SAMPLE['length'], jax.random.key(SAMPLE['key']),
        SAMPLE['temperature'])
    written['texts'][name] = {'seed': run.configs[0].seed,
                              'text': text.decode('utf-8', 'replace')}
  return written


def _validation_bits(seeds: list[dict[str, Any]]) -> tuple[Any, Any]:
  """Steps and, per seed, validation bits per byte at each evaluation."""
  records = [[record for record in metrics['history'] if 'val_loss' in record]
             for metrics in seeds]
  steps = np.array([record['step'] for record in records[0]])
  return steps, np.array([[summaries.bits(record['val_loss'])
                           for record in seed] for seed in records])


def _plot_bits_per_byte(metrics: dict[str, list[dict[str, Any]]],
                        directory: pathlib.Path) -> pathlib.Path:
  """Validation bits per byte against steps: the seeds' mean and range."""
  figure = figure_lib.Figure(figsize=(6, 3.6), layout='constrained')
  backend_agg.FigureCanvasAgg(figure)
  ax = figure.subplots()
  for name, seeds in metrics.items():
    steps, bits = _validation_bits(seeds)
    line, = ax.plot(steps, bits.mean(0), 'o-', markersize=3,
                    label=f'{name} ({len(seeds)} seeds)')
    ax.fill_between(steps, bits.min(0), bits.max(0), alpha=0.25,
                    color=line.get_color())
  ax.set_xlabel('step')
  ax.set_ylabel('validation bits per byte')
  ax.legend()
  ax.set_title('Byte-level Transformer on Python docs: mean, min-max of seeds',
               fontsize=9)
  path = directory / 'validation_bits_per_byte.png'
  figure.savefig(path, dpi=DPI)
  return path


def _plot_lm_monitor(metrics: dict[str, list[dict[str, Any]]],
                     directory: pathlib.Path) -> pathlib.Path:
  """The A.3 monitor's ranking distance between evaluations, per kernel."""
  kernels = {name: monitor.by_kernel(monitor.from_json(seeds[0]['monitor']))
             for name, seeds in metrics.items()}
  names = list(next(iter(kernels.values())))
  figure = figure_lib.Figure(figsize=(9, 3.4), layout='constrained')
  backend_agg.FigureCanvasAgg(figure)
  for ax, kernel in zip(figure.subplots(1, len(names), sharey=True), names):
    for run, by_kernel in kernels.items():
      stacked = monitor.stack(by_kernel[kernel][1:])  # From the first eval.
      ax.errorbar(stacked['step'], stacked['distance_mean'],
                  yerr=stacked['distance_std'], fmt='o-', markersize=3,
                  capsize=2, label=run)
    ax.set_title(kernel.removesuffix('/kernel'), fontsize=9)
    ax.set_xlabel('step')
  figure.axes[0].set_ylabel('ranking distance / vector length\n'
                            'since the last evaluation (mean +- std)')
  figure.axes[0].legend()
  path = directory / 'ranking_distance_monitor.png'
  figure.savefig(path, dpi=DPI)
  return path


def draw(runs: pathlib.Path, out: pathlib.Path,
         sections: Sequence[str] = SECTIONS) -> list[pathlib.Path]:
  """Draws and checks ``sections`` of the runs in ``runs`` into ``out``.

  Args:
    runs: The output folder of ``scripts/results.sh`` (one folder per
      study).
    out: Where the figures and ``checks.json`` go (created if missing).
    sections: Some of :data:`SECTIONS`: ``a3`` (the A.3 monitor and
      profiles), ``conv`` (Conv7's profiles, cycles and checks), ``prune``
      (the pruning sweep), ``checks`` (every LaPerm run), ``vit``, ``lm``.

  Returns:
    The paths written.

  Raises:
    ValueError: A section is not one of :data:`SECTIONS`.
  """
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    raise ValueError(f'unknown sections {unknown}; known: {list(SECTIONS)}')
  out.mkdir(parents=True, exist_ok=True)
  checks, written = {}, []
  if 'a3' in sections:
    written += a3_monitor(runs, out, 'a3', 'a3_training_monitor.png',
                          'hidden1 (784x100)')
    written += a3_profiles(runs, out)
  if 'conv' in sections:
    written += conv_figures(runs, out, checks)
  if 'prune' in sections:
    written += prune_sweep(runs, out, runs / 'conv7' / 'laperm')
  if 'checks' in sections:
    checks['all_laperm_runs'] = checks_lib.all_laperm_runs(runs)
  if 'vit' in sections:
    written += vit_results(runs, out)
  if 'lm' in sections:
    written += lm_results(runs, out)
  if checks:
    path = out / 'checks.json'
    path.write_text(json.dumps(checks, indent=1))
    written.append(path)
  return written
