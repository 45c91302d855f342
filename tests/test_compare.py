"""captum_unicam.comparison: every number against Captum, report.localisation,
metrics.faithfulness and the sanity module called by hand, UniCAM in reference mode; the
report folder of the command line."""

from __future__ import annotations

import csv
import io
import json
import warnings

import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam, Saliency

from captum_unicam.attr.unicam import UniCAM
from captum_unicam.cli import build_parser
from captum_unicam.comparison import compare, default_methods, reference_indices
from captum_unicam.data.controlled import ControlledShapes
from captum_unicam.errors import CheckpointError, InputError, OutputError
from captum_unicam.metrics.faithfulness import faithfulness, target_logit
from captum_unicam.metrics.localisation import localisation
from captum_unicam.models import build_model, save_checkpoint
from captum_unicam.pipeline import runs
from captum_unicam.pipeline.requests import CompareRequest, request_from
from captum_unicam.sanity import label_randomisation

CURVES = dict(percentiles=(0, 50), n_random=2, n_bootstrap=50, seed=4)


def _model(seed):
    torch.manual_seed(seed)
    return build_model("small_resnet_s", 4).eval()


@pytest.fixture(scope="module")
def setup():
    student, base, rand = _model(0), _model(1), _model(2)
    ds = ControlledShapes(8, seed=1, split="test", marker_strength=1.0)
    ref = ControlledShapes(8, seed=2, split="test")
    x, y = ds.images, ds.labels
    methods = default_methods(student, student.layer3, base, base.layer3, ig_steps=2)
    methods["Saliency (user's own)"] = Saliency(student)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = compare(
            x,
            y,
            methods,
            reference=(ref.images, ref.labels),
            masks={"object": ds.masks, "marker": ds.marker_masks},
            sanity_models={"Student": student, "Base": base},
            random_label_models={"Student": (student, rand)},
            sanity_images=8,
            batch_size=8,
            **CURVES,
        )
    return student, base, rand, ds, methods, res, ref


def _gradcam(model, layer, x, y):
    a = LayerGradCam(model, layer).attribute(x, target=y, relu_attributions=True)
    return LayerAttribution.interpolate(a, (32, 32), "bilinear").detach()


def test_localisation_equals_report_localisation_on_captum_maps(setup):
    student, base, _, ds, _, res, _ = setup
    x, y = ds.images, ds.labels
    for name, model in (("Grad-CAM Student", student), ("Grad-CAM Base", base)):
        m = _gradcam(model, model.layer3, x, y)
        assert torch.allclose(res.maps[name].float(), m, atol=1e-6)
        for region, mask in (("object", ds.masks), ("marker", ds.marker_masks)):
            want = localisation({"m": m}, mask, n_bootstrap=50, seed=4)["kinds"]["m"]
            got = res.metrics["localisation"][region]["kinds"][name]
            assert got["energy"]["mean"] == pytest.approx(want["energy"]["mean"], abs=1e-6)
            assert got["pointing"]["mean"] == pytest.approx(want["pointing"]["mean"], abs=1e-12)
    # input attributions are summed over channels
    sal = Saliency(student).attribute(x, target=y).sum(1, keepdim=True)
    assert torch.allclose(res.maps["Saliency (user's own)"].float(), sal, atol=1e-6)


def _direct(forward, x, maps, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return faithfulness(forward, x, maps, noise=0.01, batch_size=8, **CURVES, **kw)


def _same_entries(got, want):
    for key in ("morf", "lerf", "gap"):
        for q in ("auc", "random_auc", "minus_random"):
            for s in ("mean", "low", "high"):
                assert got[key][q][s] == pytest.approx(want[key][q][s], abs=1e-9), (key, q, s)
        assert got[key]["verdict"] == want[key]["verdict"]
    assert got["per_image"] == pytest.approx(want["per_image"], abs=1e-9)


def test_unicam_maps_come_from_reference_mode(setup):
    student, base, _, ds, _, res, ref = setup
    x, y = ds.images, ds.labels
    uc = UniCAM(student, student.layer3, base, base.layer3, reference=(ref.images, ref.labels))
    for features in ("distilled", "residual"):
        m = uc.attribute(x, target=y, features=features)
        want = LayerAttribution.interpolate(m, (32, 32), "bilinear").detach()
        assert torch.allclose(res.maps[f"UniCAM {features}"].float(), want, atol=1e-6)
        # per-image: the same as one image at a time
        one = uc.attribute(x[3:4], target=y[3:4], features=features)
        assert torch.allclose(m[3:4], one, atol=1e-6)
    assert res.metrics["reference"]["source"] == "given" and res.metrics["reference"]["n"] == 8


def test_faithfulness_equals_direct_calls_on_the_explained_quantity(setup):
    student, base, _, ds, _, res, ref = setup
    x, y = ds.images, ds.labels
    faith = res.metrics["faithfulness"]["methods"]
    uc = UniCAM(student, student.layer3, base, base.layer3, reference=(ref.images, ref.labels))
    for features, on in (("distilled", "S_d"), ("residual", "S_r")):
        m = uc.attribute(x, target=y, features=features)

        def score(inputs, labels, features=features):
            return uc.score(inputs, target=labels, features=features)

        want = _direct(score, x, m, additional_forward_args=(y,))
        got = faith[f"UniCAM {features}"]
        assert got["measured_on"] == on
        _same_entries(got, want)
    for name, model in (("Grad-CAM Student", student), ("Grad-CAM Base", base)):
        cam = LayerGradCam(model, model.layer3).attribute(x, target=y, relu_attributions=True)
        want = _direct(target_logit(model), x, cam.detach(), target=y)
        got = faith[name]
        assert got["measured_on"] == f"target logit ({name.split()[-1]})"
        _same_entries(got, want)
    # the random baseline is shared by methods on the same quantity and resolution
    assert (
        faith["Grad-CAM Student"]["per_image"]["random_morf"]
        == faith["Gradient x Activation Student"]["per_image"]["random_morf"]
    )


def test_the_random_baseline_is_seeded(setup):
    student, base, *_ = setup
    ds, ref = ControlledShapes(6, seed=5, split="test"), ControlledShapes(8, seed=2, split="test")
    uc = UniCAM(student, student.layer3, base, base.layer3)
    methods = {
        "d": (uc, {"features": "distilled"}),
        "g": (LayerGradCam(student, student.layer3), {"relu_attributions": True}),
    }
    runs = []
    for seed in (4, 4, 5):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = compare(
                ds.images,
                ds.labels,
                methods,
                reference=(ref.images, ref.labels),
                batch_size=8,
                **{**CURVES, "seed": seed},
            )
        runs.append(r.metrics["faithfulness"]["methods"])
    assert runs[0] == runs[1]
    for name in ("d", "g"):
        first, other = runs[0][name]["per_image"], runs[2][name]["per_image"]
        assert first["random_morf"] != other["random_morf"]


def test_sanity_randomises_each_model_for_the_methods_that_call_it(setup):
    student, base, rand, ds, methods, res, _ = setup
    rows = res.metrics["sanity"]["rows"]
    by_check = {}
    for r in rows:
        by_check.setdefault(r["check"], set()).add(r["method"])
    assert by_check["Base randomised"] == {"UniCAM distilled", "UniCAM residual", "Grad-CAM Base"}
    assert by_check["Student randomised"] == set(methods) - {"Grad-CAM Base"}
    # random labels: the methods rebuilt on the random-label model, by hand
    x, y = ds.images, ds.labels
    relu = {"relu_attributions": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = label_randomisation(
            {"g": (LayerGradCam(student, student.layer3), relu)},
            {"g": (LayerGradCam(rand, rand.layer3), relu)},
            x,
            y,
            batch_size=8,
            n_bootstrap=50,
            seed=4,
        )
    got = [
        r
        for r in rows
        if r["check"] == "Student on random labels"
        and r["method"] == "Grad-CAM Student"
        and r["randomised"] == "labels"
    ][0]
    assert got["ssim"]["mean"] == pytest.approx(
        want.value("random labels", "labels", "g", "ssim"), abs=1e-9
    )
    assert (
        methods["Grad-CAM Student"][0].forward_func is student
    )  # the user's methods are untouched


def test_tables_figures_and_report_folder(setup, tmp_path):
    *_, methods, res, _ = setup
    t = res.tables
    assert set(t) == {"localisation", "faithfulness", "sanity"}
    loc_rows = list(csv.DictReader(io.StringIO(t["localisation"]["csv"])))
    assert [r["method"] for r in loc_rows] == list(methods)
    want = res.metrics["localisation"]["marker"]["kinds"]["UniCAM residual"]["energy"]["mean"]
    assert float(loc_rows[1]["marker_energy_mean"]) == pytest.approx(want)
    faith_rows = list(csv.DictReader(io.StringIO(t["faithfulness"]["csv"])))
    assert [r["method"] for r in faith_rows] == list(methods)
    want = res.metrics["faithfulness"]["methods"]["UniCAM residual"]["gap"]["minus_random"]
    assert float(faith_rows[1]["gap_minus_random_low"]) == pytest.approx(want["low"])
    assert faith_rows[1]["measured_on"] == "S_r"
    md = t["faithfulness"]["md"].splitlines()
    assert md[0].startswith("| method | measured on | maps constant | MoRF AUC | random MoRF AUC")
    assert md[3].startswith("| UniCAM residual | S_r |")
    written = res.write(tmp_path / "r", command="captum-unicam compare ...")
    for name in (
        "metrics.json",
        "index.html",
        "tables/faithfulness.md",
        "tables/sanity.csv",
        "figures/faithfulness.png",
        "figures/localisation.png",
        "figures/sanity.png",
        "figures/maps.png",
    ):
        assert name in written and (tmp_path / "r" / name).is_file()
    page = (tmp_path / "r" / "index.html").read_text()
    assert "<h2>Faithfulness to what each map explains</h2>" in page and "<table>" in page
    assert "figures/sanity.png" in page and "ROAD accuracy" in page
    doc = json.loads((tmp_path / "r" / "metrics.json").read_text())
    got = doc["faithfulness"]["methods"]["Grad-CAM Student"]
    assert got["morf"]["auc"]["n"] == 8 and got["measured_on"] == "target logit (Student)"
    assert "road" not in doc


def test_bad_input_is_refused_before_work(setup):
    student, base, _, ds, methods, _, _ = setup
    x, y = ds.images, ds.labels
    with pytest.raises(InputError, match="one class index per image"):
        compare(x, y[:5], methods)
    with pytest.raises(InputError, match="masks"):
        compare(x, y, methods, masks={"object": ds.masks[:3]})
    with pytest.raises(InputError, match="percentiles"):
        compare(x, y, methods, percentiles=(50, 100))
    with pytest.raises(InputError, match="percentiles"):
        compare(x, y, methods, percentiles=(50, 30))
    with pytest.raises(InputError, match="reference"):
        compare(x, y, methods, reference=(x[:, :1], y))
    with pytest.raises(InputError, match="reference"):
        compare(x, y, methods, reference=(x, y[:3]))
    with pytest.raises(InputError, match="at least 4 images of at least 2 classes"):
        compare(x, y, methods, reference=(x[:4], torch.zeros(4, dtype=torch.long)))
    with pytest.raises(InputError, match="leaves 4 of 8 images"):
        compare(x, y, methods)  # the drawn reference would take half of 8 images
    with pytest.raises(InputError, match="occlusion"):
        compare(x, y, methods, reference=(x, y), occlusion=0)
    with pytest.raises(InputError, match="feature_ablation"):
        compare(x, y, methods, reference=(x, y), feature_ablation=33)
    with pytest.raises(InputError, match="n_random"):
        compare(x, y, methods, reference=(x, y), n_random=0)
    uc = methods["UniCAM distilled"][0]
    with pytest.raises(InputError, match="reference mode"):
        compare(x, y, {"u": (uc, {"features": "both"})}, reference=(x, y))
    with pytest.raises(InputError, match="reference mode"):
        compare(x, y, {"u": (uc, {"context": (x, y)})}, reference=(x, y))
    with pytest.raises(InputError, match="Captum Attribution"):
        compare(x, y, {"x": lambda t: t})
    with pytest.raises(InputError, match="sanity_models"):
        compare(x, y, methods, sanity_models={"Student": "student.pt"})
    with pytest.raises(InputError, match="n_bootstrap"):
        compare(x, y, methods, n_bootstrap=0)
    other = build_model("small_resnet_m", 4)
    with pytest.raises(InputError, match="same architecture"):
        compare(x, y, methods, random_label_models={"Student": (student, other)})


def _parse(argv):
    return build_parser().parse_args(["compare", *argv])


def run_compare(args):
    runs.compare(request_from(CompareRequest, args))
    return 0


def test_command_line_writes_a_complete_report(tmp_path):
    paths = {}
    for i, role in enumerate(("student", "base", "random")):
        paths[role] = tmp_path / f"{role}.pt"
        save_checkpoint(paths[role], _model(10 + i), arch="small_resnet_s", num_classes=4)
    out = tmp_path / "report"
    argv = [
        "--student",
        str(paths["student"]),
        "--base",
        str(paths["base"]),
        "--data",
        "controlled:2",
        "--image-size",  # the checkpoints record no preprocessing
        "32",
        "--normalize",
        "none",
        "--out",
        str(out),
        "--images",
        "16",
        "--batch-size",
        "8",
        "--percentiles",
        "50",
        "--sanity-images",
        "8",
        "--n-bootstrap",
        "20",
        "--ig-steps",
        "2",
        "--layer",
        "L4",
        "--random-label-student",
        str(paths["random"]),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run_compare(_parse(argv)) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["localisation"]) == {"object"}
    assert {r["check"] for r in doc["sanity"]["rows"]} == {
        "Student randomised",
        "Base randomised",
        "Student on random labels",
    }
    assert (out / "index.html").is_file() and (out / "figures" / "faithfulness.png").is_file()
    # the command line's reference set: --reference-images (16) class-stratified train images,
    # so every drawn test image is explained
    assert doc["reference"]["source"] == "given" and doc["reference"]["n"] == 16
    assert doc["n_images"] == 16
    # an existing report is refused before any work, and left alone
    before = (out / "metrics.json").read_text()
    with pytest.raises(OutputError, match="not empty"):
        run_compare(_parse(argv))
    assert (out / "metrics.json").read_text() == before
    with pytest.raises(InputError, match="layer"):
        run_compare(_parse(argv[:-4] + ["--layer", "L9", "--out", str(tmp_path / "other")]))


def test_compare_is_exported_at_the_top_level():
    import captum_unicam

    assert captum_unicam.compare is compare


def test_command_line_restores_the_thread_count_and_refuses_bad_threads(tmp_path):
    before = torch.get_num_threads()
    with pytest.raises(InputError, match="threads"):
        run_compare(
            _parse(
                [
                    "--student",
                    "s",
                    "--base",
                    "b",
                    "--data",
                    "controlled",
                    "--out",
                    str(tmp_path / "o"),
                    "--threads",
                    "0",
                ]
            )
        )
    with pytest.raises(CheckpointError):
        run_compare(
            _parse(
                [
                    "--student",
                    str(tmp_path / "missing.pt"),
                    "--base",
                    "b",
                    "--data",
                    "controlled",
                    "--out",
                    str(tmp_path / "o"),
                    "--threads",
                    "1",
                ]
            )
        )
    assert torch.get_num_threads() == before
    assert not (tmp_path / "o").exists()


class _Refuse(Saliency):
    """A method that fails the test if compare computes any map."""

    def attribute(self, *args, **kwargs):
        raise AssertionError("a map was computed")


def test_four_images_are_refused_before_any_map():
    student = _model(0)
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    with pytest.raises(InputError, match=r"N >= 5"):
        compare(x, y, {"refuse": _Refuse(student)}, percentiles=())
    with pytest.raises(InputError, match="batch_size must be an int >= 5"):
        compare(
            torch.rand(8, 3, 16, 16),
            torch.arange(8) % 4,
            {"refuse": _Refuse(student)},
            batch_size=4,
            percentiles=(),
        )
    with pytest.raises(InputError, match="sanity_images"):
        compare(
            torch.rand(8, 3, 16, 16),
            torch.arange(8) % 4,
            {"refuse": _Refuse(student)},
            percentiles=(),
            sanity_models={"Student": student},
            sanity_images=4,
        )


@pytest.mark.parametrize("n", [5, 68, 132])
def test_any_number_of_images_gives_the_per_image_reference_mode_maps(n):
    """5, 68 (one call of 68) and 132 images (64 + 68): the maps equal UniCAM in reference
    mode on all images at once, whatever the cut; the curves cover every image."""
    student, base = _model(0), _model(1)
    g = torch.Generator().manual_seed(n)
    x, y = torch.rand(n, 3, 16, 16, generator=g), torch.arange(n) % 4
    rx, ry = torch.rand(8, 3, 16, 16, generator=g), torch.arange(8) % 4
    uc = UniCAM(student, student.layer3, base, base.layer3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = compare(
            x,
            y,
            {"distilled": (uc, {"features": "distilled"})},
            reference=(rx, ry),
            batch_size=64,
            **{**CURVES, "percentiles": (0, 50) if n < 100 else ()},
        )
        ref_mode = UniCAM(student, student.layer3, base, base.layer3, reference=(rx, ry))
        want = ref_mode.attribute(x, target=y, features="distilled")
    want = LayerAttribution.interpolate(want, (16, 16), "bilinear").detach()
    assert res.maps["distilled"].shape == (n, 1, 16, 16)
    assert torch.allclose(res.maps["distilled"].float(), want.float(), atol=1e-6)
    assert res.metrics["n_images"] == n and res.metrics["explained"] is None
    if n < 100:
        assert res.metrics["faithfulness"]["methods"]["distilled"]["morf"]["auc"]["n"] == n


def test_reference_indices_draw_per_class_and_are_seeded():
    y = torch.tensor([0] * 10 + [1] * 3 + [2] * 6 + [3] * 1)
    idx = reference_indices(y, per_class=4, seed=0)
    counts = torch.bincount(y[idx], minlength=4).tolist()
    assert counts == [4, 1, 3, 0]  # min(4, n_c // 2)
    assert torch.equal(idx, reference_indices(y, per_class=4, seed=0))
    assert not torch.equal(idx, reference_indices(y, per_class=4, seed=1))
    assert torch.equal(idx, torch.sort(idx).values)


def test_a_drawn_reference_is_not_explained():
    student, base = _model(0), _model(1)
    ds = ControlledShapes(16, seed=3, split="test")
    x, y = ds.images, ds.labels
    uc = UniCAM(student, student.layer3, base, base.layer3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = compare(
            x,
            y,
            {"d": (uc, {"features": "distilled"})},
            masks={"object": ds.masks},
            reference_per_class=2,
            percentiles=(),
            n_bootstrap=20,
            seed=7,
        )
        idx = reference_indices(y, per_class=2, seed=7)
        rest = [i for i in range(16) if i not in idx.tolist()]
        want = UniCAM(
            student, student.layer3, base, base.layer3, reference=(x[idx], y[idx])
        ).attribute(x[rest], target=y[rest])
    assert res.metrics["reference"]["indices"] == idx.tolist()
    assert res.metrics["explained"] == rest and res.metrics["n_images"] == 8
    want = LayerAttribution.interpolate(want, (32, 32), "bilinear").detach()
    assert torch.allclose(res.maps["d"].float(), want, atol=1e-6)
    loc = localisation({"d": want.double()}, ds.masks[rest], n_bootstrap=20, seed=7)
    got = res.metrics["localisation"]["object"]["kinds"]["d"]["energy"]["mean"]
    assert got == pytest.approx(loc["kinds"]["d"]["energy"]["mean"], abs=1e-6)


class _Tiny(torch.nn.Module):
    """Two convolutions and a linear head: small enough for a hand loop over windows."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(2, 3, 3, padding=1)
        self.layer = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.layer(torch.relu(self.conv(x)))).mean((2, 3)))


def test_occlusion_of_the_score_equals_a_hand_loop_over_the_windows():
    student, base = _Tiny(0), _Tiny(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(5, 2, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1])
    rx, ry = torch.rand(6, 2, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    uc = UniCAM(student, student.layer, base, base.layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = compare(
            x,
            y,
            {"d": (uc, {"features": "distilled"}), "r": (uc, {"features": "residual"})},
            reference=(rx, ry),
            occlusion=4,
            feature_ablation=2,
            percentiles=(),
            n_bootstrap=10,
        )
        ref_mode = UniCAM(student, student.layer, base, base.layer, reference=(rx, ry))
        for name, features in (("d", "distilled"), ("r", "residual")):

            def score(t, features=features):
                return ref_mode.score(t, target=y, features=features).double()

            full = score(x)
            total = torch.zeros(5, 2, 8, 8, dtype=torch.float64)
            count = torch.zeros(8, 8, dtype=torch.float64)
            for top in (0, 2, 4):  # window 4, stride 2 on 8 px
                for left in (0, 2, 4):
                    occluded = x.clone()
                    occluded[:, :, top : top + 4, left : left + 4] = 0.0
                    drop = full - score(occluded)
                    total[:, :, top : top + 4, left : left + 4] += drop.view(5, 1, 1, 1)
                    count[top : top + 4, left : left + 4] += 1
            want = (total / count).sum(1, keepdim=True)
            got = res.maps[f"Occlusion ({name})"]
            assert torch.allclose(got, want, atol=1e-5), name
            assert float(want.abs().max()) > 1e-4  # the loop is not trivially zero
            # FeatureAblation on a 2 x 2 grid: each 4 x 4 cell (all channels) set to 0
            cells = torch.zeros(5, 1, 8, 8, dtype=torch.float64)
            for top in (0, 4):
                for left in (0, 4):
                    ablated = x.clone()
                    ablated[:, :, top : top + 4, left : left + 4] = 0.0
                    cells[:, :, top : top + 4, left : left + 4] = (
                        2 * (full - score(ablated))
                    ).view(5, 1, 1, 1)  # summed over 2 channels
            got = res.maps[f"FeatureAblation ({name})"]
            assert torch.allclose(got, cells, atol=1e-5), name
    assert res.metrics["methods"] == [
        "d",
        "r",
        "Occlusion (d)",
        "Occlusion (r)",
        "FeatureAblation (d)",
        "FeatureAblation (r)",
    ]


def test_compare_batches_follow_the_pipeline_rule():
    """The internal rule equals the pipeline's stratified batches for every n and size."""
    from captum_unicam._batching import batch_sizes, batch_slices
    from captum_unicam.pipeline.batches import batch_sizes as pipeline_sizes

    for size in (5, 8, 64):
        for n in range(5, 3 * size + 7):
            sizes = batch_sizes(n, size)
            assert sizes == pipeline_sizes(n, size), (n, size)
            assert sum(sizes) == n and min(sizes) >= 5 and max(sizes) <= size + 4
            cuts = batch_slices(n, size)
            assert [s.stop - s.start for s in cuts] == sizes and cuts[-1].stop == n
    assert batch_sizes(68, 64) == [68] and batch_sizes(132, 64) == [64, 68]


def test_degenerate_scores_on_perturbed_images_are_counted_and_warned():
    """Student = Base: every score is 0 (UniCAM warns); compare counts those calls once per
    quantity and says so, instead of a silent flat curve."""
    student = _model(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(6, 3, 16, 16, generator=g), torch.arange(6) % 3
    rx, ry = torch.rand(6, 3, 16, 16, generator=g), torch.arange(6) % 3
    uc = UniCAM(student, student.layer3, student, student.layer3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = compare(
            x, y, {"d": (uc, {"features": "distilled"})}, reference=(rx, ry), occlusion=8, **CURVES
        )
    faith = res.metrics["faithfulness"]["methods"]
    # 2 orders x 2 percentiles x (1 map + 2 random maps) calls, plus the Occlusion map's
    assert faith["d"]["degenerate_score_calls"] > 0
    messages = [str(w.message) for w in caught]
    assert any("calls of S_d on perturbed images" in m and "degenerate" in m for m in messages)
    assert any("score calls of 'Occlusion (d)' had a degenerate" in m for m in messages)
    assert any("same value on every perturbed image" in m for m in messages)
