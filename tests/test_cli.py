"""The command line: help texts, bad input (exit 2, one line, nothing written), reports."""

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from captum_unicam import cli
from captum_unicam.models import build_model, save_checkpoint

CLASSES = ["circle", "square", "triangle", "cross"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    out = {}
    for i, (name, arch, n) in enumerate(
        [
            ("student", "small_resnet_s", 4),
            ("base", "small_resnet_s", 4),
            ("three", "small_resnet_s", 3),
        ]
    ):
        torch.manual_seed(i)
        m = build_model(arch, n, cifar_stem=True)
        save_checkpoint(
            d / f"{name}.pt",
            m,
            arch=arch,
            num_classes=n,
            class_names=CLASSES[:n] if n == 4 else None,
        )
        out[name] = str(d / f"{name}.pt")
    torch.manual_seed(5)
    torch.save(build_model("small_resnet_s", 4, cifar_stem=True).state_dict(), d / "plain.pt")
    out["plain"] = str(d / "plain.pt")
    (d / "garbage.pt").write_bytes(b"this is not a checkpoint")
    out["garbage"] = str(d / "garbage.pt")
    (d / "empty_data").mkdir()
    out["empty_data"] = str(d / "empty_data")
    for c in CLASSES:
        (d / "empty_classes" / c).mkdir(parents=True)
    out["empty_classes"] = str(d / "empty_classes")
    return out


def _run(capsys, argv):
    code = cli.main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _pair_args(c, out, **over):
    args = {
        "--student": c["student"],
        "--base": c["base"],
        "--data": "controlled",
        "--out": str(out),
        "--limit": "10",
        "--batch-size": "5",
        "--layers": "L4",
        "--one-hot": None,
        "--no-progress": None,
        "--image-size": "32",
        "--normalize": "none",
    }  # the checkpoints record no preprocessing
    args.update(over)
    argv = []
    for k, v in args.items():
        if v is False:
            continue
        argv.append(k)
        if isinstance(v, (list, tuple)):
            argv.extend(v)
        elif v is not None:
            argv.append(v)
    return argv


# ---------------------------------------------------------------------------
# help
# ---------------------------------------------------------------------------


def _subparsers():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", ["demo", "train", "explain", "quantify", "compare"])
def test_help_mentions_every_option_and_its_default(capsys, command):
    sub = _subparsers()[command]
    sub.format_help()  # compare adds its arguments on first use
    code, out, _ = _run(capsys, [command, "--help"])
    assert code == 0
    flat = " ".join(out.split())
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.option_strings[-1] in out, action.option_strings
        assert action.help, action.option_strings
        # the formatted help of each option states its default (or that it is required)
        entry = sub.formatter_class("x")._get_help_string(action)
        assert "default" in entry.lower() or "(required)" in entry, (action.option_strings, entry)
    for cmd_opt in {
        "demo": ["--out", "--quick", "--seed", "--device", "--overwrite"],
        "train": ["--data", "--arch", "--teacher", "--method", "--epochs", "--limit", "--out"],
        "explain": ["--student", "--base", "--data", "--layers", "--images", "--out"],
        "quantify": [
            "--student",
            "--base",
            "--data",
            "--layers",
            "--perturb",
            "--out",
            "--batch-size",
            "--limit",
            "--overwrite",
            "--device",
        ],
        "compare": [
            "--student",
            "--base",
            "--data",
            "--out",
            "--overwrite",
            "--layer",
            "--percentiles",
            "--random-label-student",
        ],
    }[command]:
        assert cmd_opt in flat


def test_architecture_names_agree_with_models():
    from captum_unicam.models import ARCHITECTURES
    from captum_unicam.pipeline.requests import ARCHITECTURE_NAMES

    assert tuple(ARCHITECTURE_NAMES) == tuple(ARCHITECTURES)


def test_top_level_help_lists_commands(capsys):
    code, out, _ = _run(capsys, ["--help"])
    assert code == 0
    for c in ("demo", "train", "explain", "quantify"):
        assert c in out


# ---------------------------------------------------------------------------
# bad input: exit 2, one line on stderr, no traceback, no report
# ---------------------------------------------------------------------------


BAD = {
    "missing checkpoint": (dict(**{"--student": "nope/student.pt"}), "does not exist"),
    "unreadable checkpoint": ("garbage", "cannot read checkpoint"),
    "wrong class count": ("three", "3 classes"),
    "plain state dict without arch": ("plain", "--arch"),
    "wrong architecture": ("plain+resnet18", "resnet18"),
    "unknown architecture": (dict(**{"--arch": "resnet7"}), "unknown architecture"),
    "unknown layer": (dict(**{"--layers": "L9"}), "no layer named 'L9'"),
    "unknown data spec": (dict(**{"--data": "mnist:/x"}), "unknown data spec"),
    "missing data folder": (
        dict(**{"--data": "imagefolder:/nonexistent/folder"}),
        "/nonexistent/folder",
    ),
    "empty data folder": ("empty_data", "image folder"),
    "class folders without images": ("empty_classes", "image"),
    "batch too small": (dict(**{"--batch-size": "4"}), "at least 5"),
    "bad choice": (dict(**{"--perturb": "blur"}), "invalid choice"),
    "not a number": (dict(**{"--limit": "many"}), "not an integer"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("command", ["explain", "quantify"])
def test_bad_input_exit_2_one_line(tmp_path, capsys, ckpts, case, command):
    if case == "bad choice" and command == "explain":
        pytest.skip("--perturb is a quantify option")
    over, expected = BAD[case]
    if over == "garbage":
        over = {"--student": ckpts["garbage"]}
    elif over == "three":
        over = {"--base": ckpts["three"]}
    elif over == "plain":
        over = {"--base": ckpts["plain"]}
    elif over == "plain+resnet18":
        over = {"--base": ckpts["plain"], "--arch": "resnet18"}
    elif over in ("empty_data", "empty_classes"):
        over = {"--data": "imagefolder:" + ckpts[over]}
    out = tmp_path / "report"
    code, stdout, err = _run(capsys, [command] + _pair_args(ckpts, out, **over))
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert expected.lower() in lines[0].lower(), lines[0]
    assert lines[0].startswith("captum-unicam")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda(tmp_path, capsys, ckpts):
    code, _, err = _run(
        capsys, ["explain"] + _pair_args(ckpts, tmp_path / "r", **{"--device": "cuda"})
    )
    assert code == 2 and "CUDA is not available" in err and len(err.strip().splitlines()) == 1


def test_existing_out_refused_and_untouched(tmp_path, capsys, ckpts):
    out = tmp_path / "report"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    for argv in (
        ["demo", "--out", str(out), "--quick", "--no-progress"],
        ["quantify"] + _pair_args(ckpts, out),
    ):
        code, _, err = _run(capsys, argv)
        assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
        assert [p.name for p in out.iterdir()] == ["mine.txt"] and (
            out / "mine.txt"
        ).read_text() == "keep"
        assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_train_bad_input(tmp_path, capsys, ckpts):
    out = tmp_path / "m.pt"
    cases = [
        (["--data", "controlled", "--arch", "resnet7", "--out", str(out)], "unknown architecture"),
        (
            [
                "--data",
                "controlled",
                "--arch",
                "small_resnet_s",
                "--method",
                "attention",
                "--out",
                str(out),
            ],
            "--teacher",
        ),
        (["--data", "foo", "--arch", "small_resnet_s", "--out", str(out)], "unknown data spec"),
        (
            [
                "--data",
                "controlled",
                "--arch",
                "small_resnet_s",
                "--teacher",
                ckpts["three"],
                "--out",
                str(out),
            ],
            "3 classes",
        ),
        (
            [
                "--data",
                "controlled",
                "--arch",
                "small_resnet_s",
                "--teacher",
                "missing.pt",
                "--out",
                str(out),
            ],
            "does not exist",
        ),
        (["--data", "controlled", "--arch", "small_resnet_s", "--out", ckpts["student"]], "exists"),
        (["--data", "controlled", "--arch", "small_resnet_s", "--out", str(tmp_path)], "folder"),
    ]
    for argv, expected in cases:
        code, _, err = _run(capsys, ["train", "--no-progress"] + argv)
        assert code == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert expected.lower() in err.lower(), (argv, err)
    assert not out.exists()


def test_entry_point_subprocess(tmp_path):
    # the real process: one stderr line, exit 2, no traceback
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "captum_unicam",
            "explain",
            "--student",
            "missing.pt",
            "--base",
            "missing.pt",
            "--data",
            "controlled",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "does not exist" in r.stderr
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------
# explain / quantify on small checkpoints
# ---------------------------------------------------------------------------


def test_explain_and_overwrite(tmp_path, capsys, ckpts):
    out = tmp_path / "ex"
    argv = ["explain"] + _pair_args(
        ckpts, out, **{"--images": "2", "--arch": "small_resnet_s", "--base": ckpts["plain"]}
    )
    code, stdout, err = _run(capsys, argv)
    assert code == 0, err
    assert (out / "index.html").is_file() and (out / "figures" / "grid_L4.png").is_file()
    m = json.loads((out / "metrics.json").read_text())
    loc = m["localisation"]["L4"]["kinds"]
    assert set(loc) == {"Grad-CAM student", "Grad-CAM base", "UniCAM distilled", "UniCAM residual"}
    assert all(v["n_images"] == 10 for v in loc.values())  # every evaluated image (--limit 10)
    assert m["models"]["Teacher"]["accuracy"] is None  # not given, stated as such
    assert 0.0 <= m["models"]["Student"]["accuracy"] <= 1.0
    assert m["command"].startswith("captum-unicam explain")
    # again: refused; with --overwrite: replaced
    code, _, err = _run(capsys, argv)
    assert code == 2 and "--overwrite" in err
    code, _, err = _run(capsys, argv + ["--overwrite"])
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex"]


def test_quantify_equals_evaluate_kd(tmp_path, capsys, ckpts, no_deprecation):
    from captum_unicam.data import load_dataset
    from captum_unicam.metrics import evaluate_kd
    from captum_unicam.models import load_checkpoint, stage_layers

    out = tmp_path / "q"
    code, _, err = _run(
        capsys,
        ["quantify"]
        + _pair_args(ckpts, out, **{"--maps": ["gradcam", "distilled"], "--n-bootstrap": "50"}),
    )
    assert code == 0, err
    got = json.loads((out / "metrics.json").read_text())["evaluation"]
    s, _ = load_checkpoint(ckpts["student"])
    b, _ = load_checkpoint(ckpts["base"])
    from captum_unicam.pipeline import stratified_loader

    ds = load_dataset("controlled", "test", limit=10)
    loader = stratified_loader(ds, 5, seed=0)  # the API and the CLI draw the same batches
    ref = evaluate_kd(
        s,
        {"L4": (stage_layers(s)["L4"], stage_layers(b)["L4"])},
        loader,
        base_forward_func=b,
        maps=("gradcam", "distilled"),
        n_bootstrap=50,
        progress=False,
    ).summary()
    ref = json.loads(json.dumps(ref))
    got, ref = got.get("by_layer", got), ref.get("by_layer", ref)
    for kind in ("gradcam", "distilled"):
        for metric in ("fss", "rs_base", "rs_student", "rs_distilled", "rs_residual"):
            assert got["L4"][kind][metric]["mean"] == pytest.approx(
                ref["L4"][kind][metric]["mean"], abs=1e-9
            )
    assert (out / "tables" / "table1.md").is_file() and (out / "figures" / "scores.png").is_file()


# ---------------------------------------------------------------------------
# the demo, end to end (--quick), and explain / quantify on its models
# ---------------------------------------------------------------------------


@pytest.fixture
def no_deprecation():
    """The command line and the demo use only current APIs: a DeprecationWarning fails."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        yield


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys, no_deprecation):
    out = tmp_path / "demo"
    cache = tmp_path / "cache"
    code, stdout, err = _run(
        capsys, ["demo", "--quick", "--out", str(out), "--cache-dir", str(cache), "--no-progress"]
    )
    assert code == 0, err
    for f in (
        "index.html",
        "metrics.json",
        "models/teacher.pt",
        "models/base.pt",
        "models/student.pt",
        "tables/table1.csv",
        "tables/table1.md",
        "tables/localisation.csv",
        "figures/scores.png",
        "figures/localisation.png",
        *[f"figures/grid_L{i}.png" for i in range(1, 5)],
    ):
        assert (out / f).is_file(), f
    m = json.loads((out / "metrics.json").read_text())
    assert m["format"] == "captum-unicam/report"  # marks it as ours for --overwrite
    for role in ("Teacher", "Base", "Student"):
        assert 0.0 <= m["models"][role]["accuracy"] <= 1.0
    ev = m["evaluation"].get("by_layer", m["evaluation"])
    assert set(ev) == {"L1", "L2", "L3", "L4"}
    assert set(m["localisation"]) == {"L1", "L2", "L3", "L4"}
    page = (out / "index.html").read_text()
    assert "Teacher" in page and "Student" in page and "Base" in page
    # the report opens with the conclusion of the map-free scores, the models' accuracies in it
    from captum_unicam.metrics import KDEvaluation  # noqa: F401  (the headline's producer)

    head = m["headline"]
    assert head["kind"] == "none" and set(head["layers"]) == {"L1", "L2", "L3", "L4"}
    acc = {r.lower(): m["models"][r]["accuracy"] for r in ("Teacher", "Base", "Student")}
    assert head["accuracy"] == (
        "Accuracy: "
        + ", ".join(f"{r.capitalize()} {acc[r]:.1%}" for r in ("teacher", "base", "student"))
        + "."
    )
    # the quick demo's Base learnt the tint shortcut: near chance on cue-free images by the
    # scenario's design, so its statements are made with that reason (not refused as a
    # mismatch); any other model near chance is flagged, and then no conclusion is drawn
    near = [r for r in ("Teacher", "Student") if m["models"][r]["accuracy"] < 0.25 + 0.05]
    assert [line.split(":")[0] for line in m["sanity"]] == near
    assert all("here not a mismatch" in line for line in m["sanity"])
    assert ("refused" in head) == bool(near)
    if m["models"]["Base"]["accuracy"] < 0.25 + 0.05:
        assert head["explained"] and "near chance by design" in head["explained"][0]
        assert "background-tint shortcut" in head["text"]
        if not near:
            assert all(len(statements) == 3 for statements in head["layers"].values())
    assert page.index('id="conclusion"') < page.index('id="compared"') < page.index('id="table1"')
    assert head["text"].split("\n\n")[0] in page
    assert "† marks an RS whose interval is not above its leakage baseline" in page
    assert m["classes"] == ["circle", "square", "triangle", "cross"]
    assert sum(m["data_summary"]["class_counts"].values()) == m["data_summary"]["n_images"]

    # explain and quantify accept the demo's checkpoints
    ex = tmp_path / "ex"
    code, _, err = _run(
        capsys,
        [
            "explain",
            "--student",
            str(out / "models/student.pt"),
            "--base",
            str(out / "models/base.pt"),
            "--teacher",
            str(out / "models/teacher.pt"),
            "--data",
            "controlled",
            "--limit",
            "8",
            "--batch-size",
            "8",
            "--images",
            "2",
            "--layers",
            "L3",
            "L4",
            "--one-hot",
            "--no-progress",
            "--out",
            str(ex),
        ],
    )
    assert code == 0, err
    mx = json.loads((ex / "metrics.json").read_text())
    assert mx["models"]["Teacher"]["arch"] == m["models"]["Teacher"]["arch"]
    assert (
        mx["empty_maps"]["L4"]["Grad-CAM teacher"]["computed"] == 8
    )  # the Teacher's maps, every image
    assert len(mx["drawn"]) == 2 and [d["model"] for d in mx["drawn"][0]] == [
        "Teacher",
        "Base",
        "Student",
    ]
    q = tmp_path / "q"
    code, _, err = _run(
        capsys,
        [
            "quantify",
            "--student",
            str(out / "models/student.pt"),
            "--base",
            str(out / "models/base.pt"),
            "--data",
            "controlled",
            "--limit",
            "16",
            "--batch-size",
            "8",
            "--layers",
            "L4",
            "--perturb",
            "none",
            "--one-hot",
            "--no-progress",
            "--out",
            str(q),
        ],
    )
    assert code == 0, err
    mq = json.loads((q / "metrics.json").read_text())
    assert mq["map_kinds"] == ["none"]
    # the footnote names what was run (raw features), not a map perturbation; no maps section
    table1 = (q / "tables" / "table1.md").read_text()
    assert "perturbation none," in table1 and "perturbation mask" not in table1
    page = (q / "index.html").read_text()
    assert 'id="maps"' not in page and 'id="localisation"' not in page


@pytest.mark.slow
def test_quantify_under_torchrun_equals_one_process(tmp_path, ckpts):
    pytest.importorskip("torch.distributed.run")
    common = [
        "quantify",
        "--student",
        ckpts["student"],
        "--base",
        ckpts["base"],
        "--data",
        "controlled",
        "--limit",
        "20",
        "--batch-size",
        "5",
        "--layers",
        "L4",
        "--maps",
        "gradcam",
        "--one-hot",
        "--no-progress",
        "--n-bootstrap",
        "50",
        "--image-size",
        "32",
        "--normalize",
        "none",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run(
        [sys.executable, "-m", "captum_unicam", *common, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "captum_unicam",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())
    b = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert b["world_size"] == 2 and a["world_size"] == 1
    assert _same(a["evaluation"], b["evaluation"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


def _same(x, y, tol=1e-9):
    if isinstance(x, dict):
        assert set(x) == set(y)
        return all(_same(x[k], y[k], tol) for k in x)
    if isinstance(x, list):
        assert len(x) == len(y)
        return all(_same(a, b, tol) for a, b in zip(x, y))
    if isinstance(x, float):
        assert y == pytest.approx(x, abs=tol), (x, y)
        return True
    assert x == y
    return True


def test_explain_reference_mode_maps_do_not_depend_on_the_batches(tmp_path, capsys, ckpts):
    """``explain --reference N``: each image is scored with the same reference set alone,
    so the per-image localisation does not change with the batch size (it does in batch
    mode, where each batch is its own context)."""

    def localisation(out, *extra):
        code, _, err = _run(
            capsys, ["explain"] + _pair_args(ckpts, out, **{"--limit": "10"}) + list(extra)
        )
        assert code == 0, err
        m = json.loads((out / "metrics.json").read_text())
        kinds = m["localisation"]["L4"]["kinds"]
        return m, {k: kinds[k]["energy"]["mean"] for k in ("UniCAM distilled", "UniCAM residual")}

    m5, ref5 = localisation(tmp_path / "r5", "--reference", "8", "--batch-size", "5")
    _, ref10 = localisation(tmp_path / "r10", "--reference", "8", "--batch-size", "10")
    assert "reference mode" in m5["unicam_mode"] and "8 train images" in m5["unicam_mode"]
    for k in ref5:
        assert ref5[k] == pytest.approx(ref10[k], rel=1e-5, abs=1e-7)
    _, b5 = localisation(tmp_path / "b5", "--batch-size", "5")
    _, b10 = localisation(tmp_path / "b10", "--batch-size", "10")
    assert any(abs(b5[k] - b10[k]) > 1e-4 for k in b5)  # batch mode: the batch matters
    code, _, err = _run(
        capsys, ["explain"] + _pair_args(ckpts, tmp_path / "r3") + ["--reference", "3"]
    )
    assert code == 2 and "--reference 3" in err and len(err.strip().splitlines()) == 1


def test_messages_name_flags_through_one_table_of_whole_names():
    """Library argument names become flags only as whole names: ``allow_download=`` is
    --download, not "allow_--download" as the substring rewriting made it."""
    from captum_unicam.pipeline.requests import FLAGS, in_flags

    assert in_flags("pass allow_download=True to fetch it") == "pass --download to fetch it"
    assert in_flags("or pass download=True") == "or pass --download"
    assert in_flags("(teacher=...)") == "(--teacher CKPT)"
    assert in_flags("train a Base with labelled=N, and the Student with transfer=SPEC") == (
        "train a Base with --labelled N, and the Student with --transfer SPEC"
    )
    assert in_flags("or pass image_size= to override") == "or pass --image-size to override"
    assert in_flags("use device=cpu") == "use --device cpu"
    assert (
        in_flags("x_image_size= and unknown_name= stay") == "x_image_size= and unknown_name= stay"
    )
    assert all(flag.startswith("--") for flag in FLAGS.values())


def test_requests_take_the_parsed_flags_field_by_field():
    """Every field of each request is a destination of its command's parser (a renamed
    flag cannot silently fall back to a default)."""
    import dataclasses

    from captum_unicam.pipeline.requests import (
        CompareRequest,
        DemoRequest,
        ExplainRequest,
        QuantifyRequest,
        TrainRequest,
    )

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, cls in (
        ("demo", DemoRequest),
        ("train", TrainRequest),
        ("explain", ExplainRequest),
        ("quantify", QuantifyRequest),
        ("compare", CompareRequest),
    ):
        dests = {a.dest for a in sub.choices[command]._actions}
        assert {f.name for f in dataclasses.fields(cls)} <= dests, (
            command,
            {f.name for f in dataclasses.fields(cls)} - dests,
        )
