"""Copies the run files of every study into the committed results folder.

``scripts/results.sh`` trains each study into ``runs/results/<study>/`` (its
``--out`` folder). :func:`collect` copies each run's ``summary.json`` and
every seed's ``metrics.json`` to ``docs/results/<study>/``, leaving out
checkpoints and figures, the A.3 monitor's float32 statistics written in
their shortest exact form. The studies are those the tables declare
(``tables.TABLES``); the tables are rendered from those copies alone.
"""

import json
import pathlib

import numpy as np

from experiments.results import tables


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
    runs: The folder holding one ``--out`` folder per study (the studies
      of ``tables.declared()``; those missing are skipped).
    results: Where the copies go, one folder per study.

  Returns:
    The studies copied, in the order of ``tables.declared()``.
  """
  copied = []
  for study in tables.declared()[0]:
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
