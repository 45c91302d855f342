"""The command line under careless and hostile input (issue 14), end to end.

Each case runs ``captum-unicam`` (in-process through :func:`captum_unicam.cli.main`, or
as a subprocess where a signal must reach it) on tiny models and data, and asserts the
exit code, one line on stderr, and that the files it must not touch are intact.
Kills at chosen moments use the stage hook of :mod:`captum_unicam.output.publish`,
installed in the subprocess by a small runner (``HOSTILE_STAGE``, ``HOSTILE_SIGNAL``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from test_hostile import MALICIOUS, _flips, _malicious, _rewrite, empty_hub_cache, no_network  # noqa: F401  (fixtures)

from captum_unicam import cli, models
from captum_unicam.models import build_model, save_checkpoint
from captum_unicam.output.publish import REPORT_FORMAT, is_report_dir

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["circle", "square", "triangle", "cross"]


# ---------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------


def _ckpt(path: Path, seed: int, classes, image_size: int = 32) -> str:
    torch.manual_seed(seed)
    model = build_model("small_resnet_s", len(classes), width=2)
    save_checkpoint(
        path,
        model,
        arch="small_resnet_s",
        num_classes=len(classes),
        class_names=list(classes),
        recipe={"image_size": image_size, "normalize": "none"},
    )
    return str(path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    return {
        "student": _ckpt(d / "student.pt", 0, CLASSES),
        "base": _ckpt(d / "base.pt", 1, CLASSES),
        "dir": d,
    }


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, 255 - value, (7 * value) % 256)).save(path)


@pytest.fixture
def pets(tmp_path):
    """An image folder of 2 classes x 6 test images (and 2 train images each) and a
    checkpoint pair for it."""
    root = tmp_path / "pets"
    for c, name in enumerate(("cat", "dog")):
        for i in range(6):
            _png(root / "test" / name / f"{i}.png", 100 * c + 15 * i)
        for i in range(2):
            _png(root / "train" / name / f"{i}.png", 100 * c + 15 * i + 7)
    s = _ckpt(tmp_path / "ps.pt", 0, ["cat", "dog"], image_size=16)
    b = _ckpt(tmp_path / "pb.pt", 1, ["cat", "dog"], image_size=16)
    return root, s, b


def _argv(command, student, base, out, *extra, data="controlled"):
    argv = [
        command,
        "--student",
        str(student),
        "--base",
        str(base),
        "--data",
        data,
        "--out",
        str(out),
        "--limit",
        "10",
        "--batch-size",
        "5",
        "--layers",
        "L4",
        "--one-hot",
        "--no-progress",
    ]
    if command == "quantify":
        argv += ["--maps", "gradcam", "--n-bootstrap", "20"]
    return argv + list(extra)


def _run(capsys, argv):
    code = cli.main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _one_error(err: str, pattern: str = "") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error:" in lines[0] and "Traceback" not in err
    assert pattern.lower() in lines[0].lower(), lines[0]
    return lines[0]


def _fake_report(folder: Path, tag: str) -> Path:
    """A report of ours (the format marker) holding ``tag``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"format": REPORT_FORMAT, "tag": tag}))
    (folder / "index.html").write_text(tag)
    return folder


def _tag(folder: Path) -> str:
    return json.loads((folder / "metrics.json").read_text()).get("tag")


def _leftovers(parent: Path):
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if train gets as far as training."""
    from captum_unicam.pipeline import training

    def refuse(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(training, "train_checkpoint", refuse)


@pytest.fixture
def no_build(monkeypatch):
    """Fails the test if a model is built from a checkpoint."""

    def refuse(*a, **k):
        raise AssertionError("build_model was called")

    monkeypatch.setattr(models, "build_model", refuse)


# ---------------------------------------------------------------------------
# --overwrite replaces only what this tool wrote
# ---------------------------------------------------------------------------


def test_report_holding_the_checkpoints_read_is_not_replaced(pair, tmp_path, capsys):
    r = _fake_report(tmp_path / "R", "old")
    (r / "models").mkdir()
    for role in ("student", "base"):
        (r / "models" / f"{role}.pt").write_bytes(Path(pair[role]).read_bytes())
    before = {p: p.read_bytes() for p in r.rglob("*") if p.is_file()}
    code, _, err = _run(
        capsys, _argv("quantify", r / "models/student.pt", r / "models/base.pt", r, "--overwrite")
    )
    assert code == 2
    _one_error(err, "which this run reads")
    assert {p: p.read_bytes() for p in r.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("target", [".", ".."])
def test_current_folder_and_parent_are_refused(pair, tmp_path, capsys, monkeypatch, target):
    d = tmp_path / "D"
    d.mkdir()
    (d / "precious.txt").write_text("x")
    _fake_report(d, "mine")  # even a report of ours
    monkeypatch.chdir(d)
    code, _, err = _run(
        capsys, _argv("quantify", pair["student"], pair["base"], target, "--overwrite")
    )
    assert code == 2
    _one_error(err, "current folder")
    assert (d / "precious.txt").read_text() == "x" and _tag(d) == "mine"


def test_non_report_folder_is_not_replaced(pair, tmp_path, capsys):
    out = tmp_path / "stuff"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    code, _, err = _run(capsys, _argv("explain", pair["student"], pair["base"], out, "--overwrite"))
    assert code == 2
    _one_error(err, "not a captum-unicam report")
    assert (out / "thesis.tex").read_text() == "years of work"


def test_demo_never_replaces_its_model_cache(tmp_path, capsys, monkeypatch):
    from captum_unicam.pipeline import demo

    def refuse(*a, **k):
        raise AssertionError("the demo started training")

    monkeypatch.setattr(demo, "train_demo_models", refuse)
    r = _fake_report(tmp_path / "R", "old")
    cache = r / "cache"
    cache.mkdir()
    (cache / "student.pt").write_bytes(b"cached")
    for out in (r, cache):
        code, _, err = _run(
            capsys,
            [
                "demo",
                "--quick",
                "--cache-dir",
                str(cache),
                "--out",
                str(out),
                "--overwrite",
                "--no-progress",
            ],
        )
        assert code == 2
        _one_error(err, "which this run reads")
    assert (cache / "student.pt").read_bytes() == b"cached" and _tag(r) == "old"


def test_dangling_out_symlink_is_refused(pair, tmp_path, capsys, no_training):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    code, _, err = _run(capsys, _argv("quantify", pair["student"], pair["base"], link))
    assert code == 2
    _one_error(err, "does not exist")
    code, _, err = _run(
        capsys, ["train", "--data", "controlled", "--arch", "small_resnet_s", "--out", str(link)]
    )
    assert code == 2
    _one_error(err, "does not exist")
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_out_symlink_to_an_empty_folder_gets_the_report(pair, tmp_path, capsys):
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    code, out, err = _run(capsys, _argv("quantify", pair["student"], pair["base"], link))
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert (
        is_report_dir(target)
        and (target / "index.html").is_file()
        and (target / "tables" / "table1.md").is_file()
    )
    m = json.loads((target / "metrics.json").read_text())
    assert m["format"] == REPORT_FORMAT
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------
# train's output
# ---------------------------------------------------------------------------


def _train(teacher, out, *extra):
    return [
        "train",
        "--data",
        "controlled",
        "--arch",
        "small_resnet_s",
        "--teacher",
        str(teacher),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--limit",
        "10",
        "--no-progress",
        *extra,
    ]


def test_train_never_writes_over_its_teacher(pair, tmp_path, capsys, no_training):
    t = tmp_path / "t.pt"
    t.write_bytes(Path(pair["base"]).read_bytes())
    before = t.read_bytes()
    (tmp_path / "sym.pt").symlink_to(t)
    os.link(t, tmp_path / "hard.pt")
    for out in (t, tmp_path / "sym.pt", tmp_path / "hard.pt"):
        code, _, err = _run(capsys, _train(t, out, "--overwrite"))
        assert code == 2, out
        _one_error(err, "which this run reads")
        assert t.read_bytes() == before
    assert (tmp_path / "sym.pt").is_symlink() and (tmp_path / "hard.pt").read_bytes() == before


def test_train_output_under_a_file_and_unwritable(pair, tmp_path, capsys, monkeypatch, no_training):
    from captum_unicam.output import publish

    (tmp_path / "afile").write_text("x")
    code, _, err = _run(capsys, _train(pair["base"], tmp_path / "afile" / "x.pt"))
    assert code == 2
    _one_error(err, "is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "x"
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access  # root ignores permissions: ask what an ordinary user is told
    monkeypatch.setattr(
        publish.os, "access", lambda p, mode: False if Path(p) == ro else real_access(p, mode)
    )
    code, _, err = _run(capsys, _train(pair["base"], ro / "student.pt"))
    assert code == 2  # no_training: refused before any training
    _one_error(err, "not writable")


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["zip-os.system", "raw-protocol0-opcodes", "legacy-torch-eval", "payload-in-metadata"]
)
def test_malicious_checkpoints_never_run(pair, tmp_path, capfd, kind):
    assert kind in MALICIOUS
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    _malicious(kind, evil, marker)
    capfd.readouterr()
    code = cli.main(_argv("quantify", evil, pair["base"], tmp_path / "out"))
    err = capfd.readouterr().err
    assert code == 2
    _one_error(err, "evil.pt")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_fuzzed_checkpoints_are_refused(pair, tmp_path, capsys, no_build):
    path = Path(pair["student"])
    cases = _flips((path, None))
    assert len(cases) > 20
    bad = tmp_path / "bad.pt"
    for label, content in cases[::3] + cases[-8:]:
        bad.write_bytes(content)
        code, _, err = _run(capsys, _argv("explain", bad, pair["base"], tmp_path / "out"))
        assert code == 2, label
        _one_error(err, "bad.pt")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda r: r["meta"]["build_kwargs"].update(blocks=[20000, 1, 1, 1]), "20000"),
        (lambda r: r["meta"]["build_kwargs"].update(width=10**7), "width 10000000"),
        (lambda r: r.update(state_dict=None), "no state_dict"),
    ],
)
def test_crafted_metadata_refused_before_a_model_is_built(
    pair, tmp_path, capsys, no_build, edit, match
):
    bad = _rewrite(Path(pair["student"]), tmp_path / "crafted.pt", edit)
    code, _, err = _run(capsys, _argv("quantify", bad, pair["base"], tmp_path / "out"))
    assert code == 2
    _one_error(err, match)


def test_torchscript_file_one_line(pair, tmp_path, capfd):
    ts = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(ts))
    capfd.readouterr()
    code = cli.main(_argv("quantify", ts, pair["base"], tmp_path / "out"))
    assert code == 2
    _one_error(capfd.readouterr().err, "TorchScript")


def test_class_count_differs_error_names_differ_warning(pair, tmp_path, capsys):
    three = _ckpt(tmp_path / "three.pt", 2, ["a", "b", "c"])
    code, _, err = _run(capsys, _argv("quantify", three, pair["base"], tmp_path / "out"))
    assert code == 2
    _one_error(err, "trained on 3 classes")
    other = _ckpt(tmp_path / "other.pt", 3, ["circle", "dog", "triangle", "cross"])
    code, _, err = _run(capsys, _argv("explain", other, pair["base"], tmp_path / "out2"))
    assert code == 2  # classes are matched by name: other names are refused, not read by position
    _one_error(err, "with other names")
    assert "'dog'" in err and "'square'" in err


# ---------------------------------------------------------------------------
# data, layers, network
# ---------------------------------------------------------------------------


def test_layers_checked_before_any_computation(pair, tmp_path, capsys, monkeypatch):
    from captum_unicam.pipeline import evaluation

    def refuse(*a, **k):
        raise AssertionError("computation started")

    monkeypatch.setattr(evaluation, "score_pair", refuse)
    monkeypatch.setattr(evaluation, "compute_maps", refuse)
    for layer, pattern in (("fc", "not feature maps"), ("nosuch", "no layer named 'nosuch'")):
        code, _, err = _run(
            capsys,
            _argv("quantify", pair["student"], pair["base"], tmp_path / "out", "--layers", layer),
        )
        assert code == 2
        _one_error(err, pattern)
    assert not (tmp_path / "out").exists()


def test_uncached_hub_label_model_never_touches_the_network(
    pair, tmp_path, capsys, no_network, empty_hub_cache
):
    argv = [
        a
        for a in _argv("quantify", pair["student"], pair["base"], tmp_path / "out")
        if a != "--one-hot"
    ]
    code, _, err = _run(capsys, argv + ["--label-model", "some-org/some-model"])
    assert code == 2
    _one_error(err, "not in the local")
    assert no_network == []
    assert not (tmp_path / "out").exists()


def test_image_symlink_cycle_is_exit_2(pets, tmp_path, capsys):
    root, s, b = pets
    cat = root / "test" / "cat"
    (cat / "a.png").symlink_to("b.png")
    (cat / "b.png").symlink_to("a.png")
    code, _, err = _run(
        capsys, _argv("quantify", s, b, tmp_path / "out", data=f"imagefolder:{root}")
    )
    assert code == 2
    _one_error(err, "cycle")


def test_self_link_in_a_class_folder_counts_each_image_once(pets, tmp_path, capsys):
    root, s, b = pets
    (root / "test" / "cat" / "self").symlink_to(".")
    out = tmp_path / "out"
    code, _, err = _run(
        capsys,
        _argv(
            "quantify", s, b, out, "--batch-size", "6", "--limit", "100", data=f"imagefolder:{root}"
        ),
    )
    assert code == 0, err
    lines = [
        ln
        for ln in err.strip().splitlines()
        if not ln.startswith("preprocessing: ") and "on the evaluated set is" not in ln
    ]
    assert len(lines) == 1 and "warning:" in lines[0] and "self" in lines[0], err
    m = json.loads((out / "metrics.json").read_text())
    assert sum(m["batch_sizes"]) == 12  # 2 classes x 6 images, each once


def test_report_inside_the_data_folder_is_refused(pets, capsys):
    root, s, b = pets
    code, _, err = _run(capsys, _argv("explain", s, b, root / "report", data=f"imagefolder:{root}"))
    assert code == 2
    _one_error(err, "inside")
    assert not (root / "report").exists()


# ---------------------------------------------------------------------------
# signals and races (subprocesses; the stage hook picks the moment)
# ---------------------------------------------------------------------------

RUNNER = """
import os, signal, sys, time
from captum_unicam.output import publish
stage, sig = os.environ.get("HOSTILE_STAGE"), os.environ.get("HOSTILE_SIGNAL")
def hook(name):
    if name == stage:
        os.kill(os.getpid(), getattr(signal, sig))
        time.sleep(30)  # SIGKILL ends us here; SIGTERM raises here
publish._HOOK = hook
from captum_unicam.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(stage=None, sig=None):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
    )
    env.pop("CAPTUM_UNICAM_TRACEBACK", None)
    if stage:
        env.update(HOSTILE_STAGE=stage, HOSTILE_SIGNAL=sig)
    return env


def _spawn(argv, stage=None, sig=None):
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, *argv],
        env=_env(stage, sig),
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_sigterm_while_writing_exits_130_and_leaves_nothing(pair, tmp_path):
    r = _fake_report(tmp_path / "R", "old")
    code, _, err = _finish(
        _spawn(
            _argv("quantify", pair["student"], pair["base"], r, "--overwrite"),
            "before-publish",
            "SIGTERM",
        )
    )
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert _tag(r) == "old" and _leftovers(tmp_path) == []


def test_sigkill_between_the_renames_is_recovered_by_the_next_run(pair, tmp_path, capsys):
    r = _fake_report(tmp_path / "R", "old")
    code, _, err = _finish(
        _spawn(
            _argv("explain", pair["student"], pair["base"], r, "--overwrite"),
            "moved-aside",
            "SIGKILL",
        )
    )
    assert code == -signal.SIGKILL, err
    assert not r.exists() and any(".R.old-" in n for n in _leftovers(tmp_path))
    assert any(".R.tmp-" in n for n in _leftovers(tmp_path))
    # the next run (without --overwrite) puts the old report back, says so, and refuses to replace it
    code, _, err = _run(capsys, _argv("explain", pair["student"], pair["base"], r))
    assert code == 2
    lines = err.strip().splitlines()
    assert any("warning:" in line and "restored" in line for line in lines), err
    assert any("warning:" in line and "removed" in line for line in lines), err
    assert lines[-1].count("error:") == 1 and "not empty" in lines[-1] and "Traceback" not in err
    assert _tag(r) == "old" and _leftovers(tmp_path) == []


def test_two_overwrite_runs_racing_never_traceback(pair, tmp_path):
    r = _fake_report(tmp_path / "R", "old")
    procs = [
        _spawn(_argv("quantify", pair["student"], pair["base"], r, "--overwrite", "--seed", str(i)))
        for i in range(2)
    ]
    results = [_finish(p) for p in procs]
    for code, _, err in results:
        assert code in (0, 2), err
        assert "Traceback" not in err
        if code == 2:
            _one_error(err)
    assert 0 in [c for c, _, _ in results]
    m = json.loads((r / "metrics.json").read_text())
    assert m["format"] == REPORT_FORMAT and "tag" not in m and (r / "index.html").is_file()
    assert _leftovers(tmp_path) == []
