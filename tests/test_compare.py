"""captum_unicam.comparison: every number against Captum, report.localisation, road_impute
and the sanity module called by hand; the report folder of the command line."""

from __future__ import annotations

import csv
import io
import json
import warnings

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam, Saliency

from captum_unicam.cli import build_parser
from captum_unicam.comparison import compare, default_methods
from captum_unicam.pipeline import runs
from captum_unicam.pipeline.requests import CompareRequest, request_from
from captum_unicam.data.controlled import ControlledShapes
from captum_unicam.errors import CheckpointError, InputError, OutputError
from captum_unicam.models import build_model, save_checkpoint
from captum_unicam.perturb import road_impute
from captum_unicam.metrics.localisation import localisation
from captum_unicam.sanity import label_randomisation


def _model(seed):
    torch.manual_seed(seed)
    return build_model("small_resnet_s", 4).eval()


@pytest.fixture(scope="module")
def setup():
    student, base, rand = _model(0), _model(1), _model(2)
    ds = ControlledShapes(8, seed=1, split="test", marker_strength=1.0)
    x, y = ds.images, ds.labels
    methods = default_methods(student, student.layer3, base, base.layer3, ig_steps=2)
    methods["Saliency (user's own)"] = Saliency(student)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = compare(
            x,
            y,
            methods,
            masks={"object": ds.masks, "marker": ds.marker_masks},
            percentiles=(30, 70),
            sanity_models={"Student": student, "Base": base},
            random_label_models={"Student": (student, rand)},
            sanity_images=8,
            batch_size=8,
            n_bootstrap=50,
            seed=4,
        )
    return student, base, rand, ds, methods, res


def _gradcam(model, layer, x, y):
    a = LayerGradCam(model, layer).attribute(x, target=y, relu_attributions=True)
    return LayerAttribution.interpolate(a, (32, 32), "bilinear").detach()


def test_localisation_equals_report_localisation_on_captum_maps(setup):
    student, base, _, ds, _, res = setup
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


def test_road_against_road_impute_by_hand(setup):
    student, base, _, ds, _, res = setup
    x, y = ds.images, ds.labels
    road = res.metrics["road"]["methods"]
    for name, model in (("Grad-CAM Student", student), ("UniCAM residual", base)):
        m = res.maps[name].float()
        with torch.no_grad():
            intact = float((model(x).argmax(1) == y).double().mean())
        assert road[name]["intact"]["mean"] == pytest.approx(intact)
        for order, ranked in (("MoRF", -m), ("LeRF", m)):
            for p in (30.0, 70.0):
                xi = road_impute(
                    x, ranked, p, noise=0.01, generator=torch.Generator().manual_seed(4)
                )
                with torch.no_grad():
                    acc = float((model(xi).argmax(1) == y).double().mean())
                assert road[name][order][str(p)]["mean"] == pytest.approx(acc), (name, order, p)
        lerf = np.mean([road[name]["LeRF"][str(p)]["mean"] for p in (30.0, 70.0)])
        morf = np.mean([road[name]["MoRF"][str(p)]["mean"] for p in (30.0, 70.0)])
        assert road[name]["lerf_minus_morf"] == pytest.approx(lerf - morf)


def test_sanity_randomises_each_model_for_the_methods_that_call_it(setup):
    student, base, rand, ds, methods, res = setup
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
    *_, methods, res = setup
    t = res.tables
    assert set(t) == {"localisation", "road", "sanity"}
    loc_rows = list(csv.DictReader(io.StringIO(t["localisation"]["csv"])))
    assert [r["method"] for r in loc_rows] == list(methods)
    want = res.metrics["localisation"]["marker"]["kinds"]["UniCAM residual"]["energy"]["mean"]
    assert float(loc_rows[1]["marker_energy_mean"]) == pytest.approx(want)
    road_rows = list(csv.DictReader(io.StringIO(t["road"]["csv"])))
    assert len(road_rows) == 2 * len(methods)
    written = res.write(tmp_path / "r", command="captum-unicam compare ...")
    for name in (
        "metrics.json",
        "index.html",
        "tables/road.md",
        "tables/sanity.csv",
        "figures/road.png",
        "figures/localisation.png",
        "figures/sanity.png",
        "figures/maps.png",
    ):
        assert name in written and (tmp_path / "r" / name).is_file()
    page = (tmp_path / "r" / "index.html").read_text()
    assert "<h2>ROAD</h2>" in page and "figures/sanity.png" in page and "<table>" in page
    doc = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert doc["road"]["methods"]["Grad-CAM Student"]["intact"]["n"] == 8


def test_bad_input_is_refused_before_work(setup):
    student, base, _, ds, methods, _ = setup
    x, y = ds.images, ds.labels
    with pytest.raises(InputError, match="one class index per image"):
        compare(x, y[:5], methods)
    with pytest.raises(InputError, match="masks"):
        compare(x, y, methods, masks={"object": ds.masks[:3]})
    with pytest.raises(InputError, match="percentiles"):
        compare(x, y, methods, percentiles=(0, 50))
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
        "8",
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
    assert doc["n_images"] == 8 and set(doc["localisation"]) == {"object"}
    assert {r["check"] for r in doc["sanity"]["rows"]} == {
        "Student randomised",
        "Base randomised",
        "Student on random labels",
    }
    assert (out / "index.html").is_file() and (out / "figures" / "road.png").is_file()
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


@pytest.mark.parametrize(
    "n, batches", [(5, [(0, 5)]), (68, [(0, 68)]), (132, [(0, 64), (64, 132)])]
)
def test_any_number_of_images_is_cut_like_the_pipeline(n, batches):
    """A remainder under 5 joins the batch before (68 = one batch of 68; 132 = 64 + 68):
    the maps equal UniCAM called by hand on those batches."""
    from captum_unicam.attr.unicam import UniCAM

    student, base = _model(0), _model(1)
    g = torch.Generator().manual_seed(n)
    x, y = torch.rand(n, 3, 16, 16, generator=g), torch.arange(n) % 4
    uc = UniCAM(student, student.layer3, base, base.layer3)
    res = compare(
        x,
        y,
        {"distilled": (uc, {"features": "distilled"})},
        percentiles=(),
        batch_size=64,
        n_bootstrap=10,
    )
    want = torch.cat(
        [
            LayerAttribution.interpolate(
                uc.attribute(x[a:b], target=y[a:b], features="distilled"), (16, 16), "bilinear"
            )
            for a, b in batches
        ]
    ).detach()
    assert res.maps["distilled"].shape == (n, 1, 16, 16)
    assert torch.allclose(res.maps["distilled"].float(), want.float(), atol=1e-6)
    assert res.metrics["n_images"] == n


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
