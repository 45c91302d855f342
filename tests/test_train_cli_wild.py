"""`captum-unicam train` in the wild: no overwrite unasked, nothing inside the data it
reads, damaged images and a short disk found before any epoch, a full disk that keeps the
trained model, the steps and doubts of a run said and recorded, explicit augmentation, an
unlabelled transfer folder used whole, and one line for a NaN Teacher or an out-of-range
seed. Tiny image folders (16 px), one epoch."""

from __future__ import annotations

import errno
import io
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from captum_unicam import cli
from captum_unicam.models import build_model, load_checkpoint, save_checkpoint
from captum_unicam.pipeline import training

CLASSES = ("a", "b")


def _png(path, value: int, rng) -> None:
    img = np.clip(rng.normal(value, 20, size=(16, 16, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)


def _tree(root, per_class: int = 4):
    """ROOT/train/<a|b>/*.png and ROOT/test/<a|b>/*.png: dark a, bright b."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                _png(d / f"{i}.png", 40 + 170 * c, rng)
    return root


@pytest.fixture
def tree(tmp_path):
    return _tree(tmp_path / "data")


@pytest.fixture
def fits(monkeypatch):
    """Counts the trainings that start."""
    calls = []
    real = training.fit

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "fit", counted)
    return calls


def _argv(tree, out, *more):
    return [
        "train",
        "--data",
        f"imagefolder:{tree}",
        "--arch",
        "small_resnet_s",
        "--image-size",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--no-progress",
        "--out",
        str(out),
        *more,
    ]


def _run(capsys, argv):
    code = cli.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------
# no overwrite the user did not ask for; nothing inside the data the run reads
# ---------------------------------------------------------------------------


def test_out_inside_the_data_folder_is_refused_before_training(tree, capsys, fits):
    out = tree / "train" / "a" / "model.pt"
    code, _, err = _run(capsys, _argv(tree, out))
    assert code == 2 and "which this run reads" in _one_error_line(err)
    assert not out.exists() and fits == []
    assert sorted(p.name for p in (tree / "train").iterdir()) == ["a", "b"]


def test_an_existing_file_is_kept_without_overwrite_and_replaced_with_it(
    tree, tmp_path, capsys, fits
):
    out = tmp_path / "m.pt"
    out.write_bytes(b"mine")
    code, _, err = _run(capsys, _argv(tree, out))
    assert code == 2 and "exists" in _one_error_line(err) and "--overwrite" in err
    assert out.read_bytes() == b"mine" and fits == []
    code, stdout, err = _run(capsys, _argv(tree, out, "--overwrite"))
    assert code == 0, err
    assert "checkpoint written to" in stdout
    _, meta = load_checkpoint(out)
    assert meta["class_names"] == list(CLASSES)


def test_overwrite_never_replaces_a_fifo(tree, tmp_path, capsys, fits):
    out = tmp_path / "pipe.pt"
    os.mkfifo(out)
    code, _, err = _run(capsys, _argv(tree, out, "--overwrite"))
    line = _one_error_line(err)
    assert code == 2 and "FIFO" in line and "never replaced" in line
    assert stat.S_ISFIFO(os.stat(out).st_mode) and fits == []


def test_a_checkpoint_written_meanwhile_by_another_run_is_kept(tree, tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.pt"
    real = training.fit

    def other_run_meanwhile(*args, **kwargs):
        model = real(*args, **kwargs)
        out.write_bytes(b"the other run's checkpoint")
        return model

    monkeypatch.setattr(training, "fit", other_run_meanwhile)
    code, _, err = _run(capsys, _argv(tree, out))
    line = _one_error_line(err)
    assert code == 2 and "exists" in line and "kept at" in line
    assert out.read_bytes() == b"the other run's checkpoint"
    kept = line.split("kept at ")[-1].strip()
    _, meta = load_checkpoint(kept)  # the trained model is not lost
    assert meta["class_names"] == list(CLASSES)
    os.unlink(kept)


# ---------------------------------------------------------------------------
# fail before the work; keep the result when the disk fills at the end
# ---------------------------------------------------------------------------


def test_a_damaged_test_image_is_named_before_any_epoch(tree, tmp_path, capsys, fits):
    (tree / "test" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "m.pt"
    code, _, err = _run(capsys, _argv(tree, out))
    assert code == 2 and "broken.png" in _one_error_line(err)
    assert fits == [] and not out.exists()


def test_too_little_free_space_is_refused_before_training(
    tree, tmp_path, capsys, fits, monkeypatch
):
    from captum_unicam.models import _files

    monkeypatch.setattr(_files, "free_bytes", lambda folder: 1000)
    code, _, err = _run(capsys, _argv(tree, tmp_path / "m.pt"))
    assert code == 2 and "not enough free space" in _one_error_line(err)
    assert fits == []


def test_a_full_disk_at_the_end_keeps_the_trained_model(tree, tmp_path, capsys, monkeypatch):
    real_save = torch.save
    calls = []

    def full_once(obj, f, *args, **kwargs):
        if isinstance(f, io.BytesIO):  # in-memory checks, not the file
            return real_save(obj, f, *args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_once)
    out = tmp_path / "m.pt"
    code, _, err = _run(capsys, _argv(tree, out))
    line = _one_error_line(err)
    assert code == 2 and "disk full" in line and "kept at" in line
    assert not out.exists()
    kept = line.split("kept at ")[-1].split(";")[0].strip()
    _, meta = load_checkpoint(kept)
    assert meta["class_names"] == list(CLASSES)
    os.unlink(kept)


# ---------------------------------------------------------------------------
# a run that did too little says so, and records it
# ---------------------------------------------------------------------------


def test_steps_line_and_short_run_warning_are_shown_and_recorded(tree, tmp_path, capsys):
    from captum_unicam.data import load_dataset
    from captum_unicam.kd.train import evaluate_accuracy

    out = tmp_path / "m.pt"
    code, _, err = _run(capsys, _argv(tree, out, "--epochs", "3"))
    assert code == 0, err
    # 2 classes x 4 train images, batches of 4, 3 epochs: 8 // 4 * 3 = 6 steps
    assert "captum-unicam train: 8 images, 4 per batch, 3 epochs = 6 steps" in err
    assert err.index("6 steps") < err.index("warning: this run trains only 6 optimisation steps")
    assert "--epochs" in err and "epochs=" not in err
    model, meta = load_checkpoint(out)
    extra = meta["extra"]
    assert extra["steps"] == 6 and extra["steps_per_epoch"] == 2
    assert any("only 6 optimisation steps" in w for w in extra["warnings"])
    # the recorded accuracies, recomputed on the same images
    test = load_dataset(f"imagefolder:{tree}", "test", image_size=16)
    train = load_dataset(f"imagefolder:{tree}", "train", image_size=16)
    assert meta["accuracy"] == pytest.approx(
        evaluate_accuracy(model, DataLoader(test, batch_size=8))
    )
    assert meta["accuracy"] == extra["test_accuracy"]
    assert extra["train_accuracy"] == pytest.approx(
        evaluate_accuracy(model, DataLoader(train, batch_size=8))
    )
    assert meta["preprocessing"]["image_size"] == 16 and meta["preprocessing"]["augment"] == []


def test_steps_count_matches_the_loader():
    for n, b, e in ((100, 64, 15), (8, 4, 3), (3, 64, 2), (130, 64, 1)):
        steps = training.training_steps(n, b, e)
        loader = DataLoader(range(n), batch_size=min(b, n), drop_last=n > b)
        assert steps["steps"] == len(loader) * e and steps["steps_per_epoch"] == len(loader)
    assert training.training_steps(100, 64, 15)["steps"] == 15  # the 30-step case, in kind
    assert training.training_steps(100, 64, 15)["dropped"] == 36


def test_a_fit_near_chance_is_warned_about():
    seen = []
    assert training._fit_doubts(0.52, 0.9, 2, seen.append) and "training accuracy" in seen[0]
    assert training._fit_doubts(0.56, 0.1, 2, seen.append) == []
    assert training._fit_doubts(None, 0.27, 4, seen.append) and "test accuracy" in seen[-1]


def test_augmentation_is_explicit_and_recorded(tree, tmp_path, capsys):
    out = tmp_path / "aug.pt"
    code, _, err = _run(capsys, _argv(tree, out, "--augment", "crop,flip"))
    assert code == 0, err
    _, meta = load_checkpoint(out)
    assert list(meta["recipe"]["augment"]) == ["crop", "flip"]
    assert meta["preprocessing"]["augment"] == ["crop", "flip"]
    code, _, err = _run(capsys, _argv(tree, tmp_path / "x.pt", "--augment", "flip,rotate"))
    assert code == 2 and "--augment" in err and "rotate" in err
    code, _, err = _run(capsys, _argv(tree, tmp_path / "none.pt", "--augment", "none"))
    assert code == 0, err
    assert list(load_checkpoint(tmp_path / "none.pt")[1]["recipe"]["augment"]) == []


def test_only_the_named_augmentations_are_applied():
    from torch.utils.data import TensorDataset

    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16) / 1536
    base = TensorDataset(x, torch.tensor([0, 1]))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        none = [training._Augmented(base, (), "none")[i % 2][0] for i in range(20)]
        flips = [training._Augmented(base, ("flip",), "none")[i % 2][0] for i in range(20)]
        crops = [training._Augmented(base, ("crop",), "none")[i % 2][0] for i in range(20)]
    assert all(torch.equal(a, x[i % 2]) for i, a in enumerate(none))
    mirrored = [torch.equal(a, x[i % 2].flip(-1)) for i, a in enumerate(flips)]
    assert all(
        m or torch.equal(a, x[i % 2]) for i, (m, a) in enumerate(zip(mirrored, flips, strict=True))
    )
    assert 0 < sum(mirrored) < 20
    # a crop shifts by at most 2 pixels (16 // 8) and never mirrors: each crop is a shifted copy
    for i, a in enumerate(crops):
        src = torch.nn.functional.pad(x[i % 2], (2, 2, 2, 2))
        assert any(
            torch.equal(a, src[:, t : t + 16, s : s + 16]) for t in range(5) for s in range(5)
        )
    normed = training._Augmented(base, (), "imagenet")[0][0]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(normed, (x[0] - mean) / std)


def test_an_unlabelled_transfer_folder_is_used_whole(tree, tmp_path, capsys):
    teacher = tmp_path / "teacher.pt"
    assert _run(capsys, _argv(tree, teacher))[0] == 0
    flat = tmp_path / "transfer"
    flat.mkdir()
    rng = np.random.default_rng(1)
    for i in range(7):  # no class folders, no train/ or test/
        _png(flat / f"{i}.png", 40 + 170 * (i % 2), rng)
    out = tmp_path / "student.pt"
    code, _, err = _run(
        capsys,
        [
            "train",
            "--data",
            f"imagefolder:{tree}",
            "--arch",
            "small_resnet_s",
            "--teacher",
            teacher,
            "--transfer",
            f"imagefolder:{flat}",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--no-progress",
            "--out",
            out,
        ],
    )
    assert code == 0, err
    assert "7 images, 4 per batch, 1 epochs = 1 steps" in err
    _, meta = load_checkpoint(out)
    assert meta["extra"]["train_size"] == 7 and meta["extra"]["train_accuracy"] is None


def test_out_inside_the_transfer_folder_or_over_the_teacher_is_refused(
    tree, tmp_path, capsys, fits
):
    teacher = tmp_path / "teacher.pt"
    save_checkpoint(
        teacher,
        build_model("small_resnet_s", 2),
        arch="small_resnet_s",
        num_classes=2,
        class_names=list(CLASSES),
        recipe={"image_size": 16, "normalize": "none"},
    )
    common = [
        "train",
        "--data",
        f"imagefolder:{tree}",
        "--arch",
        "small_resnet_s",
        "--teacher",
        teacher,
        "--no-progress",
    ]
    code, _, err = _run(capsys, [*common, "--out", teacher, "--overwrite"])
    assert code == 2 and "which this run reads" in _one_error_line(err)
    flat = tmp_path / "transfer"
    flat.mkdir()
    _png(flat / "0.png", 40, np.random.default_rng(0))
    code, _, err = _run(
        capsys, [*common, "--transfer", f"imagefolder:{flat}", "--out", flat / "s.pt"]
    )
    assert code == 2 and "which this run reads" in _one_error_line(err)
    assert fits == [] and not (flat / "s.pt").exists()


# ---------------------------------------------------------------------------
# one line instead of a traceback
# ---------------------------------------------------------------------------


def test_a_teacher_with_nan_outputs_is_one_line_naming_it(tree, tmp_path, capsys, fits):
    teacher = build_model("small_resnet_s", 2)
    with torch.no_grad():
        teacher.layer2[0].bn1.running_var.fill_(-1.0)  # finite weights, NaN outputs
    path = tmp_path / "teacher.pt"
    save_checkpoint(
        path,
        teacher,
        arch="small_resnet_s",
        num_classes=2,
        class_names=list(CLASSES),
        recipe={"image_size": 16, "normalize": "none"},
    )
    code, _, err = _run(
        capsys,
        [
            "train",
            "--data",
            f"imagefolder:{tree}",
            "--arch",
            "small_resnet_s",
            "--teacher",
            path,
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--no-progress",
            "--out",
            tmp_path / "s.pt",
        ],
    )
    line = _one_error_line(err)
    assert code == 2 and str(path) in line and "layer2.0.bn1" in line and "NaN or Inf" in line
    assert "learning rate" not in line and fits == []


def test_a_diverged_loss_names_the_step_and_the_learning_rate():
    from torch import nn
    from torch.utils.data import TensorDataset

    from captum_unicam.errors import InputError
    from captum_unicam.kd.recipe import Recipe
    from captum_unicam.kd.train import train_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    loader = DataLoader(
        TensorDataset(torch.randn(8, 3, 2, 2) * 1e3, torch.tensor([0, 1] * 4)), batch_size=4
    )
    with pytest.raises(InputError, match=r"training diverged at step \d+ of 20 \(epoch \d+\).*lr="):
        train_model(model, loader, Recipe(epochs=10, lr=1e38, weight_decay=0.0), progress=False)


def test_a_teacher_that_turns_nan_during_training_is_named_not_the_learning_rate():
    from torch import nn
    from torch.utils.data import TensorDataset

    from captum_unicam.errors import InputError
    from captum_unicam.kd.recipe import Recipe
    from captum_unicam.kd.train import train_model

    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with torch.no_grad():
        teacher[1].weight.fill_(3e38)  # finite, overflows to Inf on these inputs
    loader = DataLoader(
        TensorDataset(torch.ones(8, 3, 2, 2), torch.tensor([0, 1] * 4)), batch_size=4
    )
    with pytest.raises(
        InputError, match=r"Teacher's outputs hold NaN or Inf at step 1 of 2 .*module '1'"
    ):
        train_model(
            student, loader, Recipe(epochs=1, method="response"), teacher=teacher, progress=False
        )


@pytest.mark.parametrize("command", ["train", "demo"])
def test_a_seed_out_of_range_is_an_argparse_error(tree, tmp_path, capsys, command):
    argv = (
        _argv(tree, tmp_path / "m.pt") if command == "train" else ["demo", "--out", tmp_path / "r"]
    )
    code, _, err = _run(capsys, [*argv, "--seed", str(2**64)])
    assert (
        code == 2
        and "argument --seed" in err
        and "0 to 4294967295" in err
        and "Traceback" not in err
    )
    assert not (tmp_path / "m.pt").exists()


def test_a_controlled_seed_out_of_range_is_one_line(tmp_path, capsys):
    code, _, err = _run(
        capsys,
        [
            "train",
            "--data",
            "controlled:99999999999999999999",
            "--arch",
            "small_resnet_s",
            "--out",
            tmp_path / "m.pt",
            "--no-progress",
        ],
    )
    line = _one_error_line(err)
    assert code == 2 and "--data" in line and "0 to 4294967295" in line


def test_the_command_line_and_the_recipe_agree_on_augmentations_and_seeds():
    from captum_unicam.errors import InputError
    from captum_unicam.kd import recipe
    from captum_unicam.pipeline import requests

    assert requests.AUGMENTATIONS == recipe.AUGMENTATIONS
    assert requests.MAX_SEED <= recipe.MAX_SEED
    for bad in (True, "flip", ("flip", "flip"), ("rotate",)):
        with pytest.raises(InputError, match="augment"):
            recipe.Recipe("small_resnet_s", augment=bad).check(has_teacher=False)
    with pytest.raises(InputError, match="seed"):
        recipe.Recipe("small_resnet_s", seed=2**64).check(has_teacher=False)


def test_augmented_training_sets_are_normalised_like_the_test_set():
    from captum_unicam.data import load_dataset
    from captum_unicam.kd.recipe import Recipe
    from captum_unicam.pipeline.data import Preprocessing

    recipe = Recipe("small_resnet_s", augment=("crop",), limit=6, normalize="imagenet")
    sets = training._datasets("controlled", recipe, Preprocessing(32, "imagenet"), False, 4)
    raw = load_dataset("controlled", "train", limit=6)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for i in range(6):
        assert torch.allclose(sets["fit_eval"][i][0], (raw[i][0] - mean) / std)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x = sets["train"][0][0]  # the cross-validation set: augmented, then normalised
    assert sets["train"] is sets["fit"] and float(x.min()) == pytest.approx(
        float((-mean / std).min())
    )
