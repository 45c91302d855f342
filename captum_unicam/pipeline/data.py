r"""Data of a study: preprocessing, labelled subsets, and the preprocessing a checkpoint carries.

A model is trained on images of one size and one normalisation; explaining it on others
gives meaningless maps and accuracies. :func:`load_data` loads a data spec with an
explicit :class:`Preprocessing`, which training records in the checkpoint's ``recipe``
(``image_size``, ``normalize``); :func:`checkpoint_preprocessing` reads it back and
:func:`agreed_preprocessing` checks that the models of a study agree.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch.utils.data import Dataset

from captum_unicam.errors import InputError
from captum_unicam.kd.recipe import NORMALIZATIONS
from captum_unicam.pipeline.batches import labels_of

__all__ = ["NORMALIZATIONS", "Preprocessing", "load_data", "labelled_subset", "checkpoint_preprocessing",
           "agreed_preprocessing", "PreprocessingWarning"]

_MEAN_STD = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


class PreprocessingWarning(UserWarning):
    """Models of one study were trained on different preprocessing."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    r"""How images reach a model: ``image_size`` (side in pixels; None: the data set's
    default, 32 for the controlled dataset and CIFAR-10, 224 for folders) and
    ``normalize`` (``"imagenet"`` or ``"none"``)."""

    image_size: Optional[int] = None
    normalize: str = "none"

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise InputError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}")
        s = self.image_size
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 8):
            raise InputError(f"image_size must be an int >= 8, got {s!r}")

    def to_dict(self) -> Dict[str, Any]:
        return {"image_size": self.image_size, "normalize": self.normalize}


class _Prepared(Dataset):
    """Items of ``base`` with the image normalised and, for training, flipped and cropped."""

    def __init__(self, base: Dataset, normalize: str, augment: bool) -> None:
        self.base = base
        self.normalize = normalize
        self.augment = augment
        for name in ("classes", "class_to_idx", "root", "split"):
            if hasattr(base, name):
                setattr(self, name, getattr(base, name))
        if normalize in _MEAN_STD:
            mean, std = _MEAN_STD[normalize]
            self.mean, self.std = mean, std
            self._mean = torch.tensor(mean).view(3, 1, 1)
            self._std = torch.tensor(std).view(3, 1, 1)

    @property
    def targets(self) -> List[int]:
        return labels_of(self.base)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        item = self.base[i]
        x = item[0]
        if self.augment:
            x = _flip_crop(x)
        if self.normalize in _MEAN_STD:
            x = (x - self._mean) / self._std
        return (x,) + tuple(item[1:])


def _flip_crop(x: torch.Tensor) -> torch.Tensor:
    """Random horizontal flip and random crop after zero padding by 1/8 of the side
    (4 pixels at 32 px), drawn from torch's global generator (seeded by training)."""
    if torch.rand(()) < 0.5:
        x = x.flip(-1)
    h, w = x.shape[-2:]
    pad = max(1, h // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    top = int(torch.randint(0, 2 * pad + 1, ()))
    left = int(torch.randint(0, 2 * pad + 1, ()))
    return padded[..., top:top + h, left:left + w]


def load_data(spec: str, split: str, prep: Preprocessing = Preprocessing(), *, augment: bool = False,
              limit: Optional[int] = None, download: bool = False) -> Dataset:
    r"""Loads ``spec`` (see :func:`~captum_unicam.data.load_dataset`) at
    ``prep.image_size`` with ``prep.normalize``; ``augment`` adds random flips and crops
    (for training). Items keep the data set's form (``(image, label[, mask])``) and the
    data set keeps ``.classes`` and ``.targets``."""
    from captum_unicam.data import load_dataset

    ds = load_dataset(spec, split, download=download, image_size=prep.image_size, limit=limit)
    if prep.normalize == "none" and not augment:
        return ds
    return _Prepared(ds, prep.normalize, augment)


def labelled_subset(dataset: Dataset, n: int, seed: int = 0) -> Dataset:
    r"""A seeded, class-stratified subset of ``n`` items (the labelled data of a Base).

    The classes take turns (in a seeded random order of each class's items), so every
    class gets ``n // classes`` or one more item while it has them.

    Raises:
        InputError: ``n`` is not a positive int, or larger than the data set.
    """
    from captum_unicam.pipeline.batches import first_per_class

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"the labelled subset size must be a positive int, got {n!r}")
    labels = labels_of(dataset)
    if n > len(labels):
        raise InputError(f"a labelled subset of {n} items was asked for, but the data hold only {len(labels)}")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(labels), generator=g).tolist()
    picked = first_per_class([labels[p] for p in perm], n)
    keep = sorted(perm[j] for j in picked)
    from captum_unicam.data.loaders import Subset

    return Subset(dataset, keep, targets=labels_of(dataset))


def checkpoint_preprocessing(meta: Mapping[str, Any]) -> Dict[str, Any]:
    r"""``{"image_size", "normalize"}`` recorded in a checkpoint's metadata (its
    ``recipe``); None for what the checkpoint does not record."""
    recipe = meta.get("recipe") or {}
    out: Dict[str, Any] = {"image_size": None, "normalize": None}
    if isinstance(recipe, Mapping):
        size = recipe.get("image_size")
        out["image_size"] = int(size) if isinstance(size, int) and not isinstance(size, bool) else None
        norm = recipe.get("normalize")
        out["normalize"] = norm if norm in NORMALIZATIONS else None
    return out


def agreed_preprocessing(metas: Mapping[str, Mapping[str, Any]], *, image_size: Optional[int] = None,
                         normalize: Optional[str] = None) -> Tuple[Preprocessing, List[str]]:
    r"""The preprocessing that the checkpoints of a study (``role -> metadata``) record.

    Args:
        metas (dict): e.g. ``{"Student": meta, "Base": meta, "Teacher": meta}``.
        image_size (int, optional): Use this size whatever the checkpoints say.
        normalize (str, optional): Use this normalisation whatever they say.

    Returns:
        *(Preprocessing, list of str)*: what to load the data with, and one warning
        line per checkpoint whose recorded value is overridden.

    Raises:
        InputError: two checkpoints record different values and no override is given;
        the message names both.
    """
    chosen: Dict[str, Any] = {}
    notes: List[str] = []
    for key, override in (("image_size", image_size), ("normalize", normalize)):
        recorded = {role: checkpoint_preprocessing(m)[key] for role, m in metas.items()}
        known = {r: v for r, v in recorded.items() if v is not None}
        if override is not None:
            for role, v in known.items():
                if v != override:
                    notes.append(f"the {role} was trained with {key} {v}, evaluated with {override}")
            chosen[key] = override
            continue
        values = sorted(set(known.values()), key=str)
        if len(values) > 1:
            (r1, v1), (r2, v2) = next((a, b) for a in known.items() for b in known.items() if a[1] != b[1])
            raise InputError(f"the {r1} was trained with {key} {v1} and the {r2} with {key} {v2}; "
                             f"models of one study must see the same images (or pass {key}= to override)")
        chosen[key] = values[0] if values else None
    prep = Preprocessing(chosen["image_size"], chosen["normalize"] or "none")
    return prep, notes
