"""The cued evaluation (captum_unicam.pipeline.evaluation.cued_evaluation), its report
section and the demo's use of it, at a tiny size: values against hand computation
(UniCAM.score per batch, captum's LayerGradCam, masks), not the scientific outcome."""

from __future__ import annotations

import csv
import io
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam

from captum_unicam import UniCAM
from captum_unicam.data import ControlledShapes
from captum_unicam.errors import InputError
from captum_unicam.metrics.intervals import bootstrap_ci
from captum_unicam.models import build_model, stage_layers
from captum_unicam.pipeline import stratified_loader
from captum_unicam.pipeline.evaluation import CUE_CONDITIONS, cued_evaluation

N_BOOT = 50


def _model(seed: int):
    torch.manual_seed(seed)
    return build_model("small_resnet_s", 4, width=4).eval()


@pytest.fixture(scope="module")
def setup():
    student, base = _model(0), _model(1)
    s, b = stage_layers(student), stage_layers(base)
    layers = {"L3": (s["L3"], b["L3"]), "L4": (s["L4"], b["L4"])}
    conditions = {
        name: list(
            stratified_loader(
                ControlledShapes(20, seed=5, split="test", cue_strength=c), 10, seed=0
            )
        )
        for name, c in CUE_CONDITIONS.items()
    }
    res = cued_evaluation(
        student, base, layers, conditions, n_bootstrap=N_BOOT, seed=3, progress=False
    )
    return student, base, layers, conditions, res


def _energy(maps: torch.Tensor, mask: torch.Tensor):
    """Per image: share of the upsampled positive map on ``mask`` (None for an empty map)."""
    h = F.interpolate(
        maps.double(), size=mask.shape[-2:], mode="bilinear", align_corners=False
    ).clamp_min(0)[:, 0]
    m = mask.reshape(h.shape).double()
    total = h.flatten(1).sum(1)
    return [None if t <= 0 else float((h[i] * m[i]).sum() / t) for i, t in enumerate(total)]


def test_scores_are_unicam_score_per_batch(setup):
    student, base, layers, conditions, res = setup
    for cond, batches in conditions.items():
        entry = res["conditions"][cond]
        assert entry["n_batches"] == 2 and entry["n_images"] == 20
        for layer, (sl, bl) in layers.items():
            uc = UniCAM(student, sl, base, bl)
            sd, sr = zip(*[tuple(float(v) for v in uc.score(x, target=y)) for x, y, _ in batches])
            got = entry["layers"][layer]
            assert got["s_d"]["mean"] == pytest.approx(np.mean(sd), abs=1e-6)
            assert got["s_r"]["mean"] == pytest.approx(np.mean(sr), abs=1e-6)
            low, high = bootstrap_ci(np.array(sr), N_BOOT, 3, 0.95)
            assert (got["s_r"]["low"], got["s_r"]["high"]) == pytest.approx((low, high), abs=1e-6)
            assert got["s_r"]["n"] == 2


def test_masses_by_hand_from_gradcam_and_masks(setup):
    student, base, layers, conditions, res = setup
    for cond, batches in conditions.items():
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        mask = torch.cat([b[2] for b in batches])[:, 0]
        got = res["conditions"][cond]["layers"]["L4"]
        # chance: the mean object area, and its complement
        assert got["chance"]["object"] == pytest.approx(mask.double().mean().item(), abs=1e-12)
        assert got["chance"]["object"] + got["chance"]["background"] == pytest.approx(
            1.0, abs=1e-12
        )
        for model, layer, kind in (
            (student, layers["L4"][0], "gradcam_student"),
            (base, layers["L4"][1], "gradcam_base"),
        ):
            # Grad-CAM per batch (each batch as in the evaluation), then energies by hand
            maps = torch.cat(
                [
                    LayerGradCam(model, layer)
                    .attribute(b[0], target=b[1], relu_attributions=True)
                    .detach()
                    for b in batches
                ]
            )
            obj = [e for e in _energy(maps, mask) if e is not None]
            bg = [e for e in _energy(maps, 1 - mask) if e is not None]
            assert obj, "no non-empty map: the test would compare nothing"
            assert got["mass"]["object"][kind]["mean"] == pytest.approx(np.mean(obj), abs=1e-6)
            assert got["mass"]["background"][kind]["mean"] == pytest.approx(np.mean(bg), abs=1e-6)
            assert got["mass"]["object"][kind]["n"] == len(obj)
            assert got["n_empty"][kind] == 20 - len(obj)
        # every non-empty map is split between object and background
        for kind in ("distilled", "residual", "gradcam_student", "gradcam_base"):
            o, b = got["mass"]["object"][kind], got["mass"]["background"][kind]
            if o["n"]:
                assert o["mean"] + b["mean"] == pytest.approx(1.0, abs=1e-9)
                assert o["low"] <= o["mean"] <= o["high"]
        assert x.shape[0] == y.shape[0] == 20


def test_residual_maps_are_unicams_on_each_batch(setup):
    student, base, layers, conditions, res = setup
    batches = conditions["cued"]
    mask = torch.cat([b[2] for b in batches])[:, 0]
    uc = UniCAM(student, layers["L3"][0], base, layers["L3"][1])
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # degenerate batches of random models; counted as empty maps
        r = torch.cat(
            [uc.attribute(b[0], target=b[1], features="residual").detach() for b in batches]
        )
    obj = [e for e in _energy(r, mask) if e is not None]
    got = res["conditions"]["cued"]["layers"]["L3"]["mass"]["object"]["residual"]
    assert got["n"] == len(obj)
    if obj:  # random models: all residual maps may be empty; n_empty is then checked above
        assert got["mean"] == pytest.approx(np.mean(obj), abs=1e-6)


class _Counting(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_errors_before_any_work(setup):
    student, base, layers, conditions, _ = setup
    counting = _Counting(student)
    s = stage_layers(student)
    lay = {"L4": (s["L4"], stage_layers(base)["L4"])}
    no_masks = {
        "cue-free": [(b[0], b[1]) for b in conditions["cue-free"]],
        "cued": conditions["cued"],
    }
    with pytest.raises(InputError, match="masks"):
        cued_evaluation(counting, base, lay, no_masks, progress=False)
    with pytest.raises(InputError, match="no batches"):
        cued_evaluation(
            counting, base, lay, {"cued": conditions["cued"], "cue-free": []}, progress=False
        )
    with pytest.raises(InputError, match="conditions is empty"):
        cued_evaluation(counting, base, lay, {}, progress=False)
    with pytest.raises(InputError, match="layers is empty"):
        cued_evaluation(counting, base, {}, conditions, progress=False)
    assert counting.calls == 0


def test_report_section_tables_and_metrics(setup, tmp_path):
    from captum_unicam.output.report import Report, write_report

    res = setup[4]
    out = write_report(tmp_path / "rep", Report(title="t", cued=res), progress=False)
    page = (out / "index.html").read_text()
    assert "What the Base used that the Student dropped" in page
    rows = list(csv.DictReader(io.StringIO((out / "tables" / "cued_scores.csv").read_text())))
    assert [(r["condition"], r["layer"]) for r in rows] == [
        (c, layer) for c in ("cue-free", "cued") for layer in ("L3", "L4")
    ]
    got = res["conditions"]["cued"]["layers"]["L4"]
    row = rows[3]
    assert (
        row["S_r"]
        == f"{got['s_r']['mean']:.3f} [{got['s_r']['low']:.3f}, {got['s_r']['high']:.3f}]"
    )
    assert row["object mass: Grad-CAM Base"].startswith(
        f"{got['mass']['object']['gradcam_base']['mean']:.3f} ["
    )
    assert row["S_r"] in page  # the table is on the page
    bg = list(csv.DictReader(io.StringIO((out / "tables" / "cued_background.csv").read_text())))
    assert float(bg[3]["chance"]) == pytest.approx(got["chance"]["background"], abs=5e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cued_evaluation"]["conditions"]["cued"]["layers"]["L4"]["s_r"][
        "mean"
    ] == pytest.approx(got["s_r"]["mean"], rel=1e-12)
    # without a cued evaluation there is no such section
    plain = write_report(tmp_path / "plain", Report(title="t"), progress=False)
    assert "What the Base used" not in (plain / "index.html").read_text()


def test_demo_cued_evaluation_uses_cue_free_and_cued_test_images(setup):
    from captum_unicam.pipeline.demo import demo_cued_evaluation

    student, base, layers, _, _ = setup
    lay = {"L4": layers["L4"]}
    res = demo_cued_evaluation(
        student, base, lay, n_images=20, batch_size=10, seed=5, n_bootstrap=N_BOOT, progress=False
    )
    assert (
        res["data"]["cued"]["cue_strength"] == 1.0
        and res["data"]["cue-free"]["cue_strength"] == 0.0
    )
    # the same as cued_evaluation on the same stratified batches of the two test sets
    conds = {
        name: stratified_loader(
            ControlledShapes(20, seed=5, split="test", cue_strength=c), 10, seed=5
        )
        for name, c in CUE_CONDITIONS.items()
    }
    ref = cued_evaluation(student, base, lay, conds, n_bootstrap=N_BOOT, seed=5, progress=False)
    for cond in CUE_CONDITIONS:
        a, b = res["conditions"][cond]["layers"]["L4"], ref["conditions"][cond]["layers"]["L4"]
        assert a["s_r"] == b["s_r"] and a["mass"] == b["mass"]


def test_demo_report_has_the_cued_section_end_to_end(tmp_path, monkeypatch, capsys):
    """``captum-unicam demo --quick`` with tiny random models in place of the trained ones
    (seconds): the report's cued section holds cued_evaluation's numbers on the demo's
    cue-free and cued test images (4 class-stratified batches of 24, seed 0)."""
    from captum_unicam import cli
    from captum_unicam.models import save_checkpoint
    from captum_unicam.pipeline import demo as demo_mod

    models = {"teacher": _model(2), "base": _model(1), "student": _model(0)}
    paths = {}
    for role, m in models.items():
        paths[role] = str(tmp_path / f"{role}.pt")
        save_checkpoint(
            paths[role],
            m,
            arch="small_resnet_s",
            num_classes=4,
            class_names=list("abcd"),
            build_kwargs={"width": 4},
        )

    def fake_train(seed=0, **kwargs):
        return demo_mod.DemoModels(
            **models,
            class_names=list("abcd"),
            accuracies=dict.fromkeys(models, 0.25),
            cued_accuracies=dict.fromkeys(models, 0.25),
            recipe={"method": "overhaul"},
            datasets={},
            paths=paths,
            cache_dir=str(tmp_path),
            from_cache=True,
            train_seconds=0.0,
        )

    monkeypatch.setattr(demo_mod, "train_demo_models", fake_train)
    out = tmp_path / "report"
    code = cli.main(["demo", "--quick", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    page = (out / "index.html").read_text()
    assert 'id="cued"' in page and "What the Base used that the Student dropped" in page
    metrics = json.loads((out / "metrics.json").read_text())
    got = metrics["cued_evaluation"]
    assert got["data"]["cued"]["cue_strength"] == 1.0 and got["data"]["cued"]["size"] == 96
    s, b = stage_layers(models["student"]), stage_layers(models["base"])
    conds = {
        name: stratified_loader(
            ControlledShapes(96, seed=0, split="test", num_classes=4, cue_strength=c), 24, seed=0
        )
        for name, c in CUE_CONDITIONS.items()
    }
    from captum_unicam.embeddings import embed_labels  # the demo's label vectors (local encoder)

    emb = embed_labels(list("abcd")).detach().float().cpu()
    ref = cued_evaluation(
        models["student"],
        models["base"],
        {"L4": (s["L4"], b["L4"])},
        conds,
        n_bootstrap=200,
        seed=0,
        progress=False,
        label_embeddings=emb,
    )
    for cond in CUE_CONDITIONS:
        a, r = got["conditions"][cond]["layers"]["L4"], ref["conditions"][cond]["layers"]["L4"]
        assert a["s_r"]["mean"] == pytest.approx(r["s_r"]["mean"], abs=1e-9)
        assert a["mass"]["object"]["gradcam_base"]["mean"] == pytest.approx(
            r["mass"]["object"]["gradcam_base"]["mean"], abs=1e-9
        )
    rows = list(csv.DictReader(io.StringIO((out / "tables" / "cued_scores.csv").read_text())))
    assert [(r["condition"], r["layer"]) for r in rows] == [
        (c, f"L{i}") for c in CUE_CONDITIONS for i in range(1, 5)
    ]
