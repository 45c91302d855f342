r"""How a study is evaluated: accuracies, maps and FSS / RS of a Student/Base pair.

Every UniCAM object of the pipeline is built by :func:`make_unicam`, and every FSS / RS
evaluation runs through :func:`score_pair`, so a change of either API is one edit here.
:func:`compute_maps` draws Grad-CAM (Student, Base) and UniCAM (distilled, residual) maps
per layer; :func:`map_grids` picks one image per class for the figures;
:func:`localise` measures where each map kind puts its mass on the object masks;
:func:`cued_evaluation` compares cue-free and cued test images (scores and where each
map kind puts its mass), for the demo report and the experiment runner alike.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "MAP_COLUMNS",
    "TEACHER_COLUMN",
    "CHANCE_MARGIN",
    "CHECKPOINT_DROP",
    "make_unicam",
    "score_pair",
    "compute_maps",
    "teacher_maps",
    "map_grids",
    "localise",
    "cued_evaluation",
    "sanity_lines",
    "predictions",
    "pick_images",
    "prediction_marks",
    "empty_map_counts",
    "set_scores",
]

#: Map kinds of :func:`compute_maps` and their column titles in the figures.
MAP_COLUMNS = {
    "gradcam_student": "Grad-CAM student",
    "gradcam_base": "Grad-CAM base",
    "distilled": "UniCAM distilled",
    "residual": "UniCAM residual",
}


#: Column title of the Teacher's Grad-CAM maps (explain with a Teacher).
TEACHER_COLUMN = "Grad-CAM teacher"

#: A model whose accuracy on the evaluated set is below 1 / num_classes + this is near chance.
CHANCE_MARGIN = 0.05
#: A model whose accuracy on the evaluated set is more than this below the accuracy its
#: checkpoint records is far below it.
CHECKPOINT_DROP = 0.10

_MISMATCH = (
    "likely a preprocessing mismatch (--image-size, --normalize, --resize) or a "
    "class-order mismatch (class folders in another order than the model was trained "
    "with; --class-map), or a model that did not train; no conclusion about "
    "distillation is drawn from it"
)


def sanity_lines(
    models: Mapping[str, Mapping[str, Any]],
    num_classes: int,
    *,
    n_images: Optional[int] = None,
    reason: Optional[str] = None,
) -> List[str]:
    r"""The models that fail the sanity check before any conclusion, one line each.

    A model is flagged when its accuracy on the evaluated set is near chance (below
    ``1 / num_classes +`` :data:`CHANCE_MARGIN`) or more than :data:`CHECKPOINT_DROP` below
    the accuracy its checkpoint records (``"recorded_accuracy"``) and, when ``n_images`` is
    given, by more than twice the binomial standard error of an accuracy on that many images
    (on 8 images, 62 % against a recorded 73 % is sampling noise, not a mismatch).

    Args:
        models (dict): role -> ``{"accuracy", "recorded_accuracy" (optional)}``, fractions.
        num_classes (int): the number of evaluated classes.
        n_images (int, optional): the number of evaluated images. Default: None (no
                    allowance for sampling noise)
        reason (str, optional): the likely cause named in each line. Default: a
                    preprocessing or class-order mismatch, or a model that did not train.

    Returns:
        list of str: empty when every model passes.

    Examples::

        >>> sanity_lines({"Base": {"accuracy": 0.11}}, 10)[0][:40]
        "Base: accuracy 11.0 % on the evaluated s"
    """
    chance = 1.0 / max(int(num_classes), 1)
    why = reason or _MISMATCH
    lines = []
    for role, info in models.items():
        acc, rec = info.get("accuracy"), info.get("recorded_accuracy")
        if not isinstance(acc, (int, float)):
            continue
        if acc < chance + CHANCE_MARGIN:
            lines.append(
                f"{role}: accuracy {100 * acc:.1f} % on the evaluated set is within "
                f"{100 * CHANCE_MARGIN:.0f} points of chance ({100 * chance:.1f} % for "
                f"{num_classes} classes): {why}."
            )
        elif isinstance(rec, (int, float)) and acc < rec - _drop_allowed(rec, n_images):
            lines.append(
                f"{role}: accuracy {100 * acc:.1f} % on the evaluated set is "
                f"{100 * (rec - acc):.1f} points below the {100 * rec:.1f} % its "
                f"checkpoint records: {why}."
            )
    return lines


def _drop_allowed(recorded: float, n_images: Optional[int]) -> float:
    """How far below its recorded accuracy a model may score before it is flagged."""
    if not n_images:
        return CHECKPOINT_DROP
    noise = 2.0 * math.sqrt(max(recorded * (1.0 - recorded), 0.0) / n_images)
    return max(CHECKPOINT_DROP, noise)


def make_unicam(student, student_layer, base, base_layer, *, label_embeddings=None, reference=None):
    r"""The :class:`~captum_unicam.UniCAM` of one layer pair (the one place the pipeline
    builds it); ``reference=(ref_inputs, ref_target)`` selects reference mode."""
    from captum_unicam.attr.unicam import UniCAM

    return UniCAM(
        student,
        student_layer,
        base,
        base_layer,
        label_embeddings=label_embeddings,
        reference=reference,
    )


def score_pair(
    student,
    base,
    loader,
    layers: Mapping[str, Tuple[Any, Any]],
    *,
    label_embeddings=None,
    map_kinds: Sequence[str] = ("none", "gradcam", "distilled", "residual"),
    perturbation: str = "mask",
    n_bootstrap: int = 1000,
    n_permutations: int = 10000,
    seed: int = 0,
    progress: bool = True,
    device: Any = "cpu",
    accuracies: Optional[Mapping[str, float]] = None,
):
    r"""FSS and RS of ``student`` against ``base`` over ``loader``, per layer and map kind
    (:func:`~captum_unicam.metrics.evaluate_kd`; the one place the pipeline calls it).

    Args:
        perturbation (str): ``"mask"`` (image times map), ``"road"`` (impute the least
                    relevant pixels) or ``"none"`` (raw features: only the ``none`` kind).
        accuracies (dict, optional): ``{"teacher", "base", "student"}`` accuracies for the
                    conclusion (:meth:`~captum_unicam.metrics.KDEvaluation.conclusion`).

    Returns:
        *KDEvaluation*, whose ``settings["perturbation"]`` names what was run.
    """
    from captum_unicam.errors import InputError
    from captum_unicam.metrics import evaluate_kd

    if perturbation not in ("mask", "road", "none"):
        raise InputError(f"perturbation must be one of mask, road, none, got {perturbation!r}")
    kinds = ("none",) if perturbation == "none" else tuple(dict.fromkeys(map_kinds))
    evaluation = evaluate_kd(
        student,
        layers,
        loader,
        base_forward_func=base,
        label_embeddings=label_embeddings,
        maps=kinds,
        perturbation=None if perturbation == "none" else perturbation,
        n_bootstrap=n_bootstrap,
        n_permutations=n_permutations,
        seed=seed,
        progress=progress,
        device=device,
        accuracies=dict(accuracies or {}) or None,
    )
    evaluation.settings["perturbation"] = perturbation
    return evaluation


def localise(
    maps: Mapping[str, Mapping[str, Any]], masks, *, seed: int, n_bootstrap: int
) -> Optional[Dict[str, Any]]:
    r"""Localisation of every map kind of :func:`compute_maps` per layer
    (:func:`~captum_unicam.metrics.localisation.localisation`, columns named by
    :data:`MAP_COLUMNS`), only where the data have object masks (else None)."""
    if masks is None:
        return None
    from captum_unicam.metrics.localisation import localisation

    return {
        layer: localisation(
            {MAP_COLUMNS[k]: m for k, m in kinds.items()}, masks, n_bootstrap=n_bootstrap, seed=seed
        )
        for layer, kinds in maps.items()
    }


def compute_maps(
    student,
    base,
    layers,
    batches,
    *,
    label_embeddings=None,
    device="cpu",
    progress: bool = True,
    reference=None,
) -> Dict[str, Dict[str, Any]]:
    r"""Grad-CAM (Student, Base) and UniCAM (distilled, residual) maps per layer.

    Each batch is explained on its own (UniCAM is a batch statistic; each batch is its
    own context), with the true labels as targets.

    Args:
        student, base (nn.Module): the models, in eval mode on ``device``.
        layers (dict): name -> (student_layer, base_layer).
        batches (iterable): ``(x, y)`` or ``(x, y, mask)`` batches of at least 5 images
                    (e.g. a :func:`~captum_unicam.pipeline.stratified_loader`).
        label_embeddings (Tensor, optional): label vectors for UniCAM. Default: one-hot.
        device: where to compute.
        progress (bool): show a progress bar over layers x batches.
        reference (tuple, optional): ``(ref_inputs, ref_target)``: UniCAM in reference mode
                    (each image scored with the reference set alone; per-image maps).
                    Default: None, batch mode.

    Returns:
        dict: layer -> ``{"gradcam_student", "gradcam_base", "distilled", "residual"}``
        -> (N,1,h,w) CPU tensors over all batches, concatenated.
    """
    maps, _ = _explain(
        student,
        base,
        layers,
        batches,
        label_embeddings=label_embeddings,
        device=device,
        progress=progress,
        scores=False,
        reference=reference,
    )
    return maps


def _explain(
    student,
    base,
    layers,
    batches,
    *,
    label_embeddings,
    device,
    progress,
    scores: bool,
    desc: str = "maps (Grad-CAM, UniCAM)",
    reference=None,
):
    """The loop of :func:`compute_maps`: the four map kinds per layer over ``batches``,
    and with ``scores=True`` UniCAM's scores (S_d, S_r) of each batch."""
    import torch
    from captum.attr import LayerGradCam
    from tqdm.auto import tqdm

    batches = list(batches)
    out: Dict[str, Dict[str, List[Any]]] = {name: {k: [] for k in MAP_COLUMNS} for name in layers}
    per_batch: Dict[str, Dict[str, List[float]]] = {name: {"s_d": [], "s_r": []} for name in layers}
    bar = tqdm(
        total=len(layers) * len(batches), desc=desc, unit="batch", disable=not progress, leave=False
    )
    for name, (s_layer, b_layer) in layers.items():
        gc_s, gc_b = LayerGradCam(student, s_layer), LayerGradCam(base, b_layer)
        uc = make_unicam(
            student, s_layer, base, b_layer, label_embeddings=label_embeddings, reference=reference
        )
        for batch in batches:
            x, y = batch[0].to(device), batch[1].to(device)
            out[name]["gradcam_student"].append(
                gc_s.attribute(x, target=y, relu_attributions=True).detach().cpu()
            )
            out[name]["gradcam_base"].append(
                gc_b.attribute(x, target=y, relu_attributions=True).detach().cpu()
            )
            if scores:
                (d, r), (s_d, s_r) = uc.attribute(x, target=y, features="both", return_score=True)
                per_batch[name]["s_d"].append(float(s_d))
                per_batch[name]["s_r"].append(float(s_r))
            else:
                d, r = uc.attribute(x, target=y, features="both")
            out[name]["distilled"].append(d.detach().cpu())
            out[name]["residual"].append(r.detach().cpu())
            bar.update(1)
    bar.close()
    maps = {name: {k: torch.cat(v) for k, v in kinds.items()} for name, kinds in out.items()}
    return maps, per_batch


#: The two test conditions of :func:`cued_evaluation` in the demo and the experiments:
#: the ``cue_strength`` of ``ControlledShapes(..., split="test")``.
CUE_CONDITIONS = {"cue-free": 0.0, "cued": 1.0}

#: Regions of :func:`cued_evaluation`: the object mask and the rest of the image.
REGIONS = ("object", "background")


def cued_evaluation(
    student,
    base,
    layers: Mapping[str, Tuple[Any, Any]],
    conditions: Mapping[str, Any],
    *,
    label_embeddings=None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    device: Any = "cpu",
    progress: bool = True,
) -> Dict[str, Any]:
    r"""What the Base used that the Student dropped: UniCAM's scores and where each map
    kind puts its mass, on test images without and with the cue.

    For each condition (e.g. cue-free and cued test images of the controlled dataset)
    and layer, every batch is explained once (each batch is UniCAM's context, as in
    :func:`compute_maps`): Grad-CAM of the Student and of the Base, UniCAM distilled and
    residual, and UniCAM's scores of the batch, ``S_d`` and ``S_r``
    (``UniCAM.attribute(..., return_score=True)``, equal to :meth:`UniCAM.score`).

    - ``s_d``, ``s_r``: mean over batches, percentile bootstrap interval over batches;
    - ``mass[region][kind]``: the share of each map's positive mass on the ``object``
      mask and on the ``background`` (the rest of the image), mean over images with a
      non-empty map and bootstrap interval over images
      (:func:`~captum_unicam.metrics.localisation.localisation`, whose mask energy
      fraction it is); ``chance[region]`` is the region's mean area (a uniform map).

    Intervals come from :func:`~captum_unicam.metrics.intervals.bootstrap_ci`, as
    everywhere in the pipeline. A rise of ``S_r`` from cue-free to cued images, with the
    residual map's mass moving to the background, is the Base using the cue; Grad-CAM of
    the Base alongside says whether UniCAM adds anything over it.

    Args:
        student, base (nn.Module): the models, in eval mode on ``device``.
        layers (dict): name -> (student_layer, base_layer).
        conditions (dict): condition name -> iterable of ``(x, y, mask)`` batches of at
                    least 5 images (e.g. a :func:`~captum_unicam.pipeline.stratified_loader`
                    over ``ControlledShapes(..., split="test", cue_strength=c)``); the masks
                    are the objects' (N,1,H,W) or (N,H,W).
        label_embeddings (Tensor, optional): label vectors for UniCAM. Default: one-hot.
        n_bootstrap (int, optional): bootstrap resamples. Default: 1000
        confidence (float, optional): interval level. Default: 0.95
        seed (int, optional): seed of the bootstrap. Default: 0
        device: where to compute. Default: "cpu"
        progress (bool, optional): progress bars. Default: True

    Returns:
        dict: ``{"kinds": MAP_COLUMNS, "conditions": {name: {"n_images", "n_batches",
        "layers": {layer: {"s_d": {mean, low, high, n}, "s_r": {...},
        "mass": {"object" | "background": {kind: {mean, low, high, n}}},
        "chance": {"object": a, "background": 1 - a}, "n_empty": {kind: k}}}}}}``.

    Raises:
        InputError: no conditions or layers, a condition without batches, or batches
        without object masks (checked before any map is computed).

    Examples::

        >>> from captum_unicam.data import ControlledShapes
        >>> from captum_unicam.pipeline import stratified_loader
        >>> conds = {name: stratified_loader(ControlledShapes(256, seed=0, split="test", cue_strength=c), 64)
        ...          for name, c in CUE_CONDITIONS.items()}
        >>> res = cued_evaluation(student, base, {"L4": (student.layer4, base.layer4)}, conds)
        >>> res["conditions"]["cued"]["layers"]["L4"]["s_r"]["mean"]
    """
    import torch

    from captum_unicam.errors import InputError
    from captum_unicam.metrics.localisation import interval, localisation

    if not layers:
        raise InputError("layers is empty: give at least one name -> (student_layer, base_layer)")
    if not conditions:
        raise InputError("conditions is empty: give e.g. {'cue-free': loader, 'cued': loader}")
    listed = {}
    for name, batches in conditions.items():
        batches = list(batches)
        if not batches:
            raise InputError(f"conditions[{name!r}] has no batches")
        if not all(isinstance(b, (tuple, list)) and len(b) > 2 for b in batches):
            raise InputError(
                f"conditions[{name!r}]: batches must be (x, y, mask) with the objects' masks "
                "(e.g. from ControlledShapes); these have no masks"
            )
        listed[name] = batches

    out: Dict[str, Any] = {"kinds": dict(MAP_COLUMNS), "conditions": {}}
    for name, batches in listed.items():
        maps, per_batch = _explain(
            student,
            base,
            layers,
            batches,
            label_embeddings=label_embeddings,
            device=device,
            progress=progress,
            scores=True,
            desc=f"{name} (maps, scores)",
        )
        obj = torch.cat([b[2] for b in batches]).detach().cpu()
        obj = (obj > 0.5) if obj.is_floating_point() else (obj != 0)
        regions = {"object": obj, "background": ~obj}
        entry: Dict[str, Any] = {
            "n_images": int(obj.shape[0]),
            "n_batches": len(batches),
            "layers": {},
        }
        for layer, kinds in maps.items():
            res: Dict[str, Any] = {
                "s_d": interval(per_batch[layer]["s_d"], n_bootstrap, seed, confidence),
                "s_r": interval(per_batch[layer]["s_r"], n_bootstrap, seed, confidence),
                "mass": {},
                "chance": {},
            }
            for region, mask in regions.items():
                loc = localisation(
                    kinds, mask, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed
                )
                res["mass"][region] = {k: loc["kinds"][k]["energy"] for k in kinds}
                res["chance"][region] = loc["chance"]["energy"]
                res["n_empty"] = {k: loc["kinds"][k]["n_empty"] for k in kinds}
            entry["layers"][layer] = res
        out["conditions"][name] = entry
    return out


def teacher_maps(teacher, layers: Mapping[str, Any], batches, *, device="cpu") -> Dict[str, Any]:
    r"""Grad-CAM of the Teacher per layer (``layers``: name -> the Teacher's module) over
    ``batches``, for the true labels: layer -> (N,1,h,w) CPU tensor."""
    import torch
    from captum.attr import LayerGradCam

    out = {}
    for name, layer in layers.items():
        gc = LayerGradCam(teacher, layer)
        out[name] = torch.cat(
            [
                gc.attribute(b[0].to(device), target=b[1].to(device), relu_attributions=True)
                .detach()
                .cpu()
                for b in batches
            ]
        )
    return out


def predictions(models: Mapping[str, Any], batches, *, device="cpu") -> Dict[str, Any]:
    r"""Each model's predicted class of every image of ``batches`` (role -> (N,) tensor);
    models run under ``torch.no_grad()`` in the mode they are in."""
    import torch

    out = {}
    with torch.no_grad():
        for role, model in models.items():
            if model is not None:
                out[role] = torch.cat([model(b[0].to(device)).argmax(1).cpu() for b in batches])
    return out


def pick_images(labels, preds: Mapping[str, Any], n_show: int) -> Tuple[List[int], Dict[str, int]]:
    r"""The images drawn, in order: those the Base gets wrong and the Student right, then
    the reverse (at most a third of ``n_show`` each, one class after another), then one
    per class among the rest.

    Returns:
        *(positions, counts)*: ``counts`` has ``"base_wrong_student_right"`` and
        ``"student_wrong_base_right"`` over all images (not only the drawn ones).
    """
    from captum_unicam.pipeline.batches import first_per_class

    y = [int(v) for v in labels]
    b_ok = [int(p) == t for p, t in zip(preds["Base"], y, strict=True)]
    s_ok = [int(p) == t for p, t in zip(preds["Student"], y, strict=True)]
    gained = [i for i in range(len(y)) if s_ok[i] and not b_ok[i]]
    lost = [i for i in range(len(y)) if b_ok[i] and not s_ok[i]]
    share = max(1, n_show // 3)
    chosen: List[int] = []
    for group in (gained, lost):
        chosen += [group[j] for j in first_per_class([y[i] for i in group], min(share, len(group)))]
    rest = [i for i in range(len(y)) if i not in set(chosen)]
    chosen += [rest[j] for j in first_per_class([y[i] for i in rest], max(n_show - len(chosen), 0))]
    return chosen[:n_show], {
        "base_wrong_student_right": len(gained),
        "student_wrong_base_right": len(lost),
    }


def prediction_marks(
    pick: Sequence[int], labels, preds: Mapping[str, Any], class_names: Sequence[str]
) -> List[List[Tuple[str, str, bool]]]:
    r"""Per drawn image, one ``(role, predicted class name, correct)`` per model."""

    def name(c: int) -> str:
        return str(class_names[c]) if class_names and 0 <= c < len(class_names) else str(c)

    return [
        [(role, name(int(p[i])), int(p[i]) == int(labels[i])) for role, p in preds.items()]
        for i in pick
    ]


def empty_map_counts(
    maps: Mapping[str, Mapping[str, Any]], extra: Optional[Mapping[str, Any]] = None
) -> Dict[str, Dict[str, Tuple[int, int]]]:
    r"""Layer -> column -> ``(empty maps, maps computed)`` over every map computed (an
    empty map has no positive value); ``extra``: layer -> more maps under
    :data:`TEACHER_COLUMN`."""
    from captum_unicam.viz import is_empty_map

    out: Dict[str, Dict[str, Tuple[int, int]]] = {}
    for layer, kinds in maps.items():
        cols = {MAP_COLUMNS.get(k, k): m for k, m in kinds.items()}
        if extra and layer in extra:
            cols[TEACHER_COLUMN] = extra[layer]
        out[layer] = {
            c: (sum(bool(is_empty_map(m[i])) for i in range(m.shape[0])), int(m.shape[0]))
            for c, m in cols.items()
        }
    return out


def set_scores(
    student,
    base,
    layers: Mapping[str, Tuple[Any, Any]],
    batches,
    *,
    label_embeddings=None,
    reference=None,
    device="cpu",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Dict[str, Any]:
    r"""UniCAM's scores S_d and S_r over the evaluated set, per layer
    (:meth:`~captum_unicam.UniCAM.score`): in batch mode on all images of ``batches`` at
    once (one value each), in reference mode per image with the mean and its bootstrap
    interval over images.

    Returns:
        dict: layer -> ``{"s_d", "s_r"}`` as ``{"mean", "low", "high", "n"}``, and ``"how"``.
    """
    import torch

    from captum_unicam.metrics.localisation import interval

    x = torch.cat([b[0] for b in batches]).to(device)
    y = torch.cat([b[1] for b in batches]).to(device)
    out: Dict[str, Any] = {}
    for name, (s_layer, b_layer) in layers.items():
        uc = make_unicam(
            student, s_layer, base, b_layer, label_embeddings=label_embeddings, reference=reference
        )
        s_d, s_r = uc.score(x, target=y)
        out[name] = {
            k: interval(v.detach().cpu().double().numpy(), n_bootstrap if v.dim() else 0, seed)
            for k, v in (("s_d", s_d), ("s_r", s_r))
        }
    n = int(x.shape[0])
    out["how"] = (
        f"UniCAM.score on all {n} evaluated images at once (one value per layer)"
        if reference is None
        else f"UniCAM.score in reference mode: one score per evaluated image ({n}), "
        "mean [95 % bootstrap interval over images]"
    )
    return out


def map_grids(
    maps,
    batches,
    class_names: Sequence[str],
    n_show: Optional[int] = None,
    *,
    mean=None,
    std=None,
    pick: Optional[Sequence[int]] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> Tuple[Dict[str, Any], Any, Any]:
    r"""The figures' rows: one image per class (then a second of each, ... up to
    ``n_show``; default one per class), in class order.

    ``pick`` gives the positions to draw instead (e.g. :func:`pick_images`); ``extra``
    (layer -> maps over all images) adds the column :data:`TEACHER_COLUMN`.

    Returns:
        *(grids, labels, masks)*: ``layer -> {"images", "maps", "labels"}`` for
        :func:`~captum_unicam.output.report.write_report`; all labels of the batches;
        all masks (None when the data have none). Normalised images are shown
        un-normalised (``mean``, ``std``).
    """
    import torch

    from captum_unicam.pipeline.batches import first_per_class

    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    masks = torch.cat([b[2] for b in batches]) if all(len(b) > 2 for b in batches) else None
    pick = list(pick) if pick is not None else first_per_class(labels.tolist(), n_show)
    shown = images[pick]
    if mean is not None and std is not None:
        shown = (
            shown * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
        ).clamp(0, 1)
    names = [class_names[int(labels[i])] if class_names else str(int(labels[i])) for i in pick]
    grids = {}
    for layer, kinds in maps.items():
        cols = {MAP_COLUMNS[k]: m[pick] for k, m in kinds.items()}
        if extra and layer in extra:
            cols[TEACHER_COLUMN] = extra[layer][pick]
        grids[layer] = {"images": shown, "maps": cols, "labels": names}
    return grids, labels, masks
