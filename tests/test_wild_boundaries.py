"""The command line and the API in the wild (issue 23): every expected failure is one line and
exit 2 (CLI) or an error of the package's family (API), with the cause and the fix.

Each test replays one case that failed before: a map holding Inf, float64 or numpy inputs,
a str target, a class folder named ``$\\notacommand$``, a full disk while the report is
written, ``compare --ig-steps 0``, ``~`` in ``--flag=~/x``, a FIFO or ``/dev/zero`` given
as a checkpoint, an image size that cannot fit in memory, a path starting with ``=`` in a
CSV table.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
from pathlib import Path

import pytest
import torch

from captum_unicam import UniCAM, cli
from captum_unicam.errors import CaptumUnicamError, InputError, OutputError
from captum_unicam.metrics import feature_similarity_score, relevance_score
from captum_unicam.models import build_model, save_checkpoint
from captum_unicam.output import publish
from captum_unicam.output.publish import REPORT_FORMAT
from captum_unicam.perturb import mask_multiply, road_impute
from captum_unicam.pipeline import memory

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["circle", "square", "triangle", "cross"]
MATH = "$\\notacommand$"


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
    }


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    s = build_model("small_resnet_s", 4, width=2).eval()
    b = build_model("small_resnet_s", 4, width=2).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16, generator=g)
    y = torch.arange(8) % 4
    return s, b, x, y


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


def _one_error(err: str, *patterns: str) -> str:
    """The one error line (information lines such as the preprocessing may precede it)."""
    lines = [line for line in err.strip().splitlines() if " error: " in line]
    assert len(lines) == 1, err
    assert err.strip().splitlines()[-1] == lines[0] and "Traceback" not in err
    for pattern in patterns:
        assert pattern in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------
# API: maps holding NaN or Inf name the map and the likely cause
# ---------------------------------------------------------------------------


def test_mask_multiply_on_inf_maps_names_the_map_and_the_weights():
    """Before: ValueError "attributions contain NaN or Inf; fix the attribution method"."""
    x = torch.rand(3, 3, 4, 4)
    maps = torch.rand(3, 1, 2, 2)
    maps[1, 0, 0, 1] = float("inf")
    maps[2, 0, 1, 1] = float("nan")
    maps[2, 0, 1, 0] = float("inf")
    with pytest.raises(InputError) as info:
        mask_multiply(x, maps)
    msg = str(info.value)
    assert isinstance(info.value, CaptumUnicamError) and isinstance(info.value, ValueError)
    assert msg.startswith(
        "mask_multiply: the saliency map of example 1 (attributions[1]) holds "
        "Inf "
        "(1 of 4 values; 2 of 3 maps hold NaN or Inf)"
    )
    assert "Inf or NaN weights" in msg and "torch.nan_to_num" in msg
    with pytest.raises(InputError, match=r"example 0 \(attributions\[0\]\) holds NaN and Inf"):
        road_impute(x, maps[2:].expand(3, 1, 2, 2).clone())


def test_inf_weights_reach_mask_multiply_as_one_input_error(models):
    """A model whose weights hold Inf gives Grad-CAM maps of NaN/Inf: the metric's error is the
    package's, naming the weights."""
    from captum.attr import LayerGradCam

    s, b, x, y = models
    broken = build_model("small_resnet_s", 4, width=2).eval()
    broken.load_state_dict(s.state_dict())
    with torch.no_grad():
        broken.fc.weight[0, 0] = float("inf")
    cam = LayerGradCam(broken, broken.layer4).attribute(x, target=y)
    assert not bool(torch.isfinite(cam).all())  # the oracle: Captum's own maps are broken
    with pytest.raises(
        InputError,
        match=r"attributions contain NaN or Inf \(8 of 8 maps\); the "
        "explained model most likely has Inf or NaN weights",
    ):
        relevance_score(broken, broken.layer4, x, target=y, attributions=cam)
    with pytest.raises(InputError, match="most likely has Inf or NaN weights"):
        mask_multiply(x, cam)


# ---------------------------------------------------------------------------
# API: dtype and type of the inputs, str targets
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["rs", "fss"])
def test_float64_inputs_on_a_float32_model_name_the_dtypes(models, metric):
    """Before: RuntimeError "expected scalar type Double but found Float" from torch."""
    s, b, x, y = models
    kwargs = dict(base_forward_func=b, base_layer=b.layer4)
    with pytest.raises(InputError) as info:
        if metric == "rs":
            relevance_score(s, s.layer4, x.double(), target=y, **kwargs)
        else:
            feature_similarity_score(s, s.layer4, x.double(), **kwargs)
    assert str(info.value) == (
        "inputs are torch.float64 but the model's parameters are "
        "torch.float32; convert the inputs with inputs.to(torch.float32) "
        "(or the model with model.to(torch.float64))."
    )
    # the fix works, and gives the float32 value
    fixed = relevance_score(s, s.layer4, x.double().float(), target=y, **kwargs)
    assert torch.equal(fixed, relevance_score(s, s.layer4, x, target=y, **kwargs))


def test_float64_model_and_inputs_are_accepted(models):
    s, b, x, y = models
    s64 = build_model("small_resnet_s", 4, width=2).eval()
    s64.load_state_dict(s.state_dict())
    s64 = s64.double()
    value = relevance_score(s64, s64.layer4, x.double(), target=y)
    assert torch.isfinite(value).all()


@pytest.mark.parametrize("method", ["attribute", "score"])
def test_numpy_inputs_to_unicam_are_refused_like_captum(models, method):
    """Before: Captum's AssertionError "`inputs` must be a torch.Tensor ... found numpy"."""
    s, b, x, y = models
    unicam = UniCAM(s, s.layer4, b, b.layer4)
    with pytest.raises(InputError) as info:
        getattr(unicam, method)(x.numpy(), target=y)
    msg = str(info.value)
    assert "got numpy.ndarray" in msg and "torch.as_tensor(x, dtype=torch.float32)" in msg
    with pytest.raises(InputError, match="got numpy.ndarray, torch.Tensor"):
        getattr(unicam, method)((x, x.numpy()), target=y)
    # the documented fix gives the tensor's result
    fixed = getattr(unicam, method)(torch.as_tensor(x.numpy(), dtype=torch.float32), target=y)
    expected = getattr(unicam, method)(x, target=y)
    for a, e in zip(
        fixed if isinstance(fixed, tuple) else (fixed,),
        expected if isinstance(expected, tuple) else (expected,),
        strict=True,
    ):
        assert torch.equal(a, e)


@pytest.mark.parametrize("target", ["cat", ["cat"] * 8, b"cat", [[0, 1], [2]]])
def test_str_target_to_the_metrics_says_what_target_may_be(models, target):
    """Before: TypeError "new(): invalid data type 'str'" from torch."""
    s, b, x, y = models
    with pytest.raises(InputError) as info:
        relevance_score(s, s.layer4, x, target=target, base_forward_func=b, base_layer=b.layer4)
    msg = str(info.value)
    assert msg.startswith("target must hold one integer class index per sample (8)")
    assert "class_to_idx" in msg


def test_str_target_to_unicam(models):
    s, b, x, y = models
    with pytest.raises(InputError, match="`target` must be None"):
        UniCAM(s, s.layer4, b, b.layer4).attribute(x, target="cat")


# ---------------------------------------------------------------------------
# CLI: a class folder named like mathtext
# ---------------------------------------------------------------------------


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, 255 - value, (7 * value) % 256)).save(path)


def test_plain_text_escapes_every_dollar():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from captum_unicam import viz

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    text = ax.set_title(viz._plain(MATH + " costs $5"))
    fig.canvas.draw()  # before: ValueError from mathtext ("Unknown symbol: \notacommand")
    assert text._preprocess_math(text.get_text()) == (MATH + " costs $5", False)


def test_explain_on_a_mathtext_class_folder_draws_its_name(tmp_path, capsys, labels):
    """Before: exit 1 and a mathtext traceback after all the computing. Now the report is
    written and the class name is drawn as written."""
    root = tmp_path / "data"
    classes = sorted([MATH, "dog"])
    for c, name in enumerate(classes):
        for i in range(6):
            _png(root / "test" / name / f"{i}.png", 100 * c + 15 * i)
        for i in range(2):
            _png(root / "train" / name / f"{i}.png", 100 * c + 15 * i + 7)
    s = _ckpt(tmp_path / "s.pt", 0, classes, image_size=16)
    b = _ckpt(tmp_path / "b.pt", 1, classes, image_size=16)
    out = tmp_path / "report"
    code, stdout, err = _run(capsys, _argv("explain", s, b, out, data=f"imagefolder:{root}"))
    assert code == 0, err
    assert (out / "index.html").is_file() and "report written" in stdout
    figures = list((out / "figures").glob("*.png"))
    assert figures, sorted(p.name for p in out.rglob("*"))
    assert (f"true: {MATH}", False) in labels  # the row label of that class, drawn as written


@pytest.fixture
def labels(monkeypatch):
    """(text, is mathtext) of every y label drawn (the grids' class names)."""
    from matplotlib.axes import Axes

    texts, real = [], Axes.set_ylabel

    def record(self, *args, **kwargs):
        real(self, *args, **kwargs)
        label = self.yaxis.label  # what matplotlib will draw, read now (save_figure clears it)
        texts.append(label._preprocess_math(label.get_text()))

    monkeypatch.setattr(Axes, "set_ylabel", record)
    return texts


# ---------------------------------------------------------------------------
# a full disk while the report is written
# ---------------------------------------------------------------------------


def _fake_report(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"format": REPORT_FORMAT, "tag": tag}))
    (folder / "index.html").write_text(tag)
    return folder


def test_full_disk_in_staged_folder_is_one_output_error(tmp_path):
    out = _fake_report(tmp_path / "R", "old")
    with pytest.raises(OutputError) as info:
        with publish.staged_folder(out, overwrite=True) as tmp:
            (tmp / "a.txt").write_text("x")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "b.png"))
    msg = str(info.value)
    assert "No space left on device" in msg and "the previous report there is kept" in msg
    assert "free some space" in msg and "\n" not in msg
    assert json.loads((out / "metrics.json").read_text())["tag"] == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R"]  # the temp folder removed


def test_other_os_errors_keep_their_traceback(tmp_path):
    with pytest.raises(PermissionError):
        with publish.staged_folder(tmp_path / "R"):
            raise PermissionError(errno.EACCES, "Permission denied")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_while_quantify_writes_its_report(pair, tmp_path, capsys, monkeypatch):
    """Before: exit 1, ``OSError: [Errno 28] No space left on device`` and a traceback."""
    out = _fake_report(tmp_path / "R", "old")
    real = Path.write_text

    def full(self, *args, **kwargs):
        if ".tmp-" in str(self) and self.name.endswith(".md"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    argv = _argv("quantify", pair["student"], pair["base"], out, "--overwrite")
    code, _, err = _run(capsys, argv)
    assert code == 2, err
    _one_error(err, "No space left on device", "the previous report there is kept")
    assert json.loads((out / "metrics.json").read_text())["tag"] == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R"]


# ---------------------------------------------------------------------------
# CLI: argument types
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_compare_ig_steps_must_be_positive(pair, tmp_path, capsys, steps):
    """Before: ``--ig-steps 0`` reached Captum's AssertionError (exit 1, a traceback)."""
    argv = [
        "compare",
        "--student",
        pair["student"],
        "--base",
        pair["base"],
        "--data",
        "controlled",
        "--out",
        str(tmp_path / "c"),
        "--ig-steps",
        steps,
    ]
    code, _, err = _run(capsys, argv)
    assert code == 2
    _one_error(err, "--ig-steps", "must be a positive integer")


def test_tilde_is_expanded_in_every_path_flag(monkeypatch, tmp_path):
    """Before: ``--student=~/s.pt`` stayed ``~/s.pt`` (no shell expands after ``=``)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    parser = cli.build_parser()
    home = str(tmp_path)
    args = parser.parse_args(
        [
            "quantify",
            "--student=~/s.pt",
            "--base",
            "~/b.pt",
            "--teacher=~/t.pt",
            "--data=imagefolder:~/pets",
            "--out=~/rep",
            "--label-model=~/enc",
        ]
    )
    assert (args.student, args.base, args.teacher) == (
        f"{home}/s.pt",
        f"{home}/b.pt",
        f"{home}/t.pt",
    )
    assert args.data == f"imagefolder:{home}/pets" and args.out == f"{home}/rep"
    assert args.label_model == f"{home}/enc"
    args = parser.parse_args(
        [
            "train",
            "--data=controlled",
            "--arch",
            "small_resnet_s",
            "--teacher=~/t.pt",
            "--transfer=imagefolder:~/u",
            "--out=~/s.pt",
        ]
    )
    assert (args.teacher, args.transfer, args.out) == (
        f"{home}/t.pt",
        f"imagefolder:{home}/u",
        f"{home}/s.pt",
    )
    args = parser.parse_args(
        [
            "compare",
            "--student=~/s.pt",
            "--base=~/b.pt",
            "--data=controlled",
            "--out=~/c",
            "--random-label-student=~/r.pt",
        ]
    )
    assert (args.student, args.base, args.out, args.random_label_student) == (
        f"{home}/s.pt",
        f"{home}/b.pt",
        f"{home}/c",
        f"{home}/r.pt",
    )
    args = parser.parse_args(["demo", "--out=~/d", "--cache-dir=~/cache"])
    assert (args.out, args.cache_dir) == (f"{home}/d", f"{home}/cache")
    # a hub id or a name without ~ is left as it is
    args = parser.parse_args(
        [
            "explain",
            "--student",
            "s.pt",
            "--base",
            "b.pt",
            "--data",
            "controlled:3",
            "--out",
            "r",
            "--label-model",
            "org/model",
        ]
    )
    assert (args.student, args.data, args.label_model) == ("s.pt", "controlled:3", "org/model")


def test_tilde_student_is_found(pair, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(Path(pair["student"]).parent))
    out = tmp_path / "rep"
    argv = _argv("quantify", "~/student.pt", pair["base"], out)
    assert argv[1:3] == ["--student", "~/student.pt"]
    code, _, err = _run(capsys, [argv[0], "--student=~/student.pt"] + argv[3:])
    assert code == 0, err
    assert (out / "metrics.json").is_file()


@pytest.mark.parametrize("kind", ["fifo", "dev-zero-link"])
def test_fifo_or_device_checkpoint_is_not_a_regular_file(pair, tmp_path, capsys, kind):
    """Before: "Student checkpoint ... does not exist" (the pipeline's own pre-check)."""
    path = tmp_path / "student.pt"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    code, _, err = _run(capsys, _argv("quantify", path, pair["base"], tmp_path / "rep"))
    assert code == 2
    line = _one_error(err, "not a regular file")
    assert "does not exist" not in line
    assert ("a FIFO" in line or "fifo" in line.lower()) if kind == "fifo" else "/dev/zero" in line


# ---------------------------------------------------------------------------
# the memory estimate of --image-size
# ---------------------------------------------------------------------------


def test_memory_formula_by_hand():
    assert memory.estimated_bytes(224, 32) == 32 * 3 * 224 * 224 * 4 * 100 == 1_926_758_400
    assert memory.estimated_bytes(5000, 32) == 960_000_000_000


def test_available_memory_from_proc_meminfo(monkeypatch, tmp_path):
    import builtins

    real_open = builtins.open
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:  1000 kB\nMemFree:  10 kB\nMemAvailable:  2048 kB\n")
    monkeypatch.setitem(__import__("sys").modules, "psutil", None)  # as if not installed
    monkeypatch.setattr(
        builtins, "open", lambda f, *a, **k: real_open(fake if f == "/proc/meminfo" else f, *a, **k)
    )
    assert memory.available_memory() == 2048 * 1024


@pytest.mark.parametrize("command", ["explain", "quantify", "train"])
def test_huge_image_size_is_refused_before_loading(pair, tmp_path, capsys, monkeypatch, command):
    """Before: ``--image-size 5000`` grew to 22 GB and was killed by the kernel."""
    monkeypatch.setattr(memory, "available_memory", lambda: 8 * 10**9)

    def refuse(*a, **k):
        raise AssertionError("data or models were loaded")

    from captum_unicam.pipeline import runs, training

    monkeypatch.setattr(runs, "load_pair", refuse)
    monkeypatch.setattr(training, "train_checkpoint", refuse)
    if command == "train":
        argv = [
            "train",
            "--data",
            "controlled",
            "--arch",
            "small_resnet_s",
            "--out",
            str(tmp_path / "s.pt"),
            "--image-size",
            "5000",
            "--batch-size",
            "64",
        ]
        need = "1.92e+03 GB"
    else:
        argv = _argv(
            command, pair["student"], pair["base"], tmp_path / "rep", "--image-size", "5000"
        )
        need = "150 GB"  # batch 5
    code, _, err = _run(capsys, argv)
    assert code == 2
    _one_error(
        err,
        "--image-size 5000 needs about " + need,
        "but 8 GB are available",
        "--force",
        "--batch-size",
    )
    assert not (tmp_path / "rep").exists() and not (tmp_path / "s.pt").exists()


def test_force_skips_the_memory_estimate(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 10**6)
    memory.check_image_memory(5000, 32, force=True)
    memory.check_image_memory(None, 32)  # the checkpoints' size: nothing to estimate
    with pytest.raises(InputError, match="force=True"):
        memory.check_image_memory(5000, 32)
    monkeypatch.setattr(memory, "available_memory", lambda: None)
    memory.check_image_memory(5000, 32)  # unknown: not refused


def test_force_flag_reaches_the_request(pair, tmp_path):
    args = cli.build_parser().parse_args(
        _argv("quantify", pair["student"], pair["base"], tmp_path, "--force")
    )
    from captum_unicam.pipeline.requests import QuantifyRequest, request_from

    assert request_from(QuantifyRequest, args).force is True


# ---------------------------------------------------------------------------
# CSV cells a spreadsheet would evaluate
# ---------------------------------------------------------------------------


def test_only_one_csv_writer_in_the_package():
    """Every CSV goes through output.tables.csv_table (which escapes formulas)."""
    found = []
    for path in (ROOT / "captum_unicam").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if re.search(r"csv\.(writer|DictWriter)\(", text):
            found.append(path.relative_to(ROOT).as_posix())
    assert found == ["captum_unicam/output/tables.py"]


def test_formula_checkpoint_path_is_escaped_in_models_csv(pair, tmp_path, capsys, monkeypatch):
    """A checkpoint path starting with ``=`` is text in tables/models.csv, not a formula."""
    d = tmp_path / "ck"
    d.mkdir()
    os.symlink(pair["student"], d / "=HYPERLINK(1).pt")
    monkeypatch.chdir(d)
    out = tmp_path / "rep"
    code, _, err = _run(capsys, _argv("quantify", "=HYPERLINK(1).pt", pair["base"], out))
    assert code == 0, err
    rows = list(csv.reader(io.StringIO((out / "tables" / "models.csv").read_text())))
    cells = [cell for row in rows for cell in row]
    assert "'=HYPERLINK(1).pt" in cells
    assert not any(cell.startswith(("=", "+", "@")) for cell in cells)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_anywhere_is_one_line(pair, tmp_path, capsys, monkeypatch, code):
    """A full disk outside the report folder (a cache, a temporary file): one line, exit 2;
    any other OSError is a bug and keeps its traceback."""
    from captum_unicam.pipeline import runs

    def full(*args, **kwargs):
        raise OSError(code, os.strerror(code), "/tmp/cache/x.bin")

    monkeypatch.setattr(runs, "quantify", full)
    argv = _argv("quantify", pair["student"], pair["base"], tmp_path / "rep")
    exit_code, _, err = _run(capsys, argv)
    assert exit_code == 2
    _one_error(err, os.strerror(code), "/tmp/cache/x.bin", "free some space")

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(runs, "quantify", broken)
    with pytest.raises(OSError, match="Input/output error"):
        cli.main(argv)
