"""Presets: the paper's experiments as ml_collections configs.

A preset is a base config plus named runs, each a few overrides of it (e.g.
LaPerm beside Adam). ``get(name)`` returns a fresh :class:`Preset`.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import ml_collections


class Preset(NamedTuple):
  """An experiment: what it shows, its config, and its side-by-side runs.

  Attributes:
    description: One line on what the experiment reproduces.
    config: Settings shared by all runs.
    runs: Run name -> overrides of ``config`` as flattened keys
      (``{'optimizer.name': 'adam'}``), applied in order.
    prune_overrides: Further overrides when the command line asks to prune
      (e.g. ResNet50's k = 800 for pruned nets).
  """

  description: str
  config: ml_collections.ConfigDict
  runs: dict[str, dict[str, Any]]
  prune_overrides: dict[str, Any] = {}


def _registry() -> dict[str, Callable[[], Preset]]:
  # Imported here: the preset modules import `Preset` from this package.
  from experiments.configs import a3, conv, demo, resnet, vit, weight_agnostic  # pylint: disable=g-import-not-at-top
  return {
      'demo': demo.demo,
      'a3-sgd': a3.sgd,
      'a3-adam': a3.adam,
      'a3-dropout': a3.dropout,
      'a3-l2': a3.l2,
      'a3-all': a3.all_settings,
      'conv7': conv.conv7,
      'conv2': conv.conv2,
      'conv4': conv.conv4,
      'conv13': conv.conv13,
      'resnet50': resnet.resnet50,
      'prune-sweep': resnet.prune_sweep,
      'gamma-beta': resnet.gamma_beta,
      'f1': weight_agnostic.f1,
      'f2': weight_agnostic.f2,
      'f2-size-aware': weight_agnostic.f2_size_aware,
      'vit': vit.vit,
  }


def names() -> list[str]:
  """Names of all presets."""
  return list(_registry())


def get(name: str) -> Preset:
  """A fresh copy of the preset called ``name``."""
  registry = _registry()
  if name not in registry:
    raise ValueError(f'Unknown preset {name!r}; known: {", ".join(registry)}.')
  return registry[name]()
