"""Internal: the one rule that cuts ``n`` items into batches for UniCAM, FSS and RS.

Batches hold ``batch_size`` items; a remainder of at least :data:`MIN_BATCH` items forms
one more, smaller batch, and a smaller remainder is merged into the batch before it (which
then holds up to ``batch_size + MIN_BATCH - 1`` items). No item is dropped. The pipeline's
stratified batches, :func:`captum_unicam.compare` and the sanity checks all follow it. A
pure function that imports nothing of the package but its errors, so every layer can use it.
"""

from __future__ import annotations

from typing import List

from captum_unicam.errors import InputError

__all__ = ["MIN_BATCH", "batch_sizes", "batch_slices"]

#: The fewest items a batch may hold (the U-statistics of UniCAM, FSS and RS need at
#: least 4 samples; 5 leaves one degree of freedom to spare).
MIN_BATCH = 5


def batch_sizes(n: int, batch_size: int) -> List[int]:
    r"""Sizes of the batches that ``n`` items are cut into (the rule of the module
    docstring: a remainder under :data:`MIN_BATCH` is merged into the batch before it).

    Raises:
        InputError: ``batch_size`` below :data:`MIN_BATCH`, or ``n`` below it.

    Examples::

        >>> batch_sizes(132, 64)
        [64, 68]
        >>> batch_sizes(133, 64)
        [64, 64, 5]
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < MIN_BATCH:
        raise InputError(
            f"batch_size must be an int >= {MIN_BATCH} (UniCAM, FSS and RS are batch "
            f"statistics), got {batch_size!r}"
        )
    if n < MIN_BATCH:
        raise InputError(f"the data hold {n} items; UniCAM, FSS and RS need at least {MIN_BATCH}")
    sizes = [batch_size] * (n // batch_size)
    rest = n - batch_size * len(sizes)
    if rest >= MIN_BATCH or not sizes:
        sizes.append(rest)
    elif rest:
        sizes[-1] += rest
    return sizes


def batch_slices(n: int, batch_size: int) -> List[slice]:
    """The batches of :func:`batch_sizes` as consecutive slices of ``range(n)``."""
    out, start = [], 0
    for size in batch_sizes(n, batch_size):
        out.append(slice(start, start + size))
        start += size
    return out
