"""index.html opens from disk in headless Chromium and every image loads.

Needs Debian's ``chromium`` (``apt-get install chromium``); skipped with a visible reason
where it is missing. The report itself has no script: the check runs in a test-only copy
of index.html with a small inline script that writes, for every <img>, whether it loaded
(``complete && naturalWidth > 0``) into the DOM, which ``--dump-dom`` prints.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from captum_unicam.output import report


def _chromium():
    for c in (
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
    ):
        if c and Path(c).is_file():
            return c
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not found (/usr/bin/chromium or chromium on PATH); "
    "install it with `apt-get install chromium` to run the browser check",
)

_CHECK = """
<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                .map(function (i) { return i.getAttribute("src"); });
  var d = document.createElement("pre");
  d.id = "img-check";
  d.textContent = "IMAGES " + imgs.length + " BROKEN " + bad.length + " [" + bad.join(",") + "]";
  document.body.appendChild(d);
});
</script>
"""


def _flags(tmp):
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--allow-file-access-from-files",
        f"--user-data-dir={tmp}",
        "--virtual-time-budget=10000",
    ]


def _check(page: Path, tmp: Path) -> str:
    r = subprocess.run(
        _flags(tmp) + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    m = re.search(r"IMAGES (\d+) BROKEN (\d+) \[([^\]]*)\]", r.stdout)
    assert m, f"no result in the dumped DOM (exit {r.returncode}): {r.stderr[-2000:]}"
    return m


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, 16, 16, generator=g)
    maps = {
        "Grad-CAM student": torch.rand(2, 1, 4, 4, generator=g),
        "UniCAM residual": torch.zeros(2, 1, 4, 4),
    }
    out = report.write_report(
        root / "rep",
        progress=False,
        report=report.Report(
            command=["captum-unicam", "demo"],
            data="test",
            models={
                "Teacher": {"arch": "t", "accuracy": 0.9},
                "Base": {"arch": "b", "accuracy": 0.6},
                "Student": {"arch": "s", "accuracy": 0.7},
            },
            grids={"L4": {"images": imgs, "maps": maps}},
            score_panels={"(a) FSS": {"Grad-CAM": {"L4": (0.5, 0.4, 0.6)}}},
        ),
    )
    return out


def test_every_image_of_index_html_loads(report_dir, tmp_path):
    page = (report_dir / "index.html").read_text(encoding="utf-8")
    assert "<script" not in page  # the report itself has no script
    check = report_dir / "_browser_check.html"
    check.write_text(page.replace("</body>", _CHECK + "</body>"), encoding="utf-8")
    try:
        m = _check(check, tmp_path / "profile")
    finally:
        check.unlink()
    n, broken, which = int(m.group(1)), int(m.group(2)), m.group(3)
    assert n == len(re.findall(r"<img ", page)) == 2
    assert broken == 0, f"images that did not load: {which}"


def test_the_check_detects_a_missing_image(report_dir, tmp_path):
    # the oracle of the check itself: a page with a missing figure reports it as broken
    page = (report_dir / "index.html").read_text(encoding="utf-8")
    check = report_dir / "_browser_check_bad.html"
    check.write_text(
        page.replace("</body>", '<img src="figures/missing.png">' + _CHECK + "</body>"),
        encoding="utf-8",
    )
    try:
        m = _check(check, tmp_path / "profile")
    finally:
        check.unlink()
    assert int(m.group(2)) == 1 and "figures/missing.png" in m.group(3)


_ORDER = """
<script>
window.addEventListener("load", function () {
  var h = Array.prototype.slice.call(document.querySelectorAll("h2")).map(function (e) {
    return e.id; });
  var c = document.querySelector(".conclusion");
  var d = document.createElement("pre");
  d.id = "order-check";
  d.textContent = "ORDER " + h.join(",") + " BG " + getComputedStyle(c).backgroundColor + " END";
  document.body.appendChild(d);
});
</script>
"""


def test_sanity_and_conclusion_are_rendered_first(tmp_path):
    out = report.write_report(
        tmp_path / "rep",
        progress=False,
        report=report.Report(
            command=["captum-unicam", "quantify"],
            data="test",
            conclusion="L4 (raw features): No conclusion.",
            sanity=["Base: accuracy 26.0 % on the evaluated set is within 5 points of chance."],
            models={
                "Base": {"arch": "b", "accuracy": 0.26},
                "Student": {"arch": "s", "accuracy": 0.7},
            },
        ),
    )
    page = (out / "index.html").read_text(encoding="utf-8")
    check = out / "_browser_order.html"
    check.write_text(page.replace("</body>", _ORDER + "</body>"), encoding="utf-8")
    r = subprocess.run(
        _flags(tmp_path / "profile") + ["--dump-dom", check.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    m = re.search(r"ORDER ([^ ]*) BG (.*?) END", r.stdout)
    assert m, f"no result in the dumped DOM (exit {r.returncode}): {r.stderr[-2000:]}"
    assert m.group(1).split(",")[:3] == ["sanity", "conclusion", "compared"]
    assert m.group(2) == "rgb(247, 247, 247)"  # the refused conclusion's grey box (.refused)
