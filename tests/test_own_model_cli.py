"""A model of an architecture the library does not define, brought to explain, quantify
and compare with --model package.module:factory (weights still read with
weights_only=True), layers named by dotted path, and a plain-state-dict Teacher given
with --teacher-arch or --teacher-model."""

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from captum_unicam import cli
from captum_unicam.models import build_model, save_checkpoint

CLASSES = ["cat", "dog", "fox", "owl"]

MODULE = textwrap.dedent('''
    import torch
    from torch import nn


    class Block(nn.Module):
        def __init__(self, c_in, c_out):
            super().__init__()
            self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
            self.bn = nn.BatchNorm2d(c_out)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)))


    def small_cnn(num_classes=10):
        """Not a ResNet: no conv1 / layer1..layer4 / fc."""
        return nn.Sequential(Block(3, 4), nn.MaxPool2d(2), Block(4, 8), Block(8, 8),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


    def wide_cnn(num_classes=10):
        return nn.Sequential(Block(3, 6), nn.MaxPool2d(2), Block(6, 8), Block(8, 8),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
''')


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """mynets_cli.py (on sys.path while the tests run), plain state dicts of its models,
    a plain small-ResNet Teacher, and ROOT/{train,test}/<class>/*.png at 16 px."""
    d = tmp_path_factory.mktemp("own_model")
    (d / "mynets_cli.py").write_text(MODULE)
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(d))
    import mynets_cli

    paths = {}
    for seed, (role, factory) in enumerate(
        (
            ("student", mynets_cli.small_cnn),
            ("base", mynets_cli.small_cnn),
            ("wide", mynets_cli.wide_cnn),
        )
    ):
        torch.manual_seed(seed)
        torch.save(factory(num_classes=4).state_dict(), d / f"{role}.pt")
        paths[role] = str(d / f"{role}.pt")
    torch.manual_seed(7)
    torch.save(build_model("small_resnet_s", 4).state_dict(), d / "teacher.pt")
    paths["teacher"] = str(d / "teacher.pt")
    rng = np.random.default_rng(0)
    images = []
    for part in ("train", "test"):
        for c, name in enumerate(CLASSES):
            (d / "data" / part / name).mkdir(parents=True)
            for i in range(3):
                img = rng.integers(0, 120, size=(16, 16, 3)).astype(np.uint8)
                img[4:12, 2 + c : 8 + c] = 230
                Image.fromarray(img).save(d / "data" / part / name / f"{i}.png")
                if part == "test":
                    images.append((torch.from_numpy(img).permute(2, 0, 1).float() / 255, c))
    yield {
        "dir": d,
        "paths": paths,
        "data": "imagefolder:" + str(d / "data"),
        "test": images,
        "module": mynets_cli,
    }
    mp.undo()


def _accuracy(model, images) -> float:
    """By hand: argmax of the logits of each test image against its folder's class."""
    model.eval()
    with torch.no_grad():
        x = torch.stack([im for im, _ in images])
        pred = model(x).argmax(1).tolist()
    return sum(int(p == c) for p, (_, c) in zip(pred, images, strict=True)) / len(images)


def _loaded(module, factory: str, path: str):
    model = getattr(module, factory)(num_classes=4)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


def _run(capsys, argv):
    code = cli.main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _argv(command, own, out, *extra):
    p = own["paths"]
    argv = [
        command,
        "--student",
        p["student"],
        "--base",
        p["base"],
        "--model",
        "mynets_cli:small_cnn",
        "--data",
        own["data"],
        "--image-size",
        "16",
        "--normalize",
        "none",
        "--layers",
        "2",
        "3",
        "--batch-size",
        "6",
        "--one-hot",
        "--no-progress",
        "--out",
        str(out),
    ]
    if command == "quantify":
        argv += ["--maps", "gradcam", "distilled", "--n-bootstrap", "20"]
    return argv + list(extra)


@pytest.mark.parametrize("command", ["explain", "quantify"])
def test_own_architecture_explained_and_quantified(own, tmp_path, capsys, command):
    out = tmp_path / command
    teacher = ["--teacher", own["paths"]["teacher"], "--teacher-arch", "small_resnet_s"]
    code, _, err = _run(capsys, _argv(command, own, out, *teacher))
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    module = own["module"]
    expected = {
        "Student": _accuracy(_loaded(module, "small_cnn", own["paths"]["student"]), own["test"]),
        "Base": _accuracy(_loaded(module, "small_cnn", own["paths"]["base"]), own["test"]),
    }
    teacher_model = build_model("small_resnet_s", 4)
    teacher_model.load_state_dict(torch.load(own["paths"]["teacher"], weights_only=True))
    expected["Teacher"] = _accuracy(teacher_model, own["test"])
    for role, acc in expected.items():
        assert m["models"][role]["accuracy"] == pytest.approx(acc, abs=1e-12), role
    assert (
        m["layers"] == ["2", "3"]
        if command == "explain"
        else set(m["evaluation"]["by_layer"]) == {"2", "3"}
    )
    assert m["preprocessing"]["image_size"] == 16
    page = (out / "index.html").read_text()
    if command == "explain":
        assert (out / "figures" / "grid_3.png").is_file()
    else:
        ev = m["evaluation"]["by_layer"]["3"]
        assert set(ev) >= {"gradcam", "distilled"} and ev["gradcam"]["n_batches"] == 2
    assert "record no class names" in page  # plain state dicts: the class order is stated


def test_teacher_of_own_code_and_per_role_models(own, tmp_path, capsys):
    """--teacher-model for a plain-state-dict Teacher of the user's code; --base-model when
    the Base is another architecture than --model (the Student's)."""
    p = own["paths"]
    out = tmp_path / "r"
    argv = _argv(
        "explain",
        own,
        out,
        "--teacher",
        p["wide"],
        "--teacher-model",
        "mynets_cli:wide_cnn",
        "--base",
        p["wide"],
        "--base-model",
        "mynets_cli:wide_cnn",
    )
    code, _, err = _run(capsys, argv)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    wide = _accuracy(_loaded(own["module"], "wide_cnn", p["wide"]), own["test"])
    assert m["models"]["Teacher"]["accuracy"] == pytest.approx(wide, abs=1e-12)
    assert m["models"]["Base"]["accuracy"] == pytest.approx(wide, abs=1e-12)


def test_a_factory_checkpoint_keeps_its_class_names_and_preprocessing(own, tmp_path, capsys):
    module = own["module"]
    paths = {}
    for role in ("student", "base"):
        paths[role] = tmp_path / f"{role}.pt"
        save_checkpoint(
            paths[role],
            _loaded(module, "small_cnn", own["paths"][role]),
            factory="mynets_cli:small_cnn",
            num_classes=4,
            class_names=["owl", "fox", "dog", "cat"],
            preprocessing={"image_size": 16, "resize": "exact", "normalize": "none"},
        )
    out = tmp_path / "q"
    argv = [
        "quantify",
        "--student",
        str(paths["student"]),
        "--base",
        str(paths["base"]),
        "--model",
        "mynets_cli:small_cnn",
        "--data",
        own["data"],
        "--layers",
        "3",
        "--batch-size",
        "6",
        "--one-hot",
        "--maps",
        "gradcam",
        "--n-bootstrap",
        "20",
        "--no-progress",
        "--out",
        str(out),
    ]
    code, _, err = _run(capsys, argv)
    assert code == 0, err
    # the sanity lines of these untrained models aside, nothing is warned
    warned = [ln for ln in err.splitlines() if "warning" in ln and "of chance" not in ln]
    assert warned == [], err
    assert "16 px (recorded in the checkpoints), resize exact (recorded in the checkpoints)" in err
    m = json.loads((out / "metrics.json").read_text())
    # the classes are the checkpoint's, in its order: label 0 is owl (folder index 3)
    flipped = [(im, 3 - c) for im, c in own["test"]]
    acc = _accuracy(_loaded(module, "small_cnn", own["paths"]["student"]), flipped)
    assert m["models"]["Student"]["accuracy"] == pytest.approx(acc, abs=1e-12)
    # without --model: the file names its factory, but never imports code by itself
    code, _, err = _run(
        capsys, [a for a in argv if a not in ("--model", "mynets_cli:small_cnn")] + ["--overwrite"]
    )
    assert code == 2 and "--model" in err and "mynets_cli:small_cnn" in err


def test_compare_takes_an_own_architecture_and_shows_progress(own, tmp_path, capsys):
    p = own["paths"]
    argv = [
        "compare",
        "--student",
        p["student"],
        "--base",
        p["base"],
        "--model",
        "mynets_cli:small_cnn",
        "--data",
        own["data"],
        "--image-size",
        "16",
        "--normalize",
        "none",
        "--layer",
        "3",
        "--images",
        "8",
        "--reference-images",
        "8",
        "--batch-size",
        "8",
        "--percentiles",
        "50",
        "--ig-steps",
        "2",
        "--n-bootstrap",
        "20",
        "--no-sanity",
    ]
    code, _, err = _run(capsys, argv + ["--out", str(tmp_path / "a")])
    assert code == 0, err
    assert "forward passes" in err  # the progress bar
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["n_images"] == 8
    code, _, err = _run(capsys, argv + ["--no-progress", "--out", str(tmp_path / "b")])
    assert code == 0, err
    assert "forward passes" not in err
    student = _loaded(own["module"], "small_cnn", p["student"])
    assert not student[
        3
    ]._forward_hooks  # the bar's hooks were on the pair's models only, then removed


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--arch", "small_resnet_s"], "--arch or --model, not both"),
        (["--model", "not a factory"], "package.module:function"),
        (["--model", "mynets_cli:no_such_function"], "no_such_function"),
        (["--layers", "L4"], "L4"),
    ],
)
def test_own_model_mistakes_are_one_line(own, tmp_path, capsys, extra, says):
    argv = _argv("explain", own, tmp_path / "r")
    if extra[0] == "--model":
        i = argv.index("--model")
        argv[i + 1] = extra[1]
    elif extra[0] == "--layers":
        i = argv.index("--layers")
        argv[i + 1 : i + 3] = ["L4"]
    else:
        argv += extra
    code, _, err = _run(capsys, argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert says in err
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_that_is_not_a_regular_file_is_named_as_such(own, tmp_path, capsys):
    """A FIFO was reported as "does not exist" by the pair's own pre-check; the checkpoint
    reader names it (and never blocks reading it)."""
    import os

    fifo = tmp_path / "student.pt"
    os.mkfifo(fifo)
    argv = _argv("explain", own, tmp_path / "r")
    argv[argv.index("--student") + 1] = str(fifo)
    code, _, err = _run(capsys, argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "not a regular file" in err and "Student" in err
