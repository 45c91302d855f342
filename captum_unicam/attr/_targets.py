"""Internal: the one rule from Captum-style targets to class indices to label vectors.

Used by :class:`captum_unicam.UniCAM` and :func:`captum_unicam.relevance_score` (not a
public API; may change without notice). A target is parsed into one of

- ``("predicted", None)``: the Student's predicted classes (``target=None``);
- ``("index", LongTensor (n,))``: class indices, on the host;
- ``("multi", LongTensor (n, k))``: Captum's tuple targets (one index per non-batch
  dimension of a multi-dimensional output), turned into class indices by
  :func:`ravel_targets` once the output's shape is known;
- ``("vector", Tensor (n, e))``: label vectors, used as they are.

Class indices become label vectors by :func:`rows_of`: row ``c`` of the label-embedding
table, or the one-hot vector of class ``c`` when there is no table.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor

from captum_unicam.errors import InputError

__all__ = ["Parsed", "parse_target", "ravel_targets", "one_hot", "rows_of"]

Parsed = Tuple[str, Optional[Tensor]]


def _is_int(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def _how(name: str, n: int) -> str:
    return (
        f"`{name}` must be None (the Student's predicted classes), an int, a list or 1-D "
        f"tensor of {n} class indices, a tuple of ints or a list of {n} tuples (an element "
        f"of a multi-dimensional output, as in Captum), or an ({n}, e) float tensor of "
        "label vectors"
    )


def _from_list(target: list, n: int, how: str) -> Tensor:
    if len(target) != n:
        raise InputError(f"{how}; got a list of length {len(target)}.")
    if all(isinstance(t, tuple) for t in target):
        if len({len(t) for t in target}) != 1 or not all(
            t and all(_is_int(i) for i in t) for t in target
        ):
            raise InputError(f"{how}; got a list of tuples that are not all ints of one length.")
        return torch.tensor(target, dtype=torch.long).reshape(n, len(target[0]))
    if all(_is_int(t) for t in target):
        return torch.tensor(target, dtype=torch.long)
    raise InputError(f"{how}; got a list of {sorted({type(t).__name__ for t in target})}.")


def _from_tensor(target: Tensor, n: int, name: str, how: str) -> Tuple[Tensor, bool]:
    """(indices, shared) of an integer tensor target; label vectors are handled before."""
    if target.dtype == torch.bool or target.is_complex():
        raise InputError(f"{how}; got dtype {target.dtype}.")
    if target.numel() == 1:
        return torch.full((n,), int(target.reshape(())), dtype=torch.long), True
    if target.dim() == 1 and target.shape[0] == n:
        return target.detach().to("cpu", torch.long), False
    raise InputError(f"{how}; got an integer tensor of shape {tuple(target.shape)}.")


def _vectors(target: Tensor, n: int, name: str, how: str) -> Tensor:
    if target.dim() != 2 or target.shape[0] != n:
        raise InputError(
            f"{how}; got a float tensor of shape {tuple(target.shape)}. Class indices "
            "must be an integer tensor; label vectors a 2-D float tensor."
        )
    if not bool(torch.isfinite(target).all()):
        raise InputError(f"`{name}` (label vectors) contains NaN or Inf.")
    return target


def _indices(target: Any, n: int, name: str, how: str) -> Tuple[Tensor, bool]:
    """(indices (n,) or (n, k), shared by every example) of a non-vector target."""
    if isinstance(target, bool):
        raise InputError(f"{how}; got a bool.")
    if _is_int(target):
        return torch.full((n,), target, dtype=torch.long), True
    if isinstance(target, tuple):
        if not target or not all(_is_int(t) for t in target):
            raise InputError(f"{how}; got the tuple {target!r}.")
        return torch.tensor([target] * n, dtype=torch.long).reshape(n, len(target)), True
    if isinstance(target, list):
        return _from_list(target, n, how), False
    if isinstance(target, Tensor):
        return _from_tensor(target, n, name, how)
    raise InputError(f"{how}; got {type(target).__name__}.")


def parse_target(
    target: Any, n: int, name: str, table_rows: Optional[int], alone: bool = False
) -> Parsed:
    """Parses the target of n examples (see the module docstring for the kinds).

    ``alone``: these n examples are the whole batch (no context or reference set), so one
    target shared by all of them can only give zero maps, and is refused."""
    if target is None:
        return "predicted", None
    how = _how(name, n)
    if isinstance(target, Tensor) and target.is_floating_point():
        return "vector", _vectors(target, n, name, how)
    index, shared = _indices(target, n, name, how)
    if bool((index < 0).any()):
        raise InputError(
            f"`{name}` contains negative class indices: {index[index < 0].tolist()[:5]}."
        )
    if shared and alone and n > 1:
        raise InputError(
            f"`{name}`={target!r} (one int or tuple for every example) gives all {n} examples "
            "the same label. UniCAM's score correlates the representations with the labels "
            "over the batch, so with one label for every sample the label distance matrix is "
            "zero and the maps are always zero. Pass one class index per example (a list or "
            "1-D tensor), label vectors, or a reference set of other classes with `context=`."
        )
    if index.dim() == 2:
        return "multi", index
    if table_rows is not None and bool((index >= table_rows).any()):
        raise InputError(
            f"`{name}` contains class index {int(index.max())}, but `label_embeddings` has "
            f"only {table_rows} rows (one per class); give an embedding for every class."
        )
    return "index", index


def _ravel(index: Tensor, output: Any, table_rows: Optional[int]) -> Tensor:
    dims = tuple(output.shape[1:]) if isinstance(output, Tensor) else None
    if dims is None or index.shape[1] != len(dims) or bool((index >= torch.tensor(dims)).any()):
        raise InputError(
            f"A tuple target must give one index per non-batch dimension of the "
            f"Student's output, within its size; the output has shape "
            f"{tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__}"
            f" and the target tuples have {index.shape[1]} entries (largest "
            f"{index.max(dim=0).values.tolist()})."
        )
    strides = torch.tensor([int(torch.Size(dims[i + 1 :]).numel()) for i in range(len(dims))])
    flat = (index * strides).sum(dim=1)
    if table_rows is None and len(dims) > 1:
        raise InputError(
            "A tuple target names an element of a multi-dimensional output; UniCAM "
            "needs a label vector for it: pass `label_embeddings` with one row per "
            f"output element ({int(torch.Size(dims).numel())} rows, in row-major "
            "order), or label vectors as `target`."
        )
    if table_rows is not None and bool((flat >= table_rows).any()):
        raise InputError(
            f"The tuple target selects output element {int(flat.max())} (row-major), "
            f"but `label_embeddings` has only {table_rows} rows; give one row per "
            "output element."
        )
    return flat


def ravel_targets(
    parts: List[Tuple[Parsed, int]], output: Any, table_rows: Optional[int]
) -> List[Tuple[Parsed, int]]:
    """Tuple targets -> class indices: the position of the selected element in the
    Student's output per example, flattened in row-major order (for an (N, C) output the
    tuple (c,) is class c). Needs the output's shape, so it runs after the forward pass."""
    return [
        (("index", _ravel(value, output, table_rows)), count)
        if kind == "multi"
        else ((kind, value), count)
        for (kind, value), count in parts
    ]


def one_hot(index: Tensor, num_classes: int) -> Tensor:
    """One-hot rows, without F.one_hot's check of the indices (a read back to the host);
    indices are checked where they are known to be on the host."""
    return index.unsqueeze(1) == torch.arange(num_classes, device=index.device)


def rows_of(index: Tensor, table: Optional[Tensor], num_classes: Optional[int]) -> Tensor:
    """The label vectors of class indices: rows of ``table``, or one-hot vectors of width
    ``num_classes`` (any width above the largest index gives the same distances)."""
    if table is not None:
        return table[index.to(table.device)]
    assert num_classes is not None
    return one_hot(index, num_classes)
