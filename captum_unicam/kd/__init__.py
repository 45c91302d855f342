"""Knowledge distillation toolkit: the paper's three KD losses, the training loop,
Teacher-assistant chains and k-fold splits.

- :mod:`captum_unicam.kd.losses`: :func:`response_kd_loss`, :func:`attention_transfer_loss`,
  :class:`OverhaulDistiller` (and their building blocks);
- :mod:`captum_unicam.kd.recipe`: :class:`Recipe`, every choice of one training run;
- :mod:`captum_unicam.kd.train`: :func:`train_model`, :func:`evaluate_accuracy`,
  :func:`train_teacher_assistant_chain`, :func:`kfold_indices`, :func:`cross_validate`.

The demo models and the command line's training are pipeline code
(:mod:`captum_unicam.pipeline`); this package never imports it.
"""

from __future__ import annotations

import importlib
from typing import Any

from captum_unicam.kd.losses import (
    OverhaulDistiller,
    OverhaulOutput,
    attention_map,
    attention_transfer_loss,
    bn_margin,
    overhaul_loss,
    overhaul_margin,
    response_kd_loss,
)

_LAZY = {
    "Recipe": "captum_unicam.kd.recipe",
    "train_model": "captum_unicam.kd.train",
    "evaluate_accuracy": "captum_unicam.kd.train",
    "train_teacher_assistant_chain": "captum_unicam.kd.train",
    "kfold_indices": "captum_unicam.kd.train",
    "cross_validate": "captum_unicam.kd.train",
    "KD_METHODS": "captum_unicam.kd.train",
}

__all__ = [
    "OverhaulDistiller",
    "OverhaulOutput",
    "attention_map",
    "attention_transfer_loss",
    "bn_margin",
    "overhaul_loss",
    "overhaul_margin",
    "response_kd_loss",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'captum_unicam.kd' has no attribute {name!r}")
