"""The report folder: atomic writing, refusal of non-empty folders, localisation numbers."""

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from captum_unicam import viz
from captum_unicam.errors import OutputError
from captum_unicam.metrics import KDEvaluation
from captum_unicam.metrics.localisation import localisation
from captum_unicam.output import html, report


def _write(out, *, overwrite=False, progress=True, **fields):
    return report.write_report(out, report.Report(**fields), overwrite=overwrite, progress=progress)


# ---------------------------------------------------------------------------
# localisation, against hand computations
# ---------------------------------------------------------------------------


def test_localisation_hand_computed():
    masks = torch.zeros(3, 1, 4, 4)
    masks[:, 0, :2, :2] = 1.0  # object: top-left 2x2, area 4/16
    m = torch.zeros(3, 1, 4, 4)
    m[0, 0, 0, 0] = 3.0
    m[0, 0, 3, 3] = 1.0  # energy 3/4, peak on object
    m[1, 0, 3, 3] = 2.0
    m[1, 0, 1, 1] = 1.0  # energy 1/3, peak off object
    m[1, 0, 2, 2] = -5.0  # negative values are ignored
    # image 2: all zero -> empty, left out
    out = localisation({"k": m}, masks, n_bootstrap=200, seed=1)
    assert out["chance"]["energy"] == pytest.approx(0.25)
    k = out["kinds"]["k"]
    assert k["n_images"] == 3 and k["n_empty"] == 1
    assert k["energy"]["n"] == 2
    assert k["energy"]["mean"] == pytest.approx((3 / 4 + 1 / 3) / 2)
    assert k["pointing"]["mean"] == pytest.approx(0.5)
    for metric in ("energy", "pointing"):
        assert k[metric]["low"] <= k[metric]["mean"] <= k[metric]["high"]
    # percentile bootstrap of two values: the interval lies within their range
    assert 1 / 3 - 1e-12 <= k["energy"]["low"] and k["energy"]["high"] <= 3 / 4 + 1e-12


def test_localisation_upsamples_like_captum():
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, :4, :] = True
    m = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    from captum.attr import LayerAttribution

    up = LayerAttribution.interpolate(m, (8, 8), "bilinear")[0, 0].double()
    expected = float((up * masks[0]).sum() / up.sum())
    out = localisation({"m": m}, masks, n_bootstrap=10)
    assert out["kinds"]["m"]["energy"]["mean"] == pytest.approx(expected, abs=1e-12)


def test_localisation_bad_input():
    with pytest.raises(ValueError, match="3 maps for 2 masks"):
        localisation({"m": torch.rand(3, 1, 2, 2)}, torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="masks must have shape"):
        localisation({"m": torch.rand(2, 1, 2, 2)}, torch.ones(2, 3, 4, 4))


# ---------------------------------------------------------------------------
# write_report
# ---------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href") and v is not None:
                self.links.append(v)


def _evaluation():
    vals = {}
    rng = np.random.default_rng(0)
    for layer in ("L1", "L2"):
        vals[layer] = {
            k: {
                m: list(rng.random(4))
                for m in ("fss", "rs_base", "rs_student", "rs_distilled", "rs_residual")
            }
            for k in ("gradcam", "distilled", "residual")
        }
    return KDEvaluation(
        layers=["L1", "L2"],
        map_kinds=["gradcam", "distilled", "residual"],
        values=vals,
        batch_indices=[0, 1, 2, 3],
        batch_sizes=[8] * 4,
        settings={"n_bootstrap": 100, "n_permutations": 100, "seed": 0},
    )


def _small_kwargs():
    # no figures: fast
    return dict(
        command=["captum-unicam", "demo"],
        data="test data",
        progress=False,
        models={
            "Teacher": {"arch": "t", "accuracy": 0.9},
            "Base": {"arch": "b", "accuracy": 0.6},
            "Student": {"arch": "s", "accuracy": 0.75},
        },
    )


def _kwargs(ckpt=None):
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(4, 3, 16, 16, generator=g)
    maps = {
        "Grad-CAM student": torch.rand(4, 1, 4, 4, generator=g),
        "UniCAM residual": torch.zeros(4, 1, 4, 4),
    }
    masks = torch.zeros(4, 16, 16)
    masks[:, 4:12, 4:12] = 1
    kw = dict(
        command=["captum-unicam", "demo", "--quick"],
        data="test data",
        models={
            "Teacher": {"arch": "t", "accuracy": 0.9},
            "Base": {"arch": "b", "accuracy": 0.6},
            "Student": {"arch": "s", "accuracy": 0.75, "kd_method": "response"},
        },
        evaluation=_evaluation(),
        grids={"L4": {"images": imgs, "maps": maps, "labels": list("abcd")}},
        localisation={"L4": localisation(maps, masks, n_bootstrap=50)},
        progress=False,
    )
    if ckpt is not None:
        kw["model_files"] = {"student.pt": ckpt}
    return kw


def test_write_report_contents(tmp_path):
    ckpt = tmp_path / "s.pt"
    torch.save({"w": torch.ones(1)}, ckpt)
    out = _write(tmp_path / "a" / "rep", **_kwargs(ckpt))
    assert out == (tmp_path / "a" / "rep").absolute()
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    for f in (
        "index.html",
        "metrics.json",
        "tables/table1.csv",
        "tables/table1.md",
        "tables/models.csv",
        "tables/localisation.csv",
        "figures/grid_L4.png",
        "figures/scores.png",
        "figures/localisation.png",
        "models/student.pt",
    ):
        assert f in files
    # no temporary siblings left
    assert [p.name for p in out.parent.iterdir()] == ["rep"]

    metrics = json.loads(
        (out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(c)
    )
    assert metrics["models"]["Student"]["accuracy"] == 0.75
    assert metrics["command"] == "captum-unicam demo --quick"
    assert set(metrics["versions"]) >= {"python", "torch", "captum", "captum-unicam"}
    ev = _evaluation().summary()
    ev, got = ev.get("by_layer", ev), metrics["evaluation"]
    got = got.get("by_layer", got)
    assert got["L2"]["distilled"]["rs_student"]["mean"] == pytest.approx(
        ev["L2"]["distilled"]["rs_student"]["mean"]
    )
    loc = metrics["localisation"]["L4"]["kinds"]
    assert (
        loc["UniCAM residual"]["n_empty"] == 4 and loc["UniCAM residual"]["energy"]["mean"] is None
    )

    page = (out / "index.html").read_text()
    parser = _Links()
    parser.feed(page)
    assert "script" not in parser.tags
    for link in parser.links:
        if link.startswith("#"):
            continue
        assert not re.match(r"^[a-z]+:", link), link  # relative only: no http, no CDN
        assert (out / link).is_file(), link
    for text in (
        "Teacher",
        "90.0 %",
        "60.0 %",
        "75.0 %",
        "FSS",
        "RS",
        "distilled",
        "residual",
        "captum-unicam demo --quick",
        "no positive evidence after ReLU",
    ):
        assert text in page
    assert (out / "tables" / "table1.csv").read_text() == _evaluation().to_csv()


def test_existing_folder_refused_and_untouched(tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="--overwrite"):
        report.check_output_dir(out)
    with pytest.raises(OutputError, match="not empty"):
        _write(out, **_small_kwargs())
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # an empty folder is fine; so is --overwrite
    empty = tmp_path / "empty"
    empty.mkdir()
    _write(empty, **_small_kwargs())
    assert (empty / "index.html").is_file()
    # overwrite replaces only a report of ours (issue 14)
    with pytest.raises(OutputError, match="not a captum-unicam report"):
        _write(out, overwrite=True, **_small_kwargs())
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "metrics.json").write_text('{"format": "captum-unicam/report"}')
    _write(out, overwrite=True, **_small_kwargs())
    assert not (out / "keep.txt").exists() and (out / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "rep"]
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        report.check_output_dir(f, overwrite=True)


@pytest.mark.parametrize("existing", [False, True])
def test_crash_mid_report_leaves_nothing(tmp_path, monkeypatch, existing):
    out = tmp_path / "deep" / "rep"
    if existing:
        out.mkdir(parents=True)
        (out / "keep.txt").write_text("mine")
        (out / "metrics.json").write_text('{"format": "captum-unicam/report"}')

    def boom(*a, **k):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(viz, "scores_per_layer", boom)
    with pytest.raises(RuntimeError, match="figure failed"):
        _write(out, overwrite=True, score_panels={"FSS": {"s": {"L1": 0.5}}}, **_small_kwargs())
    if existing:
        assert [p.name for p in out.parent.iterdir()] == ["rep"]
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "metrics.json"]
    else:
        assert list(tmp_path.iterdir()) == []  # even the parent folders we made are gone


def test_failed_accuracy_is_stated(tmp_path):
    kw = _small_kwargs()
    kw["models"] = {
        "Teacher": {"arch": "t", "accuracy": None},
        "Base": {"arch": "b", "accuracy": 0.8},
        "Student": {"arch": "s", "accuracy": 0.7},
    }
    out = _write(tmp_path / "r", **kw)
    page = (out / "index.html").read_text()
    assert "not measured" in page and "did not help" in page
    # no Table 1 section without an evaluation, no Localisation section without masks
    assert 'id="table1"' not in page and "Table 1" not in page
    assert 'id="localisation"' not in page and "Localisation (controlled data)" not in page


def test_markdown_table_to_html():
    md = "| a | b |\n|---|---:|\n| 1 | <x> |\n\nnote & more\n"
    h = html.markdown_to_html(md)
    assert "<th>a</th>" in h and "<td>&lt;x&gt;</td>" in h and "<p>note &amp; more</p>" in h
    assert "---" not in h


def test_every_figure_written_is_shown(tmp_path):
    """Each PNG under figures/ is referenced by index.html (a score figure made from given
    panels, with no Table 1 behind it, was written but not shown)."""
    import re

    g = torch.Generator().manual_seed(0)
    out = _write(
        tmp_path / "rep",
        command=["captum-unicam", "demo"],
        data="test",
        progress=False,
        models={"Student": {"arch": "s", "accuracy": 0.7}},
        grids={
            "L4": {
                "images": torch.rand(2, 3, 16, 16, generator=g),
                "maps": {"UniCAM residual": torch.zeros(2, 1, 4, 4)},
            }
        },
        score_panels={"(a) FSS": {"Grad-CAM": {"L4": (0.5, 0.4, 0.6)}}},
    )
    page = (out / "index.html").read_text(encoding="utf-8")
    shown = set(re.findall(r'<img src="(figures/[^"]+)"', page))
    written = {f"figures/{p.name}" for p in (out / "figures").iterdir()}
    assert written == shown == {"figures/grid_L4.png", "figures/scores.png"}


def test_one_page_renderer_renders_any_report_page():
    """A report other than explain / quantify (compare's sections: text, figure, table,
    CSV link) goes through the same renderer, escaped, with its sections in the navigation."""
    md = "| method | MoRF 50 |\n|---|---|\n| UniCAM <x> | 0.5 [0.4, 0.6] |\n"
    sections = [
        html.figure_table_section(
            "road",
            "ROAD",
            "Accuracy after replacing pixels.",
            figure="figures/road.png",
            table_md=md,
            csv="tables/road.csv",
        ),
        html.figure_table_section("sanity", "Sanity checks", "Text only."),
    ]
    page = html.render_page(
        html.Page(
            title="Comparison & co",
            command="captum-unicam compare --x",
            notes=["a <note>"],
            sections=sections,
            table_links=["tables/road.csv"],
            versions={"torch": "2"},
        )
    )
    assert "<title>Comparison &amp; co</title>" in page and "<p>a &lt;note&gt;</p>" in page
    assert '<a href="#road">ROAD</a><a href="#sanity">Sanity checks</a>' in page
    assert '<h2 id="road">ROAD</h2>' in page and '<img src="figures/road.png" alt="ROAD">' in page
    assert "<td>UniCAM &lt;x&gt;</td>" in page and '<a href="tables/road.csv">road.csv</a>' in page
    assert page.count("<table>") == 2  # the ROAD table and the versions table
