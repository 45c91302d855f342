"""One forward (and backward) pass for all layers in evaluate_kd: the multi-layer helpers
equal Captum's LayerGradCam and the single-layer feature reader, layer by layer."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerGradCam
from test_unicam_common import SmallResNet, make
from torch import nn

from captum_unicam.metrics._batch import gradcams as _gradcams
from captum_unicam.metrics._features import layer_features, layers_features


def _x(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64), torch.arange(n) % 4


def _layers(model):
    return [model.stem, model.layer1, model.layer2, model.layer1.conv1]


def _captum(model, layers, x, y):
    return [
        LayerGradCam(model, m).attribute(x, target=y, relu_attributions=True).detach()
        for m in layers
    ]


class InplaceAfter(nn.Module):
    """The hooked layer's output is modified in place by the next module."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


class Twice(nn.Module):
    """``block`` runs twice in one forward pass."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 5, 3, padding=1)
        self.block = nn.Conv2d(5, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        return self.fc(self.block(self.block(self.stem(x))).mean((2, 3)))


class Split(nn.Module):
    def forward(self, a):
        return a, 2 * a


class TupleLayer(nn.Module):
    """``split`` returns a tuple of tensors."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.split = Split()
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        return self.fc(torch.cat(self.split(self.conv(x)), dim=1).mean((2, 3)))


@pytest.mark.parametrize("frozen", [False, True])
def test_gradcams_equal_layergradcam(frozen):
    model = make(SmallResNet, 3)
    if frozen:
        for p in model.parameters():
            p.requires_grad_(False)
    x, y = _x()
    ours = _gradcams(model, _layers(model), x, y)
    for a, b in zip(ours, _captum(model, _layers(model), x, y)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if frozen:  # the parameters' flags are left as they were
        assert all(not p.requires_grad for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


def test_gradcams_layer_with_inplace_successor():
    torch.manual_seed(0)
    model = InplaceAfter().double().eval()
    x, y = _x()
    (ours,) = _gradcams(model, [model.conv], x, y)
    (ref,) = _captum(model, [model.conv], x, y)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_gradcams_fall_back_to_captum_where_one_pass_cannot_stand_for_it():
    torch.manual_seed(0)
    twice = Twice().double().eval()
    x, y = _x()
    for a, b in zip(
        _gradcams(twice, [twice.block, twice.stem], x, y),
        _captum(twice, [twice.block, twice.stem], x, y),
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not any(m._forward_hooks for m in twice.modules())
    tup = TupleLayer().double().eval()
    with pytest.raises(ValueError, match="returns a tuple of tensors.*one tensor"):
        _gradcams(tup, [tup.conv, tup.split], x, y)
    assert not any(m._forward_hooks for m in tup.modules())


def test_layers_features_equal_one_layer_at_a_time():
    model = make(SmallResNet, 4)
    x, _ = _x(seed=1)
    layers = _layers(model) + [model.layer1]  # a repeated layer is read once, returned twice
    got = layers_features(model, layers, x)
    for m, g in zip(layers, got):
        assert torch.equal(g, layer_features(model, m, x))
    calls = []
    h = model.fc.register_forward_hook(lambda *a: calls.append(1))
    try:
        layers_features(model, [model.layer1, model.stem], x)
    finally:
        h.remove()
    assert calls == []  # stopped once both layers had run
    with pytest.raises(ValueError, match="was not called"):
        layers_features(model, [model.layer1, nn.Linear(2, 2)], x)
    assert not any(m._forward_hooks for m in model.modules())


def test_evaluate_kd_perturbs_once_per_map():
    """Grad-CAM: one perturbation per model; a UniCAM map, shared by both models: one."""
    from captum_unicam.metrics import evaluate_kd
    from captum_unicam.perturb import mask_multiply

    student, base = make(SmallResNet, 5), make(SmallResNet, 6)
    calls = []

    def counting(inputs, attributions):
        calls.append(1)
        return mask_multiply(inputs, attributions)

    x, y = _x(n=8, seed=2)
    layers = {"L1": (student.layer1, base.layer1), "L2": (student.layer2, base.layer2)}
    evaluate_kd(
        student,
        layers,
        [(x, y)],
        base_forward_func=base,
        perturbation=counting,
        progress=False,
        n_bootstrap=10,
        n_permutations=10,
    )
    # each map perturbs the images once and, for the leakage baseline, the uninformative ones once
    assert len(calls) == 2 * len(layers) * (2 + 1 + 1)
    calls.clear()
    evaluate_kd(
        student,
        layers,
        [(x, y)],
        base_forward_func=base,
        perturbation=counting,
        progress=False,
        n_bootstrap=10,
        n_permutations=10,
        leakage=False,
    )
    assert len(calls) == len(layers) * (2 + 1 + 1)
