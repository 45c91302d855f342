r"""Localisation of saliency maps against ground-truth object masks.

On data with object masks (the controlled dataset), :func:`localisation` measures
where each kind of map puts its mass: the mask energy fraction and the pointing game,
each with a percentile bootstrap interval over images from
:func:`captum_unicam.metrics.intervals.bootstrap_ci` (the interval of FSS and RS too).

A layer map has the resolution of its layer (4 x 4 at the last stage of a ResNet on 32 x 32
images), so a small mask cannot receive all of a map's mass, and a map's largest upsampled
pixel says little more than which cell it came from. The measures that respect the map's
resolution, one value per image (NaN where a map has no positive value):

- :func:`grid_masks`: the share of each cell of the map's grid that lies on the mask;
- :func:`grid_pointing_game`: 1 if the map's largest cell overlaps the mask;
- :func:`best_mask_energy`: the largest mask energy fraction any non-negative map on that
  grid can reach after bilinear upsampling;
- :func:`relative_mask_energy`: :func:`mask_energy` divided by it (1: no map at this
  resolution puts more of its mass on the mask).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from captum_unicam.errors import InputError
from captum_unicam.metrics.intervals import bootstrap_ci

__all__ = [
    "localisation",
    "interval",
    "mask_energy",
    "grid_masks",
    "grid_pointing_game",
    "best_mask_energy",
    "relative_mask_energy",
]


def _binary_masks(masks: Tensor) -> Tensor:
    """(N,H,W) float64 {0,1} masks from (N,H,W) or (N,1,H,W) bool / {0,1} masks."""
    masks = masks.detach().cpu()
    if masks.dim() == 4:
        if masks.shape[1] != 1:
            raise InputError(
                f"masks must have shape (N,H,W) or (N,1,H,W), got {tuple(masks.shape)}"
            )
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise InputError(f"masks must have shape (N,H,W) or (N,1,H,W), got {tuple(masks.shape)}")
    return (masks > 0.5).double() if masks.is_floating_point() else (masks != 0).double()


def _positive_maps(maps: Tensor, n: int) -> Tensor:
    """(N,h,w) float64 positive parts of (N,1,h,w) or (N,h,w) maps (NaN and Inf -> 0)."""
    m = maps.detach().cpu()
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.dim() != 3:
        raise InputError(f"maps must have shape (N,1,h,w) or (N,h,w), got {tuple(maps.shape)}")
    if m.shape[0] != n:
        raise InputError(f"got {m.shape[0]} maps for {n} masks; give one map per mask")
    m = torch.nan_to_num(m.double(), nan=0.0, posinf=0.0, neginf=0.0)
    return m.clamp_min(0.0)


def _upsample(maps: Tensor, size: Tuple[int, int]) -> Tensor:
    """(N,h,w) -> (N,H,W) bilinear upsampling, as ``LayerAttribution.interpolate``
    (``align_corners=False``), in float64."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _check_grid(grid_size: Sequence[int], size: Tuple[int, int]) -> Tuple[int, int]:
    g = tuple(int(v) for v in grid_size)
    if len(g) != 2 or min(g) < 1 or g[0] > size[0] or g[1] > size[1]:
        raise InputError(
            f"grid_size must be (h, w) with 1 <= h <= {size[0]} and 1 <= w <= {size[1]} "
            f"(the map's grid, no finer than the mask), got {tuple(grid_size)}"
        )
    return g


def mask_energy(maps: Tensor, masks: Tensor) -> Tensor:
    r"""Per image, the share of a map's positive mass on the mask after bilinear upsampling
    to the mask's size: sum(H * mask) / sum(H) with H = ReLU(upsampled map).

    Args:
        maps (Tensor): (N,1,h,w) maps.
        masks (Tensor): (N,H,W) or (N,1,H,W) masks (bool or {0,1}), H >= h, W >= w.

    Returns:
        Tensor: (N,) float64, NaN for a map with no positive value.

    Examples::

        >>> mask_energy(maps, ds.marker_masks)
    """
    mk = _binary_masks(masks)
    h = _upsample(_positive_maps(maps, mk.shape[0]), tuple(mk.shape[-2:])).clamp_min(0.0)
    total = h.flatten(1).sum(1)
    inside = (h * mk).flatten(1).sum(1)
    return torch.where(
        total > 0, inside / total.clamp_min(1e-300), torch.full_like(total, float("nan"))
    )


def grid_masks(masks: Tensor, grid_size: Sequence[int]) -> Tensor:
    r"""The mask seen at a map's resolution: per cell of an (h, w) grid, the share of the
    cell's pixels on the mask (adaptive average pooling; exact cells when H and W are
    multiples of h and w).

    Args:
        masks (Tensor): (N,H,W) or (N,1,H,W) masks (bool or {0,1}).
        grid_size (tuple of int): (h, w), the map's grid, e.g. ``maps.shape[-2:]``.

    Returns:
        Tensor: (N,h,w) float64 in [0, 1].

    Examples::

        >>> grid_masks(ds.marker_masks, (4, 4))  # an 8 x 8 px marker aligned to a cell: one 1
    """
    mk = _binary_masks(masks)
    g = _check_grid(grid_size, tuple(mk.shape[-2:]))
    return F.adaptive_avg_pool2d(mk[:, None], g)[:, 0]


def grid_pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    r"""Pointing game at the map's own resolution: 1 if the map's largest cell overlaps the
    mask (any of its pixels on the mask, :func:`grid_masks` > 0), else 0. Ties go to the
    first cell in row-major order.

    Args:
        maps (Tensor): (N,1,h,w) maps.
        masks (Tensor): (N,H,W) or (N,1,H,W) masks, H >= h, W >= w.

    Returns:
        Tensor: (N,) float64 in {0, 1}, NaN for a map with no positive value.

    Examples::

        >>> grid_pointing_game(residual_maps, ds.marker_masks).nanmean()
    """
    mk = _binary_masks(masks)
    m = _positive_maps(maps, mk.shape[0])
    cover = grid_masks(mk, tuple(m.shape[-2:])).flatten(1)
    peak = m.flatten(1).argmax(1)
    hit = (cover.gather(1, peak[:, None])[:, 0] > 0).double()
    empty = m.flatten(1).sum(1) <= 0
    return torch.where(empty, torch.full_like(hit, float("nan")), hit)


def best_mask_energy(masks: Tensor, grid_size: Sequence[int]) -> Tensor:
    r"""Per image, the largest :func:`mask_energy` that any non-negative map on an (h, w)
    grid reaches after bilinear upsampling to the mask's size.

    Upsampling U is linear with non-negative weights, so for a map m >= 0 the energy is
    (a . m) / (b . m) with a_k = sum(U(e_k) * mask) and b_k = sum(U(e_k)) for the one-hot
    map e_k of cell k: a ratio of two positive linear forms, largest at a one-hot map. The
    value is therefore max_k a_k / b_k, exactly.

    Args:
        masks (Tensor): (N,H,W) or (N,1,H,W) masks.
        grid_size (tuple of int): (h, w), the map's grid.

    Returns:
        Tensor: (N,) float64 in [0, 1]; 0 for an empty mask.

    Examples::

        >>> best_mask_energy(ds.marker_masks, (4, 4))
    """
    mk = _binary_masks(masks)
    size = tuple(mk.shape[-2:])
    h, w = _check_grid(grid_size, size)
    basis = _upsample(torch.eye(h * w, dtype=torch.float64).view(h * w, h, w), size).flatten(1)
    a = mk.flatten(1) @ basis.T  # (N, K): mass of each one-hot cell map on the mask
    return (a / basis.sum(1)).max(1).values


def relative_mask_energy(maps: Tensor, masks: Tensor) -> Tensor:
    r"""Per image, :func:`mask_energy` / :func:`best_mask_energy` at the map's grid: the
    share of the best mask energy a map of this resolution can reach (1 at best).

    Args:
        maps (Tensor): (N,1,h,w) maps.
        masks (Tensor): (N,H,W) or (N,1,H,W) masks, H >= h, W >= w.

    Returns:
        Tensor: (N,) float64 in [0, 1], NaN for a map with no positive value or an empty
        mask.

    Examples::

        >>> relative_mask_energy(residual_maps, ds.marker_masks).nanmean()
    """
    mk = _binary_masks(masks)
    e = mask_energy(maps, mk)
    best = best_mask_energy(mk, tuple(maps.shape[-2:]))
    return torch.where(best > 0, e / best.clamp_min(1e-300), torch.full_like(e, float("nan")))


def interval(
    values: Any, n_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95
) -> Dict[str, Any]:
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

    Each map is upsampled (bilinear, as ``LayerAttribution.interpolate``) to the mask size
    and its positive part H kept. For each image with a non-empty map:

    - **mask energy fraction** (``"energy"``) = sum(H * mask) / sum(H): the share of the
      map's mass on the object. A uniform map scores the mask's area fraction (``chance``).
    - **relative energy** (``"relative_energy"``): the energy fraction divided by the best
      one a map on the same grid can reach (:func:`best_mask_energy`), so a coarse map
      that puts all its mass on the mask's best cell scores 1.
    - **pointing game** (``"pointing"``) = 1 if the map's largest upsampled pixel lies on
      the object, else 0 (no tolerance margin; ties go to the first pixel in row-major
      order).
    - **grid pointing game** (``"pointing_grid"``) = 1 if the map's largest cell overlaps
      the object (:func:`grid_pointing_game`): the pointing game at the map's resolution.

    Maps with no positive value (possible after ReLU) have none of these; they are counted
    in ``n_empty`` and left out of the means. Intervals are percentile bootstrap
    intervals over images (``n_bootstrap`` resamples, seeded;
    :func:`~captum_unicam.metrics.intervals.bootstrap_ci`).

    Args:
        maps (dict of str -> Tensor): map kind -> (N,1,h,w) maps of the same N images.
        masks (Tensor): (N,H,W) or (N,1,H,W) object masks (bool or {0,1}).
        n_bootstrap (int, optional): bootstrap resamples. Default: 1000
        confidence (float, optional): interval level. Default: 0.95
        seed (int, optional): seed of the bootstrap. Default: 0

    Returns:
        dict: ``{"chance": {"energy": mean mask area, "pointing": mean mask area},
        "kinds": {kind: {"energy": {mean, low, high, n}, "relative_energy": {...},
        "pointing": {...}, "pointing_grid": {...}, "n_images": N, "n_empty": k}}}``.

    Examples::

        >>> loc = localisation({"distilled": d, "residual": r}, masks)
        >>> loc["kinds"]["distilled"]["energy"]["mean"]
    """
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    mk = _binary_masks(masks)
    n = mk.shape[0]
    area = mk.flatten(1).mean(1).numpy()
    out: Dict[str, Any] = {
        "chance": {
            "energy": float(area.mean()) if n else None,
            "pointing": float(area.mean()) if n else None,
        },
        "kinds": {},
    }
    for kind, m in maps.items():
        if m.shape[0] != n:
            raise InputError(f"maps[{kind!r}] has {m.shape[0]} maps for {n} masks")
        pos = _positive_maps(m, n)
        h = _upsample(pos, tuple(mk.shape[-2:])).clamp_min(0.0)
        ok = (pos.flatten(1).sum(1) > 0).numpy()
        peak = h.flatten(1).argmax(1)
        hit = mk.flatten(1).gather(1, peak[:, None])[:, 0].numpy()
        # bootstrap seeds: energy seed, pointing seed + 1 (as before), then the new measures
        measures = {
            "energy": (mask_energy(pos, mk).numpy(), 0),
            "pointing": (hit, 1),
            "relative_energy": (relative_mask_energy(pos, mk).numpy(), 2),
            "pointing_grid": (grid_pointing_game(pos, mk).numpy(), 3),
        }
        out["kinds"][kind] = {
            name: interval(v[ok & np.isfinite(v)], n_bootstrap, seed + j, confidence)
            for name, (v, j) in measures.items()
        }
        out["kinds"][kind].update({"n_images": int(n), "n_empty": int((~ok).sum())})
    return out
