"""Careless and hostile input (issue 14): the reliability audit, replayed.

Output folders and files that must not be replaced, kills at chosen moments of writing a
report (an injected hook sends the signal), two runs racing to one folder, malicious
pickles, fuzzed and oversized checkpoints, symlink loops in image folders, no network.
Everything runs on tiny models and data.
"""

from __future__ import annotations

import json
import os
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
    # ours: the marker, a legacy report (versions + command), an experiment folder
    (out / "metrics.json").write_text(json.dumps({"format": REPORT_FORMAT}))
    assert check_output_dir(out, overwrite=True) == out.resolve()
    (out / "metrics.json").write_text(json.dumps({"versions": {"captum-unicam": "0.1"}, "command": "x"}))
    assert is_report_dir(out)
    (out / "metrics.json").unlink()
    (out / "results.json").write_text(json.dumps({"format": "captum-unicam/experiment"}))
    assert is_report_dir(out)
    # and publish_folder refuses it as well when it appears late
    (out / "results.json").unlink()
    tmp = _report(tmp_path / ".stuff.tmp-1-x", "new")
    with pytest.raises(OutputError, match="not a captum-unicam report"):
        publish_folder(tmp, out, overwrite=True)
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
    monkeypatch.setattr(publish.os, "access",
                        lambda p, mode: False if Path(p) == ro else real_access(p, mode))
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
    assert check_output_file(tmp_path / "new" / "s.pt", reads=[teacher]) == tmp_path.resolve() / "new" / "s.pt"
    assert check_output_file(teacher, overwrite=True) == teacher.resolve()
    assert teacher.read_bytes() == b"teacher"


# ---------------------------------------------------------------------------
# 6. cleanup: kills at chosen moments, leftovers, races
# ---------------------------------------------------------------------------


def _writer(*args, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(HERE / "hostile_writer.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))


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
    legacy_recent = tmp_path / ".X.tmp-abcdefgh"
    legacy_recent.mkdir()
    legacy_stale = tmp_path / ".X.tmp-zyxwvuts"
    legacy_stale.mkdir()
    os.utime(legacy_stale, (0, 0))
    dead = _dead_pid()
    stale = tmp_path / f".X.tmp-{dead}-abcd"
    stale.mkdir()
    other = tmp_path / f".Y.tmp-{dead}-abcd"  # another output's: not ours to judge
    other.mkdir()
    not_ours = tmp_path / f".X.tmp-{dead}-abcd.keep"
    not_ours.mkdir()
    with pytest.warns(UserWarning, match="killed"):
        done = recover_output_dir(out)
    assert len(done) == 2
    assert live.is_dir() and live_old.is_dir() and legacy_recent.is_dir() and other.is_dir()
    assert not_ours.is_dir()
    assert not stale.exists() and not legacy_stale.exists()
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
    procs = [subprocess.Popen(cmd + [tag], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for tag in ("a", "b")]
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
