r"""Datasets by spec string: the controlled dataset, CIFAR-10 and ImageFolder trees.

A spec names a dataset the way the command line does (``--data SPEC``):

==================== ==========================================================
spec                 dataset
==================== ==========================================================
``controlled``       :class:`~captum_unicam.data.ControlledShapes`, seed 0
``controlled:SEED``  the same with another seed
``cifar10:ROOT``     any folder in CIFAR-10's python format under ROOT
                     (``ROOT/cifar-10-batches-py``, checked by shape and type:
                     see :mod:`captum_unicam.data.cifar`); the official
                     release is downloaded there only when ``download=True``
``imagefolder:ROOT`` a folder of class sub-folders of images (PetImages / ASIRRA,
                     PlantVillage, ...): ``ROOT/train`` and ``ROOT/test`` (or
                     ``ROOT/val``) when present, else ``ROOT`` itself split
                     deterministically, stratified by class
==================== ==========================================================

Images are read as the user sees them (16-bit and float images scaled to their range,
transparency over white, EXIF orientation applied; see :mod:`captum_unicam.data.images`),
after their header is checked against a pixel and an aspect-ratio limit (a damaged,
oversized or unsupported image is a :class:`DataSpecError` naming the file when it is read;
:func:`~captum_unicam.data.check_images` finds them all before any work). Hidden files and
folders are skipped; zero-byte files and symbolic links that leave ROOT are skipped with one
warning naming them (see :mod:`captum_unicam.data.folders`).

Classes are matched by name: the parts of a folder (``train/``, ``test/``, ``val/``) must
hold the same class names (an error names the difference), and ``expected_classes``
indexes a data set in a given order of names (e.g. a checkpoint's class names);
``class_map`` renames classes first (see :mod:`captum_unicam.data.classes`). Every data
set has ``.classes``, its class names in index order.

Transforms. Images come as float tensors ``(3, H, W)`` in [0, 1], **not normalised**
by default (the models of :mod:`captum_unicam.models` have batch normalisation after the
first convolution and train well on [0, 1] inputs; maps and perturbations are easier
to read on unnormalised images). ``normalize=True`` applies the per-channel mean / std
of the dataset (CIFAR-10's, or ImageNet's for folders) and records them as ``.mean``
and ``.std`` on the dataset. Images already ``image_size x image_size`` are never
resized or cropped; others are brought to that size by the rule ``resize`` (default
``"shorter-side-crop"``: shorter side to ``image_size``, then the centre; see
:mod:`captum_unicam.data.resize` for ``"exact"``, ``"pad"`` and ``"none"``).
``augment=True`` (training split only) adds the usual augmentation: random crop with
4-pixel padding and horizontal flip for CIFAR-10, random resized crop and horizontal flip
for folders. What was used is recorded as ``dataset.preprocessing``:
``{"image_size", "resize", "normalize", "augment"}``.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from captum_unicam.data.classes import class_difference, order_classes
from captum_unicam.data.controlled import SPLITS, ControlledShapes
from captum_unicam.data.folders import (
    IMAGE_EXTENSIONS,
    MAX_FOLDER_DEPTH,
    ImageFolderDataset,
    class_folders,
    scan_folders,
    unreadable_folder,
)
from captum_unicam.data.images import MAX_ASPECT_RATIO, MAX_PIXELS
from captum_unicam.data.resize import DEFAULT_RESIZE, check_resize
from captum_unicam.errors import DataSpecError

__all__ = [
    "DataSpecError",
    "load_dataset",
    "spec_paths",
    "SCHEMES",
    "IMAGE_EXTENSIONS",
    "MAX_FOLDER_DEPTH",
]

#: Schemes accepted by :func:`load_dataset`.
SCHEMES = ("controlled", "cifar10", "imagefolder")

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DEFAULT_CONTROLLED_SIZE = {"train": 2000, "test": 1000, "val": 1000, "transfer": 4000}


class Subset(Dataset):
    """A subset that keeps ``classes``, ``targets`` (those of its items) and the base
    dataset's other attributes (``preprocessing`` among them)."""

    def __init__(
        self, base: Dataset, indices: Sequence[int], targets: Optional[Sequence[int]] = None
    ) -> None:
        self.base = base
        self.indices = list(indices)
        if hasattr(base, "classes"):
            self.classes = list(base.classes)
        if targets is None:
            targets = getattr(base, "targets", None)
        if targets is not None:
            self.targets = [int(targets[i]) for i in self.indices]
        for name in ("class_to_idx", "mean", "std", "root", "split", "preprocessing"):
            if hasattr(base, name):
                setattr(self, name, getattr(base, name))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.base[self.indices[i]]


class Relabelled(Dataset):
    """Items of ``base`` with each label ``y`` replaced by ``index[y]``; ``classes`` in
    the new order (used to put a generated data set in a requested class order)."""

    def __init__(self, base: Dataset, classes: Sequence[str], index: Sequence[int]) -> None:
        self.base = base
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self._index = list(index)
        self.targets = [self._index[int(t)] for t in base.targets]  # type: ignore[attr-defined]
        for name in ("preprocessing", "split", "seed"):
            if hasattr(base, name):
                setattr(self, name, getattr(base, name))

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        item = self.base[i]
        return (item[0], self._index[int(item[1])]) + tuple(item[2:])


def _limited(ds: Dataset, limit: Optional[int], seed: int = 0) -> Dataset:
    """The first ``limit`` items of a seeded permutation (so every class is sampled
    even when the dataset is sorted by class), kept in their original order."""
    if limit is None or limit >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(ds), generator=g)[:limit].sort().values.tolist()
    return Subset(ds, keep)


def _check_common(split: str, image_size: Optional[int], limit: Optional[int]) -> None:
    if split not in SPLITS:
        raise DataSpecError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8
    ):
        raise DataSpecError(f"image_size must be an int >= 8, got {image_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataSpecError(f"limit must be a positive int, got {limit!r}")


def _check_limits(max_pixels: Any, max_aspect_ratio: Any) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise DataSpecError(f"max_pixels must be a positive int, got {max_pixels!r}")
    if (
        isinstance(max_aspect_ratio, bool)
        or not isinstance(max_aspect_ratio, (int, float))
        or not max_aspect_ratio >= 1
    ):
        raise DataSpecError(f"max_aspect_ratio must be a number >= 1, got {max_aspect_ratio!r}")


def load_dataset(
    spec: str,
    split: str = "train",
    *,
    download: bool = False,
    image_size: Optional[int] = None,
    limit: Optional[int] = None,
    augment: bool = False,
    normalize: bool = False,
    resize: str = DEFAULT_RESIZE,
    expected_classes: Optional[Sequence[str]] = None,
    class_map: Optional[Mapping[str, str]] = None,
    follow_links: bool = False,
    max_pixels: int = MAX_PIXELS,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
    **kwargs: Any,
) -> Dataset:
    r"""Loads a dataset named by a spec string (see the module docstring).

    Args:

        spec (str): ``"controlled"``, ``"controlled:SEED"``, ``"cifar10:ROOT"`` or
                    ``"imagefolder:ROOT"``.
        split (str, optional): ``"train"`` or ``"test"``. For folders and CIFAR-10,
                    ``"val"`` reads the test part and ``"transfer"`` the train part;
                    the controlled dataset has four independent streams ``"train"``,
                    ``"test"``, ``"val"``, ``"transfer"``. Default: "train"
        download (bool, optional): Download CIFAR-10 into ROOT when it is absent.
                    Nothing is ever downloaded otherwise. Default: False
        image_size (int, optional): Side of the (square) images. Default: 32 for the
                    controlled dataset and CIFAR-10, 224 for folders.
        limit (int, optional): Keep only this many items (a seeded random subset, so
                    every class is represented). Default: None (all)
        augment (bool, optional): Training augmentation (only applied to the train
                    split). Default: False
        normalize (bool, optional): Normalise by the dataset's mean / std.
                    Default: False
                    ``augment`` and ``normalize`` do not apply to the controlled
                    dataset: its images stay in [0, 1], aligned with their masks.
        resize (str, optional): How images of another size than ``image_size`` are
                    brought to it: ``"shorter-side-crop"`` (shorter side to
                    ``image_size``, then the centre square), ``"exact"`` (stretched to
                    the square), ``"pad"`` (longer side to ``image_size``, padded with
                    black) or ``"none"`` (refused). Images already at ``image_size``
                    are never changed. The controlled dataset is generated at
                    ``image_size``. Default: "shorter-side-crop"
        expected_classes (list of str, optional): Index the classes in this order of
                    names (label ``i`` is ``expected_classes[i]``), e.g. the class names
                    of a checkpoint; the data must hold exactly these names. Default:
                    None (sorted folder names; CIFAR's ``label_names`` order; for the
                    ``test`` / ``val`` part of a folder, the order of ``train/``)
        class_map (dict, optional): ``{name in the data: class name}``, applied before
                    names are compared or ordered (e.g. ``{"0": "zero"}``). Default: None
        follow_links (bool, optional): Follow symbolic links that lead out of ROOT
                    (skipped with a warning otherwise). Default: False
        max_pixels (int, optional): Refuse image files with more pixels (read from
                    the header, before decoding). Default: MAX_PIXELS (50 megapixels)
        max_aspect_ratio (float, optional): Refuse image files whose longer side is
                    more than this many times the shorter. Default: 20
        **kwargs: For ``controlled``: ``size`` (default 2000 train, 1000 test/val,
                    4000 transfer; ``limit`` overrides it), ``num_classes``,
                    ``cue_strength``, ``clutter``, ``noise``. For ``imagefolder``:
                    ``test_fraction`` (default 0.2) and ``split_seed`` (default 0) of
                    the split of a folder without train / test sub-folders;
                    ``unlabelled=True`` reads every image below ROOT whole (no class
                    folders needed, no split, every label 0, ``classes == ["unlabelled"]``):
                    a transfer set whose labels are never read. Never give it the folder
                    of the test images: they would be trained on.

    Returns:
        *Dataset*: items ``(image, label)``, or ``(image, label, mask)`` for the
        controlled dataset; the dataset has ``.classes`` (names in index order) and
        ``.preprocessing`` (``{"image_size", "resize", "normalize", "augment"}``).

    Raises:
        DataSpecError: unknown scheme, missing root, empty folder, CIFAR-10 files
        absent with ``download=False`` or not in CIFAR-10's format, class names that
        differ between the parts or from ``expected_classes``, bad keywords; reading an
        item raises it for a damaged, oversized or unsupported image, naming the file.

    Examples::

        >>> train = load_dataset("controlled:3", "train", cue_strength=0.9, limit=300)
        >>> test = load_dataset("imagefolder:/data/PetImages", "test", image_size=128,
        ...                     resize="pad", expected_classes=["Dog", "Cat"])
        >>> test.classes, test.preprocessing["resize"]
        (['Dog', 'Cat'], 'pad')
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataSpecError(
            f"data spec must be a non-empty str like 'controlled', 'cifar10:ROOT' or "
            f"'imagefolder:ROOT', got {spec!r}"
        )
    _check_common(split, image_size, limit)
    _check_limits(max_pixels, max_aspect_ratio)
    opts = {
        "resize": check_resize(resize),
        "follow_links": bool(follow_links),
        "max_pixels": max_pixels,
        "max_aspect_ratio": max_aspect_ratio,
        "classes": {"expected_classes": expected_classes, "class_map": class_map},
    }
    scheme, sep, arg = spec.strip().partition(":")
    scheme = scheme.lower()
    if scheme == "controlled":
        return _controlled(arg if sep else "", split, image_size, limit, opts, kwargs)
    if scheme not in SCHEMES:
        raise DataSpecError(
            f"unknown data spec {spec!r}; use one of 'controlled', 'controlled:SEED', "
            "'cifar10:ROOT', 'imagefolder:ROOT'"
        )
    if not arg:
        raise DataSpecError(f"data spec {spec!r} needs a folder: '{scheme}:ROOT'")
    root = pathlib.Path(os.path.expanduser(arg))
    if scheme == "cifar10":
        return _cifar10(root, split, download, image_size, limit, augment, normalize, opts, kwargs)
    return _imagefolder(root, split, image_size, limit, augment, normalize, opts, kwargs)


def spec_paths(spec: str) -> List[pathlib.Path]:
    r"""The folders a data spec reads, e.g. to keep an output folder away from them.

    Args:

        spec (str): a data spec (see :func:`load_dataset`).

    Returns:
        *list[pathlib.Path]*: ``[ROOT]`` for ``cifar10:ROOT`` and ``imagefolder:ROOT``
        (``~`` expanded), ``[]`` for ``controlled`` and for specs that name no folder.

    Examples::

        >>> spec_paths("imagefolder:~/data/PetImages")
        [PosixPath('/home/me/data/PetImages')]
    """
    if not isinstance(spec, str):
        return []
    scheme, sep, arg = spec.strip().partition(":")
    if scheme.lower() in ("cifar10", "imagefolder") and sep and arg:
        return [pathlib.Path(os.path.expanduser(arg))]
    return []


def _controlled(arg: str, split: str, image_size, limit, opts, kwargs) -> Dataset:
    seed = 0
    if arg:
        try:
            seed = int(arg)
        except ValueError:
            raise DataSpecError(
                f"'controlled:{arg}': the seed must be a non-negative integer, e.g. 'controlled:3'"
            ) from None
    allowed = {"size", "num_classes", "cue_strength", "clutter", "noise"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise DataSpecError(
            f"unknown keyword(s) {sorted(unknown)} for the controlled dataset; "
            f"accepted: {sorted(allowed)}"
        )
    size = kwargs.pop("size", _DEFAULT_CONTROLLED_SIZE[split])
    if limit is not None:
        size = limit
    try:
        ds = ControlledShapes(size, seed=seed, image_size=image_size or 32, split=split, **kwargs)
    except ValueError as e:
        raise DataSpecError(f"controlled dataset: {e}") from e
    # generated at image_size: no resize rule applies
    ds.preprocessing = {
        "image_size": ds.image_size,
        "resize": None,
        "normalize": "none",
        "augment": False,
    }
    names = list(ds.classes)
    classes, index = order_classes(
        names, where="the controlled dataset", sort=False, **opts["classes"]
    )
    if classes == names:
        return ds
    return Relabelled(ds, classes, [index[n] for n in names])


def _no_kwargs(scheme: str, kwargs: dict, allowed: Sequence[str] = ()) -> None:
    unknown = set(kwargs) - set(allowed)
    if unknown:
        raise DataSpecError(
            f"unknown keyword(s) {sorted(unknown)} for {scheme}"
            + (f"; accepted: {sorted(allowed)}" if allowed else "")
        )


def _normalizer(mean, std):
    from torchvision import transforms as T

    return T.Normalize(mean, std)


def _cifar_transform(size: int, resize: str, augment: bool, normalize: bool, root: str):
    from torchvision import transforms as T

    if resize == "none" and size != 32:
        raise DataSpecError(
            f"CIFAR-format images in {root!r} are 32 x 32 pixels, not {size} x {size}, and "
            "resize='none' refuses images of another size; pass image_size=32 or another "
            "resize rule"
        )
    tf: List[Callable] = []
    if size != 32:  # square images: every resize rule is a plain resize
        tf.append(T.Resize([size, size], antialias=True))
    if augment:
        tf += [T.RandomCrop(size, padding=4 * size // 32), T.RandomHorizontalFlip()]
    if normalize:
        tf.append(_normalizer(CIFAR10_MEAN, CIFAR10_STD))
    return T.Compose(tf) if tf else None


def _download_cifar(root: pathlib.Path) -> None:
    """torchvision's download of the official archive into ``root`` (asked for)."""
    from torchvision import datasets

    try:
        datasets.CIFAR10(str(root), train=False, download=True)
    except PermissionError as e:
        raise DataSpecError(
            f"cannot write CIFAR-10 into {str(root)!r} (permission denied: "
            f"{e.filename or root}); fix the permissions or choose another folder"
        ) from e
    except (OSError, RuntimeError) as e:  # urllib's URLError, socket errors, a full disk
        raise DataSpecError(
            f"could not download CIFAR-10 into {str(root)!r} ({type(e).__name__}: {e}); check "
            "the network, or download cifar-10-python.tar.gz by hand and extract it there"
        ) from e


def _cifar10(root, split, download, image_size, limit, augment, normalize, opts, kwargs):
    from captum_unicam.data.cifar import FOLDER, CIFARFolder, read_cifar_folder

    _no_kwargs("cifar10", kwargs)
    if root.name == FOLDER:  # the extracted folder itself was given
        root = root.parent
    folder = root / FOLDER
    if not folder.is_dir():
        if not download:
            raise DataSpecError(
                f"CIFAR-10 is not in {str(root)!r} (no {FOLDER} folder); point cifar10:ROOT "
                f"at the folder that holds {FOLDER}, or pass download=True (--download on the "
                "command line) to download the official release there"
            )
        _download_cifar(root)
    size = image_size or 32
    train = split in ("train", "transfer")  # "val" and "test" read the test batch
    data, labels, names = read_cifar_folder(str(folder), train)
    classes, index = order_classes(
        names, where=f"the CIFAR-format folder {str(folder)!r}", sort=False, **opts["classes"]
    )
    targets = [index[names[v]] for v in labels]
    augment = bool(augment and train)
    tf = _cifar_transform(size, opts["resize"], augment, normalize, str(folder))
    prep = {
        "image_size": size,
        "resize": opts["resize"],
        "normalize": "cifar10" if normalize else "none",
        "augment": augment,
    }
    ds = CIFARFolder(str(folder), data, targets, classes, tf, prep)
    if normalize:
        ds.mean, ds.std = CIFAR10_MEAN, CIFAR10_STD
    return _limited(ds, limit)


#: The parts of a split folder: ``ROOT/train`` with ``ROOT/test`` or ``ROOT/val``.
_PARTS = ("train", "test", "val")


def _split_folders(root: pathlib.Path, split: str) -> Tuple[Optional[pathlib.Path], List[str]]:
    """The part folder a split reads (None: ROOT itself, split by
    :func:`_stratified_split`) and the parts ROOT has."""
    parts = [p for p in _PARTS if (root / p).is_dir()]
    if "train" not in parts or len(parts) < 2:
        return None, []
    if split in ("train", "transfer"):
        return root / "train", parts
    return (root / "test" if "test" in parts else root / "val"), parts


def _part_classes(
    root: pathlib.Path, parts: Sequence[str], folder: pathlib.Path, opts: dict
) -> Tuple[List[str], dict]:
    """Classes of ``folder`` in index order: ``expected_classes`` when given, else the
    order of ``train/``'s names; every part must hold the same names."""
    names = {p: class_folders(str(root / p), str(root), opts["follow_links"]) for p in parts}
    where = {p: f"{str(root / p)!r}" for p in parts}
    cmap = opts["classes"].get("class_map")
    train, _ = order_classes(names["train"], where=where["train"], class_map=cmap)
    for p in parts[1:]:
        other, _ = order_classes(names[p], where=where[p], class_map=cmap)
        diff = class_difference(train, other, f"{p}/")
        if diff and names[p]:
            raise DataSpecError(
                f"image folder {str(root)!r}: the class folders of train/ and {p}/ differ by "
                f"name: {diff}; rename or add the folders so that both hold the same classes, "
                "or pass class_map={'folder name': 'class name', ...} (classes are matched by "
                "name, never by position)"
            )
    expected = opts["classes"].get("expected_classes")
    mine = names[folder.name]
    if expected is None:
        return order_classes(
            mine,
            where=where[folder.name],
            class_map=cmap,
            expected_classes=train,
            expected_from="the classes of train/",
        )
    return order_classes(mine, where=where[folder.name], **opts["classes"])


def _folder_transform_args(size: int, augment: bool, normalize: bool, opts: dict) -> dict:
    return {
        "image_size": size,
        "resize": opts["resize"],
        "augment": augment,
        "normalize": ("imagenet", IMAGENET_MEAN, IMAGENET_STD) if normalize else None,
        "max_pixels": opts["max_pixels"],
        "max_aspect_ratio": opts["max_aspect_ratio"],
    }


def _imagefolder(root, split, image_size, limit, augment, normalize, opts, kwargs):
    _no_kwargs("imagefolder", kwargs, ("test_fraction", "split_seed", "unlabelled"))
    test_fraction = kwargs.get("test_fraction", 0.2)
    split_seed = kwargs.get("split_seed", 0)
    if not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise DataSpecError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    try:
        exists = root.exists()
    except OSError as e:
        raise unreadable_folder(str(root), e) from e
    if not exists:
        raise DataSpecError(
            f"image folder {str(root)!r} does not exist; give the folder that holds one "
            "sub-folder of images per class (or train/ and test/ sub-folders of those)"
        )
    if not root.is_dir():
        raise DataSpecError(f"{str(root)!r} is not a folder; imagefolder:ROOT needs a folder")
    if kwargs.get("unlabelled", False):
        return _limited(_unlabelled(root, image_size, augment, normalize, opts), limit)
    train = split in ("train", "transfer")
    sub, parts = _split_folders(root, split)
    folder = sub or root
    found = class_folders(str(folder), str(root), opts["follow_links"])
    if not found:
        raise DataSpecError(
            f"image folder {str(folder)!r} has no class sub-folders; arrange the images "
            "as ROOT/<class name>/<image file>"
        )
    if sub is None:
        classes, index = order_classes(found, where=f"{str(root)!r}", **opts["classes"])
    else:
        classes, index = _part_classes(root, parts, sub, opts)
    # the files in the order of the sorted folder names (torchvision's order), whatever
    # the class order asked for, so that the split of a folder never depends on it
    canonical = scan_folders(
        str(root),
        [(str(folder / f), i) for i, f in enumerate(found)],
        follow_links=opts["follow_links"],
    )
    samples = [(path, index[found[c]]) for path, c in canonical]
    ds = ImageFolderDataset(
        str(folder),
        samples,
        classes,
        **_folder_transform_args(image_size or 224, bool(augment and train), normalize, opts),
    )
    if sub is None:
        keep = _stratified_split([c for _, c in canonical], train, float(test_fraction), split_seed)
        ds = Subset(ds, keep)
    return _limited(ds, limit)


def _unlabelled(root: pathlib.Path, image_size, augment, normalize, opts) -> Dataset:
    """Every image below ROOT (any sub-folders, by the walk's rules), whole: no split and
    no classes (label 0, class ``"unlabelled"``), for a transfer set whose labels are never
    read."""
    samples = scan_folders(
        str(root), [(str(root), 0)], follow_links=opts["follow_links"], allow_empty=True
    )
    if not samples:
        raise DataSpecError(
            f"the unlabelled image folder {str(root)!r} holds no images; put "
            f"image files ({', '.join(IMAGE_EXTENSIONS)}) in it"
        )
    return ImageFolderDataset(
        str(root),
        samples,
        ["unlabelled"],
        **_folder_transform_args(image_size or 224, bool(augment), normalize, opts),
    )


def _stratified_split(targets: Sequence[int], train: bool, frac: float, seed: int) -> List[int]:
    """Indices of the train or test part: per class, a seeded permutation of its files
    (sorted by path) whose first ceil(frac * n) go to test (none if the class has one
    file). Deterministic, and the same for every run on the same folder."""
    by_class: dict = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    keep: List[int] = []
    for c, idx in sorted(by_class.items()):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + c)
        perm = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        n_test = math.ceil(frac * len(idx)) if len(idx) > 1 else 0
        keep += perm[n_test:] if train else perm[:n_test]
    return sorted(keep)
