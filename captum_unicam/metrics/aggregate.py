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
from typing import Any, Callable, Dict, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from captum_unicam.errors import DeviceError, InputError
from captum_unicam.metrics._compat import kd_compat
from captum_unicam.metrics._features import (
    LABEL_FIX,
    MIN_BATCH_PARTIAL,
    Estimator,
    Scores,
    check_label_embeddings,
    label_degeneracy,
    layer_features,
    layers_features,
    perturb,
    target_indices,
    warn_degenerate,
)
from captum_unicam.metrics._features import check_estimator as _check_estimator
from captum_unicam.metrics._features import check_forward_func as _check_forward_func
from captum_unicam.metrics._features import check_inputs as _check_inputs
from captum_unicam.metrics._features import check_perturbation as _check_perturbation
from captum_unicam.metrics.rs import label_vectors
from captum_unicam.perturb import mask_multiply

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
        skipped_batches (list[int]): indices of batches skipped for having fewer than 5
                    samples.
        settings (dict): estimator, perturbation, label vectors, bootstrap and
                    permutation settings, seed, world size.
        degenerate_batches (list[int]): indices of batches left out because their labels
                    carry no information (one class, or one-hot labels with no repeated
                    class: the U-centred label distance matrix is zero).
        degenerate_values (dict): ``"layer/kind/metric"`` -> number of batches in which
                    that value was set to 0 for a degenerate case (e.g. features constant
                    over the batch because every map is zero).
    """

    layers: List[str]
    map_kinds: List[str]
    values: Dict[str, Dict[str, Dict[str, List[float]]]]
    batch_indices: List[int]
    batch_sizes: List[int]
    skipped_batches: List[int] = field(default_factory=list)
    settings: Dict[str, Any] = field(default_factory=dict)
    degenerate_batches: List[int] = field(default_factory=list)
    degenerate_values: Dict[str, int] = field(default_factory=dict)

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
            "degenerate_batches": list(self.degenerate_batches),
            "degenerate_values": dict(self.degenerate_values),
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
            raise InputError(f"not a KDEvaluation JSON (format {data.get('format')!r}, expected {_FORMAT!r}).")
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
            degenerate_batches=[int(i) for i in data.get("degenerate_batches", [])],
            degenerate_values={str(k): int(v) for k, v in data.get("degenerate_values", {}).items()},
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
            raise InputError(
                f"layout='paper' needs the map kinds gradcam, distilled and residual; missing {missing}."
            )
        return cols

    def _footnote(self) -> str:
        st = self.settings
        return (
            f"Mean over {len(self.batch_indices)} batches ± half the width of the 95 % bootstrap "
            f"interval ({st.get('n_bootstrap', '?')} resamples of the batches, seed {st.get('seed', '?')}). "
            f"p: one-sided paired permutation test over batches. Estimator {st.get('estimator', '?')!r}, "
            f"perturbation {st.get('perturbation', st.get('perturb_func', '?'))}, labels {st.get('label_embeddings', '?')}."
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
            raise InputError(f"layout must be 'full' or 'paper', got {layout!r}.")
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
            raise InputError(f"layout must be 'full' or 'paper', got {layout!r}.")
        text = buf.getvalue()
        if path is not None:
            _write_atomic(path, text)
        return text


# ---------------------------------------------------------------------------
# evaluate_kd
# ---------------------------------------------------------------------------


_PERTURBATIONS = ("mask", "road", "none")
PerturbationName = Literal["mask", "road", "none"]
MapKind = Literal["none", "gradcam", "distilled", "residual"]


def _batch_metrics(
    feats_s: Tensor, feats_b: Tensor, y: Tensor, estimator: str, layer: str
) -> Tuple[Dict[str, float], Dict[str, str]]:
    """The five per-batch metrics, and the reason of each value set to 0 (if any).

    The partial distance correlations are formed from the three bias-corrected
    correlations that FSS and the plain RS already computed (with ``estimator="u"``)."""
    scores = Scores(
        {"s": feats_s, "b": feats_b, "y": y.to(feats_s.device)},
        {"s": f"the Student's features at {layer}", "b": f"the Base's features at {layer}"},
    )
    results = {
        "fss": scores.dcor("s", "b", estimator),
        "rs_base": scores.dcor("b", "y", estimator),
        "rs_student": scores.dcor("s", "y", estimator),
        "rs_distilled": scores.pdcor("s", "y", "b"),
        "rs_residual": scores.pdcor("b", "y", "s"),
    }
    values = {m: float(v) for m, (v, _) in results.items()}
    reasons = {m: r for m, (_, r) in results.items() if r is not None}
    return values, reasons


def _dist_info() -> Tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _unpack(item: Any, index: int) -> Tuple[Tensor, Any]:
    if isinstance(item, Mapping):
        raise InputError(
            f"batch {index} is a mapping; evaluate_kd expects data items (inputs, target) or "
            "(inputs, target, mask)."
        )
    if not isinstance(item, (tuple, list)) or len(item) < 2 or not isinstance(item[0], Tensor):
        raise InputError(
            f"batch {index} is not (inputs, target[, ...]) with a tensor of inputs; got "
            f"{type(item).__name__}."
        )
    return item[0], item[1]


def _check_layers(layers: Any, student: Any, base: Any) -> Dict[str, Tuple[nn.Module, nn.Module]]:
    if not isinstance(layers, Mapping) or not layers:
        raise InputError(
            "layers must be a non-empty mapping name -> (student_layer, base_layer), e.g. "
            "{'L4': (student.layer4[-1], base.layer4[-1])}."
        )
    out = {}
    for name, pair in layers.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(m, nn.Module) for m in pair):
            raise InputError(f"layers[{name!r}] must be a pair (student_layer, base_layer) of nn.Modules.")
        for model, layer, who in ((student, pair[0], "student"), (base, pair[1], "base")):
            if isinstance(model, nn.Module) and not any(m is layer for m in model.modules()):
                raise InputError(f"layers[{name!r}]: the {who} layer is not a module of the {who} model.")
        out[str(name)] = (pair[0], pair[1])
    return out


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}.")
    return value


def _resolve_perturbation(perturbation: Any) -> Tuple[Optional[Callable], str]:
    """(callable or None, name for the settings) of ``perturbation``."""
    if isinstance(perturbation, str):
        if perturbation not in _PERTURBATIONS:
            raise InputError(
                f"perturbation must be a callable (inputs, attributions) -> perturbed inputs, None, "
                f"or one of {_PERTURBATIONS}; got {perturbation!r}."
            )
        from captum_unicam.perturb import road_impute

        func = {"mask": mask_multiply, "road": road_impute, "none": None}[perturbation]
        return func, perturbation
    _check_perturbation(perturbation)
    if perturbation is None:
        return None, "none"
    return perturbation, getattr(perturbation, "__name__", type(perturbation).__name__)


def _model_device(model: Any, layers: Sequence[nn.Module]) -> Optional[torch.device]:
    """Device of the model's first parameter (or buffer); of its layers' if it is not a
    Module; None if it has none."""
    roots = [model] if isinstance(model, nn.Module) else list(layers)
    for root in roots:
        for t in root.parameters():
            return t.device
        for t in root.buffers():
            return t.device
    return None


def _normalise_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _resolve_device(
    device: Any, student: Any, base: Any, layer_pairs: Mapping[str, Tuple[nn.Module, nn.Module]]
) -> Optional[torch.device]:
    """Where batches go: ``device``, or the Student's device when it is None. A Base on
    another device than the Student, or a ``device`` other than the models', is a
    :class:`~captum_unicam.errors.DeviceError`."""
    s_dev = _model_device(student, [s for s, _ in layer_pairs.values()])
    b_dev = _model_device(base, [b for _, b in layer_pairs.values()])
    if s_dev is not None and b_dev is not None and _normalise_device(s_dev) != _normalise_device(b_dev):
        raise DeviceError(
            f"the Student's parameters are on {s_dev} and the Base's on {b_dev}; evaluate_kd runs "
            "both on the same batches: move them to one device first (e.g. base.to(device))."
        )
    if device is None:
        return s_dev if s_dev is not None else b_dev
    try:
        wanted = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"device must be None, a torch.device or a device string such as 'cuda:0'; got {device!r}.") from err
    model_dev = s_dev if s_dev is not None else b_dev
    if model_dev is not None and _normalise_device(wanted) != _normalise_device(model_dev):
        raise DeviceError(
            f"device={str(device)!r}, but the models' parameters are on {model_dev}; evaluate_kd "
            "moves the batches, never the models. Pass device=None (the models' device) or move "
            "the models with .to(device) first."
        )
    return wanted


def _output_widths(
    student: Callable, base: Callable, x: Tensor, need_logits: bool
) -> Optional[int]:
    """Number of classes of both models, from one forward pass of each on two samples; a
    clear error if they differ (or if Grad-CAM needs logits and there are none)."""
    widths = []
    with torch.no_grad():
        for model, who in ((student, "Student"), (base, "Base")):
            try:
                out = model(x)
            except Exception as err:  # noqa: BLE001 - re-raised with what to check
                raise InputError(
                    f"the {who} failed on the first batch's inputs of shape {tuple(x.shape)} "
                    f"({type(err).__name__}: {err}); check the inputs' shape, dtype and device."
                ) from err
            widths.append(out.shape[1] if isinstance(out, Tensor) and out.dim() == 2 else None)
    w_s, w_b = widths
    if need_logits and (w_s is None or w_b is None):
        raise InputError(
            "Grad-CAM maps (maps with 'gradcam') read each model's output as (N, num_classes) logits; "
            "a model returns something else. Wrap it to return logits, or leave 'gradcam' out of maps."
        )
    if w_s is not None and w_b is not None and w_s != w_b:
        raise InputError(
            f"the Student has {w_s} outputs and the Base {w_b}; FSS and RS compare two models of "
            "the same classification task, explained for the same targets: pass models with the "
            "same classes."
        )
    return w_s if w_s is not None else w_b


def _check_target(i: int, y: Any, n: int, width: Optional[int], rows: Optional[int]) -> Tensor:
    """The batch's class indices as a LongTensor (n,), checked before any work on it."""
    try:
        t = target_indices(y, n)
    except InputError as err:
        raise InputError(f"batch {i}: {err}") from err
    top = int(t.max())
    if width is not None and top >= width:
        raise InputError(
            f"batch {i}: target holds class index {top}, but the models have {width} outputs "
            f"(classes 0..{width - 1}); the data's labels must index the models' classes."
        )
    if rows is not None and top >= rows:
        raise InputError(
            f"batch {i}: target holds class index {top}, but label_embeddings has {rows} rows; it "
            "needs one row per class, in class-index order."
        )
    return t

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
                raise InputError(
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
    x, y, labels, student, base, layer_pairs, kinds, unicams, perturbation, estimator
) -> Tuple[Dict[str, Dict[str, Dict[str, float]]], Dict[str, str]]:
    """Every metric of one batch, for each layer and map kind; and the reason of every
    value set to 0, by ``"layer/kind/metric"``."""
    maps = _all_maps(kinds, student, base, layer_pairs, unicams, x, y)
    raw: Dict[str, Tuple[Tensor, Tensor]] = {}
    if "none" in kinds:  # the unperturbed features of every layer: one forward pass per model
        raw_s = layers_features(student, [s for s, _ in layer_pairs.values()], x)
        raw_b = layers_features(base, [b for _, b in layer_pairs.values()], x)
        raw = {name: (fs, fb) for name, fs, fb in zip(layer_pairs, raw_s, raw_b)}
    values: Dict[str, Dict[str, Dict[str, float]]] = {}
    zeroed: Dict[str, str] = {}
    for name, (s_layer, b_layer) in layer_pairs.items():
        values[name] = {}
        for kind in kinds:
            if kind == "none":
                feats_s, feats_b = raw[name]
            else:
                h_s, h_b = maps[name][kind]
                x_s = perturb(x, h_s, perturbation)
                x_b = x_s if h_b is h_s else perturb(x, h_b, perturbation)
                feats_s = layer_features(student, s_layer, x_s)
                feats_b = layer_features(base, b_layer, x_b)
            values[name][kind], reasons = _batch_metrics(feats_s, feats_b, labels, estimator, name)
            zeroed.update({f"{name}/{kind}/{m}": r for m, r in reasons.items()})
    return values, zeroed


def _report_degenerate(records: List[Dict[str, Any]], seen: int) -> None:
    """One warning for the batches left out for their labels, one for the values set to 0."""
    left_out = [r for r in records if r.get("degenerate")]
    if left_out:
        by_reason: Dict[str, List[int]] = {}
        for r in left_out:
            by_reason.setdefault(r["degenerate"], []).append(r["index"])
        parts = "; ".join(
            f"{len(idx)} batch{'es' if len(idx) > 1 else ''} (indices {idx[:5]}{' ...' if len(idx) > 5 else ''}): {why}"
            for why, idx in by_reason.items()
        )
        warn_degenerate(
            f"evaluate_kd left {len(left_out)} of {seen} batches out of every statistic, because "
            f"their labels carry no information: {parts}. To fix it, {LABEL_FIX}. Their indices are "
            "in KDEvaluation.degenerate_batches.",
            stacklevel=4,
        )
    by_reason_v: Dict[str, Dict[str, int]] = {}
    for r in records:
        for key, why in (r.get("zeroed") or {}).items():
            counts = by_reason_v.setdefault(why, {})
            counts[key] = counts.get(key, 0) + 1
    if by_reason_v:
        parts = "; ".join(
            f"{why} ({', '.join(f'{k} in {c} batch' + ('es' if c > 1 else '') for k, c in list(keys.items())[:6])}"
            f"{', ...' if len(keys) > 6 else ''})"
            for why, keys in by_reason_v.items()
        )
        warn_degenerate(
            f"evaluate_kd set some per-batch values to 0: {parts}. The counts are in "
            "KDEvaluation.degenerate_values.",
            stacklevel=4,
        )


def _reemit(caught: Dict[Tuple[type, str], int]) -> None:
    """Warnings raised while the batches were evaluated (e.g. UniCAM's), once each."""
    for (category, message), count in caught.items():
        suffix = f" (raised {count} times over the batches)" if count > 1 else ""
        warnings.warn(message + suffix, category, stacklevel=4)


@kd_compat
def evaluate_kd(
    forward_func: Callable,
    layers: Mapping[str, Tuple[nn.Module, nn.Module]],
    data: Iterable[Any],
    *,
    base_forward_func: Callable,
    label_embeddings: Optional[Tensor] = None,
    maps: Optional[Sequence[MapKind]] = None,
    perturbation: Union[Callable[[Tensor, Tensor], Tensor], PerturbationName, None] = mask_multiply,
    estimator: Estimator = "u",
    device: Union[None, str, torch.device] = None,
    n_bootstrap: int = 1000,
    n_permutations: int = 10000,
    seed: int = 0,
    progress: bool = True,
    small_batches: Literal["skip", "error"] = "skip",
) -> KDEvaluation:
    r"""FSS and RS of a Student/Base pair over a data set, per layer and map kind.

    For each batch ``(x, y)`` of ``data``, each layer ``name -> (student_layer,
    base_layer)`` and each map kind, the inputs of the two models are perturbed
    (``perturbation``) with these maps:

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

    **Checks before any batch.** The layers must belong to the models; both models must
    be on one device (``device=None``, the default, then means that device; the batches
    are moved there, never the models); both models' output widths (from one forward pass
    on two samples of the first batch) must agree with each other and with the rows of
    ``label_embeddings``. Each batch's targets are checked against them before anything
    is computed on it.

    **Batches.** Data items are ``(x, y)`` or ``(x, y, mask, ...)``; only the first
    two are used; ``y`` holds class indices. Batches with fewer than 5 samples cannot
    be scored (the partial distance correlation is always +-1 at 4): with
    ``small_batches="skip"`` (default) they are skipped with a warning and listed in
    ``KDEvaluation.skipped_batches``; with ``"error"`` they raise. A DataLoader's last
    batch is often small: use :func:`captum_unicam.pipeline.stratified_loader`, whose
    seeded, class-stratified batches merge a remainder of fewer than 5 images into the
    batch before it (nothing is dropped or skipped). A batch whose labels carry no
    information (one class; or one-hot labels and no class repeated, so that every pair
    of label vectors is equally far apart) is left out of every statistic and listed in
    ``KDEvaluation.degenerate_batches``, with one :class:`~captum_unicam.UniCAMWarning`
    for all of them; use ``label_embeddings=embed_labels(class_names)`` and batches in
    which classes repeat. Values set to 0 in a degenerate case (features constant over a
    batch, e.g. when every map of a batch is zero) are counted in
    ``KDEvaluation.degenerate_values`` and reported in one warning. The models are used
    as given (not moved, mode unchanged): put them in ``eval()`` mode first, or
    batch-norm statistics change and dropout is active.

    **Distributed.** If ``torch.distributed`` is initialised (e.g. under ``torchrun``,
    gloo on CPU or nccl on GPU), rank ``r`` of ``W`` computes the batches whose index
    ``i`` in ``data`` satisfies ``i % W == r`` (every rank iterates the same data,
    so it must yield the same batches in the same order on every rank: no unseeded
    shuffling); the per-batch values are all-gathered and ordered by ``i``, so every
    rank returns the same result as one process over all the data. An error on one
    rank is raised on every rank (none is left waiting). If the loader
    already uses a ``DistributedSampler``, each rank computes all of its own batches
    and they are ordered by (local index, rank). With nccl, set the CUDA device of each
    rank first (``torch.cuda.set_device``), as ``all_gather_object`` requires.

    The old form ``evaluate_kd(student, base, loader, layers, map_kinds=...,
    perturb_func=...)`` still works for this release, with a ``DeprecationWarning``.

    Args:
        forward_func (torch.nn.Module): the Student, the model trained with KD.
        layers (Mapping[str, tuple[nn.Module, nn.Module]]): name -> (student_layer,
                    base_layer), e.g. ``{"L4": (s.layer4[-1], b.layer4[-1]), ...}``.
        data (Iterable): batches ``(inputs, target[, ...])``, typically a
                    :func:`~captum_unicam.pipeline.stratified_loader`.
        base_forward_func (torch.nn.Module): the Base, the same architecture trained
                    without KD (or the Teacher) (keyword-only).
        label_embeddings (Tensor, optional): ``(num_classes, e)`` label vectors for RS and
                    UniCAM (e.g. ``embed_labels(class_names)``), one row per output of
                    the models. Default: one-hot.
        maps (sequence of str, optional): subset of ``("none", "gradcam",
                    "distilled", "residual")``. Default: all four, or ``("none",)``
                    with ``perturbation=None``.
        perturbation (Callable, str or None, optional): ``perturbation(inputs,
                    attributions) -> perturbed inputs``: ``mask_multiply`` (default),
                    ``road_impute`` or your own; or ``"mask"``, ``"road"``; None (or
                    ``"none"``) scores raw features only.
        estimator (str, optional): ``"u"`` (paper) or ``"v"`` for FSS and the plain RS;
                    ``rs_distilled`` / ``rs_residual`` are always the (U-statistic)
                    partial distance correlation. Default: "u".
        device (str or torch.device, optional): where batches are moved; it must be
                    the models' device. Default: None (the Student's device).
        n_bootstrap (int, optional): bootstrap resamples for the intervals. Default: 1000.
        n_permutations (int, optional): sign patterns for the permutation tests (all
                    :math:`2^k` when that is not more). Default: 10000.
        seed (int, optional): seed of the bootstrap and permutations, and of torch's
                    generators while batch ``i`` is evaluated (seeded with ``(seed, i)``, then
                    restored), so random perturbations such as ``road_impute``'s noise are
                    reproducible and the same under any sharding. Default: 0.
        progress (bool, optional): tqdm progress bar (rank 0 only). Default: True.
        small_batches (str, optional): ``"skip"`` or ``"error"``. Default: "skip".

    Returns:
        KDEvaluation: per-batch values; ``.summary()``, ``.to_json()``,
        ``.to_markdown()``, ``.to_csv()``.

    Raises:
        InputError: bad arguments; models with different output widths, or a label table
                    with another number of rows; a target beyond them; NaN in a batch; a
                    batch under 5 with ``small_batches="error"``; no batch that could be
                    scored at all.
        DeviceError: the Student and the Base on different devices, or ``device`` not
                    theirs.

    Examples::

        >>> from captum_unicam.metrics import evaluate_kd
        >>> layers = {f"L{i}": (getattr(student, f"layer{i}")[-1], getattr(base, f"layer{i}")[-1])
        ...           for i in range(1, 5)}
        >>> result = evaluate_kd(student.eval(), layers, loader, base_forward_func=base.eval(),
        ...                      label_embeddings=embed_labels(class_names))
        >>> print(result.to_markdown())
    """
    student, base = forward_func, base_forward_func
    # -- validation before any work ------------------------------------------------
    _check_forward_func(student, "forward_func")
    _check_forward_func(base, "base_forward_func")
    layer_pairs = _check_layers(layers, student, base)
    perturb_callable, perturb_name = _resolve_perturbation(perturbation)
    if maps is None:
        maps = MAP_KINDS if perturb_callable is not None else ("none",)
    if isinstance(maps, str):
        maps = (maps,)
    kinds = list(maps)
    unknown = [k for k in kinds if k not in MAP_KINDS]
    if not kinds or unknown or len(set(kinds)) != len(kinds):
        raise InputError(f"maps must be distinct values among {MAP_KINDS}; got {list(maps)!r}.")
    if perturb_callable is None and kinds != ["none"]:
        raise InputError(
            f"perturbation=None scores raw features only, but maps={kinds!r} asks for perturbed "
            "inputs; pass maps=('none',) or a perturbation such as mask_multiply."
        )
    _check_estimator(estimator)
    check_label_embeddings(label_embeddings)
    _check_positive_int(n_bootstrap, "n_bootstrap")
    _check_positive_int(n_permutations, "n_permutations")
    if small_batches not in ("skip", "error"):
        raise InputError(f"small_batches must be 'skip' or 'error', got {small_batches!r}.")
    device = _resolve_device(device, student, base, layer_pairs)
    emb = label_embeddings.detach() if label_embeddings is not None else None
    if emb is not None and device is not None:
        emb = emb.to(device)
    rows = emb.shape[0] if emb is not None else None
    for model, who in ((student, "student"), (base, "base")):
        if isinstance(model, nn.Module) and model.training:
            warnings.warn(
                f"the {who} model is in training mode: batch-norm statistics will be updated and "
                "dropout is active during evaluation; call .eval() first.",
                stacklevel=3,
            )

    unicams = {}
    if "distilled" in kinds or "residual" in kinds:
        from captum_unicam.attr.unicam import UniCAM

        unicams = {
            name: UniCAM(student, s_layer, base, b_layer, label_embeddings=emb)
            for name, (s_layer, b_layer) in layer_pairs.items()
        }

    rank, world = _dist_info()
    presharded = isinstance(getattr(data, "sampler", None), torch.utils.data.DistributedSampler)

    try:
        total = len(data)
    except TypeError:
        total = None
    from tqdm.auto import tqdm

    records: List[Dict[str, Any]] = []
    caught: Dict[Tuple[type, str], int] = {}
    failure: Optional[BaseException] = None
    width: Optional[int] = None
    bar = tqdm(total=total, desc="evaluate_kd", unit="batch", disable=not progress or rank != 0)
    try:
        for i, item in enumerate(data):
            bar.update(1)
            x, y = _unpack(item, i)
            if i == 0:  # every rank sees the first item: the models' widths, before any batch
                probe = x[:2] if device is None else x[:2].to(device)
                width = _output_widths(student, base, probe, "gradcam" in kinds)
                if rows is not None and width is not None and rows != width:
                    raise InputError(
                        f"label_embeddings has {rows} rows but the models have {width} outputs; it "
                        "needs one row per class, in the order of the models' outputs."
                    )
            if world > 1 and not presharded and i % world != rank:
                continue
            n = x.shape[0]
            if n < MIN_BATCH_PARTIAL:
                msg = (
                    f"batch {i} has {n} samples; FSS and RS need at least {MIN_BATCH_PARTIAL} per "
                    "batch (at 4 the partial distance correlations are always +-1). Use "
                    "DataLoader(..., drop_last=True) or a batch size that divides the data set."
                )
                if small_batches == "error":
                    raise InputError(msg)
                warnings.warn(msg + " The batch is skipped.", stacklevel=3)
                records.append({"index": i, "rank": rank, "size": n, "values": None})
                continue
            if device is not None:
                x = x.to(device)
            y = (y if isinstance(y, Tensor) else torch.as_tensor(y)).to(x.device)
            y = _check_target(i, y, n, width, rows)
            try:
                _check_inputs(x, MIN_BATCH_PARTIAL)
                labels = label_vectors(y, n, emb)
            except InputError as err:
                raise InputError(f"batch {i}: {err}") from err
            why = label_degeneracy(labels)
            if why is not None:
                records.append({"index": i, "rank": rank, "size": n, "values": None, "degenerate": why})
                continue
            with _batch_rng(seed, i, x.device), warnings.catch_warnings(record=True) as got:
                warnings.simplefilter("always")
                values, zeroed = _evaluate_batch(
                    x, y, labels, student, base, layer_pairs, kinds, unicams, perturb_callable, estimator
                )
            for w in got:
                key = (w.category, str(w.message))
                caught[key] = caught.get(key, 0) + 1
            records.append({"index": i, "rank": rank, "size": n, "values": values, "zeroed": zeroed})
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
                error_type = {
                    "InputError": InputError, "DeviceError": DeviceError, "ValueError": ValueError
                }.get(kind_name, RuntimeError)
                raise error_type(f"evaluate_kd failed on another rank: {message}")
        records = [r for part, _ in gathered for r in part]
    if failure is not None:
        raise failure
    records.sort(key=lambda r: (r["index"], r["rank"]))
    done = [r for r in records if r["values"] is not None]
    if done:
        _reemit(caught)  # warnings.warn <- _reemit <- evaluate_kd <- kd_compat <- the caller
        if rank == 0:
            _report_degenerate(records, len(records))
    else:
        small = sum(1 for r in records if r["values"] is None and not r.get("degenerate"))
        degenerate = [r for r in records if r.get("degenerate")]
        raise InputError(
            f"no batch could be scored ({len(records)} seen): {small} had fewer than "
            f"{MIN_BATCH_PARTIAL} samples (use a larger batch size) and {len(degenerate)} had labels "
            "that carry no information"
            + (f" ({degenerate[0]['degenerate']}; to fix it, {LABEL_FIX})" if degenerate else "")
            + "."
        )
    result_values = {
        name: {kind: {m: [r["values"][name][kind][m] for r in done] for m in METRICS} for kind in kinds}
        for name in layer_pairs
    }
    degenerate_values: Dict[str, int] = {}
    for r in done:
        for key in r.get("zeroed") or {}:
            degenerate_values[key] = degenerate_values.get(key, 0) + 1
    settings = {
        "estimator": estimator,
        "perturbation": perturb_name,
        "label_embeddings": "one-hot"
        if label_embeddings is None
        else f"table {tuple(label_embeddings.shape)[0]}x{tuple(label_embeddings.shape)[1]}",
        "n_bootstrap": n_bootstrap,
        "n_permutations": n_permutations,
        "seed": seed,
        "world_size": world,
        "sharding": "sampler" if presharded else "batch index % world size",
        "device": str(device) if device is not None else "as given",
    }
    return KDEvaluation(
        layers=list(layer_pairs),
        map_kinds=kinds,
        values=result_values,
        batch_indices=[r["index"] for r in done],
        batch_sizes=[r["size"] for r in done],
        skipped_batches=[r["index"] for r in records if r["values"] is None and not r.get("degenerate")],
        settings=settings,
        degenerate_batches=[r["index"] for r in records if r.get("degenerate")],
        degenerate_values=degenerate_values,
    )
