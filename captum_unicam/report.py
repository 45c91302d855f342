r"""The report folder of ``captum-unicam demo`` / ``explain`` / ``quantify``.

A report is a folder::

    index.html        opens from disk in any browser: no server, no script, no CDN
    metrics.json      every number (per layer, per model pair, with intervals)
    tables/*.csv|.md  Table 1 of the paper, accuracies, localisation, cued evaluation
    figures/*.png     Grad-CAM / UniCAM grids per layer, FSS and RS per layer, localisation
    models/*.pt       (demo) the Teacher, Base and Student checkpoints

:func:`write_report` builds it in a temporary sibling folder and renames it into place
only when it is complete, so a crash never leaves a half-written report and never
touches an existing one; an existing non-empty folder is refused unless
``overwrite=True`` (see :func:`check_output_dir`, which the command line calls before any
long work).

:func:`localisation` measures, on data with ground-truth object masks (the controlled
dataset), where each kind of map puts its mass: the mask energy fraction and the
pointing game, with bootstrap intervals.
"""

from __future__ import annotations

from captum_unicam import errors as _errors

import csv
import datetime
import io
import json
import math
import os
import platform
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "OutputFolderError",
    "check_output_dir",
    "cued_tables",
    "localisation",
    "publish_folder",
    "to_jsonable",
    "versions",
    "write_report",
    "MEANINGS",
]

PathLike = Union[str, os.PathLike]


OutputFolderError = _errors.OutputError  # the library's one family of expected failures


from captum_unicam.output.publish import REPORT_FORMAT, check_output_dir, publish_folder, staged_folder  # noqa: E402


# ---------------------------------------------------------------------------
# localisation against ground-truth masks
# ---------------------------------------------------------------------------


from captum_unicam.metrics.localisation import localisation  # noqa: E402  (moved next to the other metrics)


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------


def versions() -> Dict[str, str]:
    r"""Versions of python, torch, torchvision, captum, matplotlib and captum-unicam."""
    import captum
    import matplotlib
    import torchvision

    from captum_unicam import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "captum": captum.__version__,
        "matplotlib": matplotlib.__version__,
        "captum-unicam": __version__,
        "platform": platform.platform(),
    }


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values: tensors/arrays to lists, non-finite floats to None."""
    if isinstance(obj, Tensor):
        obj = obj.detach().cpu().tolist()
    elif isinstance(obj, np.ndarray):
        obj = obj.tolist()
    elif isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.{digits}f}"
    return str(v)


def _interval(d: Optional[Mapping[str, Any]], digits: int = 3) -> str:
    if not d or d.get("mean") is None:
        return "–"
    lo, hi = d.get("low"), d.get("high")
    if lo is None or hi is None:
        return _fmt(d["mean"], digits)
    return f"{_fmt(d['mean'], digits)} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"


def _write_table(folder: Path, name: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Tuple[str, str]:
    """Writes tables/<name>.csv and .md; returns (csv text, markdown text)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if v is None else v for v in r])
    csv_text = buf.getvalue()
    md = "| " + " | ".join(header) + " |\n|" + "|".join("---" for _ in header) + "|\n"
    md += "".join("| " + " | ".join(_fmt(v) for v in r) + " |\n" for r in rows)
    (folder / f"{name}.csv").write_text(csv_text, encoding="utf-8")
    (folder / f"{name}.md").write_text(md, encoding="utf-8")
    return csv_text, md


def _markdown_to_html(md: str) -> str:
    """Kept for old imports: :func:`captum_unicam.output.html.markdown_to_html`."""
    from captum_unicam.output.html import markdown_to_html

    return markdown_to_html(md)


#: What each number means, in plain words (shown in index.html).
MEANINGS: Dict[str, str] = {
    "FSS (feature similarity score)": (
        "How alike the Student's and the Base's features are at one layer, measured on the "
        "image regions a saliency map selects. It is the bias-corrected squared distance "
        "correlation between the two models' feature vectors over a batch of images: 0 means "
        "their features vary independently from image to image, 1 means one is a rotation "
        "and scaling of the other. Values slightly below 0 are noise around 0."),
    "RS (relevance score)": (
        "How much a model's features at one layer reflect the classes: the bias-corrected "
        "squared distance correlation between the features (on the regions the map selects) "
        "and the label embeddings. Higher means more task-relevant features. RS of the "
        "distilled / residual features is the partial distance correlation with the labels "
        "given the other model's features, i.e. what one model knows about the labels that "
        "the other does not."),
    "Distilled features (UniCAM)": (
        "The part of the Student's representation that the Base does not have, i.e. what "
        "knowledge distillation added. The distilled map shows where in the image the "
        "Student uses those features to separate the classes."),
    "Residual features (UniCAM)": (
        "The part of the Base's representation that the Student does not have, i.e. what the "
        "Student did not learn or dropped. The residual map shows where in the image the Base "
        "uses those features. An empty map means nothing of the kind is left after ReLU."),
    "Localisation (controlled data)": (
        "Mask energy fraction: the share of a map's positive mass that falls on the object "
        "(a uniform map scores the object's area, the dashed line). Pointing game: how often "
        "the map's peak falls on the object. Higher is better-localised on the object, which "
        "carries the class; background carries only clutter and the spurious tint."),
    "Intervals and p-values": (
        "Brackets are 95 % bootstrap intervals (over batches for FSS/RS, over images for "
        "localisation). p(Student > Base) is a one-sided paired permutation test over the "
        "same batches."),
}


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#f3f3f3}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.4em 0}
.note{color:#555;font-size:.92em}.warn{background:#fff4e5;border-left:4px solid #f0a030;padding:.5em 1em}
dt{font-weight:bold;margin-top:.6em}code,pre{background:#f6f6f6;padding:.1em .3em;font-size:.9em}
pre{padding:.6em;overflow-x:auto;white-space:pre-wrap}
nav a{margin-right:1em}
"""


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------


def _evaluation_parts(evaluation: Any) -> Dict[str, Any]:
    """Summary dict, Table 1 (markdown, csv) and per-layer plot panels of a KDEvaluation."""
    parts: Dict[str, Any] = {"summary": None, "markdown": None, "csv": None, "panels": None}
    if evaluation is None:
        return parts
    parts["summary"] = evaluation.summary() if hasattr(evaluation, "summary") else evaluation
    if hasattr(evaluation, "to_markdown"):
        parts["markdown"] = evaluation.to_markdown()
    if hasattr(evaluation, "to_csv"):
        csv_text = evaluation.to_csv()
        parts["csv"] = csv_text if isinstance(csv_text, str) else None
    parts["panels"] = _panels_from_summary(parts["summary"])
    return parts


def _panels_from_summary(summary: Any) -> Optional[Dict[str, Dict[str, Dict[str, Any]]]]:
    """FSS / RS per layer panels for viz.scores_per_layer, from KDEvaluation.summary().

    The summary is ``summary[layer][kind][metric] = {"mean", "low", "high"}``
    (or that under the key ``"by_layer"``).
    Panels (paper Fig. 4 and Table 1): FSS per map kind; RS of Base and Student on
    their Grad-CAM regions; RS of the Student on the distilled map and of the Base on
    the residual map.
    """
    if isinstance(summary, Mapping) and isinstance(summary.get("by_layer"), Mapping):
        summary = summary["by_layer"]
    if not isinstance(summary, Mapping) or not summary:
        return None
    titles = {"none": "raw features", "gradcam": "Grad-CAM", "distilled": "UniCAM distilled",
              "residual": "UniCAM residual"}
    fss: Dict[str, Dict[str, Any]] = {}
    rs_gc: Dict[str, Dict[str, Any]] = {}
    rs_uc: Dict[str, Dict[str, Any]] = {}

    def iv(entry: Any, metric: str) -> Optional[Dict[str, Any]]:
        e = entry.get(metric) if isinstance(entry, Mapping) else None
        if not isinstance(e, Mapping) or e.get("mean") is None:
            return None
        return {"mean": e["mean"], "low": e["low"], "high": e["high"]}

    for layer, kinds in summary.items():
        if not isinstance(kinds, Mapping):
            return None
        for kind, entry in kinds.items():
            v = iv(entry, "fss")
            if v is not None:
                fss.setdefault(titles.get(kind, kind), {})[layer] = v
        gc = kinds.get("gradcam")
        if gc is not None:
            for metric, name in (("rs_base", "Base"), ("rs_student", "Student")):
                v = iv(gc, metric)
                if v is not None:
                    rs_gc.setdefault(name, {})[layer] = v
        for kind, metric, name in (("distilled", "rs_student", "Student on distilled map"),
                                   ("residual", "rs_base", "Base on residual map")):
            v = iv(kinds.get(kind), metric)
            if v is not None:
                rs_uc.setdefault(name, {})[layer] = v
    panels: Dict[str, Dict[str, Dict[str, Any]]] = {}
    if fss:
        panels["(a) FSS, Student vs Base"] = fss
    if rs_gc:
        panels["(b) RS on Grad-CAM regions"] = rs_gc
    if rs_uc:
        panels["(c) RS on UniCAM regions"] = rs_uc
    return panels or None


_KIND_ORDER = ("distilled", "residual", "gradcam_student", "gradcam_base")
_KIND_TITLES = {"distilled": "distilled", "residual": "residual", "gradcam_student": "Grad-CAM Student",
                "gradcam_base": "Grad-CAM Base"}


def cued_tables(cued: Mapping[str, Any]) -> Dict[str, Tuple[List[str], List[List[Any]]]]:
    r"""The tables of a :func:`~captum_unicam.pipeline.evaluation.cued_evaluation` result:
    ``"cued_scores"`` (per condition and layer: S_d, S_r and each map kind's mass on the
    object, with chance) and ``"cued_background"`` (each map kind's mass on the
    background). Cells are "mean [low, high]" strings (95 % bootstrap intervals).

    Returns:
        dict: table name -> (header, rows).
    """
    kinds = [k for k in _KIND_ORDER if k in cued.get("kinds", _KIND_ORDER)]
    obj_head = ["condition", "layer", "S_d", "S_r"] + [f"object mass: {_KIND_TITLES[k]}" for k in kinds] + ["chance"]
    bg_head = ["condition", "layer"] + [f"background mass: {_KIND_TITLES[k]}" for k in kinds] + ["chance"]
    obj_rows, bg_rows = [], []
    for cond, entry in cued["conditions"].items():
        for layer, res in entry["layers"].items():
            obj_rows.append([cond, layer, _interval(res["s_d"]), _interval(res["s_r"])]
                            + [_interval(res["mass"]["object"][k]) for k in kinds]
                            + [_fmt(res["chance"]["object"], 3)])
            bg_rows.append([cond, layer] + [_interval(res["mass"]["background"][k]) for k in kinds]
                           + [_fmt(res["chance"]["background"], 3)])
    return {"cued_scores": (obj_head, obj_rows), "cued_background": (bg_head, bg_rows)}


def cued_reading(cued: Mapping[str, Any], layer: Optional[str] = None) -> Optional[str]:
    r"""One sentence reading a cued evaluation at ``layer`` (default: the last one): S_r
    cue-free and cued, and the background mass of the residual map against Grad-CAM of
    the Base on cued images. None when a condition is missing."""
    conds = cued.get("conditions", {})
    if "cue-free" not in conds or "cued" not in conds:
        return None
    free, cue = conds["cue-free"]["layers"], conds["cued"]["layers"]
    layer = layer or list(cue)[-1]
    if layer not in free or layer not in cue:
        return None
    bg = cue[layer]["mass"]["background"]
    rise = (cue[layer]["s_r"]["mean"] or 0.0) - (free[layer]["s_r"]["mean"] or 0.0)
    return (f"Here, at {layer}, S_r is {_interval(free[layer]['s_r'])} on cue-free and {_interval(cue[layer]['s_r'])} "
            f"on cued images ({'a rise' if rise > 0 else 'no rise'}); on cued images the residual map puts "
            f"{_interval(bg['residual'])} of its mass on the background, Grad-CAM of the Base "
            f"{_interval(bg['gradcam_base'])} (chance {_fmt(cue[layer]['chance']['background'], 3)}).")


def write_report(
    out_dir: PathLike,
    *,
    overwrite: bool = False,
    title: str = "UniCAM report",
    command: Optional[Union[str, Sequence[str]]] = None,
    data: Optional[str] = None,
    models: Optional[Mapping[str, Mapping[str, Any]]] = None,
    evaluation: Any = None,
    score_panels: Optional[Mapping[str, Mapping[str, Mapping[str, Any]]]] = None,
    grids: Optional[Mapping[str, Mapping[str, Any]]] = None,
    localisation: Optional[Mapping[str, Mapping[str, Any]]] = None,
    model_files: Optional[Mapping[str, PathLike]] = None,
    notes: Optional[Sequence[str]] = None,
    warnings: Optional[Sequence[str]] = None,
    extra_metrics: Optional[Mapping[str, Any]] = None,
    progress: bool = True,
    accuracy_set: Optional[str] = None,
    cued: Optional[Mapping[str, Any]] = None,
) -> Path:
    r"""Writes a complete report folder, atomically.

    The folder is built in a temporary sibling folder ``.X.tmp-PID-*``
    (:func:`~captum_unicam.output.publish.staged_folder`) and renamed to ``out_dir`` only
    when complete; its ``metrics.json`` holds ``"format": REPORT_FORMAT``, which marks it
    as a report of this tool. With ``overwrite=True`` an existing
    folder is moved aside, replaced, then deleted. On any error the temporary folder is
    removed, any existing ``out_dir`` is left untouched, and the error propagates.

    Args:
        out_dir (str or PathLike): the report folder.
        overwrite (bool, optional): replace an existing non-empty folder. Default: False
        title (str, optional): page title. Default: "UniCAM report"
        command (str or list of str, optional): the command line that made the report.
            Default: ``sys.argv``.
        data (str, optional): description of the data (spec, split, number of images).
        models (dict, optional): role (``"Teacher"``, ``"Base"``, ``"Student"``) -> plain
            info, e.g. ``{"arch": ..., "accuracy": 0.91, "checkpoint": ..., "kd_method": ...}``.
            The accuracies are always shown; a missing one is shown as "not measured".
        evaluation (KDEvaluation, optional): result of
            :func:`captum_unicam.metrics.evaluate_kd`; gives Table 1 (``to_markdown``,
            ``to_csv``), metrics.json (``summary``) and the FSS / RS figure.
        score_panels (dict, optional): panels for :func:`captum_unicam.viz.scores_per_layer`
            when they cannot be read off ``evaluation``.
        grids (dict, optional): layer -> ``{"images": (N,C,H,W) in [0,1], "maps": {column:
            (N,1,h,w)}, "labels": [str] (optional)}``; one grid figure per layer.
        localisation (dict, optional): layer -> result of :func:`localisation`.
        model_files (dict, optional): file name -> checkpoint path, copied to ``models/``.
        notes (list of str, optional): paragraphs shown at the top (e.g. the scenario).
        warnings (list of str, optional): highlighted paragraphs shown at the top (e.g.
            "distillation did not help").
        extra_metrics (dict, optional): more numbers for metrics.json.
        progress (bool, optional): show a progress bar over the figures. Default: True
        accuracy_set (str, optional): the set the accuracies were measured on, named in
            the table's header and metrics.json. Default: None ("test")
        cued (dict, optional): result of
            :func:`~captum_unicam.pipeline.evaluation.cued_evaluation`; gives the section
            "What the Base used that the Student dropped" and ``tables/cued_*.csv|.md``.

    Returns:
        pathlib.Path: the report folder.

    Raises:
        OutputFolderError: ``out_dir`` is not empty and ``overwrite`` is False.
    """
    from tqdm.auto import tqdm

    from captum_unicam import viz

    out = check_output_dir(out_dir, overwrite=overwrite)
    if command is None:
        command = [Path(sys.argv[0]).name] + sys.argv[1:]
    command_str = command if isinstance(command, str) else shlex.join(str(c) for c in command)

    with staged_folder(out, overwrite=overwrite) as tmp:
        (tmp / "figures").mkdir()
        (tmp / "tables").mkdir()
        ev = _evaluation_parts(evaluation)
        panels = score_panels if score_panels is not None else ev["panels"]

        steps: List[Tuple[str, Any]] = []
        for layer, g in (grids or {}).items():
            steps.append((f"grid_{layer}", g))
        if panels:
            steps.append(("scores", panels))
        if localisation:
            steps.append(("localisation", localisation))
        figures: Dict[str, str] = {}
        bar = tqdm(steps, desc="report figures", unit="fig", disable=not progress or not steps,
                   leave=False)
        for name, payload in bar:
            if name.startswith("grid_"):
                layer = name[5:]
                fig = viz.attribution_grid(payload["images"], payload["maps"],
                                           title=f"Layer {layer}", row_labels=payload.get("labels"))
            elif name == "scores":
                fig = viz.scores_per_layer(payload, title="FSS and RS per layer (95 % intervals)")
            else:
                first = next(iter(localisation.values()))
                fig = viz.localisation_plot(
                    {layer: loc["kinds"] for layer, loc in localisation.items()},
                    chance=first.get("chance"), title="Localisation on the object mask (95 % intervals)")
            viz.save_figure(fig, tmp / "figures" / f"{name}.png")
            figures[name] = f"figures/{name}.png"

        # ---- tables
        tables: Dict[str, Tuple[str, str]] = {}
        model_rows = []
        for role, info in (models or {}).items():
            acc = info.get("accuracy")
            model_rows.append([role, info.get("arch"), acc if acc is not None else "not measured",
                               info.get("kd_method") or "", info.get("checkpoint") or ""])
        if model_rows:
            tables["models"] = _write_table(tmp / "tables", "models",
                                            ["model", "architecture",
                                             f"accuracy on {accuracy_set}" if accuracy_set else "test accuracy",
                                             "KD method", "checkpoint"],
                                            model_rows)
        if ev["markdown"] is not None:
            (tmp / "tables" / "table1.md").write_text(ev["markdown"], encoding="utf-8")
        if ev["csv"] is not None:
            (tmp / "tables" / "table1.csv").write_text(ev["csv"], encoding="utf-8")
        if localisation:
            loc_rows = []
            for layer, loc in localisation.items():
                for kind, d in loc["kinds"].items():
                    loc_rows.append([layer, kind, _interval(d["energy"]), _interval(d["pointing"]),
                                     d["n_images"], d["n_empty"]])
            tables["localisation"] = _write_table(
                tmp / "tables", "localisation",
                ["layer", "map", "mask energy fraction [95 % CI]", "pointing game [95 % CI]",
                 "images", "empty maps"], loc_rows)

        if cued:
            for name, (header, rows) in cued_tables(cued).items():
                tables[name] = _write_table(tmp / "tables", name, header, rows)

        # ---- copied checkpoints
        if model_files:
            (tmp / "models").mkdir()
            for name, src in model_files.items():
                shutil.copy2(src, tmp / "models" / name)

        # ---- metrics.json
        metrics = {
            "format": REPORT_FORMAT,
            "title": title,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command_str,
            "versions": versions(),
            "data": data,
            "models": models or {},
            "accuracy_set": accuracy_set or "test",
            "evaluation": ev["summary"],
            "localisation": localisation,
        }
        if cued:
            metrics["cued_evaluation"] = cued
        if extra_metrics:
            metrics.update(extra_metrics)
        (tmp / "metrics.json").write_text(
            json.dumps(to_jsonable(metrics), indent=2, allow_nan=False) + "\n", encoding="utf-8")

        # ---- index.html
        from captum_unicam.output.html import render_page

        page = render_page(title=title, command=command_str, data=data, models=models or {}, figures=figures,
                           empty_maps={layer: _empty_counts(g.get("maps", {})) for layer, g in (grids or {}).items()},
                           table1_md=ev["markdown"], tables=tables, localisation=localisation,
                           notes=notes or [], warnings=warnings or [], model_files=model_files or {},
                           meanings=MEANINGS, versions=versions(), css=_CSS, accuracy_set=accuracy_set,
                           cued_reading=cued_reading(cued) if cued else None)
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return out


def _empty_counts(maps: Mapping[str, Tensor]) -> str:
    from captum_unicam.viz import is_empty_map

    bits = []
    for name, m in maps.items():
        k = sum(is_empty_map(m[i]) for i in range(m.shape[0]))
        if k:
            bits.append(f"{name}: {k} of {m.shape[0]}")
    return "; ".join(bits)
