r"""The one page renderer of every report's ``index.html``, from templates
(:class:`string.Template`).

:func:`render_page` lays out a :class:`Page`: title, warnings, notes, the report's
:class:`Section` s, what each number means, links, versions and the command. Each
section is built by a small function and left out when the report has nothing for it
(no "Maps" section in a ``quantify`` report, no localisation where the data have no
masks): :func:`compared_section`, :func:`score_sections`, :func:`localisation_section`,
:func:`cued_section` for the reports of ``demo`` / ``explain`` / ``quantify``, and
:func:`figure_table_section` (a text, a figure and a Markdown table) for any other
report, such as ``compare``'s. Every value is HTML-escaped before it is substituted.
This module takes plain values only.
"""

from __future__ import annotations

import dataclasses
import html
import math
from string import Template
from typing import Any, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "CSS",
    "Page",
    "Section",
    "render_page",
    "markdown_to_html",
    "compared_section",
    "score_sections",
    "localisation_section",
    "cued_section",
    "figure_table_section",
    "sanity_section",
    "conclusion_section",
    "data_section",
    "set_scores_section",
]

#: The style of every report page.
CSS = """
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
.conclusion{background:#eef6ee;border-left:5px solid #3a8f4a;padding:.6em 1.2em;margin:1em 0}
.conclusion p{margin:.45em 0}.conclusion .layer{font-weight:bold}
.sanity{background:#fdecea;border-left:5px solid #c0392b;padding:.6em 1.2em;margin:1em 0}
.refused{background:#f7f7f7;border-left:5px solid #999}
.dagger{color:#555;font-size:.92em}
"""


@dataclasses.dataclass
class Section:
    r"""One section of a page: its anchor, its name in the page's navigation, its HTML."""

    anchor: str
    nav: str
    html: str


@dataclasses.dataclass
class Page:
    r"""Everything :func:`render_page` shows, as plain values.

    Attributes:
        title (str): Page title (escaped).
        command (str): The command line that made the report (escaped). Default: ""
        sections (list of Section): The report's sections, in order.
        notes (list of str): Paragraphs at the top.
        warnings (list of str): Highlighted paragraphs at the top.
        meanings (dict): Term -> what it means, under "What each number means".
        table_links (list of str): Paths of CSV files linked next to metrics.json.
        versions (dict): Package -> version.
        css (str): The style sheet. Default: :data:`CSS`
    """

    title: str
    command: str = ""
    sections: Sequence[Section] = ()
    notes: Sequence[str] = ()
    warnings: Sequence[str] = ()
    meanings: Mapping[str, str] = dataclasses.field(default_factory=dict)
    table_links: Sequence[str] = ()
    versions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    css: str = CSS


PAGE = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title><style>$css</style></head><body>
<h1>$title</h1>
<nav>$nav</nav>
$warnings
$notes
$sections
<h2 id="meaning">What each number means</h2>
<dl>
$meanings
</dl>
$links
<h2 id="versions">Versions and command</h2>
<table><tbody>
$versions
</tbody></table>
<pre>$command</pre>
</body></html>
""")

COMPARED = Template("""<h2 id="compared">What was compared</h2>
$data
<table><thead><tr>$head</tr></thead><tbody>
$rows
</tbody></table>
$verdict
$checkpoints""")

MAPS = Template("""<h2 id="maps">Grad-CAM and UniCAM maps per layer</h2>
<p class="note">Each row is one image (one per class); each map (jet colours: blue low, red high)
is blended over the grey image and scaled to its own largest value. Grad-CAM shows where each
model looks; UniCAM distilled shows where the Student uses what the Base lacks, UniCAM residual
where the Base uses what the Student lacks.</p>
$layers""")

MAP_LAYER = Template("""<h3>$layer</h3>
<img src="$src" alt="maps at layer $layer">
$empty""")

SCORES = Template("""<h2 id="scores">FSS and RS per layer</h2>
$figure
<h2 id="table1">Table 1: relevance of features</h2>
$table
<p class="note">Also in <a href="tables/table1.csv">tables/table1.csv</a> and <a
href="tables/table1.md">tables/table1.md</a>.</p>""")

SCORES_FIGURE = Template("""<h2 id="scores">FSS and RS per layer</h2>
$figure""")

LOCALISATION = Template("""<h2 id="localisation">Localisation on the object mask</h2>
$figure
$table
$chance""")

CUED = Template("""<h2 id="cued">What the Base used that the Student dropped</h2>
<p>The same layers on test images without the cue (cue-free) and with it on every image (cued: the
background tint of the image's class, the shortcut the Base was trained with). S_d and S_r are
UniCAM's distilled and residual scores of each batch (the batch is UniCAM's context): S_r is how
much label information the Base's features carry beyond the Student's. A rise of S_r from cue-free
to cued images says the Base uses something on cued images that the Student lacks. The masses say
where: the share of each map's positive mass on the object and on the background (the rest of the
image, where the tint is); a uniform map scores the region's area (chance). A residual map that
moves to the background on cued images points at the tint. Grad-CAM of the Base is shown next to
it: where it moves just as much, the residual map adds nothing over Grad-CAM of the Base. Mean [95
% bootstrap interval]: over batches for the scores, over images for the masses.</p>
$reading
<h3>Scores and mass on the object</h3>
$scores
<h3>Mass on the background</h3>
$background
<p class="note">Also in <a href="tables/cued_scores.csv">tables/cued_scores.csv</a> and <a
href="tables/cued_background.csv">tables/cued_background.csv</a>; every number in metrics.json
(<code>cued_evaluation</code>).</p>""")

ROW = Template("<tr>$cells</tr>")
CELL = Template("<td>$v</td>")
HEAD = Template("<th>$v</th>")
PARA = Template('<p class="$cls">$text</p>')
MEANING = Template("<dt>$term</dt><dd>$text</dd>")

e = html.escape


def markdown_to_html(md: str) -> str:
    """A pipe-table markdown document (as written by KDEvaluation.to_markdown) to HTML."""
    out: List[str] = []
    rows: List[List[str]] = []

    def flush() -> None:
        if not rows:
            return
        head, body = rows[0], rows[1:]
        out.append(
            "<table><thead>"
            + ROW.substitute(cells="".join(HEAD.substitute(v=e(c)) for c in head))
            + "</thead><tbody>"
        )
        out.extend(ROW.substitute(cells="".join(CELL.substitute(v=e(c)) for c in r)) for r in body)
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
            out.append(f"<h{level}>{e(s.lstrip('#').strip())}</h{level}>")
        else:
            out.append(PARA.substitute(cls="", text=e(s)).replace(' class=""', ""))
    flush()
    return "\n".join(out)


def _pct(a: Any) -> str:
    return (
        f"{100 * a:.1f} %" if isinstance(a, (int, float)) and math.isfinite(a) else "not measured"
    )


def compared_section(
    data: Optional[str],
    models: Mapping[str, Mapping[str, Any]],
    accuracy_set: Optional[str],
    model_files: Mapping[str, Any],
    refused: bool = False,
) -> Section:
    r""" "What was compared": the data and one row per model (accuracy, the accuracy its
    checkpoint records, KD method, checkpoint), with the sentence comparing the Student's
    accuracy to the Base's (withheld when ``refused``: a model failed the sanity check)."""
    cued = any(i.get("cued_accuracy") is not None for i in models.values())
    trained = any(i.get("trained_on") for i in models.values())
    recorded = any(i.get("recorded_accuracy") is not None for i in models.values())
    acc_head = f"accuracy on {accuracy_set}" if accuracy_set else "test accuracy"
    head = (
        ["model", "architecture", acc_head]
        + (["accuracy its checkpoint records"] if recorded else [])
        + (["accuracy, test with the training cue"] if cued else [])
        + ["KD method"]
        + (["trained on"] if trained else [])
        + ["checkpoint"]
    )
    rows = [
        ROW.substitute(
            cells="".join(
                CELL.substitute(v=e(c)) for c in _model_cells(role, info, recorded, cued, trained)
            )
        )
        for role, info in models.items()
    ]
    checkpoints = ""
    if model_files:
        links = ", ".join(f'<a href="models/{e(n)}">models/{e(n)}</a>' for n in model_files)
        checkpoints = (
            f"<p>Checkpoints: {links} (accepted by <code>captum-unicam explain</code> "
            "and <code>quantify</code>).</p>"
        )
    body = COMPARED.substitute(
        data=f"<p>Data: {e(data)}</p>" if data else "",
        head="".join(HEAD.substitute(v=e(h)) for h in head),
        rows="\n".join(rows),
        verdict=_verdict(models, refused),
        checkpoints=checkpoints,
    )
    return Section("compared", "What was compared", body)


def _model_cells(
    role: str, info: Mapping[str, Any], recorded: bool, cued: bool, trained: bool
) -> List[str]:
    """One row of the models table, with the optional columns that the table has."""
    cells = [role, str(info.get("arch") or "–"), _pct(info.get("accuracy"))]
    cells += [_pct(info.get("recorded_accuracy"))] if recorded else []
    cells += [_pct(info.get("cued_accuracy"))] if cued else []
    cells += [str(info.get("kd_method") or "–")]
    cells += [str(info.get("trained_on") or "–")] if trained else []
    return cells + [str(info.get("checkpoint") or "–")]


def _verdict(models: Mapping[str, Mapping[str, Any]], refused: bool = False) -> str:
    s, b = (models.get(r, {}).get("accuracy") for r in ("Student", "Base"))
    if not (isinstance(s, (int, float)) and isinstance(b, (int, float))):
        return ""
    if refused:
        return PARA.substitute(
            cls="note",
            text=e(
                f"Student {100 * s:.1f} % vs Base {100 * b:.1f} %: not read as a result of "
                "distillation, because a model failed the sanity check above."
            ),
        )
    text = (
        f"The Student's accuracy is {'higher than' if s > b else 'not higher than'} the Base's "
        f"({100 * s:.1f} % vs {100 * b:.1f} %)"
        + (
            ""
            if s > b
            else ": distillation did not help here; read the maps as an explanation of that failure"
        )
        + "."
    )
    return PARA.substitute(cls="note", text=e(text))


def score_sections(
    figures: Mapping[str, str], empty_maps: Mapping[str, str], table1_md: Optional[str]
) -> List[Section]:
    r"""The map grids per layer (figures ``grid_LAYER``) and the FSS / RS figure with Table 1."""
    sections: List[Section] = []
    grid_names = [k for k in figures if k.startswith("grid_")]
    if grid_names:
        layers = [
            MAP_LAYER.substitute(
                layer=e(k[5:]), src=e(figures[k]), empty=_empty_note(empty_maps.get(k[5:]))
            )
            for k in grid_names
        ]
        sections.append(Section("maps", "Maps", MAPS.substitute(layers="\n".join(layers))))
    fig = (
        f'<img src="{e(figures["scores"])}" alt="FSS and RS per layer">'
        if "scores" in figures
        else ""
    )
    if table1_md:
        body = SCORES.substitute(figure=fig, table=markdown_to_html(table1_md))
        sections += [Section("scores", "FSS and RS", body), Section("table1", "Table 1", "")]
    elif fig:  # a figure of given score panels, with no Table 1 behind it
        sections.append(Section("scores", "FSS and RS", SCORES_FIGURE.substitute(figure=fig)))
    return sections


def _empty_note(text: Optional[str]) -> str:
    if not text:
        return ""
    return PARA.substitute(
        cls="note", text=e(f"Empty maps (no positive evidence after ReLU): {text}.")
    )


def localisation_section(
    figures: Mapping[str, str],
    tables: Mapping[str, Tuple[str, str]],
    localisation: Mapping[str, Any],
) -> Section:
    r"""Localisation on the object mask: the figure, the table (``tables["localisation"]``,
    (csv, markdown)) and the chance level."""
    fig = (
        f'<img src="{e(figures["localisation"])}" alt="localisation per layer">'
        if "localisation" in figures
        else ""
    )
    table = markdown_to_html(tables["localisation"][1]) if "localisation" in tables else ""
    ch = next(iter(localisation.values())).get("chance", {}).get("energy")
    chance = (
        PARA.substitute(
            cls="note",
            text=e(f"A uniform map would score {ch:.3f} on both (the mean object area)."),
        )
        if ch is not None
        else ""
    )
    return Section(
        "localisation",
        "Localisation",
        LOCALISATION.substitute(figure=fig, table=table, chance=chance),
    )


def cued_section(tables: Mapping[str, Tuple[str, str]], reading: Optional[str]) -> Section:
    r"""What the Base used that the Student dropped: ``tables["cued_scores"]`` and
    ``tables["cued_background"]`` ((csv, markdown) each) with a one-sentence reading."""
    body = CUED.substitute(
        reading=PARA.substitute(cls="note", text=e(reading)) if reading else "",
        scores=markdown_to_html(tables["cued_scores"][1]),
        background=markdown_to_html(tables["cued_background"][1])
        if "cued_background" in tables
        else "",
    )
    return Section("cued", "Cued images", body)


def sanity_section(lines: Sequence[str]) -> Section:
    r"""The sanity check, first on the page: each flagged model, and that no conclusion
    about distillation is drawn from it."""
    body = (
        '<h2 id="sanity">Sanity check before any conclusion</h2><div class="sanity">'
        + "".join(f"<p>{e(line)}</p>" for line in lines)
        + "</div>"
    )
    return Section("sanity", "Sanity check", body)


#: Under the conclusion: what it is read from, and why masked FSS is not in it.
CONCLUSION_NOTE = (
    "Generated from the raw-feature (map-free) scores of the table below: S_d = pdCor(Student, "
    "Y | Base) and S_r = pdCor(Base, Y | Student) with their 95 % intervals, RS Student against "
    "RS Base with the one-sided permutation p-value. A statement is made only where the interval "
    "excludes 0 (S_d, S_r) or where p < 0.05 and the intervals do not overlap (RS); otherwise it "
    "says there is no conclusion."
)

#: Why FSS on masked images is not read as similarity, and what † marks.
MASKED_NOTE = (
    "FSS on masked images is not a measure of how alike the models are: both models are fed the "
    "same masked images, so the mask alone makes FSS close to 1 for any pair of models. Each "
    "masked row carries its leakage baseline (the same statistic on the batch's mean image masked "
    "by the same maps, i.e. what the mask alone carries; a black tick on the bars of the figure); "
    "† marks an RS whose interval is not above its leakage baseline's, so that RS measures the "
    "mask rather than the features."
)


def conclusion_section(
    text: str, headline: Optional[Mapping[str, Any]] = None, masked: bool = False
) -> Section:
    r"""The conclusion the page opens with: one paragraph per layer (``text`` as
    :meth:`~captum_unicam.metrics.KDEvaluation.conclusion` writes it), how it is generated,
    and (``masked``) why masked FSS is left out and what † marks."""
    refused = bool(headline and headline.get("refused"))
    skip = {headline.get("fss_note")} if masked and headline else set()  # said below, with †
    paras = []
    for block in [b for b in text.split("\n\n") if b.strip() and b not in skip]:
        layer, sep, rest = block.partition(": ")
        if sep and len(layer) < 40 and "(" in layer:
            paras.append(f'<p><span class="layer">{e(layer)}:</span> {e(rest)}</p>')
        else:
            paras.append(f"<p>{e(block)}</p>")
    cls = "conclusion refused" if refused else "conclusion"
    notes = [PARA.substitute(cls="note", text=e(CONCLUSION_NOTE))]
    if masked:
        notes.append(PARA.substitute(cls="dagger", text=e(MASKED_NOTE)))
    body = (
        f'<h2 id="conclusion">Conclusion: what did distillation change?</h2><div class="{cls}">'
        + "\n".join(paras)
        + "</div>"
        + "\n".join(notes)
    )
    return Section("conclusion", "Conclusion", body)


def data_section(summary: Mapping[str, Any]) -> Section:
    r"""The evaluated data: classes in index order with their counts, and the preprocessing
    (``summary`` as :func:`~captum_unicam.data.data_summary` returns it)."""
    counts = summary.get("class_counts") or {}
    classes = list(summary.get("classes") or counts)
    rows = "\n".join(
        ROW.substitute(
            cells=CELL.substitute(v=str(i))
            + CELL.substitute(v=e(str(c)))
            + CELL.substitute(v=e(str(counts.get(c, "–"))))
        )
        for i, c in enumerate(classes)
    )
    prep = summary.get("preprocessing") or {}
    prep_text = ", ".join(f"{k} {v}" for k, v in prep.items()) if prep else "not recorded"
    n_images = e(str(summary.get("n_images", "?")))
    body = (
        f'<h2 id="data">Data: {len(classes)} classes, {n_images} images</h2>'
        f"<p>Preprocessing: {e(prep_text)}.</p>"
        "<table><thead><tr><th>label</th><th>class</th><th>images</th></tr></thead><tbody>"
        + rows
        + "</tbody></table>"
    )
    return Section("data", "Data", body)


def _iv(v: Any) -> str:
    if not isinstance(v, Mapping) or v.get("mean") is None:
        return "–"
    if v.get("low") is None or v.get("high") is None or v["low"] == v["high"]:
        return f"{v['mean']:.3f}"
    return f"{v['mean']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"


def set_scores_section(scores: Mapping[str, Any]) -> Section:
    r"""UniCAM's scores S_d and S_r over the evaluated set, per layer (``scores``: layer ->
    ``{"s_d", "s_r"}`` intervals; ``"how"``: how they were computed)."""
    layers = {k: v for k, v in scores.items() if isinstance(v, Mapping)}
    rows = "\n".join(
        ROW.substitute(
            cells="".join(
                CELL.substitute(v=e(c)) for c in (layer, _iv(v.get("s_d")), _iv(v.get("s_r")))
            )
        )
        for layer, v in layers.items()
    )
    how = scores.get("how")
    body = (
        '<h2 id="set_scores">UniCAM scores of the evaluated set</h2>'
        "<p>S_d = pdCor(Student, Y | Base): label structure only the Student carries; S_r = "
        "pdCor(Base, Y | Student): only the Base. The maps below show where each is used.</p>"
        + (PARA.substitute(cls="note", text=e(how)) if how else "")
        + "<table><thead><tr><th>layer</th><th>S_d</th><th>S_r</th></tr></thead><tbody>"
        + rows
        + "</tbody></table>"
    )
    return Section("set_scores", "S_d / S_r", body)


def figure_table_section(
    anchor: str,
    title: str,
    text: str,
    *,
    figure: Optional[str] = None,
    table_md: Optional[str] = None,
    csv: Optional[str] = None,
) -> Section:
    r"""A generic section: a heading, a paragraph, an optional figure (a path relative to
    the page), an optional Markdown table and a link to its CSV file.

    Examples::

        >>> figure_table_section("road", "ROAD", "Accuracy after ...", figure="figures/road.png",
        ...                      table_md=md, csv="tables/road.csv")
    """
    parts = [
        f'<h2 id="{e(anchor)}">{e(title)}</h2>',
        PARA.substitute(cls="", text=e(text)).replace(' class=""', ""),
    ]
    if figure:
        parts.append(f'<img src="{e(figure)}" alt="{e(title)}">')
    if table_md:
        parts.append(markdown_to_html(table_md))
    if csv:
        parts.append(f'<p class="note">Also in <a href="{e(csv)}">{e(csv)}</a>.</p>')
    return Section(anchor, title, "\n".join(parts))


def render_page(page: Page) -> str:
    r"""The ``index.html`` text of ``page``: its sections in the one page layout.

    Examples::

        >>> render_page(Page(title="compare", command="captum-unicam compare ...",
        ...                  sections=[figure_table_section("road", "ROAD", text, table_md=md)]))
    """
    nav = [(s.anchor, s.nav) for s in page.sections]
    nav += [("meaning", "What the numbers mean"), ("versions", "Versions")]
    links = (
        '<p>All numbers: <a href="metrics.json">metrics.json</a>'
        + (
            "; tables: "
            + ", ".join(f'<a href="{e(p)}">{e(p.rsplit("/", 1)[-1])}</a>' for p in page.table_links)
            if page.table_links
            else ""
        )
        + ".</p>"
    )
    return PAGE.substitute(
        title=e(page.title),
        css=page.css,
        nav="".join(f'<a href="#{a}">{e(t)}</a>' for a, t in nav),
        warnings="\n".join(PARA.substitute(cls="warn", text=e(n)) for n in page.warnings),
        notes="\n".join(f"<p>{e(n)}</p>" for n in page.notes),
        sections="\n".join(s.html for s in page.sections if s.html),
        meanings="\n".join(
            MEANING.substitute(term=e(k), text=e(t)) for k, t in page.meanings.items()
        ),
        links=links,
        versions="\n".join(
            ROW.substitute(cells=CELL.substitute(v=e(k)) + CELL.substitute(v=e(v)))
            for k, v in page.versions.items()
        ),
        command=e(page.command),
    )
