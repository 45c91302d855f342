r"""The report folder of ``captum-unicam demo`` / ``explain`` / ``quantify``.

A report is a folder::

    index.html        opens from disk in any browser: no server, no script, no CDN
    metrics.json      every number (per layer, per model pair, with intervals)
    tables/*.csv|.md  Table 1 of the paper, accuracies, localisation, cued evaluation
    figures/*.png     Grad-CAM / UniCAM grids per layer, FSS and RS per layer, localisation
    models/*.pt       (demo) the Teacher, Base and Student checkpoints

:class:`Report` says what a report shows (every field optional, a section is left out
when it has nothing); :func:`write_report` builds the folder in a temporary sibling
folder and renames it into place only when it is complete, so a crash never leaves a
half-written report and never touches an existing one; an existing non-empty folder is
refused unless ``overwrite=True`` (see
:func:`~captum_unicam.output.publish.check_output_dir`, which the pipeline calls before
any long work). The page is rendered by :mod:`captum_unicam.output.html`.
"""

from __future__ import annotations

import dataclasses
import datetime
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

from captum_unicam import viz
from captum_unicam.output import html
from captum_unicam.output.publish import REPORT_FORMAT, check_output_dir, staged_folder
from captum_unicam.output.tables import MAP_TITLES, format_interval, format_value, write_table

__all__ = [
    "Report",
    "cued_tables",
    "cued_reading",
    "to_jsonable",
    "versions",
    "write_report",
    "MEANINGS",
]

PathLike = Union[str, os.PathLike]


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


#: What each number means, in plain words (shown in index.html).
MEANINGS: Dict[str, str] = {
    "FSS (feature similarity score)": (
        "How alike the Student's and the Base's features are at one layer, measured on the "
        "image regions a saliency map selects. It is the bias-corrected squared distance "
        "correlation between the two models' feature vectors over a batch of images: 0 means "
        "their features vary independently from image to image, 1 means one is a rotation "
        "and scaling of the other. Values slightly below 0 are noise around 0."
    ),
    "RS (relevance score)": (
        "How much a model's features at one layer reflect the classes: the bias-corrected "
        "squared distance correlation between the features (on the regions the map selects) "
        "and the label embeddings. Higher means more task-relevant features. RS of the "
        "distilled / residual features is the partial distance correlation with the labels "
        "given the other model's features, i.e. what one model knows about the labels that "
        "the other does not."
    ),
    "Distilled features (UniCAM)": (
        "The part of the Student's representation that the Base does not have, i.e. what "
        "knowledge distillation added. The distilled map shows where in the image the "
        "Student uses those features to separate the classes."
    ),
    "Residual features (UniCAM)": (
        "The part of the Base's representation that the Student does not have, i.e. what the "
        "Student did not learn or dropped. The residual map shows where in the image the Base "
        "uses those features. An empty map means nothing of the kind is left after ReLU."
    ),
    "Localisation (controlled data)": (
        "Mask energy fraction: the share of a map's positive mass that falls on the object "
        "(a uniform map scores the object's area, the dashed line). Pointing game: how often "
        "the map's peak falls on the object. Higher is better-localised on the object, which "
        "carries the class; background carries only clutter and the spurious tint."
    ),
    "Intervals and p-values": (
        "Brackets are 95 % bootstrap intervals (over batches for FSS/RS, over images for "
        "localisation). p(Student > Base) is a one-sided paired permutation test over the "
        "same batches."
    ),
}


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------


#: Opens the conclusion when a model failed the sanity check.
REFUSAL = (
    "No conclusion about distillation is drawn from this run: a model failed the sanity "
    "check above, so its accuracy makes any comparison of the Student with the Base "
    "doubtful."
)


def _accuracies(models: Optional[Mapping[str, Mapping[str, Any]]]) -> Dict[str, float]:
    """``{"teacher", "base", "student"}`` accuracies of the models table (those measured)."""
    return {
        role.lower(): float(info["accuracy"])
        for role, info in (models or {}).items()
        if isinstance(info.get("accuracy"), (int, float))
    }


def _conclusion(
    report: "Report", evaluation: Any, summary: Any
) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
    """(text, headline) of the page's opening: the given conclusion, else the evaluation's
    map-free conclusion with the models' accuracies; a refusal when ``sanity`` flags a model."""
    head: Optional[Dict[str, Any]] = None
    text = report.conclusion
    kinds = list(getattr(evaluation, "map_kinds", ()) or ())
    reads = evaluation is not None and hasattr(evaluation, "headline")
    if text is None and reads and "none" in kinds:
        acc = _accuracies(report.models)
        known = report.near_chance_by_design
        head = dict(evaluation.headline(accuracies=acc, summary=summary, explained=known))
        text = evaluation.conclusion(accuracies=acc, summary=summary, explained=known)
    elif text is None and reads:
        text = (
            "No conclusion: the raw features (map kind 'none', the map-free scores the "
            "conclusion reads) were not evaluated; add none to the map kinds."
        )
    if report.sanity and text is not None:  # a conclusion to refuse (explain has none)
        text = REFUSAL + ("\n\nWhat the statistics alone would say:\n\n" + text if text else "")
        head = dict(head or {})
        head["refused"] = list(report.sanity)
    if head is not None:
        head["text"] = text
    return text, head


def _evaluation_parts(evaluation: Any) -> Dict[str, Any]:
    """Summary dict, Table 1 (markdown, csv) and per-layer plot panels of a KDEvaluation."""
    parts: Dict[str, Any] = {"summary": None, "markdown": None, "csv": None, "panels": None}
    if evaluation is None:
        return parts
    parts["summary"] = evaluation.summary() if hasattr(evaluation, "summary") else evaluation
    if hasattr(evaluation, "to_markdown"):
        parts["markdown"] = evaluation.to_markdown(headline=False)
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
    titles = MAP_TITLES
    fss: Dict[str, Dict[str, Any]] = {}
    rs_gc: Dict[str, Dict[str, Any]] = {}
    rs_uc: Dict[str, Dict[str, Any]] = {}

    def iv(entry: Any, metric: str) -> Optional[Dict[str, Any]]:
        e = entry.get(metric) if isinstance(entry, Mapping) else None
        if not isinstance(e, Mapping) or e.get("mean") is None:
            return None
        out = {"mean": e["mean"], "low": e["low"], "high": e["high"]}
        leak = (entry.get("leakage") or {}).get(metric) if metric != "fss" else None
        if isinstance(leak, Mapping) and leak.get("mean") is not None:
            out["leakage"] = leak["mean"]  # drawn as a tick on the bar
        return out

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
        for kind, metric, name in (
            ("distilled", "rs_student", "Student on distilled map"),
            ("residual", "rs_base", "Base on residual map"),
        ):
            v = iv(kinds.get(kind), metric)
            if v is not None:
                rs_uc.setdefault(name, {})[layer] = v
    panels: Dict[str, Dict[str, Dict[str, Any]]] = {}
    if fss:
        panels["(a) FSS, Student vs Base (masked: high for any pair)"] = fss
    if rs_gc:
        panels["(b) RS on Grad-CAM regions"] = rs_gc
    if rs_uc:
        panels["(c) RS on UniCAM regions"] = rs_uc
    return panels or None


_KIND_ORDER = ("distilled", "residual", "gradcam_student", "gradcam_base")
_KIND_TITLES = {
    "distilled": "distilled",
    "residual": "residual",
    "gradcam_student": MAP_TITLES["gradcam_student"],
    "gradcam_base": MAP_TITLES["gradcam_base"],
}


def cued_tables(cued: Mapping[str, Any]) -> Dict[str, Tuple[List[str], List[List[Any]]]]:
    r"""The tables of a :func:`~captum_unicam.pipeline.evaluation.cued_evaluation` result:
    ``"cued_scores"`` (per condition and layer: S_d, S_r and each map kind's mass on the
    object, with chance) and ``"cued_background"`` (each map kind's mass on the
    background). Cells are "mean [low, high]" strings (95 % bootstrap intervals).

    Returns:
        dict: table name -> (header, rows).
    """
    kinds = [k for k in _KIND_ORDER if k in cued.get("kinds", _KIND_ORDER)]
    obj_head = (
        ["condition", "layer", "S_d", "S_r"]
        + [f"object mass: {_KIND_TITLES[k]}" for k in kinds]
        + ["chance"]
    )
    bg_head = (
        ["condition", "layer"] + [f"background mass: {_KIND_TITLES[k]}" for k in kinds] + ["chance"]
    )
    obj_rows, bg_rows = [], []
    for cond, entry in cued["conditions"].items():
        for layer, res in entry["layers"].items():
            obj_rows.append(
                [cond, layer, format_interval(res["s_d"]), format_interval(res["s_r"])]
                + [format_interval(res["mass"]["object"][k]) for k in kinds]
                + [format_value(res["chance"]["object"], 3)]
            )
            bg_rows.append(
                [cond, layer]
                + [format_interval(res["mass"]["background"][k]) for k in kinds]
                + [format_value(res["chance"]["background"], 3)]
            )
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
    return (
        f"Here, at {layer}, S_r is {format_interval(free[layer]['s_r'])} on cue-free and "
        f"{format_interval(cue[layer]['s_r'])} "
        f"on cued images ({'a rise' if rise > 0 else 'no rise'}); on cued images the residual map puts "
        f"{format_interval(bg['residual'])} of its mass on the background, Grad-CAM of the Base "
        f"{format_interval(bg['gradcam_base'])} (chance {format_value(cue[layer]['chance']['background'], 3)})."
    )


@dataclasses.dataclass
class Report:
    r"""What one report shows: the specification :func:`write_report` writes.

    Every field is optional; a section of the page is left out when its field is empty.

    Attributes:
        title (str): Page title. Default: "UniCAM report"
        command (str or list of str, optional): The command line that made the report.
                    Default: ``sys.argv``.
        data (str, optional): Description of the data (spec, split, number of images).
        models (dict, optional): Role (``"Teacher"``, ``"Base"``, ``"Student"``) -> plain
                    info, e.g. ``{"arch": ..., "accuracy": 0.91, "checkpoint": ...,
                    "kd_method": ...}``. A missing accuracy is shown as "not measured".
        evaluation (optional): An object with ``summary()``, ``to_markdown()`` and
                    ``to_csv()`` (a :class:`~captum_unicam.metrics.KDEvaluation`); gives
                    Table 1, metrics.json's ``evaluation`` and the FSS / RS figure.
        score_panels (dict, optional): Panels for :func:`captum_unicam.viz.scores_per_layer`
                    when they cannot be read off ``evaluation``.
        grids (dict, optional): Layer -> ``{"images": (N,C,H,W) in [0,1], "maps": {column:
                    (N,1,h,w)}, "labels": [str] (optional)}``; one grid figure per layer.
        localisation (dict, optional): Layer -> result of
                    :func:`captum_unicam.metrics.localisation.localisation`.
        model_files (dict, optional): File name -> checkpoint path, copied to ``models/``.
        notes (list of str, optional): Paragraphs shown at the top (e.g. the scenario).
        warnings (list of str, optional): Highlighted paragraphs shown at the top.
        extra_metrics (dict, optional): More numbers for metrics.json.
        accuracy_set (str, optional): The set the accuracies were measured on, named in
                    the table's header and metrics.json. Default: None ("test")
        cued (dict, optional): Result of
                    :func:`~captum_unicam.pipeline.evaluation.cued_evaluation`; gives the
                    section "What the Base used that the Student dropped" and
                    ``tables/cued_*.csv|.md``.
        conclusion (str, optional): The conclusion the page opens with. Default: read off
                    ``evaluation`` (``evaluation.conclusion(accuracies=...)`` with the
                    accuracies of ``models``), or a refusal when ``sanity`` flags a model.
        sanity (list of str, optional): Models flagged before any conclusion (near chance,
                    far below their checkpoint's accuracy): shown first, and no conclusion
                    about distillation is drawn.
        near_chance_by_design (dict, optional): Role (``"base"``, ``"student"``) -> why
                    that model is near chance by design (e.g. the demo's Base); its statements
                    are made, with the reason, instead of refused.
        data_summary (dict, optional): ``{"classes", "n_images", "class_counts",
                    "preprocessing"}`` of the evaluated data
                    (:func:`~captum_unicam.data.data_summary`); the page's data section.
        empty_maps (dict, optional): Layer -> column -> ``(empty, computed)`` over every map
                    computed (default: counted on the drawn ``grids`` only).
        set_scores (dict, optional): Layer -> ``{"s_d", "s_r"}`` intervals of UniCAM's
                    scores over the evaluated set, with ``"how"`` (a sentence).
    """

    title: str = "UniCAM report"
    command: Optional[Union[str, Sequence[str]]] = None
    data: Optional[str] = None
    models: Optional[Mapping[str, Mapping[str, Any]]] = None
    evaluation: Any = None
    score_panels: Optional[Mapping[str, Mapping[str, Mapping[str, Any]]]] = None
    grids: Optional[Mapping[str, Mapping[str, Any]]] = None
    localisation: Optional[Mapping[str, Mapping[str, Any]]] = None
    model_files: Optional[Mapping[str, PathLike]] = None
    notes: Optional[Sequence[str]] = None
    warnings: Optional[Sequence[str]] = None
    extra_metrics: Optional[Mapping[str, Any]] = None
    accuracy_set: Optional[str] = None
    cued: Optional[Mapping[str, Any]] = None
    conclusion: Optional[str] = None
    sanity: Optional[Sequence[str]] = None
    near_chance_by_design: Optional[Dict[str, str]] = None
    data_summary: Optional[Mapping[str, Any]] = None
    empty_maps: Optional[Mapping[str, Mapping[str, Tuple[int, int]]]] = None
    set_scores: Optional[Mapping[str, Any]] = None

    def command_text(self) -> str:
        """The command line as one shell-quoted string."""
        command = self.command
        if command is None:
            command = [Path(sys.argv[0]).name] + sys.argv[1:]
        return command if isinstance(command, str) else shlex.join(str(c) for c in command)


def write_report(
    out_dir: PathLike, report: Report, *, overwrite: bool = False, progress: bool = True
) -> Path:
    r"""Writes the complete report folder of ``report``, atomically.

    The folder is built in a temporary sibling folder ``.X.tmp-PID-*``
    (:func:`~captum_unicam.output.publish.staged_folder`) and renamed to ``out_dir`` only
    when complete; its ``metrics.json`` holds ``"format": REPORT_FORMAT``, which marks it
    as a report of this tool. With ``overwrite=True`` an existing report folder is moved
    aside, replaced, then deleted. On any error the temporary folder is removed, any
    existing ``out_dir`` is left untouched, and the error propagates.

    Args:
        out_dir (str or PathLike): The report folder.
        report (Report): What the report shows.
        overwrite (bool, optional): Replace an existing report folder. Default: False
        progress (bool, optional): Show a progress bar over the figures. Default: True

    Returns:
        pathlib.Path: the report folder.

    Raises:
        OutputError: ``out_dir`` is not empty and ``overwrite`` is False.

    Examples::

        >>> write_report("rep", Report(title="explain", models={"Student": {...}}))
    """
    out = check_output_dir(out_dir, overwrite=overwrite)
    command = report.command_text()
    with staged_folder(out, overwrite=overwrite) as tmp:
        (tmp / "figures").mkdir()
        (tmp / "tables").mkdir()
        ev = _evaluation_parts(report.evaluation)
        ev["conclusion"], ev["headline"] = _conclusion(report, report.evaluation, ev["summary"])
        figures = _write_figures(tmp / "figures", report, ev, progress)
        tables = _write_tables(tmp / "tables", report, ev)
        if report.model_files:
            (tmp / "models").mkdir()
            for name, src in report.model_files.items():
                shutil.copy2(src, tmp / "models" / name)
        metrics = _metrics(report, ev, command)
        (tmp / "metrics.json").write_text(
            json.dumps(to_jsonable(metrics), indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        page = _page(report, ev, command, figures, tables)
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return out


def _write_figures(
    folder: Path, report: Report, ev: Mapping[str, Any], progress: bool
) -> Dict[str, str]:
    """The figures: a map grid per layer, the FSS / RS panels, localisation; name -> path."""
    from tqdm.auto import tqdm

    panels = report.score_panels if report.score_panels is not None else ev["panels"]
    steps: List[Tuple[str, Any]] = [
        (f"grid_{layer}", g) for layer, g in (report.grids or {}).items()
    ]
    if panels:
        steps.append(("scores", panels))
    if report.localisation:
        steps.append(("localisation", report.localisation))
    figures: Dict[str, str] = {}
    bar = tqdm(
        steps, desc="report figures", unit="fig", disable=not progress or not steps, leave=False
    )
    for name, payload in bar:
        if name.startswith("grid_"):
            fig = viz.attribution_grid(
                payload["images"],
                payload["maps"],
                title=f"Layer {name[5:]}",
                row_labels=payload.get("labels"),
                row_marks=payload.get("marks"),
            )
        elif name == "scores":
            fig = viz.scores_per_layer(payload, title="FSS and RS per layer (95 % intervals)")
        else:
            first = next(iter(payload.values()))
            fig = viz.localisation_plot(
                {layer: loc["kinds"] for layer, loc in payload.items()},
                chance=first.get("chance"),
                title="Localisation on the object mask (95 % intervals)",
            )
        viz.save_figure(fig, folder / f"{name}.png")
        figures[name] = f"figures/{name}.png"
    return figures


def _model_rows(models: Mapping[str, Mapping[str, Any]]) -> List[List[Any]]:
    return [
        [
            role,
            info.get("arch"),
            info.get("accuracy") if info.get("accuracy") is not None else "not measured",
            info.get("kd_method") or "",
            info.get("checkpoint") or "",
        ]
        for role, info in models.items()
    ]


def _localisation_rows(localisation: Mapping[str, Mapping[str, Any]]) -> List[List[Any]]:
    return [
        [
            layer,
            kind,
            format_interval(d["energy"]),
            format_interval(d["pointing"]),
            d["n_images"],
            d["n_empty"],
        ]
        for layer, loc in localisation.items()
        for kind, d in loc["kinds"].items()
    ]


def _write_tables(
    folder: Path, report: Report, ev: Mapping[str, Any]
) -> Dict[str, Tuple[str, str]]:
    """tables/*.csv|.md; name -> (csv text, markdown text) of the tables shown on the page."""
    tables: Dict[str, Tuple[str, str]] = {}
    if report.models:
        acc = f"accuracy on {report.accuracy_set}" if report.accuracy_set else "test accuracy"
        tables["models"] = write_table(
            folder,
            "models",
            ["model", "architecture", acc, "KD method", "checkpoint"],
            _model_rows(report.models),
            digits=4,
        )
    if ev["markdown"] is not None:
        (folder / "table1.md").write_text(ev["markdown"], encoding="utf-8")
    if ev["csv"] is not None:
        (folder / "table1.csv").write_text(ev["csv"], encoding="utf-8")
    if report.localisation:
        tables["localisation"] = write_table(
            folder,
            "localisation",
            [
                "layer",
                "map",
                "mask energy fraction [95 % CI]",
                "pointing game [95 % CI]",
                "images",
                "empty maps",
            ],
            _localisation_rows(report.localisation),
            digits=4,
        )
    if report.cued:
        for name, (header, rows) in cued_tables(report.cued).items():
            tables[name] = write_table(folder, name, header, rows, digits=4)
    return tables


def _metrics(report: Report, ev: Mapping[str, Any], command: str) -> Dict[str, Any]:
    metrics = {
        "format": REPORT_FORMAT,
        "title": report.title,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "versions": versions(),
        "data": report.data,
        "models": report.models or {},
        "accuracy_set": report.accuracy_set or "test",
        "evaluation": ev["summary"],
        "localisation": report.localisation,
    }
    metrics["headline"] = ev.get("headline") or (
        {"text": ev["conclusion"]} if ev.get("conclusion") else None
    )
    metrics["sanity"] = list(report.sanity or [])
    metrics["warnings"] = _all_warnings(report)
    if report.data_summary is not None:
        metrics["data_summary"] = report.data_summary
        metrics["classes"] = list(report.data_summary.get("classes") or [])
    if report.set_scores:
        metrics["set_scores"] = report.set_scores
    if report.empty_maps:
        metrics["empty_maps"] = {
            layer: {k: {"empty": e, "computed": n} for k, (e, n) in kinds.items()}
            for layer, kinds in report.empty_maps.items()
        }
    if report.cued:
        metrics["cued_evaluation"] = report.cued
    if report.extra_metrics:
        metrics.update(report.extra_metrics)
    return metrics


def _all_warnings(report: Report) -> List[str]:
    """The sanity flags and every warning of the run, each once, in order."""
    return list(dict.fromkeys(list(report.sanity or []) + list(report.warnings or [])))


def _opening_sections(report: Report, ev: Mapping[str, Any]) -> List[html.Section]:
    """What the page opens with: the sanity check, the conclusion, what was compared, the
    data, UniCAM's scores of the evaluated set (each when the report has it)."""
    models = report.models or {}
    sections: List[html.Section] = []
    if report.sanity:
        sections.append(html.sanity_section(report.sanity))
    if ev.get("conclusion"):
        masked = any(k != "none" for k in getattr(report.evaluation, "map_kinds", ()))
        sections.append(
            html.conclusion_section(ev["conclusion"], ev.get("headline"), masked=masked)
        )
    if models or report.data:
        sections.append(
            html.compared_section(
                report.data,
                models,
                report.accuracy_set,
                report.model_files or {},
                refused=bool(report.sanity),
            )
        )
    if report.data_summary:
        sections.append(html.data_section(report.data_summary))
    if report.set_scores:
        sections.append(html.set_scores_section(report.set_scores))
    return sections


def _page(
    report: Report,
    ev: Mapping[str, Any],
    command: str,
    figures: Mapping[str, str],
    tables: Mapping[str, Tuple[str, str]],
) -> str:
    """index.html: the sections this report has content for, in the one page layout."""
    sections = _opening_sections(report, ev)
    if report.empty_maps:
        empty = {layer: _counted(kinds) for layer, kinds in report.empty_maps.items()}
    else:
        empty = {
            layer: _empty_counts(g.get("maps", {})) for layer, g in (report.grids or {}).items()
        }
    sections += html.score_sections(figures, empty, ev["markdown"])
    if report.localisation:
        sections.append(html.localisation_section(figures, tables, report.localisation))
    if "cued_scores" in tables:
        sections.append(
            html.cued_section(tables, cued_reading(report.cued) if report.cued else None)
        )
    shown = _meanings(
        bool(report.localisation), bool(ev["markdown"]), any(k.startswith("grid_") for k in figures)
    )
    links = [f"tables/{n}.csv" for n in tables] + (["tables/table1.csv"] if ev["markdown"] else [])
    shown_warnings = [w for w in _all_warnings(report) if w not in (report.sanity or [])]
    return html.render_page(
        html.Page(
            title=report.title,
            command=command,
            sections=sections,
            notes=list(report.notes or []),
            warnings=shown_warnings,
            meanings=shown,
            table_links=links,
            versions=versions(),
        )
    )


def _meanings(localisation: bool, table1: bool, maps: bool) -> Dict[str, str]:
    """The entries of :data:`MEANINGS` that the page has numbers for."""
    return {
        k: v
        for k, v in MEANINGS.items()
        if (localisation or not k.startswith("Localisation"))
        and (table1 or not k.startswith(("FSS", "RS", "Intervals")))
        and (maps or table1 or not k.endswith("(UniCAM)"))
    }


def _counted(kinds: Mapping[str, Tuple[int, int]]) -> str:
    """ "column: k of n" for every column, over every map computed."""
    return "; ".join(f"{name}: {k} of {n}" for name, (k, n) in kinds.items())


def _empty_counts(maps: Mapping[str, Tensor]) -> str:
    bits = []
    for name, m in maps.items():
        k = sum(viz.is_empty_map(m[i]) for i in range(m.shape[0]))
        if k:
            bits.append(f"{name}: {k} of {m.shape[0]}")
    return "; ".join(bits)
