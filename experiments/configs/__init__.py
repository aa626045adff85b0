"""Presets: the paper's experiments as ml_collections configs.

A preset is a base config plus named runs, each a few overrides of it (e.g.
LaPerm beside Adam). ``get(name)`` returns a fresh :class:`Preset`; its
``run_config`` gives one run's config, shrunk for a smoke run on request.
"""

from collections.abc import Callable

from experiments.configs import a3
from experiments.configs import base
from experiments.configs import conv
from experiments.configs import demo
from experiments.configs import lm
from experiments.configs import resnet
from experiments.configs import vit
from experiments.configs import weight_agnostic

Preset = base.Preset
fit_validation = base.fit_validation
ValidationSizeError = base.ValidationSizeError
parse_overrides = base.parse_overrides
run_seeds = base.run_seeds

_REGISTRY: dict[str, Callable[[], Preset]] = {
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
    'lm': lm.lm,
}


def names() -> list[str]:
  """Names of all presets."""
  return list(_REGISTRY)


def get(name: str) -> Preset:
  """A fresh copy of the preset called ``name``."""
  if name not in _REGISTRY:
    raise ValueError(f'Unknown preset {name!r}; known: {", ".join(_REGISTRY)}.')
  return _REGISTRY[name]()
