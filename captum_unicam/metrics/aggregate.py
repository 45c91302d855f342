r"""FSS and RS over a data set: ``evaluate_kd`` and its result, ``KDEvaluation``.

For a Student/Base pair, each layer (L1..L4) and each kind of saliency map,
:func:`evaluate_kd` computes on every batch of a DataLoader

- ``fss``: :math:`\mathcal{R}^{*2}(\hat x_s, \hat x_b)` (paper Eq. 8);
- ``rs_base`` / ``rs_student``: :math:`\mathcal{R}^{*2}(\hat x_b, Y)` /
  :math:`\mathcal{R}^{*2}(\hat x_s, Y)` (Eq. 9);
- ``rs_distilled``: :math:`\mathcal{R}^*(\hat x_s, Y; \hat x_b)`, the relevance of what
  only the Student encodes; ``rs_residual``: :math:`\mathcal{R}^*(\hat x_b, Y; \hat x_s)`,
  of what only the Base encodes (partial distance correlations);

and summarises them over batches: mean (the paper's statistic), a percentile bootstrap
95 % interval, and one-sided paired permutation p-values for "RS Student > RS Base" and
"RS distilled > RS residual". Under ``torch.distributed`` the batches are shared between
ranks and the result equals a one-process run over the same batches.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from captum_unicam import stats
from captum_unicam.metrics.fss import (
    MIN_BATCH,
    _check_estimator,
    _check_inputs,
    _check_perturb_func,
    dcor_sqr,
    layer_features,
    layers_features,
    mask_multiply,
    perturb,
)
from captum_unicam.metrics.rs import _check_label_embeddings, label_vectors

__all__ = [
    "evaluate_kd",
    "KDEvaluation",
    "bootstrap_ci",
    "paired_permutation_pvalue",
    "MAP_KINDS",
    "METRICS",
]

#: Kinds of saliency map, and which map perturbs the input of each model.
MAP_KINDS = ("none", "gradcam", "distilled", "residual")
KIND_TITLES = {
    "none": "none (raw)",
    "gradcam": "Grad-CAM",
    "distilled": "UniCAM distilled",
    "residual": "UniCAM residual",
}
#: Per-batch statistics, in table order.
METRICS = ("fss", "rs_base", "rs_student", "rs_distilled", "rs_residual")
METRIC_TITLES = {
    "fss": "FSS",
    "rs_base": "RS Base",
    "rs_student": "RS Student",
    "rs_distilled": "RS distilled",
    "rs_residual": "RS residual",
}
_SERIES = {
    "fss": "Student vs Base",
    "rs_base": "Base",
    "rs_student": "Student",
    "rs_distilled": "distilled",
    "rs_residual": "residual",
}
_FORMAT = "captum-unicam/kd-evaluation"
_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------
# Interval and test
# ---------------------------------------------------------------------------


def bootstrap_ci(values: Sequence[float], n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> Tuple[float, float]:
    r"""Percentile bootstrap interval of the mean of ``values``.

    Draws ``n_bootstrap`` resamples of the ``k`` values with replacement (indices from
    ``numpy.random.default_rng(seed).integers(0, k, (n_bootstrap, k))``) and returns the
    :math:`(1-\text{level})/2` and :math:`(1+\text{level})/2` quantiles of their means.
    One value gives the degenerate interval (v, v).

    Returns:
        tuple[float, float]: (low, high).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty 1-D sequence of values.")
    if v.size == 1:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_bootstrap, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_permutation_pvalue(a: Sequence[float], b: Sequence[float], n_permutations: int = 10000, seed: int = 0) -> float:
    r"""One-sided paired permutation p-value for "mean of a > mean of b".

    The paired differences :math:`d_i = a_i - b_i` (one per batch) have their signs
    flipped at random; the p-value is the share of sign patterns whose mean difference
    is at least the observed one. When :math:`2^k \le` ``n_permutations`` all
    :math:`2^k` patterns are enumerated (exact test; its smallest p-value is
    :math:`2^{-k}`); otherwise ``n_permutations`` random patterns are drawn with
    ``numpy.random.default_rng(seed)`` and :math:`p = (1 + \#\{\ge\}) / (1 + B)`.
    Identical ``a`` and ``b`` give 1.

    Returns:
        float: the p-value in (0, 1].
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError("paired_permutation_pvalue needs two equal-length, non-empty 1-D sequences.")
    k = d.size
    observed = d.mean()
    tol = 1e-9 * float(np.abs(d).mean())  # rounding of equal sums in another order
    if 2**k <= n_permutations:
        codes = np.arange(2**k)[:, None] >> np.arange(k)[None, :] & 1
        signs = 1.0 - 2.0 * codes
        return float(((signs * d).mean(axis=1) >= observed - tol).mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_permutations, k))
    hits = int(((signs * d).mean(axis=1) >= observed - tol).sum())
    return (1 + hits) / (1 + n_permutations)


# ---------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------


def _write_atomic(path: Union[str, os.PathLike], text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class KDEvaluation:
    r"""Per-batch FSS / RS values of a Student/Base pair, with summaries and tables.

    Attributes:
        layers (list[str]): layer names, in the order given to :func:`evaluate_kd`.
        map_kinds (list[str]): map kinds evaluated (see :func:`evaluate_kd`).
        values (dict): ``values[layer][kind][metric]`` is the list of per-batch values,
                    in batch order; metrics are :data:`METRICS`.
        batch_indices (list[int]): index of each evaluated batch in the loader.
        batch_sizes (list[int]): its number of samples.
        skipped_batches (list[int]): indices of batches skipped for having fewer than 4
                    samples.
        settings (dict): estimator, perturbation, label vectors, bootstrap and
                    permutation settings, seed, world size.
    """

    layers: List[str]
    map_kinds: List[str]
    values: Dict[str, Dict[str, Dict[str, List[float]]]]
    batch_indices: List[int]
    batch_sizes: List[int]
    skipped_batches: List[int] = field(default_factory=list)
    settings: Dict[str, Any] = field(default_factory=dict)

    def per_batch(self, layer: str, kind: str, metric: str) -> np.ndarray:
        """Per-batch values of one metric, as a float64 array."""
        return np.asarray(self.values[layer][kind][metric], dtype=np.float64)

    def summary(self, n_bootstrap: Optional[int] = None, n_permutations: Optional[int] = None, seed: Optional[int] = None) -> Dict[str, Any]:
        r"""Mean, bootstrap 95 % interval and permutation p-values per layer and map kind.

        Defaults for ``n_bootstrap``, ``n_permutations`` and ``seed`` come from
        ``settings``; the same seed gives the same numbers.

        Returns:
            dict: two views of the same numbers.

            - ``"by_layer"``: ``[layer][kind]`` holds, for each metric of
              :data:`METRICS`, an interval ``{"mean", "low", "high"}`` (the one interval
              type of the library: localisation uses it too), and ``"n_batches"``,
              ``"p_student_gt_base"`` (one-sided paired permutation p-value over
              batches for RS Student > RS Base) and ``"p_distilled_gt_residual"``
              (RS distilled > RS residual);
            - ``"rows"``: one flat record per (layer, map, statistic): ``{"layer",
              "map", "metric": "FSS"|"RS", "key": "fss"|"rs_base"|..., "series":
              "Student vs Base"|"Base"|"Student"|"distilled"|"residual", "mean", "low",
              "high", "n_batches"}`` (for plotting), and the RS Student row carries ``"p"`` (Student > Base) and the RS distilled row
              ``"p"`` (distilled > residual).
        """
        nb = int(n_bootstrap if n_bootstrap is not None else self.settings.get("n_bootstrap", 1000))
        nperm = int(n_permutations if n_permutations is not None else self.settings.get("n_permutations", 10000))
        sd = int(seed if seed is not None else self.settings.get("seed", 0))
        by_layer: Dict[str, Dict[str, Dict[str, Any]]] = {}
        rows: List[Dict[str, Any]] = []
        k = len(self.batch_indices)
        for layer in self.layers:
            by_layer[layer] = {}
            for kind in self.map_kinds:
                entry: Dict[str, Any] = {"n_batches": k}
                for metric in METRICS:
                    v = self.per_batch(layer, kind, metric)
                    lo, hi = bootstrap_ci(v, nb, sd)
                    entry[metric] = {"mean": float(v.mean()), "low": lo, "high": hi}
                entry["p_student_gt_base"] = paired_permutation_pvalue(
                    self.per_batch(layer, kind, "rs_student"), self.per_batch(layer, kind, "rs_base"), nperm, sd
                )
                entry["p_distilled_gt_residual"] = paired_permutation_pvalue(
                    self.per_batch(layer, kind, "rs_distilled"), self.per_batch(layer, kind, "rs_residual"), nperm, sd
                )
                by_layer[layer][kind] = entry
                for metric in METRICS:
                    e = entry[metric]
                    row = {
                        "layer": layer,
                        "map": kind,
                        "metric": "FSS" if metric == "fss" else "RS",
                        "key": metric,
                        "series": _SERIES[metric],
                        "mean": e["mean"],
                        "low": e["low"],
                        "high": e["high"],
                        "n_batches": k,
                    }
                    if metric == "rs_student":
                        row["p"] = entry["p_student_gt_base"]
                    if metric == "rs_distilled":
                        row["p"] = entry["p_distilled_gt_residual"]
                    rows.append(row)
        return {"by_layer": by_layer, "rows": rows}

    # -- serialisation ----------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        """Everything, plus the summary, as JSON-ready Python objects."""
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "layers": list(self.layers),
            "map_kinds": list(self.map_kinds),
            "metrics": list(METRICS),
            "batch_indices": list(self.batch_indices),
            "batch_sizes": list(self.batch_sizes),
            "skipped_batches": list(self.skipped_batches),
            "settings": dict(self.settings),
            "values": self.values,
            "summary": self.summary(),
        }

    def to_json(self, path: Optional[Union[str, os.PathLike]] = None, indent: int = 2) -> str:
        """JSON text of :meth:`to_dict`; also written atomically to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            _write_atomic(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, source: Union[str, os.PathLike]) -> "KDEvaluation":
        """Read what :meth:`to_json` wrote: a file path, or the JSON text itself."""
        if isinstance(source, str) and source.lstrip().startswith("{"):
            data = json.loads(source)
        else:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        if data.get("format") != _FORMAT:
            raise ValueError(f"not a KDEvaluation JSON (format {data.get('format')!r}, expected {_FORMAT!r}).")
        return cls(
            layers=list(data["layers"]),
            map_kinds=list(data["map_kinds"]),
            values={
                layer: {kind: {m: [float(x) for x in vals] for m, vals in km.items()} for kind, km in lk.items()}
                for layer, lk in data["values"].items()
            },
            batch_indices=[int(i) for i in data["batch_indices"]],
            batch_sizes=[int(i) for i in data["batch_sizes"]],
            skipped_batches=[int(i) for i in data.get("skipped_batches", [])],
            settings=dict(data.get("settings", {})),
        )

    # -- tables -----------------------------------------------------------

    def _rows(self) -> List[Tuple[str, str, Dict[str, Any]]]:
        s = self.summary()["by_layer"]
        return [(layer, kind, s[layer][kind]) for layer in self.layers for kind in self.map_kinds]

    def _paper_columns(self) -> List[Tuple[str, str, str]]:
        """(title, kind, metric) of the paper's Table 1 columns."""
        cols = [
            ("Layer-specific: Base", "gradcam", "rs_base"),
            ("Layer-specific: Student", "gradcam", "rs_student"),
            ("Residual: Base", "residual", "rs_base"),
            ("Distilled: Student", "distilled", "rs_student"),
        ]
        missing = sorted({k for _, k, _ in cols} - set(self.map_kinds))
        if missing:
            raise ValueError(
                f"layout='paper' needs the map kinds gradcam, distilled and residual; missing {missing}."
            )
        return cols

    def _footnote(self) -> str:
        st = self.settings
        return (
            f"Mean over {len(self.batch_indices)} batches ± half the width of the 95 % bootstrap "
            f"interval ({st.get('n_bootstrap', '?')} resamples of the batches, seed {st.get('seed', '?')}). "
            f"p: one-sided paired permutation test over batches. Estimator {st.get('estimator', '?')!r}, "
            f"perturbation {st.get('perturb_func', '?')}, labels {st.get('label_embeddings', '?')}."
        )

    def to_markdown(
        self, path: Optional[Union[str, os.PathLike]] = None, digits: int = 4, layout: str = "full"
    ) -> str:
        r"""Table 1 of the paper as Markdown, written atomically to ``path`` if given.

        Cells are ``mean ± h``, ``h`` half the width of the 95 % bootstrap interval over
        batches (the exact bounds are in :meth:`to_csv` and :meth:`to_json`).

        Args:
            path (str or path-like, optional): file to write.
            digits (int, optional): decimals. Default: 4.
            layout (str, optional): ``"full"`` (default): one row per layer and map
                    kind; columns FSS, RS Base, RS Student, RS distilled, RS residual
                    and the p-value of RS Student > RS Base. ``"paper"``: the paper's
                    exact Table 1, one row per layer; columns RS of the Base and the
                    Student on their Grad-CAM maps ("layer-specific"), RS of the Base
                    on the residual map and of the Student on the distilled map.
        """
        fmt = lambda e: f"{e['mean']:.{digits}f} ± {(e['high'] - e['low']) / 2:.{digits}f}"  # noqa: E731
        if layout == "full":
            header = ["Layer", "Map"] + [METRIC_TITLES[m] for m in METRICS] + ["p (Student > Base)"]
            body = [
                [layer, KIND_TITLES.get(kind, kind)] + [fmt(entry[m]) for m in METRICS] + [f"{entry['p_student_gt_base']:.3g}"]
                for layer, kind, entry in self._rows()
            ]
            n_text = 2
        elif layout == "paper":
            cols = self._paper_columns()
            s = self.summary()["by_layer"]
            header = ["Layer"] + [c[0] for c in cols]
            body = [[layer] + [fmt(s[layer][k][m]) for _, k, m in cols] for layer in self.layers]
            n_text = 1
        else:
            raise ValueError(f"layout must be 'full' or 'paper', got {layout!r}.")
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * n_text + ["---:"] * (len(header) - n_text)) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        lines += ["", self._footnote()]
        text = "\n".join(lines) + "\n"
        if path is not None:
            _write_atomic(path, text)
        return text

    def to_csv(self, path: Optional[Union[str, os.PathLike]] = None, layout: str = "full") -> str:
        """Table 1 with exact numbers, written atomically to ``path`` if given.

        ``layout="full"`` (default): columns ``layer, map, n_batches``, then
        ``{metric}_mean, {metric}_ci_low, {metric}_ci_high`` for each metric of
        :data:`METRICS`, then ``p_student_gt_base, p_distilled_gt_residual``.
        ``layout="paper"``: ``layer``, then mean / ci_low / ci_high of
        ``gradcam_rs_base, gradcam_rs_student, residual_rs_base, distilled_rs_student``
        (see :meth:`to_markdown`).
        """
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        if layout == "full":
            header = ["layer", "map", "n_batches"]
            for m in METRICS:
                header += [f"{m}_mean", f"{m}_ci_low", f"{m}_ci_high"]
            header += ["p_student_gt_base", "p_distilled_gt_residual"]
            writer.writerow(header)
            for layer, kind, entry in self._rows():
                row = [layer, kind, entry["n_batches"]]
                for m in METRICS:
                    row += [repr(entry[m]["mean"]), repr(entry[m]["low"]), repr(entry[m]["high"])]
                row += [repr(entry["p_student_gt_base"]), repr(entry["p_distilled_gt_residual"])]
                writer.writerow(row)
        elif layout == "paper":
            cols = self._paper_columns()
            s = self.summary()["by_layer"]
            header = ["layer"]
            for _, k, m in cols:
                header += [f"{k}_{m}_mean", f"{k}_{m}_ci_low", f"{k}_{m}_ci_high"]
            writer.writerow(header)
            for layer in self.layers:
                row = [layer]
                for _, k, m in cols:
                    e = s[layer][k][m]
                    row += [repr(e["mean"]), repr(e["low"]), repr(e["high"])]
                writer.writerow(row)
        else:
            raise ValueError(f"layout must be 'full' or 'paper', got {layout!r}.")
        text = buf.getvalue()
        if path is not None:
            _write_atomic(path, text)
        return text


# ---------------------------------------------------------------------------
# evaluate_kd
# ---------------------------------------------------------------------------


def _batch_metrics(feats_s: Tensor, feats_b: Tensor, y: Tensor, estimator: str) -> Dict[str, float]:
    y = y.to(feats_s.device)
    return {
        "fss": float(dcor_sqr(feats_s, feats_b, estimator)),
        "rs_base": float(dcor_sqr(feats_b, y, estimator)),
        "rs_student": float(dcor_sqr(feats_s, y, estimator)),
        "rs_distilled": float(stats.partial_distance_correlation(feats_s, y, feats_b)),
        "rs_residual": float(stats.partial_distance_correlation(feats_b, y, feats_s)),
    }


def _dist_info() -> Tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _unpack(item: Any, index: int) -> Tuple[Tensor, Any]:
    if isinstance(item, Mapping):
        raise ValueError(
            f"batch {index} is a mapping; evaluate_kd expects loader items (inputs, target) or "
            "(inputs, target, mask)."
        )
    if not isinstance(item, (tuple, list)) or len(item) < 2 or not isinstance(item[0], Tensor):
        raise ValueError(
            f"batch {index} is not (inputs, target[, ...]) with a tensor of inputs; got "
            f"{type(item).__name__}."
        )
    return item[0], item[1]


def _check_layers(layers: Any, student: nn.Module, base: nn.Module) -> Dict[str, Tuple[nn.Module, nn.Module]]:
    if not isinstance(layers, Mapping) or not layers:
        raise ValueError(
            "layers must be a non-empty mapping name -> (student_layer, base_layer), e.g. "
            "{'L4': (student.layer4[-1], base.layer4[-1])}."
        )
    out = {}
    for name, pair in layers.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(m, nn.Module) for m in pair):
            raise ValueError(f"layers[{name!r}] must be a pair (student_layer, base_layer) of nn.Modules.")
        for model, layer, who in ((student, pair[0], "student"), (base, pair[1], "base")):
            if isinstance(model, nn.Module) and not any(m is layer for m in model.modules()):
                raise ValueError(f"layers[{name!r}]: the {who} layer is not a module of the {who} model.")
        out[str(name)] = (pair[0], pair[1])
    return out


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


class _NotOnePass(Exception):
    """A layer's output is not one tensor, or the layer runs more than once."""


def _gradcams(model: nn.Module, layers: Sequence[nn.Module], x: Tensor, y: Tensor) -> List[Tensor]:
    """``LayerGradCam(model, layer).attribute(x, target=y, relu_attributions=True)`` for every
    layer, from one forward and one backward pass instead of one of each per layer.

    Where one pass cannot stand for Captum's (a layer returns a tuple, or runs more than once
    in the forward pass), Captum's ``LayerGradCam`` is called per layer instead.
    """
    unique = list({id(m): m for m in layers}.values())
    acts: Dict[int, Tensor] = {}

    def hook(module, _inp, out):
        if not isinstance(out, Tensor) or id(module) in acts:
            raise _NotOnePass
        if not out.requires_grad:  # no parameter before it requires grad: a leaf
            out.requires_grad_()
        acts[id(module)] = out
        return out.clone()  # later in-place operations must not touch the saved activation

    handles = [m.register_forward_hook(hook) for m in unique]
    try:
        with torch.enable_grad():
            output = model(x)
            score = output.gather(1, y.reshape(-1, 1).long()).sum()
            grads = torch.autograd.grad(score, [acts[id(m)] for m in unique], allow_unused=True)
    except _NotOnePass:
        grads = None
    finally:
        for h in handles:
            h.remove()
    if grads is None:
        from captum.attr import LayerGradCam

        cams = [LayerGradCam(model, m).attribute(x, target=y, relu_attributions=True) for m in layers]
        for m, cam in zip(layers, cams):
            if not isinstance(cam, Tensor):
                raise ValueError(
                    f"layer {type(m).__name__} returns a {type(cam).__name__} of tensors; a Grad-CAM map "
                    "for FSS / RS needs a layer whose output is one tensor (N, C, ...): pass that module."
                )
        return [cam.detach() for cam in cams]
    by_layer: Dict[int, Tensor] = {}
    for m, grad in zip(unique, grads):
        act = acts[id(m)].detach()
        grad = torch.zeros_like(act) if grad is None else grad
        weights = grad.mean(dim=tuple(range(2, grad.dim())), keepdim=True) if grad.dim() > 2 else grad
        by_layer[id(m)] = (weights * act).sum(dim=1, keepdim=True).relu()
    return [by_layer[id(m)] for m in layers]


def _all_maps(kinds, student, base, layer_pairs, unicams, x, y) -> Dict[str, Dict[str, Tuple[Tensor, Tensor]]]:
    """``maps[layer][kind]`` = (the Student's map, the Base's map) on the batch, for every
    kind but ``"none"`` (no map)."""
    maps: Dict[str, Dict[str, Tuple[Tensor, Tensor]]] = {name: {} for name in layer_pairs}
    if "gradcam" in kinds:
        cams_s = _gradcams(student, [s for s, _ in layer_pairs.values()], x, y)
        cams_b = _gradcams(base, [b for _, b in layer_pairs.values()], x, y)
        for name, cam_s, cam_b in zip(layer_pairs, cams_s, cams_b):
            maps[name]["gradcam"] = (cam_s, cam_b)
    if "distilled" in kinds or "residual" in kinds:
        for name in layer_pairs:
            distilled, residual = (m.detach() for m in unicams[name].attribute(x, target=y, features="both"))
            # one map for both models: the same object, so the inputs are perturbed once
            maps[name]["distilled"] = (distilled, distilled)
            maps[name]["residual"] = (residual, residual)
    return maps


@contextmanager
def _batch_rng(seed: int, index: int, device: torch.device):
    """Seed torch's generators from (seed, batch index) for one batch; restore them after.

    Random perturbations (``road_impute``'s noise) then depend only on the batch, not on
    the rank that computes it or on what ran before, and the caller's RNG state is kept.
    """
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed((int(seed) * 1_000_003 + int(index)) % (2**63))
        yield


def _evaluate_batch(
    i, x, y, student, base, layer_pairs, kinds, unicams, emb, perturb_func, estimator, device
) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Every metric of one batch, for each layer and map kind."""
    x = x.to(device)
    y = (y if isinstance(y, Tensor) else torch.as_tensor(y)).to(device)
    try:
        _check_inputs(x)
        labels = label_vectors(y, x.shape[0], emb)
    except ValueError as err:
        raise ValueError(f"batch {i}: {err}") from err
    maps = _all_maps(kinds, student, base, layer_pairs, unicams, x, y)
    raw: Dict[str, Tuple[Tensor, Tensor]] = {}
    if "none" in kinds:  # the unperturbed features of every layer: one forward pass per model
        raw_s = layers_features(student, [s for s, _ in layer_pairs.values()], x)
        raw_b = layers_features(base, [b for _, b in layer_pairs.values()], x)
        raw = {name: (fs, fb) for name, fs, fb in zip(layer_pairs, raw_s, raw_b)}
    values: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name, (s_layer, b_layer) in layer_pairs.items():
        values[name] = {}
        for kind in kinds:
            if kind == "none":
                feats_s, feats_b = raw[name]
            else:
                h_s, h_b = maps[name][kind]
                x_s = perturb(x, h_s, perturb_func)
                x_b = x_s if h_b is h_s else perturb(x, h_b, perturb_func)
                feats_s = layer_features(student, s_layer, x_s)
                feats_b = layer_features(base, b_layer, x_b)
            values[name][kind] = _batch_metrics(feats_s, feats_b, labels, estimator)
    return values


def evaluate_kd(
    student: nn.Module,
    base: nn.Module,
    loader: Any,
    layers: Mapping[str, Tuple[nn.Module, nn.Module]],
    *,
    label_embeddings: Optional[Tensor] = None,
    map_kinds: Sequence[str] = MAP_KINDS,
    perturb_func: Callable = mask_multiply,
    estimator: str = "u",
    n_bootstrap: int = 1000,
    n_permutations: int = 10000,
    seed: int = 0,
    progress: bool = True,
    device: Union[str, torch.device] = "cpu",
    small_batches: str = "skip",
) -> KDEvaluation:
    r"""FSS and RS of a Student/Base pair over a data set, per layer and map kind.

    For each batch ``(x, y)`` of ``loader``, each layer ``name -> (student_layer,
    base_layer)`` and each map kind, the inputs of the two models are perturbed
    (``perturb_func``) with these maps:

    ============  ==============================  ===============================
    kind          Student's input                 Base's input
    ============  ==============================  ===============================
    ``none``      x (raw features)                x
    ``gradcam``   x ⊙ Grad-CAM of the Student     x ⊙ Grad-CAM of the Base
    ``distilled`` x ⊙ UniCAM distilled map        x ⊙ the same distilled map
    ``residual``  x ⊙ UniCAM residual map         x ⊙ the same residual map
    ============  ==============================  ===============================

    Grad-CAM is Captum's ``LayerGradCam`` on that layer with ReLU (as in the paper; the
    maps of all layers come from one forward and one backward pass per model, equal to
    ``LayerGradCam`` layer by layer, and the unperturbed features of all layers from one
    forward pass), each model explained by its own map (the paper's "layer-specific features",
    Fig. 3-4, Table 1 left). The UniCAM maps come from one ``UniCAM(student,
    student_layer, base, base_layer, label_embeddings=...)`` call with
    ``features="both"``; each perturbs the inputs of *both* models, as paper Eq. 7
    writes (one :math:`I \odot H` fed to :math:`f_s` and :math:`f_b`), so FSS compares
    the two models on the same evidence. The paper's Table 1 right half is then
    ``rs_student`` of the ``distilled`` rows (Student features on the distilled map)
    and ``rs_base`` of the ``residual`` rows (Base features on the residual map).

    Reading FSS: with a shared map both models see the same perturbed images, and the
    perturbation itself (how much of each image survives) is a strong common signal:
    even two untrained networks can reach an FSS near 1 on UniCAM- or Grad-CAM-masked
    images. Read FSS of a map kind against the ``none`` row of the same layer.

    Per batch it records ``fss``, ``rs_base``, ``rs_student``, ``rs_distilled`` =
    pdCor(x̂_s, Y; x̂_b) and ``rs_residual`` = pdCor(x̂_b, Y; x̂_s) (see
    :func:`~captum_unicam.feature_similarity_score` and
    :func:`~captum_unicam.relevance_score`; x̂ = flattened layer output on the
    perturbed batch, Y = label vectors).

    **Batches.** Loader items are ``(x, y)`` or ``(x, y, mask, ...)``; only the first
    two are used; ``y`` holds class indices. Batches with fewer than 4 samples cannot
    be scored (U-statistics): with ``small_batches="skip"`` (default) they are skipped
    with a warning and listed in ``KDEvaluation.skipped_batches``; with ``"error"``
    they raise. A DataLoader's last batch is often small: use ``drop_last=True``. The
    models are used as given (not moved, mode unchanged): put them on ``device`` and in
    ``eval()`` mode first, or batch-norm statistics change and dropout is active.

    **Distributed.** If ``torch.distributed`` is initialised (e.g. under ``torchrun``,
    gloo on CPU or nccl on GPU), rank ``r`` of ``W`` computes the batches whose index
    ``i`` in the loader satisfies ``i % W == r`` (every rank iterates the same loader,
    so it must yield the same batches in the same order on every rank: no unseeded
    shuffling); the per-batch values are all-gathered and ordered by ``i``, so every
    rank returns the same result as one process over the whole loader. An error on one
    rank is raised on every rank (none is left waiting). If the loader
    already uses a ``DistributedSampler``, each rank computes all of its own batches
    and they are ordered by (local index, rank). With nccl, set the CUDA device of each
    rank first (``torch.cuda.set_device``), as ``all_gather_object`` requires.

    Args:
        student (torch.nn.Module): the model trained with KD.
        base (torch.nn.Module): the same architecture trained without KD (or the Teacher).
        loader (Iterable): batches ``(x, y[, ...])``, typically a DataLoader.
        layers (Mapping[str, tuple[nn.Module, nn.Module]]): name -> (student_layer,
                    base_layer), e.g. ``{"L1": (s.layer1[-1], b.layer1[-1]), ...}``.
        label_embeddings (Tensor, optional): ``(num_classes, e)`` label vectors for RS and
                    UniCAM (e.g. ``embed_labels(class_names)``). Default: one-hot.
        map_kinds (sequence of str, optional): subset of ``("none", "gradcam",
                    "distilled", "residual")``. Default: all four.
        perturb_func (Callable, optional): ``mask_multiply`` (default) or ``road_impute``.
        estimator (str, optional): ``"u"`` (paper) or ``"v"`` for FSS and the plain RS;
                    ``rs_distilled`` / ``rs_residual`` are always the (U-statistic)
                    partial distance correlation. Default: "u".
        n_bootstrap (int, optional): bootstrap resamples for the intervals. Default: 1000.
        n_permutations (int, optional): sign patterns for the permutation tests (all
                    :math:`2^k` when that is not more). Default: 10000.
        seed (int, optional): seed of the bootstrap and permutations, and of torch's
                    generators while batch ``i`` is evaluated (seeded with ``(seed, i)``, then
                    restored), so random perturbations such as ``road_impute``'s noise are
                    reproducible and the same under any sharding. Default: 0.
        progress (bool, optional): tqdm progress bar (rank 0 only). Default: True.
        device (str or torch.device, optional): where batches are moved. Default: "cpu".
        small_batches (str, optional): ``"skip"`` or ``"error"``. Default: "skip".

    Returns:
        KDEvaluation: per-batch values; ``.summary()``, ``.to_json()``,
        ``.to_markdown()``, ``.to_csv()``.

    Raises:
        ValueError: bad arguments; NaN in a batch; a target beyond the label-embedding
                    table; a batch under 4 with ``small_batches="error"``; no batch of 4
                    or more samples at all.

    Examples::

        >>> from captum_unicam.metrics import evaluate_kd
        >>> layers = {f"L{i}": (getattr(student, f"layer{i}")[-1], getattr(base, f"layer{i}")[-1])
        ...           for i in range(1, 5)}
        >>> result = evaluate_kd(student.eval(), base.eval(), loader, layers,
        ...                      label_embeddings=embed_labels(class_names))
        >>> print(result.to_markdown())
    """
    # -- validation before any work ------------------------------------------------
    layer_pairs = _check_layers(layers, student, base)
    if isinstance(map_kinds, str):
        map_kinds = (map_kinds,)
    kinds = list(map_kinds)
    unknown = [k for k in kinds if k not in MAP_KINDS]
    if not kinds or unknown or len(set(kinds)) != len(kinds):
        raise ValueError(f"map_kinds must be distinct values among {MAP_KINDS}; got {list(map_kinds)!r}.")
    _check_estimator(estimator)
    _check_perturb_func(perturb_func)
    _check_label_embeddings(label_embeddings)
    _check_positive_int(n_bootstrap, "n_bootstrap")
    _check_positive_int(n_permutations, "n_permutations")
    if small_batches not in ("skip", "error"):
        raise ValueError(f"small_batches must be 'skip' or 'error', got {small_batches!r}.")
    device = torch.device(device)
    emb = label_embeddings.detach().to(device) if label_embeddings is not None else None
    for model, who in ((student, "student"), (base, "base")):
        if isinstance(model, nn.Module) and model.training:
            warnings.warn(
                f"the {who} model is in training mode: batch-norm statistics will be updated and "
                "dropout is active during evaluation; call .eval() first.",
                stacklevel=2,
            )

    unicams = {}
    if "distilled" in kinds or "residual" in kinds:
        from captum_unicam.attr.unicam import UniCAM

        unicams = {
            name: UniCAM(student, s_layer, base, b_layer, label_embeddings=emb)
            for name, (s_layer, b_layer) in layer_pairs.items()
        }

    rank, world = _dist_info()
    presharded = isinstance(getattr(loader, "sampler", None), torch.utils.data.DistributedSampler)

    try:
        total = len(loader)
    except TypeError:
        total = None
    from tqdm.auto import tqdm

    records: List[Dict[str, Any]] = []
    failure: Optional[BaseException] = None
    bar = tqdm(total=total, desc="evaluate_kd", unit="batch", disable=not progress or rank != 0)
    try:
        for i, item in enumerate(loader):
            bar.update(1)
            if world > 1 and not presharded and i % world != rank:
                continue
            x, y = _unpack(item, i)
            n = x.shape[0]
            if n < MIN_BATCH:
                msg = (
                    f"batch {i} has {n} samples; FSS and RS need at least {MIN_BATCH} per batch. "
                    "Use DataLoader(..., drop_last=True) or a batch size that divides the data set."
                )
                if small_batches == "error":
                    raise ValueError(msg)
                warnings.warn(msg + " The batch is skipped.", stacklevel=2)
                records.append({"index": i, "rank": rank, "size": n, "values": None})
                continue
            with _batch_rng(seed, i, device):
                values = _evaluate_batch(
                    i, x, y, student, base, layer_pairs, kinds, unicams, emb, perturb_func, estimator, device
                )
            records.append({"index": i, "rank": rank, "size": n, "values": values})
    except Exception as err:  # noqa: BLE001 - re-raised below, after telling the other ranks
        failure = err
    finally:
        bar.close()

    if world > 1:
        # Every rank reaches this point, also after an error, so no rank waits forever.
        note = None if failure is None else (type(failure).__name__, f"rank {rank}: {failure}")
        gathered: List[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, (records, note))
        if failure is None:
            remote = [n for _, n in gathered if n is not None]
            if remote:
                kind_name, message = remote[0]
                error_type = ValueError if kind_name == "ValueError" else RuntimeError
                raise error_type(f"evaluate_kd failed on another rank: {message}")
        records = [r for part, _ in gathered for r in part]
    if failure is not None:
        raise failure
    records.sort(key=lambda r: (r["index"], r["rank"]))

    done = [r for r in records if r["values"] is not None]
    if not done:
        raise ValueError(
            f"no batch had at least {MIN_BATCH} samples ({len(records)} batches seen); use a larger batch size."
        )
    result_values = {
        name: {kind: {m: [r["values"][name][kind][m] for r in done] for m in METRICS} for kind in kinds}
        for name in layer_pairs
    }
    settings = {
        "estimator": estimator,
        "perturb_func": getattr(perturb_func, "__name__", type(perturb_func).__name__),
        "label_embeddings": "one-hot"
        if label_embeddings is None
        else f"table {tuple(label_embeddings.shape)[0]}x{tuple(label_embeddings.shape)[1]}",
        "n_bootstrap": n_bootstrap,
        "n_permutations": n_permutations,
        "seed": seed,
        "world_size": world,
        "sharding": "sampler" if presharded else "batch index % world size",
    }
    return KDEvaluation(
        layers=list(layer_pairs),
        map_kinds=kinds,
        values=result_values,
        batch_indices=[r["index"] for r in done],
        batch_sizes=[r["size"] for r in done],
        skipped_batches=[r["index"] for r in records if r["values"] is None],
        settings=settings,
    )
