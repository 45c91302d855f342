r"""The controlled dataset: shapes on cluttered backgrounds, with known object masks.

Each image holds one foreground **object** whose shape is the class (circle, square,
triangle, ...), drawn at a random position, size, rotation and colour, on top of a
class-independent **background**: a tinted colour, clutter (soft blobs and thin line
segments that are none of the class shapes) and pixel noise. The object's pixel mask is
returned with every item, so one can measure whether an explanation falls on the object.

The **spurious cue** is the background tint. The palette has one tint per class; with
probability ``cue_strength`` an image's tint is the tint of its class, otherwise a tint
drawn uniformly from the palette. So ``cue_strength=0`` makes the tint independent of the
class, ``cue_strength=1`` makes it a perfect (spurious) predictor, and in general
``P(tint == label) = cue_strength + (1 - cue_strength) / num_classes``. A model trained on
cued data can take the shortcut of reading the tint; on cue-free data it then fails.

The **marker** (``marker_strength > 0``) is a second, localised cue with known pixels:
with probability ``marker_strength`` an image carries a square (``marker_size`` pixels a
side, by default :func:`marker_side`) in the colour of its class (one saturated colour per
class, :attr:`ControlledShapes.marker_palette`) at a position drawn independently of the
object, drawn over everything but the pixel noise.
Its pixels are returned in :attr:`ControlledShapes.marker_masks` (and removed from the
object mask where the two overlap, so the masks are disjoint). Unlike the tint, the
marker says where a model that reads it should look: a model trained on marked images
can learn it as a feature the others lack. ``marker_strength=0`` (the default) draws no
marker and gives exactly the images of a dataset without this option; the marker's
position and presence come from their own random stream, so they do not change the
rest of the image.

Everything is generated from the seed, with no download and no file: item ``i`` comes
from a random generator seeded by ``(seed, split, i)``, so it is the same in any subset,
order or dataset size, and generation is vectorised over chunks of items, which are
cached as they are first used.
"""

from __future__ import annotations

import colorsys
import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from captum_unicam.errors import InputError

__all__ = ["ControlledShapes", "SHAPES", "SPLITS", "marker_side"]

#: Shape classes, in label order; a dataset with ``num_classes=k`` uses the first k.
SHAPES: Tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "star",
    "tee",
    "crescent",
)

#: Splits and their generator stream: the same seed gives disjoint, independent splits.
SPLITS: Dict[str, int] = {"train": 0, "test": 1, "val": 2, "transfer": 3}

_CHUNK = 512  # items generated (vectorised) and cached together


def _marker_palette(k: int) -> Tensor:
    """k marker colours: evenly spaced hues, fully saturated and bright (value 1),
    offset by half a step from the background tints' hues."""
    rgb = [colorsys.hsv_to_rgb((j / k + 0.5 / k + 0.02) % 1.0, 1.0, 1.0) for j in range(k)]
    return torch.tensor(rgb, dtype=torch.float32)


def marker_side(image_size: int) -> int:
    """Side in pixels of the square marker: ``max(2, round(image_size / 8))`` (4 at 32)."""
    return max(2, int(math.floor(image_size / 8 + 0.5)))


def _check_marker(strength: object, size: object, image_size: int) -> None:
    """Refuses a marker_strength outside [0, 1] or a marker_size outside 1..image_size."""
    if (
        isinstance(strength, bool)
        or not isinstance(strength, (int, float))
        or not 0.0 <= strength <= 1.0
    ):
        raise InputError(
            f"marker_strength must be a number in [0, 1] (the probability that an image "
            f"carries the class-coloured marker), got {strength!r}"
        )
    if size is not None and (
        isinstance(size, bool)
        or not isinstance(size, (int, np.integer))
        or not 1 <= size <= image_size
    ):
        raise InputError(
            f"marker_size must be an int from 1 to image_size ({image_size}) pixels, or None "
            f"for the default side {marker_side(image_size)}, got {size!r}"
        )


def _palette(k: int) -> Tensor:
    """k background tints: evenly spaced hues, muted and dark (value 0.42)."""
    rgb = [colorsys.hsv_to_rgb((j / k + 0.02) % 1.0, 0.6, 0.42) for j in range(k)]
    return torch.tensor(rgb, dtype=torch.float32)


class ControlledShapes(torch.utils.data.Dataset):
    r"""Shapes on cluttered, optionally class-tinted backgrounds, with object masks.

    Items are ``(image, label, mask)``: ``image`` float32 ``(3, H, W)`` in [0, 1],
    ``label`` an int in ``range(num_classes)``, ``mask`` float32 ``(1, H, W)`` equal to 1
    on the object's pixels and 0 elsewhere. Labels are exactly balanced over every
    consecutive block of ``num_classes`` indices (a random permutation of the classes
    in each block).

    Args:

        size (int, optional): Number of items. Default: 1000
        seed (int, optional): Non-negative seed; the whole dataset is a function of
                    ``(seed, split)``. Default: 0
        image_size (int, optional): Height and width in pixels (at least 16); object,
                    clutter and line sizes scale with it. Default: 32
        num_classes (int, optional): Number of shape classes, 2 to 8 (see
                    :data:`SHAPES`). Default: 4
        cue_strength (float, optional): Probability in [0, 1] that the background tint
                    is set by the class; otherwise it is drawn independently of the
                    class. Default: 0.0
        clutter (int, optional): Distractors per image (blobs and line segments drawn
                    under the object). Default: 4
        noise (float, optional): Standard deviation of the Gaussian pixel noise added
                    to every pixel (then clipped to [0, 1]). Default: 0.04
        split (str, optional): ``"train"``, ``"test"``, ``"val"`` or ``"transfer"``;
                    each is an independent stream of items for the same seed.
                    Default: "train"
        marker_strength (float, optional): Probability in [0, 1] that an image carries
                    the class-coloured marker (a square of :func:`marker_side` pixels
                    at a random position, independent of the object). 0 draws none.
                    Default: 0.0
        marker_size (int, optional): Side of the marker in pixels, 1 to ``image_size``
                    (a bigger marker is easier to learn and covers whole cells of a
                    coarse map, e.g. 8 pixels = one cell of a 4 x 4 map at 32 pixels).
                    Default: None (:func:`marker_side` of ``image_size``)

    Attributes:

        classes (list[str]): Class names, ``SHAPES[:num_classes]``.
        images (Tensor): All images, ``(size, 3, H, W)`` (generated on first use,
                    then cached: the same tensor every time, so do not modify it in
                    place; items of ``ds[i]`` are copies).
        labels (Tensor): All labels, int64 ``(size,)``.
        masks (Tensor): All masks, ``(size, 1, H, W)``.
        tints (Tensor): Index of each image's background tint in :attr:`palette`.
        object_colors, background_colors (Tensor): ``(size, 3)`` colours before
                    clutter and noise.
        geometry (Tensor): ``(size, 4)`` object centre x, y, radius, angle.
        palette (Tensor): The ``(num_classes, 3)`` tint colours.
        marker_masks (Tensor): ``(size, 1, H, W)``, 1 on the marker's pixels (all 0
                    for images without a marker, and always with ``marker_strength=0``).
        has_marker (Tensor): bool ``(size,)``, whether each image carries a marker.
        marker_palette (Tensor): The ``(num_classes, 3)`` marker colours.

    Examples::

        >>> ds = ControlledShapes(500, seed=1, cue_strength=0.9)
        >>> image, label, mask = ds[0]
        >>> ds.classes
        ['circle', 'square', 'triangle', 'cross']
        >>> loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True)
        >>> marked = ControlledShapes(100, seed=1, marker_strength=1.0)
        >>> marked.marker_masks.shape
        torch.Size([100, 1, 32, 32])
    """

    def __init__(
        self,
        size: int = 1000,
        *,
        seed: int = 0,
        image_size: int = 32,
        num_classes: int = 4,
        cue_strength: float = 0.0,
        clutter: int = 4,
        noise: float = 0.04,
        split: str = "train",
        marker_strength: float = 0.0,
        marker_size: Optional[int] = None,
    ) -> None:
        def is_int(v: object) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        if not is_int(size) or size < 0:
            raise ValueError(f"size must be a non-negative int, got {size!r}")
        if not is_int(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if not is_int(image_size) or image_size < 16:
            raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")
        if not is_int(num_classes) or not 2 <= num_classes <= len(SHAPES):
            raise ValueError(
                f"num_classes must be an int from 2 to {len(SHAPES)}, got {num_classes!r}"
            )
        if not isinstance(cue_strength, (int, float)) or not 0.0 <= cue_strength <= 1.0:
            raise ValueError(f"cue_strength must be in [0, 1], got {cue_strength!r}")
        if not is_int(clutter) or clutter < 0:
            raise ValueError(f"clutter must be a non-negative int, got {clutter!r}")
        if not isinstance(noise, (int, float)) or not 0.0 <= noise < math.inf:
            raise ValueError(f"noise must be a non-negative float, got {noise!r}")
        _check_marker(marker_strength, marker_size, image_size)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.size = int(size)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.num_classes = int(num_classes)
        self.cue_strength = float(cue_strength)
        self.clutter = int(clutter)
        self.noise = float(noise)
        self.split = split
        self.marker_strength = float(marker_strength)
        self.marker_size = marker_side(self.image_size) if marker_size is None else int(marker_size)
        self.marker_palette: Tensor = _marker_palette(self.num_classes)
        self.classes: List[str] = list(SHAPES[: self.num_classes])
        self.class_to_idx: Dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        self.palette: Tensor = _palette(self.num_classes)
        self._chunks: Dict[int, Dict[str, Tensor]] = {}
        self._full: Dict[str, Tensor] = {}
        self._labels: Optional[Tensor] = None

    # -- Dataset protocol ---------------------------------------------------

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Tuple[Tensor, int, Tensor]:
        if isinstance(i, torch.Tensor):
            i = int(i)
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        if i < 0:
            i += self.size
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for a dataset of {self.size} items")
        c, j = divmod(int(i), _CHUNK)
        chunk = self._chunk(c)
        return chunk["images"][j].clone(), int(chunk["labels"][j]), chunk["masks"][j].clone()

    def __repr__(self) -> str:
        return (
            f"ControlledShapes(size={self.size}, seed={self.seed}, image_size="
            f"{self.image_size}, num_classes={self.num_classes}, cue_strength="
            f"{self.cue_strength}, clutter={self.clutter}, noise={self.noise}, "
            f"split={self.split!r}"
            + (
                f", marker_strength={self.marker_strength}, marker_size={self.marker_size}"
                if self.marker_strength
                else ""
            )
            + ")"
        )

    # -- whole-dataset tensors ----------------------------------------------

    def _all(self, key: str) -> Tensor:
        # concatenated once; the chunks then hold views of it, so memory is not doubled
        if key not in self._full:
            n_chunks = -(-self.size // _CHUNK)
            parts = [self._chunk(c)[key] for c in range(n_chunks)]
            if not parts:
                return self._empty(key)
            full = torch.cat(parts)
            for c in range(n_chunks):
                self._chunks[c][key] = full[c * _CHUNK : (c + 1) * _CHUNK]
            self._full[key] = full
        return self._full[key]

    def _empty(self, key: str) -> Tensor:
        s = self.image_size
        shapes = {
            "images": (0, 3, s, s),
            "masks": (0, 1, s, s),
            "labels": (0,),
            "tints": (0,),
            "object_colors": (0, 3),
            "background_colors": (0, 3),
            "geometry": (0, 4),
            "marker_masks": (0, 1, s, s),
            "has_marker": (0,),
        }
        dtype = torch.int64 if key in ("labels", "tints") else torch.float32
        if key == "has_marker":
            dtype = torch.bool
        return torch.zeros(shapes[key], dtype=dtype)

    @property
    def images(self) -> Tensor:
        return self._all("images")

    @property
    def masks(self) -> Tensor:
        return self._all("masks")

    @property
    def marker_masks(self) -> Tensor:
        """``(size, 1, H, W)`` float masks of the marker's pixels (zero without a marker)."""
        return self._all("marker_masks")

    @property
    def has_marker(self) -> Tensor:
        """bool ``(size,)``: whether each image carries the class-coloured marker."""
        return self._all("has_marker")

    @property
    def tints(self) -> Tensor:
        return self._all("tints")

    @property
    def object_colors(self) -> Tensor:
        """``(size, 3)`` RGB colour of each object (before noise)."""
        return self._all("object_colors")

    @property
    def background_colors(self) -> Tensor:
        """``(size, 3)`` RGB background colour of each image (tint + jitter, before
        clutter and noise)."""
        return self._all("background_colors")

    @property
    def geometry(self) -> Tensor:
        """``(size, 4)`` object centre x, centre y (pixels, from the top-left corner),
        radius (pixels) and rotation angle (radians) of each object."""
        return self._all("geometry")

    @property
    def labels(self) -> Tensor:
        if self._labels is None:
            self._labels = self._make_labels(np.arange(self.size))
        return self._labels

    @property
    def targets(self) -> List[int]:
        """Labels as a list, like torchvision datasets."""
        return self.labels.tolist()

    # -- generation ---------------------------------------------------------

    def _keys(self, stream: int, idx: np.ndarray) -> np.ndarray:
        """64-bit keys of (seed, split, stream, i) for every i of idx (a hash chain)."""
        base = _mix64(
            _mix64(_mix64(np.array([self.seed], np.uint64)) ^ np.uint64(SPLITS[self.split]))
            ^ np.uint64(stream)
        )
        return _mix64(base ^ np.asarray(idx, dtype=np.uint64))

    def _make_labels(self, idx: np.ndarray) -> Tensor:
        # block b = i // k holds each class once, in the order of a hashed permutation
        k = self.num_classes
        idx = np.asarray(idx, dtype=np.int64)
        blocks = np.unique(idx // k)
        keys = self._keys(1, blocks)[:, None] ^ np.arange(1, k + 1, dtype=np.uint64)
        perms = np.argsort(_mix64(keys), axis=1, kind="stable")
        row = np.searchsorted(blocks, idx // k)
        return torch.from_numpy(perms[row, idx % k].astype(np.int64))

    def _chunk(self, c: int) -> Dict[str, Tensor]:
        if c not in self._chunks:
            idx = np.arange(c * _CHUNK, min((c + 1) * _CHUNK, self.size))
            # small tensor ops: one thread is several times faster than two on a
            # busy machine, and the result does not depend on it
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                self._chunks[c] = self._generate(idx)
            finally:
                torch.set_num_threads(threads)
        return self._chunks[c]

    def _generate(self, idx: np.ndarray) -> Dict[str, Tensor]:
        n, k, s, m = len(idx), self.num_classes, self.image_size, self.clutter
        labels = self._make_labels(idx).numpy()
        # ---- per-item parameters, each from the item's own generator ----------
        # item i draws 12 + 10 * clutter uniforms, then its noise, from a torch
        # generator seeded with the key of (seed, split, i)
        n_par = 12 + 10 * m
        par = torch.empty(n, n_par, dtype=torch.float64)
        noise = torch.zeros(n, 3, s, s)
        g = torch.Generator()
        for t, key in enumerate(self._keys(0, idx).tolist()):
            g.manual_seed(key)
            par[t] = torch.rand(n_par, generator=g, dtype=torch.float64)
            if self.noise > 0:
                noise[t] = torch.randn(3, s, s, generator=g)
        par = par.numpy()
        cue = par[:, 0] < self.cue_strength
        tint = np.where(cue, labels, np.minimum((par[:, 1] * k).astype(np.int64), k - 1))
        bg_jit = (par[:, 2:5] - 0.5) * 0.08
        r = (0.2 + 0.14 * par[:, 5]) * s
        obj = np.stack(
            [r + (s - 2 * r) * par[:, 6], r + (s - 2 * r) * par[:, 7], r, 2 * math.pi * par[:, 8]],
            axis=1,
        )
        obj_hsv = np.stack([par[:, 9], 0.35 + 0.65 * par[:, 10], 0.78 + 0.22 * par[:, 11]], axis=1)
        cl = par[:, 12:].reshape(n, m, 10)
        cl_type = (cl[..., 0] < 0.5).astype(np.int64)  # 1: line, 0: blob
        cl_geom = cl[..., 1:6] * s  # blob: x, y, -, -, sigma ; line: x0, y0, x1, y1
        cl_geom[..., 4] = (0.03 + 0.05 * cl[..., 5]) * s  # blob sigma
        cl_rgb = cl[..., 6:9]
        cl_alpha = 0.5 + 0.4 * cl[..., 9]
        # ---- rendering, vectorised over the chunk ------------------------------
        f = torch.float32
        pal = self.palette
        bg = (pal[torch.from_numpy(tint)] + torch.from_numpy(bg_jit).to(f)).clamp(0, 1)
        rgb = [colorsys.hsv_to_rgb(*hsv) for hsv in obj_hsv]
        obj_rgb = torch.tensor(rgb, dtype=f).reshape(n, 3)
        coords = torch.arange(s, dtype=f) + 0.5
        ys, xs = coords.view(1, s, 1), coords.view(1, 1, s)
        img = bg.view(n, 3, 1, 1).expand(n, 3, s, s).clone()
        if m:
            alpha = self._clutter_alpha(
                torch.from_numpy(cl_geom).to(f).view(n * m, 5),
                torch.from_numpy(cl_type).view(n * m).bool(),
                xs,
                ys,
            ).view(n, m, s, s)
            alpha = alpha * torch.from_numpy(cl_alpha).to(f)[..., None, None]
            col = torch.from_numpy(cl_rgb).to(f)
            for j in range(m):
                a = alpha[:, j].unsqueeze(1)
                img = img * (1 - a) + col[:, j, :, None, None] * a
        mask = self._shape_masks(torch.from_numpy(obj).to(f), labels, xs, ys)
        img = torch.where(mask.bool(), obj_rgb.view(n, 3, 1, 1), img)
        marker = torch.zeros(n, 1, s, s)
        has_marker = torch.zeros(n, dtype=torch.bool)
        if self.marker_strength > 0:
            marker, has_marker = self._marker_masks(idx)
            colour = self.marker_palette[torch.from_numpy(labels)].view(n, 3, 1, 1)
            img = torch.where(marker.bool(), colour, img)
            mask = mask * (1 - marker)
        if self.noise > 0:
            img = img + self.noise * noise
        return {
            "images": img.clamp_(0.0, 1.0).contiguous(),
            "masks": mask,
            "labels": torch.from_numpy(labels),
            "tints": torch.from_numpy(tint),
            "object_colors": obj_rgb,
            "background_colors": bg,
            "geometry": torch.from_numpy(obj).to(f),
            "marker_masks": marker,
            "has_marker": has_marker,
        }

    def _marker_masks(self, idx: np.ndarray) -> Tuple[Tensor, Tensor]:
        """(n, 1, s, s) marker masks and (n,) presence of items idx. Presence and the
        top-left corner come from three uniforms of the item's own stream 2, so they do
        not depend on anything else in the image."""
        s, side = self.image_size, self.marker_size
        keys = self._keys(2, idx)
        u = [
            (_mix64(keys ^ np.uint64(j)) >> np.uint64(11)).astype(np.float64) * 2.0**-53
            for j in (1, 2, 3)
        ]
        present = torch.from_numpy(u[0] < self.marker_strength)
        x0 = torch.from_numpy(np.floor(u[1] * (s - side + 1)).astype(np.int64)).view(-1, 1, 1)
        y0 = torch.from_numpy(np.floor(u[2] * (s - side + 1)).astype(np.int64)).view(-1, 1, 1)
        pix = torch.arange(s)
        cols = (pix.view(1, 1, s) >= x0) & (pix.view(1, 1, s) < x0 + side)
        rows = (pix.view(1, s, 1) >= y0) & (pix.view(1, s, 1) < y0 + side)
        inside = cols & rows & present.view(-1, 1, 1)
        return inside.unsqueeze(1).to(torch.float32), present

    def _clutter_alpha(self, g: Tensor, is_line: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
        """(k, s, s) opacity of k distractors: Gaussian blobs around (x, y) of width
        sigma, or antialiased line segments (1 pixel wide at 32 pixels, at most
        0.6 * image_size long) from (x0, y0) towards (x1, y1)."""
        s = self.image_size
        out = torch.empty(g.shape[0], s, s)
        blob, line = (~is_line).nonzero().squeeze(1), is_line.nonzero().squeeze(1)
        if blob.numel():
            b = g[blob]
            d2 = (xs - b[:, 0, None, None]) ** 2 + (ys - b[:, 1, None, None]) ** 2
            out[blob] = torch.exp(d2 / (-2 * b[:, 4, None, None] ** 2))
        if line.numel():
            q = g[line]
            p0, vec = q[:, 0:2], q[:, 2:4] - q[:, 0:2]
            length = vec.norm(dim=1, keepdim=True).clamp_min(1e-6)
            vec = vec * (length.clamp(max=0.6 * s) / length)
            vx, vy = vec[:, 0, None, None], vec[:, 1, None, None]
            px, py = xs - p0[:, 0, None, None], ys - p0[:, 1, None, None]
            t = ((px * vx + py * vy) / (vx * vx + vy * vy).clamp_min(1e-6)).clamp_(0, 1)
            dist = torch.sqrt((px - t * vx) ** 2 + (py - t * vy) ** 2)
            out[line] = (1.5 * s / 32 - dist).clamp_(0, 1)  # half-width 0.5, 1 px ramp
        return out

    @staticmethod
    def _shape_masks(obj: Tensor, labels: np.ndarray, xs: Tensor, ys: Tensor) -> Tensor:
        """(n, 1, s, s) masks of each item's shape in its own rotated, scaled frame."""
        n, s = obj.shape[0], xs.shape[-1]
        out = torch.zeros(n, s, s, dtype=torch.bool)
        lab = torch.from_numpy(labels)
        for c, name in enumerate(SHAPES):
            sel = (lab == c).nonzero().squeeze(1)
            if not sel.numel():
                continue
            cx, cy, r, ang = (obj[sel, j].view(-1, 1, 1) for j in range(4))
            dx, dy = (xs - cx) / r, (ys - cy) / r
            cos, sin = torch.cos(ang), torch.sin(ang)
            u = cos * dx + sin * dy
            v = cos * dy - sin * dx
            out[sel] = _SHAPE_FUNCS[name](u, v, torch.sqrt(u * u + v * v))
        return out.unsqueeze(1).to(torch.float32)


# Shapes in a unit frame: the object's radius is 1 (each shape fits in the unit disc,
# the triangle up to 1.1), areas between about 1.3 and 2.3.


def _circle(u: Tensor, v: Tensor, rho: Tensor) -> Tensor:
    return rho <= 0.85


def _square(u: Tensor, v: Tensor, rho: Tensor) -> Tensor:
    return torch.maximum(u.abs(), v.abs()) <= 0.72


def _triangle(u: Tensor, v: Tensor, rho: Tensor) -> Tensor:
    inside = torch.ones_like(u, dtype=torch.bool)
    for j in range(3):
        phi = math.pi / 2 + 2 * math.pi * j / 3
        inside &= u * math.cos(phi) + v * math.sin(phi) <= 0.55
    return inside


def _cross(u: Tensor, v: Tensor, rho: Tensor) -> Tensor:
    au, av = u.abs(), v.abs()
    return ((au <= 0.28) & (av <= 0.95)) | ((av <= 0.28) & (au <= 0.95))


def _ring(u: Tensor, v: Tensor, rho: Tensor) -> Tensor:
    return (rho <= 0.95) & (rho >= 0.52)


def _star(u: Tensor, v: Tensor, rho: Tensor) -> Tensor:
    # five-pointed star, outer radius 1, inner radius 0.45: fold the angle into the
    # wedge [0, pi/5] between a tip and the next inner corner, then test the edge
    wedge = 2 * math.pi / 5
    phi = torch.remainder(torch.atan2(v, u), wedge)
    phi = torch.where(phi > wedge / 2, wedge - phi, phi)
    qx, qy = rho * torch.cos(phi), rho * torch.sin(phi)
    ix, iy = 0.45 * math.cos(wedge / 2), 0.45 * math.sin(wedge / 2)
    dx, dy = ix - 1.0, iy
    # origin side of the edge from the tip (1, 0) to the inner corner (ix, iy)
    return dx * qy - dy * (qx - 1.0) >= 0


def _tee(u: Tensor, v: Tensor, rho: Tensor) -> Tensor:
    bar = (u.abs() <= 0.9) & ((v - 0.62).abs() <= 0.26)
    stem = (u.abs() <= 0.26) & (v >= -0.9) & (v <= 0.62)
    return bar | stem


def _crescent(u: Tensor, v: Tensor, rho: Tensor) -> Tensor:
    return (rho <= 0.95) & ((u - 0.5) ** 2 + v**2 > 0.72**2)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays: a bijective hash of 64-bit keys."""
    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


_SHAPE_FUNCS = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "ring": _ring,
    "star": _star,
    "tee": _tee,
    "crescent": _crescent,
}
