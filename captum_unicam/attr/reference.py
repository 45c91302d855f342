"""A stratified reference set for UniCAM's reference mode, in one line.

Reference mode (``UniCAM(..., reference=(ref_inputs, ref_target))``) scores each input
with a fixed reference set alone, so a map depends on its image only: the per-image
contract that Captum's tools (``NoiseTunnel``, ``sensitivity_max``, ``infidelity``,
Occlusion) and Quantus assume. The reference set needs repeated classes: with one-hot
labels, classes that are all distinct put every pair of label vectors at one distance,
and there is nothing to correlate with. :func:`reference_set` draws one.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from captum_unicam.errors import InputError

__all__ = ["reference_set"]


def _labels_of(dataset: Any) -> List[int]:
    """Every example's class index, without loading the examples where the dataset keeps
    them (``targets`` / ``labels``, as torchvision's datasets do)."""
    for name in ("targets", "labels"):
        values = getattr(dataset, name, None)
        if values is not None and len(values) == len(dataset):
            return [int(v) for v in (values.tolist() if isinstance(values, Tensor) else values)]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def _pick(labels: Sequence[int], n: int, per_class: int, seed: int) -> List[int]:
    """Indices of n examples: classes in a seeded random order, ``per_class`` examples of
    each (drawn at random within the class), until n are chosen."""
    g = torch.Generator().manual_seed(seed)
    by_class: Dict[int, List[int]] = {}
    for i in torch.randperm(len(labels), generator=g).tolist():
        by_class.setdefault(labels[i], []).append(i)
    usable = [c for c, idx in by_class.items() if len(idx) >= 2]
    if len(usable) < 2:
        raise InputError(
            "reference_set needs at least two classes with two or more examples each "
            f"(found {len(usable)}): with one class, or classes that never repeat, the label "
            "vectors carry no distance structure. Pass a dataset with several classes, or "
            "use label_embeddings=embed_labels(class_names)."
        )
    chosen: List[int] = []
    for c in usable:
        take = min(per_class, len(by_class[c]), n - len(chosen))
        if take < 2 and chosen:
            break
        chosen.extend(by_class[c][:take])
        if len(chosen) >= n:
            break
    if len(chosen) < n:
        taken = set(chosen)
        rest = [i for c in usable for i in by_class[c] if i not in taken]
        chosen.extend(rest[: n - len(chosen)])
    return chosen


def _check_sizes(n: Any, per_class: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 4:
        raise InputError(
            f"`n` must be an int >= 4 (each input is scored with the n references), got {n!r}."
        )
    per_class = max(2, n // 8) if per_class is None else per_class
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 2:
        raise InputError(
            f"`per_class` must be an int >= 2 (classes must repeat), got {per_class!r}."
        )
    return per_class


def _from_tensors(
    inputs: Tensor, targets: Tensor, n: int, per_class: int, seed: int
) -> Tuple[Tensor, Tensor]:
    if targets.dim() != 1 or targets.shape[0] != inputs.shape[0] or targets.is_floating_point():
        raise InputError(
            "`dataset` as (inputs, targets) needs a 1-D integer tensor of one class per input."
        )
    if inputs.shape[0] < n:
        raise InputError(f"`dataset` holds {inputs.shape[0]} examples, fewer than n = {n}.")
    index = torch.tensor(_pick(targets.tolist(), n, per_class, seed))
    return inputs[index], targets[index].long()


def reference_set(
    dataset: Any, n: int, seed: int = 0, *, per_class: Optional[int] = None
) -> Tuple[Tensor, Tensor]:
    r"""Draws a class-stratified reference set for ``UniCAM(..., reference=...)``.

    Args:
        dataset: a map-style dataset of ``(input, class_index)`` pairs (e.g. a
                    torchvision dataset), or a pair ``(inputs, targets)`` of tensors.
        n (int): the number of reference examples, at least 4 (each input is scored
                    with them, n = 1 + m >= 5); 16 to 64 is typical.
        seed (int, optional): seed of the draw (the same seed gives the same set).
                    Default: 0
        per_class (int, optional): examples per class, at least 2, so that classes
                    repeat. Default: None (``max(2, n // 8)``: e.g. 8 classes of 4 for
                    n = 32, where the data has that many classes)

    Returns:
        *tuple[Tensor, Tensor]*: ``(ref_inputs, ref_target)``: the stacked inputs and a
        1-D tensor of their class indices, to pass as
        ``UniCAM(..., reference=(ref_inputs, ref_target))``.

    Examples::

        >>> from captum_unicam import UniCAM, reference_set
        >>> unicam = UniCAM(student, student.layer4, base, base.layer4,
        ...                 reference=reference_set(val_dataset, 32))
        >>> attr = unicam.attribute(x, target=y)   # per-image maps
    """
    per_class = _check_sizes(n, per_class)
    if (
        isinstance(dataset, (tuple, list))
        and len(dataset) == 2
        and all(isinstance(t, Tensor) for t in dataset)
    ):
        return _from_tensors(dataset[0], dataset[1], n, per_class, seed)
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise InputError(
            "`dataset` must be a map-style dataset of (input, class) pairs, or (inputs, targets)."
        )
    if len(dataset) < n:
        raise InputError(f"`dataset` holds {len(dataset)} examples, fewer than n = {n}.")
    chosen = _pick(_labels_of(dataset), n, per_class, seed)
    items = [dataset[i] for i in chosen]
    inputs = torch.stack([torch.as_tensor(item[0]) for item in items])
    return inputs, torch.tensor([int(item[1]) for item in items], dtype=torch.long)
