"""Internal: what :mod:`captum_unicam.sanity` and :mod:`captum_unicam.comparison` share.

The parsing of a ``methods`` dict (name -> Captum ``Attribution`` or ``(attribution, attribute
kwargs)``), whether a method calls a given model, the checks of the bootstrap arguments, the
bootstrap interval of a mean over images, and a figure that needs no display. Not part of the
public API.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Tuple, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from captum_unicam.errors import InputError

__all__ = [
    "MethodSpec",
    "method_specs",
    "refers_to",
    "check_bootstrap",
    "bootstrap_interval",
    "new_figure",
]

MethodSpec = Union[Any, Tuple[Any, Mapping[str, Any]]]

_DPI = 110  # the figures of captum_unicam.viz


def method_specs(methods: Any) -> Dict[str, Tuple[Any, Dict[str, Any]]]:
    """``methods`` as name -> (Captum Attribution, attribute kwargs), checked."""
    # lazy: captum's attribution module is only needed once methods are given
    from captum.attr import Attribution

    if not isinstance(methods, Mapping) or not methods:
        raise InputError(
            "`methods` must be a non-empty dict name -> Captum Attribution (or (attribution, "
            "attribute kwargs)), e.g. {'grad-cam': (LayerGradCam(model, model.layer4), "
            "{'relu_attributions': True})}."
        )
    out = {}
    for name, spec in methods.items():
        attr, kwargs = spec if isinstance(spec, tuple) and len(spec) == 2 else (spec, {})
        if not isinstance(attr, Attribution):
            raise InputError(
                f"methods[{name!r}] must be a Captum Attribution object (LayerGradCam, "
                f"IntegratedGradients, UniCAM, ...) or a pair (attribution, kwargs); got "
                f"{type(attr).__name__}."
            )
        if not isinstance(kwargs, Mapping):
            raise InputError(
                f"methods[{name!r}]: the attribute kwargs must be a dict, got "
                f"{type(kwargs).__name__}."
            )
        out[str(name)] = (attr, dict(kwargs))
    return out


def refers_to(obj: Any, target: nn.Module, depth: int = 3) -> bool:
    """True when ``obj`` is ``target`` or holds it in its attributes (``depth`` levels deep,
    not looking inside other modules)."""
    if obj is target:
        return True
    if depth == 0 or isinstance(obj, nn.Module):
        return False
    values: Iterable[Any] = vars(obj).values() if hasattr(obj, "__dict__") else ()
    return any(refers_to(v, target, depth - 1) for v in values)


def check_bootstrap(n_bootstrap: Any, confidence: Any) -> None:
    """InputError unless ``n_bootstrap`` is a positive int and ``confidence`` in (0, 1)."""
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 1:
        raise InputError(f"n_bootstrap must be a positive int, got {n_bootstrap!r}.")
    if not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence!r}.")


def bootstrap_interval(
    values: Any, n_bootstrap: int, seed: int, confidence: float
) -> Dict[str, Any]:
    """``{"mean", "low", "high", "n"}`` of the finite ``values`` (percentile bootstrap of
    the mean); all None and ``n = 0`` when none is finite."""
    # lazy: metrics imports the attribution stack
    from captum_unicam.metrics import intervals

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    return {**intervals.bootstrap_interval(v, n_bootstrap, seed, confidence), "n": int(v.size)}


def new_figure(figsize: Tuple[float, float]) -> Figure:
    """A matplotlib figure on the Agg canvas (no display, no pyplot state)."""
    fig = Figure(figsize=figsize, dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig
