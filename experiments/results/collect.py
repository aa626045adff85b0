"""Copies the run files of every study into the committed results folder.

``scripts/results.sh`` trains each study into ``runs/results/<study>/`` (its
``--out`` folder). :func:`collect` copies each run's ``summary.json`` and
every seed's ``metrics.json`` to ``docs/results/<study>/``, leaving out
checkpoints and figures, the A.3 monitor's float32 statistics written in
their shortest exact form. The tables are rendered from those copies alone.
"""

import json
import pathlib

import numpy as np

# The studies of scripts/results.sh, each the --out folder of one command.
STUDIES = ('f1', 'f1-zscore', 'f2', 'f2-size-aware', 'a3', 'conv7',
           'conv7-seed-1', 'conv7-seed-2', 'conv7-lookahead', 'conv7-4epochs',
           'conv7-k1200',
           'conv7-prune-0.5', 'conv7-prune-0.7', 'conv7-prune-0.9', 'vit',
           'vit-k20', 'vit-k100', 'vit-k400', 'vit-k1000', 'vit-also-permute')


def _thin(text: str) -> str:
  """A run file with the monitor's float32 statistics in their shortest form.

  The monitor's per-vector statistics are float32 values written as float64
  reprs (17 digits); the shortest float32 repr reads back to the same
  float32, so nothing is lost but size.
  """
  content = json.loads(text)
  for entry in content.get('monitor', []):
    for name, values in entry.items():
      if isinstance(values, list):
        entry[name] = [float(str(np.float32(value))) for value in values]
  return json.dumps(content, indent=1)


def collect(runs: pathlib.Path, results: pathlib.Path) -> list[str]:
  """Copies each study's summary and metrics files from ``runs``.

  Args:
    runs: The folder holding one ``--out`` folder per study (those of
      :data:`STUDIES` that are missing are skipped).
    results: Where the copies go, one folder per study.

  Returns:
    The studies copied, in the order of :data:`STUDIES`.
  """
  copied = []
  for study in STUDIES:
    source = runs / study
    if not source.is_dir():
      continue
    paths = [path for path in [source / 'summary.json', *sorted(
        source.glob('*/metrics.json')), *sorted(
            source.glob('*/seed-*/metrics.json'))] if path.exists()]
    for path in paths:
      destination = results / study / path.relative_to(source)
      destination.parent.mkdir(parents=True, exist_ok=True)
      destination.write_text(_thin(path.read_text()))
    if paths:
      copied.append(study)
  return copied
