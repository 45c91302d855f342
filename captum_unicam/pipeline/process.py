r"""Process state a run borrows and gives back: torch's thread count.

:func:`torch_threads` sets the intra-op thread count for a run and restores it after. The
torchrun process group is joined and left by :mod:`captum_unicam._distributed` (bounded in
time, SIGTERM honoured).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    r"""``torch.set_num_threads(n)`` inside the block (None: unchanged); restored after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
