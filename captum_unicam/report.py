r"""The report folder of ``captum-unicam demo`` / ``explain`` / ``quantify`` (DESIGN.md section 8).

A report is a folder::

    index.html        opens from disk in any browser: no server, no script, no CDN
    metrics.json      every number (per layer, per model pair, with intervals)
    tables/*.csv|.md  Table 1 of the paper, accuracies, localisation
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
import html
import io
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "OutputFolderError",
    "check_output_dir",
    "localisation",
    "publish_folder",
    "to_jsonable",
    "versions",
    "write_report",
    "MEANINGS",
]

PathLike = Union[str, os.PathLike]


OutputFolderError = _errors.OutputError  # the library's one family of expected failures


from captum_unicam.output.publish import check_output_dir, publish_folder  # noqa: E402


# ---------------------------------------------------------------------------
# localisation against ground-truth masks
# ---------------------------------------------------------------------------


def _bootstrap(values: np.ndarray, n_bootstrap: int, rng: np.random.Generator,
               confidence: float) -> Dict[str, Any]:
    n = int(values.size)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = float(values.mean())
    if n == 1 or n_bootstrap <= 0:
        return {"mean": mean, "low": mean, "high": mean, "n": n}
    idx = rng.integers(0, n, size=(n_bootstrap, n))
    boots = values[idx].mean(axis=1)
    a = (1.0 - confidence) / 2.0
    low, high = np.quantile(boots, [a, 1.0 - a])
    return {"mean": mean, "low": float(low), "high": float(high), "n": n}


def localisation(
    maps: Mapping[str, Tensor],
    masks: Tensor,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Dict[str, Any]:
    r"""Where maps put their mass, against ground-truth object masks.

    Each map is upsampled (bilinear, ``LayerAttribution.interpolate``) to the mask size
    and its positive part H kept. For each image with a non-empty map:

    - **mask energy fraction** = sum(H * mask) / sum(H): the share of the map's mass on
      the object. A uniform map scores the mask's area fraction (``chance``).
    - **pointing game** = 1 if the map's largest pixel lies on the object, else 0
      (no tolerance margin; ties go to the first pixel in row-major order).

    Maps with no positive value (possible after ReLU) have neither; they are counted
    in ``n_empty`` and left out of the means. Intervals are percentile bootstrap
    intervals over images (``n_bootstrap`` resamples, seeded).

    Args:
        maps (dict of str -> Tensor): map kind -> (N,1,h,w) maps of the same N images.
        masks (Tensor): (N,H,W) or (N,1,H,W) object masks (bool or {0,1}).
        n_bootstrap (int, optional): bootstrap resamples. Default: 1000
        confidence (float, optional): interval level. Default: 0.95
        seed (int, optional): seed of the bootstrap. Default: 0

    Returns:
        dict: ``{"chance": {"energy": mean mask area, "pointing": mean mask area},
        "kinds": {kind: {"energy": {mean, low, high, n}, "pointing": {...},
        "n_images": N, "n_empty": k}}}``.

    Examples::

        >>> loc = localisation({"distilled": d, "residual": r}, masks)
        >>> loc["kinds"]["distilled"]["energy"]["mean"]
    """
    from captum_unicam.viz import upsample_maps

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    masks = masks.detach().cpu()
    if masks.dim() == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"masks must have shape (N,H,W) or (N,1,H,W), got {tuple(masks.shape)}")
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"masks must have shape (N,H,W) or (N,1,H,W), got {tuple(masks.shape)}")
    mk = (masks > 0.5).double() if masks.is_floating_point() else (masks != 0).double()
    n = mk.shape[0]
    area = mk.flatten(1).mean(1).numpy()
    out: Dict[str, Any] = {
        "chance": {"energy": float(area.mean()) if n else None,
                   "pointing": float(area.mean()) if n else None},
        "kinds": {},
    }
    for kind, m in maps.items():
        if m.shape[0] != n:
            raise ValueError(f"maps[{kind!r}] has {m.shape[0]} maps for {n} masks")
        rng = np.random.default_rng(seed)
        h = upsample_maps(m, mk.shape[-2:])[:, 0].double()
        h = torch.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
        total = h.flatten(1).sum(1)
        ok = total > 0
        energy = ((h * mk).flatten(1).sum(1) / total.clamp_min(1e-300))[ok].numpy()
        peak = h.flatten(1).argmax(1)
        hit = mk.flatten(1).gather(1, peak[:, None])[:, 0][ok].numpy()
        out["kinds"][kind] = {
            "energy": _bootstrap(energy, n_bootstrap, rng, confidence),
            "pointing": _bootstrap(hit, n_bootstrap, rng, confidence),
            "n_images": int(n),
            "n_empty": int((~ok).sum()),
        }
    return out


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
    """A pipe-table markdown document (as written by KDEvaluation.to_markdown) to HTML."""
    out: List[str] = []
    rows: List[List[str]] = []

    def flush() -> None:
        if not rows:
            return
        out.append("<table>")
        head, body = rows[0], rows[1:]
        out.append("<thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr></thead>")
        out.append("<tbody>")
        for r in body:
            out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
        out.append("</tbody></table>")
        rows.clear()

    for line in md.splitlines():
        s = line.strip()
        if s.startswith("|") and s.endswith("|"):
            cells = [c.strip() for c in s[1:-1].split("|")]
            if all(set(c) <= set(":- ") and c for c in cells):
                continue  # separator row
            rows.append(cells)
            continue
        flush()
        if not s:
            continue
        if s.startswith("#"):
            level = min(len(s) - len(s.lstrip("#")) + 2, 6)
            out.append(f"<h{level}>{html.escape(s.lstrip('#').strip())}</h{level}>")
        else:
            out.append(f"<p>{html.escape(s)}</p>")
    flush()
    return "\n".join(out)


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

    The summary is ``summary[layer][kind][metric] = {"mean", "ci_low", "ci_high"}``
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
        return {"mean": e["mean"], "low": e.get("ci_low", e.get("low")), "high": e.get("ci_high", e.get("high"))}

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
) -> Path:
    r"""Writes a complete report folder, atomically.

    The folder is built in a temporary sibling folder (``tempfile.mkdtemp(dir=parent)``)
    and renamed to ``out_dir`` only when complete. With ``overwrite=True`` an existing
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

    created = []  # parents we create, removed again on failure if left empty
    anc = out.parent
    while not anc.exists():
        created.append(anc)
        anc = anc.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
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
                                            ["model", "architecture", "test accuracy", "KD method", "checkpoint"],
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

        # ---- copied checkpoints
        if model_files:
            (tmp / "models").mkdir()
            for name, src in model_files.items():
                shutil.copy2(src, tmp / "models" / name)

        # ---- metrics.json
        metrics = {
            "title": title,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command_str,
            "versions": versions(),
            "data": data,
            "models": models or {},
            "evaluation": ev["summary"],
            "localisation": localisation,
        }
        if extra_metrics:
            metrics.update(extra_metrics)
        (tmp / "metrics.json").write_text(
            json.dumps(to_jsonable(metrics), indent=2, allow_nan=False) + "\n", encoding="utf-8")

        # ---- index.html
        page = _render_html(title=title, command=command_str, data=data, models=models or {},
                            figures=figures, grids=grids or {}, table1_md=ev["markdown"],
                            tables=tables, localisation=localisation, notes=notes or [], warnings=warnings or [],
                            has_models=bool(model_files), model_files=model_files or {})
        (tmp / "index.html").write_text(page, encoding="utf-8")

        publish_folder(tmp, out, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return out


def _render_html(*, title, command, data, models, figures, grids, table1_md, tables,
                 localisation, notes, warnings, has_models, model_files) -> str:
    e = html.escape
    v = versions()
    parts: List[str] = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        '<nav><a href="#compared">What was compared</a><a href="#maps">Maps</a>'
        '<a href="#scores">FSS and RS</a><a href="#table1">Table 1</a>'
        + ('<a href="#localisation">Localisation</a>' if localisation else "")
        + '<a href="#meaning">What the numbers mean</a><a href="#versions">Versions</a></nav>',
    ]
    for n in warnings:
        parts.append(f'<p class="warn">{e(n)}</p>')
    for n in notes:
        parts.append(f"<p>{e(n)}</p>")

    # what was compared
    parts.append('<h2 id="compared">What was compared</h2>')
    if data:
        parts.append(f"<p>Data: {e(data)}</p>")
    if models:
        def pct(a: Any) -> str:
            return f"{100 * a:.1f} %" if isinstance(a, (int, float)) and math.isfinite(a) else "not measured"

        cued = any(i.get("cued_accuracy") is not None for i in models.values())
        trained = any(i.get("trained_on") for i in models.values())
        parts.append("<table><thead><tr><th>model</th><th>architecture</th><th>test accuracy</th>"
                     + ("<th>accuracy, test with the training cue</th>" if cued else "")
                     + "<th>KD method</th>" + ("<th>trained on</th>" if trained else "")
                     + "<th>checkpoint</th></tr></thead><tbody>")
        for role, info in models.items():
            parts.append(f"<tr><td>{e(role)}</td><td>{e(str(info.get('arch') or '–'))}</td>"
                         f"<td>{pct(info.get('accuracy'))}</td>"
                         + (f"<td>{pct(info.get('cued_accuracy'))}</td>" if cued else "")
                         + f"<td>{e(str(info.get('kd_method') or '–'))}</td>"
                         + (f"<td>{e(str(info.get('trained_on') or '–'))}</td>" if trained else "")
                         + f"<td>{e(str(info.get('checkpoint') or '–'))}</td></tr>")
        parts.append("</tbody></table>")
        accs = {r: i.get("accuracy") for r, i in models.items()}
        s, b = accs.get("Student"), accs.get("Base")
        if isinstance(s, (int, float)) and isinstance(b, (int, float)):
            verdict = ("higher than" if s > b else "not higher than")
            parts.append(f'<p class="note">The Student\'s accuracy is {verdict} the Base\'s '
                         f"({100 * s:.1f} % vs {100 * b:.1f} %)"
                         + ("" if s > b else ": distillation did not help here; read the maps as "
                            "an explanation of that failure") + ".</p>")
    if has_models:
        links = ", ".join(f'<a href="models/{e(n)}">models/{e(n)}</a>' for n in model_files)
        parts.append(f"<p>Checkpoints: {links} (accepted by <code>captum-unicam explain</code> "
                     "and <code>quantify</code>).</p>")

    # maps
    parts.append('<h2 id="maps">Grad-CAM and UniCAM maps per layer</h2>')
    grid_names = [k for k in figures if k.startswith("grid_")]
    if grid_names:
        parts.append('<p class="note">Each row is one image; each map (jet colours: blue low, red high) is blended over the '
                     "grey image and scaled to its own largest value. Grad-CAM shows where each "
                     "model looks; UniCAM distilled shows where the Student uses what the Base "
                     "lacks, UniCAM residual where the Base uses what the Student lacks.</p>")
        for k in grid_names:
            layer = k[5:]
            parts.append(f"<h3>{e(layer)}</h3>")
            parts.append(f'<img src="{e(figures[k])}" alt="maps at layer {e(layer)}">')
            empt = _empty_counts(grids.get(layer, {}).get("maps", {}))
            if empt:
                parts.append(f'<p class="note">Empty maps (no positive evidence after ReLU): {e(empt)}.</p>')
    else:
        parts.append("<p>No maps were computed for this report.</p>")

    # scores
    parts.append('<h2 id="scores">FSS and RS per layer</h2>')
    if "scores" in figures:
        parts.append(f'<img src="{e(figures["scores"])}" alt="FSS and RS per layer">')
    else:
        parts.append("<p>No scores were computed for this report.</p>")
    parts.append('<h2 id="table1">Table 1: relevance of features</h2>')
    if table1_md:
        parts.append(_markdown_to_html(table1_md))
        parts.append('<p class="note">Also in <a href="tables/table1.csv">tables/table1.csv</a> '
                     'and <a href="tables/table1.md">tables/table1.md</a>.</p>')
    else:
        parts.append("<p>Not computed for this report.</p>")

    if localisation:
        parts.append('<h2 id="localisation">Localisation on the object mask</h2>')
        if "localisation" in figures:
            parts.append(f'<img src="{e(figures["localisation"])}" alt="localisation per layer">')
        if "localisation" in tables:
            parts.append(_markdown_to_html(tables["localisation"][1]))
        first = next(iter(localisation.values()))
        ch = first.get("chance", {}).get("energy")
        if ch is not None:
            parts.append(f'<p class="note">A uniform map would score {ch:.3f} on both '
                         "(the mean object area).</p>")

    parts.append('<h2 id="meaning">What each number means</h2><dl>')
    for k, txt in MEANINGS.items():
        parts.append(f"<dt>{e(k)}</dt><dd>{e(txt)}</dd>")
    parts.append("</dl>")
    parts.append('<p>All numbers: <a href="metrics.json">metrics.json</a>; tables: '
                 + ", ".join(f'<a href="tables/{e(n)}.csv">{e(n)}.csv</a>' for n in tables)
                 + ("," if tables else "") + ' <a href="tables/table1.csv">table1.csv</a>.</p>'
                 if table1_md else '<p>All numbers: <a href="metrics.json">metrics.json</a>.</p>')

    parts.append('<h2 id="versions">Versions and command</h2><table><tbody>')
    for k, val in v.items():
        parts.append(f"<tr><td>{e(k)}</td><td>{e(val)}</td></tr>")
    parts.append("</tbody></table>")
    parts.append(f"<pre>{e(command)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _empty_counts(maps: Mapping[str, Tensor]) -> str:
    from captum_unicam.viz import is_empty_map

    bits = []
    for name, m in maps.items():
        k = sum(is_empty_map(m[i]) for i in range(m.shape[0]))
        if k:
            bits.append(f"{name}: {k} of {m.shape[0]}")
    return "; ".join(bits)
