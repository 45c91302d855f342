r"""A whole data set's images checked from their headers, before any work is done.

:func:`check_images` opens every image file of a data set (or of a folder) and reads
only its header (no pixel is decoded unless ``decode=True``), so an unreadable,
damaged, oversized or extremely thin image anywhere (in ``test/`` as in ``train/``) is
named before training, not after all epochs.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
from typing import Any, Dict, List, Optional, Tuple, Union

from torch.utils.data import Dataset

from captum_unicam.data.images import MAX_ASPECT_RATIO, MAX_PIXELS, image_header, read_image
from captum_unicam.errors import DataSpecError

__all__ = ["ImageCheck", "check_images", "data_summary"]


@dataclasses.dataclass(frozen=True)
class ImageCheck:
    r"""What :func:`check_images` saw: ``n_images``, ``sizes`` (``{(width, height):
    count}``), ``modes`` (``{Pillow mode: count}``), and ``in_memory`` (True for data
    sets held as arrays, e.g. CIFAR-10 or the controlled dataset, whose images need no
    file check)."""

    n_images: int
    sizes: Dict[Tuple[int, int], int]
    modes: Dict[str, int]
    in_memory: bool = False

    def summary(self) -> str:
        """One line, e.g. ``"1,200 images; 2 sizes: 32 x 32 (1,190), 28 x 28 (10); modes:
        RGB (1,200)"``."""
        top = sorted(self.sizes.items(), key=lambda kv: (-kv[1], kv[0]))
        sizes = ", ".join(f"{w} x {h} ({n:,})" for (w, h), n in top[:3])
        more = f", {len(top) - 3} more" if len(top) > 3 else ""
        modes = ", ".join(f"{m} ({n:,})" for m, n in sorted(self.modes.items()))
        return f"{self.n_images:,} images; {len(top)} size(s): {sizes}{more}" + (
            f"; modes: {modes}" if modes else ""
        )

    def to_dict(self) -> Dict[str, Any]:
        """Plain values for a report: sizes as ``"WxH": count``."""
        return {
            "n_images": self.n_images,
            "sizes": {f"{w}x{h}": n for (w, h), n in sorted(self.sizes.items())},
            "modes": dict(sorted(self.modes.items())),
            "in_memory": self.in_memory,
        }


def _sample_paths(ds: Any) -> Optional[List[str]]:
    """The image files of a data set (through subsets and wrappers), or None when its
    images are held in memory."""
    indices = getattr(ds, "indices", None)
    base = getattr(ds, "base", None)
    if indices is not None and base is not None:
        paths = _sample_paths(base)
        return None if paths is None else [paths[i] for i in indices]
    samples = getattr(ds, "samples", None)
    if samples is not None:
        return [str(p) for p, _ in samples]
    if base is not None:
        return _sample_paths(base)
    return None


def _attribute(ds: Any, name: str) -> Any:
    """``ds.<name>``, looked up through wrappers that keep the data set as ``.base``."""
    while ds is not None:
        value = getattr(ds, name, None)
        if value is not None:
            return value
        ds = getattr(ds, "base", None)
    return None


def data_summary(dataset: Dataset) -> Dict[str, Any]:
    r"""What a report states about a data set: its classes in index order, the number of
    items per class and in all, and the preprocessing used.

    Returns:
        *dict*: ``{"classes": [...], "n_images": int, "class_counts": {name: int},
        "preprocessing": {"image_size", "resize", "normalize", "augment"} or None}``.

    Examples::

        >>> data_summary(load_dataset("controlled", "test", limit=8))["class_counts"]
        {'circle': 2, 'square': 2, 'triangle': 2, 'cross': 2}
    """
    classes = [str(c) for c in (_attribute(dataset, "classes") or [])]
    targets = getattr(dataset, "targets", None)
    if targets is None and hasattr(dataset, "labels"):
        targets = [int(v) for v in dataset.labels]
    counts = collections.Counter(int(t) for t in (targets or []))
    prep = _attribute(dataset, "preprocessing")
    return {
        "classes": classes,
        "n_images": len(dataset),  # type: ignore[arg-type]
        "class_counts": {c: counts.get(i, 0) for i, c in enumerate(classes)},
        "preprocessing": dict(prep) if prep is not None else None,
    }


def _root_paths(root: str, follow_links: bool) -> List[str]:
    from captum_unicam.data.folders import class_folders, scan_folders

    if not os.path.isdir(root):
        raise DataSpecError(f"image folder {root!r} does not exist or is not a folder")
    folders = []
    parts = [p for p in ("train", "test", "val") if os.path.isdir(os.path.join(root, p))]
    for part in parts or [""]:
        top = os.path.join(root, part) if part else root
        folders += [(os.path.join(top, c), 0) for c in class_folders(top, root, follow_links)]
    return [p for p, _ in scan_folders(root, folders, follow_links=follow_links, allow_empty=True)]


def _one(
    path: str, decode: bool, size: Optional[int], resize: Optional[str], limits: dict
) -> Tuple[Tuple[int, int], str]:
    header = image_header(path, **limits)
    if decode:
        read_image(path, **limits)
    if resize == "none" and size is not None and (header.width, header.height) != (size, size):
        raise DataSpecError(
            f"image {path!r} is {header.width} x {header.height} pixels, not {size} x {size}, "
            "and resize='none' refuses images of another size"
        )
    return (header.width, header.height), header.mode


def check_images(
    data: Union[Dataset, str, "os.PathLike[str]"],
    *,
    image_size: Optional[int] = None,
    resize: Optional[str] = None,
    max_pixels: int = MAX_PIXELS,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
    decode: bool = False,
    follow_links: bool = False,
    max_named: int = 5,
) -> ImageCheck:
    r"""Checks every image of a data set (or below a folder) from its header.

    Args:

        data (Dataset or str or path): a data set from
                    :func:`~captum_unicam.data.load_dataset` (also through subsets and
                    wrappers that keep ``.base``), or a folder (``ROOT`` or
                    ``"imagefolder:ROOT"``: every image of its class folders, and of its
                    ``train/``, ``test/``, ``val/`` parts).
        image_size (int, optional): with ``resize="none"``, images of another size are
                    bad. Default: the data set's ``preprocessing["image_size"]``.
        resize (str, optional): Default: the data set's ``preprocessing["resize"]``.
        max_pixels (int, optional): Default: MAX_PIXELS (50 megapixels)
        max_aspect_ratio (float, optional): Default: MAX_ASPECT_RATIO (20)
        decode (bool, optional): also decode every image (slower: finds damage past the
                    header, such as truncated pixel data, and float images out of
                    [0, 1]). Default: False
        follow_links (bool, optional): for a folder, follow links that leave it.
                    Default: False
        max_named (int, optional): how many bad files the error names. Default: 5

    Returns:
        *ImageCheck*: counts, sizes and modes seen (``.summary()`` is one line).

    Raises:
        DataSpecError: naming the bad files (up to ``max_named``, with the count of all).

    Examples::

        >>> test = load_dataset("imagefolder:/data/pets", "test", image_size=32)
        >>> print(check_images(test).summary())
        2,000 images; 1 size(s): 32 x 32 (2,000); modes: RGB (2,000)
    """
    if isinstance(data, (str, os.PathLike)):
        text = os.fspath(data)
        text = text.split(":", 1)[1] if text.startswith("imagefolder:") else text
        paths: Optional[List[str]] = _root_paths(str(pathlib.Path(text).expanduser()), follow_links)
    else:
        paths = _sample_paths(data)
        prep = _attribute(data, "preprocessing") or {}
        image_size = prep.get("image_size") if image_size is None else image_size
        resize = prep.get("resize") if resize is None else resize
    if paths is None:
        n = len(data)  # type: ignore[arg-type]
        side = image_size or 32
        return ImageCheck(n, {(side, side): n} if n else {}, {}, in_memory=True)
    limits = {"max_pixels": max_pixels, "max_aspect_ratio": max_aspect_ratio}
    sizes: collections.Counter = collections.Counter()
    modes: collections.Counter = collections.Counter()
    bad: List[str] = []
    for path in paths:
        try:
            size, mode = _one(path, decode, image_size, resize, limits)
        except DataSpecError as e:
            bad.append(str(e))
            continue
        sizes[size] += 1
        modes[mode] += 1
    if bad:
        more = f" (and {len(bad) - max_named} more)" if len(bad) > max_named else ""
        raise DataSpecError(
            f"{len(bad)} of {len(paths)} image files cannot be used; fix or remove them before "
            f"training: " + " | ".join(bad[:max_named]) + more
        )
    return ImageCheck(len(paths), dict(sizes), dict(modes))
