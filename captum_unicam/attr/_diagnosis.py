"""Internal: what UniCAM checks about how it is called (not a public API).

- :func:`calling_tool`: the Captum or Quantus tool on the call stack, if any. Those tools
  (``NoiseTunnel``, ``sensitivity_max``, ``infidelity``, the perturbation attributions,
  Quantus' metrics) call an explanation on batches of their own making and assume that
  an example's attribution does not depend on the other examples of the call; a
  batch-mode UniCAM map does.
- :func:`training_modules`: the modules of a model that are in training mode *and* behave
  differently there (batch normalisation, dropout, or any module whose forward reads
  ``self.training`` or that overrides ``train()``), so that a wrapper ``nn.Module`` around
  eval() models is not reported.
"""

from __future__ import annotations

import inspect
import sys
from functools import lru_cache
from typing import Iterable, List, Optional

from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd

__all__ = ["calling_tool", "training_modules"]

# Module-name prefixes of the tools that build batches of their own; captum.log is the
# usage-logging decorator around every Captum attribute(), UniCAM's own included.
_TOOLS = ("quantus", "captum.metrics", "captum.attr", "captum.robust")
_NOT_TOOLS = ("captum.log", "captum.attr._utils")


def calling_tool(depth: int = 64) -> Optional[str]:
    """The module name of the nearest Captum or Quantus tool on the call stack, or None."""
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        name = frame.f_globals.get("__name__", "")
        if name.startswith(_TOOLS) and not name.startswith(_NOT_TOOLS):
            return name
        frame = frame.f_back
    return None


@lru_cache(maxsize=None)
def _mode_dependent(cls: type) -> bool:
    """Whether modules of this class may compute differently in training mode."""
    if issubclass(cls, (_NormBase, _DropoutNd, nn.RReLU)):
        return True
    if cls.train is not nn.Module.train:
        return True
    if cls.__module__.startswith("torch.nn."):
        return False  # the library's own modules: only the ones above
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return "training" in source


def training_modules(roots: Iterable[nn.Module]) -> List[str]:
    """Names (class names) of the modules under ``roots`` that are in training mode and
    behave differently there."""
    found = []
    for root in roots:
        for module in root.modules():
            if module.training and _mode_dependent(type(module)):
                found.append(type(module).__name__)
    return found
