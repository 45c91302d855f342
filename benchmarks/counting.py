"""Deterministic counts for the benchmarks and tests: tensor operations and host round trips.

- :func:`count_ops`: the number of top-level ``aten::`` operations a call runs, from
  ``torch.profiler`` on the CPU (an operation called inside another, e.g. ``aten::mm``
  inside ``aten::linear``, is not counted again). On a GPU each is about one kernel
  launch. Subtract the count of the forward passes alone to get UniCAM's own work.
- :class:`RoundTrips`: counts the operations that make the host wait for the device
  (``torch.cuda.set_sync_debug_mode`` flags the same ones on CUDA): reading a value
  (``.item()``, ``bool()``, ``float()``, ``int()``, ``.tolist()``: ``aten::_local_scalar_dense``
  or a copy to the CPU), and operations whose output size depends on the data
  (``nonzero``, ``masked_select``, boolean-mask indexing, ``unique``). It runs as a
  ``TorchDispatchMode``, so it sees every operation on the CPU as well. Values built
  on the host from Python numbers (``torch.tensor([...])``, e.g. class indices given as
  a list) are host data: reading them back is not a round trip, and is not counted.
"""

from __future__ import annotations

from typing import Any, Callable, List

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

_READS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::item"}
_DATA_DEPENDENT = {
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::repeat_interleave",
}


def count_ops(fn: Callable[[], Any]) -> int:
    """Top-level aten operations run by ``fn()`` (profiled on the CPU)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    count = 0
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None:
            count += 1
    return count


class RoundTrips(TorchDispatchMode):
    """``with RoundTrips() as trips: ...``; then ``trips.count`` and ``trips.names``."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.names: List[str] = []
        self._host = WeakTensorKeyDictionary()
        self._reading = False  # inside a read (is_nonzero calls item): count it once

    def _is_host(self, tensors: List[torch.Tensor]) -> bool:
        return bool(tensors) and all(t in self._host for t in tensors)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        outer_read = name in _READS and not self._reading
        if outer_read:
            self._reading = True
        try:
            out = func(*args, **kwargs)
        finally:
            if outer_read:
                self._reading = False
        to_host = (
            name in ("aten::_to_copy", "aten::copy_")
            and any(t.device.type != "cpu" for t in tensors)
            and str(kwargs.get("device", "")) == "cpu"
        )
        # a copy to the host is one round trip; what it returns is host data
        host = (
            name in ("aten::lift_fresh", "aten::lift_fresh_copy")
            or to_host
            or self._is_host(tensors)
        )
        syncs = (
            outer_read
            or to_host
            or name in _DATA_DEPENDENT
            or (name == "aten::index" and any(t.dtype == torch.bool for t in tensors[1:]))
        )
        if syncs and not self._is_host(tensors):
            self.count += 1
            self.names.append(name)
        if host:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self._host[t] = True
        return out

    def __enter__(self):
        super().__enter__()
        self._tolist = torch.Tensor.tolist
        counter = self

        def tolist(t: torch.Tensor):
            # reading a whole tensor back is one round trip (it bypasses the dispatcher)
            if t not in counter._host:
                counter.count += 1
                counter.names.append("Tensor.tolist")
            return counter._tolist(t)

        torch.Tensor.tolist = tolist
        return self

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)
