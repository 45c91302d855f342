"""Training loops, k-fold splits, Teacher-assistant chains, train_checkpoint and the
demo-model cache, on tiny models and a few steps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_unicam.data.loaders import DataSpecError
from captum_unicam.kd import train as kd_train
from captum_unicam.kd.losses import response_kd_loss
from captum_unicam.kd.recipe import Recipe
from captum_unicam.kd.train import (
    cross_validate,
    evaluate_accuracy,
    kfold_indices,
    train_model,
    train_teacher_assistant_chain,
)
from captum_unicam.models import (
    CheckpointError,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from captum_unicam.pipeline.training import train_checkpoint


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot on a loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny(seed=0, num_classes=3, width=2):
    torch.manual_seed(seed)
    return build_model("small_resnet_s", num_classes, width=width)


def _data(n=24, num_classes=3, side=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, side, side, generator=g)
    y = torch.arange(n) % num_classes
    x[:, 0] += 0.5 * y.view(-1, 1, 1).float()  # a learnable signal
    return x, y


def _loader(x, y, bs=8, seed=0):
    return DataLoader(
        TensorDataset(x, y),
        batch_size=bs,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------
# k-fold
# ---------------------------------------------------------------------------


def test_kfold_indices_partition():
    folds = kfold_indices(23, 5, seed=3)
    assert len(folds) == 5
    vals = [v for _, v in folds]
    assert sorted(i for v in vals for i in v) == list(range(23))
    assert sorted(len(v) for v in vals) == [4, 4, 5, 5, 5]
    for tr, va in folds:
        assert set(tr).isdisjoint(va) and sorted(tr + va) == list(range(23))
        assert tr == sorted(tr) and va == sorted(va)
    assert kfold_indices(23, 5, seed=3) == folds
    assert kfold_indices(23, 5, seed=4) != folds
    with pytest.raises(ValueError, match="k must be"):
        kfold_indices(10, 1)
    with pytest.raises(ValueError, match="folds"):
        kfold_indices(3, 5)


# ---------------------------------------------------------------------------
# train_model
# ---------------------------------------------------------------------------


def test_train_is_deterministic_and_leaves_global_rng_alone():
    x, y = _data()
    runs = []
    for _ in range(2):
        model = _tiny(0)
        state = torch.random.get_rng_state()
        train_model(model, _loader(x, y, seed=5), Recipe(epochs=2, seed=7), progress=False)
        assert torch.equal(torch.random.get_rng_state(), state)
        runs.append(model)
    assert _same_weights(runs[0], runs[1])
    # the seed drives the shuffling of a loader without its own generator
    free = []
    for seed in (7, 7, 8):
        model = _tiny(0)
        train_model(
            model,
            DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True),
            Recipe(epochs=2, seed=seed),
            progress=False,
        )
        free.append(model)
    assert _same_weights(free[0], free[1]) and not _same_weights(free[0], free[2])
    assert not _same_weights(runs[0], _tiny(0))  # training changed the weights


@pytest.mark.parametrize("method", [None, "response", "attention", "overhaul"])
def test_each_method_trains_and_restores_modes(method):
    x, y = _data()
    teacher = _tiny(1, width=4) if method else None
    student = _tiny(0)
    student.eval()
    if teacher is not None:
        teacher.train()
        t_before = copy.deepcopy(teacher.state_dict())
    before = copy.deepcopy(student.state_dict())
    train_model(
        student, _loader(x, y), Recipe(epochs=1, method=method), teacher=teacher, progress=False
    )
    assert not student.training and all(not m.training for m in student.modules())
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    if teacher is not None:
        assert teacher.training
        # a frozen teacher: no parameter changes (BN statistics neither: it runs in eval mode)
        assert all(torch.equal(t_before[k], v) for k, v in teacher.state_dict().items())
    for m in student.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_unlabelled_distillation_lowers_the_kd_loss():
    x, _ = _data(n=32)
    teacher = _tiny(1, width=4).eval()
    student = _tiny(0)
    with torch.no_grad():
        t = teacher(x)
        student.eval()
        before = response_kd_loss(student(x), t).item()
    loader = DataLoader(TensorDataset(x), batch_size=16)  # batches of inputs only
    loader = [b[0] for b in loader]
    train_model(
        student,
        loader,
        Recipe(epochs=15, method="response", optimizer="adam", lr=1e-2),
        teacher=teacher,
        unlabelled=True,
        progress=False,
    )
    with torch.no_grad():
        student.eval()
        after = response_kd_loss(student(x), t).item()
    assert after < 0.7 * before


def test_supervised_training_fits_a_learnable_signal():
    x, y = _data(n=48)
    model = _tiny(0)
    train_model(
        model, _loader(x, y, bs=16), Recipe(epochs=12, optimizer="adam", lr=1e-2), progress=False
    )
    assert evaluate_accuracy(model, DataLoader(TensorDataset(x, y), batch_size=48)) > 0.9


def test_train_model_rejects_bad_input_before_training():
    x, y = _data()
    model = _tiny(0)
    teacher = _tiny(1)
    before = copy.deepcopy(model.state_dict())
    cases = [
        (dict(method="response"), {}, "needs a Teacher"),
        ({}, dict(teacher=teacher), "no KD method"),
        (dict(method="fitnets"), dict(teacher=teacher), "unknown KD method"),
        ({}, dict(unlabelled=True), "needs a teacher"),
        (dict(epochs=0), {}, "epochs"),
        (dict(lr=-1.0), {}, "lr"),
        (dict(alpha=1.5, method="response"), dict(teacher=teacher), "alpha"),
        (dict(optimizer="lbfgs"), {}, "optimizer"),
    ]
    for fields, kwargs, match in cases:
        fields.setdefault("epochs", 1)
        with pytest.raises(ValueError, match=match):
            train_model(model, _loader(x, y), Recipe(**fields), progress=False, **kwargs)
    with pytest.raises(ValueError, match="recipe must be"):
        train_model(model, _loader(x, y), progress=False, recipe={"epochs": 1})
    with pytest.raises(ValueError, match="empty"):
        train_model(model, [], Recipe(epochs=1), progress=False)
    with pytest.raises(ValueError, match="without labels"):
        train_model(model, [x[:4]], Recipe(epochs=1), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_evaluate_accuracy_against_hand_count():
    lin = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(3, 2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [-1.0, -1.0]])
    # predictions: argmax of (x0, x1, 0) = 0, 1, 0, 1, 2
    y = torch.tensor([0, 1, 1, 1, 0])
    lin.train()
    acc = evaluate_accuracy(lin, [(x[:3], y[:3]), (x[3:], y[3:])])
    assert acc == pytest.approx(3 / 5)
    assert lin.training


def test_evaluate_accuracy_of_an_empty_loader_is_an_error():
    """The one accuracy of the package refuses an empty evaluation set (the pipeline's
    copy returned nan for it, silently)."""
    from captum_unicam.errors import InputError

    with pytest.raises(InputError, match="empty"):
        evaluate_accuracy(nn.Linear(2, 3), [])
    with pytest.raises(InputError, match="empty"):
        evaluate_accuracy(
            nn.Linear(2, 3), DataLoader(TensorDataset(torch.zeros(0, 2), torch.zeros(0).long()))
        )


# ---------------------------------------------------------------------------
# Teacher-assistant chain, cross-validation
# ---------------------------------------------------------------------------


def test_teacher_assistant_chain_distils_link_by_link(monkeypatch):
    calls = []
    real = kd_train.train_model

    def spy(model, loader, recipe, **kwargs):
        calls.append((model, kwargs.get("teacher"), recipe.method, kwargs.get("unlabelled")))
        return real(model, loader, recipe, **kwargs)

    monkeypatch.setattr(kd_train, "train_model", spy)
    x, y = _data(n=16)
    models = train_teacher_assistant_chain(
        _loader(x, y),
        Recipe(epochs=1),
        num_classes=3,
        archs=("small_resnet_m", "small_resnet_s", "small_resnet_s"),
        epochs=(1, 1, 1),
        build_kwargs={"width": 2},
        progress=False,
        transfer_loader=[x[:8], x[8:]],
    )
    assert len(models) == 3
    assert calls[0][1:] == (None, None, False)
    assert calls[1][1] is models[0] and calls[1][2] == "response" and calls[1][3] is True
    assert calls[2][1] is models[1]
    with pytest.raises(ValueError, match="unknown architecture"):
        train_teacher_assistant_chain(
            _loader(x, y), Recipe(), num_classes=3, archs=("resnet9", "resnet18")
        )
    with pytest.raises(ValueError, match="at least two"):
        train_teacher_assistant_chain(_loader(x, y), Recipe(), num_classes=3, archs=("resnet18",))


def test_cross_validate_scores_each_fold():
    x, y = _data(n=24)
    ds = TensorDataset(x, y)
    out = cross_validate(lambda: _tiny(0), ds, Recipe(epochs=1, batch_size=8), k=3, progress=False)
    assert len(out["accuracies"]) == 3 and len(out["folds"]) == 3
    assert out["mean"] == pytest.approx(sum(out["accuracies"]) / 3)
    assert all(0.0 <= a <= 1.0 for a in out["accuracies"])


# ---------------------------------------------------------------------------
# train_checkpoint (captum-unicam train)
# ---------------------------------------------------------------------------


def test_train_checkpoint_teacher_then_student(tmp_path):
    from captum_unicam.data.loaders import load_dataset

    t_path = tmp_path / "teacher.pt"
    info = train_checkpoint(
        "controlled:1",
        Recipe("small_resnet_s", epochs=1, limit=16, batch_size=8),
        t_path,
        progress=False,
        test_limit=64,
    )
    teacher, meta = load_checkpoint(t_path, arch="small_resnet_s", num_classes=4)
    assert meta["kd_method"] is None and meta["class_names"] == info["class_names"]
    assert meta["extra"]["train_size"] == 16 and meta["recipe"]["data"] == "controlled:1"
    test = load_dataset("controlled:1", "test", limit=64)
    acc = evaluate_accuracy(teacher, DataLoader(test, batch_size=500))
    assert (
        acc == pytest.approx(info["test_accuracy"]) == pytest.approx(meta["extra"]["test_accuracy"])
    )

    s_path = tmp_path / "student.pt"
    info_s = train_checkpoint(
        "controlled:1",
        Recipe("small_resnet_s", method="attention", epochs=1, limit=16, batch_size=8),
        s_path,
        teacher=t_path,
        progress=False,
        test_limit=64,
    )
    _, meta_s = load_checkpoint(s_path)
    assert meta_s["kd_method"] == "attention" and meta_s["teacher"] == str(t_path)
    assert info_s["kd_method"] == "attention"


def test_train_checkpoint_rejects_bad_input_before_training(tmp_path):
    out = tmp_path / "m.pt"
    with pytest.raises(ValueError, match="unknown architecture"):
        train_checkpoint("controlled", Recipe("resnet9"), out, progress=False)
    with pytest.raises(ValueError, match="needs a Teacher"):
        train_checkpoint(
            "controlled", Recipe("small_resnet_s", method="response"), out, progress=False
        )
    with pytest.raises(ValueError, match="KD method"):
        train_checkpoint("controlled", Recipe("small_resnet_s"), out, teacher=out, progress=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        train_checkpoint(
            "controlled",
            Recipe("small_resnet_s", method="response"),
            out,
            teacher=tmp_path / "no.pt",
            progress=False,
        )
    with pytest.raises(DataSpecError):
        train_checkpoint("mnist:/nowhere", Recipe("small_resnet_s"), out, progress=False)
    with pytest.raises(DataSpecError):
        train_checkpoint(
            "imagefolder:" + str(tmp_path / "missing"),
            Recipe("small_resnet_s"),
            out,
            progress=False,
        )
    with pytest.raises(ValueError, match="folder"):
        train_checkpoint("controlled", Recipe("small_resnet_s"), tmp_path, progress=False)
    # a Teacher with another class count
    wrong = tmp_path / "t3.pt"
    save_checkpoint(
        wrong, build_model("small_resnet_s", 3, width=2), arch="small_resnet_s", num_classes=3
    )
    with pytest.raises(CheckpointError):
        train_checkpoint(
            "controlled",
            Recipe("small_resnet_s", method="response", limit=8),
            out,
            teacher=wrong,
            progress=False,
        )
    assert not out.exists()


# ---------------------------------------------------------------------------
# demo models: the cache
# ---------------------------------------------------------------------------


def test_demo_models_cache_and_recipe_change(tmp_path, monkeypatch):
    from captum_unicam.pipeline import demo

    real = demo.demo_recipe

    def tiny_recipe(seed=0, quick=False):
        r = real(seed, quick=True)
        r["sizes"] = {"teacher": 32, "base": 16, "student": 32, "test": 16}
        r["epochs"] = {"teacher": 1, "base": 1, "student": 1}
        r["batch_size"] = {"teacher": 16, "base": 8, "student": 16}
        return r

    monkeypatch.setattr(demo, "demo_recipe", tiny_recipe)
    first = demo.train_demo_models(0, quick=True, cache_dir=tmp_path, progress=False)
    assert not first.from_cache
    assert set(first.accuracies) == {"teacher", "base", "student"}
    assert first.class_names == ["circle", "square", "triangle", "cross"]
    # accuracies are cue-free test accuracies: recompute them
    from captum_unicam.data import ControlledShapes

    test = ControlledShapes(16, seed=0, split="test")
    for role, model in first.models.items():
        acc = evaluate_accuracy(model, [(test.images, test.labels)])
        assert acc == pytest.approx(first.accuracies[role])
    second = demo.train_demo_models(0, quick=True, cache_dir=tmp_path, progress=False)
    assert second.from_cache and second.accuracies == first.accuracies
    for role in ("teacher", "base", "student"):
        assert _same_weights(first.models[role], second.models[role])
    _, meta = load_checkpoint(first.paths["student"])
    assert meta["kd_method"] == first.recipe["method"] and meta["extra"]["role"] == "student"

    def changed(seed=0, quick=False):
        r = tiny_recipe(seed, quick)
        r["epochs"] = {"teacher": 2, "base": 1, "student": 1}
        return r

    monkeypatch.setattr(demo, "demo_recipe", changed)
    third = demo.train_demo_models(0, quick=True, cache_dir=tmp_path, progress=False)
    assert not third.from_cache
    assert not _same_weights(first.teacher, third.teacher)
