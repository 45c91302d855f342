r"""Sanity checks for saliency maps (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018): does a map change when the model it explains is destroyed?

- :func:`cascading_randomisation`: re-initialises a model's parameters block by block from
  the top (the classifier) down to the stem, and after each block measures how similar
  each method's maps stay to the maps of the intact model. A method whose maps survive
  the randomisation of the whole model does not explain the model.
- :func:`label_randomisation`: the same similarity between the maps of a model and those
  of a copy trained on randomly permuted labels (the data randomisation test); training
  that copy is up to the caller.
- :func:`spearman` and :func:`ssim`: the two similarities, per image, on maps upsampled
  to the input size: Spearman's rank correlation of the absolute maps, and the structural
  similarity (SSIM, Wang et al. 2004) of the absolute maps scaled by their maximum, with
  a Gaussian window (sigma 1.5, 11 pixels), as ``skimage.metrics.structural_similarity``
  with ``gaussian_weights=True, use_sample_covariance=False, data_range=1``.

Methods are Captum ``Attribution`` objects (``LayerGradCam``, ``IntegratedGradients``,
:class:`~captum_unicam.UniCAM`, your own), optionally with keyword arguments of their
``attribute`` call: ``{"distilled": (unicam, {"features": "distilled"}), "grad-cam":
(LayerGradCam(student, student.layer4), {"relu_attributions": True})}``. To randomise a
model, the methods and the model are deep-copied together, so every method that calls
the model (as its ``forward_func``, or UniCAM's ``base_forward_func``) explains the
randomised copy; the caller's model and methods are never changed.

Why not Quantus: Quantus 0.6 (``pip install captum-unicam[eval]``) installs next to
torch 2.14 and its ``MPRT`` and ``RandomLogit`` run offline with a Captum explanation
function, but it randomises one parameterised module at a time (25 steps for a small
ResNet, not the stages L1..L4 that UniCAM's maps are read at), it randomises a single
model while UniCAM's maps depend on two, and it pulls pandas, OpenCV and scikit-image
into the environment. The tests use it as an independent oracle when it is installed.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from captum_unicam.errors import InputError

__all__ = [
    "SanityResult",
    "attribute_maps",
    "cascading_randomisation",
    "label_randomisation",
    "randomisation_blocks",
    "spearman",
    "ssim",
]

MethodSpec = Union[Any, Tuple[Any, Mapping[str, Any]]]
METRICS = ("spearman", "ssim")
_METRIC_TITLES = {"spearman": "Spearman rank correlation", "ssim": "SSIM"}
_MIN_BATCH = 4  # UniCAM's scores are batch statistics of at least 4 images
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = int(3.5 * _SSIM_SIGMA + 0.5)  # skimage's truncation: 11-pixel window


# ---------------------------------------------------------------------------
# similarities
# ---------------------------------------------------------------------------


def _pair(a: Tensor, b: Tensor, func: str) -> Tuple[Tensor, Tensor]:
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, Tensor):
            raise InputError(f"{func}: `{name}` must be a tensor of maps (N, 1, H, W), got {type(t).__name__}.")
    if a.shape != b.shape or a.dim() not in (3, 4) or (a.dim() == 4 and a.shape[1] != 1):
        raise InputError(
            f"{func}: `a` and `b` must be maps of the same shape (N, 1, H, W) or (N, H, W); got "
            f"{tuple(a.shape)} and {tuple(b.shape)}. Upsample them to one size first.")
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        raise InputError(f"{func}: the maps contain NaN or Inf; replace them (torch.nan_to_num) first.")
    if a.dim() == 4:
        a, b = a[:, 0], b[:, 0]
    return a, b


def _ranks(x: Tensor) -> Tensor:
    """Average ranks (1-based, ties share the mean of their ranks) along dim 1."""
    n, m = x.shape
    order = torch.argsort(x, dim=1, stable=True)
    sorted_x = torch.gather(x, 1, order)
    # start of each run of equal values, then mean rank of the run
    new = torch.ones_like(sorted_x, dtype=torch.bool)
    new[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    run = torch.cumsum(new, dim=1) - 1  # run id per sorted position
    pos = torch.arange(1, m + 1, dtype=x.dtype).expand(n, m)
    total = torch.zeros(n, m, dtype=x.dtype).scatter_add_(1, run, pos)
    count = torch.zeros(n, m, dtype=x.dtype).scatter_add_(1, run, torch.ones_like(pos))
    mean_rank = torch.gather(total / count.clamp_min(1), 1, run)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    r"""Spearman's rank correlation of the absolute values of two maps, per image.

    Args:
        a, b (Tensor): maps of the same shape ``(N, 1, H, W)`` or ``(N, H, W)``.

    Returns:
        *Tensor*: ``(N,)`` float64; NaN for an image where either map is constant (a
        rank correlation is undefined there).

    Examples::

        >>> spearman(maps, randomised_maps).nanmean()
    """
    a, b = _pair(a, b, "spearman")
    ra, rb = _ranks(a.abs().flatten(1)), _ranks(b.abs().flatten(1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    out = (ra * rb).sum(1) / den
    return torch.where(den > 0, out, torch.full_like(out, math.nan))


def _gauss_filter(x: Tensor) -> Tensor:
    """Separable Gaussian filter (sigma 1.5, radius 5), 'valid' part only: (N, H-10, W-10)."""
    r = _SSIM_RADIUS
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / _SSIM_SIGMA) ** 2)
    k = k / k.sum()
    y = torch.nn.functional.conv2d(x.unsqueeze(1), k.view(1, 1, 1, -1))
    return torch.nn.functional.conv2d(y, k.view(1, 1, -1, 1))[:, 0]


def ssim(a: Tensor, b: Tensor) -> Tensor:
    r"""Structural similarity of two maps, per image, after taking absolute values and
    dividing each map by its maximum (an all-zero map stays zero).

    The same number as ``skimage.metrics.structural_similarity(a, b, data_range=1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``: local means,
    variances and covariance under a Gaussian window, averaged over the pixels at least
    5 pixels from the border.

    Args:
        a, b (Tensor): maps of the same shape ``(N, 1, H, W)`` or ``(N, H, W)``,
                    ``H, W >= 11``.

    Returns:
        *Tensor*: ``(N,)`` float64 in [-1, 1]; 1 for identical maps.
    """
    a, b = _pair(a, b, "ssim")
    if min(a.shape[-2:]) < 2 * _SSIM_RADIUS + 1:
        raise InputError(
            f"ssim: maps must be at least {2 * _SSIM_RADIUS + 1} pixels high and wide (the Gaussian "
            f"window), got {tuple(a.shape[-2:])}; upsample them to the input size first.")

    def scaled(x: Tensor) -> Tensor:
        x = x.abs()
        return x / x.flatten(1).amax(1).clamp_min(1e-300).view(-1, 1, 1)

    x, y = scaled(a), scaled(b)
    c1, c2 = 0.01**2, 0.03**2
    ux, uy = _gauss_filter(x), _gauss_filter(y)
    vx = _gauss_filter(x * x) - ux * ux
    vy = _gauss_filter(y * y) - uy * uy
    vxy = _gauss_filter(x * y) - ux * uy
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


# ---------------------------------------------------------------------------
# methods and maps
# ---------------------------------------------------------------------------


def _methods(methods: Any) -> Dict[str, Tuple[Any, Dict[str, Any]]]:
    from captum.attr._utils.attribution import Attribution

    if not isinstance(methods, Mapping) or not methods:
        raise InputError(
            "`methods` must be a non-empty dict name -> Captum Attribution (or (attribution, "
            "attribute kwargs)), e.g. {'grad-cam': (LayerGradCam(model, model.layer4), "
            "{'relu_attributions': True})}.")
    out = {}
    for name, spec in methods.items():
        attr, kwargs = (spec if isinstance(spec, tuple) and len(spec) == 2 else (spec, {}))
        if not isinstance(attr, Attribution):
            raise InputError(
                f"methods[{name!r}] must be a Captum Attribution object (LayerGradCam, "
                f"IntegratedGradients, UniCAM, ...) or a pair (attribution, kwargs); got "
                f"{type(attr).__name__}.")
        if not isinstance(kwargs, Mapping):
            raise InputError(f"methods[{name!r}]: the attribute kwargs must be a dict, got {type(kwargs).__name__}.")
        out[str(name)] = (attr, dict(kwargs))
    return out


def _as_map(attr: Any, inputs: Tensor) -> Tensor:
    """(N, 1, H, W) float64 CPU map on the input grid: a 1-tuple is unpacked, input
    attributions are summed over channels, layer maps upsampled (bilinear)."""
    from captum_unicam.viz import upsample_maps

    if isinstance(attr, tuple):
        if len(attr) != 1:
            raise InputError(f"a method returned {len(attr)} attributions; give it one input tensor.")
        attr = attr[0]
    attr = attr.detach()
    if attr.dim() == 3:
        attr = attr.unsqueeze(1)
    if attr.dim() != 4:
        raise InputError(f"a method returned attributions of shape {tuple(attr.shape)}; expected (N, C, h, w).")
    if attr.shape[1] != 1:
        attr = attr.sum(1, keepdim=True)
    return upsample_maps(attr.float(), inputs.shape[-2:]).double()


def _batches(n: int, batch_size: int) -> List[slice]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < _MIN_BATCH:
        raise InputError(f"batch_size must be an int >= {_MIN_BATCH}, got {batch_size!r}.")
    if n < _MIN_BATCH:
        raise InputError(f"`inputs` holds {n} images; the checks need at least {_MIN_BATCH}.")
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < _MIN_BATCH:
        starts.pop()  # a short last batch joins the one before (UniCAM needs >= 4 images)
    ends = starts[1:] + [n]
    return [slice(s, e) for s, e in zip(starts, ends)]


def attribute_maps(methods: Mapping[str, MethodSpec], inputs: Tensor, target: Any = None, *,
                   batch_size: int = 64) -> Dict[str, Tensor]:
    r"""Maps of every method on the same images, upsampled to the input size.

    Args:
        methods (dict): name -> Captum ``Attribution`` or ``(attribution, kwargs)``.
        inputs (Tensor): ``(N, C, H, W)`` images.
        target (int, list or Tensor, optional): as in Captum (one class per image).
        batch_size (int, optional): images per ``attribute`` call (UniCAM's context is the
                    batch; a last batch of fewer than 4 images joins the previous one).
                    Default: 64

    Returns:
        *dict[str, Tensor]*: name -> ``(N, 1, H, W)`` float64 CPU maps (input attributions
        summed over channels).
    """
    specs = _methods(methods)
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        raise InputError(f"`inputs` must be a (N, C, H, W) tensor, got {getattr(inputs, 'shape', type(inputs))}.")
    n = inputs.shape[0]
    parts = _batches(n, batch_size)
    if isinstance(target, Tensor) and target.dim() > 0 and target.shape[0] != n:
        raise InputError(f"`target` holds {target.shape[0]} labels for {n} images.")
    out: Dict[str, List[Tensor]] = {name: [] for name in specs}
    for sl in parts:
        x = inputs[sl]
        t = target[sl] if isinstance(target, (Tensor, list)) and not (isinstance(target, Tensor) and target.dim() == 0) else target
        for name, (attr, kwargs) in specs.items():
            out[name].append(_as_map(attr.attribute(x, target=t, **kwargs), x))
    return {name: torch.cat(v) for name, v in out.items()}


# ---------------------------------------------------------------------------
# randomisation
# ---------------------------------------------------------------------------


def randomisation_blocks(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    r"""The default blocks of the cascade: the model's direct children that hold
    parameters, from the last (the classifier) to the first (the stem). For a ResNet:
    ``fc, layer4, layer3, layer2, layer1, bn1, conv1``."""
    if not isinstance(model, nn.Module):
        raise InputError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    blocks = [(n, m) for n, m in model.named_children() if any(True for _ in m.parameters())]
    if not blocks:
        raise InputError("`model` has no child module with parameters to randomise; pass `blocks`.")
    return blocks[::-1]


def _refers_to(obj: Any, target: nn.Module, depth: int = 3) -> bool:
    if obj is target:
        return True
    if depth == 0 or isinstance(obj, nn.Module):
        return False
    values: Iterable[Any] = vars(obj).values() if hasattr(obj, "__dict__") else ()
    return any(_refers_to(v, target, depth - 1) for v in values)


def _reset(block: nn.Module) -> None:
    for m in block.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def _bootstrap(values: np.ndarray, n_bootstrap: int, seed: int, confidence: float) -> Dict[str, Any]:
    from captum_unicam.metrics.intervals import bootstrap_ci

    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    low, high = bootstrap_ci(v, n_bootstrap=n_bootstrap, seed=seed, level=confidence)
    return {"mean": float(v.mean()), "low": low, "high": high, "n": int(v.size)}


def _rows(check: str, step: int, block: str, maps: Dict[str, Tensor], reference: Dict[str, Tensor],
          n_bootstrap: int, seed: int, confidence: float) -> List[Dict[str, Any]]:
    rows = []
    for name, m in maps.items():
        row: Dict[str, Any] = {"check": check, "step": step, "randomised": block, "method": name}
        for metric, fn in (("spearman", spearman), ("ssim", ssim)):
            vals = fn(reference[name], m).numpy()
            row[metric] = _bootstrap(vals, n_bootstrap, seed, confidence)
            row[f"{metric}_undefined"] = int((~np.isfinite(vals)).sum())
        if row["spearman_undefined"]:
            warnings.warn(
                f"{check}: {row['spearman_undefined']} of {m.shape[0]} maps of {name!r} (randomised: "
                f"{block}) or of the intact model are constant (e.g. all zero after ReLU); their "
                "Spearman correlation is undefined and left out of the mean (see `spearman_undefined`).",
                stacklevel=3)
        rows.append(row)
    return rows


def _check_common(n_bootstrap: Any, confidence: Any) -> None:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 1:
        raise InputError(f"n_bootstrap must be a positive int, got {n_bootstrap!r}.")
    if not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence!r}.")


def cascading_randomisation(
    model: nn.Module,
    methods: Mapping[str, MethodSpec],
    inputs: Tensor,
    target: Any = None,
    *,
    blocks: Optional[Sequence[str]] = None,
    batch_size: int = 64,
    seed: int = 0,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    check: Optional[str] = None,
) -> "SanityResult":
    r"""Cascading model parameter randomisation (Adebayo et al. 2018, Sec. 3.1).

    Re-initialises (``reset_parameters``, seeded) the parameters of ``model``'s blocks one
    after the other, top first, cumulatively; after each block, every method explains the
    same images again and its maps are compared with those of the intact model (Spearman
    and SSIM per image, mean with a percentile bootstrap interval over images). Step 0
    compares the intact model's maps with themselves (1 unless a map is constant).

    Args:
        model (nn.Module): The model to randomise (e.g. the Student or the Base).
        methods (dict): name -> Captum ``Attribution`` or ``(attribution, kwargs)``; each
                    must call ``model`` itself (its ``forward_func``, or UniCAM's
                    ``base_forward_func``), not a wrapper function.
        inputs (Tensor): ``(N, C, H, W)`` images, N >= 4.
        target (int, list or Tensor, optional): Classes explained (the true labels,
                    usually); the same for the intact and the randomised models.
        blocks (list of str, optional): Names of ``model``'s submodules, in the order in
                    which they are randomised. Default: :func:`randomisation_blocks`
                    (classifier first, stem last).
        batch_size (int, optional): Images per attribution call. Default: 64
        seed (int, optional): Seed of the re-initialisation (block ``i`` uses
                    ``seed + i``) and of the bootstrap. Default: 0
        n_bootstrap (int, optional): Bootstrap resamples. Default: 1000
        confidence (float, optional): Interval level. Default: 0.95
        check (str, optional): Name of the check in the result. Default: "randomised
                    <model class>"

    Returns:
        *SanityResult*: one row per (step, method) with ``spearman`` and ``ssim`` intervals.

    Examples::

        >>> from captum.attr import LayerGradCam
        >>> from captum_unicam import UniCAM
        >>> unicam = UniCAM(student, student.layer4, base, base.layer4)
        >>> result = cascading_randomisation(student, {
        ...     "UniCAM distilled": (unicam, {"features": "distilled"}),
        ...     "Grad-CAM": (LayerGradCam(student, student.layer4), {"relu_attributions": True}),
        ... }, x, target=y, check="Student randomised")
        >>> print(result.to_markdown())
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    specs = _methods(methods)
    _check_common(n_bootstrap, confidence)
    named = dict(model.named_modules())
    names = [n for n, _ in randomisation_blocks(model)] if blocks is None else list(blocks)
    bad = [b for b in names if not isinstance(b, str) or b not in named or b == ""]
    if not names or bad:
        raise InputError(f"blocks {bad or names!r} are not submodules of `model`; choose among "
                         f"{[n for n, _ in model.named_children()]}.")
    # copy the model and the methods together: the copied methods call the copied model
    memo: Dict[int, Any] = {}
    model_copy = copy.deepcopy(model, memo)
    specs_copy = copy.deepcopy(specs, memo)
    for name, (attr, _) in specs_copy.items():
        if not _refers_to(attr, model_copy):
            raise InputError(
                f"methods[{name!r}] does not call `model` directly (its forward function is another "
                "module, a lambda or a bound method), so randomising `model` cannot change its maps; "
                "build it on the nn.Module itself, e.g. LayerGradCam(model, model.layer4).")
    check = check or f"randomised {type(model).__name__}"
    reference = attribute_maps(specs, inputs, target, batch_size=batch_size)
    rows = _rows(check, 0, "none", reference, reference, n_bootstrap, seed, confidence)
    copied = dict(model_copy.named_modules())
    with torch.random.fork_rng(devices=[]):
        for i, block in enumerate(names, start=1):
            torch.manual_seed(seed + i)
            _reset(copied[block])
            maps = attribute_maps(specs_copy, inputs, target, batch_size=batch_size)
            rows += _rows(check, i, block, maps, reference, n_bootstrap, seed, confidence)
    return SanityResult(rows)


def label_randomisation(
    methods: Mapping[str, MethodSpec],
    random_label_methods: Mapping[str, MethodSpec],
    inputs: Tensor,
    target: Any = None,
    *,
    batch_size: int = 64,
    seed: int = 0,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    check: str = "random labels",
) -> "SanityResult":
    r"""Data randomisation test (Adebayo et al. 2018, Sec. 3.2): similarity between the
    maps of each method on the trained model and on a model of the same architecture
    trained on randomly permuted labels.

    Args:
        methods (dict): name -> ``Attribution`` or ``(attribution, kwargs)`` on the model
                    trained on true labels.
        random_label_methods (dict): The same names, built on the random-label model.
        inputs, target, batch_size, seed, n_bootstrap, confidence: As in
                    :func:`cascading_randomisation`.
        check (str, optional): Name of the check. Default: "random labels"

    Returns:
        *SanityResult*: step 0 ("none", the maps against themselves) and step 1
        ("labels").
    """
    specs, rand = _methods(methods), _methods(random_label_methods)
    if set(specs) != set(rand):
        raise InputError(f"`methods` and `random_label_methods` must have the same names; got "
                         f"{sorted(specs)} and {sorted(rand)}.")
    _check_common(n_bootstrap, confidence)
    reference = attribute_maps(specs, inputs, target, batch_size=batch_size)
    maps = attribute_maps(rand, inputs, target, batch_size=batch_size)
    rows = _rows(check, 0, "none", reference, reference, n_bootstrap, seed, confidence)
    rows += _rows(check, 1, "labels", maps, reference, n_bootstrap, seed, confidence)
    return SanityResult(rows)


# ---------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------


def _fmt(d: Optional[Mapping[str, Any]]) -> str:
    if not d or d.get("mean") is None:
        return "–"
    return f"{d['mean']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


class SanityResult:
    r"""Rows of a sanity check: ``check``, ``step``, ``randomised`` (the block randomised
    last, cumulatively; "none" at step 0), ``method``, ``spearman`` and ``ssim``
    (``{"mean", "low", "high", "n"}`` over images) and ``spearman_undefined`` /
    ``ssim_undefined`` (images left out). Results add up: ``a + b``."""

    def __init__(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.rows: List[Dict[str, Any]] = [dict(r) for r in rows]

    def __add__(self, other: "SanityResult") -> "SanityResult":
        return SanityResult(self.rows + other.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def value(self, check: str, randomised: str, method: str, metric: str = "spearman") -> Optional[float]:
        """The mean of one cell (None when no image had a defined value)."""
        for r in self.rows:
            if (r["check"], r["randomised"], r["method"]) == (check, randomised, method):
                return r[metric]["mean"]
        raise KeyError(f"no row for check={check!r}, randomised={randomised!r}, method={method!r}")

    def to_dict(self) -> Dict[str, Any]:
        return {"rows": copy.deepcopy(self.rows)}

    _HEADER = ("check", "step", "randomised (cumulative)", "method", "Spearman [95% CI]", "SSIM [95% CI]",
               "images", "undefined Spearman")

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self._HEADER) + " |", "|" + "---|" * len(self._HEADER)]
        for r in self.rows:
            cells = [r["check"], str(r["step"]), r["randomised"], r["method"], _fmt(r["spearman"]), _fmt(r["ssim"]),
                     str(r["ssim"]["n"]), str(r["spearman_undefined"])]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["check", "step", "randomised", "method", "spearman", "spearman_low", "spearman_high",
                    "ssim", "ssim_low", "ssim_high", "images", "spearman_undefined"])
        for r in self.rows:
            w.writerow([r["check"], r["step"], r["randomised"], r["method"],
                        *(r[m][k] for m in METRICS for k in ("mean", "low", "high")),
                        r["ssim"]["n"], r["spearman_undefined"]])
        return buf.getvalue()

    def figure(self, title: str = "Sanity checks: similarity to the intact model's maps"):
        r"""Curves per check (columns) and similarity (rows): x = blocks randomised
        cumulatively, y = mean similarity with its 95 % interval, one line per method.

        Returns:
            *matplotlib.figure.Figure* (Agg; save it with ``fig.savefig``).
        """
        from captum_unicam.viz import _new_figure

        checks = list(dict.fromkeys(r["check"] for r in self.rows))
        if not checks:
            raise InputError("an empty SanityResult has nothing to draw.")
        fig = _new_figure((3.6 * len(checks) + 1.2, 5.4))
        axes = fig.subplots(2, len(checks), squeeze=False)
        for j, check in enumerate(checks):
            rows = [r for r in self.rows if r["check"] == check]
            steps = sorted({r["step"] for r in rows})
            labels = {r["step"]: r["randomised"] for r in rows}
            for i, metric in enumerate(METRICS):
                ax = axes[i][j]
                for method in dict.fromkeys(r["method"] for r in rows):
                    pts = sorted((r["step"], r[metric]) for r in rows if r["method"] == method)
                    xs = [s for s, d in pts if d["mean"] is not None]
                    mean = [d["mean"] for _, d in pts if d["mean"] is not None]
                    low = [d["low"] for _, d in pts if d["mean"] is not None]
                    high = [d["high"] for _, d in pts if d["mean"] is not None]
                    line, = ax.plot(xs, mean, marker="o", ms=3, label=method)
                    ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, lw=0)
                ax.axhline(0.0, color="0.6", lw=0.6)
                ax.set_xticks(steps)
                ax.set_xticklabels([labels[s] for s in steps], rotation=45, ha="right", fontsize=7)
                ax.set_ylim(-0.3 if metric == "spearman" else -0.05, 1.05)
                if j == 0:
                    ax.set_ylabel(_METRIC_TITLES[metric], fontsize=8)
                if i == 0:
                    ax.set_title(check, fontsize=9)
            axes[0][j].legend(fontsize=6, loc="lower left")
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        return fig
