"""Tests of captum_unicam.models: architectures, L1..L4, checkpoint files."""

from __future__ import annotations

import copy
import io
import os
import pickle

import pytest
import torch
import torchvision
from torch import nn

from captum_unicam.errors import OutputError
from captum_unicam.models import (
    ARCHITECTURES,
    CheckpointError,
    build_model,
    get_layer,
    load_checkpoint,
    save_checkpoint,
    stage_layers,
)


@pytest.fixture(scope="module")
def r18_cifar():
    """A ResNet-18 with the CIFAR stem and non-trivial batch-norm statistics; tests
    must not modify it."""
    return _trained_like("resnet18", 10, cifar_stem=True).eval()


def _spatial_sizes(model, x):
    """Output sizes of L1..L4 on x, read with forward hooks (removed afterwards)."""
    sizes, handles = {}, []
    for name, layer in stage_layers(model).items():
        handles.append(
            layer.register_forward_hook(lambda m, i, o, n=name: sizes.__setitem__(n, o.shape))
        )
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, sizes


# ---------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch,channels",
    [
        ("small_resnet_s", (8, 16, 32, 64)),
        ("small_resnet_m", (16, 32, 64, 128)),
        ("small_resnet", (16, 32, 64, 128)),
        ("small_resnet_l", (32, 64, 128, 256)),
    ],
)
def test_small_resnets(arch, channels):
    torch.manual_seed(0)
    model = build_model(arch, 5).eval()
    out, sizes = _spatial_sizes(model, torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 5)
    assert [s[1] for s in sizes.values()] == list(channels)
    assert [s[-1] for s in sizes.values()] == [32, 16, 8, 4]  # CIFAR stem by default
    # the ImageNet-like stem divides the resolution by 4 first
    _, sizes = _spatial_sizes(
        build_model(arch, 5, cifar_stem=False).eval(), torch.rand(1, 3, 64, 64)
    )
    assert [s[-1] for s in sizes.values()] == [16, 8, 4, 2]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_resnets_with_and_without_cifar_stem(arch):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16)
    plain = build_model(arch, 10).eval()
    out, sizes = _spatial_sizes(plain, x)
    assert out.shape == (1, 10) and sizes["L4"][-1] == 1
    assert plain.conv1.kernel_size == (7, 7) and isinstance(plain.maxpool, nn.MaxPool2d)
    cifar = build_model(arch, 10, cifar_stem=True).eval()
    out, sizes = _spatial_sizes(cifar, x)
    assert out.shape == (1, 10)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    assert [s[-1] for s in sizes.values()] == [16, 8, 4, 2]
    width = 1 if arch == "resnet18" else 4  # BasicBlock vs Bottleneck expansion
    assert [s[1] for s in sizes.values()] == [64 * width, 128 * width, 256 * width, 512 * width]


def test_resnet101_and_paper_layers():
    # paper, appendix D.2: L1..L4 are the last blocks, i.e. the 3rd, 4th, 23rd and
    # 3rd block of ResNet-101's stages (2nd of each stage for ResNet-18)
    model = build_model("resnet101", 3).eval()
    layers = stage_layers(model)
    assert layers["L3"] is model.layer3[22] and len(model.layer3) == 23
    assert layers["L1"] is model.layer1[2] and layers["L2"] is model.layer2[3]
    assert layers["L4"] is model.layer4[2]
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3)
    r18 = build_model("resnet18", 3)
    assert all(stage_layers(r18)[f"L{i}"] is getattr(r18, f"layer{i}")[1] for i in range(1, 5))
    r50 = build_model("resnet50", 3)
    assert stage_layers(r50)["L3"] is r50.layer3[5]


def test_build_model_never_downloads_and_checks_arguments():
    with pytest.raises(ValueError, match="small_resnet_s"):
        build_model("small_resnet_x", 4)
    with pytest.raises(ValueError, match="resnet18"):
        build_model("resnt18", 4)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet18", 0)
    with pytest.raises(ValueError, match="never downloads"):
        build_model("resnet18", 4, weights="IMAGENET1K_V1")
    assert set(ARCHITECTURES) >= {"resnet18", "resnet50", "resnet101", "small_resnet"}
    custom = build_model("small_resnet", 2, width=4, blocks=(1, 2, 1, 1))
    assert len(custom.layer2) == 2 and custom.fc.in_features == 32


def test_build_model_is_seeded_by_torch():
    torch.manual_seed(1)
    a = build_model("small_resnet_s", 3)
    torch.manual_seed(1)
    b = build_model("small_resnet_s", 3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# ---------------------------------------------------------------------------
# Layer lookup
# ---------------------------------------------------------------------------


def test_stage_layers_on_user_and_wrapped_models():
    user = torchvision.models.resnet34(weights=None)
    assert stage_layers(user)["L2"] is user.layer2[3]
    wrapped = nn.DataParallel(user)
    assert stage_layers(wrapped)["L4"] is user.layer4[2]
    with pytest.raises(ValueError, match="no stage 'layer1'.*get_layer"):
        stage_layers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    with pytest.raises(ValueError, match="nn.Module"):
        stage_layers("resnet18")


def test_get_layer_by_paper_name_and_path():
    model = build_model("resnet18", 4)
    assert get_layer(model, "L4") is model.layer4[1]
    assert get_layer(model, "l1") is model.layer1[1]
    assert get_layer(model, "layer4.1.conv2") is model.layer4[1].conv2
    assert get_layer(model, "fc") is model.fc
    assert get_layer(model, model.layer3) is model.layer3
    assert get_layer(nn.DataParallel(model), "module.layer2.0") is model.layer2[0]
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert get_layer(seq, "0") is seq[0]


def test_get_layer_errors_list_closest_names():
    model = build_model("resnet18", 4)
    with pytest.raises(ValueError) as info:
        get_layer(model, "layer4.1.conv3")
    msg = str(info.value)
    assert "layer4.1.conv2" in msg and "L1, L2, L3, L4" in msg and "'layer4.1.conv3'" in msg
    with pytest.raises(ValueError, match="L1"):
        get_layer(model, "L5")
    with pytest.raises(ValueError, match="not part of this model"):
        get_layer(model, nn.Linear(2, 2))
    seq = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError) as info:
        get_layer(seq, "L4")
    assert "layer1" in str(info.value)
    with pytest.raises(ValueError) as info:
        get_layer(seq, "1")
    assert "L1, L2" not in str(info.value) and "0" in str(info.value)


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def _trained_like(arch="small_resnet_s", k=4, **kw):
    torch.manual_seed(0)
    model = build_model(arch, k, **kw)
    with torch.no_grad():  # non-trivial batch-norm statistics, as after training
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return model


def test_checkpoint_round_trip(tmp_path):
    model = _trained_like()
    path = tmp_path / "sub" / "student.pt"
    save_checkpoint(
        path,
        model,
        arch="small_resnet_s",
        num_classes=4,
        class_names=["circle", "square", "triangle", "cross"],
        recipe={"epochs": 3, "lr": 0.01, "data": tmp_path / "data", "betas": (0.9, 0.99)},
        kd_method="response",
        teacher="models/teacher.pt",
        extra={"accuracy": 0.91},
    )
    assert model.training  # the model is not touched
    assert os.listdir(path.parent) == ["student.pt"]  # no temporary file left
    loaded, meta = load_checkpoint(path, arch="small_resnet_s", num_classes=4)
    assert not loaded.training
    assert meta["arch"] == "small_resnet_s" and meta["num_classes"] == 4
    assert meta["class_names"] == ["circle", "square", "triangle", "cross"]
    assert meta["recipe"] == {
        "epochs": 3,
        "lr": 0.01,
        "data": str(tmp_path / "data"),
        "betas": (0.9, 0.99),
    }
    assert meta["kd_method"] == "response" and meta["teacher"] == "models/teacher.pt"
    assert meta["extra"] == {"accuracy": 0.91} and meta["path"] == str(path)
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    # the file itself is a plain dict of tensors and values
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "captum-unicam-checkpoint" and raw["version"] == 2
    assert len(raw["meta"]["sha256"]) == 64 and int(raw["meta"]["sha256"], 16) >= 0


@pytest.mark.parametrize("arch", ["resnet18", "small_resnet"])
def test_checkpoint_rebuilds_build_options(tmp_path, arch, r18_cifar):
    if arch == "resnet18":
        model = r18_cifar
    else:
        model = _trained_like("small_resnet", 10, width=4).eval()
    save_checkpoint(tmp_path / "m.pt", model, arch=arch, num_classes=10)
    loaded, meta = load_checkpoint(tmp_path / "m.pt")
    assert loaded.conv1.weight.shape == model.conv1.weight.shape
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_user_model_stem_is_read_off_the_model(tmp_path, r18_cifar):
    user = copy.deepcopy(r18_cifar)  # as if built by hand, not by build_model
    delattr(user, "_captum_unicam_build")
    save_checkpoint(tmp_path / "u.pt", user, arch="resnet18", num_classes=10)
    loaded, meta = load_checkpoint(tmp_path / "u.pt")
    assert meta["build_kwargs"] == {"cifar_stem": True}
    assert isinstance(loaded.maxpool, nn.Identity)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    model = _trained_like()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, arch="small_resnet_s", num_classes=4, extra={"v": 1})
    before = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike, io.BytesIO)) or not hasattr(f, "fileno"):
            return real_save(obj, f, *args, **kwargs)  # the in-memory metadata check
        f.write(b"partial bytes")
        raise OSError("write failed")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OutputError, match="could not be written .write failed.*nowhere"):
        save_checkpoint(
            path, model, arch="small_resnet_s", num_classes=4, extra={"v": 2}, overwrite=True
        )
    with pytest.raises(OutputError):
        save_checkpoint(tmp_path / "new.pt", model, arch="small_resnet_s", num_classes=4)
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]  # no new file, no temporary file
    assert load_checkpoint(path)[1]["extra"] == {"v": 1}


def test_bad_metadata_writes_nothing(tmp_path):
    model = _trained_like()
    with pytest.raises(ValueError, match=r"recipe\['optimizer'\]"):
        save_checkpoint(
            tmp_path / "m.pt",
            model,
            arch="small_resnet_s",
            num_classes=4,
            recipe={"optimizer": torch.optim.SGD},
        )
    with pytest.raises(ValueError, match="class_names"):
        save_checkpoint(
            tmp_path / "m.pt", model, arch="small_resnet_s", num_classes=4, class_names=["a"]
        )
    with pytest.raises(ValueError, match="built as small_resnet_s"):
        save_checkpoint(tmp_path / "m.pt", model, arch="resnet18", num_classes=4)
    with pytest.raises(ValueError, match="built as small_resnet_s with 4 classes"):
        save_checkpoint(tmp_path / "m.pt", model, arch="small_resnet_s", num_classes=3)
    user = torchvision.models.resnet18(weights=None, num_classes=2)
    with pytest.raises(ValueError, match="fc layer has 2 outputs"):
        save_checkpoint(tmp_path / "m.pt", user, arch="resnet18", num_classes=3)
    assert list(tmp_path.iterdir()) == []


class _Boom:
    """Unpickling this runs code: it would create the file named in the payload."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_loading_is_weights_only(tmp_path):
    target = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": _Boom(str(target))}, f, protocol=2)
    with pytest.raises(CheckpointError, match="bare Python pickle.*not loaded"):
        load_checkpoint(evil, arch="small_resnet_s")
    assert not target.exists()  # nothing was executed
    torch.save({"state_dict": {}, "payload": _Boom(str(target))}, evil)  # in a torch zip
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(evil, arch="small_resnet_s")
    assert not target.exists()
    whole = tmp_path / "whole.pt"
    torch.save(build_model("small_resnet_s", 2), whole)  # a pickled module
    with pytest.raises(CheckpointError, match="state_dict"):
        load_checkpoint(whole, arch="small_resnet_s")


def test_mismatch_errors_name_file_found_expected_and_fix(tmp_path):
    path = tmp_path / "base.pt"
    save_checkpoint(path, _trained_like(), arch="small_resnet_s", num_classes=4)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, arch="resnet18")
    msg = str(info.value)
    assert str(path) in msg and "small_resnet_s with 4 classes" in msg
    assert "resnet18 with 4 classes was expected" in msg and "arch='small_resnet_s'" in msg
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, num_classes=10)
    assert "small_resnet_s with 10 classes was expected" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(junk)
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    with pytest.raises(CheckpointError, match="neither"):
        load_checkpoint(listing, arch="resnet18")


def test_plain_torchvision_state_dict(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    path = tmp_path / "resnet18-local.pth"
    torch.save(tv.state_dict(), path)
    with pytest.raises(CheckpointError, match="arch"):
        load_checkpoint(path)
    loaded, meta = load_checkpoint(path, arch="resnet18")  # class count read off fc
    assert meta["num_classes"] == 7 and meta["build_kwargs"] == {"cifar_stem": False}
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tv(x), loaded(x))
    with pytest.raises(CheckpointError, match="resnet18 with 7 classes.*num_classes=7"):
        load_checkpoint(path, arch="resnet18", num_classes=10)
    with pytest.raises(CheckpointError, match="do not fit a resnet34"):
        load_checkpoint(path, arch="resnet34")


def test_plain_state_dict_wrappers(tmp_path):
    # DistributedDataParallel prefixes and {"state_dict": ...} wrappers are accepted
    model = _trained_like("small_resnet_s", 3).eval()
    ddp = tmp_path / "ddp.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ddp)
    again, meta = load_checkpoint(ddp, arch="small_resnet_s", num_classes=3)
    assert meta["class_names"] is None and meta["kd_method"] is None
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    with pytest.raises(CheckpointError, match="do not fit a small_resnet_m"):
        load_checkpoint(ddp, arch="small_resnet_m")


def test_plain_state_dict_with_cifar_stem(tmp_path, r18_cifar):
    model = r18_cifar
    torch.save(model.state_dict(), tmp_path / "c.pt")
    loaded, meta = load_checkpoint(tmp_path / "c.pt", arch="resnet18")
    assert meta["build_kwargs"] == {"cifar_stem": True}
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
