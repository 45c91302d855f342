r"""Comparing attribution methods on the same images: UniCAM next to Captum's methods.

:func:`compare` explains one set of images with every method and measures, per method:

- **faithfulness to what the map explains** (:func:`captum_unicam.metrics.faithfulness`):
  ROAD deletion curves, most relevant pixels first (MoRF) and least relevant first (LeRF),
  of the quantity the map is the gradient of, against seeded random maps at the map's own
  resolution on the same images. For UniCAM maps that quantity is the per-image score
  ``S_d`` (distilled) or ``S_r`` (residual) of a UniCAM in **reference mode**; for Grad-CAM
  and Captum's methods, the target logit of the model each explains;
- **localisation** (when ground-truth masks are given, e.g. the controlled dataset's
  object and marker masks): the share of the map's positive mass inside each mask and the
  pointing game, as defined by :func:`captum_unicam.metrics.localisation.localisation`,
  with bootstrap intervals over images;
- **sanity checks** (Adebayo et al. 2018; :mod:`captum_unicam.sanity`): cascading
  randomisation of each model, and optionally a model trained on random labels.

Every UniCAM method is explained in reference mode, with one reference set for all of them
(``reference=``, or drawn class-stratified from the given images, which are then not
explained), so that a map is a function of its image alone: the map shown, the map
measured and the score the curves read are the same per-image function.

Methods are Captum ``Attribution`` objects, optionally with keyword arguments of their
``attribute`` call, so any method, including your own, can join:
``methods={"mine": (MyAttribution(student), {"steps": 8}), ...}``.
:func:`default_methods` builds the usual set: UniCAM distilled and residual, Grad-CAM of
the Student and of the Base, and Captum's ``GuidedGradCam``, ``LayerGradientXActivation``
and ``IntegratedGradients`` of the Student. ``compare(..., occlusion=4)`` adds Captum's
``Occlusion`` of each UniCAM method's score (a perturbation map of ``S_d`` / ``S_r``), and
``feature_ablation=8`` Captum's ``FeatureAblation`` of it on an 8 x 8 superpixel grid.

The model a method explains (the one whose logit its curves read, and the one randomised
for its sanity check) is its ``forward_func``; for UniCAM's residual maps
(``features="residual"``) it is the Base (``base_forward_func``).

The command line (``captum-unicam compare``) is :func:`captum_unicam.pipeline.runs.compare`;
it writes a report folder (``index.html``, ``metrics.json``, ``tables/``, ``figures/``).
"""

from __future__ import annotations

import copy
import html
import json
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from captum_unicam._batching import MIN_BATCH, batch_sizes, batch_slices
from captum_unicam._methods import (
    check_bootstrap,
    method_specs,
    new_figure,
    refers_to,
)
from captum_unicam.errors import InputError
from captum_unicam.output.html import PAGE, PARA, markdown_to_html
from captum_unicam.output.publish import REPORT_FORMAT
from captum_unicam.output.tables import csv_table, format_interval, markdown_table

__all__ = ["ComparisonResult", "compare", "default_methods", "reference_indices"]

#: Percentages of pixels removed on the deletion curves (ROAD cannot impute 100 %).
PERCENTILES = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90)
#: Reference images per class drawn from ``inputs`` when no ``reference`` is given.
REFERENCE_PER_CLASS = 4
_SCORES = {"distilled": "S_d", "residual": "S_r"}


# ---------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------


def default_methods(
    student: nn.Module,
    student_layer: nn.Module,
    base: nn.Module,
    base_layer: nn.Module,
    *,
    label_embeddings: Optional[Tensor] = None,
    ig_steps: int = 16,
) -> Dict[str, Any]:
    r"""UniCAM distilled and residual, Grad-CAM of each model, and Captum's Guided Grad-CAM,
    Gradient x Activation and Integrated Gradients of the Student.

    Args:
        student, base (nn.Module): The distilled model and the Base.
        student_layer, base_layer (nn.Module): Their layers explained (e.g. ``layer4``).
        label_embeddings (Tensor, optional): UniCAM's label vectors. Default: one-hot
        ig_steps (int, optional): Integrated Gradients' ``n_steps``. Default: 16

    Returns:
        *dict*: name -> ``(attribution, attribute kwargs)``, for :func:`compare` (which
        explains the UniCAM methods in reference mode with its reference set).
    """
    # lazy: captum.attr and UniCAM are imported only when the methods are built
    from captum.attr import (
        GuidedGradCam,
        IntegratedGradients,
        LayerGradCam,
        LayerGradientXActivation,
    )

    from captum_unicam.attr.unicam import UniCAM

    uc = UniCAM(student, student_layer, base, base_layer, label_embeddings=label_embeddings)
    relu = {"relu_attributions": True}
    return {
        "UniCAM distilled": (uc, {"features": "distilled"}),
        "UniCAM residual": (uc, {"features": "residual"}),
        "Grad-CAM Student": (LayerGradCam(student, student_layer), relu),
        "Grad-CAM Base": (LayerGradCam(base, base_layer), relu),
        "Guided Grad-CAM Student": (GuidedGradCam(student, student_layer), {}),
        "Gradient x Activation Student": (LayerGradientXActivation(student, student_layer), {}),
        "Integrated Gradients Student": (IntegratedGradients(student), {"n_steps": int(ig_steps)}),
    }


def _explained_model(attr: Any, kwargs: Mapping[str, Any]) -> Any:
    if kwargs.get("features") == "residual" and hasattr(attr, "base_forward_func"):
        return attr.base_forward_func
    return attr.forward_func


def _is_unicam(attr: Any) -> bool:
    # lazy: UniCAM pulls the statistics module; compare imports it only when it runs
    from captum_unicam.attr.unicam import UniCAM

    return isinstance(attr, UniCAM)


def _reference_unicam(uc: Any, reference: Tuple[Tensor, Tensor]) -> Any:
    """A UniCAM of the same models, layers and options as ``uc``, in reference mode."""
    from captum_unicam.attr.unicam import UniCAM

    return UniCAM(
        uc.forward_func,
        uc.layer,
        uc.base_forward_func,
        uc.base_layer,
        label_embeddings=uc.label_embeddings,
        student_feature_layer=uc.student_feature_layer,
        base_feature_layer=uc.base_feature_layer,
        reshape_transform=uc.reshape_transform,
        reference=reference,
    )


class _Score:
    """The per-image reference-mode score of a UniCAM as a forward function
    ``(inputs, labels) -> (N,)``; counts the calls in which UniCAM warned of a degenerate
    input (its score is then 0) instead of repeating the warning on every perturbed batch."""

    def __init__(self, unicam: Any, features: str) -> None:
        self.unicam, self.features, self.warned = unicam, features, 0
        self._score = unicam.score_function(features)

    def __call__(self, inputs: Tensor, labels: Tensor) -> Tensor:
        from captum_unicam.attr.unicam import UniCAMWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.no_grad():
                out = self._score(inputs, labels)
        for w in caught:
            if issubclass(w.category, UniCAMWarning):
                self.warned += 1
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return out


class _ScorePerturbation:
    """Captum's ``Occlusion`` (``kind="occlusion"``: square windows of ``size`` pixels over
    all channels, moved by ``size // 2`` pixels; a pixel's value is the mean drop of the score
    over the windows that cover it) or ``FeatureAblation`` (``kind="ablation"``: a grid of
    ``size`` x ``size`` superpixels over all channels; a pixel's value is the drop of the
    score when its cell is removed) of a per-image UniCAM score, removed pixels set to 0
    (Captum's default baseline). ``target`` holds the labels, which the score takes as an
    input."""

    def __init__(self, score: _Score, kind: str, size: int) -> None:
        # lazy: captum.attr is imported when the methods are built
        from captum.attr import FeatureAblation, Occlusion

        self.score, self.kind, self.size = score, kind, size
        self.forward_func = score
        self._method = (Occlusion if kind == "occlusion" else FeatureAblation)(score)

    def attribute(self, inputs: Tensor, target: Any = None) -> Tensor:
        common = dict(baselines=0.0, additional_forward_args=(target,), perturbations_per_eval=16)
        if self.kind == "occlusion":
            c, w = inputs.shape[1], self.size
            step = max(1, w // 2)
            return self._method.attribute(
                inputs, sliding_window_shapes=(c, w, w), strides=(c, step, step), **common
            )
        h, w = inputs.shape[-2:]
        rows = torch.arange(h, device=inputs.device) * self.size // h
        cols = torch.arange(w, device=inputs.device) * self.size // w
        mask = (rows[:, None] * self.size + cols[None, :]).expand(1, 1, h, w)
        return self._method.attribute(inputs, feature_mask=mask, **common)


# ---------------------------------------------------------------------------
# the reference set
# ---------------------------------------------------------------------------


def reference_indices(target: Any, per_class: int = REFERENCE_PER_CLASS, seed: int = 0) -> Tensor:
    r"""A seeded class-stratified draw of reference images: ``min(per_class, n_c // 2)``
    images of each class ``c`` (``n_c`` images of it), so at least half of each class is
    left to explain.

    Args:
        target (Tensor or list): The class of each image.
        per_class (int, optional): Images per class. Default: 4
        seed (int, optional): Seed of the draw. Default: 0

    Returns:
        *Tensor*: the drawn positions, sorted (int64).

    Examples::

        >>> idx = reference_indices(y, per_class=4)   # what compare draws from (x, y)
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise InputError(f"per_class must be a positive int, got {per_class!r}.")
    t = torch.as_tensor(target).cpu()
    g = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c in torch.unique(t).tolist():
        where = torch.nonzero(t == c).flatten()
        k = min(per_class, where.numel() // 2)
        chosen.append(where[torch.randperm(where.numel(), generator=g)[:k]])
    return torch.sort(torch.cat(chosen)).values


def _check_reference(reference: Any, inputs: Tensor) -> Tuple[Tensor, Tensor]:
    if not (isinstance(reference, (tuple, list)) and len(reference) == 2):
        raise InputError(
            "`reference` must be a pair (ref_inputs, ref_target), e.g. a class-stratified draw "
            "of training images (reference_indices); got "
            f"{type(reference).__name__}."
        )
    ref_x, ref_y = reference[0], torch.as_tensor(reference[1])
    if not isinstance(ref_x, Tensor) or ref_x.dim() != 4 or ref_x.shape[1:] != inputs.shape[1:]:
        raise InputError(
            f"reference[0] must be (m, C, H, W) images like `inputs` {tuple(inputs.shape[1:])}, "
            f"got {getattr(ref_x, 'shape', type(ref_x).__name__)}."
        )
    if ref_y.dim() != 1 or ref_y.shape[0] != ref_x.shape[0] or ref_y.is_floating_point():
        raise InputError(
            f"reference[1] must hold one class index per reference image ({ref_x.shape[0]}), "
            f"got shape {tuple(ref_y.shape)}."
        )
    return ref_x, ref_y


def _resolve_reference(
    reference: Any, inputs: Tensor, target: Tensor, per_class: int, seed: int
) -> Tuple[Tuple[Tensor, Tensor], Optional[Tensor], Dict[str, Any]]:
    """The reference set, the explained positions (None: all) and what the report says."""
    if reference is not None:
        ref_x, ref_y = _check_reference(reference, inputs)
        info = {"source": "given", "indices": None}
        explained = None
    else:
        idx = reference_indices(target, per_class, seed)
        ref_x, ref_y = inputs[idx], target[idx]
        keep = torch.ones(inputs.shape[0], dtype=torch.bool)
        keep[idx] = False
        explained = torch.nonzero(keep).flatten()
        info = {"source": "drawn from the inputs (not explained)", "indices": idx.tolist()}
        if explained.numel() < MIN_BATCH:
            raise InputError(
                f"drawing the reference set leaves {explained.numel()} of {inputs.shape[0]} "
                f"images to explain (at least {MIN_BATCH} needed); pass more images or "
                "reference=(ref_inputs, ref_target), e.g. from the training split."
            )
    classes = torch.unique(ref_y, return_counts=True)
    if ref_x.shape[0] < 4 or classes[0].numel() < 2:
        raise InputError(
            f"the reference set holds {ref_x.shape[0]} images of {classes[0].numel()} class(es); "
            "UniCAM's reference mode needs at least 4 images of at least 2 classes (several "
            "of each): pass reference=(ref_inputs, ref_target) or more images per class."
        )
    counts = zip(classes[0].tolist(), classes[1].tolist(), strict=True)
    info.update({"n": int(ref_x.shape[0]), "per_class": {str(c): int(k) for c, k in counts}})
    return (ref_x, ref_y.to(ref_x.device)), explained, info


def _reference_specs(specs, reference, perturbations):
    """The methods as compare explains them: every UniCAM rebuilt in reference mode (one per
    UniCAM object, so that the reference set is forward-passed once), with the score
    functions of the UniCAM methods, and the perturbation methods of their scores
    (``perturbations``: Captum name -> (kind, size or None))."""
    rebuilt: Dict[int, Any] = {}
    out: Dict[str, Tuple[Any, Dict[str, Any]]] = {}
    scores: Dict[str, _Score] = {}
    for name, (attr, kwargs) in specs.items():
        if not _is_unicam(attr):
            out[name] = (attr, kwargs)
            continue
        if {"context", "reference"} & set(kwargs) or kwargs.get("features") == "both":
            raise InputError(
                f"methods[{name!r}]: compare explains UniCAM in reference mode with its own "
                "reference set and one map per method; leave `context` and `reference` out of "
                "the kwargs (pass reference= to compare) and use features='distilled' or "
                "'residual'."
            )
        uc = rebuilt.setdefault(id(attr), _reference_unicam(attr, reference))
        out[name] = (uc, kwargs)
        scores[name] = _Score(uc, kwargs.get("features", "distilled"))
    for label, (kind, size) in perturbations.items():
        for name, score in [(n, s) for n, s in scores.items() if n in specs]:
            if size is not None:
                new = f"{label} ({name})"
                method = _ScorePerturbation(_Score(score.unicam, score.features), kind, size)
                out[new] = (method, {})
                scores[new] = out[new][0].score
    return out, scores


def _sanity_specs(specs: Mapping[str, Any], reference: Tuple[Tensor, Tensor]) -> Dict[str, Any]:
    """The user's methods with UniCAM's reference passed per call (not cached: the sanity
    checks change the models' weights in place between calls)."""
    return {
        name: (attr, {**kwargs, "reference": reference}) if _is_unicam(attr) else (attr, kwargs)
        for name, (attr, kwargs) in specs.items()
    }


# ---------------------------------------------------------------------------
# measures
# ---------------------------------------------------------------------------


def _native_map(attr: Any) -> Tensor:
    """One map per image at the method's own resolution, ``(N, 1, h, w)`` float64 on the
    CPU: a 1-tuple is unpacked, input attributions are summed over channels."""
    if isinstance(attr, tuple):
        if len(attr) != 1:
            raise InputError(f"a method returned {len(attr)} attributions; give it one input.")
        attr = attr[0]
    attr = attr.detach()
    if attr.dim() == 3:
        attr = attr.unsqueeze(1)
    if attr.dim() != 4:
        raise InputError(
            f"a method returned attributions of shape {tuple(attr.shape)}; expected (N, C, h, w)."
        )
    return attr.sum(1, keepdim=True).cpu().double() if attr.shape[1] != 1 else attr.cpu().double()


def _maps(specs, inputs: Tensor, target: Tensor, batch_size: int) -> Dict[str, Tensor]:
    """Native-resolution maps of every method, in batches of the pipeline's rule."""
    out: Dict[str, List[Tensor]] = {name: [] for name in specs}
    for sl in batch_slices(inputs.shape[0], batch_size):
        for name, (attr, kwargs) in specs.items():
            out[name].append(_native_map(attr.attribute(inputs[sl], target=target[sl], **kwargs)))
    return {name: torch.cat(v) for name, v in out.items()}


def _upsampled(native: Mapping[str, Tensor], size: Sequence[int]) -> Dict[str, Tensor]:
    # lazy: viz imports matplotlib's colour maps
    from captum_unicam.viz import upsample_maps

    return {name: upsample_maps(m.float(), size).double() for name, m in native.items()}


def _model_labels(specs: Mapping[str, Any], sanity_models: Any) -> Dict[int, str]:
    labels = {id(m): label for label, m in (sanity_models or {}).items()}
    for attr, _ in specs.values():
        if _is_unicam(attr):
            labels.setdefault(id(attr.forward_func), "Student")
            labels.setdefault(id(attr.base_forward_func), "Base")
    return labels


def _faithfulness_groups(specs, scores, labels):
    """Methods grouped by the quantity their maps explain: (key -> forward function,
    whether it takes the labels as an input, what the table calls it, names)."""
    # lazy: the metrics package imports the attribution stack
    from captum_unicam.metrics.faithfulness import target_logit

    groups: Dict[Any, Dict[str, Any]] = {}
    for name, (attr, kwargs) in specs.items():
        if name in scores:
            s = scores[name]
            key = ("score", id(s.unicam), s.features)
            group = groups.setdefault(
                key, {"forward": s, "labels_in": True, "on": _SCORES[s.features], "names": []}
            )
        else:
            model = _explained_model(attr, kwargs)
            label = labels.get(id(model), f"model {len(labels) + 1}")
            labels.setdefault(id(model), label)
            group = groups.setdefault(
                ("logit", id(model)),
                {
                    "forward": target_logit(model),
                    "labels_in": False,
                    "on": f"target logit ({label})",
                    "names": [],
                },
            )
        group["names"].append(name)
    return groups


def _faithfulness(specs, scores, native, inputs, target, labels, settings) -> Dict[str, Any]:
    # lazy: the metrics package imports the attribution stack
    from captum_unicam.metrics.faithfulness import faithfulness

    out: Dict[str, Any] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the imputation's small tensor ops are faster on one thread
    try:
        for group in _faithfulness_groups(specs, scores, labels).values():
            call = (
                dict(target=None, additional_forward_args=(target,))
                if group["labels_in"]
                else dict(target=target)
            )
            before = getattr(group["forward"], "warned", 0)
            res = faithfulness(
                group["forward"], inputs, {n: native[n] for n in group["names"]}, **call, **settings
            )
            degenerate = getattr(group["forward"], "warned", 0) - before
            for name in group["names"]:
                out[name] = {
                    "measured_on": group["on"],
                    "degenerate_score_calls": degenerate,
                    **res[name],
                }
            if degenerate:
                warnings.warn(
                    f"compare: {degenerate} calls of {group['on']} on perturbed images for "
                    f"{group['names']} had a degenerate input, scored 0 (UniCAM's warnings); the "
                    "curves are flat there. Use more reference images of each class.",
                    UserWarning,
                    stacklevel=3,
                )
    finally:
        torch.set_num_threads(threads)
    return out


def _sanity(
    specs, inputs, target, models, random_label_models, batch_size, seed, n_bootstrap, confidence
):
    # lazy: sanity imports comparison's neighbours; only needed when checks are asked for
    from captum_unicam.sanity import cascading_randomisation, label_randomisation

    common = dict(batch_size=batch_size, seed=seed, n_bootstrap=n_bootstrap, confidence=confidence)
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined Spearman values are counted in the table
        for label, model in models.items():
            chosen = {n: s for n, s in specs.items() if refers_to(s[0], model)}
            if chosen:
                results.append(
                    cascading_randomisation(
                        model, chosen, inputs, target, check=f"{label} randomised", **common
                    )
                )
        for label, (model, random_model) in random_label_models.items():
            chosen = {n: s for n, s in specs.items() if refers_to(s[0], model)}
            if chosen:
                rebound = _rebind(chosen, model, random_model)
                results.append(
                    label_randomisation(
                        chosen, rebound, inputs, target, check=f"{label} on random labels", **common
                    )
                )
    result = None
    for r in results:
        result = r if result is None else result + r
    return result


def _rebind(specs: Mapping[str, Any], old: nn.Module, new: nn.Module) -> Dict[str, Any]:
    """Copies of the methods in which every reference to ``old`` (and its submodules)
    points to the same-named part of ``new`` (a model of the same architecture)."""
    new_modules = dict(new.named_modules())
    memo: Dict[int, Any] = {}
    for name, module in old.named_modules():
        if name not in new_modules or type(new_modules[name]) is not type(module):
            raise InputError(
                f"the random-label model has no submodule {name!r} like the model's; give it "
                "the same architecture."
            )
        memo[id(module)] = new_modules[name]
    new_shapes = {k: v.shape for k, v in new.state_dict().items()}
    if {k: v.shape for k, v in old.state_dict().items()} != new_shapes:
        raise InputError(
            "the random-label model's parameters differ in names or shapes from the model's; "
            "give it the same architecture."
        )
    return copy.deepcopy(dict(specs), memo)


# ---------------------------------------------------------------------------
# compare: checks before any work
# ---------------------------------------------------------------------------


def _check_images(inputs: Any, target: Any, batch_size: Any) -> Tensor:
    """The targets as a tensor, after checking the images, the targets and the batching."""
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or inputs.shape[0] < MIN_BATCH:
        raise InputError(
            f"`inputs` must be a (N, C, H, W) tensor with N >= {MIN_BATCH} (the sanity checks "
            f"and the batching rule need 5), got {getattr(inputs, 'shape', inputs)}."
        )
    n = inputs.shape[0]
    target_t = torch.as_tensor(target)
    if target_t.dim() != 1 or target_t.shape[0] != n or target_t.is_floating_point():
        raise InputError(
            f"`target` must hold one class index per image ({n}), got shape "
            f"{tuple(target_t.shape)}."
        )
    batch_sizes(n, batch_size)  # batch_size >= 5; the same cut as the pipeline's
    return target_t


def _check_masks(masks: Any, inputs: Tensor) -> Dict[str, Tensor]:
    masks = dict(masks or {})
    for region, m in masks.items():
        if (
            not isinstance(m, Tensor)
            or m.shape[0] != inputs.shape[0]
            or (m.shape[-2:] != inputs.shape[-2:])
        ):
            raise InputError(
                f"masks[{region!r}] must be a (N, 1, H, W) tensor matching `inputs` "
                f"{tuple(inputs.shape)}, got {getattr(m, 'shape', type(m).__name__)}."
            )
    return masks


def _check_size(value: Any, name: str, high: int) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high
    ):
        raise InputError(f"{name} must be None or an int within 1..{high}, got {value!r}.")


def _check_curves(
    percentiles: Sequence[float],
    n_random: Any,
    occlusion: Any,
    feature_ablation: Any,
    inputs: Tensor,
) -> List[float]:
    percentiles = [float(p) for p in percentiles]
    if any(not 0 <= p < 100 for p in percentiles) or percentiles != sorted(set(percentiles)):
        raise InputError(
            f"percentiles must increase strictly within [0, 100) (ROAD cannot impute an image "
            f"with no pixel left), got {percentiles}."
        )
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 1:
        raise InputError(f"n_random must be a positive int, got {n_random!r}.")
    _check_size(occlusion, "occlusion (the window side in pixels)", min(inputs.shape[-2:]))
    _check_size(
        feature_ablation, "feature_ablation (the grid's cells per side)", min(inputs.shape[-2:])
    )
    return percentiles


def _check_sanity(sanity_models: Any, random_label_models: Any, sanity_images: Any) -> None:
    for label, model in (sanity_models or {}).items():
        if not isinstance(model, nn.Module):
            raise InputError(
                f"sanity_models[{label!r}] must be a torch.nn.Module, got {type(model).__name__}."
            )
    for label, pair in (random_label_models or {}).items():
        if not (
            isinstance(pair, tuple)
            and len(pair) == 2
            and all(isinstance(m, nn.Module) for m in pair)
        ):
            raise InputError(
                f"random_label_models[{label!r}] must be a pair (model, random_label_model) of "
                "torch.nn.Modules."
            )
        _rebind({}, *pair)  # architecture check before any work
    if (
        (sanity_models or random_label_models)
        and sanity_images is not None
        and (
            isinstance(sanity_images, bool)
            or not isinstance(sanity_images, int)
            or sanity_images < MIN_BATCH
        )
    ):
        raise InputError(
            f"sanity_images must be None or an int >= {MIN_BATCH} (the sanity checks explain "
            f"batches of images), got {sanity_images!r}."
        )


# ---------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------


def compare(
    inputs: Tensor,
    target: Any,
    methods: Mapping[str, Any],
    *,
    reference: Optional[Tuple[Tensor, Any]] = None,
    reference_per_class: int = REFERENCE_PER_CLASS,
    masks: Optional[Mapping[str, Tensor]] = None,
    percentiles: Sequence[float] = PERCENTILES,
    n_random: int = 3,
    occlusion: Optional[int] = None,
    feature_ablation: Optional[int] = None,
    sanity_models: Optional[Mapping[str, nn.Module]] = None,
    random_label_models: Optional[Mapping[str, Tuple[nn.Module, nn.Module]]] = None,
    sanity_images: Optional[int] = 32,
    road_noise: float = 0.01,
    batch_size: int = 64,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> "ComparisonResult":
    r"""Faithfulness, localisation and sanity checks of attribution methods on the same images.

    Every UniCAM method is explained in **reference mode**: a UniCAM of the same models and
    layers is built with ``reference``, so each map (the one shown, localised and measured)
    is a function of its image alone and the faithfulness curves read the per-image score
    that map is the gradient of, ``S_d`` or ``S_r`` with that reference set.

    Args:
        inputs (Tensor): ``(N, C, H, W)`` images, N >= 5. Maps are computed in calls of
                    ``batch_size`` images (a last call of fewer than 5 joins the one
                    before, as in the pipeline's batches); no map depends on the others.
        target (Tensor or list): The class of each image (the true labels, usually).
        methods (dict): name -> Captum ``Attribution`` or ``(attribution, attribute
                    kwargs)``; e.g. :func:`default_methods`. Input attributions
                    (``(N, C, H, W)``) are summed over channels; layer maps are upsampled
                    to the input size (bilinear) for the figures and the localisation, and
                    measured at their own resolution by the curves.
        reference (tuple, optional): ``(ref_inputs, ref_target)``, UniCAM's reference set
                    (several images of each class, e.g. from the training split:
                    ``captum_unicam.reference_set(train_dataset, 16)``). Default: None, a
                    class-stratified draw (:func:`reference_indices`) of
                    ``reference_per_class`` images per class (at most half of a class) from
                    ``inputs`` (seeded by ``seed``); those images are then not explained
                    and ``metrics["explained"]`` lists the positions that are.
        reference_per_class (int, optional): Images per class of the drawn reference set.
                    Default: 4
        masks (dict, optional): region name -> ``(N, 1, H, W)`` ground-truth masks (e.g.
                    ``{"object": ds.masks, "marker": ds.marker_masks}``). Default: None
                    (no localisation)
        percentiles (sequence of float, optional): Percentages of pixels removed on the
                    deletion curves, increasing in [0, 100); empty to skip the curves.
                    Default: 0, 10, ..., 90
        n_random (int, optional): Random maps per image of the baseline. Default: 3
        occlusion (int, optional): Adds ``"Occlusion (<name>)"`` for every UniCAM method:
                    Captum's ``Occlusion`` of that method's per-image score, with square
                    windows of this many pixels over all channels, moved by half a window,
                    set to 0 (e.g. 4 or 8 for 32 x 32 images). Not in the sanity checks.
                    Default: None (they cost one score call per window position)
        feature_ablation (int, optional): Adds ``"FeatureAblation (<name>)"`` for every
                    UniCAM method: Captum's ``FeatureAblation`` of its per-image score on a
                    grid of this many superpixels per side (all channels), removed to 0.
                    Not in the sanity checks. Default: None
        sanity_models (dict, optional): label -> model to randomise (cascading, top block
                    first) for the methods that call it, e.g. ``{"Student": student,
                    "Base": base}``. Default: None (no sanity check)
        random_label_models (dict, optional): label -> ``(model, random_label_model)``: the
                    methods that call ``model`` are rebuilt on ``random_label_model`` (same
                    architecture, trained on permuted labels) and compared. Default: None
        sanity_images (int, optional): Images of the sanity checks (the first explained
                    ones, at least 5; all when None). Default: 32
        road_noise (float, optional): ROAD's imputation noise. Default: 0.01
        batch_size (int, optional): Images per attribution call, at least 5. Default: 64
        n_bootstrap (int, optional): Bootstrap resamples over images. Default: 1000
        confidence (float, optional): Interval level. Default: 0.95
        seed (int, optional): Seed of the reference draw, the random maps, ROAD's noise,
                    the randomisation and the bootstrap. Default: 0

    Returns:
        *ComparisonResult*: ``metrics`` (every number), ``maps``, ``tables`` (Markdown and
        CSV per measure) and ``figures`` (one matplotlib figure per measure).

    Raises:
        InputError: fewer than 5 images, a ``batch_size`` under 5, targets, masks,
        reference, percentiles or models that do not fit; raised before any map is computed.

    Examples::

        >>> from captum_unicam import compare, reference_set
        >>> from captum_unicam.comparison import default_methods
        >>> methods = default_methods(student, student.layer4, base, base.layer4)
        >>> result = compare(ds.images[:64], ds.labels[:64], methods,
        ...                  reference=reference_set(train_dataset, 16),
        ...                  masks={"object": ds.masks[:64]},
        ...                  sanity_models={"Student": student, "Base": base})
        >>> print(result.tables["faithfulness"]["md"])
        >>> result.figures["faithfulness"].savefig("faithfulness.png")
    """
    specs = method_specs(methods)
    target_t = _check_images(inputs, target, batch_size)
    masks = _check_masks(masks, inputs)
    percentiles = _check_curves(percentiles, n_random, occlusion, feature_ablation, inputs)
    check_bootstrap(n_bootstrap, confidence)
    _check_sanity(sanity_models, random_label_models, sanity_images)
    ref, explained, ref_info = _resolve_reference(
        reference, inputs, target_t.to(inputs.device), reference_per_class, seed
    )
    if explained is not None:
        inputs, target_t = inputs[explained.to(inputs.device)], target_t[explained]
        masks = {r: m[explained.to(m.device)] for r, m in masks.items()}
    batch_sizes(inputs.shape[0], batch_size)
    ref_specs, scores = _reference_specs(
        specs,
        ref,
        {"Occlusion": ("occlusion", occlusion), "FeatureAblation": ("ablation", feature_ablation)},
    )
    y = target_t.to(inputs.device)
    timings: Dict[str, float] = {}
    boot = dict(n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # Captum's notes that it sets requires_grad / ReLU hooks during GuidedGradCam
        warnings.filterwarnings(
            "ignore", message=".*(did not already require gradients|backward hooks on ReLU).*"
        )
        native = _maps(ref_specs, inputs, y, batch_size)
    maps = _upsampled(native, inputs.shape[-2:])
    timings["maps_s"] = time.perf_counter() - t0
    _warn_occlusion(ref_specs)
    metrics: Dict[str, Any] = {
        "methods": list(ref_specs),
        "n_images": int(inputs.shape[0]),
        "reference": ref_info,
        "explained": None if explained is None else explained.tolist(),
        "localisation": None,
        "faithfulness": None,
        "sanity": None,
    }
    _measure(metrics, timings, masks, maps, boot)
    if percentiles:
        t0 = time.perf_counter()
        settings = dict(
            percentiles=percentiles,
            mode="deletion",
            baseline="road",
            noise=road_noise,
            n_random=n_random,
            batch_size=batch_size,
            **boot,
        )
        metrics["faithfulness"] = {
            "percentiles": percentiles,
            "noise": road_noise,
            "n_random": n_random,
            "confidence": confidence,
            "seed": seed,
            "methods": _faithfulness(
                ref_specs, scores, native, inputs, y, _model_labels(specs, sanity_models), settings
            ),
        }
        timings["faithfulness_s"] = time.perf_counter() - t0
    sanity_result = None
    if sanity_models or random_label_models:
        t0 = time.perf_counter()
        k = inputs.shape[0] if sanity_images is None else min(int(sanity_images), inputs.shape[0])
        sanity_result = _sanity(
            _sanity_specs(specs, ref),
            inputs[:k],
            y[:k],
            dict(sanity_models or {}),
            dict(random_label_models or {}),
            batch_size,
            seed,
            n_bootstrap,
            confidence,
        )
        metrics["sanity"] = sanity_result.to_dict() if sanity_result is not None else None
        timings["sanity_s"] = time.perf_counter() - t0
    metrics["timings"] = {key: round(v, 2) for key, v in timings.items()}
    return ComparisonResult(metrics, maps, inputs.detach().cpu(), sanity_result)


def _warn_occlusion(specs: Mapping[str, Any]) -> None:
    for name, (attr, _) in specs.items():
        if isinstance(attr, _ScorePerturbation) and attr.score.warned:
            warnings.warn(
                f"compare: {attr.score.warned} score calls of {name!r} had a degenerate "
                "perturbed input, scored 0 (UniCAM's warnings); the map is off where those "
                "pixels are. Use more reference images of each class.",
                UserWarning,
                stacklevel=3,
            )


def _measure(metrics, timings, masks, maps, boot) -> None:
    if masks:
        # lazy: the report module pulls the whole evaluation stack
        from captum_unicam.metrics.localisation import localisation

        t0 = time.perf_counter()
        metrics["localisation"] = {
            region: localisation(maps, m, **boot) for region, m in masks.items()
        }
        timings["localisation_s"] = time.perf_counter() - t0


# ---------------------------------------------------------------------------
# result: tables, figures, report folder
# ---------------------------------------------------------------------------

_STATS = ("mean", "low", "high")
_SHORT = {
    "better than random": "better",
    "worse than random": "worse",
    "not distinguishable from random": "≈ random",
}


def _localisation_table(loc: Mapping[str, Any], methods: Sequence[str]) -> Dict[str, str]:
    header = (
        ["method"] + [f"{r}: mass [95% CI]" for r in loc] + [f"{r}: pointing [95% CI]" for r in loc]
    )
    rows, crows = [], []
    for m in methods:
        k = {r: loc[r]["kinds"][m] for r in loc}
        rows.append([m] + [format_interval(k[r][q]) for q in ("energy", "pointing") for r in loc])
        crows.append(
            [m] + [k[r][q][s] for q in ("energy", "pointing") for r in loc for s in _STATS]
        )
    rows.append(["chance (mask area)"] + [f"{loc[r]['chance']['energy']:.3f}" for r in loc] * 2)
    cheader = ["method"] + [
        f"{r}_{q}_{s}" for q in ("energy", "pointing") for r in loc for s in _STATS
    ]
    return {"md": markdown_table(header, rows), "csv": csv_table(cheader, crows)}


def _verdict(e: Mapping[str, Any]) -> str:
    """The gap's verdict (the most robust entry), with MoRF's when it differs."""
    gap, morf = e["gap"]["verdict"], e["morf"]["verdict"]
    return gap if gap == morf else f"{gap} (MoRF: {_SHORT[morf]})"


def _faithfulness_table(faith: Mapping[str, Any], methods: Sequence[str]) -> Dict[str, str]:
    level = f"{100 * faith['confidence']:g}%"
    header = [
        "method",
        "measured on",
        "maps constant",
        "MoRF AUC",
        "random MoRF AUC",
        f"MoRF − random [{level} CI]",
        "gap",
        "random gap",
        f"gap − random [{level} CI]",
        "verdict",
    ]
    rows, crows = [], []
    for m in methods:
        e = faith["methods"][m]
        rows.append(
            [
                m,
                e["measured_on"],
                f"{e['n_constant_maps']} / {e['n_images']}",
                f"{e['morf']['auc']['mean']:.4g}",
                f"{e['morf']['random_auc']['mean']:.4g}",
                format_interval(e["morf"]["minus_random"]),
                f"{e['gap']['auc']['mean']:.4g}",
                f"{e['gap']['random_auc']['mean']:.4g}",
                format_interval(e["gap"]["minus_random"]),
                _verdict(e),
            ]
        )
        crows.append(
            [m, e["measured_on"], e["n_constant_maps"], e["n_images"]]
            + [
                e[k][q][s]
                for k in ("morf", "lerf", "gap")
                for q in ("auc", "random_auc", "minus_random")
                for s in _STATS
            ]
            + [e[k]["verdict"] for k in ("morf", "lerf", "gap")]
        )
    cheader = (
        ["method", "measured_on", "n_constant_maps", "n_images"]
        + [
            f"{k}_{q}_{s}"
            for k in ("morf", "lerf", "gap")
            for q in ("auc", "random_auc", "minus_random")
            for s in _STATS
        ]
        + [f"{k}_verdict" for k in ("morf", "lerf", "gap")]
    )
    return {"md": markdown_table(header, rows), "csv": csv_table(cheader, crows)}


def _localisation_figure(loc: Mapping[str, Any], methods: Sequence[str]):
    fig = new_figure((1.2 + 3.2 * len(loc), 3.6))
    axes = fig.subplots(1, len(loc), squeeze=False)[0]
    for ax, (region, d) in zip(axes, loc.items(), strict=True):
        e = [d["kinds"][m]["energy"] for m in methods]
        mean = [x["mean"] if x["mean"] is not None else np.nan for x in e]
        err = [
            [max(0.0, x["mean"] - x["low"]) if x["mean"] is not None else 0 for x in e],
            [max(0.0, x["high"] - x["mean"]) if x["mean"] is not None else 0 for x in e],
        ]
        ax.barh(range(len(methods)), mean, xerr=err, color="tab:blue", alpha=0.8)
        ax.axvline(d["chance"]["energy"], color="0.3", ls="--", lw=0.8, label="chance")
        ax.set_yticks(range(len(methods)))
        ax.set_yticklabels(methods if ax is axes[0] else [""] * len(methods), fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_title(f"mass on the {region}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _faithfulness_figure(faith: Mapping[str, Any], methods: Sequence[str]):
    cols = min(4, len(methods))
    rows = -(-len(methods) // cols)
    fig = new_figure((2.6 * cols, 2.3 * rows + 0.3))
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax, m in zip(axes[: len(methods)], methods, strict=True):
        e = faith["methods"][m]
        xs, c = e["percentiles"], e["curves"]
        ax.plot(xs, c["morf"], color="tab:red", marker="o", ms=2, label="map, MoRF")
        ax.plot(xs, c["lerf"], color="tab:blue", marker="o", ms=2, label="map, LeRF")
        ax.plot(xs, c["random_morf"], color="tab:red", ls="--", lw=0.8, label="random, MoRF")
        ax.plot(xs, c["random_lerf"], color="tab:blue", ls="--", lw=0.8, label="random, LeRF")
        ax.set_title(f"{m}\n{_SHORT[e['gap']['verdict']]} (gap)", fontsize=7)
        ax.set_xlabel("pixels removed (%)", fontsize=7)
        ax.set_ylabel(e["measured_on"], fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes[len(methods) :]:
        ax.axis("off")
    axes[0].legend(fontsize=5)
    fig.tight_layout()
    return fig


class ComparisonResult:
    r"""What :func:`compare` measured.

    Attributes:
        metrics (dict): every number: ``methods`` (names, the Occlusion methods included),
                    ``n_images`` (explained), ``reference`` (``source``, ``n``,
                    ``per_class``, ``indices`` when drawn from the inputs), ``explained``
                    (positions in ``inputs`` of the explained images; None: all),
                    ``faithfulness`` (``percentiles``, ``noise``, ``n_random`` and
                    ``methods``: method -> ``measured_on``, ``degenerate_score_calls`` and
                    the output of :func:`captum_unicam.metrics.faithfulness.faithfulness`),
                    ``localisation`` (region -> the output of
                    :func:`captum_unicam.metrics.localisation.localisation`), ``sanity`` (rows of
                    :class:`~captum_unicam.sanity.SanityResult`), ``timings``.
        maps (dict[str, Tensor]): method -> ``(N, 1, H, W)`` maps on the input grid.
        tables (dict): measure -> ``{"md": ..., "csv": ...}``.
        figures (dict): measure -> matplotlib ``Figure`` (made on first access).
    """

    def __init__(
        self, metrics: Dict[str, Any], maps: Dict[str, Tensor], inputs: Tensor, sanity_result: Any
    ) -> None:
        self.metrics = metrics
        self.maps = maps
        self._inputs = inputs
        self._sanity = sanity_result
        self._figures: Optional[Dict[str, Any]] = None

    @property
    def tables(self) -> Dict[str, Dict[str, str]]:
        out: Dict[str, Dict[str, str]] = {}
        methods = self.metrics["methods"]
        if self.metrics["faithfulness"]:
            out["faithfulness"] = _faithfulness_table(self.metrics["faithfulness"], methods)
        if self.metrics["localisation"]:
            out["localisation"] = _localisation_table(self.metrics["localisation"], methods)
        if self._sanity is not None:
            out["sanity"] = {"md": self._sanity.to_markdown(), "csv": self._sanity.to_csv()}
        return out

    @property
    def figures(self) -> Dict[str, Any]:
        if self._figures is None:
            self._figures = self._make_figures()
        return self._figures

    def _make_figures(self) -> Dict[str, Any]:
        # lazy: viz imports matplotlib's colour maps, needed only for figures
        from captum_unicam import viz

        methods = self.metrics["methods"]
        k = min(4, self._inputs.shape[0])
        figs: Dict[str, Any] = {
            "maps": viz.attribution_grid(
                self._inputs[:k],
                {m: self.maps[m][:k].float() for m in methods},
                title="maps of every method (UniCAM in reference mode)",
            )
        }
        if self.metrics["faithfulness"]:
            figs["faithfulness"] = _faithfulness_figure(self.metrics["faithfulness"], methods)
        if self.metrics["localisation"]:
            figs["localisation"] = _localisation_figure(self.metrics["localisation"], methods)
        if self._sanity is not None:
            figs["sanity"] = self._sanity.figure()
        return figs

    def write(
        self,
        folder: Path,
        *,
        title: str = "Comparison of attribution methods",
        command: str = "",
        notes: Sequence[str] = (),
        dpi: int = 80,
    ) -> List[str]:
        r"""Writes ``metrics.json``, ``tables/*.md|.csv``, ``figures/*.png`` and
        ``index.html`` into ``folder`` (which must exist and be empty; the command line
        builds it in a temporary folder and publishes it with
        :func:`captum_unicam.output.publish.publish_folder`).

        Returns:
            *list[str]*: the files written, relative to ``folder``.
        """
        # lazy: the report module pulls the whole evaluation stack
        from captum_unicam.output.report import to_jsonable, versions
        from captum_unicam.viz import save_figure

        folder = Path(folder)
        (folder / "tables").mkdir(parents=True, exist_ok=True)
        (folder / "figures").mkdir(exist_ok=True)
        written = []
        tables = self.tables
        for name, t in tables.items():
            for ext in ("md", "csv"):
                (folder / "tables" / f"{name}.{ext}").write_text(t[ext], encoding="utf-8")
                written.append(f"tables/{name}.{ext}")
        for name, fig in self.figures.items():
            save_figure(fig, folder / "figures" / f"{name}.png", dpi=dpi)
            written.append(f"figures/{name}.png")
        doc = {
            "format": REPORT_FORMAT,
            "title": title,
            "command": command,
            "notes": list(notes),
            **self.metrics,
            "versions": versions(),
        }
        (folder / "metrics.json").write_text(
            json.dumps(to_jsonable(doc), indent=1) + "\n", encoding="utf-8"
        )
        written.append("metrics.json")
        page = _index_html(title, command, notes, tables, written, versions())
        (folder / "index.html").write_text(page, encoding="utf-8")
        written.append("index.html")
        return written


# The sections of compare's page: (heading, what the section's numbers mean).
_SECTIONS = {
    "maps": (
        "Maps",
        "The first images, every method's map (upsampled to the image); UniCAM's "
        "maps in reference mode, so each is a function of its image alone.",
    ),
    "faithfulness": (
        "Faithfulness to what each map explains",
        "ROAD deletion curves: the "
        "quantity the map explains, on images whose most relevant pixels (MoRF) or "
        "least relevant pixels (LeRF) were replaced by noisy linear imputation, "
        "against random maps at the map's own resolution on the same images. "
        "UniCAM and Occlusion maps are measured on the per-image score S_d "
        "(distilled) or S_r (residual) with the reference set, every other map on "
        "the target logit of the model it explains. A faithful map has a lower "
        "MoRF AUC (mean height of the curve) than random and a larger gap (LeRF − "
        "MoRF AUC); 'MoRF − random' and 'gap − random' are paired per image, with "
        "bootstrap intervals over images; the verdict is the gap's. Units differ "
        "between quantities (logits, units of S_d): compare each method with its "
        "random baseline, not the rows with each other. This replaces the ROAD "
        "accuracy curves, which read the predicted class (a coarse, step-wise "
        "quantity no map explains directly) and had no random baseline.",
    ),
    "localisation": (
        "Localisation",
        "Share of each map's positive mass inside each ground-truth "
        "mask, and the pointing game (is the map's largest pixel inside?), 95 % "
        "bootstrap intervals over images.",
    ),
    "sanity": (
        "Sanity checks",
        "Similarity of each method's maps to the intact model's after "
        "re-initialising the model's blocks from the top down (cumulatively), or for a "
        "model trained on random labels. A map that stays similar does not depend on what "
        "the model learned.",
    ),
}
_CSS = (
    "body{font-family:sans-serif;max-width:70em;margin:1em auto}table{border-collapse:collapse;"
    "font-size:0.85em}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}"
)


def _index_html(
    title: str,
    command: str,
    notes: Sequence[str],
    tables: Mapping[str, Mapping[str, str]],
    written: Sequence[str],
    versions: Mapping[str, str],
) -> str:
    """compare's ``index.html`` in the page template of :mod:`captum_unicam.output.html`."""
    e = html.escape
    sections, meanings = [], []
    for name, (head, text) in _SECTIONS.items():
        fig = f"figures/{name}.png"
        if name not in tables and fig not in written:
            continue
        sections.append(f"<h2>{e(head)}</h2>" + PARA.substitute(cls="note", text=e(text)))
        meanings.append(f"<dt>{e(head)}</dt><dd>{e(text)}</dd>")
        if fig in written:
            sections.append(f'<img src="{fig}" alt="{e(head)}">')
        if name in tables:
            sections.append(markdown_to_html(tables[name]["md"]))
            sections.append(f'<p><a href="tables/{name}.csv">{name}.csv</a></p>')
    rows = "\n".join(f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in versions.items())
    return PAGE.substitute(
        title=e(title),
        css=_CSS,
        nav="",
        warnings="",
        notes="\n".join(f"<p>{e(n)}</p>" for n in notes),
        sections="\n".join(sections),
        meanings="\n".join(meanings),
        links='<p>All numbers: <a href="metrics.json">metrics.json</a>.</p>',
        versions=rows,
        command=e(command),
    )
