r"""Localisation of saliency maps against ground-truth object masks.

On data with object masks (the controlled dataset), :func:`localisation` measures
where each kind of map puts its mass: the mask energy fraction and the pointing game,
each with a percentile bootstrap interval over images from
:func:`captum_unicam.metrics.intervals.bootstrap_ci` (the interval of FSS and RS too).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np
import torch
from torch import Tensor

from captum_unicam.errors import InputError
from captum_unicam.metrics.intervals import bootstrap_ci

__all__ = ["localisation", "interval"]


def interval(values: Any, n_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95) -> Dict[str, Any]:
    r"""``{"mean", "low", "high", "n"}`` of ``values``: their mean and its percentile
    bootstrap interval (:func:`~captum_unicam.metrics.intervals.bootstrap_ci`); None for no
    values, the mean itself for ``n_bootstrap <= 0``. The one interval of localisation
    and of the cued evaluation's per-batch scores.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    n = int(values.size)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = float(values.mean())
    if n_bootstrap <= 0:
        return {"mean": mean, "low": mean, "high": mean, "n": n}
    low, high = bootstrap_ci(values.astype(np.float64), n_bootstrap, seed, confidence)
    return {"mean": mean, "low": low, "high": high, "n": n}


def localisation(
    maps: Mapping[str, Tensor],
    masks: Tensor,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Dict[str, Any]:
    r"""Where maps put their mass, against ground-truth object masks.

    Each map is upsampled (bilinear, ``LayerAttribution.interpolate``) to the mask size
    and its positive part H kept. For each image with a non-empty map:

    - **mask energy fraction** = sum(H * mask) / sum(H): the share of the map's mass on
      the object. A uniform map scores the mask's area fraction (``chance``).
    - **pointing game** = 1 if the map's largest pixel lies on the object, else 0
      (no tolerance margin; ties go to the first pixel in row-major order).

    Maps with no positive value (possible after ReLU) have neither; they are counted
    in ``n_empty`` and left out of the means. Intervals are percentile bootstrap
    intervals over images (``n_bootstrap`` resamples, seeded; :func:`~captum_unicam.metrics.intervals.bootstrap_ci`).

    Args:
        maps (dict of str -> Tensor): map kind -> (N,1,h,w) maps of the same N images.
        masks (Tensor): (N,H,W) or (N,1,H,W) object masks (bool or {0,1}).
        n_bootstrap (int, optional): bootstrap resamples. Default: 1000
        confidence (float, optional): interval level. Default: 0.95
        seed (int, optional): seed of the bootstrap. Default: 0

    Returns:
        dict: ``{"chance": {"energy": mean mask area, "pointing": mean mask area},
        "kinds": {kind: {"energy": {mean, low, high, n}, "pointing": {...},
        "n_images": N, "n_empty": k}}}``.

    Examples::

        >>> loc = localisation({"distilled": d, "residual": r}, masks)
        >>> loc["kinds"]["distilled"]["energy"]["mean"]
    """
    from captum_unicam.viz import upsample_maps

    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    masks = masks.detach().cpu()
    if masks.dim() == 4:
        if masks.shape[1] != 1:
            raise InputError(f"masks must have shape (N,H,W) or (N,1,H,W), got {tuple(masks.shape)}")
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise InputError(f"masks must have shape (N,H,W) or (N,1,H,W), got {tuple(masks.shape)}")
    mk = (masks > 0.5).double() if masks.is_floating_point() else (masks != 0).double()
    n = mk.shape[0]
    area = mk.flatten(1).mean(1).numpy()
    out: Dict[str, Any] = {
        "chance": {"energy": float(area.mean()) if n else None,
                   "pointing": float(area.mean()) if n else None},
        "kinds": {},
    }
    for kind, m in maps.items():
        if m.shape[0] != n:
            raise InputError(f"maps[{kind!r}] has {m.shape[0]} maps for {n} masks")
        h = upsample_maps(m, mk.shape[-2:])[:, 0].double()
        h = torch.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
        total = h.flatten(1).sum(1)
        ok = total > 0
        energy = ((h * mk).flatten(1).sum(1) / total.clamp_min(1e-300))[ok].numpy()
        peak = h.flatten(1).argmax(1)
        hit = mk.flatten(1).gather(1, peak[:, None])[:, 0][ok].numpy()
        out["kinds"][kind] = {
            "energy": interval(energy, n_bootstrap, seed, confidence),
            "pointing": interval(hit, n_bootstrap, seed + 1, confidence),
            "n_images": int(n),
            "n_empty": int((~ok).sum()),
        }
    return out
