"""Internal to :mod:`captum_unicam.models`: the architecture tables and the argument checks
that :mod:`~captum_unicam.models.architectures` and :mod:`~captum_unicam.models.checkpoints`
both use. Not part of the public API.
"""

from __future__ import annotations

import difflib
from typing import Any, Dict, Tuple

import torchvision
from torch import nn

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
]

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
