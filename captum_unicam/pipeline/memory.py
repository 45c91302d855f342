r"""Whether an image size can fit in memory, checked before any data are loaded.

A run keeps, for one batch, the activations of every layer of both models and their
gradients (Grad-CAM and UniCAM are gradients; training backpropagates). Their size grows
with the square of the image side, so an ``image_size`` of a few thousand pixels asks for
hundreds of gigabytes and the kernel kills the run after minutes of work. The estimate is
one documented formula:

.. math::

    \text{bytes} = \text{batch size} \times 3 \times \text{image size}^2 \times 4
                   \times \text{ACTIVATION\_FACTOR}

(the float32 images of one batch, times :data:`ACTIVATION_FACTOR` = 100 for the
activations and gradients that the models keep: the stem of a ResNet alone holds 64
channels at half the resolution, about 5 times the input, several times per block). It is
a rough order of magnitude, meant to refuse sizes that cannot fit, not to predict use.
:func:`check_image_memory` compares it with :func:`available_memory`.

Examples::

    >>> estimated_bytes(224, 32)
    1926758400
    >>> check_image_memory(5000, 32)          # doctest: +SKIP
    InputError: image_size= 5000 needs about 960 GB ...
"""

from __future__ import annotations

import os
from typing import Optional

from captum_unicam.errors import InputError

__all__ = ["ACTIVATION_FACTOR", "available_memory", "estimated_bytes", "check_image_memory"]

#: Activations and gradients kept per input value of one batch (see the module's formula).
ACTIVATION_FACTOR = 100


def available_memory() -> Optional[int]:
    r"""Bytes of memory available to a new allocation: psutil's ``available`` when psutil
    is installed, else ``MemAvailable`` of ``/proc/meminfo``, else free pages times the
    page size (``os.sysconf``); None when none of them can be read."""
    try:
        import psutil  # optional: not a dependency of the package
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def estimated_bytes(image_size: int, batch_size: int) -> int:
    r"""The module's formula: ``batch_size * 3 * image_size**2 * 4 * ACTIVATION_FACTOR``."""
    return int(batch_size) * 3 * int(image_size) ** 2 * 4 * ACTIVATION_FACTOR


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB"


def check_image_memory(image_size: Optional[int], batch_size: int, *, force: bool = False) -> None:
    r"""Refuses an ``image_size`` whose estimated memory (:func:`estimated_bytes`) exceeds
    :func:`available_memory`, unless ``force``; nothing to check for ``image_size=None``
    (the size recorded in the checkpoints) or when the available memory is unknown.

    Raises:
        InputError: one line with the estimate, the memory available and the fixes.
    """
    if image_size is None or force:
        return
    need, have = estimated_bytes(image_size, batch_size), available_memory()
    if have is None or need <= have:
        return
    raise InputError(
        f"image_size= {image_size} needs about {_gb(need)} of memory ({batch_size} images of "
        f"3 x {image_size} x {image_size} float32 values x {ACTIVATION_FACTOR} for the "
        f"activations and gradients of the models) but {_gb(have)} are available; pass a "
        "smaller image_size= or batch_size=, or force=True to try anyway"
    )
