r"""UniCAM as a Quantus ``explain_func``, in reference mode.

`Quantus <https://github.com/understandable-machine-intelligence-lab/Quantus>`_ evaluates an
explanation method through a function ``explain_func(model, inputs, targets, **kwargs)``
that takes numpy arrays and returns numpy attributions. Quantus calls it on batches of
its own making (its ``batch_size``, perturbed copies for robustness metrics, randomised
copies of the model for MPRT), and assumes that an example's attribution does not depend
on the other examples of the call. :func:`explain` therefore runs UniCAM in **reference
mode** by default: each input is scored with a fixed reference set alone, so its map is a
per-image function.

Usage::

    import quantus
    from captum_unicam import reference_set
    from captum_unicam.quantus import explain

    kwargs = {"base": base, "layer": "layer4", "reference": reference_set(val_set, 32)}
    metric = quantus.Sparseness()
    scores = metric(model=student, x_batch=x, y_batch=y, explain_func=explain,
                    explain_func_kwargs=kwargs)

``model`` is the Student (Quantus passes it, or a randomised copy of it for MPRT: the
layer is found by name on whatever model comes in); the Base is fixed and passed through
``explain_func_kwargs``.

**Empty maps.** A UniCAM map after the ReLU is often all zero (nothing in that image raises
the score): a result, but Quantus turns it into NaN (a correlation with a constant, a
division by a zero sum) and one NaN makes a Quantus mean NaN. So :func:`explain`
returns **signed** maps by default (``relu_attributions=False``; Quantus' ``abs=`` and
``normalise=`` options then decide how the sign is used), which are zero everywhere only
when the score itself is degenerate (a :class:`~captum_unicam.UniCAMWarning` names the
cause). With ``relu_attributions=True``, ``empty="uniform"`` (default) returns an all-zero
map as a constant map (every pixel equal, the map of "no preference"): finite for
Sparseness, MaxSensitivity, MPRT and most metrics; metrics that correlate the
attribution with something (FaithfulnessCorrelation) still give NaN for that image, since
a constant map has no correlation; aggregate those with ``numpy.nanmean``.
``empty="zero"`` keeps the zero maps.

Quantus is imported by Quantus itself, never by this module: nothing here needs it.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import torch
from captum.attr import LayerAttribution
from torch import Tensor, nn

from captum_unicam.attr.unicam import UniCAM
from captum_unicam.errors import InputError

__all__ = ["explain"]

_EMPTY = ("uniform", "zero")


def _device(model: nn.Module, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _tensor(value: Any, device: torch.device, dtype: Optional[torch.dtype] = None) -> Tensor:
    t = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
    return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)


def _layer(model: nn.Module, name: Any, what: str) -> nn.Module:
    if not isinstance(name, str):
        raise InputError(
            f"`{what}` must be the name of a submodule (e.g. 'layer4'): Quantus' MPRT passes "
            "randomised copies of the model, so the layer is found by name on each."
        )
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        raise InputError(
            f"`{what}`={name!r} is not a submodule of the {type(model).__name__} passed."
        ) from err


def _reference(reference: Any, device: torch.device, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    if not isinstance(reference, (tuple, list)) or len(reference) != 2:
        raise InputError(
            "explain runs UniCAM in reference mode: pass `reference=(ref_inputs, ref_target)` "
            "in explain_func_kwargs, e.g. captum_unicam.reference_set(dataset, 32); or "
            "mode='batch' to measure the batch (not per-image, with a warning)."
        )
    return _tensor(reference[0], device, dtype), _tensor(reference[1], device, torch.long)


def _fill_empty(maps: Tensor) -> Tensor:
    """All-zero maps as constant maps of ones (see the module docstring)."""
    empty = maps.flatten(1).abs().amax(1) == 0
    return torch.where(empty.reshape((-1,) + (1,) * (maps.dim() - 1)), torch.ones_like(maps), maps)


def explain(model: nn.Module, inputs: Any, targets: Any, **kwargs: Any) -> np.ndarray:
    r"""Quantus ``explain_func``: UniCAM maps of ``inputs``, upsampled to the inputs' size.

    Args:
        model (torch.nn.Module): the Student (or Quantus' randomised copy of it).
        inputs (numpy.ndarray or Tensor): ``(N, C, H, W)`` images, channels first.
        targets (numpy.ndarray or Tensor): ``(N,)`` class indices.
        **kwargs: ``explain_func_kwargs`` (Quantus adds ``device`` and may add others,
                    which are ignored):

                    - ``base`` (nn.Module, required): the Base model;
                    - ``layer`` (str, required): name of the Student's attribution layer
                      (``model.get_submodule(layer)``);
                    - ``base_layer`` (str): the Base's layer name. Default: ``layer``;
                    - ``reference`` (tuple): ``(ref_inputs, ref_target)``, required in
                      reference mode (e.g. ``captum_unicam.reference_set(dataset, 32)``);
                    - ``mode`` (str): ``"reference"`` (default) or ``"batch"`` (each
                      Quantus batch is the statistics' batch: the maps depend on the
                      batch, and a :class:`~captum_unicam.UniCAMWarning` says so);
                    - ``features`` (str): ``"distilled"`` (default) or ``"residual"``;
                    - ``label_embeddings`` (Tensor): as in :class:`~captum_unicam.UniCAM`;
                    - ``relu_attributions`` (bool): default False (signed maps, see the
                      module docstring on empty maps);
                    - ``empty`` (str): ``"uniform"`` (default) or ``"zero"``: what an
                      all-zero map becomes;
                    - ``interpolate_mode`` (str): default ``"bilinear"``;
                    - ``device``: where to run (default: the model's device).

    Returns:
        numpy.ndarray: ``(N, 1, H, W)`` float32 attributions.
    """
    base = kwargs.get("base")
    if not isinstance(base, nn.Module) or not isinstance(model, nn.Module):
        raise InputError(
            "explain needs the Student as `model` and the Base as `base` in explain_func_kwargs "
            "(both torch.nn.Module)."
        )
    mode = kwargs.get("mode", "reference")
    features = kwargs.get("features", "distilled")
    empty = kwargs.get("empty", "uniform")
    if (
        mode not in ("reference", "batch")
        or features not in ("distilled", "residual")
        or empty not in _EMPTY
    ):
        raise InputError(
            f"explain: mode must be 'reference' or 'batch' (got {mode!r}), features 'distilled' "
            f"or 'residual' (got {features!r}), empty one of {_EMPTY} (got {empty!r})."
        )
    layer_name = kwargs.get("layer")
    device = _device(model, kwargs.get("device"))
    dtype = (
        next(iter(model.parameters())).dtype
        if any(True for _ in model.parameters())
        else torch.float32
    )
    x = _tensor(inputs, device, dtype)
    y = _tensor(targets, device, torch.long).reshape(-1)
    reference = _reference(kwargs.get("reference"), device, dtype) if mode == "reference" else None
    unicam = UniCAM(
        model,
        _layer(model, layer_name, "layer"),
        base,
        _layer(base, kwargs.get("base_layer", layer_name), "base_layer"),
        label_embeddings=kwargs.get("label_embeddings"),
        reference=reference,
    )
    maps = unicam.attribute(
        x,
        target=y,
        features=features,
        relu_attributions=bool(kwargs.get("relu_attributions", False)),
    )
    maps = LayerAttribution.interpolate(
        maps, tuple(x.shape[-2:]), kwargs.get("interpolate_mode", "bilinear")
    )
    if empty == "uniform":
        maps = _fill_empty(maps)
    return maps.detach().to("cpu", torch.float32).numpy()
