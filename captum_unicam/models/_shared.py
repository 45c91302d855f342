"""Internal to :mod:`captum_unicam.models`: the architecture tables and the argument checks
that :mod:`~captum_unicam.models.architectures` and :mod:`~captum_unicam.models.checkpoints`
both use. Not part of the public API.
"""

from __future__ import annotations

import difflib
from typing import Any, Dict, Mapping, Tuple

import torch
import torchvision
from torch import Tensor, nn

from captum_unicam.errors import InputError

__all__ = [
    "TORCHVISION",
    "TORCHVISION_BLOCKS",
    "SMALL_RESNET_CONFIGS",
    "ARCHITECTURES",
    "BUILD_ATTR",
    "check_arch",
    "check_num_classes",
    "positive_int",
    "describe",
    "unwrap",
    "build_info",
    "state_mismatch",
    "nonfinite_tensors",
]

#: keys named in a state-dict mismatch message, of each kind
SHOWN_KEYS = 5

TORCHVISION = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
}

#: blocks per stage of the torchvision ResNets, and whether they use Bottleneck blocks
TORCHVISION_BLOCKS = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
}

#: (blocks per stage, width of the first stage) of the small CPU-friendly ResNets.
SMALL_RESNET_CONFIGS: Dict[str, Tuple[Tuple[int, int, int, int], int]] = {
    "small_resnet_s": ((1, 1, 1, 1), 8),
    "small_resnet_m": ((1, 1, 1, 1), 16),
    "small_resnet_l": ((2, 2, 2, 2), 32),
    "small_resnet": ((1, 1, 1, 1), 16),
}

#: Names accepted by :func:`~captum_unicam.models.build_model`.
ARCHITECTURES: Tuple[str, ...] = tuple(TORCHVISION) + tuple(SMALL_RESNET_CONFIGS)

#: attribute set on models made by build_model: {"arch", "num_classes", "kwargs"}
BUILD_ATTR = "_captum_unicam_build"


def check_arch(arch: Any) -> str:
    """``arch`` if it is a name of :data:`ARCHITECTURES`, else an InputError with the
    closest names."""
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        close = difflib.get_close_matches(str(arch), ARCHITECTURES, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise InputError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}.{hint}"
        )
    return arch


def positive_int(value: Any) -> bool:
    """True for an int >= 1 that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_num_classes(num_classes: Any) -> int:
    """``num_classes`` if it is a positive int, else an InputError."""
    if not positive_int(num_classes):
        raise InputError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def describe(arch: Any, num_classes: Any) -> str:
    """``"a small_resnet_s with 4 classes"``, for messages."""
    return f"a {arch} with {num_classes} classes"


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DataParallel / DistributedDataParallel wrappers (kept in
    ``.module``)."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) and hasattr(
        model, "module"
    ):
        model = model.module
    return model


def build_info(model: nn.Module) -> Any:
    """What :func:`~captum_unicam.models.build_model` recorded on ``model``, or None."""
    info = getattr(model, BUILD_ATTR, None)
    return info if isinstance(info, dict) else None


def _first(keys, n: int = SHOWN_KEYS) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def state_mismatch(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> str:
    """``""`` when ``found`` loads strictly into a model whose state is ``expected``, else
    the missing keys, the unexpected keys and the shape mismatches (the first few of each).
    Works for models on the meta device (only shapes are compared)."""
    missing = set(expected) - set(found)
    unexpected = set(found) - set(expected)
    shapes = [
        f"{k} {tuple(found[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"missing keys: {_first(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_first(unexpected)}")
    if shapes:
        parts.append(f"shapes differ (given vs model): {_first(shapes, 3)}")
    return "; ".join(parts)


def nonfinite_tensors(state: Mapping[str, Tensor]) -> list:
    """Names of the floating-point tensors of ``state`` that hold NaN or Inf."""
    bad = []
    for name, t in state.items():
        if isinstance(t, Tensor) and (t.is_floating_point() or t.is_complex()):
            if t.numel() and not bool(torch.isfinite(t).all()):
                bad.append(name)
    return bad
