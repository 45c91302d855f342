r"""How a study is evaluated: accuracies, maps and FSS / RS of a Student/Base pair.

Every UniCAM object of the pipeline is built by :func:`make_unicam`, and every FSS / RS
evaluation runs through :func:`score_pair`, so a change of either API is one edit here.
:func:`compute_maps` draws Grad-CAM (Student, Base) and UniCAM (distilled, residual) maps
per layer; :func:`map_grids` picks one image per class for the figures;
:func:`accuracy` is the accuracy of a model on the evaluated set.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["MAP_COLUMNS", "make_unicam", "score_pair", "compute_maps", "map_grids", "accuracy"]

#: Map kinds of :func:`compute_maps` and their column titles in the figures.
MAP_COLUMNS = {
    "gradcam_student": "Grad-CAM student",
    "gradcam_base": "Grad-CAM base",
    "distilled": "UniCAM distilled",
    "residual": "UniCAM residual",
}


def make_unicam(student, student_layer, base, base_layer, *, label_embeddings=None, reference=None):
    r"""The :class:`~captum_unicam.UniCAM` of one layer pair (the one place the pipeline
    builds it); ``reference=(ref_inputs, ref_target)`` selects reference mode."""
    from captum_unicam.attr.unicam import UniCAM

    return UniCAM(student, student_layer, base, base_layer, label_embeddings=label_embeddings, reference=reference)


def score_pair(student, base, loader, layers: Mapping[str, Tuple[Any, Any]], *, label_embeddings=None,
               map_kinds: Sequence[str] = ("none", "gradcam", "distilled", "residual"), perturbation: str = "mask",
               n_bootstrap: int = 1000, n_permutations: int = 10000, seed: int = 0, progress: bool = True,
               device: Any = "cpu"):
    r"""FSS and RS of ``student`` against ``base`` over ``loader``, per layer and map kind
    (:func:`~captum_unicam.metrics.evaluate_kd`; the one place the pipeline calls it).

    Args:
        perturbation (str): ``"mask"`` (image times map), ``"road"`` (impute the least
                    relevant pixels) or ``"none"`` (raw features: only the ``none`` kind).

    Returns:
        *KDEvaluation*, whose ``settings["perturbation"]`` names what was run.
    """
    from captum_unicam.errors import InputError
    from captum_unicam.metrics import evaluate_kd

    if perturbation not in ("mask", "road", "none"):
        raise InputError(f"perturbation must be one of mask, road, none, got {perturbation!r}")
    kinds = ("none",) if perturbation == "none" else tuple(dict.fromkeys(map_kinds))
    evaluation = evaluate_kd(student, layers, loader, base_forward_func=base, label_embeddings=label_embeddings,
                             maps=kinds, perturbation=None if perturbation == "none" else perturbation,
                             n_bootstrap=n_bootstrap, n_permutations=n_permutations, seed=seed,
                             progress=progress, device=device)
    evaluation.settings["perturbation"] = perturbation
    return evaluation


def accuracy(model, loader, device: Any = "cpu") -> float:
    r"""Share of the items of ``loader`` whose arg-max class is the label (model in eval
    mode during the pass; its mode is restored)."""
    import torch

    correct = total = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                x, y = batch[0].to(device), batch[1].to(device)
                correct += int((model(x).argmax(1) == y).sum())
                total += int(y.numel())
    finally:
        model.train(was_training)
    return correct / total if total else float("nan")


def compute_maps(student, base, layers, batches, *, label_embeddings=None, device="cpu",
                 progress: bool = True, reference=None) -> Dict[str, Dict[str, Any]]:
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
    import torch
    from captum.attr import LayerGradCam
    from tqdm.auto import tqdm

    batches = list(batches)
    out: Dict[str, Dict[str, List[Any]]] = {name: {k: [] for k in MAP_COLUMNS} for name in layers}
    bar = tqdm(total=len(layers) * len(batches), desc="maps (Grad-CAM, UniCAM)", unit="batch",
               disable=not progress, leave=False)
    for name, (s_layer, b_layer) in layers.items():
        gc_s, gc_b = LayerGradCam(student, s_layer), LayerGradCam(base, b_layer)
        uc = make_unicam(student, s_layer, base, b_layer, label_embeddings=label_embeddings, reference=reference)
        for batch in batches:
            x, y = batch[0].to(device), batch[1].to(device)
            out[name]["gradcam_student"].append(gc_s.attribute(x, target=y, relu_attributions=True).detach().cpu())
            out[name]["gradcam_base"].append(gc_b.attribute(x, target=y, relu_attributions=True).detach().cpu())
            d, r = uc.attribute(x, target=y, features="both")
            out[name]["distilled"].append(d.detach().cpu())
            out[name]["residual"].append(r.detach().cpu())
            bar.update(1)
    bar.close()
    return {name: {k: torch.cat(v) for k, v in kinds.items()} for name, kinds in out.items()}


def map_grids(maps, batches, class_names: Sequence[str], n_show: Optional[int] = None, *,
              mean=None, std=None) -> Tuple[Dict[str, Any], Any, Any]:
    r"""The figures' rows: one image per class (then a second of each, ... up to
    ``n_show``; default one per class), in class order.

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
    pick = first_per_class(labels.tolist(), n_show)
    shown = images[pick]
    if mean is not None and std is not None:
        shown = (shown * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)).clamp(0, 1)
    names = [class_names[int(labels[i])] if class_names else str(int(labels[i])) for i in pick]
    grids = {layer: {"images": shown, "maps": {MAP_COLUMNS[k]: m[pick] for k, m in kinds.items()}, "labels": names}
             for layer, kinds in maps.items()}
    return grids, labels, masks
