r"""How an image of another size reaches the model's square ``size x size`` input.

An image already ``size x size`` is passed on unchanged under every rule (not resized,
not cropped). For images of another size the rule is an explicit choice:

======================== ============================================================
rule                     effect on an image of another size
======================== ============================================================
``"shorter-side-crop"``  (the default) resize so that the shorter side is ``size``
                         (aspect ratio kept), then cut the centre ``size x size``: the
                         longer side loses its borders
``"exact"``              resize to ``size x size``: nothing is cut, the aspect ratio
                         changes (non-square images are stretched)
``"pad"``                resize so that the longer side is ``size`` (aspect ratio kept),
                         then pad the shorter side equally on both ends with black:
                         nothing is cut or stretched
``"none"``               refuse it (:class:`~captum_unicam.errors.DataSpecError` naming
                         the file and its size)
======================== ============================================================

Resizing is bilinear with antialiasing, on the float image in [0, 1].
"""

from __future__ import annotations

from typing import Optional

import torch

from captum_unicam.errors import DataSpecError

__all__ = ["RESIZE_RULES", "DEFAULT_RESIZE", "check_resize", "resize_image"]

#: The resize rules (see the module docstring).
RESIZE_RULES = ("shorter-side-crop", "exact", "pad", "none")
#: The rule used when none is given.
DEFAULT_RESIZE = "shorter-side-crop"


def check_resize(resize: str) -> str:
    """``resize`` if it names a rule, else a DataSpecError listing the rules."""
    if resize not in RESIZE_RULES:
        raise DataSpecError(f"resize must be one of {', '.join(RESIZE_RULES)}, got {resize!r}")
    return resize


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    from torchvision.transforms import functional as TF

    return TF.resize(x, [h, w], antialias=True).clamp_(0.0, 1.0)


def resize_image(
    x: torch.Tensor, size: int, resize: str = DEFAULT_RESIZE, path: Optional[str] = None
) -> torch.Tensor:
    r"""Brings an image ``(C, H, W)`` to ``(C, size, size)`` by the rule ``resize``.

    Args:

        x (Tensor): float image ``(C, H, W)`` in [0, 1]; not changed.
        size (int): side of the output.
        resize (str, optional): one of :data:`RESIZE_RULES`. Default: "shorter-side-crop"
        path (str, optional): the image's file, named in the error of ``"none"``.

    Returns:
        *Tensor*: ``x`` itself when it is already ``size x size``; else a new
        ``(C, size, size)`` tensor.

    Raises:
        DataSpecError: ``resize="none"`` and the image has another size.

    Examples::

        >>> resize_image(torch.rand(3, 40, 60), 32, "pad").shape
        torch.Size([3, 32, 32])
    """
    check_resize(resize)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if (h, w) == (size, size):
        return x
    if resize == "none":
        where = f"image {path!r}" if path else "an image"
        raise DataSpecError(
            f"{where} is {w} x {h} pixels, not {size} x {size}, and resize='none' refuses "
            "images of another size; pass resize='shorter-side-crop', 'exact' or 'pad' "
            "(--resize on the command line), or resize the files"
        )
    if resize == "exact":
        return _resize(x, size, size)
    if resize == "shorter-side-crop":
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        y = _resize(x, nh, nw)
        top, left = (nh - size) // 2, (nw - size) // 2
        return y[..., top : top + size, left : left + size].contiguous()
    scale = size / max(h, w)  # "pad"
    nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    y = _resize(x, nh, nw)
    out = x.new_zeros(x.shape[:-2] + (size, size))
    top, left = (size - nh) // 2, (size - nw) // 2
    out[..., top : top + nh, left : left + nw] = y
    return out
