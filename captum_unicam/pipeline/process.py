r"""Process state a run borrows and gives back: torch's thread count and the torchrun
process group.

:func:`torch_threads` sets the intra-op thread count for a run and restores it after;
:func:`process_group` joins the process group of ``torchrun`` when the environment names
one (gloo on CPU, nccl on CUDA), yields ``(rank, world size)``, and leaves it again.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional, Tuple

import torch
import torch.distributed as dist

__all__ = ["torch_threads", "process_group"]


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


def _rank_world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Tuple[int, int]]:
    r"""Inside a ``torchrun`` job (``WORLD_SIZE`` > 1), joins its process group for the
    block and leaves it after; yields ``(rank, world size)`` (``(0, 1)`` alone). A group
    started by the caller is used as it is and left to the caller."""
    started = False
    if (
        int(os.environ.get("WORLD_SIZE", "1")) > 1
        and dist.is_available()
        and not dist.is_initialized()
    ):
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        started = True
    try:
        yield _rank_world()
    finally:
        if started:
            dist.destroy_process_group()
