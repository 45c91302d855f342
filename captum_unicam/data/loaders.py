r"""Datasets by spec string: the controlled dataset, CIFAR-10 and ImageFolder trees.

A spec names a dataset the way the command line does (``--data SPEC``):

==================== ==========================================================
spec                 dataset
==================== ==========================================================
``controlled``       :class:`~captum_unicam.data.ControlledShapes`, seed 0
``controlled:SEED``  the same with another seed
``cifar10:ROOT``     torchvision's CIFAR-10 under ROOT (downloaded only when
                     ``download=True``)
``imagefolder:ROOT`` a folder of class sub-folders of images (PetImages / ASIRRA,
                     PlantVillage, ...): ``ROOT/train`` and ``ROOT/test`` (or
                     ``ROOT/val``) when present, else ``ROOT`` itself split
                     deterministically, stratified by class
==================== ==========================================================

Transforms. Images come as float tensors ``(3, H, W)`` in [0, 1], **not normalised**
by default (the models of :mod:`captum_unicam.models` have batch normalisation after the
first convolution and train well on [0, 1] inputs; maps and perturbations are easier
to read on unnormalised images). ``normalize=True`` applies the per-channel mean / std
of the dataset (CIFAR-10's, or ImageNet's for folders) and records them as ``.mean``
and ``.std`` on the dataset. ``augment=True`` (training split only) adds the usual
augmentation: random crop with 4-pixel padding and horizontal flip for CIFAR-10,
random resized crop and horizontal flip for folders. Without augmentation, folder
images are resized (shorter side to ``image_size * 8 / 7``) and centre-cropped to
``image_size`` (default 224); CIFAR-10 is resized only when ``image_size`` is not 32.
"""

from __future__ import annotations

from captum_unicam import errors as _errors

import errno
import math
import os
import pathlib
import stat
import warnings
from typing import Any, Callable, List, Optional, Sequence

import torch
from torch.utils.data import Dataset

from captum_unicam.data.controlled import SPLITS, ControlledShapes

__all__ = ["DataSpecError", "load_dataset", "spec_paths", "SCHEMES"]

#: Schemes accepted by :func:`load_dataset`.
SCHEMES = ("controlled", "cifar10", "imagefolder")

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_DEFAULT_CONTROLLED_SIZE = {"train": 2000, "test": 1000, "val": 1000, "transfer": 4000}


DataSpecError = _errors.DataSpecError  # the library's one family of expected failures


class Subset(Dataset):
    """A subset that keeps ``classes``, ``targets`` (those of its items) and the base
    dataset's other attributes."""

    def __init__(self, base: Dataset, indices: Sequence[int], targets: Optional[Sequence[int]] = None) -> None:
        self.base = base
        self.indices = list(indices)
        if hasattr(base, "classes"):
            self.classes = list(base.classes)
        if targets is None:
            targets = getattr(base, "targets", None)
        if targets is not None:
            self.targets = [int(targets[i]) for i in self.indices]
        for name in ("class_to_idx", "mean", "std", "root", "split"):
            if hasattr(base, name):
                setattr(self, name, getattr(base, name))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.base[self.indices[i]]


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


def load_dataset(
    spec: str,
    split: str = "train",
    *,
    download: bool = False,
    image_size: Optional[int] = None,
    limit: Optional[int] = None,
    augment: bool = False,
    normalize: bool = False,
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
        **kwargs: For ``controlled``: ``size`` (default 2000 train, 1000 test/val,
                    4000 transfer; ``limit`` overrides it), ``num_classes``,
                    ``cue_strength``, ``clutter``, ``noise``. For ``imagefolder``:
                    ``test_fraction`` (default 0.2) and ``split_seed`` (default 0) of
                    the split of a folder without train / test sub-folders.

    Returns:
        *Dataset*: items ``(image, label)``, or ``(image, label, mask)`` for the
        controlled dataset; the dataset has ``.classes``.

    Raises:
        DataSpecError: unknown scheme, missing root, empty folder, CIFAR-10 files
        absent with ``download=False``, bad keywords.

    Examples::

        >>> train = load_dataset("controlled:3", "train", cue_strength=0.9, limit=300)
        >>> test = load_dataset("imagefolder:/data/PetImages", "test", image_size=128)
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataSpecError(
            f"data spec must be a non-empty str like 'controlled', 'cifar10:ROOT' or "
            f"'imagefolder:ROOT', got {spec!r}"
        )
    _check_common(split, image_size, limit)
    scheme, sep, arg = spec.strip().partition(":")
    scheme = scheme.lower()
    if scheme == "controlled":
        return _controlled(arg if sep else "", split, image_size, limit, kwargs)
    if scheme not in SCHEMES:
        raise DataSpecError(
            f"unknown data spec {spec!r}; use one of 'controlled', 'controlled:SEED', "
            "'cifar10:ROOT', 'imagefolder:ROOT'"
        )
    if not arg:
        raise DataSpecError(f"data spec {spec!r} needs a folder: '{scheme}:ROOT'")
    root = pathlib.Path(os.path.expanduser(arg))
    if scheme == "cifar10":
        return _cifar10(root, split, download, image_size, limit, augment, normalize, kwargs)
    return _imagefolder(root, split, image_size, limit, augment, normalize, kwargs)


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


def _controlled(arg: str, split: str, image_size, limit, kwargs) -> Dataset:
    seed = 0
    if arg:
        try:
            seed = int(arg)
        except ValueError:
            raise DataSpecError(
                f"'controlled:{arg}': the seed must be a non-negative integer, "
                "e.g. 'controlled:3'"
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
        return ControlledShapes(
            size, seed=seed, image_size=image_size or 32, split=split, **kwargs
        )
    except ValueError as e:
        raise DataSpecError(f"controlled dataset: {e}") from e


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


def _cifar10(root, split, download, image_size, limit, augment, normalize, kwargs):
    from torchvision import datasets
    from torchvision import transforms as T

    _no_kwargs("cifar10", kwargs)
    if root.name == "cifar-10-batches-py":  # the extracted folder itself was given
        root = root.parent
    if not download and not (root / "cifar-10-batches-py").is_dir():
        raise DataSpecError(
            f"CIFAR-10 is not in {str(root)!r} (no cifar-10-batches-py folder); pass "
            "download=True (--download on the command line) to download it there, or "
            "point cifar10:ROOT at the folder that holds cifar-10-batches-py"
        )
    size = image_size or 32
    train = split in ("train", "transfer")  # "val" and "test" read the test batch
    tf: List[Callable] = []
    if size != 32:
        tf.append(T.Resize(size, antialias=True))
    if augment and train:
        tf += [T.RandomCrop(size, padding=4 * size // 32), T.RandomHorizontalFlip()]
    tf.append(T.ToTensor())
    if normalize:
        tf.append(_normalizer(CIFAR10_MEAN, CIFAR10_STD))
    try:
        ds = datasets.CIFAR10(str(root), train=train, download=download, transform=T.Compose(tf))
    except PermissionError as e:
        raise DataSpecError(
            f"cannot read or write CIFAR-10 in {str(root)!r} (permission denied: "
            f"{e.filename or root}); fix the permissions or choose another folder") from e
    except OSError as e:  # urllib's URLError, socket errors, a full disk
        if not download:
            raise DataSpecError(f"cannot read CIFAR-10 in {str(root)!r}: {e}") from e
        raise DataSpecError(
            f"could not download CIFAR-10 into {str(root)!r} ({type(e).__name__}: {e}); check "
            "the network, or download cifar-10-python.tar.gz by hand and extract it there"
        ) from e
    except RuntimeError as e:
        hint = "" if download else "; pass download=True (--download) to download it again"
        raise DataSpecError(f"cannot read CIFAR-10 in {str(root)!r}: {e}{hint}") from e
    if normalize:
        ds.mean, ds.std = CIFAR10_MEAN, CIFAR10_STD
    return _limited(ds, limit)


#: Folders nested deeper than this below a class folder are refused (a bound on the walk).
MAX_FOLDER_DEPTH = 32


def _load_rgb(path: str):
    """Reads an image file as RGB, telling an unreadable file from a damaged one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except PermissionError as e:
        raise DataSpecError(
            f"cannot read image {path!r}: permission denied; fix its permissions "
            "(e.g. chmod a+r) or remove it"
        ) from e
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise DataSpecError(
            f"image {path!r} is damaged or not an image ({type(e).__name__}: {e}); delete "
            "or replace the file"
        ) from e


def _unreadable_folder(path: str, err: OSError) -> DataSpecError:
    if isinstance(err, PermissionError):
        return DataSpecError(
            f"cannot read the folder {path!r}: permission denied; fix its permissions "
            "(e.g. chmod a+rx) or remove it")
    return DataSpecError(f"cannot read the folder {path!r} ({err.strerror or err}); check it")


def _class_dirs(root: pathlib.Path) -> List[str]:
    try:
        entries = list(os.scandir(root))
    except OSError as e:
        raise _unreadable_folder(str(root), e) from e
    return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _scan_class(top: str, idx: int) -> List[tuple]:
    """(path, idx) of the image files below the class folder ``top``, in the order of
    torchvision's ImageFolder (by folder path, then file name). Folder symlinks are
    followed once: a folder reached again (a loop such as ``ln -s . cls/self``, or two
    links to one folder) is skipped with a warning naming the link, so each real file
    counts once; the walk goes at most MAX_FOLDER_DEPTH folders deep."""
    found: List[tuple] = []
    seen_dirs: dict = {}
    seen_files: set = set()
    unreadable: List[str] = []
    duplicates = 0
    top_real = os.path.realpath(top)
    pending = [(top, 0)]
    while pending:
        folder, depth = pending.pop()
        try:
            st = os.stat(folder)
        except OSError as e:
            raise _unreadable_folder(folder, e) from e
        key = (st.st_dev, st.st_ino)
        real = os.path.realpath(folder)
        if key in seen_dirs or (folder != top and top_real.startswith(real.rstrip(os.sep) + os.sep)):
            warnings.warn(
                f"image folder: skipped the link {folder!r}: it leads to "
                f"{seen_dirs.get(key, real)!r}, a folder already read or above the class "
                "folder (a symlink loop or a second link), so its images are counted once",
                UserWarning, stacklevel=7)
            continue
        seen_dirs[key] = folder
        if depth > MAX_FOLDER_DEPTH:
            raise DataSpecError(
                f"image folder {top!r} nests folders more than {MAX_FOLDER_DEPTH} deep (at "
                f"{folder!r}); flatten it, or check for symlinks that loop")
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            raise _unreadable_folder(folder, e) from e
        subdirs: List[tuple] = []
        for e in entries:
            try:
                is_dir = e.is_dir()  # follows symlinks; False for a looping link
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append((e.path, depth + 1))
                continue
            if not e.name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            try:
                fst = os.stat(e.path)
            except OSError as err:
                if err.errno == errno.ELOOP:
                    raise DataSpecError(
                        f"image {e.path!r} is a symbolic link in a cycle (it leads back to "
                        "itself); remove the link or replace it with the image") from err
                if isinstance(err, PermissionError):
                    unreadable.append(e.path)
                    continue
                raise DataSpecError(
                    f"image {e.path!r} is a symbolic link to {os.readlink(e.path)!r}, which "
                    "does not exist; remove the link or restore its target"
                    if e.is_symlink() else f"cannot read image {e.path!r} ({err.strerror})"
                ) from err
            if not stat.S_ISREG(fst.st_mode):
                warnings.warn(f"image folder: skipped {e.path!r}, which is not a regular file",
                              UserWarning, stacklevel=7)
                continue
            if fst.st_size == 0:  # zero-byte files (PetImages has a few) are no images
                continue
            fkey = (fst.st_dev, fst.st_ino)
            if fkey in seen_files:
                duplicates += 1
                continue
            seen_files.add(fkey)
            if not os.access(e.path, os.R_OK):
                unreadable.append(e.path)
                continue
            found.append((folder, e.name, e.path))
        pending.extend(reversed(subdirs))  # depth first, in name order
    if unreadable:
        raise DataSpecError(
            f"{len(unreadable)} image file(s) in {top!r} cannot be read (permission denied), "
            f"e.g. {unreadable[0]!r}; fix their permissions (e.g. chmod a+r) or remove them")
    if duplicates:
        warnings.warn(f"image folder {top!r}: {duplicates} link(s) to image files already "
                      "counted were skipped", UserWarning, stacklevel=7)
    found.sort(key=lambda t: (t[0], t[1]))
    return [(path, idx) for _, _, path in found]


def _make_image_folder_class():
    from torchvision import datasets

    class _ImageFolder(datasets.ImageFolder):
        """torchvision's ImageFolder with a safe walk (:func:`_scan_class`) and errors
        that tell an unreadable folder from an empty one."""

        def find_classes(self, directory):
            classes = _class_dirs(pathlib.Path(directory))
            return classes, {c: i for i, c in enumerate(classes)}

        @staticmethod
        def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None,
                         allow_empty=False):
            samples = []
            for name, idx in sorted(class_to_idx.items(), key=lambda kv: kv[1]):
                found = _scan_class(os.path.join(str(directory), name), idx)
                if not found and not allow_empty:
                    raise DataSpecError(
                        f"image folder {str(directory)!r}: the class folder {name!r} holds no "
                        f"images; put image files ({', '.join(IMAGE_EXTENSIONS)}) in it or "
                        "remove it")
                samples += found
            return samples

    return _ImageFolder


def _imagefolder(root, split, image_size, limit, augment, normalize, kwargs):
    from torchvision import transforms as T

    _no_kwargs("imagefolder", kwargs, ("test_fraction", "split_seed"))
    test_fraction = kwargs.get("test_fraction", 0.2)
    split_seed = kwargs.get("split_seed", 0)
    if not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise DataSpecError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    try:
        exists = root.exists()
    except OSError as e:
        raise _unreadable_folder(str(root), e) from e
    if not exists:
        raise DataSpecError(
            f"image folder {str(root)!r} does not exist; give the folder that holds one "
            "sub-folder of images per class (or train/ and test/ sub-folders of those)"
        )
    if not root.is_dir():
        raise DataSpecError(f"{str(root)!r} is not a folder; imagefolder:ROOT needs a folder")
    train = split in ("train", "transfer")
    sub = None
    if (root / "train").is_dir() and ((root / "test").is_dir() or (root / "val").is_dir()):
        if train:
            sub = root / "train"
        else:
            sub = root / "test" if (root / "test").is_dir() else root / "val"
    folder = sub or root
    if not _class_dirs(folder):
        raise DataSpecError(
            f"image folder {str(folder)!r} has no class sub-folders; arrange the images "
            "as ROOT/<class name>/<image file>"
        )
    size = image_size or 224
    if augment and train:
        tf: List[Callable] = [
            T.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
        ]
    else:
        tf = [T.Resize(int(math.ceil(size * 8 / 7)), antialias=True), T.CenterCrop(size)]
    tf.append(T.ToTensor())
    if normalize:
        tf.append(_normalizer(IMAGENET_MEAN, IMAGENET_STD))
    ds = _make_image_folder_class()(
        str(folder),
        transform=T.Compose(tf),
        loader=_load_rgb,
        allow_empty=False,
    )
    if normalize:
        ds.mean, ds.std = IMAGENET_MEAN, IMAGENET_STD
    if sub is None:
        ds = Subset(ds, _stratified_split(ds.targets, train, float(test_fraction), split_seed))
    return _limited(ds, limit)


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
