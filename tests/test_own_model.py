"""A model of an architecture the library does not define, brought by a factory
``"package.module:function"``: imported as code, weights loaded with weights_only=True,
layers by dotted path, errors that name the fix."""

import sys
import textwrap

import pytest
import torch

from captum_unicam.errors import CheckpointError, InputError
from captum_unicam.models import (
    build_from_factory,
    get_layer,
    import_factory,
    load_checkpoint,
    parse_factory,
    save_checkpoint,
)

torch.set_num_threads(1)

MODULE = textwrap.dedent("""
    import torch
    from torch import nn

    IMPORTS = globals().get("IMPORTS", 0) + 1


    class Block(nn.Module):
        def __init__(self, c_in, c_out):
            super().__init__()
            self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
            self.bn = nn.BatchNorm2d(c_out)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)))


    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])

        def forward(self, x):
            for m in self.layer:
                x = torch.relu(m(x))
            return x


    class DigitNet(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.features = nn.Sequential(Block(3, 4), nn.MaxPool2d(2), Block(4, 8),
                                          Block(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.encoder = Encoder()
            self.head = nn.Linear(8, num_classes)

        def forward(self, x):
            return self.head(self.encoder(self.features(x)))


    def digit_net(num_classes=10):
        return DigitNet(num_classes)


    def fixed_net():
        return DigitNet(3)


    def not_a_model(num_classes=10):
        return {"num_classes": num_classes}


    def broken(num_classes=10):
        raise RuntimeError("out of ideas")


    NUMBER = 3
""")


@pytest.fixture
def mynets(tmp_path, monkeypatch):
    """A module ``mynets_<n>`` of the user's, on sys.path; its name."""
    name = f"mynets_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    (tmp_path / "needs_missing.py").write_text("import not_installed_anywhere_xyz\n")
    (tmp_path / "raises_on_import.py").write_text("raise ValueError('bad config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for mod in (name, "needs_missing", "raises_on_import"):
        sys.modules.pop(mod, None)


def _trained(mynets, n=3, seed=0):
    torch.manual_seed(seed)
    model = build_from_factory(f"{mynets}:digit_net", n)
    with torch.no_grad():  # batch-norm statistics that are not the defaults
        model.train()(torch.rand(8, 3, 16, 16))
    return model.eval()


def test_plain_state_dict_of_an_own_architecture(tmp_path, mynets):
    model = _trained(mynets)
    path = tmp_path / "digits.pt"
    torch.save(model.state_dict(), path)
    loaded, meta = load_checkpoint(path, factory=f"{mynets}:digit_net", num_classes=3)
    assert type(loaded).__name__ == "DigitNet" and not loaded.training
    x = torch.rand(5, 3, 16, 16)
    assert torch.equal(loaded(x), model(x))  # the same weights, the same function
    assert meta["arch"] is None and meta["factory"] == f"{mynets}:digit_net"
    assert meta["num_classes"] == 3 and meta["path"] == str(path)
    # a DistributedDataParallel prefix and the {"state_dict": ...} wrapper are removed
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    again, _ = load_checkpoint(path, factory=f"{mynets}:digit_net", num_classes=3)
    assert torch.equal(again(x), model(x))
    # a factory without num_classes is called without it
    fixed, _ = load_checkpoint(path, factory=f"{mynets}:fixed_net")
    assert torch.equal(fixed(x), model(x))


def test_layers_by_dotted_path(mynets):
    model = _trained(mynets)
    assert get_layer(model, "features.3.conv") is model.features[3].conv
    assert get_layer(model, "encoder.layer.1") is model.encoder.layer[1]
    with pytest.raises(ValueError, match="closest: features.3.conv"):
        get_layer(model, "features.3.cnv")
    with pytest.raises(
        ValueError, match="no stage 'layer1'.*dotted paths starting with: features, encoder, head$"
    ):
        get_layer(model, "L4")  # no ResNet stages: the message says what to give


def test_checkpoint_that_records_its_factory(tmp_path, mynets):
    spec = f"{mynets}:digit_net"
    model = _trained(mynets)
    path = tmp_path / "student.pt"
    save_checkpoint(
        path,
        model,
        factory=spec,
        num_classes=3,
        class_names=["a", "b", "c"],
        preprocessing={"image_size": 16, "resize": "exact", "normalize": "none"},
        accuracy=0.5,
    )
    sys.modules.pop(mynets)
    with pytest.raises(
        CheckpointError, match=f"your own code .factory '{spec}'.; pass factory='{spec}'"
    ):
        load_checkpoint(path)
    assert mynets not in sys.modules  # the file alone never imports code
    with pytest.raises(CheckpointError, match="not a resnet18"):
        load_checkpoint(path, arch="resnet18", num_classes=None)
    loaded, meta = load_checkpoint(path, factory=spec)
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(loaded(x), model(x))
    assert meta["class_names"] == ["a", "b", "c"] and meta["accuracy"] == 0.5
    assert meta["preprocessing"]["image_size"] == 16 and meta["arch"] is None
    with pytest.raises(CheckpointError, match="3 classes, but 4 were expected"):
        load_checkpoint(path, factory=spec, num_classes=4)


def test_save_with_a_factory_that_builds_another_model_writes_nothing(tmp_path, mynets):
    model = _trained(mynets, n=3)
    with pytest.raises(
        InputError,
        match=r"does not load into what factory .* builds "
        r"\(shapes differ .*head.weight \(3, 8\) vs \(5, 8\)",
    ):
        save_checkpoint(tmp_path / "m.pt", model, factory=f"{mynets}:digit_net", num_classes=5)
    with pytest.raises(InputError, match="exactly one of arch= and factory="):
        save_checkpoint(
            tmp_path / "m.pt",
            model,
            arch="small_resnet_s",
            factory=f"{mynets}:digit_net",
            num_classes=3,
        )
    assert not (tmp_path / "m.pt").exists()


def test_keys_that_do_not_match_are_listed(tmp_path, mynets):
    state = _trained(mynets).state_dict()
    state["extra_head.weight"] = torch.zeros(2, 2)
    del state["encoder.layer.1.bias"]
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, factory=f"{mynets}:digit_net", num_classes=3)
    msg = str(info.value)
    assert "missing keys: encoder.layer.1.bias" in msg
    assert "unexpected keys: extra_head.weight" in msg and "odd.pt" in msg


def test_factory_errors_name_the_fix(tmp_path, mynets):
    path = tmp_path / "w.pt"
    torch.save(_trained(mynets).state_dict(), path)
    cases = [
        ("not a factory", "not a module and a function; give it as 'package.module:function'"),
        ("no_such_module_xyz:net", "no module named 'no_such_module_xyz'.*PYTHONPATH"),
        ("needs_missing:net", "needs the module 'not_installed_anywhere_xyz'.*install it"),
        ("raises_on_import:net", "importing 'raises_on_import' raised ValueError: bad config"),
        (f"{mynets}:digitnet", "has no attribute 'digitnet'; it defines: .*digit_net"),
        (f"{mynets}:NUMBER", "'NUMBER' is a int, not a function"),
        (f"{mynets}:not_a_model", "returned a dict, not a torch.nn.Module"),
        (f"{mynets}:broken", r"calling it \(num_classes=3\) raised RuntimeError: out of ideas"),
    ]
    for spec, message in cases:
        with pytest.raises(InputError, match=message):
            load_checkpoint(path, factory=spec, num_classes=3)
    with pytest.raises(CheckpointError, match="plain state dict.*factory='package.module:"):
        load_checkpoint(path)
    with pytest.raises(InputError, match="not both"):
        load_checkpoint(path, arch="resnet18", factory=f"{mynets}:digit_net")


def test_parse_and_import_factory(mynets):
    assert parse_factory("a.b_c:make.small") == ("a.b_c", "make.small")
    for bad in ("a:", ":f", "a.b", "a:b:c", "1a:f", None, 3):
        with pytest.raises(InputError):
            parse_factory(bad)
    assert import_factory(f"{mynets}:DigitNet.__init__") is not None
    assert callable(import_factory("torchvision.models:resnet18"))
