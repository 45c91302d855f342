r"""Table layouts of a :class:`~captum_unicam.metrics.KDEvaluation` (Markdown and CSV).

:data:`LAYOUTS`:

- ``"full"``: one row per layer and map kind: FSS, RS Base, RS Student, RS distilled,
  RS residual, p (Student > Base), and the leakage baselines of FSS, RS Base and RS Student
  (``†``: an RS whose interval is not above its baseline's);
- ``"paper"``: the paper's Table 1, one row per layer;
- ``"readme"``: one row per layer, Grad-CAM FSS / RS and p, the UniCAM columns of Table 1,
  and the raw-feature pdCor S_d / S_r;
- ``"raw"``: one row per layer from the raw features: S_d, S_r, RS Student, RS Base, p, FSS.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple

from captum_unicam.errors import InputError
from captum_unicam.output.tables import (
    METRIC_TITLES,
    METRICS,
    csv_table,
    format_pm,
    map_title,
    markdown_table,
)

__all__ = ["LAYOUTS", "flat_rows", "markdown", "csv"]

LAYOUTS = ("full", "paper", "readme", "raw")

_SERIES = {
    "fss": "Student vs Base",
    "rs_base": "Base",
    "rs_student": "Student",
    "rs_distilled": "distilled",
    "rs_residual": "residual",
}
_P_OF = {"rs_student": "p_student_gt_base", "rs_distilled": "p_distilled_gt_residual"}
_LEAK = ("fss", "rs_base", "rs_student")
_MARK = " †"

#: Per-layer layouts: (title, map kind, statistic, CSV name); statistic "p" is the p-value
#: of RS Student > RS Base.
_COLUMNS: Dict[str, List[Tuple[str, str, str, str]]] = {
    "paper": [
        ("Layer-specific: Base", "gradcam", "rs_base", "gradcam_rs_base"),
        ("Layer-specific: Student", "gradcam", "rs_student", "gradcam_rs_student"),
        ("Residual: Base", "residual", "rs_base", "residual_rs_base"),
        ("Distilled: Student", "distilled", "rs_student", "distilled_rs_student"),
    ],
    "readme": [
        ("FSS (Grad-CAM)", "gradcam", "fss", "gradcam_fss"),
        ("RS Base (Grad-CAM)", "gradcam", "rs_base", "gradcam_rs_base"),
        ("RS Student (Grad-CAM)", "gradcam", "rs_student", "gradcam_rs_student"),
        ("p (S>B)", "gradcam", "p", "gradcam_p_student_gt_base"),
        ("RS Base (residual map)", "residual", "rs_base", "residual_rs_base"),
        ("RS Student (distilled map)", "distilled", "rs_student", "distilled_rs_student"),
        ("pdCor distilled (raw)", "none", "rs_distilled", "none_rs_distilled"),
        ("pdCor residual (raw)", "none", "rs_residual", "none_rs_residual"),
    ],
    "raw": [
        ("S_d = pdCor(Student, Y; Base)", "none", "rs_distilled", "rs_distilled"),
        ("S_r = pdCor(Base, Y; Student)", "none", "rs_residual", "rs_residual"),
        ("RS Student", "none", "rs_student", "rs_student"),
        ("RS Base", "none", "rs_base", "rs_base"),
        ("p (Student > Base)", "none", "p", "p_student_gt_base"),
        ("FSS", "none", "fss", "fss"),
    ],
}


def flat_rows(by_layer: Mapping[str, Mapping[str, Any]], aggregation: str) -> List[Dict[str, Any]]:
    """One record per (layer, map, statistic) of a summary (for plotting)."""
    rows = []
    for layer, kinds in by_layer.items():
        for kind, entry in kinds.items():
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
                    "n_batches": entry["n_batches"],
                    "aggregation": aggregation,
                }
                if metric in _P_OF:
                    row["p"] = entry[_P_OF[metric]]
                rows.append(row)
    return rows


def _columns(evaluation: Any, layout: str) -> List[Tuple[str, str, str, str]]:
    if layout not in _COLUMNS:
        raise InputError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    cols = _COLUMNS[layout]
    missing = sorted({k for _, k, _, _ in cols} - set(evaluation.map_kinds))
    if missing:
        raise InputError(
            f"layout={layout!r} needs the map kinds {sorted({k for _, k, _, _ in cols})}; "
            f"missing {missing}: evaluate them (maps=None evaluates all four)."
        )
    return cols


def _cell(entry: Mapping[str, Any], metric: str, digits: int) -> str:
    if metric == "p":
        return f"{entry['p_student_gt_base']:.3g}"
    text = format_pm(entry[metric], digits)
    if entry.get("above_leakage", {}).get(metric) is False:
        text += _MARK
    return text


def _full_md(
    evaluation: Any, by_layer: Mapping[str, Any], digits: int
) -> Tuple[List[str], List[List[str]]]:
    header = ["Layer", "Map"] + [METRIC_TITLES[m] for m in METRICS] + ["p (Student > Base)"]
    header += [f"{METRIC_TITLES[m]} leakage" for m in _LEAK]
    body = []
    for layer in evaluation.layers:
        for kind in evaluation.map_kinds:
            e = by_layer[layer][kind]
            leak = e.get("leakage", {})
            body.append(
                [layer, map_title(kind)]
                + [_cell(e, m, digits) for m in METRICS]
                + [f"{e['p_student_gt_base']:.3g}"]
                + [format_pm(leak.get(m), digits) for m in _LEAK]
            )
    return header, body


def _footnote(evaluation: Any, aggregation: str) -> str:
    st = evaluation.settings
    how = (
        "Dataset-level estimate (correlations from the inner products accumulated over "
        f"{len(evaluation.batch_indices)} batches)"
        if aggregation == "dataset"
        else f"Mean over {len(evaluation.batch_indices)} batches"
    )
    return (
        f"{how} ± half the width of the 95 % bootstrap interval ({st.get('n_bootstrap', '?')} "
        f"resamples of the batches, seed {st.get('seed', '?')}). p: one-sided permutation test "
        f"over batches. Estimator {st.get('estimator', '?')!r}, perturbation "
        f"{st.get('perturbation', '?')}, labels {st.get('label_embeddings', '?')}, maps "
        f"{st.get('reference', '?')}. Leakage: the same statistic on the batch's mean image "
        "masked by the same maps (what the mask alone carries); † marks an RS whose interval is "
        "not above its leakage baseline's. FSS on masked images is high for any pair of models, "
        "because both see the same masked images: read it against its leakage and the raw row."
    )


def markdown(evaluation: Any, summary: Mapping[str, Any], layout: str, digits: int) -> str:
    """The Markdown table of ``layout`` with its footnote."""
    by_layer = summary["by_layer"]
    if layout == "full":
        header, body = _full_md(evaluation, by_layer, digits)
    else:
        cols = _columns(evaluation, layout)
        header = ["Layer"] + [c[0] for c in cols]
        body = [
            [layer] + [_cell(by_layer[layer][k], m, digits) for _, k, m, _ in cols]
            for layer in evaluation.layers
        ]
    aggregation = summary["rows"][0]["aggregation"] if summary["rows"] else "dataset"
    return markdown_table(header, body, notes=[_footnote(evaluation, aggregation)])


def _bounds(e: Mapping[str, Any]) -> List[Any]:
    return [e["mean"], e["low"], e["high"]]


def _full_csv(evaluation: Any, by_layer: Mapping[str, Any]) -> Tuple[List[str], List[List[Any]]]:
    header = ["layer", "map", "n_batches"]
    for m in METRICS:
        header += [f"{m}_mean", f"{m}_ci_low", f"{m}_ci_high"]
    for m in _LEAK:
        header += [f"leakage_{m}_mean", f"leakage_{m}_ci_low", f"leakage_{m}_ci_high"]
    header += ["p_student_gt_base", "p_distilled_gt_residual"]
    body = []
    for layer in evaluation.layers:
        for kind in evaluation.map_kinds:
            e = by_layer[layer][kind]
            row = [layer, kind, e["n_batches"]]
            for m in METRICS:
                row += _bounds(e[m])
            leak = e.get("leakage")
            for m in _LEAK:
                row += _bounds(leak[m]) if leak else [None, None, None]
            body.append(row + [e["p_student_gt_base"], e["p_distilled_gt_residual"]])
    return header, body


def csv(evaluation: Any, summary: Mapping[str, Any], layout: str) -> str:
    """The CSV table of ``layout`` (full precision)."""
    by_layer = summary["by_layer"]
    if layout == "full":
        header, body = _full_csv(evaluation, by_layer)
        return csv_table(header, body)
    cols = _columns(evaluation, layout)
    header = ["layer"]
    for _, _, m, name in cols:
        header += [name] if m == "p" else [f"{name}_mean", f"{name}_ci_low", f"{name}_ci_high"]
    body: List[Sequence[Any]] = []
    for layer in evaluation.layers:
        row: List[Any] = [layer]
        for _, k, m, _ in cols:
            e = by_layer[layer][k]
            row += [e["p_student_gt_base"]] if m == "p" else _bounds(e[m])
        body.append(row)
    return csv_table(header, body)
