"""The output vocabulary: names, number formatting, Markdown and CSV tables.

One place for the words and the formats every report, table and figure uses. This module is a
leaf: it imports nothing of the package, so ``metrics``, ``pipeline`` and ``output`` can all
use it without an import pointing up.

- Names: :data:`LAYERS`, :data:`MAP_KINDS` with :data:`MAP_TITLES`, :data:`METRICS` with
  :data:`METRIC_TITLES`, :data:`KD_METHODS` with :data:`KD_METHOD_TITLES`, :data:`MODEL_ROLES`.
- Numbers: :func:`format_value` (one number), :func:`format_interval` ("mean [low, high]"),
  :func:`format_pm` ("mean ± half-width").
- Tables: :func:`markdown_table`, :func:`csv_table` (cells a spreadsheet would evaluate are
  escaped), :func:`write_table` (both files at once).
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple

__all__ = [
    "LAYERS",
    "MAP_KINDS",
    "MAP_TITLES",
    "METRICS",
    "METRIC_TITLES",
    "KD_METHODS",
    "KD_METHOD_TITLES",
    "MODEL_ROLES",
    "map_title",
    "format_value",
    "format_interval",
    "format_pm",
    "markdown_table",
    "csv_table",
    "write_table",
]

#: The four stages of a ResNet, as the command line and the reports name them.
LAYERS = ("L1", "L2", "L3", "L4")

#: Kinds of map. ``"none"`` is the raw-feature (map-free) row; ``gradcam`` is Grad-CAM of the
#: model whose features are measured; ``gradcam_student`` / ``gradcam_base`` name one model.
MAP_KINDS = ("none", "gradcam", "distilled", "residual")
MAP_TITLES = {
    "none": "raw features",
    "gradcam": "Grad-CAM",
    "gradcam_student": "Grad-CAM Student",
    "gradcam_base": "Grad-CAM Base",
    "gradcam_teacher": "Grad-CAM Teacher",
    "distilled": "UniCAM distilled",
    "residual": "UniCAM residual",
    "naive_distilled": "naive distilled (Grad-CAM Student - Base)",
    "naive_residual": "naive residual (Grad-CAM Base - Student)",
    "random": "random map",
}

#: Per-layer statistics, in table order.
METRICS = ("fss", "rs_base", "rs_student", "rs_distilled", "rs_residual")
METRIC_TITLES = {
    "fss": "FSS",
    "rs_base": "RS Base",
    "rs_student": "RS Student",
    "rs_distilled": "RS distilled",
    "rs_residual": "RS residual",
}

#: Knowledge-distillation methods of the paper.
KD_METHODS = ("response", "attention", "overhaul")
KD_METHOD_TITLES = {
    "response": "response-based KD (Hinton et al.)",
    "attention": "attention transfer (Zagoruyko & Komodakis)",
    "overhaul": "overhaul feature distillation (Heo et al.)",
}

#: The models of a study, in the order reports list them.
MODEL_ROLES = ("teacher", "base", "student")

_MISSING = "–"
# A cell starting with one of these is a formula in Excel, LibreOffice and Google Sheets.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def map_title(kind: str) -> str:
    """The title of a map kind (``"distilled"`` -> ``"UniCAM distilled"``); unknown kinds are
    returned as given."""
    return MAP_TITLES.get(kind, kind)


def format_value(value: Any, digits: int = 3) -> str:
    """One cell: ``None`` and non-finite floats as "–", floats with ``digits`` decimals, every
    other value as ``str``."""
    if value is None:
        return _MISSING
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else _MISSING
    return str(value)


def _bounds(entry: Optional[Mapping[str, Any]]) -> Optional[Tuple[float, Any, Any]]:
    if not entry or entry.get("mean") is None:
        return None
    mean = float(entry["mean"])
    if not math.isfinite(mean):
        return None
    return mean, entry.get("low"), entry.get("high")


def format_interval(entry: Optional[Mapping[str, Any]], digits: int = 3) -> str:
    """``{"mean", "low", "high"}`` as "mean [low, high]" ("mean" alone without bounds; "–"
    without a finite mean)."""
    b = _bounds(entry)
    if b is None:
        return _MISSING
    mean, low, high = b
    if low is None or high is None:
        return format_value(mean, digits)
    return f"{mean:.{digits}f} [{float(low):.{digits}f}, {float(high):.{digits}f}]"


def format_pm(entry: Optional[Mapping[str, Any]], digits: int = 3) -> str:
    """``{"mean", "low", "high"}`` as "mean ± half-width of the interval"."""
    b = _bounds(entry)
    if b is None:
        return _MISSING
    mean, low, high = b
    if low is None or high is None:
        return format_value(mean, digits)
    return f"{mean:.{digits}f} ± {(float(high) - float(low)) / 2:.{digits}f}"


def _markdown_cell(value: Any, digits: int) -> str:
    return format_value(value, digits).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    notes: Sequence[str] = (),
    digits: int = 3,
) -> str:
    """A GitHub-flavoured Markdown table, with optional note lines below it."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_markdown_cell(c, digits) for c in row) + " |" for row in rows]
    if notes:
        lines += [""] + [str(n) for n in notes]
    return "\n".join(lines) + "\n"


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    if isinstance(value, (bool, int)):
        return value
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if text.startswith(_FORMULA_START) and not _is_number(text):
        return "'" + text  # shown as text, never evaluated by a spreadsheet
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV text: floats in full precision, missing values empty, and text cells that a
    spreadsheet would evaluate as a formula (starting with ``= + - @``) prefixed with ``'``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([_csv_cell(h) for h in header])
    writer.writerows([_csv_cell(v) for v in row] for row in rows)
    return buf.getvalue()


def write_table(
    folder: os.PathLike,
    name: str,
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    notes: Sequence[str] = (),
    digits: int = 3,
) -> Tuple[str, str]:
    """Writes ``folder/name.csv`` and ``folder/name.md``; returns (csv text, markdown text)."""
    folder = Path(folder)
    csv_text = csv_table(header, rows)
    md_text = markdown_table(header, rows, notes, digits)
    (folder / f"{name}.csv").write_text(csv_text, encoding="utf-8")
    (folder / f"{name}.md").write_text(md_text, encoding="utf-8")
    return csv_text, md_text
