"""Checkpoints at the file boundary: no overwrite unasked (checked again when writing),
only regular files replaced, free space and data folders checked before training, a full
disk in one line with the model kept, and one error line for hostile or diverged files."""

import errno
import math
import os
import stat
import sys

import pytest
import torch
import torchvision
from torch import nn

from captum_unicam.errors import CheckpointError, InputError, OutputError
from captum_unicam.models import (
    MAX_METADATA_DEPTH,
    _files,
    build_model,
    check_writable,
    checkpoint_digest,
    checkpoint_size,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)

torch.set_num_threads(1)

ARGS = {"arch": "small_resnet_s", "num_classes": 4}


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("small_resnet_s", 4, width=2).eval()


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _rescued(message: str) -> str:
    """The path the message says the model was kept at."""
    assert "kept at " in message
    return message.split("kept at ", 1)[1].split(";", 1)[0].strip()


def _file_of(f) -> str:
    """The path of an open file object ("" for an in-memory buffer)."""
    try:
        return os.readlink(f"/proc/self/fd/{f.fileno()}")
    except (OSError, ValueError, AttributeError):
        return ""


@pytest.fixture
def rescue_dir(tmp_path, monkeypatch):
    d = tmp_path / "systemp"
    d.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(d))
    return d


def _char_device(path) -> bool:
    """A copy of /dev/null's node at ``path``; False where the user may not make one."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError):
        return False
    return True


# ---------------------------------------------------------------------------
# 1. no overwrite unasked, checked again at the moment of writing
# ---------------------------------------------------------------------------


def test_second_save_is_refused_and_its_model_kept(tmp_path, rescue_dir):
    path = tmp_path / "student.pt"
    first, second = _model(0), _model(1)
    save_checkpoint(path, first, **ARGS)
    before = path.read_bytes()
    with pytest.raises(OutputError) as info:
        save_checkpoint(path, second, **ARGS)
    msg = str(info.value)
    assert "student.pt" in msg and "--overwrite" in msg and "\n" not in msg
    assert path.read_bytes() == before  # today: replaced silently
    kept, _ = load_checkpoint(_rescued(msg))
    assert _same(kept, second) and os.path.dirname(_rescued(msg)) == str(rescue_dir)
    assert sorted(os.listdir(tmp_path)) == ["student.pt", "systemp"]  # no temporary left
    save_checkpoint(path, second, **ARGS, overwrite=True)
    assert _same(load_checkpoint(path)[0], second)


def test_a_file_created_during_the_write_is_never_replaced(tmp_path, rescue_dir, monkeypatch):
    """Two `train` runs to the same --out: the other run's file appears while this one
    is written (after every earlier check); it must survive, this one is kept aside."""
    path = tmp_path / "student.pt"
    real_save = torch.save

    def racing_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        if not path.exists() and _file_of(f).startswith(str(tmp_path / ".student.pt")):
            path.write_bytes(b"the other run's checkpoint")

    monkeypatch.setattr(torch, "save", racing_save)
    with pytest.raises(
        OutputError, match="student.pt' exists .written by another run meanwhile.*--overwrite"
    ) as info:
        save_checkpoint(path, _model(1), **ARGS)
    monkeypatch.undo()
    assert path.read_bytes() == b"the other run's checkpoint"
    assert _same(load_checkpoint(_rescued(str(info.value)))[0], _model(1))


def test_a_fifo_made_during_an_overwrite_is_not_replaced(tmp_path, rescue_dir, monkeypatch):
    path = tmp_path / "student.pt"
    save_checkpoint(path, _model(0), **ARGS)
    real_save = torch.save

    def racing_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        if path.is_file() and _file_of(f).startswith(str(tmp_path / ".student.pt")):
            path.unlink()
            os.mkfifo(path)

    monkeypatch.setattr(torch, "save", racing_save)
    with pytest.raises(OutputError, match="FIFO.*not a regular file.*kept at") as info:
        save_checkpoint(path, _model(1), **ARGS, overwrite=True)
    monkeypatch.undo()
    assert stat.S_ISFIFO(os.lstat(path).st_mode)
    assert _same(load_checkpoint(_rescued(str(info.value)))[0], _model(1))


def test_overwrite_replaces_a_fifo_never(tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="FIFO.*not a regular file"):
        save_checkpoint(fifo, _model(), **ARGS, overwrite=True)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    link = tmp_path / "link.pt"
    link.symlink_to(fifo)
    with pytest.raises(OutputError, match="symlink to .*pipe.pt"):
        save_checkpoint(link, _model(), **ARGS, overwrite=True)
    assert link.is_symlink() and stat.S_ISFIFO(os.stat(link).st_mode)
    folder = tmp_path / "folder.pt"
    folder.mkdir()
    with pytest.raises(OutputError, match="a folder"):
        save_checkpoint(folder, _model(), **ARGS, overwrite=True)
    with pytest.raises(OutputError, match="FIFO"):
        check_writable(fifo, overwrite=True)


def test_overwrite_replaces_a_device_node_never(tmp_path):
    """`--out /dev/null --overwrite` as root: shown on a copy of the node."""
    null = tmp_path / "null"
    if not _char_device(null):
        pytest.skip("this user may not create device nodes")
    with pytest.raises(OutputError, match="character device"):
        save_checkpoint(null, _model(), **ARGS, overwrite=True)
    with pytest.raises(OutputError, match="character device"):
        check_writable(null, overwrite=True)
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert os.lstat(null).st_rdev == os.makedev(1, 3)


def test_dev_null_is_never_replaced(tmp_path):
    """The real /dev/null only where it cannot be replaced anyway (not root): the path
    check must refuse it before any write."""
    if os.geteuid() == 0:
        target = tmp_path / "devnull"
        if not _char_device(target):
            pytest.skip("root without CAP_MKNOD")
    else:
        target = "/dev/null"
    with pytest.raises(OutputError, match="not a regular file"):
        save_checkpoint(target, _model(), **ARGS, overwrite=True)
    assert stat.S_ISCHR(os.lstat(target).st_mode)


# ---------------------------------------------------------------------------
# 2. fail before the work: the destination, the data folders, the free space
# ---------------------------------------------------------------------------


def test_check_writable_before_training(tmp_path, monkeypatch):
    data = tmp_path / "shapes"
    (data / "train" / "circle").mkdir(parents=True)
    assert check_writable(tmp_path / "out" / "m.pt") == tmp_path / "out" / "m.pt"
    with pytest.raises(OutputError, match="inside .*shapes.*which this run reads"):
        check_writable(data / "train" / "m.pt", forbidden_roots=[data])
    with pytest.raises(OutputError, match="inside"):
        check_writable(data / ".." / "shapes" / "m.pt", forbidden_roots=[str(data)])
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"x")
    with pytest.raises(OutputError, match="teacher.pt"):
        check_writable(teacher, overwrite=True, forbidden_roots=[teacher])
    with pytest.raises(OutputError, match="exists.*--overwrite"):
        check_writable(teacher)
    assert check_writable(teacher, overwrite=True) == teacher
    with pytest.raises(OutputError, match="is not a folder"):
        check_writable(teacher / "m.pt")
    monkeypatch.setattr(_files.os, "access", lambda *a: False)
    with pytest.raises(OutputError, match="not writable"):
        check_writable(tmp_path / "m.pt")


def test_check_writable_free_space(tmp_path, monkeypatch):
    model = _model()
    size = checkpoint_size(model)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, **ARGS)
    assert os.path.getsize(path) <= size  # an upper estimate ...
    assert size < 3 * os.path.getsize(path)  # ... not a wild one (mostly headers here)
    usage = _files.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(_files.shutil, "disk_usage", lambda p: usage._replace(free=size))
    with pytest.raises(OutputError) as info:
        check_writable(tmp_path / "n.pt", estimated_bytes=size)
    need = size + _files.MARGIN_BYTES + size // 20
    assert f"needs {need} bytes" in str(info.value) and f"has {size} bytes free" in str(info.value)
    monkeypatch.setattr(_files.shutil, "disk_usage", lambda p: usage._replace(free=need))
    check_writable(tmp_path / "n.pt", estimated_bytes=size)


def _disk_full_in(folder, error):
    real_save = torch.save

    def save(obj, f, *a, **k):
        if _file_of(f).startswith(str(folder) + os.sep):
            f.write(b"partial bytes")
            raise error
        return real_save(obj, f, *a, **k)

    return save


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 33984 vs 33880"),
    ],
)
def test_disk_full_is_one_line_and_the_model_is_kept(tmp_path, rescue_dir, monkeypatch, error):
    out = tmp_path / "full"
    out.mkdir()
    old = out / "student.pt"
    save_checkpoint(old, _model(0), **ARGS)
    before = old.read_bytes()
    monkeypatch.setattr(torch, "save", _disk_full_in(out, error))
    for path, overwrite in ((out / "new.pt", False), (old, True)):
        with pytest.raises(OutputError) as info:
            save_checkpoint(path, _model(1), **ARGS, overwrite=overwrite)
        msg = str(info.value)
        assert msg.startswith(f"disk full while writing checkpoint {str(path)!r}: ")
        assert "bytes free; the trained model was kept at " in msg and "\n" not in msg
        assert _same(load_checkpoint(_rescued(msg))[0], _model(1))
    assert old.read_bytes() == before and sorted(os.listdir(out)) == ["student.pt"]


def test_a_write_failure_everywhere_says_so(tmp_path, rescue_dir, monkeypatch):
    monkeypatch.setattr(torch, "save", _disk_full_in(tmp_path, OSError(errno.ENOSPC, "full")))
    with pytest.raises(OutputError, match="disk full.*could be kept nowhere"):
        save_checkpoint(tmp_path / "m.pt", _model(), **ARGS)


# ---------------------------------------------------------------------------
# 3. one error line at the checkpoint boundary
# ---------------------------------------------------------------------------


def test_nan_and_inf_weights_are_named(tmp_path):
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    state = model.state_dict()
    state["layer4.1.conv2.weight"][0, 0, 0, 0] = math.nan
    state["fc.weight"][1, 2] = math.inf
    state["bn1.running_var"][0] = -math.inf
    path = tmp_path / "diverged.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, arch="resnet18")
    msg = str(info.value)
    assert "3 tensors hold NaN or Inf: bn1.running_var, layer4.1.conv2.weight, fc.weight" in msg
    assert "diverged" in msg and "\n" not in msg
    model.load_state_dict(state)
    with pytest.raises(InputError, match="3 tensors hold NaN or Inf.*nothing is written"):
        save_checkpoint(tmp_path / "m.pt", model, arch="resnet18", num_classes=3)
    assert not (tmp_path / "m.pt").exists()


def test_nan_in_a_checkpoint_of_ours(tmp_path):
    model = _model()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, **ARGS)
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["layer1.0.bn1.weight"][0] = math.nan
    obj["meta"]["sha256"] = checkpoint_digest(obj["state_dict"], obj["meta"])
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=r"1 tensors hold NaN or Inf: layer1\.0\.bn1\.weight"):
        load_checkpoint(path)


def test_metadata_nested_5000_deep(tmp_path):
    deep = None
    for _ in range(5000):
        deep = [deep]
    path = tmp_path / "deep.pt"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(30000)  # torch.save itself recurses
    try:
        meta = {"arch": "small_resnet_s", "num_classes": 4, "extra": deep, "sha256": "0"}
        torch.save(
            {
                "format": "captum-unicam-checkpoint",
                "version": 2,
                "state_dict": _model().state_dict(),
                "meta": meta,
            },
            path,
        )
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(CheckpointError, match=f"nested deeper than {MAX_METADATA_DEPTH} levels"):
        load_checkpoint(path)
    with pytest.raises(InputError, match=f"nested deeper than {MAX_METADATA_DEPTH} levels"):
        save_checkpoint(tmp_path / "m.pt", _model(), **ARGS, extra={"x": deep})
    assert not (tmp_path / "m.pt").exists()


def test_a_fifo_or_a_device_as_checkpoint_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="pipe.pt.* is a FIFO .*not a regular file"):
        load_checkpoint(fifo, arch="small_resnet_s")  # today: "does not exist"
    zero = tmp_path / "zero.pt"
    zero.symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="character device .*/dev/zero.*not a regular"):
        load_checkpoint(zero, arch="small_resnet_s")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")


def test_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    model = _model()
    save_checkpoint("~/sub/m.pt", model, **ARGS)
    assert (tmp_path / "sub" / "m.pt").is_file()
    loaded, meta = load_checkpoint("~/sub/m.pt")
    assert _same(loaded, model) and meta["path"] == str(tmp_path / "sub" / "m.pt")
    assert read_checkpoint("~/sub/m.pt")[1]["arch"] == "small_resnet_s"
    assert check_writable("~/sub/n.pt") == tmp_path / "sub" / "n.pt"


# ---------------------------------------------------------------------------
# 4./5. what is written loads; the metadata the report needs
# ---------------------------------------------------------------------------


def test_a_model_of_another_architecture_is_refused_before_writing(tmp_path):
    with pytest.raises(
        InputError,
        match=r"^the weights of the model do not fit a small_resnet_s "
        r"with 4 classes \(blocks per stage .*nothing is written",
    ):
        save_checkpoint(
            tmp_path / "a.pt", torchvision.models.resnet18(weights=None, num_classes=4), **ARGS
        )
    narrow = _model()
    del narrow._captum_unicam_build  # as if built by the user's own code
    with pytest.raises(InputError, match="width 8 asked, conv1 has 2.*nothing is written"):
        save_checkpoint(tmp_path / "b.pt", narrow, **ARGS)
    user = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 4))
    with pytest.raises(InputError, match="nothing is written"):
        save_checkpoint(tmp_path / "c.pt", user, **ARGS)
    assert list(tmp_path.iterdir()) == []
    save_checkpoint(tmp_path / "d.pt", narrow, **ARGS, build_kwargs={"width": 2})
    assert _same(load_checkpoint(tmp_path / "d.pt")[0], narrow)


def test_preprocessing_and_accuracy_are_recorded(tmp_path):
    prep = {"image_size": 32, "resize": "shorter-side-crop", "normalize": "none", "augment": False}
    save_checkpoint(
        tmp_path / "m.pt",
        _model(),
        **ARGS,
        class_names=list("abcd"),
        preprocessing=prep,
        accuracy=0.875,
    )
    _, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["preprocessing"] == prep and meta["accuracy"] == 0.875
    assert meta["class_names"] == list("abcd")
    for bad in (1.5, -0.1, "high", True):
        with pytest.raises(InputError, match="accuracy"):
            save_checkpoint(tmp_path / "n.pt", _model(), **ARGS, accuracy=bad)
    with pytest.raises(InputError, match="image_size"):
        save_checkpoint(tmp_path / "n.pt", _model(), **ARGS, preprocessing={"image_size": 0})
    assert not (tmp_path / "n.pt").exists()
