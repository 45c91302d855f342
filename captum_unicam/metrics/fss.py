r"""Feature similarity score (FSS, paper Sec. 3.2.1, Eq. 7-8), and the helpers RS shares.

FSS of a batch is the bias-corrected squared distance correlation between the
Student's and the Base's features at a layer, both read on the *perturbed* images
(Eq. 7): :math:`\hat x_s = f_s(I \odot H)`, :math:`\hat x_b = f_b(I \odot H)`. Over a
data set, FSS is the mean over batches (Eq. 8); see
:func:`captum_unicam.metrics.evaluate_kd`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from captum_unicam import stats
from captum_unicam.perturb import mask_multiply

__all__ = ["feature_similarity_score"]

MIN_BATCH = 4  # U-statistics need n >= 4

AttributionsType = Union[None, Tensor, Tuple[Optional[Tensor], Optional[Tensor]]]


# ---------------------------------------------------------------------------
# Validation shared by FSS, RS and evaluate_kd
# ---------------------------------------------------------------------------


def _single_input(inputs: Any) -> Tensor:
    if isinstance(inputs, tuple) and len(inputs) == 1:
        inputs = inputs[0]
    if not isinstance(inputs, Tensor):
        raise ValueError(
            f"inputs must be a tensor of shape (N, ...) (one batch, N >= {MIN_BATCH}), got "
            f"{type(inputs).__name__}; the metrics perturb a single input tensor."
        )
    return inputs


def _check_inputs(inputs: Tensor) -> None:
    if inputs.dim() < 1 or inputs.shape[0] < MIN_BATCH:
        n = inputs.shape[0] if inputs.dim() else 0
        raise ValueError(
            f"inputs hold a batch of {n} samples; FSS and RS are batch statistics "
            f"(bias-corrected distance correlation) that need at least {MIN_BATCH}. Use "
            f"batches of {MIN_BATCH} or more (with a DataLoader: drop_last=True)."
        )
    if not inputs.is_floating_point():
        raise ValueError(f"inputs must be a floating-point tensor, got dtype {inputs.dtype}.")
    if not torch.isfinite(inputs).all():
        raise ValueError("inputs contain NaN or Inf; clean or re-normalise the batch first.")


def _check_attributions(attr: Tensor, inputs: Tensor, name: str = "attributions") -> None:
    if not isinstance(attr, Tensor):
        raise ValueError(f"{name} must be a tensor (N, 1, h, w), got {type(attr).__name__}.")
    with_channels = attr.dim() == inputs.dim() and attr.shape[1] in (1, inputs.shape[1])
    without_channels = attr.dim() == inputs.dim() - 1
    ok = (
        inputs.dim() >= 3
        and (with_channels or without_channels)
        and attr.shape[0] == inputs.shape[0]
        and all(s > 0 for s in attr.shape)
    )
    if not ok:
        raise ValueError(
            f"{name} of shape {tuple(attr.shape)} cannot be matched to inputs of shape "
            f"{tuple(inputs.shape)}: expected (N, 1, h, w) as LayerGradCam and UniCAM return "
            f"(or (N, h, w), or (N, C, h, w) with the inputs' C), with the same N = "
            f"{inputs.shape[0] if inputs.dim() else '?'} and any h, w (upsampled to the input size)."
        )
    if not attr.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {attr.dtype}.")
    if not torch.isfinite(attr).all():
        raise ValueError(f"{name} contain NaN or Inf; check the attribution method's output.")


def _check_estimator(estimator: str) -> None:
    if estimator not in ("u", "v"):
        raise ValueError(
            f"estimator must be 'u' (bias-corrected dCor², the paper's) or 'v' (the biased "
            f"V-statistic dCor²), got {estimator!r}."
        )


def _pair(attributions: AttributionsType, first: str, second: str) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """One map for both models, or an explicit (first, second) pair."""
    if attributions is None or isinstance(attributions, Tensor):
        return attributions, attributions
    if isinstance(attributions, (tuple, list)) and len(attributions) == 2:
        return attributions[0], attributions[1]
    raise ValueError(
        f"attributions must be None, one tensor (N, 1, h, w) used for both models, or a pair "
        f"({first}_attributions, {second}_attributions); got {type(attributions).__name__}"
        + (f" of length {len(attributions)}" if isinstance(attributions, (tuple, list)) else "")
        + "."
    )


def _check_layer(layer: Any, name: str) -> None:
    if not isinstance(layer, nn.Module):
        raise ValueError(f"{name} must be a torch.nn.Module of the model, got {type(layer).__name__}.")


def _check_perturb_func(perturb_func: Any) -> None:
    if not callable(perturb_func):
        raise ValueError(
            "perturb_func must be callable as perturb_func(inputs, attributions), e.g. "
            f"captum_unicam.perturb.mask_multiply or road_impute; got {perturb_func!r}."
        )


# ---------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------


class _Captured(Exception):
    """Raised by the hook to stop the forward pass once the layer output is captured."""


def _forward_args(additional_forward_args: Any) -> tuple:
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def _flatten_output(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output.detach().reshape(output.shape[0], -1)
    if isinstance(output, (tuple, list)) and output and all(isinstance(o, Tensor) for o in output):
        return torch.cat([o.detach().reshape(o.shape[0], -1) for o in output], dim=1)
    raise ValueError(f"the layer returned {type(output).__name__}; expected a tensor (N, ...).")


def layer_features(
    forward_func: Callable, layer: nn.Module, inputs: Tensor, additional_forward_args: Any = None
) -> Tensor:
    r"""Flattened output of ``layer`` when ``forward_func`` runs on ``inputs``.

    Runs under ``torch.no_grad()``; the forward pass stops as soon as ``layer`` has
    produced its output (the rest of the network is skipped). The hook is removed in
    every case. The model's train/eval mode is left as it is: call ``.eval()`` first,
    or batch-norm running statistics are updated.

    Returns:
        Tensor: float64 tensor ``(N, d)``.
    """
    return layers_features(forward_func, [layer], inputs, additional_forward_args)[0]


def layers_features(
    forward_func: Callable, layers: Sequence[nn.Module], inputs: Tensor, additional_forward_args: Any = None
) -> List[Tensor]:
    r""":func:`layer_features` of several layers from one forward pass.

    The pass stops once every layer has produced its output (its first call, if a layer
    runs more than once), so reading L1..L4 costs one forward pass instead of four.

    Returns:
        list[Tensor]: float64 tensors ``(N, d_i)``, one per layer, in the order given.
    """
    unique = list({id(m): m for m in layers}.values())
    captured: Dict[int, Tensor] = {}

    def hook(module, _inp, out):
        if id(module) not in captured:
            captured[id(module)] = _flatten_output(out)
        if len(captured) == len(unique):
            raise _Captured

    handles = [m.register_forward_hook(hook) for m in unique]
    try:
        with torch.no_grad():
            try:
                forward_func(inputs, *_forward_args(additional_forward_args))
            except _Captured:
                pass
    finally:
        for h in handles:
            h.remove()
    out = []
    for layer in layers:
        if id(layer) not in captured:
            raise ValueError(
                f"layer {type(layer).__name__} was not called when forward_func ran: pass a module "
                "of the model that forward_func evaluates."
            )
        feats = captured[id(layer)]
        if feats.shape[0] != inputs.shape[0]:
            raise ValueError(
                f"layer output has {feats.shape[0]} rows for {inputs.shape[0]} inputs; the layer's "
                "first dimension must index the samples."
            )
        out.append(feats.to(torch.float64))
    return out


def perturb(inputs: Tensor, attributions: Optional[Tensor], perturb_func: Callable) -> Tensor:
    """``perturb_func(inputs, attributions)``, or ``inputs`` when there is no map."""
    if attributions is None:
        return inputs
    with torch.no_grad():
        out = perturb_func(inputs.detach(), attributions.detach())
    if not isinstance(out, Tensor) or out.shape != inputs.shape:
        raise ValueError(
            f"perturb_func returned {getattr(out, 'shape', type(out).__name__)}; it must return a "
            f"tensor shaped like inputs {tuple(inputs.shape)}."
        )
    return out


def dcor_sqr(x: Tensor, y: Tensor, estimator: str) -> Tensor:
    """``u_distance_correlation_sqr`` ("u") or ``distance_correlation_sqr`` ("v")."""
    if estimator == "u":
        return stats.u_distance_correlation_sqr(x, y)
    return stats.distance_correlation_sqr(x, y)


# ---------------------------------------------------------------------------
# FSS
# ---------------------------------------------------------------------------


def paired_features(
    models: Tuple[Tuple[Callable, nn.Module], Tuple[Callable, nn.Module]],
    inputs: Tensor,
    attributions: AttributionsType,
    perturb_func: Callable,
    additional_forward_args: Any,
    names: Tuple[str, str],
) -> Tuple[Tensor, Tensor]:
    """Features of two models at their layers, each on the inputs perturbed by its map.

    ``attributions`` is one map for both models or a pair (one per model); one map
    perturbs the inputs once. Shared by FSS and by RS with ``given=``."""
    attr_a, attr_b = _pair(attributions, *names)
    for a, name in ((attr_a, "attributions"), (attr_b, f"{names[1]} attributions")):
        if a is not None:
            _check_attributions(a, inputs, name)
    x_a = perturb(inputs, attr_a, perturb_func)
    x_b = x_a if attr_b is attr_a else perturb(inputs, attr_b, perturb_func)
    (forward_a, layer_a), (forward_b, layer_b) = models
    return (
        layer_features(forward_a, layer_a, x_a, additional_forward_args),
        layer_features(forward_b, layer_b, x_b, additional_forward_args),
    )


def feature_similarity_score(
    forward_func: Callable,
    layer: nn.Module,
    base_forward_func: Callable,
    base_layer: nn.Module,
    inputs: Tensor,
    attributions: AttributionsType = None,
    perturb_func: Callable = mask_multiply,
    additional_forward_args: Any = None,
    estimator: str = "u",
) -> Tensor:
    r"""Feature similarity score (FSS) of a Student and a Base model on one batch.

    .. math::
        \text{FSS} = \mathcal{R}^{*2}_n(\hat x_s, \hat x_b),\quad
        \hat x_s = f_s(\text{perturb}(I, H)),\ \hat x_b = f_b(\text{perturb}(I, H))

    (paper Eq. 7-8), where :math:`f` flattens the output of ``layer`` /
    ``base_layer`` and :math:`\mathcal{R}^{*2}_n` is the bias-corrected squared
    distance correlation ``stats.u_distance_correlation_sqr`` (= ``dcor``'s). Over a
    data set, FSS is the mean over batches
    (:func:`~captum_unicam.metrics.evaluate_kd`).

    Which map perturbs which model: Eq. 7 perturbs one image :math:`I \odot H` and
    feeds it to both models, so with one ``attributions`` tensor both models see the
    *same* perturbed images, and FSS asks whether they represent the same evidence
    alike. Appendix C reads :math:`H` as the map "of one model" and feeds each model
    the image perturbed with its own map; pass a pair
    ``(attributions, base_attributions)`` for that reading (e.g. each model's own
    Grad-CAM, as in the paper's Fig. 4). ``attributions=None`` compares the raw
    features (no perturbation).

    Args:
        forward_func (Callable): the Student (or a function running it).
        layer (torch.nn.Module): the Student's layer whose output is compared.
        base_forward_func (Callable): the Base model.
        base_layer (torch.nn.Module): the Base's layer. Its width may differ.
        inputs (Tensor): one batch ``(N, C, H, W)``, ``N >= 4``.
        attributions (Tensor or tuple[Tensor, Tensor], optional): saliency ``(N, 1,
                    h, w)`` of any spatial size (``perturb_func`` upsamples it), used
                    for both models; or a pair (Student's map, Base's map). Default:
                    None (raw features).
        perturb_func (Callable, optional): ``perturb_func(inputs, attributions)``
                    returns the perturbed batch: ``mask_multiply`` (paper Eq. C.8,
                    default) or ``road_impute`` (ROAD, as in the paper's Fig. 1).
        additional_forward_args (Any, optional): extra arguments for both forward
                    functions, as in Captum. Default: None.
        estimator (str, optional): ``"u"``: bias-corrected dCor² (paper). ``"v"``:
                    the biased V-statistic ``distance_correlation_sqr``. Default: "u".

    Returns:
        Tensor: a 0-dim float64 tensor (in [-1, 1] for "u", [0, 1] for "v").

    Raises:
        ValueError: fewer than 4 samples; NaN/Inf in inputs or attributions;
                    attributions whose shape cannot be matched to the inputs; a bad
                    estimator; a layer the forward pass does not reach.

    Examples::

        >>> from captum.attr import LayerGradCam
        >>> from captum_unicam import feature_similarity_score
        >>> cam = LayerGradCam(student, student.layer4).attribute(x, target=y, relu_attributions=True)
        >>> fss = feature_similarity_score(student, student.layer4, base, base.layer4, x, cam)
    """
    inputs = _single_input(inputs)
    _check_inputs(inputs)
    _check_estimator(estimator)
    _check_layer(layer, "layer")
    _check_layer(base_layer, "base_layer")
    _check_perturb_func(perturb_func)
    feats_s, feats_b = paired_features(
        ((forward_func, layer), (base_forward_func, base_layer)),
        inputs, attributions, perturb_func, additional_forward_args, ("student", "base"),
    )
    return dcor_sqr(feats_s, feats_b, estimator)
