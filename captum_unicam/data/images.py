r"""Image files read as the user sees them, with limits checked from the header.

:func:`read_image` decodes one file into a float tensor ``(3, H, W)`` in [0, 1]:

- 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ...) are divided by 255;
  16-bit greyscale (``I;16`` and PNG's ``I``) by 65,535; float images (``F``, e.g. float
  TIFFs) are taken as they are when every value lies in [0, 1] and refused otherwise (a
  float image has no fixed range, so any rescaling would be a guess).
- Transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour) is composited
  over white, as a page shows the image.
- The EXIF orientation is applied, as image viewers do.
- Greyscale images become three equal channels.

Before any pixel is decoded, the header's size is checked against :data:`MAX_PIXELS`
(50 megapixels) and :data:`MAX_ASPECT_RATIO` (longer side / shorter side at most 20), so
a tiny file that declares a huge or extremely thin image (a decompression bomb) costs
nothing. :func:`image_header` reads only the header;
:func:`~captum_unicam.data.check_images` runs it over a whole data set before training.

Every failure is a :class:`~captum_unicam.errors.DataSpecError` that names the file.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
import torch

from captum_unicam.errors import DataSpecError

__all__ = [
    "MAX_PIXELS",
    "MAX_ASPECT_RATIO",
    "ImageHeader",
    "image_header",
    "read_image",
    "is_hidden",
]

#: Images with more pixels than this (width x height, from the header) are refused.
MAX_PIXELS = 50_000_000
#: Images whose longer side is more than this many times their shorter side are refused.
MAX_ASPECT_RATIO = 20.0

#: Modes decoded as 8-bit and converted by Pillow to RGB.
_EIGHT_BIT = ("1", "L", "P", "RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")
#: Modes with an alpha channel (or a transparent palette entry), composited over white.
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
#: EXIF orientations that swap width and height.
_TRANSPOSED = (5, 6, 7, 8)


def is_hidden(name: str) -> bool:
    """True for names that file browsers hide or that are no user data: any dot-name
    (``.DS_Store``, macOS's ``._*`` companions, ``.thumbnails``, ``.git``) and the
    ``__MACOSX`` folder of zip archives made on macOS."""
    return name.startswith(".") or name == "__MACOSX"


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says: ``width`` and ``height`` as shown (after the
    EXIF orientation), Pillow's ``mode`` and the file ``format``."""

    width: int
    height: int
    mode: str
    format: Optional[str]


def _damaged(path: str, err: BaseException) -> DataSpecError:
    return DataSpecError(
        f"image {path!r} is damaged or not an image ({type(err).__name__}: {err}); delete "
        "or replace the file"
    )


def _open(path: str, f):
    """Pillow's lazy open (header only), with the errors named by file."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(f)
    except Image.DecompressionBombError as e:
        raise DataSpecError(
            f"image {path!r} declares more pixels than this library reads ({e}); the limit "
            f"is {MAX_PIXELS:,} pixels: resize the image or remove it"
        ) from e
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as e:
        raise _damaged(path, e) from e


def _orientation(img) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001  (damaged EXIF: shown unrotated, as viewers do)
        return 1
    return value if isinstance(value, int) else 1


def _header(path: str, img, max_pixels: int, max_aspect_ratio: float) -> ImageHeader:
    w, h = img.size
    if w < 1 or h < 1:
        raise DataSpecError(f"image {path!r} has size {w} x {h}; delete or replace the file")
    if w * h > max_pixels:
        raise DataSpecError(
            f"image {path!r} is {w} x {h} = {w * h:,} pixels, above the limit of "
            f"{max_pixels:,} (max_pixels); resize it, remove it, or raise max_pixels"
        )
    ratio = max(w, h) / min(w, h)
    if ratio > max_aspect_ratio:
        raise DataSpecError(
            f"image {path!r} is {w} x {h}, an aspect ratio of {ratio:,.1f}, above the limit "
            f"of {max_aspect_ratio:g} (max_aspect_ratio); crop it, remove it, or raise "
            "max_aspect_ratio"
        )
    if _orientation(img) in _TRANSPOSED:
        w, h = h, w
    return ImageHeader(int(w), int(h), str(img.mode), img.format)


def _read_error(path: str, err: OSError) -> DataSpecError:
    if isinstance(err, PermissionError):
        return DataSpecError(
            f"cannot read image {path!r}: permission denied; fix its permissions "
            "(e.g. chmod a+r) or remove it"
        )
    return DataSpecError(f"cannot read image {path!r} ({err.strerror or err}); check the file")


def image_header(
    path: str, *, max_pixels: int = MAX_PIXELS, max_aspect_ratio: float = MAX_ASPECT_RATIO
) -> ImageHeader:
    r"""Reads only the header of an image file (no pixel is decoded) and checks its size.

    Args:

        path (str): the image file.
        max_pixels (int, optional): refuse images with more pixels. Default: MAX_PIXELS
        max_aspect_ratio (float, optional): refuse images whose longer side exceeds the
                    shorter one by more than this factor. Default: MAX_ASPECT_RATIO

    Returns:
        *ImageHeader*: width, height (as shown, after the EXIF orientation), mode, format.

    Raises:
        DataSpecError: the file is empty, unreadable, not an image, or above a limit;
        the message names the file.

    Examples::

        >>> image_header("cat/001.png")
        ImageHeader(width=32, height=32, mode='RGB', format='PNG')
    """
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise DataSpecError(f"image {path!r} is an empty (zero-byte) file; delete it")
            return _header(path, _open(path, f), max_pixels, max_aspect_ratio)
    except OSError as e:
        raise _read_error(path, e) from e


def _to_array(path: str, img) -> np.ndarray:
    """Pixels of a decoded image as float32 ``(H, W, 3)`` in [0, 1]."""
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        return rgba[..., :3] * alpha + (1.0 - alpha)  # over white
    if mode in _EIGHT_BIT:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if mode in _SIXTEEN_BIT or (mode == "I" and _sixteen_bit(img)):
        grey = np.asarray(img, dtype=np.float64) / 65535.0
    elif mode == "F":
        grey = np.asarray(img, dtype=np.float64)
        lo, hi = (float(grey.min()), float(grey.max())) if grey.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo and hi <= 1.0):
            raise DataSpecError(
                f"image {path!r} is a float image with values in [{lo:g}, {hi:g}]; only float "
                "images in [0, 1] are read (a float image has no fixed range): save it as an "
                "8- or 16-bit image, or scale it to [0, 1]"
            )
    else:
        raise DataSpecError(
            f"image {path!r} has the pixel mode {mode!r}, which has no fixed range (e.g. 32-bit "
            "integers); save it as an 8- or 16-bit image"
        )
    if grey.ndim != 2:
        raise DataSpecError(f"image {path!r}: unexpected {mode} pixel layout {grey.shape}")
    return np.repeat(grey.astype(np.float32)[..., None], 3, axis=2)


def _sixteen_bit(img) -> bool:
    """Mode ``I`` holds 16-bit samples for PNGs and 16-bit TIFFs."""
    if img.format == "PNG":
        return True
    tags = getattr(img, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return bits == 16


def read_image(
    path: str, *, max_pixels: int = MAX_PIXELS, max_aspect_ratio: float = MAX_ASPECT_RATIO
) -> torch.Tensor:
    r"""Decodes an image file as the user sees it (see the module docstring).

    The header is checked first (:func:`image_header`), so an image above a limit is
    refused before its pixels are decoded.

    Args:

        path (str): the image file.
        max_pixels (int, optional): Default: MAX_PIXELS
        max_aspect_ratio (float, optional): Default: MAX_ASPECT_RATIO

    Returns:
        *Tensor*: float32 ``(3, H, W)`` in [0, 1].

    Raises:
        DataSpecError: empty, unreadable, damaged, above a limit, or of a mode without a
        fixed range; the message names the file.

    Examples::

        >>> x = read_image("scans/0001.png")  # a 16-bit PNG: divided by 65535
        >>> x.shape, float(x.max()) <= 1.0
        (torch.Size([3, 512, 512]), True)
    """
    from PIL import ImageOps

    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise DataSpecError(f"image {path!r} is an empty (zero-byte) file; delete it")
            img = _open(path, f)
            _header(path, img, max_pixels, max_aspect_ratio)
            try:
                img.load()
                if _orientation(img) != 1:
                    img = ImageOps.exif_transpose(img)
            except (OSError, ValueError, SyntaxError, EOFError) as e:
                raise _damaged(path, e) from e
            array = _to_array(path, img)
    except OSError as e:
        raise _read_error(path, e) from e
    # clipped in numpy: a tiny torch op can cost more than the decode on a busy machine
    return torch.from_numpy(np.ascontiguousarray(np.clip(array, 0.0, 1.0).transpose(2, 0, 1)))
