"""experiments/ground_truth.py at a tiny size: the pipeline end to end, and its numbers
against independent computation (not the scientific outcome)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam

from captum_unicam.data.controlled import ControlledShapes
from captum_unicam.models import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location(
        "ground_truth", ROOT / "experiments" / "ground_truth.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    gt = _module()
    out = tmp_path_factory.mktemp("gt") / "seed3"
    assert (
        gt.main(["--out", str(out), "--seed", "3", "--size", "tiny", "--layers", "L3", "L4"]) == 0
    )
    return gt, out, json.loads((out / "results.json").read_text())


def _load(out: Path, role: str):
    return load_checkpoint(out / "models" / f"{role}.pt")[0].eval()


def _test_set(res, marker: float, n=None):
    r = res["recipe"]
    n = n or r["test"]
    return ControlledShapes(
        n, seed=r["seed"], split="test", marker_strength=marker, marker_size=r["marker_size"]
    )


def test_writes_every_artefact(run):
    _, out, res = run
    for name in (
        "results.json",
        "results.md",
        "figures/maps_L3.png",
        "figures/maps_L4.png",
        "models/teacher.pt",
        "models/base.pt",
        "models/student.pt",
    ):
        assert (out / name).is_file(), name
    assert (out / "figures/maps_L4.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "results.md").read_text()
    for text in (
        "## Localisation on the marker",
        "naive residual",
        "UniCAM residual − naive residual, marker",
        "L4 relative mass",
        "L3 grid pointing",
    ):
        assert text in md
    assert (
        res["recipe"]["seed"] == 3
        and res["recipe"]["base_marker"] == 0.8
        and res["recipe"]["marker_size"] == 8
    )
    assert res["command"].startswith("python experiments/ground_truth.py --out")


def test_accuracies_with_and_without_marker_match_the_models(run):
    _, out, res = run
    cued = _test_set(res, 1.0)
    # grey marker by hand: the marker's pixels minus the class colour plus 0.5 (noise kept)
    grey = cued.images.clone()
    for i in range(len(cued)):
        on = cued.marker_masks[i, 0].bool()
        colour = cued.marker_palette[int(cued.labels[i])].view(3, 1)
        grey[i][:, on] = (cued.images[i][:, on] - colour + 0.5).clamp(0, 1)
    assert not torch.equal(grey, cued.images)
    sets = {"cue-free": _test_set(res, 0.0).images, "cued": cued.images, "grey marker": grey}
    for role in ("teacher", "base", "student"):
        m = _load(out, role)
        got = res["accuracies"][role]
        for cond, x in sets.items():
            with torch.no_grad():
                acc = int((m(x).argmax(1) == cued.labels).sum()) / len(cued)
            assert got[cond] == pytest.approx(acc, abs=1e-9), (role, cond)
        assert got["reliance"] == pytest.approx(got["cued"] - got["cue-free"], abs=1e-12)
        assert got["marker_information"] == pytest.approx(
            got["cued"] - got["grey marker"], abs=1e-12
        )


def _energy(maps, mask):
    """Hand computation: bilinear upsampling, ReLU, share of the mass inside the mask."""
    h = F.interpolate(maps.double(), size=mask.shape[-2:], mode="bilinear", align_corners=False)[
        :, 0
    ].clamp_min(0)
    total = h.flatten(1).sum(1)
    inside = (h * mask[:, 0].double()).flatten(1).sum(1)
    return [float(i / t) if t > 0 else None for i, t in zip(inside, total)]


def test_naive_baselines_and_masses_match_hand_computation(run):
    _, out, res = run
    n = res["recipe"]["test"]
    ds = _test_set(res, 1.0, n + res["recipe"]["reference"])
    x, y = ds.images[:n], ds.labels[:n]
    student, base = _load(out, "student"), _load(out, "base")
    gb = LayerGradCam(base, base.layer3[-1]).attribute(x, target=y, relu_attributions=True).detach()
    gs = (
        LayerGradCam(student, student.layer3[-1])
        .attribute(x, target=y, relu_attributions=True)
        .detach()
    )

    def norm(m):
        peak = m.flatten(1).max(1).values.view(-1, 1, 1, 1)
        return torch.where(peak > 0, m / peak.clamp_min(1e-30), torch.zeros_like(m))

    naive = {
        "naive_residual": (norm(gb) - norm(gs)).clamp_min(0),
        "naive_distilled": (norm(gs) - norm(gb)).clamp_min(0),
        "gradcam_base": gb,
    }
    pi = res["per_image"]["L3"]
    for kind, maps in naive.items():
        for region, mask in (("marker", ds.marker_masks[:n]), ("object", ds.masks[:n])):
            want = _energy(maps, mask)
            got = pi[region][kind]["mass"]
            for a, b in zip(got, want):
                assert (a is None) == (b is None)
                if a is not None:
                    assert a == pytest.approx(b, abs=1e-6)
            vals = [v for v in got if v is not None]
            summary = res["evaluation"]["L3"]["localisation"][region][kind]["mass"]
            if vals:
                assert summary["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
    # paired difference: the mean of per-image differences where both maps are non-empty
    a, b = pi["marker"]["residual"]["mass"], pi["marker"]["naive_residual"]["mass"]
    d = [p - q for p, q in zip(a, b) if p is not None and q is not None]
    got = res["evaluation"]["L3"]["comparisons"]["residual-naive_residual:marker"]["mass"]["mean"]
    assert (got is None and not d) or got == pytest.approx(np.mean(d), abs=1e-12)


def test_chance_row_is_the_area_and_the_share_of_overlapping_cells(run):
    _, _, res = run
    n = res["recipe"]["test"]
    mask = _test_set(res, 1.0).marker_masks[:n]
    pi = res["per_image"]["L4"]["marker"]["uniform"]
    assert pi["mass"] == pytest.approx((mask.flatten(1).mean(1)).tolist(), abs=1e-12)
    cells = F.max_pool2d(mask, 8)  # 4 x 4 grid of 8 x 8 px cells at 32 px: 1 where a cell overlaps
    assert pi["pointing_grid"] == pytest.approx(cells.flatten(1).mean(1).tolist(), abs=1e-12)


def test_reference_mode_scores_match_dcor_per_image(run):
    dcor = pytest.importorskip("dcor")
    _, out, res = run
    n, m = res["recipe"]["test"], res["recipe"]["reference"]
    ds = _test_set(res, 1.0, n + m)
    student, base = _load(out, "student"), _load(out, "base")
    feats = {}
    hooks = [
        student.layer4.register_forward_hook(lambda mod, i, o: feats.__setitem__("s", o)),
        base.layer4.register_forward_hook(lambda mod, i, o: feats.__setitem__("b", o)),
    ]
    try:
        with torch.no_grad():
            student(ds.images), base(ds.images)
    finally:
        for h in hooks:
            h.remove()
    xs, xb = feats["s"].flatten(1).double().numpy(), feats["b"].flatten(1).double().numpy()
    lab = F.one_hot(ds.labels, 4).double().numpy()
    want_d, want_r = [], []
    for i in range(n):
        rows = [i] + list(range(n, n + m))
        want_d.append(dcor.partial_distance_correlation(xs[rows], lab[rows], xb[rows]))
        want_r.append(dcor.partial_distance_correlation(xb[rows], lab[rows], xs[rows]))
    e = res["evaluation"]["L4"]
    assert e["s_d"]["mean"] == pytest.approx(np.mean(want_d), abs=1e-6)
    assert e["s_r"]["mean"] == pytest.approx(np.mean(want_r), abs=1e-6)


def test_pooled_over_seeds_is_the_mean_of_seed_means_with_a_resampling_interval():
    gt = _module()
    p = gt.pooled([[1.0, 1.0, None], [3.0, 3.0, 3.0]])
    assert p["mean"] == 2.0 and p["low"] == pytest.approx(2.0) and p["high"] == pytest.approx(2.0)
    assert p["seeds"] == [1.0, 3.0]
    p = gt.pooled([[0.0, 1.0], [0.0, 1.0]], n_bootstrap=2000)
    assert p["mean"] == 0.5 and 0.0 <= p["low"] < 0.5 < p["high"] <= 1.0
    assert gt.pooled([[None], []])["mean"] is None


def test_summary_over_runs(run):
    gt, out, res = run
    text = gt.summarise([str(out), str(out)])
    assert "# Ground truth over seeds 3, 3" in text
    # marker and object: the table and the per-seed spread; and the empty-map table
    assert text.count("| UniCAM residual |") == 5
    assert "## Empty maps" in text and "| L4 | " in text
    a = res["accuracies"]["base"]
    assert f"| base | {a['cue-free']:.3f} / {a['cue-free']:.3f} |" in text
    m = res["evaluation"]["L4"]["localisation"]["marker"]["residual"]["relative_mass"]["mean"]
    if m is not None:
        assert f"{m:.3f} / {m:.3f}" in text
