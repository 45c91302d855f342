"""``captum-unicam compare``: a complete report folder on tiny models, the same numbers as
:func:`captum_unicam.compare` on the same images, and the output checks of quantify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from captum_unicam import cli
from captum_unicam.models import build_model, save_checkpoint
from captum_unicam.output.publish import is_report_dir

CLASSES = ["circle", "square", "triangle", "cross"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    out = {}
    for seed, role in enumerate(("student", "base")):
        torch.manual_seed(seed)
        save_checkpoint(
            d / f"{role}.pt",
            build_model("small_resnet_s", 4, width=2),
            arch="small_resnet_s",
            num_classes=4,
            class_names=CLASSES,
            recipe={"image_size": 32, "normalize": "none"},
        )
        out[role] = str(d / f"{role}.pt")
    return out


def _argv(pair, out, *extra):
    return [
        "compare",
        "--student",
        pair["student"],
        "--base",
        pair["base"],
        "--data",
        "controlled",
        "--out",
        str(out),
        "--images",
        "16",
        "--batch-size",
        "8",
        "--percentiles",
        "0",
        "50",
        "--ig-steps",
        "2",
        "--n-bootstrap",
        "20",
        "--no-progress",
        *extra,
    ]


def test_compare_writes_a_complete_report_with_the_api_numbers(pair, tmp_path, capsys):
    from captum_unicam.comparison import compare, default_methods
    from captum_unicam.models import load_checkpoint, stage_layers
    from captum_unicam.pipeline.pair import stratified_images

    out = tmp_path / "cmp"
    # --reference-images 0: the reference set drawn from the test images, as compare() does
    code = cli.main(_argv(pair, out, "--sanity-images", "5", "--reference-images", "0"))
    err = capsys.readouterr().err
    assert code == 0, err
    # only warnings (constant maps of the tiny random models), named as such
    assert all(
        " warning: " in line or line.startswith("preprocessing: ") for line in err.splitlines()
    ), err
    for f in (
        "index.html",
        "metrics.json",
        "tables/localisation.md",
        "tables/localisation.csv",
        "tables/faithfulness.md",
        "tables/faithfulness.csv",
        "tables/sanity.md",
        "tables/sanity.csv",
        "figures/maps.png",
        "figures/faithfulness.png",
        "figures/localisation.png",
        "figures/sanity.png",
    ):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert is_report_dir(out)
    m = json.loads((out / "metrics.json").read_text())
    # 16 test images: 8 drawn as UniCAM's reference set (2 per class), 8 explained
    assert (
        m["n_images"] == 8
        and m["reference"]["n"] == 8
        and "UniCAM distilled" in m["methods"]
        and "Grad-CAM Base" in m["methods"]
    )

    # the same images, methods and seed through the library give the same numbers
    s, _ = load_checkpoint(pair["student"])
    b, _ = load_checkpoint(pair["base"])
    s.eval(), b.eval()
    from captum_unicam.pipeline.data import Preprocessing, load_data

    x, y, masks = stratified_images(
        load_data("controlled", "test", Preprocessing(32, "none")), 16, seed=0
    )
    assert len(set(y.tolist())) == 4  # the stratified draw holds every class
    methods = default_methods(s, stage_layers(s)["L4"], b, stage_layers(b)["L4"], ig_steps=2)
    ref = compare(
        x, y, methods, masks=masks, percentiles=[0, 50], batch_size=8, n_bootstrap=20, seed=0
    ).metrics
    for name in m["methods"]:
        got_loc = m["localisation"]["object"]["kinds"][name]["energy"]["mean"]
        assert got_loc == pytest.approx(
            ref["localisation"]["object"]["kinds"][name]["energy"]["mean"], abs=1e-6
        )
        got = m["faithfulness"]["methods"][name]["gap"]["minus_random"]["mean"]
        assert got == pytest.approx(
            ref["faithfulness"]["methods"][name]["gap"]["minus_random"]["mean"], abs=1e-9
        )

    # a second run replaces it only with --overwrite
    code = cli.main(_argv(pair, out, "--no-sanity"))
    assert code == 2 and "not empty" in capsys.readouterr().err
    code = cli.main(_argv(pair, out, "--no-sanity", "--overwrite"))
    assert code == 0, capsys.readouterr().err
    assert not (out / "tables" / "sanity.md").exists()


def test_compare_output_checks(pair, tmp_path, capsys):
    r = tmp_path / "R"
    (r / "models").mkdir(parents=True)
    student = r / "models" / "student.pt"
    student.write_bytes(Path(pair["student"]).read_bytes())
    (r / "metrics.json").write_text(json.dumps({"format": "captum-unicam/report"}))
    code = cli.main(
        [
            "compare",
            "--student",
            str(student),
            "--base",
            pair["base"],
            "--data",
            "controlled",
            "--out",
            str(r),
            "--overwrite",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "which this run reads" in err
    assert student.read_bytes() == Path(pair["student"]).read_bytes()
    code = cli.main(["compare", "--help"])
    assert code == 0 and "--random-label-student" in capsys.readouterr().out
