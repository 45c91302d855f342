"""Internal: the reference set of the UniCAM maps of :func:`~captum_unicam.metrics.evaluate_kd`.

In reference mode each image's UniCAM map is computed against one fixed reference set, so
it does not depend on the other images of its batch. ``reference="auto"`` draws that set
once, class-stratified, from the first batches of the data: the first images in data order,
at most ``ceil(REFERENCE_SIZE / num_classes)`` (and at least 2) per class, until
``REFERENCE_SIZE`` are drawn or ``REFERENCE_BATCHES`` batches were read. Under
``torch.distributed`` with a ``DistributedSampler`` every rank contributes its first batches
and all ranks draw from them in the order (local index, rank). Not a public API.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from captum_unicam.errors import InputError
from captum_unicam.metrics._features import label_degeneracy
from captum_unicam.metrics.rs import label_vectors

__all__ = ["REFERENCE_SIZE", "REFERENCE_BATCHES", "describe", "draw", "gather_candidates"]

#: Images drawn for ``reference="auto"``.
REFERENCE_SIZE = 32
#: Batches read at most to draw them.
REFERENCE_BATCHES = 8


def describe(reference: Any) -> str:
    """The words for the settings and the table footnote."""
    if reference is None:
        return "batch mode (each map depends on its batch)"
    if isinstance(reference, str):
        return (
            f"reference mode (auto: up to {REFERENCE_SIZE} images, class-stratified, first batches)"
        )
    return f"reference mode (given: {int(reference[0].shape[0])} images)"


def draw(
    candidates: Sequence[Tuple[Tensor, Tensor]], num_classes: Optional[int], emb: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    """The reference set (inputs, class indices) drawn from ``candidates`` (x, y) batches in
    order; an InputError naming the fix when it cannot serve as one."""
    xs = torch.cat([x.detach().cpu() for x, _ in candidates]) if candidates else torch.empty(0)
    ys = (
        torch.cat([y.detach().cpu().long().reshape(-1) for _, y in candidates])
        if candidates
        else torch.empty(0)
    )
    classes = num_classes or (int(ys.max()) + 1 if ys.numel() else 1)
    per_class = max(2, math.ceil(REFERENCE_SIZE / classes))
    counts: Dict[int, int] = {}
    chosen: List[int] = []
    for i, c in enumerate(ys.tolist()):
        if counts.get(c, 0) < per_class:
            counts[c] = counts.get(c, 0) + 1
            chosen.append(i)
            if len(chosen) == REFERENCE_SIZE:
                break
    fix = (
        "pass reference=(ref_inputs, ref_target) with several images of each class, or "
        "reference=None (batch mode)"
    )
    if len(chosen) < 4:
        raise InputError(
            f"reference='auto' drew {len(chosen)} images from the first batches; UniCAM's "
            "reference "
            f"mode needs at least 4: {fix}."
        )
    idx = torch.tensor(chosen)
    why = label_degeneracy(label_vectors(ys[idx], len(chosen), None if emb is None else emb.cpu()))
    if why is not None:
        raise InputError(
            f"reference='auto' drew images whose labels carry no information ({why}): {fix}."
        )
    return xs[idx], ys[idx]


def gather_candidates(
    local: List[Tuple[int, Tensor, Tensor]], world: int, failure: Optional[BaseException] = None
) -> List[Tuple[Tensor, Tensor]]:
    """Every rank's (local index, x, y) candidates, in the order (local index, rank).

    Every rank calls it, also one whose head batches failed a check (``failure``): that
    error is raised on that rank and an InputError naming it on the others, so no rank is
    left waiting in a later collective."""
    if world == 1:
        if failure is not None:
            raise failure
        return [(x, y) for _, x, y in local]
    note = None if failure is None else f"{type(failure).__name__}: {failure}"
    gathered: List[Any] = [None] * world
    torch.distributed.all_gather_object(
        gathered, ([(i, x.cpu(), y.cpu()) for i, x, y in local], note)
    )
    if failure is not None:
        raise failure
    remote = [n for _, n in gathered if n is not None]
    if remote:
        raise InputError(
            f"evaluate_kd failed on another rank while drawing the reference set: {remote[0]}"
        )
    merged = [(i, r, x, y) for r, (part, _) in enumerate(gathered) for i, x, y in part]
    merged.sort(key=lambda t: (t[0], t[1]))
    return [(x, y) for _, _, x, y in merged]
