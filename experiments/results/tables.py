"""The results tables of docs/RESULTS.md and README.md, from docs/results/.

Each table is a function of its inputs (``inputs.Inputs``: the committed run
files under ``docs/results/<study>/``, each run's ``summary.json`` and every
seed's ``metrics.json``, as ``python -m experiments`` writes them, and the
checks beside them) that returns the table as Markdown, or None when none
of its runs are there. :data:`TABLES` names them as the pages' markers do
(``pages.py``) and declares what each reads: a table reads nothing else,
and every file under ``docs/results/`` is one a table declares or one that
``docs/results/README.md`` lists. A new study's files are checked once a
table declares the study. Statistics are computed here from the per-seed
files.

Statistics over seeds: mean +- standard deviation (ddof 0), min-max, and the
95% confidence interval of the mean (Student's t with n - 1 degrees of
freedom, ddof-1 standard deviation).
"""

import dataclasses
import pathlib
import re
from statistics import fmean as mean
from statistics import pstdev as std
from typing import Callable, Optional, Sequence

from scipy import stats

from experiments import summaries
from experiments.results import inputs

# The Conv7 studies of 10 epochs, whose seeds and runs are shown together.
CONV7 = ('conv7', 'conv7-seed-1', 'conv7-seed-2', 'conv7-lookahead')
# The paper's MNIST numbers, for reference (Fashion-MNIST is harder).
PAPER = {'f1': '85.46%', 'f2': '~53%', 'f2-size-aware': '78.14%',
         'conv7': '99.72%'}
# The exact-permutation checks (``python -m experiments.results figures``).
CHECKS = 'checks.json'


def pct(value: float) -> str:
  """``0.5953`` as ``59.5%``."""
  return f'{100 * value:.1f}%'


def spread(values: Sequence[float], *, bold: bool = False,
           with_range: bool = True) -> str:
  """``61.6 +- 4.5% (53.3-66.9)``, or the value alone for one seed."""
  if len(values) == 1:
    text = pct(values[0])
    return f'**{text}**' if bold else text
  text = f'{100 * mean(values):.1f} +- {100 * std(values):.1f}%'
  if bold:
    text = f'**{text}**'
  if with_range:
    text += f' ({100 * min(values):.1f}-{100 * max(values):.1f})'
  return text


def ci_text(values: Sequence[float]) -> str:
  """The 95% confidence interval of the mean (Student's t)."""
  if len(values) < 2:
    return '-'
  low, high = stats.t.interval(0.95, len(values) - 1, loc=mean(values),
                               scale=stats.sem(values))
  return f'{100 * low:.1f}-{100 * high:.1f}%'


def seeds_text(run: inputs.Run) -> str:
  """``20 (0-19)`` for consecutive seeds from 0, else ``2 (0, 1)``."""
  seeds = [metrics['seed'] for metrics in run.seeds]
  if seeds == list(range(len(seeds))) and len(seeds) > 2:
    return f'{len(seeds)} (0-{len(seeds) - 1})'
  return f'{len(seeds)} ({", ".join(map(str, seeds))})'


def table(header: Sequence[str], rows: Sequence[Sequence[str]],
          right: Sequence[bool]) -> str:
  """A Markdown table; ``right`` aligns each column right or left."""
  lines = ['| ' + ' | '.join(header) + ' |',
           '| ' + ' | '.join('---:' if r else '---' for r in right) + ' |']
  lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
  return '\n'.join(lines)


def validations(metrics: dict) -> dict[int, float]:
  """A seed's validation accuracy by step."""
  return {record['step']: record['val_accuracy']
          for record in metrics['history'] if 'val_accuracy' in record}


def seconds(run: inputs.Run) -> str:
  """The run's mean seconds per seed, as a whole number."""
  return f'{mean(run.values("seconds")):,.0f}'


# Tables. Each takes the results folder and returns markdown, or None when
# none of its runs are there.


def weight_agnostic(results: inputs.Inputs) -> Optional[str]:
  rows = []
  for study, label in (('f1', '`f1` (60% nonzero, 0.08)'),
                       ('f2', '`f2` (10% nonzero, 0.03)'),
                       ('f2-size-aware', '`f2-size-aware` (1/15, 1/7, 1/3)'),
                       ('f1-zscore', '`f1`, z-scored pixels')):
    runs = results.runs(study)
    if 'laperm' not in runs:
      continue
    run = runs['laperm']
    best = run.values('test_accuracy_of_best')
    rows.append([label, str(run.config['epochs']), seeds_text(run),
                 spread(run.values('best_val_accuracy'), with_range=False),
                 spread(best, bold=True), ci_text(best),
                 spread(run.values('final_test_accuracy')),
                 f'{mean(run.values("seconds")) * len(run.seeds):,.0f}',
                 PAPER.get(study, '')])
  if not rows:
    return None
  return table(['preset', 'epochs', 'seeds', 'val acc', 'test acc (best)',
                '95% CI of the mean', 'test acc (final)',
                'seconds (all seeds)', 'paper (MNIST)'], rows,
               [False, True, True, True, True, True, True, True, True])


def size_aware_against_uniform(results: inputs.Inputs) -> Optional[str]:
  uniform = results.runs('f2').get('laperm')
  size_aware = results.runs('f2-size-aware').get('laperm')
  if uniform is None or size_aware is None:
    return None
  a = size_aware.values('test_accuracy_of_best')
  b = uniform.values('test_accuracy_of_best')
  welch = stats.ttest_ind(a, b, equal_var=False)
  low, high = welch.confidence_interval(0.95)
  difference = mean(a) - mean(b)
  return table(
      ['comparison (test acc, best weights)', 'difference of the means',
       '95% CI of the difference', "Welch's t", 'p (two-sided)'],
      [['`f2-size-aware` minus `f2`', f'{100 * difference:+.1f} points',
        f'{100 * low:+.1f} to {100 * high:+.1f} points', f'{welch.statistic:.2f}', f'{welch.pvalue:.3f}']],
      [False, True, True, True, True])


def best_steps(results: inputs.Inputs) -> Optional[str]:
  rows = []
  for study in ('f1', 'f2', 'f2-size-aware'):
    run = results.runs(study).get('laperm')
    if run is None:
      continue
    steps = run.values('best_step')
    first_sync = run.config['optimizer']['sync_period']
    final_gap = [b - f for b, f in zip(run.values('test_accuracy_of_best'),
                                       run.values('final_test_accuracy'))]
    rows.append([f'`{study}`', f'{min(steps):,}-{max(steps):,}',
                 f'{sum(s == first_sync for s in steps)} of {len(steps)}',
                 f'{100 * mean(final_gap):.1f} points '
                 f'({100 * min(final_gap):.1f} to '
                 f'{100 * max(final_gap):.1f})'])
  if not rows:
    return None
  return table(['preset', 'best step (range over seeds)',
                'seeds best right after the first sync',
                'best minus final test acc (mean, range)'], rows,
               [False, True, True, True])


def a3(results: inputs.Inputs) -> Optional[str]:
  runs = results.runs('a3')
  rows = []
  for name in ('sgd', 'adam', 'adam-dropout', 'adam-l2'):
    if name not in runs:
      continue
    metrics = runs[name].seeds[0]
    rows.append([f'`{name}`', str(metrics['best_epoch']),
                 pct(metrics['best_val_accuracy']),
                 f'**{pct(metrics["test_accuracy_of_best"])}**',
                 pct(metrics['final_test_accuracy']),
                 f'{metrics["seconds"]:,.0f}'])
  if not rows:
    return None
  return table(['run (seed 0)', 'best epoch', 'val acc', 'test acc (best)',
                'test acc (final)', 'seconds'], rows,
               [False, True, True, True, True, True])


def _by_epoch(metrics: dict) -> dict[int, dict]:
  return {record['epoch']: record for record in metrics['monitor']}


def _zero_vectors(record: dict) -> int:
  """Weight vectors whose entries all lie within 1e-3 (dead units)."""
  return sum(high - low < 1e-3 for low, high in zip(record['min'],
                                                    record['max']))


def a3_monitor(results: inputs.Inputs) -> Optional[str]:
  """The first kernel per setting: reordering, spread, validation loss."""
  runs = results.runs('a3')
  rows = []
  for name in ('sgd', 'adam', 'adam-dropout', 'adam-l2'):
    if name not in runs or not runs[name].seeds[0].get('monitor'):
      continue
    epochs = _by_epoch(runs[name].seeds[0])
    last = epochs[max(epochs)]
    phases = ' / '.join(
        f'{100 * mean([epochs[e]["distance_mean"] for e in range(a, b + 1)]):.2f}'
        for a, b in ((2, 10), (11, 20), (21, 30)))
    sd, sd_epoch = max((epochs[e]['distance_std'], e) for e in epochs if e)
    loss, loss_epoch = min((epochs[e]['val_loss'], e) for e in epochs if e)
    rows.append([
        f'`{name}`', pct(epochs[1]['distance_mean']), phases + '%',
        f'{100 * sd:.1f}% ({sd_epoch})',
        f'{mean(last["p15"]):+.3f} / {mean(last["p85"]):+.3f}',
        f'{mean(last["min"]):+.2f} / {mean(last["max"]):+.2f}',
        ' / '.join(str(_zero_vectors(epochs[e])) for e in (10, 20, 30)),
        f'{loss:.3f} ({loss_epoch})', f'{last["val_loss"]:.3f}'])
  if not rows:
    return None
  return table(['run', 'ranking distance, epoch 1', 'mean ranking distance, '
                'epochs 2-10 / 11-20 / 21-30', 'largest SD (epoch)',
                'p15 / p85 after epoch 30', 'min / max after epoch 30',
                'all-zero vectors after epoch 10 / 20 / 30',
                'lowest val loss (epoch)', 'val loss after epoch 30'], rows,
               [False] + [True] * 8)


def a3_initial(results: inputs.Inputs) -> Optional[str]:
  """The first kernel before training: the reference for a3-monitor."""
  runs = results.runs('a3')
  if 'adam' not in runs or not runs['adam'].seeds[0].get('monitor'):
    return None
  start = _by_epoch(runs['adam'].seeds[0])[0]
  return table(['first kernel at initialization (all four runs)',
                'p15 / p85 (mean over vectors)', 'min / max (mean)',
                'val loss'],
               [['784x100, He-uniform',
                 f'{mean(start["p15"]):+.3f} / {mean(start["p85"]):+.3f}',
                 f'{mean(start["min"]):+.3f} / {mean(start["max"]):+.3f}',
                 f'{start["val_loss"]:.2f}']], [False, True, True, True])


CONV7_STEPS = (1200, 3600, 6000, 8400, 10800)


def conv7(results: inputs.Inputs) -> Optional[str]:
  runs = results.runs(*CONV7)
  rows = []
  for name in ('laperm', 'adam', 'lookahead'):
    if name not in runs:
      continue
    run = runs[name]
    curves = [validations(metrics) for metrics in run.seeds]
    last_step = max(curves[0])
    points = ' / '.join(
        f'{100 * mean([curve[step] for curve in curves]):.1f}'
        for step in CONV7_STEPS if all(step in curve for curve in curves))
    label = {'laperm': '`laperm`, k = 20 (preset)', 'adam': '`adam`',
             'lookahead': '`lookahead` (Adam inside)'}[name]
    rows.append([label, seeds_text(run), points + '%',
                 pct(mean([curve[last_step] for curve in curves])),
                 spread(run.values('best_val_accuracy'), with_range=False),
                 spread(run.values('test_accuracy_of_best'), bold=True),
                 spread(run.values('final_test_accuracy')), seconds(run)])
  if not rows:
    return None
  return table(['run', 'seeds', 'val acc after ' + ' / '.join(
      f'{s:,}' for s in CONV7_STEPS) + ' steps (mean)',
                'after the last (mean)', 'best val', 'test acc (best)',
                'test acc (final)', 'run time per seed (s)'], rows,
               [False, True, True, True, True, True, True, True])


def conv7_k1200(results: inputs.Inputs) -> Optional[str]:
  rows = []
  for study, label in (('conv7-4epochs', 'k = 20 (preset)'),
                       ('conv7-k1200', "k = 1200 (the authors' README)")):
    run = results.runs(study).get('laperm')
    if run is None:
      continue
    metrics = run.seeds[0]
    curve = validations(metrics)
    shown = sorted(curve)
    rows.append([label, ' / '.join(f'{100 * curve[s]:.1f}' for s in shown)
                 + f'% (steps {", ".join(f"{s:,}" for s in shown)})',
                 f'{pct(metrics["best_val_accuracy"])} '
                 f'({metrics["best_step"]:,})',
                 pct(metrics['test_accuracy_of_best']),
                 pct(metrics['final_test_accuracy'])
                 + f' (step {max(curve):,})'])
  if len(rows) < 2:
    return None
  return table(['LaPerm on Conv7, seed 0, 4 epochs', 'validation acc',
                'best val (step)', 'test acc (best)', 'test acc (final)'],
               rows,
               [False, True, True, True, True])


def conv7_prune(results: inputs.Inputs) -> Optional[str]:
  rows = []
  dense = results.runs('conv7').get('laperm')
  if dense is not None:
    rows.append(['100% (the seed-0 run above)',
                 pct(validations(dense.seeds[0])[1200]), '-', '-', '-', '-'])
  for rate in ('0.5', '0.7', '0.9'):
    run = results.runs(f'conv7-prune-{rate}').get('laperm')
    if run is None:
      continue
    metrics = run.seeds[0]
    curve = validations(metrics)
    rows.append([f'{100 - round(100 * float(rate))}%',
                 pct(curve.get(1200, float('nan'))),
                 f'{pct(curve[max(curve)])} ({max(curve):,})',
                 f'**{pct(metrics["test_accuracy_of_best"])}**',
                 pct(metrics['final_test_accuracy']),
                 f'{metrics["seconds"]:,.0f}'])
  if len(rows) < 2:
    return None
  return table(['kept fraction', 'val acc after 1,200 steps',
                'after the last (step)', 'test acc (best)',
                'test acc (final)', 'run time (s)'], rows,
               [True, True, True, True, True, True])


def vit(results: inputs.Inputs) -> Optional[str]:
  runs = results.runs('vit')
  rows = []
  for name, label in (('laperm', '`laperm` (k = 100, derived layout)'),
                      ('adam', '`adam`')):
    if name not in runs:
      continue
    run = runs[name]
    rows.append([label, seeds_text(run),
                 spread(run.values('best_val_accuracy')),
                 spread(run.values('test_accuracy_of_best'), bold=True),
                 spread(run.values('final_test_accuracy')),
                 ' / '.join(f'{s:,}' for s in run.values('best_step')),
                 seconds(run)])
  if not rows:
    return None
  return table(['run', 'seeds', 'best val', 'test acc (best weights)',
                'test acc (final)', 'best at step', 'run time per seed (s)'],
               rows, [False, True, True, True, True, False, True])


def vit_trials(results: inputs.Inputs) -> Optional[str]:
  rows = []
  for study, label in (('vit-k20', '20'), ('vit-k100', '**100** (kept)'),
                       ('vit-k400', '400'), ('vit-k1000', '1000'),
                       ('vit-also-permute', '100, LayerNorm scales, position '
                        'embedding and class token permuted too')):
    run = results.runs(study).get('laperm')
    if run is None:
      continue
    metrics = run.seeds[0]
    rows.append([label, f'{pct(metrics["best_val_accuracy"])} '
                 f'({metrics["best_step"]:,})',
                 pct(metrics['test_accuracy_of_best']),
                 f'{metrics["seconds"]:,.0f}'])
  if not rows:
    return None
  return table(['k (3 epochs, seed 0)', 'best val (step)', 'test acc (best)',
                'run time (s)'], rows, [False, True, True, True])


def bits_spread(nats: Sequence[float], *, bold: bool = False,
                with_range: bool = True) -> str:
  """Losses in nats as bits per byte: ``2.345 +- 0.012 (2.331-2.360)``."""
  bits = [summaries.bits(value) for value in nats]
  text = (f'{bits[0]:.3f}' if len(bits) == 1 else
          f'{mean(bits):.3f} +- {std(bits):.3f}')
  if bold:
    text = f'**{text}**'
  if with_range and len(bits) > 1:
    text += f' ({min(bits):.3f}-{max(bits):.3f})'
  return text


def lm(results: inputs.Inputs) -> Optional[str]:
  runs = results.runs('lm')
  rows = []
  for name, label in (('laperm', '`laperm` (k = {k}, derived layout, '
                                 'embeddings permuted)'),
                      ('adamw', '`adamw` (learning rate {lr})')):
    if name not in runs:
      continue
    run = runs[name]
    optimizer = run.config['optimizer']
    rows.append([label.format(k=optimizer['sync_period'],
                              lr=optimizer['learning_rate']),
                 seeds_text(run), bits_spread(run.values('best_val_loss')),
                 bits_spread(run.values('test_loss_of_best'), bold=True),
                 bits_spread(run.values('final_test_loss')),
                 ' / '.join(f'{s:,}' for s in run.values('best_step')),
                 seconds(run)])
  if not rows:
    return None
  return table(['run', 'seeds', 'best val (bits/byte)',
                'test bits/byte (best weights)', 'test bits/byte (final)',
                'best at step', 'run time per seed (s)'],
               rows, [False, True, True, True, True, False, True])


LM_TRIALS = {'lm-adamw-lr1e-3': ('adamw', 'AdamW, learning rate **1e-3** '
                                 '(kept)'),
             'lm-adamw-lr3e-3': ('adamw', 'AdamW, learning rate 3e-3'),
             'lm-laperm-k20': ('laperm', 'LaPerm, k = 20'),
             'lm-laperm-k100': ('laperm', 'LaPerm, k = 100'),
             'lm-laperm-k100-also': ('laperm', 'LaPerm, **k = 100, embeddings '
                                     'and LayerNorm scales permuted too** '
                                     '(kept)')}


def lm_trials(results: inputs.Inputs) -> Optional[str]:
  rows = []
  for study, (name, label) in LM_TRIALS.items():
    run = results.runs(study).get(name)
    if run is None:
      continue
    metrics = run.seeds[0]
    rows.append([label, bits_spread([metrics['best_val_loss']]),
                 bits_spread([metrics['test_loss_of_best']]),
                 f'{metrics["seconds"]:,.0f}'])
  if not rows:
    return None
  return table(['trial (300 steps, seed 0)', 'val bits/byte',
                'test bits/byte', 'run time (s)'], rows,
               [False, True, True, True])


LM_SAMPLES = 'lm/samples.json'
LM_CHECKS = 'lm/checks.json'


def lm_samples(results: inputs.Inputs) -> Optional[str]:
  samples = results.file(LM_SAMPLES)
  if samples is None:
    return None
  lines = [f'Prompt `{samples["prompt"]}`, {samples["length"]} bytes at '
           f'temperature {samples["temperature"]}, key '
           f'`jax.random.key({samples["key"]})`:']
  for name, written in samples['texts'].items():
    lines += ['', f'{name} (seed {written["seed"]}, best weights):', '',
              '```text', samples['prompt'] + written['text'], '```']
  return '\n'.join(lines)


def lm_checks(results: inputs.Inputs) -> Optional[str]:
  checks = results.file(LM_CHECKS)
  if checks is None:
    return None
  rows = []
  for seed, seed_checks in checks['seeds'].items():
    exact = seed_checks['kernels_exact_permutation_of_initial']
    rows.append([seed, f'{sum(exact.values())} of {len(exact)}',
                 'yes' if seed_checks[
                     'best_kernels_exact_permutation_of_initial'] else 'NO',
                 'yes' if seed_checks['adam_same_initial_weights'] else 'NO'])
  return table(['seed', 'kernels exactly permuted (final, synced)',
                'best weights too', "AdamW's initial weights equal"], rows,
               [True, True, True, True])


def _checks(results: inputs.Inputs) -> dict:
  return results.file(CHECKS) or {}


def permutation_checks(results: inputs.Inputs) -> Optional[str]:
  """Per study: how many LaPerm runs are exact permutations of their init."""
  checked: dict[str, list[bool]] = {}
  for name, check in _checks(results).get('all_laperm_runs', {}).items():
    study = pathlib.PurePosixPath(name.split(' seed ')[0]).parent.name
    checked.setdefault(study, []).append(
        check['all_kernels_exact_permutation'])
  if not checked:
    return None
  return table(['study', 'LaPerm runs checked (seeds)',
                'every kernel an exact permutation of its initial weights'],
               [[f'`{study}`', str(len(flags)), f'{sum(flags)} of {len(flags)}']
                for study, flags in sorted(checked.items())],
               [False, True, True])


def _kernel_name(path: str) -> str:
  return '/'.join(re.findall(r"\['(\w+)'\]", path)[:-1])


def conv7_moved(results: inputs.Inputs) -> Optional[str]:
  runs = _checks(results).get('all_laperm_runs', {})
  rows = []
  for study, label in (('conv7', 'k = 20, 10 epochs'),
                       ('conv7-k1200', 'k = 1200, 4 epochs')):
    check = runs.get(f'runs/results/{study}/laperm seed 0')
    if check is None:
      continue
    moved = check['fraction_moved']
    rows.append([label] + [pct(value) for value in moved.values()])
    names = [_kernel_name(path) for path in moved]
  if not rows:
    return None
  return table(['LaPerm on Conv7, seed 0'] + [f'`{n}`' for n in names], rows,
               [False] + [True] * len(names))


def conv7_cycles(results: inputs.Inputs) -> Optional[str]:
  cycles = _checks(results).get('conv_laperm_cycles')
  if cycles is None:
    return None
  def span(values, percent=False):
    show = pct if percent else str
    return f'{show(min(values))}-{show(max(values))}'
  return table(['kernel', 'vectors', 'entries per vector', 'entries moved',
                'cycles per vector', 'longest cycle (entries)'],
               [[f'`{_kernel_name(cycles["kernel"])}`',
                 str(len(cycles['num_cycles'])),
                 str(cycles['vector_length']),
                 span(cycles['fraction_moved'], percent=True),
                 span(cycles['num_cycles']), span(cycles['longest_cycle'])]],
               [False, True, True, True, True, True])


def summary(results: inputs.Inputs) -> Optional[str]:
  rows = []
  for study, label in (('f1', 'F1, LaPerm (5.5)'),
                       ('f2', 'F2, LaPerm, 90% zeros (5.5)'),
                       ('f2-size-aware', 'F2, LaPerm, size-aware 1/15, 1/7, '
                        '1/3 nonzero (A.5.0)'),
                       ('f1-zscore', 'F1 on z-scored pixels')):
    run = results.runs(study).get('laperm')
    if run is not None:
      rows.append([label, f'{run.config["epochs"]} epochs, k = '
                   f'{run.config["optimizer"]["sync_period"]}',
                   str(len(run.seeds)),
                   spread(run.values('test_accuracy_of_best')),
                   spread(run.values('final_test_accuracy'),
                          with_range=False),
                   PAPER.get(study, '')])
  a3_runs = results.runs('a3')
  names = [n for n in ('sgd', 'adam', 'adam-dropout', 'adam-l2')
           if n in a3_runs]
  if names:
    rows.append(['A.3 MLP: ' + ' / '.join(names), '30 epochs', '1',
                 ' / '.join(pct(a3_runs[n].seeds[0]['test_accuracy_of_best'])
                            for n in names),
                 ' / '.join(pct(a3_runs[n].seeds[0]['final_test_accuracy'])
                            for n in names), '(analysis only)'])
  conv_runs = results.runs(*CONV7)
  for name, label in (('laperm', 'Conv7, LaPerm k = 20 (5.1)'),
                      ('adam', 'Conv7, Adam'),
                      ('lookahead', 'Conv7, Lookahead')):
    if name in conv_runs:
      run = conv_runs[name]
      rows.append([label, f'all data, augmented, {run.config["epochs"]} of '
                   '45 epochs', str(len(run.seeds)),
                   spread(run.values('test_accuracy_of_best')),
                   spread(run.values('final_test_accuracy'),
                          with_range=False),
                   PAPER['conv7'] if name == 'laperm' else ''])
  k1200 = results.runs('conv7-k1200').get('laperm')
  if k1200 is not None:
    rows.append(["Conv7, LaPerm k = 1200 (the authors' README)",
                 f'all data, augmented, {k1200.config["epochs"]} epochs', '1',
                 pct(k1200.seeds[0]['test_accuracy_of_best']),
                 pct(k1200.seeds[0]['final_test_accuracy']), ''])
  pruned = [results.runs(f'conv7-prune-{rate}').get('laperm')
            for rate in ('0.5', '0.7', '0.9')]
  if all(pruned):
    rows.append(['Conv7, LaPerm k = 20, kept 50 / 30 / 10% of each kernel '
                 '(5.4)', f'all data, augmented, '
                 f'{pruned[0].config["epochs"]} epochs', '1',
                 ' / '.join(pct(r.seeds[0]['test_accuracy_of_best'])
                            for r in pruned),
                 ' / '.join(pct(r.seeds[0]['final_test_accuracy'])
                            for r in pruned), '(CIFAR-10 nets only)'])
  vit_runs = results.runs('vit')
  for name, label in (('laperm', 'ViT, LaPerm k = 100 (not in the paper)'),
                      ('adam', 'ViT, Adam')):
    if name in vit_runs:
      run = vit_runs[name]
      rows.append([label, f'{run.config["epochs"]} epochs',
                   str(len(run.seeds)),
                   spread(run.values('test_accuracy_of_best')),
                   spread(run.values('final_test_accuracy'),
                          with_range=False), ''])
  if not rows:
    return None
  return table(['experiment', 'setting', 'seeds', 'test acc (best weights)',
                'test acc (final)', 'paper (MNIST)'], rows,
               [False, False, True, True, True, True])


def readme(results: inputs.Inputs) -> Optional[str]:
  """The README's short table: LaPerm and what it is compared with."""
  rows = []
  for study, label in (('f1', 'F1 weight-agnostic (5.5)'),
                       ('f2', 'F2 weight-agnostic, 90% zeros (5.5)'),
                       ('f2-size-aware', 'F2 size-aware (A.5.0)')):
    run = results.runs(study).get('laperm')
    if run is None:
      continue
    best = run.values('test_accuracy_of_best')
    rows.append([label, f'{run.config["epochs"]} epochs, k = '
                 f'{run.config["optimizer"]["sync_period"]}',
                 str(len(run.seeds)), spread(best, with_range=False),
                 f'95% CI of the mean {ci_text(best)}'])
  for studies, label, setting in (
      (CONV7, 'Conv7 (5.1), k = 20',
       'all data, augmented, {epochs} of 45 epochs'),
      (('vit',), 'ViT (not in the paper), k = 100, layout derived from the '
       'model', '{epochs} epochs')):
    runs = results.runs(*studies)
    if 'laperm' not in runs:
      continue
    others = ', '.join(
        f'{name.capitalize()} {spread(runs[name].values("test_accuracy_of_best"), with_range=False)}'
        + (f' ({len(runs[name].seeds)} seed'
           f'{"s" if len(runs[name].seeds) > 1 else ""})'
           if len(runs[name].seeds) != len(runs['laperm'].seeds) else '')
        for name in ('adam', 'lookahead') if name in runs)
    rows.append([label, setting.format(**runs['laperm'].config),
                 str(len(runs['laperm'].seeds)),
                 spread(runs['laperm'].values('test_accuracy_of_best'),
                        with_range=False), others])
  rows += _lm_readme_rows(results)
  pruned = [results.runs(f'conv7-prune-{rate}').get('laperm')
            for rate in ('0.5', '0.7', '0.9')]
  if all(pruned):
    rows.append(['Conv7 pruned (5.4), keep 50 / 30 / 10%',
                 f'all data, augmented, {pruned[0].config["epochs"]} epochs',
                 '1', ' / '.join(pct(r.seeds[0]['test_accuracy_of_best'])
                                 for r in pruned), ''])
  if not rows:
    return None
  return table(['experiment', 'setting', 'seeds', 'LaPerm', 'beside it'],
               rows, [False, False, True, True, False])


def _lm_readme_rows(results: inputs.Inputs) -> list[list[str]]:
  """The language model's row of the README's table, in bits per byte."""
  runs = results.runs('lm')
  if 'laperm' not in runs or 'adamw' not in runs:
    return []
  laperm, adamw = runs['laperm'], runs['adamw']
  steps = laperm.config['max_examples'] // laperm.config['batch_size']
  return [[f'Byte-level Transformer LM (not in the paper), k = '
           f'{laperm.config["optimizer"]["sync_period"]}: test bits per '
           'byte, lower is better', f'{steps:,} steps on Python\'s docs',
           str(len(laperm.seeds)),
           bits_spread(laperm.values('test_loss_of_best'), with_range=False),
           'AdamW ' + bits_spread(adamw.values('test_loss_of_best'),
                                  with_range=False)]]


@dataclasses.dataclass(frozen=True)
class Table:
  """A table of the pages and what it is rendered from.

  Attributes:
    render: The table from its inputs, or None when none of its runs are
      there.
    studies: The study folders it reads (their ``summary.json`` and the
      ``metrics.json`` files it names); absent ones are skipped.
    files: The other files it reads, relative to the results folder.
  """

  render: Callable[[inputs.Inputs], Optional[str]]
  studies: tuple[str, ...] = ()
  files: tuple[str, ...] = ()


_WEIGHT_AGNOSTIC = ('f1', 'f2', 'f2-size-aware', 'f1-zscore')
_PRUNED = ('conv7-prune-0.5', 'conv7-prune-0.7', 'conv7-prune-0.9')
_VIT_TRIALS = ('vit-k20', 'vit-k100', 'vit-k400', 'vit-k1000',
               'vit-also-permute')

TABLES: dict[str, Table] = {
    'summary': Table(summary, (*_WEIGHT_AGNOSTIC, 'a3', *CONV7, 'conv7-k1200',
                               *_PRUNED, 'vit')),
    'weight-agnostic': Table(weight_agnostic, _WEIGHT_AGNOSTIC),
    'size-aware-vs-uniform': Table(size_aware_against_uniform,
                                   ('f2', 'f2-size-aware')),
    'best-steps': Table(best_steps, ('f1', 'f2', 'f2-size-aware')),
    'a3': Table(a3, ('a3',)),
    'a3-monitor': Table(a3_monitor, ('a3',)),
    'a3-initial': Table(a3_initial, ('a3',)),
    'conv7': Table(conv7, CONV7),
    'conv7-k1200': Table(conv7_k1200, ('conv7-4epochs', 'conv7-k1200')),
    'conv7-prune': Table(conv7_prune, ('conv7', *_PRUNED)),
    'permutation-checks': Table(permutation_checks, files=(CHECKS,)),
    'conv7-moved': Table(conv7_moved, files=(CHECKS,)),
    'conv7-cycles': Table(conv7_cycles, files=(CHECKS,)),
    'vit': Table(vit, ('vit',)),
    'vit-trials': Table(vit_trials, _VIT_TRIALS),
    'lm': Table(lm, ('lm',)),
    'lm-trials': Table(lm_trials, tuple(LM_TRIALS)),
    'lm-samples': Table(lm_samples, files=(LM_SAMPLES,)),
    'lm-checks': Table(lm_checks, files=(LM_CHECKS,)),
    'results-table': Table(readme, (*_WEIGHT_AGNOSTIC[:3], *CONV7, 'vit',
                                    'lm', *_PRUNED)),
}


def declared() -> tuple[list[str], list[str]]:
  """The studies and the other files that the tables declare, each once."""
  studies = {study: None for table in TABLES.values()
             for study in table.studies}
  files = {file: None for table in TABLES.values() for file in table.files}
  return list(studies), list(files)
