"""Tests of the experiment runner (captum_unicam.pipeline.study): a tiny controlled run,
its files and tables, the model cache, and errors raised before any training."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import torch

from captum_unicam.data import DataSpecError
from captum_unicam.errors import OutputError
from captum_unicam.pipeline.study import run_experiment

# tiny models and data: seconds, numbers meaningless
TINY_ARCHS = dict(
    teacher_arch=("small_resnet_s", {"width": 8}),
    assistant_arch=("small_resnet_s", {"width": 6}),
    student_arch=("small_resnet_s", {"width": 4}),
)
TINY_RECIPE = {
    "teacher_size": 64,
    "base_size": 32,
    "transfer_size": 32,
    "test_size": 16,
    "batch_size": 16,
    "eval_batch_size": 8,
    "eval_batches": 2,
    "map_batches": 1,
    "n_show": 1,
    "n_bootstrap": 50,
    "n_permutations": 64,
    "dpi": 30,
    "grid_layers": ("L1", "L4"),
}


def _run(out: Path, dataset: str = "controlled:3", **kwargs):
    args = dict(
        methods=("response",),
        seed=0,
        quick=True,
        progress=False,
        label_embeddings="one-hot",
        recipe=TINY_RECIPE,
        num_threads=1,
        **TINY_ARCHS,
    )
    args.update(kwargs)
    return run_experiment(dataset, out=out, **args)


def _finite_numbers(obj, where="results"):
    """Every number in a JSON tree is finite (None marks a number that was not finite)."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        assert math.isfinite(obj), where
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _finite_numbers(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _finite_numbers(v, f"{where}[{i}]")


def _parse_md(text: str):
    """Rows of the first Markdown table of ``text`` (header excluded), as lists of cells."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert len(lines) >= 3, text
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "").strip()) <= {"-", ":"}
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert all(len(r) == len(header) for r in rows)
    return header, rows


@pytest.fixture(scope="module")
def controlled_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "controlled"
    results = _run(out)
    return out, results


def test_files_tables_and_json(controlled_run):
    out, results = controlled_run
    for name in (
        "results.json",
        "table1_response.md",
        "table1_response.csv",
        "table2.md",
        "table2.csv",
        "localisation.md",
        "localisation.csv",
        "accuracies.md",
        "accuracies.csv",
        "evaluation_response.md",
        "evaluation_ta.csv",
    ):
        assert (out / name).is_file(), name
    for role in ("teacher", "base", "student_response", "assistant", "student_ta"):
        assert (out / "models" / f"{role}.pt").is_file(), role
    for pair in ("response", "ta", "direct_vs_ta"):
        for layer in ("L1", "L4"):
            assert (out / "figures" / f"grid_{pair}_{layer}.png").is_file()
        assert not (out / "figures" / f"grid_{pair}_L2.png").exists()  # recipe grid_layers
    for name in ("scores_response", "scores_ta", "localisation_response", "localisation_ta"):
        png = (out / "figures" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], (
        "temporary folder left behind"
    )

    # results.json: the returned dict, all numbers finite, recorded statuses
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["config"]["methods"] == ["response"]
    assert {k: v["status"] for k, v in on_disk["models"].items()} == dict.fromkeys(
        ("teacher", "base", "student_response", "assistant", "student_ta"), "trained"
    )
    _finite_numbers(on_disk)
    assert on_disk == {k: v for k, v in results.items() if k != "out"}

    # Table 1: four layers; the CSV's numbers equal the summary of evaluate_kd
    header, rows = _parse_md((out / "table1_response.md").read_text())
    assert [r[0] for r in rows] == ["L1", "L2", "L3", "L4"]
    assert header[1] == "FSS (Grad-CAM)"
    table1 = list(csv.DictReader(io.StringIO((out / "table1_response.csv").read_text())))
    summary = on_disk["evaluations"]["response"]["summary"]["by_layer"]
    for row in table1:
        s = summary[row["layer"]]
        assert float(row["fss_gradcam_mean"]) == pytest.approx(
            s["gradcam"]["fss"]["mean"], rel=1e-12
        )
        assert float(row["rs_student_distilled_map_mean"]) == pytest.approx(
            s["distilled"]["rs_student"]["mean"], rel=1e-12
        )
        assert (
            float(row["rs_distilled_raw_ci_low"])
            <= float(row["rs_distilled_raw_mean"])
            <= float(row["rs_distilled_raw_ci_high"])
        )
        assert 0.0 < float(row["p_student_gt_base_gradcam"]) <= 1.0

    # Table 2: per layer statistics for base / direct / ta, then accuracies
    _, rows2 = _parse_md((out / "table2.md").read_text())
    assert {r[0] for r in rows2} == {"L1", "L2", "L3", "L4", "all"}
    t2 = list(csv.DictReader(io.StringIO((out / "table2.csv").read_text())))
    acc = {(r["statistic"], r["model"]): float(r["mean"]) for r in t2 if r["layer"] == "all"}
    assert acc[("accuracy, cue-free test", "ta")] == on_disk["accuracies"]["student_ta"]["test"]
    assert acc[("accuracy, cued test", "base")] == on_disk["accuracies"]["base"]["test_cued"]
    direct_rs = [
        float(r["mean"])
        for r in t2
        if r["layer"] == "L4"
        and r["model"] == "direct"
        and r["statistic"].startswith("RS, Grad-CAM")
    ]
    assert direct_rs == [summary["L4"]["gradcam"]["rs_student"]["mean"]]

    # accuracies: every model on cue-free and cued data, in [0, 1]
    accs = on_disk["accuracies"]
    assert set(accs) == {"teacher", "base", "student_response", "assistant", "student_ta"}
    assert all(0.0 <= a["test"] <= 1.0 and 0.0 <= a["test_cued"] <= 1.0 for a in accs.values())

    # localisation: four map kinds per layer and pair, energies are fractions with ordered bounds
    loc = list(csv.DictReader(io.StringIO((out / "localisation.csv").read_text())))
    assert len(loc) == 2 * 4 * 4
    assert {r["map"] for r in loc} == {"gradcam_base", "gradcam_student", "distilled", "residual"}
    for r in loc:
        if r["energy_mean"]:
            assert (
                0.0
                <= float(r["energy_low"])
                <= float(r["energy_mean"])
                <= float(r["energy_high"])
                <= 1.0
            )
        assert 0.0 < float(r["chance"]) < 1.0


def test_localisation_matches_report_on_the_same_maps(controlled_run):
    """The energy fraction in the table is recomputed here by hand from the masks."""
    out, results = controlled_run
    from captum_unicam.data import load_dataset
    from captum_unicam.models import load_checkpoint, stage_layers
    from captum_unicam.pipeline.evaluation import compute_maps

    student, _ = load_checkpoint(out / "models" / "student_response.pt")
    base, _ = load_checkpoint(out / "models" / "base.pt")
    test = load_dataset("controlled:3", "test", size=TINY_RECIPE["test_size"], cue_strength=0.0)
    batch = next(iter(torch.utils.data.DataLoader(test, batch_size=TINY_RECIPE["eval_batch_size"])))
    s, b = stage_layers(student), stage_layers(base)
    maps = compute_maps(student, base, {"L4": (s["L4"], b["L4"])}, [batch], progress=False)["L4"]
    h = torch.nn.functional.interpolate(
        maps["gradcam_student"].double(), size=(32, 32), mode="bilinear", align_corners=False
    ).clamp_min(0)[:, 0]
    m = batch[2][:, 0].double()
    ok = h.flatten(1).sum(1) > 0
    energy = ((h * m).flatten(1).sum(1) / h.flatten(1).sum(1))[ok].mean().item()
    row = results["localisation"]["response"]["L4"]["kinds"]["gradcam_student"]
    assert row["energy"]["mean"] == pytest.approx(energy, rel=1e-6)
    assert row["n_empty"] == int((~ok).sum())


def test_cued_evaluation_table_and_scores_by_hand(controlled_run):
    """The cued evaluation: cue-free and cued (tint on every image) batches; S_r recomputed
    by UniCAM.score per batch, the object mass of Grad-CAM(Base) by hand from the masks."""
    out, results = controlled_run
    from captum.attr import LayerGradCam

    from captum_unicam import UniCAM
    from captum_unicam.data import load_dataset
    from captum_unicam.models import load_checkpoint, stage_layers

    assert (out / "cued_evaluation.md").is_file()
    rows = list(csv.DictReader(io.StringIO((out / "cued_evaluation.csv").read_text())))
    # 2 pairs x 2 conditions x 4 layers x (2 scores + 2 regions x 4 kinds)
    assert len(rows) == 2 * 2 * 4 * (2 + 8)
    student, _ = load_checkpoint(out / "models" / "student_response.pt")
    base, _ = load_checkpoint(out / "models" / "base.pt")
    s, b = stage_layers(student), stage_layers(base)
    uc = UniCAM(student, s["L4"], base, b["L4"])
    bs = TINY_RECIPE["eval_batch_size"]
    for cond, cue in (("cue-free", 0.0), ("cued", 1.0)):
        test = load_dataset("controlled:3", "test", size=TINY_RECIPE["test_size"], cue_strength=cue)
        batches = list(
            torch.utils.data.DataLoader(test, batch_size=bs)
        )  # file order, as the runner's
        sr = [float(uc.score(x, target=y)[1]) for x, y, _ in batches]
        entry = results["cued_evaluation"]["response"]["conditions"][cond]["layers"]["L4"]
        assert entry["s_r"]["mean"] == pytest.approx(sum(sr) / len(sr), abs=1e-6)
        csv_sr = [
            r
            for r in rows
            if r["pair"] == "response"
            and r["condition"] == cond
            and r["layer"] == "L4"
            and r["quantity"] == "s_r"
        ]
        assert float(csv_sr[0]["mean"]) == pytest.approx(entry["s_r"]["mean"], rel=1e-12)
        gc = torch.cat(
            [
                LayerGradCam(base, b["L4"]).attribute(x, target=y, relu_attributions=True).detach()
                for x, y, _ in batches
            ]
        )
        h = torch.nn.functional.interpolate(
            gc.double(), size=(32, 32), mode="bilinear", align_corners=False
        ).clamp_min(0)[:, 0]
        m = torch.cat([mk for _, _, mk in batches])[:, 0].double()
        ok = h.flatten(1).sum(1) > 0
        energy = ((h * m).flatten(1).sum(1) / h.flatten(1).sum(1))[ok]
        got = entry["mass"]["object"]["gradcam_base"]
        assert got["n"] == int(ok.sum())
        if got["n"]:
            assert got["mean"] == pytest.approx(energy.mean().item(), abs=1e-6)


def test_rerun_loads_cached_models(controlled_run, monkeypatch):
    out, first = controlled_run
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "models").iterdir()}
    import captum_unicam.kd.train as kd_train

    calls = []
    original = kd_train.train_model
    monkeypatch.setattr(
        kd_train, "train_model", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    second = _run(out, recipe={**TINY_RECIPE, "grid_layers": ("L4",)})  # evaluation-only change
    assert calls == []
    assert {k: v["status"] for k, v in second["models"].items()} == dict.fromkeys(
        first["models"], "loaded"
    )
    assert {p.name: p.stat().st_mtime_ns for p in (out / "models").iterdir()} == mtimes
    # same models, same data, same seeds: the same numbers
    assert second["accuracies"] == first["accuracies"]
    assert not (out / "figures" / "grid_response_L1.png").exists()  # the folder was replaced
    assert second["evaluations"]["ta"]["values"] == first["evaluations"]["ta"]["values"]


@pytest.mark.parametrize(
    "spec", ["controlled:abc", "nope:x", "imagefolder:/no/such/folder", "cifar10:/no/such"]
)
def test_bad_dataset_spec_raises_before_training(tmp_path, spec, monkeypatch):
    import captum_unicam.kd.train as kd_train

    monkeypatch.setattr(kd_train, "train_model", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(DataSpecError):
        _run(tmp_path / "out", dataset=spec)
    assert not (tmp_path / "out").exists()


def test_bad_arguments_and_foreign_folder(tmp_path):
    with pytest.raises(ValueError, match="methods"):
        _run(tmp_path / "a", methods=("hinton",))
    with pytest.raises(ValueError, match="unknown architecture"):
        _run(tmp_path / "a", teacher_arch="resnet7")
    with pytest.raises(ValueError, match="recipe"):
        _run(tmp_path / "a", recipe={"epochz": 3})
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError):
        _run(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_imagefolder_tree(tmp_path):
    """A tiny generated ImageFolder tree runs end to end (no masks: no localisation)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    root = tmp_path / "tree"
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(15):  # 3 of each class held out: 6 test images, one batch of 6
            arr = (torch.rand(24, 24, 3, generator=g) * 80).to(torch.uint8)
            arr[6:18, 6:18, c] = 230  # a class-coloured square
            Image.fromarray(arr.numpy()).save(root / name / f"{i}.png")
    recipe = {
        "batch_size": 8,
        "eval_batch_size": 6,
        "eval_batches": 1,
        "n_show": 1,
        "n_bootstrap": 20,
        "n_permutations": 16,
        "dpi": 30,
        "grid_layers": ("L4",),
    }
    results = _run(tmp_path / "out", dataset=f"imagefolder:{root}", recipe=recipe, image_size=24)
    out = tmp_path / "out"
    assert results["localisation"] is None and not (out / "localisation.md").exists()
    assert results["config"]["class_names"] == ["cat", "dog"]
    assert (out / "table2.md").is_file() and (out / "figures" / "grid_ta_L4.png").is_file()
    assert all(a["test_cued"] is None for a in results["accuracies"].values())
    _finite_numbers(json.loads((out / "results.json").read_text()))


def test_summarize_seeds_means_and_spreads(controlled_run, tmp_path):
    """experiments/summarize_seeds.py: per-seed columns and mean ± sd over seeds."""
    import importlib.util
    import statistics

    spec = importlib.util.spec_from_file_location(
        "summarize_seeds", Path(__file__).parents[1] / "experiments" / "summarize_seeds.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    out, _ = controlled_run
    first = json.loads((out / "results.json").read_text())
    second = json.loads(json.dumps(first))
    second["config"]["seed"] = 7
    second["accuracies"]["base"]["test"] = first["accuracies"]["base"]["test"] + 0.25
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text(json.dumps(second))

    text = module.summarize([str(out), str(tmp_path / "other")])
    header, rows = _parse_md(text.split("\n\n")[1])  # the accuracy table
    assert header == ["model", "seed 0", "seed 7", "mean ± sd"]
    base = next(r for r in rows if r[0] == "base")
    a, b = 100 * first["accuracies"]["base"]["test"], 100 * second["accuracies"]["base"]["test"]
    assert base[1:3] == [f"{a:.1f}", f"{b:.1f}"]
    assert base[3] == f"{statistics.mean([a, b]):.1f} ± {statistics.stdev([a, b]):.1f}"
    teacher = next(r for r in rows if r[0] == "teacher")
    assert teacher[3].endswith("± 0.0")  # unchanged between the two runs
    l4 = [ln for ln in text.splitlines() if ln.startswith("| L4 |")][0]
    p = first["evaluations"]["response"]["summary"]["by_layer"]["L4"]["none"][
        "p_distilled_gt_residual"
    ]
    assert f"{p:.3g}, {p:.3g}" in l4
    assert module.main([str(tmp_path / "missing")]) == 2
