r"""Batches that carry information: seeded, class-stratified batches for UniCAM, FSS and RS.

UniCAM, FSS and RS are batch statistics: a batch of one class has no label signal
(every map is zero, FSS and RS degenerate). Data sets written class by class (an image
folder read in class order) give such batches when they are cut in file order. The
batches of :func:`stratified_loader` are drawn so that **every batch holds as many
classes as its size allows**: the items of each class are spread evenly over the whole
sequence (item ``j`` of a class of ``n_c`` items sits at position ``(j + o_c) / n_c``,
with a seeded offset ``o_c``), so consecutive items cycle through the classes.

**The short last batch.** Batches hold ``batch_size`` items; a remainder of at least
:data:`MIN_BATCH` items forms one more, smaller batch, and a smaller remainder is
**merged** into the batch before it (which then holds up to
``batch_size + MIN_BATCH - 1`` items). No item is dropped, so every item of the data
set is evaluated, and the command line and the API follow the same rule.

Examples::

    >>> from captum_unicam.data import load_dataset
    >>> from captum_unicam.pipeline import stratified_loader
    >>> test = load_dataset("imagefolder:/data/pets", "test", image_size=32)
    >>> loader = stratified_loader(test, batch_size=32, seed=0)
    >>> evaluation = evaluate_kd(student, base, loader, layers)
"""

from __future__ import annotations

from typing import Any, Iterator, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from captum_unicam._batching import MIN_BATCH, batch_sizes
from captum_unicam.errors import InputError

__all__ = [
    "MIN_BATCH",
    "ORDERS",
    "labels_of",
    "batch_sizes",
    "stratified_order",
    "StratifiedBatchSampler",
    "stratified_loader",
    "first_per_class",
]

# MIN_BATCH and batch_sizes (the rule for a short last batch) come from captum_unicam._batching,
# which compare() and the sanity checks share.

#: Orders of :func:`stratified_loader`: ``stratified`` (default), ``shuffle`` (a seeded
#: permutation), ``file`` (the data set's own order).
ORDERS = ("stratified", "shuffle", "file")


def labels_of(dataset: Dataset) -> List[int]:
    r"""The class index of every item of ``dataset``, in order.

    Read from ``dataset.targets`` (torchvision's ImageFolder and CIFAR-10, and the
    subsets of :func:`~captum_unicam.data.load_dataset`) or ``dataset.labels`` (the
    controlled dataset) when present, else from the items themselves (``item[1]``).
    """
    for name in ("targets", "labels"):
        values = getattr(dataset, name, None)
        if values is not None:
            try:
                if len(values) == len(dataset):  # type: ignore[arg-type]
                    return [int(v) for v in values]
            except TypeError:
                pass
    return [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[index]


def stratified_order(labels: Sequence[int], seed: int = 0) -> List[int]:
    r"""Indices of ``labels`` in an order where the classes are spread evenly.

    Within a class, the items come in a seeded random order; item ``j`` of class ``c``
    (``n_c`` items) gets the key ``(j + o_c) / n_c`` with a seeded offset ``o_c`` in
    [0, 1), and the indices are sorted by key. With equal class sizes this cycles
    through all classes, so any ``k`` consecutive items hold ``min(k, classes)``
    classes.
    """
    g = torch.Generator().manual_seed(int(seed))
    by_class: dict = {}
    for i, c in enumerate(labels):
        by_class.setdefault(int(c), []).append(i)
    classes = sorted(by_class)
    offsets = torch.rand(len(classes), generator=g).tolist()
    keyed = []
    for rank, c in enumerate(classes):
        idx = by_class[c]
        perm = torch.randperm(len(idx), generator=g).tolist()
        n_c = len(idx)
        for j, p in enumerate(perm):
            keyed.append(((j + offsets[rank]) / n_c, offsets[rank], idx[p]))
    keyed.sort()
    return [k[2] for k in keyed]


class StratifiedBatchSampler(Sampler):
    r"""A batch sampler (``DataLoader(batch_sampler=...)``) of the module's rule.

    Args:
        labels (sequence of int): Class index of each item.
        batch_size (int): Items per batch, at least :data:`MIN_BATCH`.
        seed (int, optional): Seed of the order. The same batches on every pass and
                    every process (as :func:`~captum_unicam.metrics.evaluate_kd` needs
                    under ``torchrun``). Default: 0
        order (str, optional): ``"stratified"``, ``"shuffle"`` or ``"file"``.
                    Default: "stratified"
    """

    def __init__(
        self, labels: Sequence[int], batch_size: int, seed: int = 0, order: str = "stratified"
    ) -> None:
        if order not in ORDERS:
            raise InputError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        labels = [int(v) for v in labels]
        self.sizes = batch_sizes(len(labels), batch_size)
        if order == "stratified":
            idx = stratified_order(labels, seed)
        elif order == "shuffle":
            idx = torch.randperm(
                len(labels), generator=torch.Generator().manual_seed(int(seed))
            ).tolist()
        else:
            idx = list(range(len(labels)))
        self.batches: List[List[int]] = []
        start = 0
        for s in self.sizes:
            self.batches.append(idx[start : start + s])
            start += s

    def __iter__(self) -> Iterator[List[int]]:
        return iter([list(b) for b in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


def stratified_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int = 0,
    *,
    order: str = "stratified",
    labels: Optional[Sequence[int]] = None,
    **loader_kwargs: Any,
) -> DataLoader:
    r"""A ``DataLoader`` over ``dataset`` with seeded, class-stratified batches.

    Every batch holds as many classes as its size allows; the short last batch follows
    the module's rule (merged when under :data:`MIN_BATCH` items, so nothing is
    dropped). Pass it to :func:`~captum_unicam.metrics.evaluate_kd` or iterate it for
    :class:`~captum_unicam.UniCAM`.

    Args:
        dataset (Dataset): Items ``(input, label, ...)``.
        batch_size (int): Items per batch, at least :data:`MIN_BATCH`.
        seed (int, optional): Seed of the order. Default: 0
        order (str, optional): ``"stratified"``, ``"shuffle"`` or ``"file"``.
                    Default: "stratified"
        labels (sequence of int, optional): Class of each item, when the data set
                    cannot say (see :func:`labels_of`).
        **loader_kwargs: Other ``DataLoader`` arguments (``num_workers``, ...).

    Returns:
        *DataLoader*: the same batches on every pass.

    Raises:
        InputError: ``batch_size`` or the data set smaller than :data:`MIN_BATCH`, or an
        unknown ``order``.

    Examples::

        >>> loader = stratified_loader(test_set, batch_size=32, seed=0)
        >>> [len(set(y.tolist())) for _, y, *rest in loader]   # classes per batch
    """
    for bad in ("batch_size", "shuffle", "sampler", "drop_last"):
        if bad in loader_kwargs:
            raise InputError(f"stratified_loader chooses the batches itself; do not pass {bad}=")
    labels = labels_of(dataset) if labels is None else list(labels)
    if len(labels) != len(dataset):  # type: ignore[arg-type]
        raise InputError(f"labels has {len(labels)} entries for {len(dataset)} items")  # type: ignore[arg-type]
    sampler = StratifiedBatchSampler(labels, batch_size, seed, order)
    return DataLoader(dataset, batch_sampler=sampler, **loader_kwargs)


def first_per_class(labels: Sequence[int], n: Optional[int] = None) -> List[int]:
    r"""Positions of the first item of each class (in class order), then the second of
    each class, ..., up to ``n`` positions (default: one per class)."""
    by_class: dict = {}
    for i, c in enumerate(labels):
        by_class.setdefault(int(c), []).append(i)
    n = len(by_class) if n is None else int(n)
    out: List[int] = []
    depth = 0
    while len(out) < n and any(depth < len(v) for v in by_class.values()):
        for c in sorted(by_class):
            if depth < len(by_class[c]) and len(out) < n:
                out.append(by_class[c][depth])
        depth += 1
    return out
