r"""Internal: the per-batch phase of :func:`~captum_unicam.metrics.evaluate_kd`.

Maps of every layer and kind for one batch, the features of both models on the perturbed
inputs, the five per-batch statistics, the six inner products the dataset-level estimator
accumulates (:mod:`captum_unicam.metrics.estimators`), and the same products on
uninformative images masked by the same maps (the leakage baseline). Not a public API.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from captum.attr import LayerGradCam
from torch import Tensor, nn

from captum_unicam._outputs import logits_of
from captum_unicam.attr._layout import choose_layout, token_gradcam, vit_grid
from captum_unicam.errors import InputError
from captum_unicam.metrics._features import Scores, layer_features, layers_features, perturb
from captum_unicam.metrics.estimators import batch_products

__all__ = ["BatchPlan", "BatchResult", "batch_rng", "evaluate_batch"]

LayerPairs = Mapping[str, Tuple[nn.Module, nn.Module]]


@dataclass
class BatchPlan:
    """What every batch is evaluated with (fixed by the validation phase)."""

    student: Callable
    base: Callable
    layer_pairs: LayerPairs
    kinds: List[str]
    unicams: Dict[str, Any]
    perturbation: Optional[Callable]
    estimator: str
    leakage: bool
    pooling: str = "mean"  # how a token layer of a text model is read


@dataclass
class BatchResult:
    """One batch's per-batch values, products and leakage products, by layer and kind; and
    the reason of every value set to 0, by ``"layer/kind/metric"``."""

    values: Dict[str, Dict[str, Dict[str, float]]]
    products: Dict[str, Dict[str, Dict[str, float]]]
    leakage: Dict[str, Dict[str, Dict[str, float]]]
    zeroed: Dict[str, str]


def batch_metrics(
    feats_s: Tensor, feats_b: Tensor, y: Tensor, estimator: str, layer: str
) -> Tuple[Dict[str, float], Dict[str, str]]:
    """The five per-batch metrics, and the reason of each value set to 0 (if any).

    The partial distance correlations are formed from the three bias-corrected
    correlations that FSS and the plain RS already computed (with ``estimator="u"``)."""
    scores = Scores(
        {"s": feats_s, "b": feats_b, "y": y.to(feats_s.device)},
        {"s": f"the Student's features at {layer}", "b": f"the Base's features at {layer}"},
    )
    results = {
        "fss": scores.dcor("s", "b", estimator),
        "rs_base": scores.dcor("b", "y", estimator),
        "rs_student": scores.dcor("s", "y", estimator),
        "rs_distilled": scores.pdcor("s", "y", "b"),
        "rs_residual": scores.pdcor("b", "y", "s"),
    }
    values = {m: float(v) for m, (v, _) in results.items()}
    reasons = {m: r for m, (_, r) in results.items() if r is not None}
    return values, reasons


class _NotOnePass(Exception):
    """A layer's output is not one tensor, or the layer runs more than once."""


def gradcams(model: nn.Module, layers: Sequence[nn.Module], x: Tensor, y: Tensor) -> List[Tensor]:
    """``LayerGradCam(model, layer).attribute(x, target=y, relu_attributions=True)`` for every
    layer, from one forward and one backward pass instead of one of each per layer.

    Where one pass cannot stand for Captum's (a layer returns a tuple, or runs more than once
    in the forward pass), Captum's ``LayerGradCam`` is called per layer instead.

    The model's output is read as logits (``_outputs.logits_of``: a Hugging Face
    ``ModelOutput`` too). A token layer ``(N, T, C)`` is read by the rule of
    ``attr._layout.choose_layout``: a vision transformer's tokens on their patch grid
    (``vit_grid``, maps ``(N, 1, s, s)``, an error naming ``reshape_transform`` when they
    do not form one), a text model's tokens by the token rule (``token_gradcam``, ``(N, T)``).
    """
    unique = list({id(m): m for m in layers}.values())
    acts: Dict[int, Tensor] = {}

    def hook(module, _inp, out):
        if not isinstance(out, Tensor) or id(module) in acts:
            raise _NotOnePass
        if not out.requires_grad:  # no parameter before it requires grad: a leaf
            out.requires_grad_()
        acts[id(module)] = out
        return out.clone()  # later in-place operations must not touch the saved activation

    handles = [m.register_forward_hook(hook) for m in unique]
    try:
        with torch.enable_grad():
            output = logits_of(model(x))
            score = output.gather(1, y.reshape(-1, 1).long()).sum()
            grads = torch.autograd.grad(score, [acts[id(m)] for m in unique], allow_unused=True)
    except _NotOnePass:
        grads = None
    finally:
        for h in handles:
            h.remove()
    if grads is None:
        cams = [
            LayerGradCam(model, m).attribute(x, target=y, relu_attributions=True) for m in layers
        ]
        for m, cam in zip(layers, cams):
            if not isinstance(cam, Tensor):
                raise InputError(
                    f"layer {type(m).__name__} returns a {type(cam).__name__} of tensors; a "
                    "Grad-CAM map for FSS / RS needs a layer whose output is one tensor "
                    "(N, C, ...): pass that module."
                )
        return [cam.detach() for cam in cams]
    by_layer: Dict[int, Tensor] = {}
    for m, grad in zip(unique, grads):
        act = acts[id(m)].detach()
        grad = torch.zeros_like(act) if grad is None else grad
        layout = choose_layout(act, None, x)
        if layout == "tokens":
            by_layer[id(m)] = token_gradcam(act, grad)
            continue
        if layout == "grid":
            act, grad = vit_grid(act), vit_grid(grad)
        weights = (
            grad.mean(dim=tuple(range(2, grad.dim())), keepdim=True) if grad.dim() > 2 else grad
        )
        by_layer[id(m)] = (weights * act).sum(dim=1, keepdim=True).relu()
    return [by_layer[id(m)] for m in layers]


def all_maps(plan: BatchPlan, x: Tensor, y: Tensor) -> Dict[str, Dict[str, Tuple[Tensor, Tensor]]]:
    """``maps[layer][kind]`` = (the Student's map, the Base's map) on the batch, for every
    kind but ``"none"`` (no map)."""
    layer_pairs = plan.layer_pairs
    maps: Dict[str, Dict[str, Tuple[Tensor, Tensor]]] = {name: {} for name in layer_pairs}
    if "gradcam" in plan.kinds:
        cams_s = gradcams(plan.student, [s for s, _ in layer_pairs.values()], x, y)
        cams_b = gradcams(plan.base, [b for _, b in layer_pairs.values()], x, y)
        for name, cam_s, cam_b in zip(layer_pairs, cams_s, cams_b):
            maps[name]["gradcam"] = (cam_s, cam_b)
    if plan.unicams:
        for name in layer_pairs:
            attribution = plan.unicams[name].attribute(x, target=y, features="both")
            distilled, residual = (m.detach() for m in attribution)
            # one map for both models: the same object, so the inputs are perturbed once
            maps[name]["distilled"] = (distilled, distilled)
            maps[name]["residual"] = (residual, residual)
    return maps


@contextmanager
def batch_rng(seed: int, index: int, device: torch.device):
    """Seed torch's generators from (seed, batch index) for one batch; restore them after.

    Random perturbations (``road_impute``'s noise) then depend only on the batch, not on
    the rank that computes it or on what ran before, and the caller's RNG state is kept.
    """
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed((int(seed) * 1_000_003 + int(index)) % (2**63))
        yield


def _features(
    plan: BatchPlan, name: str, x: Tensor, maps: Tuple[Tensor, Tensor]
) -> Tuple[Tensor, Tensor]:
    """Both models' features at layer ``name`` on ``x`` perturbed by their maps."""
    s_layer, b_layer = plan.layer_pairs[name]
    h_s, h_b = maps
    x_s = perturb(x, h_s, plan.perturbation)
    x_b = x_s if h_b is h_s else perturb(x, h_b, plan.perturbation)
    return layer_features(plan.student, s_layer, x_s), layer_features(plan.base, b_layer, x_b)


def _raw_features(
    plan: BatchPlan, x: Tensor, mask: Optional[Tensor] = None
) -> Dict[str, Tuple[Tensor, Tensor]]:
    """The unperturbed features of every layer: one forward pass per model (a token layer
    pooled over the valid tokens of ``mask``)."""
    pairs = plan.layer_pairs
    s_layers, b_layers = [s for s, _ in pairs.values()], [b for _, b in pairs.values()]
    raw_s = layers_features(plan.student, s_layers, x, None, mask, plan.pooling)
    raw_b = layers_features(plan.base, b_layers, x, None, mask, plan.pooling)
    return {name: (fs, fb) for name, fs, fb in zip(pairs, raw_s, raw_b)}


def uninformative(x: Tensor) -> Tensor:
    """The batch's mean image, repeated for every sample: an image that carries nothing of
    any one sample, for the leakage baseline."""
    mean = x.to(torch.float64).mean(dim=0, keepdim=True).to(x.dtype)  # exact for equal images
    return mean.expand_as(x).contiguous()


def evaluate_batch(
    plan: BatchPlan, x: Tensor, y: Tensor, labels: Tensor, mask: Optional[Tensor] = None
) -> BatchResult:
    """Every metric and product of one batch, for each layer and map kind (``mask``: the
    attention mask of a text batch, raw features only).

    The leakage products are computed after every real value, so a random perturbation
    draws the same noise for the real values whether or not the leakage is measured."""
    maps = all_maps(plan, x, y)
    raw = _raw_features(plan, x, mask) if "none" in plan.kinds else {}
    out = BatchResult({}, {}, {}, {})
    for name in plan.layer_pairs:
        out.values[name], out.products[name], out.leakage[name] = {}, {}, {}
        for kind in plan.kinds:
            feats = raw[name] if kind == "none" else _features(plan, name, x, maps[name][kind])
            out.values[name][kind], reasons = batch_metrics(*feats, labels, plan.estimator, name)
            out.products[name][kind] = batch_products(*feats, labels, plan.estimator)
            out.zeroed.update({f"{name}/{kind}/{m}": r for m, r in reasons.items()})
    if plan.leakage:
        blank = uninformative(x)
        for name in plan.layer_pairs:
            for kind in plan.kinds:
                if kind != "none":
                    leak = _features(plan, name, blank, maps[name][kind])
                    out.leakage[name][kind] = batch_products(*leak, labels, plan.estimator)
    return out
