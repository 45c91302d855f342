r"""Internal: what the feature similarity score (FSS) and the relevance score (RS) share.

Argument checks, the forward passes that read a layer's features (on perturbed inputs), the
degenerate-case diagnoses and the statistics of one batch. Used by
:mod:`captum_unicam.metrics.fss`, :mod:`captum_unicam.metrics.rs` and
:mod:`captum_unicam.metrics.evaluation`; not a public API (it may change without notice).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from captum_unicam import stats
from captum_unicam._outputs import hidden_of
from captum_unicam.attr._layout import (
    POOLINGS,
    check_mask,
    choose_layout,
    forward_mask_kwargs,
    mask_from_args,
    pool_tokens,
)
from captum_unicam.attr._targets import parse_target
from captum_unicam.errors import InputError

MIN_BATCH = 4  # FSS and plain RS: the U-statistics divide by n (n - 3)
#: pdCor-based RS (and evaluate_kd, which always computes it): at n = 4 the U-centred
#: matrices span a 2-dimensional space, so once the given model's matrix is projected out
#: one direction is left and the partial correlation is always +-1.
MIN_BATCH_PARTIAL = 5

AttributionsType = Union[None, Tensor, Tuple[Optional[Tensor], Optional[Tensor]]]
#: ``perturbation(inputs, attributions) -> perturbed_inputs``, or None for raw features.
Perturbation = Optional[Callable[[Tensor, Tensor], Tensor]]
Estimator = Literal["u", "v"]

#: |r| within this of 1 counts as a perfect correlation (as UniCAM's scores do).
_ONE_TOL = 8 * torch.finfo(torch.float64).eps
#: A U-centred label distance matrix below this fraction of the largest distance is zero.
_LABEL_TOL = 1e-10

LABEL_FIX = (
    "pass label_embeddings=embed_labels(class_names) (label vectors whose distances differ "
    "between classes), and use batches in which classes repeat (e.g. a stratified loader "
    "that draws several images per class)"
)


def _unicam_warning() -> type:
    from captum_unicam.attr.unicam import UniCAMWarning

    return UniCAMWarning


def warn_degenerate(message: str, stacklevel: int = 3) -> None:
    """A :class:`~captum_unicam.UniCAMWarning` for a score set to 0 (or otherwise degenerate)."""
    warnings.warn(message, _unicam_warning(), stacklevel=stacklevel + 1)


# ---------------------------------------------------------------------------
# Validation shared by FSS, RS and evaluate_kd
# ---------------------------------------------------------------------------


def single_input(inputs: Any) -> Tensor:
    if isinstance(inputs, tuple) and len(inputs) == 1:
        inputs = inputs[0]
    if not isinstance(inputs, Tensor):
        raise InputError(
            f"inputs must be a tensor of shape (N, ...) (one batch, N >= {MIN_BATCH}), got "
            f"{type(inputs).__name__}; the metrics perturb a single input tensor."
        )
    return inputs


def check_inputs(
    inputs: Tensor, min_batch: int = MIN_BATCH, what: str = "FSS and RS", tokens: bool = False
) -> None:
    """The batch: at least ``min_batch`` samples, floating point and finite; with ``tokens``
    (raw features, no perturbation) integer token ids are accepted too."""
    if inputs.dim() < 1 or inputs.shape[0] < min_batch:
        n = inputs.shape[0] if inputs.dim() else 0
        why = (
            "bias-corrected distance correlations (U-statistics divide by n (n - 3))"
            if min_batch == MIN_BATCH
            else "partial distance correlations: at n = 4 the U-centred distance matrices span a "
            "2-dimensional space, so after removing the Base's the partial correlation is always "
            "+-1, whatever the features"
        )
        raise InputError(
            f"inputs hold a batch of {n} samples; {what} are batch statistics ({why}) that need at "
            f"least {min_batch}. Use batches of {min_batch} or more (with a DataLoader: "
            "drop_last=True)."
        )
    if tokens and not inputs.is_floating_point() and not inputs.is_complex():
        if inputs.dtype == torch.bool:
            raise InputError("inputs are booleans; pass token ids (integers) or floats.")
        return
    if not inputs.is_floating_point():
        raise InputError(
            f"inputs must be a floating-point tensor, got dtype {inputs.dtype} (integer token "
            "ids are accepted for raw features: perturbation=None, no attributions)."
        )
    if not torch.isfinite(inputs).all():
        raise InputError("inputs contain NaN or Inf; clean or re-normalise the batch first.")


def check_attributions(attr: Tensor, inputs: Tensor, name: str = "attributions") -> None:
    if not isinstance(attr, Tensor):
        raise InputError(f"{name} must be a tensor (N, 1, h, w), got {type(attr).__name__}.")
    with_channels = attr.dim() == inputs.dim() and attr.shape[1] in (1, inputs.shape[1])
    without_channels = attr.dim() == inputs.dim() - 1
    ok = (
        inputs.dim() >= 3
        and (with_channels or without_channels)
        and attr.shape[0] == inputs.shape[0]
        and all(s > 0 for s in attr.shape)
    )
    if not ok:
        raise InputError(
            f"{name} of shape {tuple(attr.shape)} cannot be matched to inputs of shape "
            f"{tuple(inputs.shape)}: expected (N, 1, h, w) as LayerGradCam and UniCAM return "
            f"(or (N, h, w), or (N, C, h, w) with the inputs' C), with the same N = "
            f"{inputs.shape[0] if inputs.dim() else '?'} and any h, w (upsampled to the input "
            "size)."
        )
    if not attr.is_floating_point():
        raise InputError(f"{name} must be floating point, got dtype {attr.dtype}.")
    if not torch.isfinite(attr).all():
        bad = int((~torch.isfinite(attr.flatten(1))).any(dim=1).sum())
        raise InputError(
            f"{name} contain NaN or Inf ({bad} of {attr.shape[0]} maps); the explained model most "
            "likely has Inf or NaN weights or activations: check its parameters "
            "(torch.isfinite(p).all() for each) and retrain or reload it."
        )


def check_estimator(estimator: Any) -> None:
    if estimator not in ("u", "v"):
        raise InputError(
            f"estimator must be 'u' (bias-corrected dCor², the paper's) or 'v' (the biased "
            f"V-statistic dCor²), got {estimator!r}."
        )


def pair(
    attributions: AttributionsType, first: str, second: str
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """One map for both models, or an explicit (first, second) pair."""
    if attributions is None or isinstance(attributions, Tensor):
        return attributions, attributions
    if isinstance(attributions, (tuple, list)) and len(attributions) == 2:
        return attributions[0], attributions[1]
    raise InputError(
        f"attributions must be None, one tensor (N, 1, h, w) used for both models, or a pair "
        f"({first}_attributions, {second}_attributions); got {type(attributions).__name__}"
        + (f" of length {len(attributions)}" if isinstance(attributions, (tuple, list)) else "")
        + "."
    )


def check_layer(layer: Any, name: str) -> None:
    if not isinstance(layer, nn.Module):
        raise InputError(
            f"{name} must be a torch.nn.Module of the model, got {type(layer).__name__}."
        )


def check_forward_func(func: Any, name: str) -> None:
    if not callable(func):
        raise InputError(
            f"{name} must be the model (or a function running it), got {type(func).__name__}."
        )


def check_perturbation(perturbation: Any, attributions: AttributionsType = None) -> None:
    if perturbation is None:
        if attributions is not None:
            raise InputError(
                "perturbation=None means raw features (no perturbation), but attributions were "
                "given; pass perturbation=mask_multiply (or road_impute) to perturb the inputs "
                "with them, or drop the attributions."
            )
        return
    if not callable(perturbation):
        raise InputError(
            "perturbation must be callable as perturbation(inputs, attributions) -> perturbed "
            "inputs (captum_unicam.perturb.mask_multiply, road_impute or your own), or None "
            f"for raw features; got {perturbation!r}."
        )


# ---------------------------------------------------------------------------
# Degenerate cases
# ---------------------------------------------------------------------------


def constant_rows(x: Tensor) -> bool:
    """True when every row of ``x`` equals the first (the features are constant)."""
    return bool((x == x[:1]).all())


def label_degeneracy(y: Tensor) -> Optional[str]:
    """Why the label vectors ``y`` (n, e) carry no information, or None.

    Distance correlations with ``y`` use its U-centred distance matrix; when that matrix
    is zero every score with the labels is 0/0. U-centring removes exactly the additive
    matrices :math:`d_{ij} = a_i + a_j`, so with one-hot labels this happens for one class,
    for a batch in which no class repeats (all pairs equally far apart), and for a batch with
    all samples but one in one class.
    "Numerically zero" means below ``1e-10`` times the largest label distance; one
    repeated class pair among n distinct one-hot classes leaves about ``0.9`` of it.
    """
    a = stats.distance_matrix(y.to(torch.float64))
    top = float(a.abs().max())
    if top == 0.0:
        return (
            "every sample of the batch has the same label (one class), so the labels carry no "
            "information"
        )
    if float(stats.u_centered(a).abs().max()) <= _LABEL_TOL * top:
        return (
            "every pair of label vectors is the same distance apart (one-hot labels of a batch in "
            "which no class repeats, or a label table whose rows are all equally far apart), or "
            "more generally the label distances are additive, d_ij = a_i + a_j (one-hot labels "
            "with "
            "all samples but one in one class), so the U-centred label distance matrix is zero"
        )
    return None


def _constant_message(who: str) -> str:
    return (
        f"{who} are the same for every sample of the batch (e.g. every attribution map is zero, "
        "so every perturbed input is the same image); check the maps with "
        "captum_unicam.viz.is_empty_map, or score the raw features (attributions=None)"
    )


class Scores:
    """The distance correlations of one batch's features and labels, each computed once.

    ``feats`` maps a key (``"s"``, ``"b"``, ``"y"``) to a float64 ``(n, d)`` tensor and
    ``names`` maps it to the words used in warnings ("the Student's features at L4").
    Each method returns ``(value, reason)``: ``reason`` is None, or why the value was
    set to 0 (a degenerate case).
    """

    def __init__(self, feats: Dict[str, Tensor], names: Dict[str, str]) -> None:
        self.feats = feats
        self.names = names
        self._r: Dict[Tuple[str, str, str], Tensor] = {}
        self._constant: Dict[str, bool] = {}

    def constant(self, key: str) -> bool:
        if key not in self._constant:
            self._constant[key] = constant_rows(self.feats[key])
        return self._constant[key]

    def r(self, a: str, b: str, estimator: str = "u") -> Tensor:
        key = (min(a, b), max(a, b), estimator)
        if key not in self._r:
            self._r[key] = dcor_sqr(self.feats[a], self.feats[b], estimator)
        return self._r[key]

    def dcor(self, a: str, b: str, estimator: str) -> Tuple[Tensor, Optional[str]]:
        for k in (a, b):
            if k != "y" and self.constant(k):
                return _zero(self.feats[a]), _constant_message(self.names[k])
        return self.r(a, b, estimator), None

    def pdcor(self, x: str, y: str, z: str) -> Tuple[Tensor, Optional[str]]:
        r"""pdCor(x, y; z) from the three bias-corrected correlations, by dcor's formula
        (:func:`captum_unicam.stats.partial_distance_correlation`)."""
        if self.constant(x):
            return _zero(self.feats[x]), _constant_message(self.names[x])
        r_xy, r_xz, r_yz = self.r(x, y), self.r(x, z), self.r(y, z)
        if not self.constant(z):  # a constant z removes nothing: pdCor = dCor(x, y)
            if 1 - float(r_xz.abs()) <= _ONE_TOL:
                return _zero(r_xy), (
                    f"{self.names[x]} and {self.names[z]} have the same distance structure (e.g. "
                    "the same model), so no unique part is left to score"
                )
            if 1 - float(r_yz.abs()) <= _ONE_TOL:
                return _zero(r_xy), f"the labels are fully explained by {self.names[z]}"
        den = (1 - r_xz**2).clamp_min(0).sqrt() * (1 - r_yz**2).clamp_min(0).sqrt()
        value = torch.where(
            den > 0,
            (r_xy - r_xz * r_yz) / torch.where(den > 0, den, torch.ones_like(den)),
            torch.zeros_like(den),
        )
        return value.clamp(-1, 1), None


def _zero(like: Tensor) -> Tensor:
    return torch.zeros((), dtype=torch.float64, device=like.device)


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


def check_pooling(pooling: Any, attention_mask: Any, inputs: Optional[Tensor]) -> None:
    """``pooling`` is one of :data:`attr._layout.POOLINGS`; ``attention_mask`` is None or an
    ``(N, T)`` tensor of 0 and 1 with the inputs' N (its T is checked at each layer)."""
    if pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    if attention_mask is None:
        return
    if not isinstance(attention_mask, Tensor) or attention_mask.dim() != 2:
        raise InputError(
            "attention_mask must be an (N, T) tensor of 0 (padding) and 1 (valid token), as a "
            f"tokenizer returns it; got {getattr(attention_mask, 'shape', type(attention_mask))}."
        )
    n = attention_mask.shape[0] if inputs is None else inputs.shape[0]
    check_mask(attention_mask, n, attention_mask.shape[1])


def _flatten_output(
    output: Any, inputs: Any = None, attention_mask: Optional[Tensor] = None, pooling: str = "mean"
) -> Tensor:
    """One row per sample from a layer's output: a tuple of floating-point tensors is
    flattened and concatenated; otherwise the hidden states (``_outputs.hidden_of``: a
    Hugging Face ``ModelOutput``, a tuple with the hidden states first) are read, and a token
    layer of a text model (``attr._layout.choose_layout``) is pooled over its valid tokens
    (``attr._layout.pool_tokens``), so padding never enters the statistics."""
    if (
        isinstance(output, (tuple, list))
        and len(output) > 1
        and all(isinstance(o, Tensor) and o.is_floating_point() for o in output)
    ):
        return torch.cat([o.detach().reshape(o.shape[0], -1) for o in output], dim=1)
    hidden = hidden_of(output).detach()
    if choose_layout(hidden, attention_mask, inputs) == "tokens":
        return pool_tokens(hidden, attention_mask, pooling)
    return hidden.reshape(hidden.shape[0], -1)


def check_model_dtype(forward_func: Callable, layers: Sequence[nn.Module], inputs: Tensor) -> None:
    """Floating ``inputs`` of another dtype than the model's parameters: an InputError that
    names both dtypes and the fix (torch would fail inside the model with its own message)."""
    modules = [forward_func] if isinstance(forward_func, nn.Module) else list(layers)
    dtypes = {p.dtype for m in modules for p in m.parameters() if p.is_floating_point()}
    if inputs.is_floating_point() and len(dtypes) == 1 and inputs.dtype not in dtypes:
        (dtype,) = dtypes
        raise InputError(
            f"inputs are {inputs.dtype} but the model's parameters are {dtype}; convert the "
            f"inputs with inputs.to({dtype}) (or the model with model.to({inputs.dtype}))."
        )


def layer_features(
    forward_func: Callable,
    layer: nn.Module,
    inputs: Tensor,
    additional_forward_args: Any = None,
    attention_mask: Optional[Tensor] = None,
    pooling: str = "mean",
) -> Tensor:
    r"""Flattened output of ``layer`` when ``forward_func`` runs on ``inputs``; a token
    layer of a text model is pooled over its valid tokens (see :func:`layers_features`).

    Runs under ``torch.no_grad()``; the forward pass stops as soon as ``layer`` has
    produced its output (the rest of the network is skipped). The hook is removed in
    every case. The model's train/eval mode is left as it is: call ``.eval()`` first,
    or batch-norm running statistics are updated.

    Returns:
        Tensor: float64 tensor ``(N, d)``.
    """
    return layers_features(
        forward_func, [layer], inputs, additional_forward_args, attention_mask, pooling
    )[0]


def layers_features(
    forward_func: Callable,
    layers: Sequence[nn.Module],
    inputs: Tensor,
    additional_forward_args: Any = None,
    attention_mask: Optional[Tensor] = None,
    pooling: str = "mean",
) -> List[Tensor]:
    r""":func:`layer_features` of several layers from one forward pass.

    A layer's output is read through ``_outputs.hidden_of`` (Hugging Face outputs). A token
    layer ``(N, T, C)`` of a text model (an ``attention_mask``, or token ids as inputs) gives
    one vector per sequence, ``attr._layout.pool_tokens(hidden, attention_mask, pooling)``:
    the mean over the valid tokens (``"mean"``) or the first token (``"cls"``). The mask,
    unless it is one of ``additional_forward_args``, is also passed to ``forward_func`` as
    the keyword ``attention_mask``. With no ``attention_mask``, the first additional forward
    argument is read as the mask when the inputs are token ids ``(N, T)`` and it is an
    ``(N, T)`` tensor of 0 and 1 (Hugging Face's order ``model(input_ids, attention_mask)``).

    The pass stops once every layer has produced its output (its first call, if a layer
    runs more than once), so reading L1..L4 costs one forward pass instead of four.

    Returns:
        list[Tensor]: float64 tensors ``(N, d_i)``, one per layer, in the order given.
    """
    check_model_dtype(forward_func, layers, inputs)
    unique = list({id(m): m for m in layers}.values())
    captured: Dict[int, Tensor] = {}

    def hook(module, _inp, out):
        if id(module) not in captured:
            captured[id(module)] = _flatten_output(out, inputs, attention_mask, pooling)
        if len(captured) == len(unique):
            raise _Captured

    args = _forward_args(additional_forward_args)
    kwargs = forward_mask_kwargs(attention_mask, args)
    if attention_mask is None:  # Hugging Face's order: model(input_ids, attention_mask)
        attention_mask = mask_from_args(inputs, args)
    handles = [m.register_forward_hook(hook) for m in unique]
    try:
        with torch.no_grad():
            try:
                forward_func(inputs, *args, **kwargs)
            except _Captured:
                pass
    finally:
        for h in handles:
            h.remove()
    out = []
    for layer in layers:
        if id(layer) not in captured:
            raise InputError(
                f"layer {type(layer).__name__} was not called when forward_func ran: pass a module "
                "of the model that forward_func evaluates."
            )
        feats = captured[id(layer)]
        if feats.shape[0] != inputs.shape[0]:
            raise InputError(
                f"layer output has {feats.shape[0]} rows for {inputs.shape[0]} inputs; the layer's "
                "first dimension must index the samples."
            )
        out.append(feats.to(torch.float64))
    return out


def perturb(inputs: Tensor, attributions: Optional[Tensor], perturbation: Perturbation) -> Tensor:
    """``perturbation(inputs, attributions)``, or ``inputs`` when there is no map (or no
    perturbation)."""
    if attributions is None or perturbation is None:
        return inputs
    with torch.no_grad():
        out = perturbation(inputs.detach(), attributions.detach())
    if not isinstance(out, Tensor) or out.shape != inputs.shape:
        raise InputError(
            f"perturbation returned {getattr(out, 'shape', type(out).__name__)}; it must return a "
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
    perturbation: Perturbation,
    additional_forward_args: Any,
    names: Tuple[str, str],
    attention_mask: Optional[Tensor] = None,
    pooling: str = "mean",
) -> Tuple[Tensor, Tensor]:
    """Features of two models at their layers, each on the inputs perturbed by its map.

    ``attributions`` is one map for both models or a pair (one per model); one map
    perturbs the inputs once. Shared by FSS and by RS of the unique features."""
    attr_a, attr_b = pair(attributions, *names)
    for a, name in ((attr_a, "attributions"), (attr_b, f"{names[1]} attributions")):
        if a is not None:
            check_attributions(a, inputs, name)
    x_a = perturb(inputs, attr_a, perturbation)
    x_b = x_a if attr_b is attr_a else perturb(inputs, attr_b, perturbation)
    (forward_a, layer_a), (forward_b, layer_b) = models
    return (
        layer_features(forward_a, layer_a, x_a, additional_forward_args, attention_mask, pooling),
        layer_features(forward_b, layer_b, x_b, additional_forward_args, attention_mask, pooling),
    )


def check_label_embeddings(label_embeddings: Optional[Tensor]) -> None:
    if label_embeddings is None:
        return
    if not isinstance(label_embeddings, Tensor) or label_embeddings.dim() != 2:
        raise InputError(
            "label_embeddings must be a 2-D tensor (num_classes, e), one row per class (e.g. "
            "embed_labels(class_names)); got "
            f"{getattr(label_embeddings, 'shape', type(label_embeddings).__name__)}."
        )
    if not label_embeddings.is_floating_point():
        raise InputError(f"label_embeddings must be floating point, got {label_embeddings.dtype}.")
    if not torch.isfinite(label_embeddings).all():
        raise InputError("label_embeddings contain NaN or Inf.")


def target_indices(target: Any, n: int) -> Tensor:
    """The metrics' targets: one class index per sample (a list or 1-D integer tensor),
    parsed by the rule UniCAM uses (captum_unicam.attr._targets), with the metrics' own
    messages for what they refuse (a single class for the batch, None, other forms)."""
    if isinstance(target, int) or (isinstance(target, Tensor) and target.dim() == 0):
        raise InputError(
            "RS needs one target per sample (a list or 1-D tensor of N class indices, or an (N, e) "
            f"float tensor of label vectors); got a single class index {int(target)}: every sample "
            "would get the same label vector (one-hot or from label_embeddings), the label "
            "distance "
            "matrix would be zero and RS 0/0 for any features. Pass each sample's own class."
        )
    if target is None:
        raise InputError("target is required: the class index of each sample (list or 1-D tensor).")
    try:
        t = target if isinstance(target, Tensor) else torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError):  # a str, a list of names, ragged lists
        raise InputError(
            f"target must hold one integer class index per sample ({n}), as a list or 1-D tensor, "
            f"or be an ({n}, e) float tensor of label vectors; got {type(target).__name__} "
            f"{target!r:.60}. Map class names to indices first (e.g. dataset.class_to_idx)."
        ) from None
    if (
        t.dim() != 1
        or t.shape[0] != n
        or t.is_floating_point()
        or t.is_complex()
        or t.dtype == torch.bool
    ):
        raise InputError(
            f"target must hold one integer class index per sample ({n}), as a list or 1-D tensor, "
            f"or be an ({n}, e) float tensor of label vectors; got shape {tuple(t.shape)}, dtype "
            f"{t.dtype}."
        )
    if n and int(t.min()) < 0:
        raise InputError(f"target holds a negative class index {int(t.min())}.")
    kind, index = parse_target(t, n, "target", None, alone=True)
    assert kind == "index" and index is not None
    return index
