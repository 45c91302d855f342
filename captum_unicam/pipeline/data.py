r"""Data of a study: preprocessing, labelled subsets, and the preprocessing a checkpoint carries.

A model is trained on images of one size, one resize rule and one normalisation;
explaining it on others gives meaningless maps and accuracies. :func:`load_data` loads a
data spec with an explicit :class:`Preprocessing`, which training records in the
checkpoint (``preprocessing`` or the ``recipe``: ``image_size``, ``resize``,
``normalize``); :func:`checkpoint_preprocessing` reads it back and
:func:`agreed_preprocessing` checks that the models of a study agree and, with
``required=True``, refuses to guess what no checkpoint records and no option gives.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from captum_unicam.data.resize import DEFAULT_RESIZE, RESIZE_RULES
from captum_unicam.errors import InputError
from captum_unicam.kd.recipe import NORMALIZATIONS
from captum_unicam.pipeline.batches import labels_of

__all__ = [
    "NORMALIZATIONS",
    "RESIZE_RULES",
    "Preprocessing",
    "load_data",
    "labelled_subset",
    "checkpoint_preprocessing",
    "agreed_preprocessing",
    "PreprocessingWarning",
]

_MEAN_STD = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}

#: The options that set each preprocessing value (named in errors as ``field=``).
_FIELDS = ("image_size", "resize", "normalize")


class PreprocessingWarning(UserWarning):
    """Models of one study were trained on different preprocessing."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    r"""How images reach a model: ``image_size`` (side in pixels; None: the data set's
    default, 32 for the controlled dataset and CIFAR-10, 224 for folders), ``normalize``
    (``"imagenet"`` or ``"none"``) and ``resize``, the rule that brings images of another
    size to ``image_size`` (one of :data:`RESIZE_RULES`; images already at that size are
    never resized or cropped)."""

    image_size: Optional[int] = None
    normalize: str = "none"
    resize: str = DEFAULT_RESIZE

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise InputError(
                f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}"
            )
        if self.resize not in RESIZE_RULES:
            raise InputError(
                f"resize must be one of {', '.join(RESIZE_RULES)}, got {self.resize!r}"
            )
        s = self.image_size
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 8):
            raise InputError(f"image_size must be an int >= 8, got {s!r}")

    def to_dict(self) -> Dict[str, Any]:
        return {"image_size": self.image_size, "resize": self.resize, "normalize": self.normalize}

    def describe(self, sources: Optional[Mapping[str, str]] = None) -> str:
        r"""One line, e.g. ``"32 px (recorded in the checkpoints), resize shorter-side-crop
        (default; images already 32 px are not resized), normalize none (--normalize)"``."""
        src = dict(sources or {})

        def said(key: str, text: str) -> str:
            return f"{text} ({src[key]})" if src.get(key) else text

        size = said("image_size", f"{self.image_size} px" if self.image_size else "the data's size")
        resize = said("resize", f"resize {self.resize}")
        return f"{size}, {resize}, {said('normalize', f'normalize {self.normalize}')}"


class _Prepared(Dataset):
    """Items of ``base`` with the image normalised and, for training, flipped and cropped;
    ``.preprocessing`` is the base's with this wrapper's ``normalize`` and ``augment``."""

    def __init__(self, base: Dataset, normalize: str, augment: bool) -> None:
        self.base = base
        self.normalize = normalize
        self.augment = augment
        for name in ("classes", "class_to_idx", "root", "split"):
            if hasattr(base, name):
                setattr(self, name, getattr(base, name))
        prep = dict(getattr(base, "preprocessing", None) or {})
        prep.update(normalize=normalize, augment=bool(augment))
        self.preprocessing = prep
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
    return padded[..., top : top + h, left : left + w]


def load_data(
    spec: str,
    split: str,
    prep: Preprocessing = Preprocessing(),
    *,
    augment: bool = False,
    limit: Optional[int] = None,
    download: bool = False,
    expected_classes: Optional[Sequence[str]] = None,
    class_map: Optional[Mapping[str, str]] = None,
    follow_links: bool = False,
    unlabelled: bool = False,
) -> Dataset:
    r"""Loads ``spec`` (see :func:`~captum_unicam.data.load_dataset`) at
    ``prep.image_size`` by the rule ``prep.resize`` with ``prep.normalize``; ``augment``
    adds random flips and crops (for training).

    ``expected_classes`` indexes the classes in that order of names (e.g. a checkpoint's
    class names; an error names those that do not match), after ``class_map`` renamed the
    data's classes (``{name in the data: class name}``). ``unlabelled=True`` reads every
    image of an image folder whole (labels 0; a transfer set). Items keep the data set's
    form (``(image, label[, mask])``) and the data set keeps ``.classes``, ``.targets``
    and ``.preprocessing`` (``{"image_size", "resize", "normalize", "augment"}``)."""
    from captum_unicam.data import load_dataset

    extra = {"unlabelled": True} if unlabelled else {}
    ds = load_dataset(
        spec,
        split,
        download=download,
        image_size=prep.image_size,
        limit=limit,
        resize=prep.resize,
        expected_classes=expected_classes,
        class_map=class_map,
        follow_links=follow_links,
        **extra,
    )
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
        raise InputError(
            f"a labelled subset of {n} items was asked for, but the data hold only {len(labels)}"
        )
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(labels), generator=g).tolist()
    picked = first_per_class([labels[p] for p in perm], n)
    keep = sorted(perm[j] for j in picked)
    from captum_unicam.data.loaders import Subset

    return Subset(dataset, keep, targets=labels_of(dataset))


def _recorded(source: Any, key: str) -> Any:
    if not isinstance(source, Mapping):
        return None
    value = source.get(key)
    if key == "image_size":
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None
    if key == "normalize":
        return value if value in NORMALIZATIONS else None
    return value if value in RESIZE_RULES else None


def checkpoint_preprocessing(meta: Mapping[str, Any]) -> Dict[str, Any]:
    r"""``{"image_size", "resize", "normalize"}`` recorded in a checkpoint's metadata (its
    ``preprocessing``, else its ``recipe``); None for what the checkpoint does not record."""
    out: Dict[str, Any] = {}
    for key in _FIELDS:
        value = _recorded(meta.get("preprocessing"), key)
        out[key] = value if value is not None else _recorded(meta.get("recipe"), key)
    return out


def _missing(key: str, roles: Sequence[str]) -> InputError:
    who = ", ".join(roles)
    if key == "image_size":
        what, fix = "image size", "image_size=N, the side in pixels the models were trained at"
    else:
        what, fix = (
            "input normalisation",
            "normalize=none, or normalize=imagenet for ImageNet-pretrained models",
        )
    return InputError(
        f"no checkpoint records the {what} its model was trained with ({who}: plain state dicts "
        f"or checkpoints without preprocessing) and none is guessed; give {fix}"
    )


def _agree(
    key: str, metas: Mapping[str, Mapping[str, Any]], override: Any
) -> Tuple[Any, List[str], str]:
    """``(value, notes, source)`` of one preprocessing value."""
    recorded = {role: checkpoint_preprocessing(m)[key] for role, m in metas.items()}
    known = {r: v for r, v in recorded.items() if v is not None}
    if override is not None:
        notes = [
            f"the {role} was trained with {key} {v}, evaluated with {override}"
            for role, v in known.items()
            if v != override
        ]
        return override, notes, f"{key}="
    values = sorted(set(known.values()), key=str)
    if len(values) > 1:
        (r1, v1), (r2, v2) = next(
            (a, b) for a in known.items() for b in known.items() if a[1] != b[1]
        )
        raise InputError(
            f"the {r1} was trained with {key} {v1} and the {r2} with {key} {v2}; "
            f"models of one study must see the same images (or pass {key}= to override)"
        )
    if values:
        return values[0], [], "recorded in the checkpoints"
    return None, [], ""


def agreed_preprocessing(
    metas: Mapping[str, Mapping[str, Any]],
    *,
    image_size: Optional[int] = None,
    normalize: Optional[str] = None,
    resize: Optional[str] = None,
    required: bool = False,
) -> Tuple[Preprocessing, List[str], Dict[str, str]]:
    r"""The preprocessing that the checkpoints of a study (``role -> metadata``) record.

    Args:
        metas (dict): e.g. ``{"Student": meta, "Base": meta, "Teacher": meta}``.
        image_size (int, optional): Use this size whatever the checkpoints say.
        normalize (str, optional): Use this normalisation whatever they say.
        resize (str, optional): Use this resize rule whatever they say (else the recorded
                    one, else :data:`~captum_unicam.data.resize.DEFAULT_RESIZE`, which
                    changes only images of another size than ``image_size``).
        required (bool, optional): Refuse an image size or normalisation that no
                    checkpoint records and no argument gives (instead of the data set's
                    default size and no normalisation). Default: False

    Returns:
        *(Preprocessing, list of str, dict)*: what to load the data with, one warning line
        per checkpoint whose recorded value is overridden, and where each value came from
        (``{"image_size": "recorded in the checkpoints" | "image_size=" | ..., ...}``).

    Raises:
        InputError: two checkpoints record different values and no override is given (the
        message names both); with ``required``, a value nobody gives (the message names
        the option).
    """
    chosen: Dict[str, Any] = {}
    notes: List[str] = []
    sources: Dict[str, str] = {}
    for key, override in (("image_size", image_size), ("resize", resize), ("normalize", normalize)):
        chosen[key], more, sources[key] = _agree(key, metas, override)
        notes += more
        if chosen[key] is None and required and key != "resize":
            raise _missing(key, list(metas))
    if chosen["resize"] is None:
        chosen["resize"], sources["resize"] = DEFAULT_RESIZE, "default"
    if chosen["normalize"] is None:
        chosen["normalize"], sources["normalize"] = "none", "default"
    if chosen["image_size"] is None:
        sources["image_size"] = "the data's default"
    prep = Preprocessing(chosen["image_size"], chosen["normalize"], chosen["resize"])
    return prep, notes, sources
