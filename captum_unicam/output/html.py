r"""The report's ``index.html``, from templates (:class:`string.Template`).

One page template holds the layout; each section has its own small template and is
left out when the report has nothing for it (no "Maps" section in a ``quantify``
report, no localisation where the data have no masks). Every value is HTML-escaped
before it is substituted.
"""

from __future__ import annotations

import html
import math
from string import Template
from typing import Any, List, Mapping, Optional, Sequence, Tuple

__all__ = ["render_page", "markdown_to_html"]

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
<p class="note">Each row is one image (one per class); each map (jet colours: blue low, red high) is blended over the grey image and scaled to its own largest value. Grad-CAM shows where each model looks; UniCAM distilled shows where the Student uses what the Base lacks, UniCAM residual where the Base uses what the Student lacks.</p>
$layers""")

MAP_LAYER = Template("""<h3>$layer</h3>
<img src="$src" alt="maps at layer $layer">
$empty""")

SCORES = Template("""<h2 id="scores">FSS and RS per layer</h2>
$figure
<h2 id="table1">Table 1: relevance of features</h2>
$table
<p class="note">Also in <a href="tables/table1.csv">tables/table1.csv</a> and <a href="tables/table1.md">tables/table1.md</a>.</p>""")

SCORES_FIGURE = Template("""<h2 id="scores">FSS and RS per layer</h2>
$figure""")

LOCALISATION = Template("""<h2 id="localisation">Localisation on the object mask</h2>
$figure
$table
$chance""")

CUED = Template("""<h2 id="cued">What the Base used that the Student dropped</h2>
<p>The same layers on test images without the cue (cue-free) and with it on every image (cued: the background tint of the image's class, the shortcut the Base was trained with). S_d and S_r are UniCAM's distilled and residual scores of each batch (the batch is UniCAM's context): S_r is how much label information the Base's features carry beyond the Student's. A rise of S_r from cue-free to cued images says the Base uses something on cued images that the Student lacks. The masses say where: the share of each map's positive mass on the object and on the background (the rest of the image, where the tint is); a uniform map scores the region's area (chance). A residual map that moves to the background on cued images points at the tint. Grad-CAM of the Base is shown next to it: where it moves just as much, the residual map adds nothing over Grad-CAM of the Base. Mean [95 % bootstrap interval]: over batches for the scores, over images for the masses.</p>
$reading
<h3>Scores and mass on the object</h3>
$scores
<h3>Mass on the background</h3>
$background
<p class="note">Also in <a href="tables/cued_scores.csv">tables/cued_scores.csv</a> and <a href="tables/cued_background.csv">tables/cued_background.csv</a>; every number in metrics.json (<code>cued_evaluation</code>).</p>""")

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
        out.append("<table><thead>" + ROW.substitute(cells="".join(HEAD.substitute(v=e(c)) for c in head))
                   + "</thead><tbody>")
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
    return f"{100 * a:.1f} %" if isinstance(a, (int, float)) and math.isfinite(a) else "not measured"


def _compared(data, models, accuracy_set, model_files) -> str:
    cued = any(i.get("cued_accuracy") is not None for i in models.values())
    trained = any(i.get("trained_on") for i in models.values())
    acc_head = f"accuracy on {accuracy_set}" if accuracy_set else "test accuracy"
    head = ["model", "architecture", acc_head] + (["accuracy, test with the training cue"] if cued else []) \
        + ["KD method"] + (["trained on"] if trained else []) + ["checkpoint"]
    rows = []
    for role, info in models.items():
        cells = [role, str(info.get("arch") or "–"), _pct(info.get("accuracy"))]
        cells += [_pct(info.get("cued_accuracy"))] if cued else []
        cells += [str(info.get("kd_method") or "–")]
        cells += [str(info.get("trained_on") or "–")] if trained else []
        cells += [str(info.get("checkpoint") or "–")]
        rows.append(ROW.substitute(cells="".join(CELL.substitute(v=e(c)) for c in cells)))
    accs = {r: i.get("accuracy") for r, i in models.items()}
    s, b = accs.get("Student"), accs.get("Base")
    verdict = ""
    if isinstance(s, (int, float)) and isinstance(b, (int, float)):
        text = (f"The Student's accuracy is {'higher than' if s > b else 'not higher than'} the Base's "
                f"({100 * s:.1f} % vs {100 * b:.1f} %)"
                + ("" if s > b else ": distillation did not help here; read the maps as an explanation of "
                   "that failure") + ".")
        verdict = PARA.substitute(cls="note", text=e(text))
    checkpoints = ""
    if model_files:
        links = ", ".join(f'<a href="models/{e(n)}">models/{e(n)}</a>' for n in model_files)
        checkpoints = (f"<p>Checkpoints: {links} (accepted by <code>captum-unicam explain</code> "
                       "and <code>quantify</code>).</p>")
    return COMPARED.substitute(data=f"<p>Data: {e(data)}</p>" if data else "",
                               head="".join(HEAD.substitute(v=e(h)) for h in head), rows="\n".join(rows),
                               verdict=verdict, checkpoints=checkpoints)


def render_page(*, title: str, command: str, data: Optional[str], models: Mapping[str, Mapping[str, Any]],
                figures: Mapping[str, str], empty_maps: Mapping[str, str], table1_md: Optional[str],
                tables: Mapping[str, Tuple[str, str]], localisation: Optional[Mapping[str, Any]],
                notes: Sequence[str], warnings: Sequence[str], model_files: Mapping[str, Any],
                meanings: Mapping[str, str], versions: Mapping[str, str], css: str,
                accuracy_set: Optional[str] = None, cued_reading: Optional[str] = None) -> str:
    r"""The ``index.html`` text: only the sections the report has content for."""
    sections: List[str] = []
    nav: List[Tuple[str, str]] = []
    if models or data:
        sections.append(_compared(data, models, accuracy_set, model_files))
        nav.append(("compared", "What was compared"))
    grid_names = [k for k in figures if k.startswith("grid_")]
    if grid_names:
        layers = [MAP_LAYER.substitute(layer=e(k[5:]), src=e(figures[k]),
                                       empty=PARA.substitute(cls="note", text=e(
                                           f"Empty maps (no positive evidence after ReLU): {empty_maps[k[5:]]}."))
                                       if empty_maps.get(k[5:]) else "")
                  for k in grid_names]
        sections.append(MAPS.substitute(layers="\n".join(layers)))
        nav.append(("maps", "Maps"))
    fig = f'<img src="{e(figures["scores"])}" alt="FSS and RS per layer">' if "scores" in figures else ""
    if table1_md:
        sections.append(SCORES.substitute(figure=fig, table=markdown_to_html(table1_md)))
        nav += [("scores", "FSS and RS"), ("table1", "Table 1")]
    elif fig:  # a figure of given score panels, with no Table 1 behind it
        sections.append(SCORES_FIGURE.substitute(figure=fig))
        nav.append(("scores", "FSS and RS"))
    if localisation:
        fig = f'<img src="{e(figures["localisation"])}" alt="localisation per layer">' if "localisation" in figures else ""
        table = markdown_to_html(tables["localisation"][1]) if "localisation" in tables else ""
        ch = next(iter(localisation.values())).get("chance", {}).get("energy")
        chance = PARA.substitute(cls="note", text=e(f"A uniform map would score {ch:.3f} on both (the mean object area).")) \
            if ch is not None else ""
        sections.append(LOCALISATION.substitute(figure=fig, table=table, chance=chance))
        nav.append(("localisation", "Localisation"))
    if "cued_scores" in tables:
        sections.append(CUED.substitute(
            reading=PARA.substitute(cls="note", text=e(cued_reading)) if cued_reading else "",
            scores=markdown_to_html(tables["cued_scores"][1]),
            background=markdown_to_html(tables["cued_background"][1]) if "cued_background" in tables else ""))
        nav.append(("cued", "Cued images"))
    nav += [("meaning", "What the numbers mean"), ("versions", "Versions")]
    shown = {k: v for k, v in meanings.items()
             if (localisation or not k.startswith("Localisation"))
             and (table1_md or not k.startswith(("FSS", "RS", "Intervals")))
             and (grid_names or table1_md or not k.endswith("(UniCAM)"))}
    table_links = [f'<a href="tables/{e(n)}.csv">{e(n)}.csv</a>' for n in tables]
    if table1_md:
        table_links.append('<a href="tables/table1.csv">table1.csv</a>')
    links = ('<p>All numbers: <a href="metrics.json">metrics.json</a>'
             + ("; tables: " + ", ".join(table_links) if table_links else "") + ".</p>")
    return PAGE.substitute(
        title=e(title), css=css,
        nav="".join(f'<a href="#{a}">{e(t)}</a>' for a, t in nav),
        warnings="\n".join(PARA.substitute(cls="warn", text=e(n)) for n in warnings),
        notes="\n".join(f"<p>{e(n)}</p>" for n in notes),
        sections="\n".join(sections),
        meanings="\n".join(MEANING.substitute(term=e(k), text=e(t)) for k, t in shown.items()),
        links=links,
        versions="\n".join(ROW.substitute(cells=CELL.substitute(v=e(k)) + CELL.substitute(v=e(v)))
                           for k, v in versions.items()),
        command=e(command),
    )
