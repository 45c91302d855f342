r"""Comparing attribution methods on the same images: UniCAM next to Captum's methods.

:func:`compare` explains one set of images with every method and measures, per method:

- **localisation** (when ground-truth masks are given, e.g. the controlled dataset's
  object and marker masks): the share of the map's positive mass inside each mask and the
  pointing game, as defined by :func:`captum_unicam.metrics.localisation.localisation`, with bootstrap
  intervals over images;
- **ROAD** (Rong et al. 2022): the accuracy of the explained model on images whose most
  relevant pixels (MoRF) or least relevant pixels (LeRF) were replaced by noisy linear
  imputation (:func:`captum_unicam.perturb.road_impute`), at several percentiles. A
  faithful map makes accuracy fall fast under MoRF and slowly under LeRF;
- **sanity checks** (Adebayo et al. 2018; :mod:`captum_unicam.sanity`): cascading
  randomisation of each model, and optionally a model trained on random labels.

Methods are Captum ``Attribution`` objects, optionally with keyword arguments of their
``attribute`` call, so any method, including your own, can join:
``methods={"mine": (MyAttribution(student), {"steps": 8}), ...}``.
:func:`default_methods` builds the usual set: UniCAM distilled and residual, Grad-CAM of
the Student and of the Base, and Captum's ``GuidedGradCam``, ``LayerGradientXActivation``
and ``IntegratedGradients`` of the Student.

The model a method explains (the one whose accuracy ROAD measures, and the one
randomised for its sanity check) is its ``forward_func``; for UniCAM's residual maps
(``features="residual"``) it is the Base (``base_forward_func``).

The command line (``captum-unicam compare``) is
:func:`captum_unicam.pipeline.runs.compare`; it writes a report folder (``index.html``, ``metrics.json``,
``tables/``, ``figures/``).
"""

from __future__ import annotations

import copy
import html
import json
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from captum_unicam._batching import MIN_BATCH, batch_sizes
from captum_unicam._methods import (
    bootstrap_interval,
    check_bootstrap,
    method_specs,
    new_figure,
    refers_to,
)
from captum_unicam.errors import InputError
from captum_unicam.output.html import PAGE, PARA, markdown_to_html
from captum_unicam.output.publish import REPORT_FORMAT
from captum_unicam.output.tables import csv_table, format_interval, markdown_table

__all__ = ["ComparisonResult", "compare", "default_methods"]

PERCENTILES = (10, 30, 50, 70, 90)
ORDERS = {"MoRF": "most relevant first", "LeRF": "least relevant first"}


# ---------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------


def default_methods(
    student: nn.Module,
    student_layer: nn.Module,
    base: nn.Module,
    base_layer: nn.Module,
    *,
    label_embeddings: Optional[Tensor] = None,
    ig_steps: int = 16,
) -> Dict[str, Any]:
    r"""UniCAM distilled and residual, Grad-CAM of each model, and Captum's Guided Grad-CAM,
    Gradient x Activation and Integrated Gradients of the Student.

    Args:
        student, base (nn.Module): The distilled model and the Base.
        student_layer, base_layer (nn.Module): Their layers explained (e.g. ``layer4``).
        label_embeddings (Tensor, optional): UniCAM's label vectors. Default: one-hot
        ig_steps (int, optional): Integrated Gradients' ``n_steps``. Default: 16

    Returns:
        *dict*: name -> ``(attribution, attribute kwargs)``, for :func:`compare`.
    """
    # lazy: captum.attr and UniCAM are imported only when the methods are built
    from captum.attr import (
        GuidedGradCam,
        IntegratedGradients,
        LayerGradCam,
        LayerGradientXActivation,
    )

    from captum_unicam.attr.unicam import UniCAM

    uc = UniCAM(student, student_layer, base, base_layer, label_embeddings=label_embeddings)
    relu = {"relu_attributions": True}
    return {
        "UniCAM distilled": (uc, {"features": "distilled"}),
        "UniCAM residual": (uc, {"features": "residual"}),
        "Grad-CAM Student": (LayerGradCam(student, student_layer), relu),
        "Grad-CAM Base": (LayerGradCam(base, base_layer), relu),
        "Guided Grad-CAM Student": (GuidedGradCam(student, student_layer), {}),
        "Gradient x Activation Student": (LayerGradientXActivation(student, student_layer), {}),
        "Integrated Gradients Student": (IntegratedGradients(student), {"n_steps": int(ig_steps)}),
    }


def _explained_model(attr: Any, kwargs: Mapping[str, Any]) -> Any:
    if kwargs.get("features") == "residual" and hasattr(attr, "base_forward_func"):
        return attr.base_forward_func
    return attr.forward_func


# ---------------------------------------------------------------------------
# measures
# ---------------------------------------------------------------------------


def _predict(model: Any, x: Tensor, batch_size: int) -> Tensor:
    with torch.no_grad():
        return torch.cat(
            [model(x[i : i + batch_size]).argmax(1).cpu() for i in range(0, x.shape[0], batch_size)]
        )


def _road_method(model, m, inputs, y, percentiles, batch_size, seed, n_bootstrap, confidence,
                 noise) -> Dict[str, Any]:
    """ROAD of one method's maps ``m``: accuracy intact, then per order and percentile."""
    # lazy: perturb imports scipy-like helpers only ROAD needs
    from captum_unicam.perturb import road_impute

    hit = (_predict(model, inputs, batch_size) == y).double().numpy()
    entry: Dict[str, Any] = {"intact": bootstrap_interval(hit, n_bootstrap, seed, confidence)}
    for order in ORDERS:
        entry[order] = {}
        # road_impute removes the least relevant pixels: negate to remove the most relevant
        ranked = -m if order == "MoRF" else m
        for p in percentiles:
            g = torch.Generator().manual_seed(seed)
            x = road_impute(inputs.cpu(), ranked.cpu(), float(p), noise=noise, generator=g)
            hit = (_predict(model, x.to(inputs.device), batch_size) == y).double().numpy()
            entry[order][str(p)] = bootstrap_interval(hit, n_bootstrap, seed, confidence)
    lerf = [entry["LeRF"][str(p)]["mean"] for p in percentiles]
    morf = [entry["MoRF"][str(p)]["mean"] for p in percentiles]
    entry["lerf_minus_morf"] = float(np.mean(np.subtract(lerf, morf)))
    return entry


def _road(specs, maps, inputs, target, percentiles, batch_size, seed, n_bootstrap, confidence,
          noise):
    out: Dict[str, Any] = {}
    y = target.cpu()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the imputation's small tensor ops are faster on one thread
    try:
        for name, (attr, kwargs) in specs.items():
            out[name] = _road_method(
                _explained_model(attr, kwargs), maps[name].to(inputs.dtype), inputs, y,
                percentiles, batch_size, seed, n_bootstrap, confidence, noise,
            )
    finally:
        torch.set_num_threads(threads)
    return out


def _sanity(specs, inputs, target, models, random_label_models, batch_size, seed, n_bootstrap,
            confidence):
    # lazy: sanity imports comparison's neighbours; only needed when checks are asked for
    from captum_unicam.sanity import cascading_randomisation, label_randomisation

    common = dict(batch_size=batch_size, seed=seed, n_bootstrap=n_bootstrap, confidence=confidence)
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined Spearman values are counted in the table
        for label, model in models.items():
            chosen = {n: s for n, s in specs.items() if refers_to(s[0], model)}
            if chosen:
                results.append(cascading_randomisation(
                    model, chosen, inputs, target, check=f"{label} randomised", **common))
        for label, (model, random_model) in random_label_models.items():
            chosen = {n: s for n, s in specs.items() if refers_to(s[0], model)}
            if chosen:
                rebound = _rebind(chosen, model, random_model)
                results.append(label_randomisation(
                    chosen, rebound, inputs, target, check=f"{label} on random labels", **common))
    result = None
    for r in results:
        result = r if result is None else result + r
    return result


def _rebind(specs: Mapping[str, Any], old: nn.Module, new: nn.Module) -> Dict[str, Any]:
    """Copies of the methods in which every reference to ``old`` (and its submodules)
    points to the same-named part of ``new`` (a model of the same architecture)."""
    new_modules = dict(new.named_modules())
    memo: Dict[int, Any] = {}
    for name, module in old.named_modules():
        if name not in new_modules or type(new_modules[name]) is not type(module):
            raise InputError(
                f"the random-label model has no submodule {name!r} like the model's; give it "
                "the same architecture."
            )
        memo[id(module)] = new_modules[name]
    new_shapes = {k: v.shape for k, v in new.state_dict().items()}
    if {k: v.shape for k, v in old.state_dict().items()} != new_shapes:
        raise InputError(
            "the random-label model's parameters differ in names or shapes from the model's; "
            "give it the same architecture."
        )
    return copy.deepcopy(dict(specs), memo)


# ---------------------------------------------------------------------------
# compare: checks before any work
# ---------------------------------------------------------------------------


def _check_images(inputs: Any, target: Any, batch_size: Any) -> Tensor:
    """The targets as a tensor, after checking the images, the targets and the batching."""
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or inputs.shape[0] < MIN_BATCH:
        raise InputError(
            f"`inputs` must be a (N, C, H, W) tensor with N >= {MIN_BATCH} (UniCAM's scores are "
            f"batch statistics), got {getattr(inputs, 'shape', inputs)}."
        )
    n = inputs.shape[0]
    target_t = torch.as_tensor(target)
    if target_t.dim() != 1 or target_t.shape[0] != n or target_t.is_floating_point():
        raise InputError(
            f"`target` must hold one class index per image ({n}), got shape "
            f"{tuple(target_t.shape)}."
        )
    batch_sizes(n, batch_size)  # batch_size >= 5; the same cut as the pipeline's
    return target_t


def _check_masks(masks: Any, inputs: Tensor) -> Dict[str, Tensor]:
    masks = dict(masks or {})
    for region, m in masks.items():
        if not isinstance(m, Tensor) or m.shape[0] != inputs.shape[0] or (
            m.shape[-2:] != inputs.shape[-2:]
        ):
            raise InputError(
                f"masks[{region!r}] must be a (N, 1, H, W) tensor matching `inputs` "
                f"{tuple(inputs.shape)}, got {getattr(m, 'shape', type(m).__name__)}."
            )
    return masks


def _check_percentiles(percentiles: Sequence[float]) -> List[float]:
    percentiles = [float(p) for p in percentiles]
    if any(not 0 < p < 100 for p in percentiles):
        raise InputError(f"percentiles must lie strictly between 0 and 100, got {percentiles}.")
    return percentiles


def _check_sanity(sanity_models: Any, random_label_models: Any, sanity_images: Any) -> None:
    for label, model in (sanity_models or {}).items():
        if not isinstance(model, nn.Module):
            raise InputError(
                f"sanity_models[{label!r}] must be a torch.nn.Module, got {type(model).__name__}."
            )
    for label, pair in (random_label_models or {}).items():
        if not (isinstance(pair, tuple) and len(pair) == 2
                and all(isinstance(m, nn.Module) for m in pair)):
            raise InputError(
                f"random_label_models[{label!r}] must be a pair (model, random_label_model) of "
                "torch.nn.Modules."
            )
        _rebind({}, *pair)  # architecture check before any work
    if (sanity_models or random_label_models) and sanity_images is not None and (
        isinstance(sanity_images, bool) or not isinstance(sanity_images, int)
        or sanity_images < MIN_BATCH
    ):
        raise InputError(
            f"sanity_images must be None or an int >= {MIN_BATCH} (the sanity checks explain "
            f"batches of images), got {sanity_images!r}."
        )


# ---------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------


def compare(
    inputs: Tensor,
    target: Any,
    methods: Mapping[str, Any],
    *,
    masks: Optional[Mapping[str, Tensor]] = None,
    percentiles: Sequence[float] = PERCENTILES,
    sanity_models: Optional[Mapping[str, nn.Module]] = None,
    random_label_models: Optional[Mapping[str, Tuple[nn.Module, nn.Module]]] = None,
    sanity_images: Optional[int] = 32,
    road_noise: float = 0.01,
    batch_size: int = 64,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> "ComparisonResult":
    r"""Localisation, ROAD and sanity checks of several attribution methods on the same images.

    Args:
        inputs (Tensor): ``(N, C, H, W)`` images, N >= 5. Maps are computed per batch of
                    ``batch_size`` images (UniCAM's context is the batch); a last batch of
                    fewer than 5 images joins the batch before it, as in the pipeline's
                    stratified batches (68 images with ``batch_size=64``: one batch of 68).
        target (Tensor or list): The class of each image (the true labels, usually).
        methods (dict): name -> Captum ``Attribution`` or ``(attribution, attribute
                    kwargs)``; e.g. :func:`default_methods`. Input attributions
                    (``(N, C, H, W)``) are summed over channels; layer maps are upsampled
                    to the input size (bilinear).
        masks (dict, optional): region name -> ``(N, 1, H, W)`` ground-truth masks (e.g.
                    ``{"object": ds.masks, "marker": ds.marker_masks}``). Default: None
                    (no localisation)
        percentiles (sequence of float, optional): ROAD removal percentiles; empty to skip
                    ROAD. Default: (10, 30, 50, 70, 90)
        sanity_models (dict, optional): label -> model to randomise (cascading, top block
                    first) for the methods that call it, e.g. ``{"Student": student,
                    "Base": base}``. Default: None (no sanity check)
        random_label_models (dict, optional): label -> ``(model, random_label_model)``: the
                    methods that call ``model`` are rebuilt on ``random_label_model`` (same
                    architecture, trained on permuted labels) and compared. Default: None
        sanity_images (int, optional): Images of the sanity checks (the first ones, at
                    least 5; all when None). Default: 32
        road_noise (float, optional): ROAD's imputation noise. Default: 0.01
        batch_size (int, optional): Images per attribution call, at least 5. Default: 64
        n_bootstrap (int, optional): Bootstrap resamples over images. Default: 1000
        confidence (float, optional): Interval level. Default: 0.95
        seed (int, optional): Seed of ROAD's noise, the randomisation and the bootstrap.
                    Default: 0

    Returns:
        *ComparisonResult*: ``metrics`` (every number), ``tables`` (Markdown and CSV per
        measure) and ``figures`` (one matplotlib figure per measure).

    Raises:
        InputError: fewer than 5 images, a ``batch_size`` under 5, targets, masks,
        percentiles or models that do not fit; raised before any map is computed.

    Examples::

        >>> from captum_unicam.comparison import compare, default_methods
        >>> methods = default_methods(student, student.layer4, base, base.layer4)
        >>> result = compare(ds.images[:64], ds.labels[:64], methods,
        ...                  masks={"object": ds.masks[:64]},
        ...                  sanity_models={"Student": student, "Base": base})
        >>> print(result.tables["road"]["md"])
        >>> result.figures["localisation"].savefig("localisation.png")
    """
    # lazy: sanity and localisation are imported when a comparison runs
    from captum_unicam.metrics.localisation import localisation
    from captum_unicam.sanity import attribute_maps

    specs = method_specs(methods)
    target_t = _check_images(inputs, target, batch_size)
    masks = _check_masks(masks, inputs)
    percentiles = _check_percentiles(percentiles)
    check_bootstrap(n_bootstrap, confidence)
    _check_sanity(sanity_models, random_label_models, sanity_images)
    n = inputs.shape[0]
    timings: Dict[str, float] = {}
    boot = dict(n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # Captum's notes that it sets requires_grad / ReLU hooks during GuidedGradCam
        warnings.filterwarnings(
            "ignore", message=".*(did not already require gradients|backward hooks on ReLU).*"
        )
        maps = attribute_maps(specs, inputs, target_t.to(inputs.device), batch_size=batch_size)
    timings["maps_s"] = time.perf_counter() - t0

    metrics: Dict[str, Any] = {"methods": list(specs), "n_images": n, "localisation": None,
                               "road": None, "sanity": None}
    if masks:
        t0 = time.perf_counter()
        metrics["localisation"] = {region: localisation(maps, m, **boot)
                                   for region, m in masks.items()}
        timings["localisation_s"] = time.perf_counter() - t0
    if percentiles:
        t0 = time.perf_counter()
        metrics["road"] = {"percentiles": percentiles, "noise": road_noise,
                           "methods": _road(specs, maps, inputs, target_t, percentiles, batch_size,
                                            seed, n_bootstrap, confidence, road_noise)}
        timings["road_s"] = time.perf_counter() - t0
    sanity_result = None
    if sanity_models or random_label_models:
        t0 = time.perf_counter()
        k = n if sanity_images is None else min(int(sanity_images), n)
        sanity_result = _sanity(specs, inputs[:k], target_t[:k].to(inputs.device),
                                dict(sanity_models or {}), dict(random_label_models or {}),
                                batch_size, seed, n_bootstrap, confidence)
        metrics["sanity"] = sanity_result.to_dict() if sanity_result is not None else None
        timings["sanity_s"] = time.perf_counter() - t0
    metrics["timings"] = {key: round(v, 2) for key, v in timings.items()}
    return ComparisonResult(metrics, maps, inputs.detach().cpu(), sanity_result)


# ---------------------------------------------------------------------------
# result: tables, figures, report folder
# ---------------------------------------------------------------------------

_STATS = ("mean", "low", "high")


def _localisation_table(loc: Mapping[str, Any], methods: Sequence[str]) -> Dict[str, str]:
    header = (["method"] + [f"{r}: mass [95% CI]" for r in loc]
              + [f"{r}: pointing [95% CI]" for r in loc])
    rows, crows = [], []
    for m in methods:
        k = {r: loc[r]["kinds"][m] for r in loc}
        rows.append([m] + [format_interval(k[r][q]) for q in ("energy", "pointing") for r in loc])
        crows.append(
            [m] + [k[r][q][s] for q in ("energy", "pointing") for r in loc for s in _STATS]
        )
    rows.append(["chance (mask area)"] + [f"{loc[r]['chance']['energy']:.3f}" for r in loc] * 2)
    cheader = ["method"] + [f"{r}_{q}_{s}" for q in ("energy", "pointing") for r in loc
                            for s in _STATS]
    return {"md": markdown_table(header, rows), "csv": csv_table(cheader, crows)}


def _road_table(road: Mapping[str, Any], methods: Sequence[str]) -> Dict[str, str]:
    ps = [f"{p:g}" for p in road["percentiles"]]
    keys = [str(float(p)) for p in road["percentiles"]]
    header = ["method", "order", "intact"] + [f"{p} %" for p in ps]
    rows, crows = [], []
    for m in methods:
        e = road["methods"][m]
        for order in ORDERS:
            rows.append([m, order, format_interval(e["intact"])]
                        + [format_interval(e[order][k]) for k in keys])
            crows.append([m, order, e["intact"]["mean"]] + [e[order][k]["mean"] for k in keys])
    rows += [[m, "LeRF − MoRF (mean)", f"{road['methods'][m]['lerf_minus_morf']:+.3f}"]
             + [""] * len(ps) for m in methods]
    return {"md": markdown_table(header, rows),
            "csv": csv_table(["method", "order", "intact"] + ps, crows)}


def _localisation_figure(loc: Mapping[str, Any], methods: Sequence[str]):
    fig = new_figure((1.2 + 3.2 * len(loc), 3.6))
    axes = fig.subplots(1, len(loc), squeeze=False)[0]
    for ax, (region, d) in zip(axes, loc.items(), strict=True):
        e = [d["kinds"][m]["energy"] for m in methods]
        mean = [x["mean"] if x["mean"] is not None else np.nan for x in e]
        err = [[max(0.0, x["mean"] - x["low"]) if x["mean"] is not None else 0 for x in e],
               [max(0.0, x["high"] - x["mean"]) if x["mean"] is not None else 0 for x in e]]
        ax.barh(range(len(methods)), mean, xerr=err, color="tab:blue", alpha=0.8)
        ax.axvline(d["chance"]["energy"], color="0.3", ls="--", lw=0.8, label="chance")
        ax.set_yticks(range(len(methods)))
        ax.set_yticklabels(methods if ax is axes[0] else [""] * len(methods), fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_title(f"mass on the {region}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _road_figure(road: Mapping[str, Any], methods: Sequence[str]):
    fig = new_figure((8.0, 3.4))
    axes = fig.subplots(1, 2)
    for ax, order in zip(axes, ORDERS, strict=True):
        for m in methods:
            e = road["methods"][m]
            xs = [0.0] + road["percentiles"]
            ys = [e["intact"]["mean"]] + [e[order][str(p)]["mean"] for p in road["percentiles"]]
            ax.plot(xs, ys, marker="o", ms=3, label=m)
        ax.set_title(f"ROAD, {ORDERS[order]} ({order})", fontsize=9)
        ax.set_xlabel("pixels removed (%)", fontsize=8)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("accuracy of the explained model", fontsize=8)
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    return fig


class ComparisonResult:
    r"""What :func:`compare` measured.

    Attributes:
        metrics (dict): every number: ``localisation`` (region -> the output of
                    :func:`captum_unicam.metrics.localisation.localisation`), ``road`` (method ->
                    ``intact`` accuracy, ``MoRF`` / ``LeRF`` -> percentile -> accuracy
                    interval, ``lerf_minus_morf``), ``sanity`` (rows of
                    :class:`~captum_unicam.sanity.SanityResult`), ``timings``.
        maps (dict[str, Tensor]): method -> ``(N, 1, H, W)`` maps on the input grid.
        tables (dict): measure -> ``{"md": ..., "csv": ...}``.
        figures (dict): measure -> matplotlib ``Figure`` (made on first access).
    """

    def __init__(self, metrics: Dict[str, Any], maps: Dict[str, Tensor], inputs: Tensor,
                 sanity_result: Any) -> None:
        self.metrics = metrics
        self.maps = maps
        self._inputs = inputs
        self._sanity = sanity_result
        self._figures: Optional[Dict[str, Any]] = None

    @property
    def tables(self) -> Dict[str, Dict[str, str]]:
        out: Dict[str, Dict[str, str]] = {}
        methods = self.metrics["methods"]
        if self.metrics["localisation"]:
            out["localisation"] = _localisation_table(self.metrics["localisation"], methods)
        if self.metrics["road"]:
            out["road"] = _road_table(self.metrics["road"], methods)
        if self._sanity is not None:
            out["sanity"] = {"md": self._sanity.to_markdown(), "csv": self._sanity.to_csv()}
        return out

    @property
    def figures(self) -> Dict[str, Any]:
        if self._figures is None:
            self._figures = self._make_figures()
        return self._figures

    def _make_figures(self) -> Dict[str, Any]:
        # lazy: viz imports matplotlib's colour maps, needed only for figures
        from captum_unicam import viz

        methods = self.metrics["methods"]
        k = min(4, self._inputs.shape[0])
        figs: Dict[str, Any] = {"maps": viz.attribution_grid(
            self._inputs[:k], {m: self.maps[m][:k].float() for m in methods},
            title="maps of every method")}
        if self.metrics["localisation"]:
            figs["localisation"] = _localisation_figure(self.metrics["localisation"], methods)
        if self.metrics["road"]:
            figs["road"] = _road_figure(self.metrics["road"], methods)
        if self._sanity is not None:
            figs["sanity"] = self._sanity.figure()
        return figs

    def write(self, folder: Path, *, title: str = "Comparison of attribution methods",
              command: str = "", notes: Sequence[str] = (), dpi: int = 80) -> List[str]:
        r"""Writes ``metrics.json``, ``tables/*.md|.csv``, ``figures/*.png`` and
        ``index.html`` into ``folder`` (which must exist and be empty; the command line
        builds it in a temporary folder and publishes it with
        :func:`captum_unicam.output.publish.publish_folder`).

        Returns:
            *list[str]*: the files written, relative to ``folder``.
        """
        # lazy: the report module pulls the whole evaluation stack
        from captum_unicam.output.report import to_jsonable, versions
        from captum_unicam.viz import save_figure

        folder = Path(folder)
        (folder / "tables").mkdir(parents=True, exist_ok=True)
        (folder / "figures").mkdir(exist_ok=True)
        written = []
        tables = self.tables
        for name, t in tables.items():
            for ext in ("md", "csv"):
                (folder / "tables" / f"{name}.{ext}").write_text(t[ext], encoding="utf-8")
                written.append(f"tables/{name}.{ext}")
        for name, fig in self.figures.items():
            save_figure(fig, folder / "figures" / f"{name}.png", dpi=dpi)
            written.append(f"figures/{name}.png")
        doc = {"format": REPORT_FORMAT, "title": title, "command": command, "notes": list(notes),
               **self.metrics, "versions": versions()}
        (folder / "metrics.json").write_text(json.dumps(to_jsonable(doc), indent=1) + "\n",
                                             encoding="utf-8")
        written.append("metrics.json")
        page = _index_html(title, command, notes, tables, written, versions())
        (folder / "index.html").write_text(page, encoding="utf-8")
        written.append("index.html")
        return written


# The sections of compare's page: (heading, what the section's numbers mean).
_SECTIONS = {
    "maps": ("Maps", "The first images, every method's map (upsampled to the image)."),
    "localisation": ("Localisation", "Share of each map's positive mass inside each ground-truth "
                     "mask, and the pointing game (is the map's largest pixel inside?), 95 % "
                     "bootstrap intervals over images."),
    "road": ("ROAD", "Accuracy of the explained model after replacing the given share of pixels, "
             "most relevant first (MoRF: lower is more faithful) or least relevant first (LeRF: "
             "higher is more faithful), by noisy linear imputation; 95 % bootstrap intervals over "
             "images."),
    "sanity": ("Sanity checks", "Similarity of each method's maps to the intact model's after "
               "re-initialising the model's blocks from the top down (cumulatively), or for a "
               "model trained on random labels. A map that stays similar does not depend on what "
               "the model learned."),
}
_CSS = ("body{font-family:sans-serif;max-width:70em;margin:1em auto}table{border-collapse:collapse;"
        "font-size:0.85em}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}")


def _index_html(title: str, command: str, notes: Sequence[str],
                tables: Mapping[str, Mapping[str, str]], written: Sequence[str],
                versions: Mapping[str, str]) -> str:
    """compare's ``index.html`` in the page template of :mod:`captum_unicam.output.html`."""
    e = html.escape
    sections, meanings = [], []
    for name, (head, text) in _SECTIONS.items():
        fig = f"figures/{name}.png"
        if name not in tables and fig not in written:
            continue
        sections.append(f"<h2>{e(head)}</h2>" + PARA.substitute(cls="note", text=e(text)))
        meanings.append(f"<dt>{e(head)}</dt><dd>{e(text)}</dd>")
        if fig in written:
            sections.append(f'<img src="{fig}" alt="{e(head)}">')
        if name in tables:
            sections.append(markdown_to_html(tables[name]["md"]))
            sections.append(f'<p><a href="tables/{name}.csv">{name}.csv</a></p>')
    rows = "\n".join(f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in versions.items())
    return PAGE.substitute(
        title=e(title), css=_CSS, nav="", warnings="",
        notes="\n".join(f"<p>{e(n)}</p>" for n in notes),
        sections="\n".join(sections), meanings="\n".join(meanings),
        links='<p>All numbers: <a href="metrics.json">metrics.json</a>.</p>',
        versions=rows, command=e(command),
    )
