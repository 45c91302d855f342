"""captum-unicam: UniCAM, FSS and RS for explaining knowledge distillation, on Captum.

The public names are imported lazily, so ``import captum_unicam`` stays cheap and
``from captum_unicam import stats`` does not load the attribution or metric code.

Example::

    >>> from captum_unicam import UniCAM, feature_similarity_score, relevance_score
    >>> unicam = UniCAM(student, student.layer4, base, base.layer4)
    >>> distilled, residual = unicam.attribute(x, target=y, features="both")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "UniCAM": "captum_unicam.attr.unicam",
    "UniCAMWarning": "captum_unicam.attr.unicam",
    "reference_set": "captum_unicam.attr.reference",
    "feature_similarity_score": "captum_unicam.metrics",
    "relevance_score": "captum_unicam.metrics",
    "evaluate_kd": "captum_unicam.metrics",
    "KDEvaluation": "captum_unicam.metrics",
    "embed_labels": "captum_unicam.embeddings",
    "road_impute": "captum_unicam.perturb",
    "mask_multiply": "captum_unicam.perturb",
    "compare": "captum_unicam.comparison",
}
_SUBMODULES = {"stats", "perturb", "embeddings", "metrics", "attr", "models", "kd", "data"}

__all__ = sorted(_LAZY) + sorted(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"captum_unicam.{name}")
    else:
        raise AttributeError(f"module 'captum_unicam' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
