r"""Folders in CIFAR-10's python format, read safely and checked by shape and type.

A folder ``cifar-10-batches-py`` holding ``data_batch_1`` .. ``data_batch_5`` (the train
part), ``test_batch`` (the test part) and ``batches.meta`` is read whatever wrote it (the
official release or your own code): each batch must be a dict with ``data`` (or
``b'data'``), a uint8 array ``(N, 3072)`` (the 32 x 32 image, channel by channel, row by
row), and ``labels``, N ints in ``range(len(label_names))``; ``batches.meta`` holds
``label_names``. The bytes are not compared with the official release.

The files are pickles; they are unpickled with a restricted unpickler that builds only
numpy arrays, their dtypes and plain Python values, so a crafted file cannot run code.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from typing import Any, List, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from captum_unicam.errors import DataSpecError

__all__ = ["FOLDER", "TRAIN_BATCHES", "TEST_BATCH", "META", "read_cifar_folder", "CIFARFolder"]

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"

#: The globals a CIFAR batch may name: numpy's array and scalar reconstruction (numpy 1
#: and 2 spell the module differently) and the latin-1 codec of Python 2 byte strings.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "numpy.core.numeric"),
    ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "numpy.core.numeric"),
    ("numpy", "ndarray"): ("numpy",),
    ("numpy", "dtype"): ("numpy",),
    ("_codecs", "encode"): ("_codecs",),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        modules = _ALLOWED.get((module, name))
        if modules is None:
            raise pickle.UnpicklingError(
                f"it names {module}.{name}, which a CIFAR batch never holds"
            )
        for m in modules:
            try:
                return getattr(importlib.import_module(m), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"{module}.{name} is not available")


def _unpickle(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as e:
        folder, name = os.path.split(path)
        raise DataSpecError(
            f"the CIFAR-format folder {folder!r} has no {name!r}; it needs "
            f"{', '.join(TRAIN_BATCHES)}, {TEST_BATCH} and {META} (in CIFAR-10's python format)"
        ) from e
    except OSError as e:
        raise DataSpecError(f"cannot read {path!r} ({e.strerror or e}); check the file") from e
    try:
        return _SafeUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001  (any failure of a crafted pickle is bad input)
        raise DataSpecError(
            f"{path!r} is not a batch in CIFAR-10's python format ({type(e).__name__}: {e}); "
            "write it as a pickled dict with 'data' (uint8, N x 3072) and 'labels'"
        ) from e


def _field(d: Any, key: str, path: str) -> Any:
    if not isinstance(d, dict):
        raise DataSpecError(f"{path!r} holds a {type(d).__name__}, not the dict of a CIFAR batch")
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise DataSpecError(
        f"{path!r} has no {key!r} entry (keys: {sorted(map(repr, d))[:6]}); "
        "a CIFAR-format file needs it"
    )


def _names(folder: str) -> List[str]:
    path = os.path.join(folder, META)
    names = _field(_unpickle(path), "label_names", path)
    if (
        not isinstance(names, (list, tuple))
        or len(names) < 2
        or not all(isinstance(n, (str, bytes)) for n in names)
    ):
        raise DataSpecError(
            f"{path!r}: 'label_names' must be a list of at least 2 names, "
            f"got {type(names).__name__}"
        )
    out = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
    if len(set(out)) != len(out):
        raise DataSpecError(f"{path!r}: 'label_names' names a class twice: {out}")
    return out


def _batch(path: str, n_classes: int) -> Tuple[np.ndarray, List[int]]:
    d = _unpickle(path)
    data, labels = _field(d, "data", path), _field(d, "labels", path)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
    ):
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataSpecError(
            f"{path!r}: 'data' must be a uint8 array of shape (N, 3072), got {what}"
        )
    if isinstance(labels, np.ndarray):
        labels = labels.tolist()
    if not isinstance(labels, (list, tuple)) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels
    ):
        raise DataSpecError(f"{path!r}: 'labels' must be a list of ints")
    labels = [int(v) for v in labels]
    if len(labels) != len(data):
        raise DataSpecError(f"{path!r}: {len(data)} images but {len(labels)} labels")
    bad = [v for v in labels if not 0 <= v < n_classes]
    if bad:
        raise DataSpecError(
            f"{path!r}: label {bad[0]} is outside 0..{n_classes - 1} "
            f"(batches.meta names {n_classes} classes)"
        )
    return data, labels


def read_cifar_folder(folder: str, train: bool) -> Tuple[np.ndarray, List[int], List[str]]:
    r"""Reads the train (``data_batch_1..5``) or test (``test_batch``) part of a folder in
    CIFAR-10's python format.

    Args:

        folder (str): the ``cifar-10-batches-py`` folder.
        train (bool): the train part (else the test part).

    Returns:
        *(ndarray, list of int, list of str)*: images uint8 ``(N, 32, 32, 3)``, labels,
        and the class names of ``batches.meta``.

    Raises:
        DataSpecError: a file is missing, is not a CIFAR-format pickle (or names code to
        run), or holds data of another shape, type or label range; the message names it.

    Examples::

        >>> images, labels, names = read_cifar_folder("/data/cifar-10-batches-py", train=False)
    """
    names = _names(folder)
    parts = [
        _batch(os.path.join(folder, f), len(names))
        for f in (TRAIN_BATCHES if train else (TEST_BATCH,))
    ]
    data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(data), [v for p in parts for v in p[1]], names


class CIFARFolder(Dataset):
    r"""Items ``(image (3, 32, 32) in [0, 1] -> transform, label)`` of a CIFAR-format part.

    Attributes: ``data`` (uint8 ``(N, 32, 32, 3)``), ``targets``, ``classes``,
    ``class_to_idx``, ``root``, ``preprocessing``.
    """

    def __init__(
        self,
        root: str,
        data: np.ndarray,
        targets: List[int],
        classes: List[str],
        transform,
        preprocessing: dict,
    ) -> None:
        self.root = root
        self.data = data
        self.targets = list(targets)
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.transform = transform
        self.preprocessing = dict(preprocessing)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.data[i]).permute(2, 0, 1).float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[i]
