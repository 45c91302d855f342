"""Your own data and checkpoints: a class-per-folder tree of 32 px PNGs, written class by
class, through `train` (Teacher; Base with --labelled; Student with --teacher --method
--transfer), `explain` and `quantify`."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from captum_unicam import cli

CLASSES = ["disc", "bar", "ring", "cross"]


def _image(c: int, rng: np.random.Generator) -> np.ndarray:
    """A 32 x 32 RGB image whose class is a bright shape on noise."""
    img = rng.uniform(0, 80, size=(32, 32, 3))
    yy, xx = np.mgrid[:32, :32]
    cy, cx = rng.integers(12, 20, size=2)
    r = np.hypot(yy - cy, xx - cx)
    shape = {
        0: r < 7,
        1: (abs(xx - cx) < 3) & (abs(yy - cy) < 10),
        2: (r > 5) & (r < 9),
        3: (abs(xx - cx) < 2) | (abs(yy - cy) < 2),
    }[c]
    img[shape] = [230, 200, 60]
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """ROOT/train/<class>/*.png (12 per class), ROOT/test/<class>/*.png (10 per class),
    and an unlabelled transfer folder TRANSFER/images/*.png (48 images)."""
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 10)):
        for c, name in enumerate(CLASSES):  # written class by class: file order is class order
            d = root / "data" / split / name
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_image(c, rng)).save(d / f"{i:03d}.png")
    t = root / "transfer" / "images"
    t.mkdir(parents=True)
    for i in range(48):
        Image.fromarray(_image(i % 4, rng)).save(t / f"{i:03d}.png")
    return root


def _run(capsys, argv):
    code = cli.main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def trained(tree):
    """Teacher, Base (--labelled 16) and Student (--transfer, labels never read), at 32 px."""
    data = "imagefolder:" + str(tree / "data")
    common = [
        "--data",
        data,
        "--arch",
        "small_resnet_s",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--no-progress",
        "--lr",
        "0.05",
    ]
    paths = {r: str(tree / f"{r}.pt") for r in ("teacher", "base", "student")}
    runs = [
        [
            "train",
            *common,
            "--image-size",
            "32",
            "--augment",
            "flip,crop",
            "--out",
            paths["teacher"],
        ],
        [
            "train",
            *common,
            "--image-size",
            "32",
            "--labelled",
            "16",
            "--seed",
            "1",
            "--out",
            paths["base"],
        ],
        [
            "train",
            *common,
            "--teacher",
            paths["teacher"],
            "--method",
            "response",
            "--transfer",
            "imagefolder:" + str(tree / "transfer"),
            "--temperature",
            "2",
            "--alpha",
            "1",
            "--seed",
            "2",
            "--out",
            paths["student"],
        ],
    ]
    for argv in runs:
        assert cli.main(argv) == 0, argv
    return data, paths


def test_checkpoints_record_their_recipe(trained):
    from captum_unicam.models import load_checkpoint

    _, paths = trained
    metas = {r: load_checkpoint(p)[1] for r, p in paths.items()}
    for r, m in metas.items():
        assert m["recipe"]["image_size"] == 32 and m["recipe"]["normalize"] == "none", r
    assert list(metas["teacher"]["recipe"]["augment"]) == ["flip", "crop"]
    # the Base's labelled subset: 16 images, 4 per class (class-stratified)
    assert (
        metas["base"]["recipe"]["labelled"] == 16 and metas["base"]["extra"]["labelled_size"] == 16
    )
    # the Student took the Teacher's image size (no --image-size given) and was distilled on
    # the unlabelled transfer images (a folder without train/ and test/ sub-folders: all 48
    # images, labels never read)
    s = metas["student"]
    assert s["kd_method"] == "response" and s["extra"]["train_size"] == 48
    assert s["recipe"]["transfer"].endswith("transfer") and s["recipe"]["temperature"] == 2.0
    assert s["recipe"]["alpha"] == 1.0 and s["extra"]["labelled_size"] is None


def test_labelled_subset_is_stratified(tree):
    from captum_unicam.pipeline.batches import labels_of
    from captum_unicam.pipeline.data import Preprocessing, labelled_subset, load_data

    ds = load_data("imagefolder:" + str(tree / "data"), "train", Preprocessing(32))
    sub = labelled_subset(ds, 10, seed=3)
    counts = np.bincount(labels_of(sub), minlength=4)
    assert sorted(counts.tolist()) == [2, 2, 3, 3]
    assert labelled_subset(ds, 10, seed=3).indices == sub.indices  # seeded
    assert labelled_subset(ds, 10, seed=4).indices != sub.indices


@pytest.mark.parametrize("command", ["explain", "quantify"])
def test_explain_and_quantify_own_data(trained, tmp_path, capsys, command):
    from torch.utils.data import DataLoader

    from captum_unicam.attr.unicam import UniCAMWarning
    from captum_unicam.data import load_dataset
    from captum_unicam.kd.train import evaluate_accuracy
    from captum_unicam.models import load_checkpoint

    data, paths = trained
    out = tmp_path / command
    argv = [
        command,
        "--student",
        paths["student"],
        "--base",
        paths["base"],
        "--teacher",
        paths["teacher"],
        "--data",
        data,
        "--batch-size",
        "16",
        "--layers",
        "L3",
        "L4",
        "--one-hot",
        "--no-progress",
        "--out",
        str(out),
    ]
    if command == "quantify":
        argv += ["--n-bootstrap", "50"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = _run(capsys, argv)
    assert code == 0, err
    assert not [w for w in caught if issubclass(w.category, UniCAMWarning)], [
        str(w.message) for w in caught
    ]
    # untrained models: only the sanity lines (near chance), no other warning
    assert all("on the evaluated set is" in ln for ln in err.splitlines() if "warning" in ln), err
    m = json.loads((out / "metrics.json").read_text())
    # image size carried over from the checkpoints (no --image-size given)
    assert m["preprocessing"] == {
        "image_size": 32,
        "resize": "shorter-side-crop",
        "normalize": "none",
    }
    # 40 test images in batches of 16: 16, 24 (a last batch of 8 >= 5 stays: 16, 16, 8)
    assert m["batch_sizes"] == [16, 16, 8]
    assert m["classes_per_batch"] == [
        4,
        4,
        4,
    ]  # no single-class batch although the files are class-ordered
    # the report's accuracies are those of the checkpoints on the evaluated set (all 40 test images)
    test = load_dataset(data, "test", image_size=32)
    assert len(test) == 40 and "all 40 images" in m["accuracy_set"]
    for role in ("Teacher", "Base", "Student"):
        model, _ = load_checkpoint(paths[role.lower()])
        expected = evaluate_accuracy(model, DataLoader(test, batch_size=7))
        assert m["models"][role]["accuracy"] == pytest.approx(expected, abs=1e-12), role
    page = (out / "index.html").read_text()
    assert "Localisation" not in page  # folders have no object masks
    if command == "explain":
        assert m["localisation"] is None
        assert 'id="table1"' not in page
        assert (out / "figures" / "grid_L4.png").is_file()
    else:
        assert 'id="maps"' not in page
        assert m["evaluation"]["by_layer"]["L4"]["gradcam"]["n_batches"] == 3


def test_image_size_mismatch_refused_then_overridden(trained, tree, tmp_path, capsys):
    data, paths = trained
    other = str(tree / "base40.pt")
    assert (
        cli.main(
            [
                "train",
                "--data",
                data,
                "--arch",
                "small_resnet_s",
                "--epochs",
                "1",
                "--image-size",
                "40",
                "--no-progress",
                "--out",
                other,
            ]
        )
        == 0
    )
    capsys.readouterr()  # the training's own lines
    argv = [
        "quantify",
        "--student",
        paths["student"],
        "--base",
        other,
        "--data",
        data,
        "--batch-size",
        "16",
        "--layers",
        "L4",
        "--one-hot",
        "--no-progress",
        "--n-bootstrap",
        "20",
        "--maps",
        "gradcam",
    ]
    code, _, err = _run(capsys, argv + ["--out", str(tmp_path / "a")])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "image_size 32" in err and "image_size 40" in err and "--image-size" in err
    assert not (tmp_path / "a").exists()
    code, _, err = _run(capsys, argv + ["--image-size", "32", "--out", str(tmp_path / "b")])
    assert code == 0, err
    lines = [
        ln
        for ln in err.strip().splitlines()
        if "warning" in ln and "on the evaluated set is" not in ln
    ]  # the sanity lines of untrained models aside
    assert len(lines) == 1 and "Base was trained with image_size 40" in lines[0]
    assert (
        json.loads((tmp_path / "b" / "metrics.json").read_text())["preprocessing"]["image_size"]
        == 32
    )


def test_class_count_mismatch_refused(trained, tmp_path, capsys):
    from captum_unicam.models import build_model, save_checkpoint

    data, paths = trained
    three = tmp_path / "three.pt"
    save_checkpoint(
        three,
        build_model("small_resnet_s", 3),
        arch="small_resnet_s",
        num_classes=3,
        recipe={"image_size": 32, "normalize": "none"},
    )
    for argv in (
        [
            "explain",
            "--student",
            paths["student"],
            "--base",
            str(three),
            "--data",
            data,
            "--one-hot",
            "--out",
            str(tmp_path / "r"),
        ],
        [
            "train",
            "--data",
            data,
            "--arch",
            "small_resnet_s",
            "--teacher",
            str(three),
            "--out",
            str(tmp_path / "s.pt"),
        ],
    ):
        code, _, err = _run(capsys, argv)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "3 classes" in err and "4" in err
    assert list(p.name for p in tmp_path.iterdir()) == ["three.pt"]


def test_library_errors_are_exit_2_and_bugs_keep_their_traceback(
    trained, tmp_path, capsys, monkeypatch
):
    data, paths = trained
    argv = [
        "quantify",
        "--student",
        paths["student"],
        "--base",
        paths["base"],
        "--data",
        data,
        "--one-hot",
        "--no-progress",
        "--out",
        str(tmp_path / "q"),
    ]

    def bug(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr("captum_unicam.pipeline.evaluation.score_pair", bug)
    with pytest.raises(ValueError, match="internal bug"):
        cli.main(argv)
    assert not (tmp_path / "q").exists()


def test_readme_own_data_section_runs_as_written(tree, tmp_path, monkeypatch, capsys):
    """The "Your own data and checkpoints" commands and Python of docs/cli.md, on a 32 px tree
    (only the epochs and the labelled-subset size are made smaller)."""
    import pathlib
    import re
    import shlex
    import shutil

    page = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text(
        encoding="utf-8"
    )
    section = page.split("Your own data and checkpoints\n", 1)[1].split("\n## ", 1)[0]
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shutil.copytree(tree / "data", tmp_path / "my_images")
    shutil.copytree(tree / "transfer", tmp_path / "my_unlabelled")
    monkeypatch.chdir(tmp_path)
    for line in bash.strip().splitlines():
        line = line.replace("--epochs 30", "--epochs 1").replace("--labelled 200", "--labelled 16")
        argv = shlex.split(line)
        assert argv[0] == "captum-unicam"
        code, _, err = _run(capsys, argv[1:] + ["--no-progress"])
        assert code == 0, (line, err)
    for report in ("explain-report", "quantify-report"):
        m = json.loads((tmp_path / report / "metrics.json").read_text())
        assert m["preprocessing"]["image_size"] == 32
        assert min(m["classes_per_batch"]) == 4
    namespace: dict = {}
    exec(compile(python, "docs/cli.md", "exec"), namespace)
    d, r = namespace["distilled"], namespace["residual"]
    assert d.shape == r.shape == (32, 1, 4, 4)  # 32 px images, L4 of a small ResNet is 4 x 4
    assert d.abs().sum() > 0  # a stratified batch carries label signal: not the all-zero maps
    assert "L4" in capsys.readouterr().out


def test_pretrained_weights_come_from_the_local_cache_only(tree, tmp_path, monkeypatch, capsys):
    import os

    from torchvision.models import ResNet18_Weights

    from captum_unicam.models import build_model, load_checkpoint

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache: nothing there
    data = "imagefolder:" + str(tree / "data")
    argv = [
        "train",
        "--data",
        data,
        "--arch",
        "resnet18",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--lr",
        "1e-12",
        "--weight-decay",
        "0",
        "--limit",
        "16",
        "--no-progress",
    ]
    code, _, err = _run(
        capsys, argv + ["--weights", "IMAGENET1K_V1", "--out", str(tmp_path / "a.pt")]
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "not in the local torch cache" in err and "--download" in err
    code, _, err = _run(capsys, argv + ["--weights", "IMAGENET9", "--out", str(tmp_path / "a.pt")])
    assert code == 2 and "unknown weights" in err and "ResNet18_Weights.IMAGENET1K_V1" in err
    assert not (tmp_path / "a.pt").exists()

    # a file in the cache under the weights' name is used (no network involved)
    cached = (
        tmp_path
        / "torch"
        / "hub"
        / "checkpoints"
        / os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url)
    )
    cached.parent.mkdir(parents=True)
    torch.manual_seed(7)
    state = build_model("resnet18", 1000).state_dict()
    torch.save(state, cached)
    code, _, err = _run(
        capsys,
        argv + ["--weights", "ResNet18_Weights.IMAGENET1K_V1", "--out", str(tmp_path / "b.pt")],
    )
    assert code == 0, err
    model, meta = load_checkpoint(tmp_path / "b.pt")
    rec = meta["recipe"]
    # ImageNet normalisation by default with pretrained weights
    assert rec["weights"] == "ResNet18_Weights.IMAGENET1K_V1" and rec["normalize"] == "imagenet"
    # the 32 px stem (3 x 3 conv1) and the 4-class fc cannot take the ImageNet tensors; the rest does
    assert rec["weights_skipped"] == ["conv1.weight", "fc.bias", "fc.weight"]
    got = model.state_dict()
    for name in ("layer1.0.conv1.weight", "layer4.1.conv2.weight"):
        assert torch.allclose(got[name], state[name], atol=1e-6), (
            name
        )  # lr 1e-12: still the cached weights


def test_normalisation_mismatch_refused_then_overridden(trained, tree, tmp_path, capsys):
    data, paths = trained
    other = str(tree / "base_imagenet.pt")
    assert (
        cli.main(
            [
                "train",
                "--data",
                data,
                "--arch",
                "small_resnet_s",
                "--epochs",
                "1",
                "--image-size",
                "32",
                "--normalize",
                "imagenet",
                "--no-progress",
                "--out",
                other,
            ]
        )
        == 0
    )
    capsys.readouterr()  # the training's own lines
    argv = [
        "explain",
        "--student",
        paths["student"],
        "--base",
        other,
        "--data",
        data,
        "--batch-size",
        "8",
        "--limit",
        "16",
        "--layers",
        "L4",
        "--one-hot",
        "--no-progress",
    ]
    code, _, err = _run(capsys, argv + ["--out", str(tmp_path / "a")])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "normalize none" in err and "normalize imagenet" in err and "--normalize" in err
    code, _, err = _run(capsys, argv + ["--normalize", "imagenet", "--out", str(tmp_path / "b")])
    assert code == 0, err
    lines = [
        ln
        for ln in err.strip().splitlines()
        if "warning" in ln and "on the evaluated set is" not in ln
    ]  # the sanity lines of untrained models aside
    assert len(lines) == 1 and "Student was trained with normalize none" in lines[0]
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["preprocessing"] == {
        "image_size": 32,
        "resize": "shorter-side-crop",
        "normalize": "imagenet",
    }


def test_readme_own_architecture_runs_as_written(tree, tmp_path, monkeypatch, capsys):
    """The "Your own architecture" module and commands of docs/cli.md, on the 32 px tree,
    with state dicts of that module's model saved as a user's own training code would."""
    import pathlib
    import re
    import shlex
    import shutil

    page = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text(
        encoding="utf-8"
    )
    section = page.split("### Your own architecture\n", 1)[1].split("\n## ", 1)[0]
    module = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    shutil.copytree(tree / "data", tmp_path / "my_images")
    (tmp_path / "mynets.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import mynets

    for seed, role in enumerate(("student", "base")):
        torch.manual_seed(seed)
        torch.save(mynets.small_cnn(num_classes=4).state_dict(), tmp_path / f"cnn_{role}.pt")
    for line in bash.strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "captum-unicam"
        code, _, err = _run(capsys, argv[1:] + ["--no-progress", "--one-hot"])
        assert code == 0, (line, err)
    for report in ("cnn-explain", "cnn-quantify"):
        m = json.loads((tmp_path / report / "metrics.json").read_text())
        assert (
            m["preprocessing"]["image_size"] == 32
            and m["layers" if "explain" in report else "map_kinds"]
        )
        assert m["models"]["Student"]["arch"] is None  # not an architecture of the library
    assert "record no class names" in (tmp_path / "cnn-explain" / "index.html").read_text()
