r"""Figures for the report: attribution grids (paper Figs. 3 and 5) and scores per layer (Fig. 4).

Every map is drawn with Captum's own
:func:`captum.attr.visualization.visualize_image_attr`
(``method="blended_heat_map"``, ``sign="positive"``) after upsampling with
:meth:`captum.attr.LayerAttribution.interpolate`. Captum refuses a map with no positive
value (it normalises by the largest one); UniCAM and Grad-CAM apply a ReLU, which can leave
nothing, so such a map is drawn here as an empty panel carrying the note
``"no positive evidence after ReLU"`` instead.

Token maps of text models, ``(N, T)``, are shown with Captum's
:func:`captum.attr.visualization.visualize_text` (:func:`text_records`) or as an HTML table of
highlights per map kind (:func:`token_maps_html`), with empty maps noted the same way.

Every text of these figures (titles, class and layer names, legends) is drawn as written:
``$`` is escaped, so a class folder named ``$x$`` is not read as mathtext.

The figures use matplotlib's object-oriented API on the Agg backend: nothing is shown,
nothing needs a display, and ``pyplot``'s global state is not touched.

Example::

    >>> from captum_unicam import viz
    >>> fig = viz.attribution_grid(images, {"Grad-CAM student": g_s, "UniCAM distilled": d},
    ...                            title="L4")
    >>> viz.save_figure(fig, "figures/grid_L4.png")
"""

from __future__ import annotations

import html
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor

from captum_unicam.errors import InputError

__all__ = [
    "EMPTY_MAP_NOTE",
    "HEAT_CMAP",
    "is_empty_map",
    "visualize_image_attr",
    "visualize_image_attr_multiple",
    "upsample_maps",
    "draw_attribution",
    "attribution_grid",
    "MODEL_COLOURS",
    "model_colour",
    "scores_per_layer",
    "localisation_plot",
    "save_figure",
    "text_records",
    "token_maps_html",
]

#: Note written on a panel whose map has no positive value.
EMPTY_MAP_NOTE = "no positive evidence after ReLU"

#: Colour map of the heat maps (the usual Grad-CAM colours).
HEAT_CMAP = "jet"

_SIGNS = ("positive", "negative", "absolute_value", "all")
_METHODS = ("heat_map", "blended_heat_map", "original_image", "masked_image", "alpha_scaling")

#: One colour per model in every figure (bars, column titles, prediction markers).
MODEL_COLOURS = {"Teacher": "#8172b3", "Base": "#dd8452", "Student": "#4c72b0"}
#: Colours of a right and a wrong prediction.
_RIGHT, _WRONG = "#2e8b3e", "#c0392b"
_OTHER_COLOURS = ["#55a868", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"]


def model_colour(name: str, *, kinds: bool = False) -> Optional[str]:
    r"""The colour of the model a series or column title names (``"Student on distilled
    map"`` -> the Student's; with ``kinds=True`` a map kind with "distilled" is the
    Student's, "residual" the Base's); None when it names none."""
    low = name.lower()
    for role, colour in MODEL_COLOURS.items():
        if role.lower() in low:
            return colour
    if not kinds:
        return None
    if "distilled" in low:
        return MODEL_COLOURS["Student"]
    if "residual" in low:
        return MODEL_COLOURS["Base"]
    return None


_DPI = 110
_FONT = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8}


def _plain(text: Any) -> str:
    """``text`` as matplotlib draws it literally: every ``$`` escaped, so that a class or layer
    name such as ``$\\notacommand$`` is not parsed as mathtext (which fails, or changes it)."""
    return str(text).replace("$", r"\$")


def _new_figure(figsize: Tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _as_image(image: Union[Tensor, np.ndarray]) -> np.ndarray:
    """(C,H,W) or (H,W,C) tensor/array with values in [0, 1] -> (H,W,3) float array in [0, 1]."""
    arr = (
        image.detach().cpu().float().numpy()
        if isinstance(image, Tensor)
        else np.asarray(image, float)
    )
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"an image must have shape (C,H,W) or (H,W,C), got {tuple(arr.shape)}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.max() > 1.0 + 1e-6 or arr.min() < -1e-6:
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return np.clip(arr, 0.0, 1.0)


def is_empty_map(attr: Union[Tensor, np.ndarray], sign: str = "positive") -> bool:
    r"""Whether a map has nothing Captum can draw with the given ``sign``.

    Args:
        attr (Tensor or numpy.ndarray): one map, any shape.
        sign (str, optional): Captum's ``sign`` argument: ``"positive"``,
            ``"negative"``, ``"absolute_value"`` or ``"all"``.
            Default: "positive"

    Returns:
        bool: True when no finite entry has that sign (for ``"positive"``: all zero, all
        negative, or not finite; for ``"absolute_value"`` and ``"all"``: no finite
        non-zero entry), i.e. when ``captum.attr.visualization.visualize_image_attr(...,
        sign=sign)`` would raise ``AssertionError: Cannot normalize by scale factor = 0``.

    Examples::

        >>> import torch
        >>> from captum_unicam.viz import is_empty_map
        >>> is_empty_map(torch.zeros(1, 7, 7))
        True
        >>> is_empty_map(-torch.ones(1, 7, 7)), is_empty_map(-torch.ones(1, 7, 7), "all")
        (True, False)
    """
    if sign not in _SIGNS:
        raise InputError(f"`sign` must be one of {_SIGNS}, got {sign!r}.")
    arr = (
        attr.detach().cpu().double().numpy()
        if isinstance(attr, Tensor)
        else np.asarray(attr, float)
    )
    finite = arr[np.isfinite(arr)]
    if sign == "positive":
        finite = finite[finite > 0]
    elif sign == "negative":
        finite = finite[finite < 0]
    else:
        finite = finite[finite != 0]
    return finite.size == 0


def _empty_note(sign: str) -> str:
    if sign == "positive":
        return EMPTY_MAP_NOTE
    if sign == "negative":
        return "no negative evidence"
    return "all-zero map"


def _hwc(value: Union[None, Tensor, np.ndarray]) -> Optional[np.ndarray]:
    """Captum's layout (H, W, C) as a numpy array; a tensor (C, H, W) or (H, W) is turned."""
    if value is None or not isinstance(value, Tensor):
        return value
    arr = value.detach().cpu().double().numpy()
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        return arr.transpose(1, 2, 0)
    return arr


def visualize_image_attr(
    attr: Union[Tensor, np.ndarray],
    original_image: Union[None, Tensor, np.ndarray] = None,
    method: str = "heat_map",
    sign: str = "absolute_value",
    plt_fig_axis: Optional[Tuple[Figure, "matplotlib.axes.Axes"]] = None,
    outlier_perc: Union[int, float] = 2,
    cmap=None,
    alpha_overlay: float = 0.5,
    show_colorbar: bool = False,
    title: Optional[str] = None,
    fig_size: Tuple[int, int] = (6, 6),
    use_pyplot: bool = True,
):
    r"""Captum's :func:`captum.attr.visualization.visualize_image_attr`, safe for empty maps.

    UniCAM (and Grad-CAM with ``relu_attributions=True``) often returns maps that are zero
    everywhere: no part of the image raises the score. Captum's visualiser divides by the
    map's largest value and stops with ``AssertionError: Cannot normalize by scale factor
    = 0``. This function takes Captum's arguments with Captum's meaning and calls it
    unchanged whenever the map has something of the requested ``sign``; otherwise
    (:func:`is_empty_map`) it draws the original image greyed, or an empty panel, with a
    note such as :data:`EMPTY_MAP_NOTE`, on the same kind of figure and axis Captum would
    use, and returns them the same way.

    Args:
        attr (numpy.ndarray or Tensor): the map, ``(H, W, C)`` as in Captum (a tensor
            ``(1, H, W)`` or ``(H, W)`` is accepted too, e.g. one upsampled UniCAM map).
        original_image (numpy.ndarray or Tensor, optional): ``(H, W, C)`` image (or a
            ``(C, H, W)`` tensor), values in [0, 1] or [0, 255]. Default: None
        method, sign, plt_fig_axis, outlier_perc, cmap, alpha_overlay, show_colorbar,
        title, fig_size, use_pyplot: as in Captum's ``visualize_image_attr``.

    Returns:
        2-element tuple of **figure**, **axis**, as Captum's.

    Examples::

        >>> from captum.attr import LayerAttribution
        >>> from captum_unicam import viz
        >>> attr = unicam.attribute(x, target=y)  # doctest: +SKIP
        >>> up = LayerAttribution.interpolate(attr, x.shape[-2:], "bilinear")  # doctest: +SKIP
        >>> fig, ax = viz.visualize_image_attr(up[0], x[0], "blended_heat_map",
        ...                                    "positive", use_pyplot=False)  # doctest: +SKIP
    """
    from captum.attr import visualization as captum_viz

    attr_np, image = _hwc(attr), _hwc(original_image)
    if sign not in _SIGNS:
        raise InputError(f"`sign` must be one of {_SIGNS}, got {sign!r}.")
    if method == "original_image" or not is_empty_map(attr_np, sign):
        if method == "original_image":  # Captum normalises the map even here; it is unused
            attr_np = np.ones_like(np.asarray(attr_np, float))
        return captum_viz.visualize_image_attr(
            attr_np,
            image,
            method=method,
            sign=sign,
            plt_fig_axis=plt_fig_axis,
            outlier_perc=outlier_perc,
            cmap=cmap,
            alpha_overlay=alpha_overlay,
            show_colorbar=show_colorbar,
            title=title,
            fig_size=fig_size,
            use_pyplot=use_pyplot,
        )
    if method not in _METHODS:
        raise InputError(f"`method` must be one of {_METHODS}, got {method!r}.")
    if image is None and method != "heat_map":
        raise InputError(f"`original_image` is needed for method={method!r}, as in Captum.")
    if plt_fig_axis is not None:
        fig, ax = plt_fig_axis
    elif use_pyplot:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=fig_size)
    else:
        fig = _new_figure(fig_size)
        ax = fig.subplots()
    if image is not None:
        ax.imshow(_as_image(image).mean(axis=2), cmap="gray", vmin=0.0, vmax=1.0, alpha=0.35)
    ax.text(
        0.5,
        0.5,
        _empty_note(sign),
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=8,
        color="#7a1f1f",
        bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="#c9a0a0", alpha=0.9),
    )
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    if use_pyplot:
        import matplotlib.pyplot as plt

        plt.show()
    return fig, ax


def visualize_image_attr_multiple(
    attr: Union[Tensor, np.ndarray],
    original_image: Union[None, Tensor, np.ndarray],
    methods: Sequence[str],
    signs: Sequence[str],
    titles: Optional[Sequence[str]] = None,
    fig_size: Tuple[int, int] = (8, 6),
    use_pyplot: bool = True,
    **kwargs,
):
    r"""Captum's :func:`captum.attr.visualization.visualize_image_attr_multiple`, safe for
    empty maps: each panel is drawn by :func:`visualize_image_attr` above, so a panel
    whose map has nothing of its ``sign`` shows a note instead of stopping the figure.

    Args:
        attr, original_image, methods, signs, titles, fig_size, use_pyplot, **kwargs: as in
            Captum's ``visualize_image_attr_multiple`` (tensors accepted as in
            :func:`visualize_image_attr`).

    Returns:
        2-element tuple of **figure**, **axis** (one axis, or a list of them), as Captum's.
    """
    if len(methods) != len(signs):
        raise InputError(
            f"`methods` and `signs` must have the same length; got {len(methods)} and {len(signs)}."
        )
    if titles is not None and len(titles) != len(methods):
        raise InputError(
            f"`titles` must have one entry per method; got {len(titles)} for {len(methods)}."
        )
    if use_pyplot:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=fig_size)
    else:
        fig = _new_figure(fig_size)
    axes = fig.subplots(1, len(methods), squeeze=True)
    axis_list = [axes] if len(methods) == 1 else list(np.asarray(axes).ravel())
    for i, (method, sign) in enumerate(zip(methods, signs)):
        visualize_image_attr(
            attr,
            original_image,
            method=method,
            sign=sign,
            plt_fig_axis=(fig, axis_list[i]),
            use_pyplot=False,
            title=titles[i] if titles else None,
            **kwargs,
        )
    fig.tight_layout()
    if use_pyplot:
        import matplotlib.pyplot as plt

        plt.show()
    return fig, (axis_list[0] if len(methods) == 1 else axis_list)


def upsample_maps(maps: Tensor, size: Sequence[int]) -> Tensor:
    r"""Upsample (N,1,h,w) maps to ``size`` with ``LayerAttribution.interpolate`` (bilinear).

    Args:
        maps (Tensor): attributions of shape (N,1,h,w) (or (N,h,w)).
        size (tuple of int): target (H, W), usually ``inputs.shape[-2:]``.

    Returns:
        Tensor: (N,1,H,W) float maps on the CPU, detached.
    """
    from captum.attr import LayerAttribution

    maps = maps.detach().cpu().float()
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if maps.dim() != 4 or maps.shape[1] != 1:
        raise ValueError(f"maps must have shape (N,1,h,w), got {tuple(maps.shape)}")
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return LayerAttribution.interpolate(maps, tuple(int(s) for s in size), "bilinear")


def draw_attribution(ax, image, attr, *, title: Optional[str] = None, note: Optional[str] = None):
    r"""Draw one map blended over its image on ``ax`` with Captum's visualiser.

    Args:
        ax (matplotlib.axes.Axes): axis to draw on (its figure is used).
        image (Tensor or numpy.ndarray): (3,H,W) or (H,W,3) image in [0, 1].
        attr (Tensor or numpy.ndarray): (H,W) or (1,H,W) map, already at the image size.
        title (str, optional): panel title.
        note (str, optional): text written under the panel (e.g. the map's largest value).

    Returns:
        bool: True when the map was drawn, False when it was empty (no positive value),
        in which case the greyed image and :data:`EMPTY_MAP_NOTE` are drawn instead.
    """
    from captum.attr import visualization as captum_viz

    img = _as_image(image)
    arr = (
        attr.detach().cpu().double().numpy()
        if isinstance(attr, Tensor)
        else np.asarray(attr, float)
    )
    arr = np.squeeze(arr)
    if arr.shape != img.shape[:2]:
        raise ValueError(
            f"the map {arr.shape} must have the image's size {img.shape[:2]}; upsample it first"
        )
    empty = is_empty_map(arr)
    if empty:
        grey = img.mean(axis=2)
        ax.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, alpha=0.35)
        ax.text(
            0.5,
            0.5,
            EMPTY_MAP_NOTE.replace(" after", "\nafter"),
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=7,
            color="#7a1f1f",
            bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="#c9a0a0", alpha=0.9),
        )
        ax.set_xticks([])
        ax.set_yticks([])
        if title:
            ax.set_title(_plain(title))
    else:
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        arr = arr / arr.max()  # Captum rescales per map anyway; this avoids its tiny-scale warning
        captum_viz.visualize_image_attr(
            arr[:, :, None],
            img,
            method="blended_heat_map",
            sign="positive",
            plt_fig_axis=(ax.figure, ax),
            cmap=HEAT_CMAP,
            alpha_overlay=0.5,
            show_colorbar=False,
            title=_plain(title) if title else title,
            use_pyplot=False,
        )
    if note:
        ax.set_xlabel(_plain(note), fontsize=7, labelpad=2)
    return not empty


def _draw_marks(ax, marks: Sequence[Tuple[str, str, bool]]) -> None:
    """Under an image: one line per model, a coloured square (green right, red wrong),
    the model's name in its colour and the class it predicts."""
    for k, (role, predicted, correct) in enumerate(marks):
        y = -0.08 - 0.15 * k
        ax.text(
            0.0,
            y,
            "\u25a0",
            transform=ax.transAxes,
            ha="left",
            va="top",
            fontsize=9,
            color=_RIGHT if correct else _WRONG,
        )
        ax.text(
            0.13,
            y,
            _plain(f"{role}: {predicted} {'(right)' if correct else '(wrong)'}"),
            transform=ax.transAxes,
            ha="left",
            va="top",
            fontsize=7,
            color=model_colour(role) or "#222222",
        )


def _grid_maps(
    images: Tensor, maps: Mapping[str, Tensor], row_labels, row_marks
) -> Dict[str, Tensor]:
    """The checks of :func:`attribution_grid`; its maps upsampled to the images' size."""
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N,C,H,W), got {tuple(images.shape)}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("attribution_grid needs at least one image")
    ups = {}
    for name, m in maps.items():
        if m.shape[0] != n:
            raise ValueError(f"maps[{name!r}] has {m.shape[0]} maps for {n} images")
        ups[name] = upsample_maps(m, images.shape[-2:])
    if row_labels is not None and len(row_labels) != n:
        raise ValueError(f"row_labels has {len(row_labels)} labels for {n} images")
    if row_marks is not None and len(row_marks) != n:
        raise ValueError(f"row_marks has {len(row_marks)} rows for {n} images")
    return ups


def _draw_map_row(axes, image: Tensor, ups: Mapping[str, Tensor], i: int, *, titles: bool) -> None:
    """The maps of image ``i`` in ``axes[1:]``; with ``titles`` the column titles, each in
    the colour of the model it names."""
    for j, (name, up) in enumerate(ups.items(), start=1):
        peak = float(up[i].max()) if up[i].numel() else 0.0
        draw_attribution(
            axes[j],
            image,
            up[i, 0],
            title=name if titles else None,
            note=None if is_empty_map(up[i]) else f"max {peak:.3g}",
        )
        colour = model_colour(name, kinds=True)
        if titles and colour:
            axes[j].title.set_color(colour)
            axes[j].title.set_fontweight("bold")


def attribution_grid(
    images: Tensor,
    maps: Mapping[str, Tensor],
    *,
    title: Optional[str] = None,
    row_labels: Optional[Sequence[str]] = None,
    row_marks: Optional[Sequence[Sequence[Tuple[str, str, bool]]]] = None,
) -> Figure:
    r"""Grid of image | map 1 | map 2 | ... for a few images (the layout of paper Figs. 3 and 5).

    Args:
        images (Tensor): (N,C,H,W) images with values in [0, 1].
        maps (dict of str -> Tensor): column title -> (N,1,h,w) maps (e.g.
            ``{"Grad-CAM student": ..., "Grad-CAM base": ..., "UniCAM distilled": ...,
            "UniCAM residual": ...}``); upsampled to (H, W) here, bilinearly. Column titles
            are drawn in the colour of the model they name (:data:`MODEL_COLOURS`).
        title (str, optional): figure title (e.g. the layer name), above the column titles.
        row_labels (list of str, optional): one label per image (e.g. its class).
        row_marks (list, optional): per image, ``(model, predicted class, correct)`` per
            model, drawn under the image: a green (right) or red (wrong) square, the model's
            name in its colour and the class it predicts.

    Returns:
        matplotlib.figure.Figure: the figure (Agg canvas), with one colour bar for all
        panels (each map is scaled to its own largest value, as Captum does).
    """
    ups = _grid_maps(images, maps, row_labels, row_marks)
    n = images.shape[0]
    cols = 1 + len(ups)
    lines = max((len(m) for m in row_marks), default=0) if row_marks is not None else 0
    row_h = 1.8 + 0.22 * lines
    head = 0.55 if title else 0.35
    with matplotlib.rc_context(_FONT):
        fig = _new_figure((1.75 * cols + 0.6, row_h * n + head))
        axes = fig.subplots(n, cols, squeeze=False)
        for i in range(n):
            ax = axes[i, 0]
            ax.imshow(_as_image(images[i]))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("image")
            if row_labels is not None:
                ax.set_ylabel(_plain(row_labels[i]))
            if row_marks is not None:
                _draw_marks(ax, row_marks[i])
            _draw_map_row(axes[i], images[i], ups, i, titles=i == 0)
        top = 1.0 - (0.22 if title else 0.05) / fig.get_figheight()
        if title:
            fig.suptitle(
                _plain(title),
                fontsize=11,
                fontweight="bold",
                y=1.0 - 0.08 / fig.get_figheight(),
                va="top",
            )
        height = fig.get_figheight()
        bottom = (0.24 * lines) / height  # the last row's marks (not laid out by matplotlib)
        fig.tight_layout(rect=(0, bottom, 0.93, top))
        if lines:  # room under each row for its marks: gap / axis height
            gap = 0.24 * lines + 0.3
            span = (fig.subplotpars.top - fig.subplotpars.bottom) * height
            axis_h = max(span - (n - 1) * gap, 0.5) / n
            fig.subplots_adjust(hspace=gap / axis_h)
        cax = fig.add_axes((0.94, 0.15, 0.015, 0.7))
        cbar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap=HEAT_CMAP), cax=cax)
        cbar.set_label("map value, scaled per map (top 2 % clipped)", fontsize=7)
        cbar.ax.tick_params(labelsize=7)
    return fig


_Interval = Union[float, Tuple[float, float, float], Mapping[str, float]]


def _mean_low_high(value: _Interval) -> Tuple[float, float, float]:
    def num(v) -> float:
        return math.nan if v is None else float(v)

    if value is None:
        return math.nan, math.nan, math.nan
    if isinstance(value, Mapping):
        mean = num(value.get("mean"))
        low = num(value.get("low", mean))
        high = num(value.get("high", mean))
        return mean, low, high
    if isinstance(value, (tuple, list)):
        if len(value) != 3:
            raise ValueError(f"an interval must be (mean, low, high), got {value!r}")
        return tuple(num(v) for v in value)  # type: ignore[return-value]
    v = float(value)
    return v, v, v


def _bars(values: Mapping[str, _Interval], layers: Sequence[str]) -> Tuple[List[float], np.ndarray]:
    """Bar heights and (2, L) error-bar lengths of one series over ``layers``."""
    means, lows, highs = [], [], []
    for layer in layers:
        m, lo, hi = _mean_low_high(values[layer]) if layer in values else (math.nan,) * 3
        means.append(m)
        lows.append(m - lo if math.isfinite(lo) and math.isfinite(m) else 0.0)
        highs.append(hi - m if math.isfinite(hi) and math.isfinite(m) else 0.0)
    return means, np.clip(np.array([lows, highs]), 0.0, None)


def _leakage_ticks(
    ax, values: Mapping[str, Any], layers: Sequence[str], xs, width: float, shown: bool
) -> bool:
    """A black tick across each bar at its leakage baseline (values given as dicts with a
    ``"leakage"`` number); labelled once per panel. True once a tick is drawn."""
    for xi, layer in zip(xs, layers, strict=True):
        v = values.get(layer)
        leak = v.get("leakage") if isinstance(v, Mapping) else None
        if leak is None or not math.isfinite(float(leak)):
            continue
        ax.hlines(
            float(leak),
            xi - width * 0.46,
            xi + width * 0.46,
            colors="#111111",
            linewidths=2.0,
            label=None if shown else "leakage baseline (the mask alone)",
            zorder=3,
        )
        shown = True
    return shown


def scores_per_layer(
    panels: Mapping[str, Mapping[str, Mapping[str, _Interval]]],
    *,
    title: Optional[str] = None,
    reference_lines: Optional[Mapping[str, Tuple[float, str]]] = None,
    ylim: Optional[Tuple[float, float]] = None,
) -> Figure:
    r"""FSS / RS per layer with 95 % intervals as error bars (the layout of paper Fig. 4).

    Args:
        panels (dict): panel title -> series name -> layer -> value, where a value is a
            float, a ``(mean, low, high)`` tuple or a dict with ``mean``, ``low``, ``high``
            (and optionally ``leakage``: drawn as a black tick across the bar).
            E.g. ``{"(a) FSS": {"Student vs Base": {"L1": (0.4, 0.3, 0.5), ...}},
            "(b) RS": {"Base": {...}, "Student": {...}}}``. Layers are plotted in the
            order of their first appearance.
        title (str, optional): figure title.
        reference_lines (dict, optional): panel title -> (value, label) of a dashed
            horizontal line (e.g. the score of a uniform map).
        ylim (tuple, optional): y limits of every panel.

    Returns:
        matplotlib.figure.Figure: one panel per entry of ``panels``; grouped bars per
        layer with error bars; legends below the panels.
    """
    if not panels:
        raise ValueError("scores_per_layer needs at least one panel")
    with matplotlib.rc_context(_FONT):
        n_series = max(len(series) for series in panels.values())
        fig = _new_figure((4.2 * len(panels), 3.0 + 0.2 * ((n_series + 1) // 2)))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (ptitle, series) in zip(axes, panels.items()):
            layers: list = []
            for s in series.values():
                layers.extend(k for k in s if k not in layers)
            x = np.arange(len(layers))
            k = max(len(series), 1)
            width = 0.8 / k
            others = iter(_OTHER_COLOURS * (1 + len(series) // len(_OTHER_COLOURS)))
            leaked = False
            for si, (sname, values) in enumerate(series.items()):
                colour = model_colour(sname) or next(others)
                means, err = _bars(values, layers)
                xs = x + (si - (k - 1) / 2) * width
                ax.bar(
                    xs,
                    means,
                    width * 0.92,
                    yerr=err,
                    capsize=3,
                    label=_plain(sname),
                    color=colour,
                    edgecolor="white",
                    error_kw={"elinewidth": 1.0, "ecolor": "#333333"},
                )
                leaked = _leakage_ticks(ax, values, layers, xs, width, leaked)
            ax.set_xticks(x)
            ax.set_xticklabels([_plain(layer) for layer in layers])
            ax.set_xlabel("layer")
            ax.set_title(_plain(ptitle))
            ax.axhline(0.0, color="#888888", linewidth=0.6)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
            ref = (reference_lines or {}).get(ptitle)
            if ref is not None and ref[0] is not None and math.isfinite(ref[0]):
                ax.axhline(
                    ref[0], color="#444444", linestyle="--", linewidth=0.9, label=_plain(ref[1])
                )
            if ylim is not None:
                ax.set_ylim(*ylim)
            if len(series) > 1 or ref is not None or leaked:
                ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        if title:
            fig.suptitle(_plain(title), fontsize=11, fontweight="bold")
        fig.tight_layout()
    return fig


def localisation_plot(
    localisation: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]],
    *,
    chance: Optional[Mapping[str, float]] = None,
    title: Optional[str] = None,
) -> Figure:
    r"""Mask energy fraction and pointing game per layer and map kind, with intervals.

    Args:
        localisation (dict): layer -> map kind -> metric -> dict with ``mean``, ``low``,
            ``high``, for the metrics ``"energy"`` and ``"pointing"`` (the layout of
            :func:`captum_unicam.metrics.localisation.localisation`).
        chance (dict, optional): metric -> value a uniform map would get (the mean mask
            area), drawn as a dashed line.
        title (str, optional): figure title.

    Returns:
        matplotlib.figure.Figure: two panels, energy fraction and pointing game.
    """
    panels: Dict[str, Dict[str, Dict[str, _Interval]]] = {
        "mask energy fraction": {},
        "pointing game (hit rate)": {},
    }
    for layer, kinds in localisation.items():
        for kind, metrics in kinds.items():
            for metric, panel in (
                ("energy", "mask energy fraction"),
                ("pointing", "pointing game (hit rate)"),
            ):
                if metric in metrics:
                    panels[panel].setdefault(kind, {})[layer] = metrics[metric]
    refs = {}
    for metric, panel in (
        ("energy", "mask energy fraction"),
        ("pointing", "pointing game (hit rate)"),
    ):
        if chance and chance.get(metric) is not None:
            refs[panel] = (float(chance[metric]), "uniform map")
    return scores_per_layer(panels, title=title, reference_lines=refs, ylim=(0.0, 1.05))


def save_figure(fig: Figure, path: Union[str, os.PathLike], *, dpi: int = _DPI) -> str:
    r"""Save ``fig`` as a PNG at ``path`` (parent folders are created) and release it.

    Returns:
        str: the path written.
    """
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png", facecolor="white")
    fig.clear()
    return path


# ---------------------------------------------------------------------------
# Token maps (text)
# ---------------------------------------------------------------------------


def _token_rows(
    tokens: Sequence[Sequence[str]], maps: Union[Tensor, np.ndarray], attention_mask: Any
) -> List[Tuple[List[str], np.ndarray]]:
    """(valid tokens, their map values) per sentence; padding dropped."""
    if isinstance(maps, Tensor):
        arr = maps.detach().cpu().double().numpy()
    else:
        arr = np.asarray(maps, float)
    if arr.ndim != 2 or arr.shape[0] != len(tokens):
        raise InputError(
            f"`maps` must be (N, T) token maps with one row per sentence of `tokens` "
            f"({len(tokens)}), got shape {tuple(arr.shape)}."
        )
    if attention_mask is None:
        mask = np.ones(arr.shape, dtype=bool)
    else:
        mask = np.asarray(
            attention_mask.detach().cpu() if isinstance(attention_mask, Tensor) else attention_mask
        ).astype(bool)
        if mask.shape != arr.shape:
            raise InputError(
                f"`attention_mask` {mask.shape} must have the shape of `maps` {arr.shape}."
            )
    rows = []
    for i, words in enumerate(tokens):
        keep = np.flatnonzero(mask[i])
        if len(words) < keep.size:
            raise InputError(
                f"Sentence {i} has {len(words)} tokens but {keep.size} valid map values; pass "
                "the tokens of the same batch (tokenizer.convert_ids_to_tokens)."
            )
        rows.append(([str(words[j]) for j in keep], arr[i, keep]))
    return rows


def _scaled(values: np.ndarray) -> Tuple[np.ndarray, bool]:
    """Values divided by the largest positive one (Captum's colours take [-1, 1]); an empty
    map (nothing positive) gives zeros and True, with no division."""
    finite = np.where(np.isfinite(values), values, 0.0)
    top = finite.max(initial=0.0)
    if top <= 0:
        return np.zeros_like(finite), True
    return np.clip(finite / top, -1.0, 1.0), False


def text_records(
    tokens: Sequence[Sequence[str]],
    maps: Union[Tensor, np.ndarray],
    *,
    attention_mask: Any = None,
    kind: str = "",
    true_class: Optional[Sequence[Any]] = None,
    pred_class: Optional[Sequence[Any]] = None,
    pred_prob: Optional[Sequence[float]] = None,
) -> List[Any]:
    r"""Captum :class:`~captum.attr.visualization.VisualizationDataRecord` objects for token
    maps, ready for :func:`captum.attr.visualization.visualize_text`.

    Each map is divided by its largest value, so the strongest token of a sentence is the
    darkest green (Captum's colours take values in [-1, 1]); ``attr_score`` is the map's
    sum, as in Captum's text tutorials. An empty map (no positive value, common after the
    ReLU) is not divided: its tokens are uncoloured and ``attr_class`` carries the note
    :data:`EMPTY_MAP_NOTE`.

    Args:
        tokens (list of list of str): The tokens of each sentence, e.g.
            ``tokenizer.convert_ids_to_tokens(ids)``, padding included or not.
        maps (Tensor or numpy.ndarray): ``(N, T)`` token maps.
        attention_mask (Tensor, optional): ``(N, T)``; padding tokens are left out.
            Default: None (all tokens shown)
        kind (str, optional): The map kind shown as Captum's "Attribution Label"
            (e.g. ``"UniCAM residual"``). Default: ""
        true_class, pred_class (sequence, optional): Labels per sentence. Default: None
        pred_prob (sequence of float, optional): Predicted probabilities. Default: None

    Returns:
        list of ``VisualizationDataRecord``, one per sentence.

    Examples::

        >>> from captum.attr.visualization import visualize_text
        >>> words = [tok.convert_ids_to_tokens(row) for row in ids]
        >>> visualize_text(viz.text_records(words, residual, attention_mask=mask,
        ...                                 kind="UniCAM residual"))
    """
    from captum.attr import visualization as captum_viz

    records = []
    for i, (words, values) in enumerate(_token_rows(tokens, maps, attention_mask)):
        scaled, empty = _scaled(values)
        label = f"{kind} ({EMPTY_MAP_NOTE})".strip() if empty else kind
        records.append(
            captum_viz.VisualizationDataRecord(
                word_attributions=scaled,
                pred_prob=float(pred_prob[i]) if pred_prob is not None else float("nan"),
                pred_class=pred_class[i] if pred_class is not None else "",
                true_class=true_class[i] if true_class is not None else "",
                attr_class=label,
                attr_score=float(np.nansum(values)),
                raw_input_ids=words,
                convergence_score=None,
            )
        )
    return records


def token_maps_html(
    tokens: Sequence[Sequence[str]],
    maps: Mapping[str, Union[Tensor, np.ndarray]],
    *,
    attention_mask: Any = None,
    captions: Optional[Sequence[str]] = None,
) -> str:
    r"""An HTML table of token highlights: one row per sentence, one column per map kind
    (e.g. UniCAM distilled and residual beside Grad-CAM of each model on the same layer),
    coloured with Captum's :func:`~captum.attr.visualization.format_word_importances`.

    Every map is scaled by its own largest value (as :func:`text_records`); an empty map
    shows its tokens uncoloured with the note :data:`EMPTY_MAP_NOTE`. Tokens are
    HTML-escaped. The result is a plain string for a report page, or for
    ``IPython.display.HTML`` in a notebook.

    Args:
        tokens (list of list of str): The tokens of each sentence.
        maps (dict[str, Tensor]): Map kind -> ``(N, T)`` token maps, in column order.
        attention_mask (Tensor, optional): ``(N, T)``; padding is left out. Default: None
        captions (sequence of str, optional): A caption per sentence (e.g. its label).
            Default: None

    Returns:
        str: the ``<table>`` element.

    Examples::

        >>> page = viz.token_maps_html(words, {"UniCAM residual": r, "Grad-CAM Base": g_b},
        ...                            attention_mask=mask)
    """
    from captum.attr import visualization as captum_viz

    if not maps:
        raise InputError("`maps` must name at least one map kind.")
    rows_by_kind = {k: _token_rows(tokens, m, attention_mask) for k, m in maps.items()}
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in maps)
    out = ['<table class="token-maps">', f"<tr><th>sentence</th>{head}</tr>"]
    for i in range(len(tokens)):
        caption = html.escape(str(captions[i])) if captions is not None else str(i)
        cells = []
        for kind in maps:
            words, values = rows_by_kind[kind][i]
            scaled, empty = _scaled(values)
            cell = captum_viz.format_word_importances([html.escape(w) for w in words], scaled)
            if empty:
                cell = cell[: -len("</td>")] + f"<br><small><i>{EMPTY_MAP_NOTE}</i></small></td>"
            cells.append(cell)
        out.append(f"<tr><td>{caption}</td>{''.join(cells)}</tr>")
    out.append("</table>")
    return "\n".join(out)
