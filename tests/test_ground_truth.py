"""experiments/ground_truth.py at a tiny size: the pipeline end to end, and its numbers
against hand computation (not the scientific outcome)."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from captum_unicam.data.controlled import ControlledShapes

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("ground_truth", ROOT / "experiments" / "ground_truth.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    gt = _module()
    out = tmp_path_factory.mktemp("gt") / "seed3"
    assert gt.main(["--out", str(out), "--seed", "3", "--size", "tiny", "--layers", "L4",
                    "--sanity-layer", "L4"]) == 0
    return gt, out, json.loads((out / "results.json").read_text())


def test_writes_every_artefact(run):
    _, out, res = run
    for name in ("results.json", "results.md", "sanity.md", "sanity.csv", "maps.pt", "figures/sanity.png",
                 "figures/maps_cued_L4.png", "figures/maps_cue-free_L4.png", "models/teacher.pt",
                 "models/base.pt", "models/student.pt", "models/random_student.pt"):
        assert (out / name).is_file(), name
    assert (out / "figures/sanity.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "results.md").read_text()
    assert "## cued test images" in md and "residual − Grad-CAM(Base)" in md
    assert res["recipe"]["seed"] == 3 and res["recipe"]["base_marker"] == 0.7
    assert res["command"].startswith("python experiments/ground_truth.py --out")


def _energy(maps: torch.Tensor, mask: torch.Tensor):
    """Hand computation: bilinear upsampling, ReLU, share of the mass inside the mask."""
    h = torch.nn.functional.interpolate(maps.double(), size=mask.shape[-2:], mode="bilinear",
                                        align_corners=False)[:, 0].clamp_min(0)
    total = h.flatten(1).sum(1)
    inside = (h * mask[:, 0].double()).flatten(1).sum(1)
    return [float(i / t) if t > 0 else None for i, t in zip(inside, total)]


def test_masses_and_paired_differences_match_hand_computation(run):
    _, out, res = run
    maps = torch.load(out / "maps.pt", weights_only=True)
    n = res["evaluation"]["cued"]["L4"]["n_images"]
    for cond, marker in (("cue-free", 0.0), ("cued", 1.0)):
        ds = ControlledShapes(32, seed=3, split="test", marker_strength=marker)
        obj, mark = ds.masks[:n], ds.marker_masks[:n]
        regions = {"object": obj, "marker": mark, "background": (1 - obj - mark).clamp(0, 1)}
        entry = res["evaluation"][cond]["L4"]
        e = {}
        for kind in ("gradcam_student", "gradcam_base", "distilled", "residual"):
            m = maps[cond]["L4"][kind]
            assert m.shape[0] == n
            for region, mask in regions.items():
                e[kind, region] = _energy(m, mask)
                vals = [v for v in e[kind, region] if v is not None]
                got = entry["mass"][region][kind]
                if not vals:
                    assert got["mean"] is None
                    continue
                assert got["mean"] == pytest.approx(np.mean(vals), abs=1e-6)
                assert got["low"] <= got["mean"] + 1e-12 and got["mean"] <= got["high"] + 1e-12
        diff = [a - b for a, b in zip(e["residual", "marker"], e["gradcam_base", "marker"])
                if a is not None and b is not None]
        got = entry["comparisons"]["residual_minus_gradcam_base_on_marker"]["mean"]
        assert got == pytest.approx(np.mean(diff), abs=1e-6)
        diff = [a - b for a, b in zip(e["distilled", "object"], e["gradcam_student", "object"])
                if a is not None and b is not None]
        got = entry["comparisons"]["distilled_minus_gradcam_student_on_object"]["mean"]
        assert got == pytest.approx(np.mean(diff), abs=1e-6)
    # with no marker in the cue-free images, nothing can be on it
    assert res["evaluation"]["cue-free"]["L4"]["mass"]["marker"]["residual"]["mean"] in (0.0, None)


def _load(out: Path, role: str):
    from captum_unicam.models import build_model

    model = build_model("small_resnet_s", 4)
    state = torch.load(out / "models" / f"{role}.pt", weights_only=True)
    model.load_state_dict(state["state_dict"] if "state_dict" in state else state)
    return model.eval()


def test_scores_and_accuracies_match_independent_oracles(run):
    dcor = pytest.importorskip("dcor")
    _, out, res = run
    student, base = _load(out, "student"), _load(out, "base")
    ds = ControlledShapes(32, seed=3, split="test", marker_strength=1.0)
    for role in ("teacher", "base", "student", "random_student"):
        m = _load(out, role)
        with torch.no_grad():
            acc = float((m(ds.images).argmax(1) == ds.labels).float().mean())
        assert res["accuracies"]["cued"][role] == pytest.approx(acc, abs=1e-9)
    feats = {}
    hooks = [student.layer4.register_forward_hook(lambda mod, i, o: feats.__setitem__("s", o)),
             base.layer4.register_forward_hook(lambda mod, i, o: feats.__setitem__("b", o))]
    sd, sr = [], []
    bs = 16  # the tiny size's eval batch: each batch is UniCAM's context
    try:
        for i in range(0, 32, bs):
            x, y = ds.images[i : i + bs], ds.labels[i : i + bs]
            with torch.no_grad():
                student(x), base(x)
            xs = feats["s"].flatten(1).double().numpy()
            xb = feats["b"].flatten(1).double().numpy()
            lab = torch.nn.functional.one_hot(y, 4).double().numpy()
            sd.append(dcor.partial_distance_correlation(xs, lab, xb))
            sr.append(dcor.partial_distance_correlation(xb, lab, xs))
    finally:
        for h in hooks:
            h.remove()
    entry = res["evaluation"]["cued"]["L4"]
    assert entry["n_batches"] == 2
    assert entry["s_d"]["mean"] == pytest.approx(np.mean(sd), abs=1e-5)
    assert entry["s_r"]["mean"] == pytest.approx(np.mean(sr), abs=1e-5)


def test_sanity_table_has_every_check_and_step_zero_is_identity(run):
    _, out, res = run
    rows = list(csv.DictReader(io.StringIO((out / "sanity.csv").read_text())))
    checks = {r["check"] for r in rows}
    assert checks == {"Student randomised", "Base randomised", "Student on random labels"}
    blocks = [r["randomised"] for r in rows if r["check"] == "Student randomised" and r["method"] == "UniCAM distilled"]
    assert blocks == ["none", "fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]
    for r in rows:
        if r["randomised"] == "none" and r["ssim"]:
            assert float(r["ssim"]) == pytest.approx(1.0)


def test_summary_over_runs(run, tmp_path):
    gt, out, res = run
    text = gt.summarise([str(out), str(out)])
    assert text.count("| L4 | S_d |") == 2  # one line per condition
    assert "seed 3 | seed 3" in text


def test_compare_run_on_the_runs_models(run):
    import warnings

    from captum.attr import LayerAttribution, LayerGradCam

    from captum_unicam.metrics.localisation import localisation

    gt, out, res = run
    metrics = gt.compare_run(out, layer="L4", n_images=8)
    for name in ("index.html", "metrics.json", "tables/localisation.md", "tables/road.csv", "tables/sanity.md",
                 "figures/localisation.png"):
        assert (out / "compare" / name).is_file(), name
    base = _load(out, "base")
    ds = ControlledShapes(8, seed=3, split="test", marker_strength=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = LayerGradCam(base, base.layer4).attribute(ds.images, target=ds.labels, relu_attributions=True)
    m = LayerAttribution.interpolate(m, (32, 32), "bilinear")
    want = localisation({"m": m.detach()}, ds.marker_masks, n_bootstrap=10)["kinds"]["m"]["energy"]["mean"]
    got = metrics["localisation"]["marker"]["kinds"]["Grad-CAM Base"]["energy"]["mean"]
    assert got == pytest.approx(want, abs=1e-6)
