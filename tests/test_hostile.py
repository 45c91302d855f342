"""Careless and hostile input (issue 14): the reliability audit, replayed.

Output folders and files that must not be replaced, kills at chosen moments of writing a
report (an injected hook sends the signal), two runs racing to one folder, malicious
pickles, fuzzed and oversized checkpoints, symlink loops in image folders, no network.
Everything runs on tiny models and data.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from captum_unicam.errors import OutputError
from captum_unicam.output import publish
from captum_unicam.output.publish import (
    REPORT_FORMAT,
    check_output_dir,
    check_output_file,
    is_report_dir,
    publish_folder,
    recover_output_dir,
    staged_folder,
    terminate_as_interrupt,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _report(folder: Path, tag: str) -> Path:
    """A complete report of ours: every file holds ``tag``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "part0.txt").write_text(tag)
    (folder / "part1.txt").write_text(tag)
    (folder / "metrics.json").write_text(json.dumps({"format": REPORT_FORMAT, "tag": tag}))
    return folder


def _tag_of(folder: Path) -> str:
    """The tag of a complete report; fails on a partial or mixed one."""
    tag = json.loads((folder / "metrics.json").read_text())["tag"]
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "part0.txt", "part1.txt"]
    assert (folder / "part0.txt").read_text() == tag and (folder / "part1.txt").read_text() == tag
    return tag


def _siblings(folder: Path):
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


@pytest.fixture
def no_hook():
    yield
    publish._HOOK = None


# ---------------------------------------------------------------------------
# 1. overwrite replaces only what this tool wrote
# ---------------------------------------------------------------------------


def test_overwrite_refuses_a_folder_holding_the_checkpoints_read(tmp_path):
    r = _report(tmp_path / "R", "old")
    (r / "models").mkdir()
    student = r / "models" / "student.pt"
    student.write_bytes(b"weights")
    with pytest.raises(OutputError, match="holds .*student.pt.*reads"):
        check_output_dir(r, overwrite=True, reads=[student, tmp_path / "elsewhere.pt"])
    assert student.read_bytes() == b"weights"
    # reached through a symlink: the same
    (tmp_path / "link").symlink_to(r)
    with pytest.raises(OutputError, match="reads"):
        check_output_dir(tmp_path / "link", overwrite=True, reads=[str(student)])
    assert student.read_bytes() == b"weights"
    # an output folder inside a data folder the run reads
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(OutputError, match="inside"):
        check_output_dir(data / "report", reads=[data])
    # equal to it
    with pytest.raises(OutputError, match="which this run reads"):
        check_output_dir(data, overwrite=True, reads=[data])
    assert data.is_dir()


def test_overwrite_refuses_the_current_folder_and_its_parents(tmp_path, monkeypatch):
    d = tmp_path / "D"
    d.mkdir()
    (d / "precious.txt").write_text("x")
    monkeypatch.chdir(d)
    for target in (".", str(d), "..", str(tmp_path), "/"):
        with pytest.raises(OutputError, match="current folder"):
            check_output_dir(target, overwrite=True)
    assert (d / "precious.txt").read_text() == "x"
    # even as a report of ours
    _report(d, "mine")
    with pytest.raises(OutputError, match="current folder"):
        check_output_dir(".", overwrite=True)
    assert check_output_dir("sub", overwrite=True) == d.resolve() / "sub"


def test_overwrite_refuses_a_folder_that_is_not_a_report(tmp_path):
    out = tmp_path / "stuff"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="not empty"):
        check_output_dir(out)
    with pytest.raises(OutputError, match="not a captum-unicam report"):
        check_output_dir(out, overwrite=True)
    # a metrics.json of someone else is not ours either
    (out / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))
    with pytest.raises(OutputError, match="not a captum-unicam report"):
        check_output_dir(out, overwrite=True)
    (out / "metrics.json").write_text("{broken")
    with pytest.raises(OutputError, match="not a captum-unicam report"):
        check_output_dir(out, overwrite=True)
    assert (out / "thesis.tex").read_text() == "years of work"
    # ours: the marker, an experiment folder; a metrics.json without the marker is not ours
    (out / "metrics.json").write_text(json.dumps({"format": REPORT_FORMAT}))
    assert check_output_dir(out, overwrite=True) == out.resolve()
    (out / "metrics.json").write_text(
        json.dumps({"versions": {"captum-unicam": "0.1"}, "command": "x"})
    )
    assert not is_report_dir(out)
    (out / "metrics.json").unlink()
    (out / "results.json").write_text(json.dumps({"format": "captum-unicam/experiment"}))
    assert is_report_dir(out)
    # and publish_folder refuses it as well when it appears late
    (out / "results.json").unlink()
    tmp = _report(tmp_path / ".stuff.tmp-1-x", "new")
    with pytest.raises(OutputError, match="not a captum-unicam report"):
        publish_folder(tmp, out, overwrite=True, only_reports=True)
    assert (out / "thesis.tex").read_text() == "years of work" and _tag_of(tmp) == "new"


def test_output_symlinks_are_resolved_up_front(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    link = tmp_path / "link"
    link.symlink_to(empty)
    out = check_output_dir(link)
    assert out == empty.resolve()
    with staged_folder(out) as tmp:
        _report(tmp, "new")
    assert _tag_of(link) == "new" and link.is_symlink()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="does not exist"):
        check_output_dir(dangling)
    with pytest.raises(OutputError, match="does not exist"):
        check_output_file(dangling)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        check_output_dir(f, overwrite=True)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_dir(f / "report")
    assert f.read_text() == "x"


def test_output_parent_not_writable(tmp_path, monkeypatch):
    real_access = os.access
    ro = tmp_path / "ro"
    ro.mkdir()
    # root ignores permissions; ask os.access what an ordinary user would be told
    monkeypatch.setattr(
        publish.os, "access", lambda p, mode: False if Path(p) == ro else real_access(p, mode)
    )
    with pytest.raises(OutputError, match="not writable"):
        check_output_dir(ro / "deep" / "report")
    with pytest.raises(OutputError, match="not writable"):
        check_output_file(ro / "student.pt")


def test_train_output_file(tmp_path):
    teacher = tmp_path / "t.pt"
    teacher.write_bytes(b"teacher")
    with pytest.raises(OutputError, match="which this run reads"):
        check_output_file(teacher, overwrite=True, reads=[teacher])
    link = tmp_path / "alias.pt"
    link.symlink_to(teacher)
    with pytest.raises(OutputError, match="which this run reads"):
        check_output_file(link, overwrite=True, reads=[str(teacher)])
    hard = tmp_path / "hard.pt"
    os.link(teacher, hard)
    with pytest.raises(OutputError, match="which this run reads"):
        check_output_file(hard, overwrite=True, reads=[teacher])
    assert teacher.read_bytes() == b"teacher"
    with pytest.raises(OutputError, match="exists"):
        check_output_file(teacher)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_file(teacher / "x.pt")
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path)
    assert (
        check_output_file(tmp_path / "new" / "s.pt", reads=[teacher])
        == tmp_path.resolve() / "new" / "s.pt"
    )
    assert check_output_file(teacher, overwrite=True) == teacher.resolve()
    assert teacher.read_bytes() == b"teacher"


# ---------------------------------------------------------------------------
# 6. cleanup: kills at chosen moments, leftovers, races
# ---------------------------------------------------------------------------


def _writer(*args, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, str(HERE / "hostile_writer.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(ROOT),
    )


STAGES = ["tmp-created", "writing", "before-publish", "moved-aside", "published"]


@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("stage", STAGES)
def test_terminated_run_cleans_up(tmp_path, stage, sig, existing):
    if stage == "moved-aside" and not existing:
        pytest.skip("nothing is moved aside without an existing report")
    out = tmp_path / "X"
    if existing:
        _report(out, "old")
    p = _writer(out, stage, sig, int(existing), "new")
    assert p.returncode == 130, p.stderr
    assert "Traceback" not in p.stderr
    assert _siblings(out) == []  # no .X.tmp-* and no .X.old-* left
    if stage == "published":
        assert _tag_of(out) == "new"
    elif existing:
        assert _tag_of(out) == "old"
    else:
        assert not out.exists()


@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.parametrize("stage", STAGES)
def test_killed_run_is_recovered_by_the_next(tmp_path, stage, existing):
    if stage == "moved-aside" and not existing:
        pytest.skip("nothing is moved aside without an existing report")
    out = tmp_path / "X"
    if existing:
        _report(out, "old")
    p = _writer(out, stage, "SIGKILL", int(existing), "new")
    assert p.returncode == -signal.SIGKILL
    if stage == "moved-aside":
        assert not out.exists() and any(".X.old-" in n for n in _siblings(out))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_output_dir(out, overwrite=True)  # the next run's check recovers
    assert _siblings(out) == []
    if stage == "published":
        assert _tag_of(out) == "new"
    elif existing:
        assert _tag_of(out) == "old"
    else:
        assert not out.exists()
    if stage in ("tmp-created", "writing", "before-publish", "moved-aside"):
        assert any("killed" in str(w.message) for w in caught)
    if stage == "moved-aside":
        assert any("restored" in str(w.message) for w in caught)


def test_live_runs_temporary_folders_are_never_removed(tmp_path):
    out = tmp_path / "X"
    live = tmp_path / f".X.tmp-{os.getppid()}-abcd"  # our parent process is alive
    live.mkdir()
    live_old = tmp_path / f".X.old-{os.getpid()}-abcd"
    _report(live_old, "being replaced")
    no_pid = tmp_path / ".X.tmp-zyxwvuts"  # not a name this tool writes: never touched
    no_pid.mkdir()
    os.utime(no_pid, (0, 0))
    dead = _dead_pid()
    stale = tmp_path / f".X.tmp-{dead}-abcd"
    stale.mkdir()
    other = tmp_path / f".Y.tmp-{dead}-abcd"  # another output's: not ours to judge
    other.mkdir()
    not_ours = tmp_path / f".X.tmp-{dead}-abcd.keep"
    not_ours.mkdir()
    with pytest.warns(UserWarning, match="killed"):
        done = recover_output_dir(out)
    assert len(done) == 1
    assert live.is_dir() and live_old.is_dir() and no_pid.is_dir() and other.is_dir()
    assert not_ours.is_dir()
    assert not stale.exists()
    assert not out.exists()  # a live run's old report is not restored


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_two_overwrite_runs_racing(tmp_path):
    out = tmp_path / "X"
    _report(out, "first")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, str(HERE / "hostile_writer.py"), str(out), "race", "25"]
    procs = [
        subprocess.Popen(
            cmd + [tag], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for tag in ("a", "b")
    ]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    for stdout, stderr, code in results:
        assert code == 0 and "Traceback" not in stderr, stderr
        assert stdout.startswith("refused ")
    assert _tag_of(out).split("-")[0] in ("a", "b")  # complete, never mixed
    assert _siblings(out) == []


def test_race_another_run_publishes_between_our_renames(tmp_path, no_hook):
    out = _report(tmp_path / "X", "old")
    calls = []

    def other_run(stage):  # the other run's final rename lands between ours
        if stage == "moved-aside" and not calls:
            calls.append(stage)
            _report(tmp_path / ".X.tmp-other", "other").rename(out)

    publish._HOOK = other_run
    with staged_folder(out, overwrite=True) as tmp:
        _report(tmp, "ours")
    assert _tag_of(out) == "ours" and _siblings(out) == []


def test_race_others_keep_publishing_gives_an_output_error(tmp_path, no_hook):
    out = _report(tmp_path / "X", "old")
    n = []

    def other_runs(stage):
        if stage == "moved-aside":
            n.append(stage)
            _report(tmp_path / f".X.tmp-other{len(n)}", f"other{len(n)}").rename(out)

    publish._HOOK = other_runs
    with pytest.raises(OutputError, match="another run kept replacing"):
        with staged_folder(out, overwrite=True) as tmp:
            _report(tmp, "ours")
    assert _tag_of(out) == f"other{len(n)}" and _siblings(out) == []


def test_race_folder_appears_without_overwrite(tmp_path, no_hook):
    out = tmp_path / "X"

    def other_run(stage):
        if stage == "before-publish":
            _report(out, "other")

    publish._HOOK = other_run
    with pytest.raises(OutputError, match="appeared while the report was written"):
        with staged_folder(out) as tmp:
            _report(tmp, "ours")
    assert _tag_of(out) == "other" and _siblings(out) == []


def test_terminate_as_interrupt_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the handler raises at once
    assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------------------
# 2. checkpoints: malicious, damaged, oversized, odd
# ---------------------------------------------------------------------------

import functools  # noqa: E402
import pickle  # noqa: E402
import struct  # noqa: E402
import zipfile  # noqa: E402

import torch  # noqa: E402

from captum_unicam.data import load_dataset, loaders  # noqa: E402
from captum_unicam.errors import CheckpointError  # noqa: E402
from captum_unicam.models import (  # noqa: E402
    build_model,
    check_class_names,
    checkpoint_digest,
    checkpoints,  # noqa: E402
    load_checkpoint,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("small_resnet_s", 4, width=2).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(
        path,
        model,
        arch="small_resnet_s",
        num_classes=4,
        class_names=["circle", "square", "triangle", "cross"],
    )
    return path, model


@pytest.fixture
def no_build(monkeypatch):
    """Fails the test if a model is built."""

    def refuse(*a, **k):
        raise AssertionError("build_model was called")

    monkeypatch.setattr(checkpoints, "build_model", refuse)


class _Reduce:
    """Unpickling this calls ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _malicious(kind: str, path: Path, marker: Path) -> None:
    m = str(marker)
    touch = f"open({m!r}, 'w').close()"
    if kind == "zip-os.system":
        torch.save({"state_dict": _Reduce(os.system, f"touch {m}")}, path)
    elif kind == "raw-protocol4-os.system":
        path.write_bytes(pickle.dumps(_Reduce(os.system, f"touch {m}"), protocol=4))
    elif kind == "raw-protocol0-opcodes":
        path.write_bytes(f"cos\nsystem\n(S'touch {m}'\ntR.".encode())
    elif kind == "legacy-torch-eval":
        torch.save(_Reduce(eval, touch), path, _use_new_zipfile_serialization=False)
    elif kind == "zip-exec":
        torch.save({"meta": {}, "x": _Reduce(exec, touch)}, path)
    elif kind == "zip-subprocess":
        torch.save([_Reduce(subprocess.Popen, ["touch", m])], path)
    elif kind == "zip-partial":
        torch.save(_Reduce(functools.partial(os.system, f"touch {m}")), path)
    elif kind == "payload-in-metadata":
        model = build_model("small_resnet_s", 2, width=2)
        torch.save(
            {
                "format": "captum-unicam-checkpoint",
                "version": 2,
                "state_dict": model.state_dict(),
                "meta": {
                    "arch": "small_resnet_s",
                    "num_classes": 2,
                    "extra": {"x": _Reduce(eval, touch)},
                },
            },
            path,
        )
    else:  # pragma: no cover
        raise AssertionError(kind)


MALICIOUS = [
    "zip-os.system",
    "raw-protocol4-os.system",
    "raw-protocol0-opcodes",
    "legacy-torch-eval",
    "zip-exec",
    "zip-subprocess",
    "zip-partial",
    "payload-in-metadata",
]


@pytest.mark.parametrize("kind", MALICIOUS)
def test_malicious_pickles_are_refused_and_never_run(tmp_path, kind, no_build, capfd):
    path, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    _malicious(kind, path, marker)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="evil.pt.*(not loaded|cannot be loaded safely)"):
        load_checkpoint(path, arch="small_resnet_s")
    assert not marker.exists()  # the payload never ran
    assert capfd.readouterr().err == ""  # nothing of torch's leaks to stderr


def test_torchscript_and_bare_pickles_one_clear_error(tmp_path, no_build, capfd):
    lin = torch.nn.Linear(2, 2)
    ts = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(lin, torch.zeros(1, 2)), str(ts))
    capfd.readouterr()
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_checkpoint(ts, arch="small_resnet_s")
    raw = tmp_path / "raw4.pkl"
    raw.write_bytes(pickle.dumps({"fc.weight": [1.0]}, protocol=4))
    with pytest.raises(CheckpointError, match="bare Python pickle"):
        load_checkpoint(raw, arch="small_resnet_s")
    assert capfd.readouterr().err == ""


def _entries(path: Path):
    """name -> (offset of the first data byte, size) of each zip entry."""
    data = path.read_bytes()
    out = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            n, m = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
            out[info.filename] = (info.header_offset + 30 + n + m, info.compress_size)
    return data, out


def _flips(tiny):
    """(label, damaged bytes): flipped bytes inside every kind of content of the file,
    2000 flipped bytes in the weights, truncations, a broken end of the zip."""
    path, _ = tiny
    data, entries = _entries(path)
    cases = []
    biggest = max((e for e in entries if "/data/" in e), key=lambda e: entries[e][1])
    for name, (start, size) in sorted(entries.items()):
        if size == 0:
            continue
        if name.endswith("/data.pkl") or name == biggest:
            offsets = sorted({start, start + size // 3, start + size // 2, start + size - 1})
        elif "/data/" in name and not name.endswith(("/0", "/1", "/2", "/3")):
            continue  # a few tensors are enough
        else:
            offsets = [start + size // 2]
        for off in offsets:
            b = bytearray(data)
            b[off] ^= 0x01
            cases.append((f"{name}@{off - start}", bytes(b)))
    start, size = entries[biggest]
    b = bytearray(data)
    for off in range(start, start + min(size, 2000)):
        b[off] ^= 0xFF
    cases.append(("2000 bytes of weights", bytes(b)))
    for cut in (10, len(data) // 2, len(data) - 30, len(data) - 1):
        cases.append((f"truncated at {cut}", data[:cut]))
    eocd = data.rfind(b"PK\x05\x06")
    b = bytearray(data)
    b[eocd + 1] ^= 0xFF
    cases.append(("end of central directory", bytes(b)))
    cases.append(("empty file", b""))
    return cases


def test_fuzzed_checkpoints_are_all_refused(tmp_path, tiny_ckpt, no_build):
    path, _ = tiny_ckpt
    cases = _flips(tiny_ckpt)
    assert len(cases) > 20
    bad = tmp_path / "bad.pt"
    for _label, content in cases:
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match="bad.pt"):
            load_checkpoint(bad)


def test_undamaged_checkpoint_still_loads(tiny_ckpt):
    path, model = tiny_ckpt
    loaded, meta = load_checkpoint(path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def _rewrite(path: Path, dst: Path, edit, *, redigest: bool = True) -> Path:
    """A crafted file: ``edit`` changes the loaded payload; the digest is recomputed (a
    hostile file can do that) unless ``redigest`` is False."""
    raw = torch.load(path, weights_only=True)
    edit(raw)
    if redigest and isinstance(raw.get("meta"), dict) and isinstance(raw.get("state_dict"), dict):
        raw["meta"]["sha256"] = checkpoint_digest(raw["state_dict"], raw["meta"])
    torch.save(raw, dst)
    return dst


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda r: r["meta"]["build_kwargs"].update(blocks=[20000, 1, 1, 1]),
            r"blocks per stage \(20000, 1, 1, 1\)",
        ),
        (lambda r: r["meta"]["build_kwargs"].update(width=10**7), "width 10000000"),
        (lambda r: r["meta"]["build_kwargs"].update(width=True), "width=True"),
        (lambda r: r["meta"]["build_kwargs"].update(blocks="1111"), "blocks='1111'"),
        (lambda r: r["meta"]["build_kwargs"].update(norm_layer="x"), "unknown build keywords"),
        (lambda r: r["meta"].update(num_classes=10**9), "fc.weight has 4 outputs"),
        (lambda r: r["meta"].update(num_classes=-1), "num_classes=-1"),
        (
            lambda r: r["meta"].update(arch="resnet101", build_kwargs={"cifar_stem": True}),
            r"\(3, 4, 23, 3\) blocks",
        ),
        (lambda r: r["meta"].update(arch="vit_huge"), "does not know"),
        (lambda r: r.update(state_dict=None), "no state_dict of tensors"),
        (lambda r: r.update(state_dict={}), "no state_dict of tensors"),
        (lambda r: r.update(meta=None), "no metadata"),
        (lambda r: r.update(version=99), "upgrade"),
        (lambda r: r.update(version=1), "reads version 2; write it again"),
        (lambda r: r.update(format="something-else"), "unknown format"),
        (lambda r: r["meta"].update(class_names=["a"]), "class_names"),
    ],
)
def test_crafted_metadata_refused_before_any_model_is_built(
    tmp_path, tiny_ckpt, no_build, edit, match
):
    path, _ = tiny_ckpt
    bad = _rewrite(path, tmp_path / "crafted.pt", edit)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(bad)


def test_digest_mismatch_and_files_without_digest(tmp_path, tiny_ckpt, monkeypatch):
    path, model = tiny_ckpt

    def nudge(r):
        r["state_dict"]["fc.bias"][0] += 1.0

    bad = _rewrite(path, tmp_path / "nudged.pt", nudge, redigest=False)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(bad)
    bad = _rewrite(
        path,
        tmp_path / "renamed.pt",
        lambda r: r["meta"].update(class_names=["a", "b", "c", "d"]),
        redigest=False,
    )
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(bad)
    bad = _rewrite(
        path, tmp_path / "nodigest.pt", lambda r: r["meta"].pop("sha256"), redigest=False
    )
    with pytest.raises(CheckpointError, match="no sha256"):
        load_checkpoint(bad)

    # plain state dicts (no digest) are read when the architecture is given
    x = torch.rand(2, 3, 32, 32)
    plain = tmp_path / "plain.pt"
    model = build_model("small_resnet_s", 4).eval()
    torch.save(model.state_dict(), plain)
    with pytest.raises(
        CheckpointError, match=r"blocks per stage \(2, 2, 2, 2\) asked, \(1, 1, 1, 1\) in the file"
    ):
        load_checkpoint(plain, arch="small_resnet_l")
    with torch.no_grad():
        assert torch.equal(load_checkpoint(plain, arch="small_resnet_s")[0](x), model(x))


def test_digest_covers_every_byte_of_every_tensor_and_the_metadata(tiny_ckpt):
    _, model = tiny_ckpt
    state = {k: v.clone() for k, v in model.state_dict().items()}
    meta = {"arch": "small_resnet_s", "extra": {1: "a", "1": "b"}, "t": (1, 2.5)}
    ref = checkpoint_digest(state, meta)
    assert (
        checkpoint_digest({k: v.clone() for k, v in reversed(list(state.items()))}, dict(meta))
        == ref
    )
    assert checkpoint_digest(state, {**meta, "path": "x", "sha256": "y"}) == ref
    for key in ("conv1.weight", "bn1.num_batches_tracked", "fc.bias"):
        n_bytes = state[key].numel() * state[key].element_size()
        for byte in (0, n_bytes - 1):
            changed = {k: v.clone() for k, v in state.items()}
            changed[key].view(-1).view(torch.uint8)[byte] ^= 1
            assert checkpoint_digest(changed, meta) != ref, (key, byte)
    assert checkpoint_digest(state, {**meta, "extra": {1: "a", "1": "c"}}) != ref
    assert checkpoint_digest(state, {**meta, "t": (1, 2.5000001)}) != ref
    assert checkpoint_digest(state, {**meta, "t": ("1", 2.5)}) != ref
    renamed = dict(state)
    renamed["fc.bias2"] = renamed.pop("fc.bias")
    assert checkpoint_digest(renamed, meta) != ref


def test_unreadable_checkpoint(tmp_path, tiny_ckpt, monkeypatch):
    path, _ = tiny_ckpt
    real_open = open

    def deny(p, *a, **k):
        if Path(str(p)) == path:
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(p, *a, **k)

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(CheckpointError, match="permission denied"):
        load_checkpoint(path)


def test_class_names_of_checkpoint_and_data():
    meta = {
        "class_names": ["circle", "square", "triangle", "cross"],
        "num_classes": 4,
        "path": "s.pt",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_class_names(meta, ["circle", "square", "triangle", "cross"], "Student")
        check_class_names(meta, None, "Student")
        check_class_names({"class_names": None, "num_classes": 4}, ["a", "b", "c", "d"])
    with pytest.warns(UserWarning, match=r"Student \(s.pt\).*1: 'square' vs 'dog'"):
        check_class_names(meta, ["circle", "dog", "triangle", "cross"], "Student")
    with pytest.raises(CheckpointError, match="trained on 4 classes.*data has 2"):
        check_class_names(meta, ["cat", "dog"], "Student")
    with pytest.raises(CheckpointError, match="has 4 classes but the data has 3"):
        check_class_names({"class_names": None, "num_classes": 4}, ["a", "b", "c"], "Base")


# ---------------------------------------------------------------------------
# 3. nothing touches the network unless asked
# ---------------------------------------------------------------------------

import socket  # noqa: E402

from captum_unicam import embeddings  # noqa: E402
from captum_unicam.errors import DataSpecError, EmbeddingModelError  # noqa: E402


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to resolve a name or open a connection is recorded and fails."""
    attempts = []

    def connect(self, address, *a, **k):
        attempts.append(("connect", address))
        raise OSError("network blocked by the test")

    def getaddrinfo(host, *a, **k):
        attempts.append(("getaddrinfo", host))
        raise socket.gaierror("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(
        socket, "create_connection", lambda address, *a, **k: connect(None, address)
    )
    return attempts


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    """An empty Hugging Face cache with offline mode off, as on a fresh machine."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    embeddings.clear_cache()
    return hub_constants


def test_hub_id_with_downloads_off_never_touches_the_network(no_network, empty_hub_cache):
    hub_constants = empty_hub_cache
    with pytest.raises(
        EmbeddingModelError, match="not in the local Hugging Face cache.*nothing was fetched"
    ):
        embeddings.embed_labels(["cat", "dog"], model="bert-base-uncased")
    with pytest.raises(EmbeddingModelError, match="not in the local"):
        embeddings.embed_labels(["cat", "dog"], model="some-org/some-model")
    assert no_network == []
    assert "HF_HUB_OFFLINE" not in os.environ and hub_constants.HF_HUB_OFFLINE is False


def test_every_load_runs_offline_and_the_environment_is_restored(monkeypatch):
    import huggingface_hub.constants as hub_constants
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    seen = []

    def fake_from_pretrained(source, **kwargs):
        seen.append(
            (
                os.environ.get("HF_HUB_OFFLINE"),
                os.environ.get("TRANSFORMERS_OFFLINE"),
                hub_constants.HF_HUB_OFFLINE,
                kwargs.get("local_files_only"),
            )
        )
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(embeddings, "_in_hub_cache", lambda repo: True)
    embeddings.clear_cache()
    for model in (None, "bert-base-uncased"):
        with pytest.raises(EmbeddingModelError, match="stop here"):
            embeddings.embed_labels(["cat", "dog"], model=model)
    assert seen == [("1", "1", True, True)] * 2
    assert os.environ["HF_HUB_OFFLINE"] == "0" and "TRANSFORMERS_OFFLINE" not in os.environ
    assert hub_constants.HF_HUB_OFFLINE is False
    # asked for: no offline switch
    seen.clear()
    with pytest.raises(EmbeddingModelError, match="stop here"):
        embeddings.embed_labels(["cat", "dog"], model="bert-base-uncased", allow_download=True)
    assert seen == [("0", None, False, False)]


def test_cifar_download_without_a_network_is_a_data_spec_error(no_network, tmp_path):
    from captum_unicam.data import load_dataset

    with pytest.raises(DataSpecError, match="could not download CIFAR-10"):
        load_dataset(f"cifar10:{tmp_path}", "test", download=True)
    assert no_network  # it tried (download=True asked for it), and was told no


# ---------------------------------------------------------------------------
# 4, 5. image folders: symlink loops, cycles, depth, unreadable / damaged / empty
# ---------------------------------------------------------------------------


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, 255 - value, 0)).save(path)


@pytest.fixture
def folder(tmp_path):
    """Two classes of 3 images, with train/ and test/ parts."""
    root = tmp_path / "pets"
    for part in ("train", "test"):
        for c, name in enumerate(("cat", "dog")):
            for i in range(3):
                _png(root / part / name / f"{i}.png", 40 * c + 10 * i)
    return root


def _paths(ds):
    return [os.path.realpath(p) for p, _ in ds.samples]


def _load(root, **kw):
    return load_dataset(f"imagefolder:{root}", "test", image_size=8, **kw)


def test_symlink_loops_count_each_file_once_and_name_the_link(folder):
    clean = _load(folder)
    assert len(clean) == 6
    cat = folder / "test" / "cat"
    (cat / "self").symlink_to(".")
    (cat / "self2").symlink_to(".")
    (cat / "up").symlink_to("..")  # the parent holds both classes
    (cat / "deep").mkdir()
    (cat / "deep" / "back").symlink_to("../..")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        looped = _load(folder)
    assert _paths(looped) == _paths(clean) and looped.targets == clean.targets
    named = sorted(str(w.message).split("'")[1].rsplit("/", 1)[1] for w in caught)
    assert named == ["back", "self", "self2", "up"]  # each loop named once


def test_second_link_to_a_folder_counts_once(folder, tmp_path):
    extra = folder / "shared"  # inside the data folder (links out of it are skipped)
    _png(extra / "x.png", 7)
    dog = folder / "test" / "dog"
    (dog / "a").symlink_to(extra)
    (dog / "b").symlink_to(extra)
    (dog / "x.png").symlink_to(extra / "x.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _load(folder)
    messages = [str(w.message) for w in caught]
    assert any(re.search(r"skipped the link '[^']*/dog/b'", m) for m in messages)
    assert any("1 link(s) to image files already counted" in m for m in messages)
    assert len(ds) == 7 and _paths(ds).count(str((extra / "x.png").resolve())) == 1


def test_image_symlink_cycle_is_a_clear_error(folder):
    cat = folder / "test" / "cat"
    (cat / "a.png").symlink_to("b.png")
    (cat / "b.png").symlink_to("a.png")
    with pytest.raises(DataSpecError, match="cycle"):
        _load(folder)


def test_dangling_image_link_is_named(folder):
    (folder / "test" / "cat" / "gone.png").symlink_to("nowhere.png")
    with pytest.raises(DataSpecError, match="gone.png.*does not exist"):
        _load(folder)


def test_folder_depth_is_bounded(folder):
    deep = folder / "test" / "cat"
    for _ in range(loaders.MAX_FOLDER_DEPTH + 1):
        deep = deep / "d"
    _png(deep / "x.png", 1)
    with pytest.raises(DataSpecError, match="more than 32 deep"):
        _load(folder)


def test_fifo_named_like_an_image_is_skipped_not_opened(folder):
    os.mkfifo(folder / "test" / "cat" / "pipe.png")
    with pytest.warns(UserWarning, match="not a regular file"):
        assert len(_load(folder)) == 6


def test_unreadable_damaged_and_empty_have_distinct_messages(folder, monkeypatch):
    cat = folder / "test" / "cat"
    # damaged: bytes that are no image, found when read
    (cat / "bad.png").write_bytes(b"\x89PNG not really")
    ds = _load(folder)
    i = [Path(p).name for p, _ in ds.samples].index("bad.png")
    with pytest.raises(DataSpecError, match="damaged or not an image"):
        ds[i]
    (cat / "bad.png").unlink()
    # unreadable file: found before any image is read (root ignores permissions, so the
    # answer of os.access is what an ordinary user gets)
    denied = str(cat / "1.png")
    real_access = os.access
    monkeypatch.setattr(
        loaders.os, "access", lambda p, m: False if str(p) == denied else real_access(p, m)
    )
    with pytest.raises(DataSpecError, match="cannot be read \\(permission denied\\).*1.png"):
        _load(folder)
    monkeypatch.undo()
    # unreadable when opened
    real_open = open

    def deny(p, *a, **k):
        if str(p) == denied:
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(p, *a, **k)

    ds = _load(folder)
    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(DataSpecError, match="permission denied"):
        ds[[p for p, _ in ds.samples].index(denied)]
    monkeypatch.undo()
    # unreadable folder
    real_scandir = os.scandir

    def no_listing(p="."):
        if str(p) == str(cat):
            raise PermissionError(13, "Permission denied", str(p))
        return real_scandir(p)

    monkeypatch.setattr(loaders.os, "scandir", no_listing)
    with pytest.raises(DataSpecError, match="cannot read the folder .*cat.*permission denied"):
        _load(folder)
    monkeypatch.undo()
    # empty
    for p in cat.iterdir():
        p.unlink()
    with pytest.raises(DataSpecError, match="'cat' holds no images"):
        _load(folder)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_unreadable_for_real(folder):
    cat = folder / "test" / "cat"
    os.chmod(cat / "0.png", 0)
    try:
        with pytest.raises(DataSpecError, match="permission denied"):
            _load(folder)
    finally:
        os.chmod(cat / "0.png", 0o644)
    os.chmod(cat, 0)
    try:
        with pytest.raises(DataSpecError, match="permission denied"):
            _load(folder)
    finally:
        os.chmod(cat, 0o755)


def test_spec_paths_name_the_folders_a_spec_reads(tmp_path, monkeypatch):
    from captum_unicam.data import spec_paths

    monkeypatch.setenv("HOME", str(tmp_path))
    assert spec_paths("imagefolder:~/pets") == [tmp_path / "pets"]
    assert spec_paths(f"cifar10:{tmp_path}/c") == [tmp_path / "c"]
    assert spec_paths("controlled:3") == [] and spec_paths("controlled") == []
    data = tmp_path / "pets"
    data.mkdir()
    with pytest.raises(OutputError, match="inside"):
        check_output_dir(data / "report", reads=spec_paths("imagefolder:~/pets"))


def test_output_path_through_a_looping_link(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(OutputError, match="does not exist|loops"):
        check_output_dir(loop)
    with pytest.raises(OutputError, match="loops"):
        check_output_dir(loop / "report")
    with pytest.raises(OutputError, match="loops"):
        check_output_file(loop / "x.pt")


def test_killed_checkpoint_save_leaves_nothing_for_long(tmp_path, tiny_ckpt):
    _, model = tiny_ckpt
    dead = _dead_pid()
    stale = tmp_path / f".student.pt.{dead}-abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".student.pt.{os.getppid()}-abc123.tmp"
    live.write_bytes(b"being written")
    other = tmp_path / f".teacher.pt.{dead}-abc123.tmp"
    other.write_bytes(b"not this save's")
    save_checkpoint(tmp_path / "student.pt", model, arch="small_resnet_s", num_classes=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, "student.pt"]
    )
