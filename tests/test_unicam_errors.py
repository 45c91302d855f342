"""UniCAM: bad input, degenerate cases, and what it must never change."""

from __future__ import annotations

import doctest
import warnings

import dcor
import pytest
import torch
from test_unicam_common import (
    SmallResNet,
    SmallVGG,
    TwoInputNet,
    all_hooks,
    batch,
    make,
    one_hot,
)
from torch import nn

import captum_unicam.attr.unicam as unicam_module
from captum_unicam.attr import UniCAM, UniCAMWarning
from captum_unicam.errors import InputError


@pytest.fixture()
def pair():
    return make(SmallResNet, 1), make(SmallResNet, 2)


@pytest.fixture(scope="module")
def data():
    return batch(8, seed=5)


def unicam_of(pair, **kwargs):
    student, base = pair
    return UniCAM(student, student.layer2, base, base.layer2, **kwargs)


# ---------------------------------------------------------------------------
# Bad input: ValueError, raised before the forward passes where possible
# ---------------------------------------------------------------------------


def test_fewer_than_five_samples_points_to_context_and_says_why(pair, data):
    x, y = data
    for n in (3, 4):
        with pytest.raises(InputError, match="context=") as info:
            unicam_of(pair).attribute(x[:n], target=y[:n])
        assert "n = 4" in str(info.value) and "2-dimensional" in str(info.value)
    with pytest.raises(InputError, match="context="):
        unicam_of(pair).attribute(x[:1], target=y[:1], context=(x[1:4], y[1:4]))
    # with enough context, a single image is fine
    assert unicam_of(pair).attribute(x[:1], target=y[:1], context=(x[1:5], y[1:5])).shape == (
        1,
        1,
        4,
        4,
    )


@pytest.mark.parametrize(
    "target, match",
    [
        (torch.tensor([0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0]), "integer tensor"),
        ([0, 1, 2], "list of length 3"),
        (torch.tensor([[0, 1]] * 8), "integer tensor of shape"),
        (-1, "negative"),
        ((0, 1), "tuple"),
        (True, "bool"),
        (torch.ones(5, 3), r"float tensor of shape \(5, 3\)"),
    ],
)
def test_bad_targets(pair, data, target, match):
    x, _ = data
    with pytest.raises(ValueError, match=match):
        unicam_of(pair).attribute(x, target=target)


def test_target_out_of_range(pair, data):
    x, y = data
    table = torch.randn(3, 5)
    calls = []
    student, base = pair
    handle = student.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="only 3 rows"):
            unicam_of(pair, label_embeddings=table).attribute(x, target=y)  # y contains 3
        assert calls == []  # rejected before any forward pass
    finally:
        handle.remove()
    with pytest.raises(ValueError, match="out of range: there are 4 classes"):
        unicam_of(pair).attribute(x, target=[7, 0, 1, 2, 3, 0, 1, 2])


def test_bad_arguments(pair, data):
    x, y = data
    with pytest.raises(ValueError, match="features"):
        unicam_of(pair).attribute(x, target=y, features="unique")
    with pytest.raises(ValueError, match="grad_kwargs"):
        unicam_of(pair).attribute(x, target=y, grad_kwargs=[1])
    with pytest.raises(ValueError, match="context"):
        unicam_of(pair).attribute(x, target=y, context=x)
    with pytest.raises(ValueError, match="example shape"):
        unicam_of(pair).attribute(x, target=y, context=(x[:, :, :8], y))
    with pytest.raises(ValueError, match="label_embeddings"):
        unicam_of(pair, label_embeddings=torch.ones(4))
    with pytest.raises(ValueError, match="reshape_transform"):
        unicam_of(pair, reshape_transform=3)
    with pytest.raises(ValueError, match="DataParallel"):
        student, base = pair
        UniCAM(student, student.layer2, base, base.layer2, [0])
    with pytest.raises(ValueError, match="label vectors"):
        # label vectors for the inputs, class indices for the context: widths differ
        unicam_of(pair).attribute(
            x[:4], target=torch.randn(4, 7, dtype=torch.float64), context=(x[4:], y[4:])
        )


def test_batchwise_additional_arg_needs_context_rows():
    student, base = make(TwoInputNet, 1), make(TwoInputNet, 2)
    img, depth = (
        torch.randn(6, 3, 8, 8, dtype=torch.float64),
        torch.randn(6, 1, 8, 8, dtype=torch.float64),
    )
    scale = torch.ones(6, dtype=torch.float64)
    unicam = UniCAM(student, student.layer, base, base.layer)
    with pytest.raises(ValueError, match="ctx_additional_forward_args"):
        unicam.attribute(
            (img[:2], depth[:2]),
            target=[0, 1],
            additional_forward_args=(scale[:2],),
            context=((img[2:], depth[2:]), [0, 1, 2, 3]),
        )


# ---------------------------------------------------------------------------
# Clear errors from the forward pass; hooks always removed
# ---------------------------------------------------------------------------


def test_inputs_the_model_rejects(pair):
    x = torch.randn(8, 5, 16, 16, dtype=torch.float64)  # 5 channels, the models take 3
    with pytest.raises(ValueError, match="Student failed on the inputs") as info:
        unicam_of(pair).attribute(x, target=torch.arange(8) % 4)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert all_hooks(*pair) == 0


def test_nan_activations(pair, data):
    x, y = data
    x = x.clone()
    x[2, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        unicam_of(pair).attribute(x, target=y)
    assert all_hooks(*pair) == 0


def test_layer_never_reached(pair, data):
    x, y = data
    student, base = pair
    stray = nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="never called during the Base's forward"):
        UniCAM(student, student.layer2, base, stray).attribute(x, target=y)
    with pytest.raises(ValueError, match="student_feature_layer.*never"):
        UniCAM(student, student.layer1, base, base.layer1, student_feature_layer=stray).attribute(
            x, target=y
        )
    with pytest.raises(ValueError, match="runs before"):
        UniCAM(
            student, student.layer2, base, base.layer2, student_feature_layer=student.layer1
        ).attribute(x, target=y)
    assert all_hooks(student, base, stray) == 0


def test_layer_with_non_tensor_output(data):
    class TupleOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x), x.shape[0]  # a tuple holding a non-tensor

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = TupleOut()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.block(x)[0].mean((2, 3)))

    student, base = Net().double().eval(), Net().double().eval()
    x, y = data
    # A tuple whose other elements are not tensors (as Hugging Face layers return, with
    # None or caches): its first element is the layer's output, read as that tensor.
    got = UniCAM(student, student.block, base, base.block).attribute(x, target=y, features="both")
    want = UniCAM(student, student.block.conv, base, base.block.conv).attribute(
        x, target=y, features="both"
    )
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert any(float(g.abs().max()) > 0 for g in got)
    assert all_hooks(student, base) == 0

    class NoneOut(TupleOut):
        def forward(self, x):
            return (None, self.conv(x))  # no tensor first: nothing to read

    student.block, base.block = NoneOut().double(), NoneOut().double()
    with pytest.raises(ValueError, match="hidden states"):
        UniCAM(student, student.block, base, base.block).attribute(x, target=y)
    assert all_hooks(student, base) == 0


# ---------------------------------------------------------------------------
# Degenerate cases: defined results, never NaN, with a warning
# ---------------------------------------------------------------------------


def test_identical_student_and_base_give_zero_maps(data):
    x, y = data
    student = make(SmallResNet, 1)
    twin = make(SmallResNet, 1)  # same weights, another object
    for base in (student, twin):
        with pytest.warns(UniCAMWarning, match="no unique part is left"):
            (d, r), (s_d, s_r) = UniCAM(student, student.layer2, base, base.layer2).attribute(
                x, target=y, features="both", return_score=True
            )
        assert torch.equal(d, torch.zeros_like(d)) and torch.equal(r, torch.zeros_like(r))
        assert float(s_d) == 0.0 and float(s_r) == 0.0
    # and with a deeper representation layer (the graph path)
    with pytest.warns(UniCAMWarning, match="no unique part"):
        d = UniCAM(
            student,
            student.layer1,
            twin,
            twin.layer1,
            student_feature_layer=student.layer2,
            base_feature_layer=twin.layer2,
        ).attribute(x, target=y)
    assert not d.isnan().any() and float(d.abs().max()) == 0.0


def test_constant_base_representation_warns_and_removes_nothing(data):
    x, y = data
    student, base = make(SmallResNet, 1), make(SmallVGG, 2)
    with torch.no_grad():
        base.features[3].weight.zero_()  # the Base's layer now outputs its bias everywhere
    unicam = UniCAM(student, student.layer2, base, base.features[3])
    with pytest.warns(UniCAMWarning, match="Base's representation is constant"):
        d, s_d = unicam.attribute(x, target=y, return_score=True)
    with torch.no_grad():
        x_s = student.layer2(student.layer1_out(x)).flatten(1).numpy()
        x_b = base.features[:4](x).flatten(1).numpy()
    labels = one_hot(y).numpy()
    expected = dcor.partial_distance_correlation(x_s, labels, x_b)
    assert expected == pytest.approx(dcor.u_distance_correlation_sqr(x_s, labels), abs=1e-12)
    assert float(s_d) == pytest.approx(expected, abs=1e-9)
    assert float(d.abs().max()) > 0
    # the residual score of a constant Base is 0, with zero maps
    with pytest.warns(UniCAMWarning, match="Base's representation is constant"):
        r = unicam.attribute(x, target=y, features="residual")
    assert float(r.abs().max()) == 0.0


def test_one_class_in_the_batch_warns(pair, data):
    x, _ = data
    with pytest.warns(UniCAMWarning, match="same label vector"):
        d = unicam_of(pair).attribute(x, target=torch.full((x.shape[0],), 2))
    assert float(d.abs().max()) == 0.0


def test_training_mode_warns_and_is_kept(pair, data):
    x, y = data
    student, base = pair
    student.train()
    with pytest.warns(UniCAMWarning, match="Student is in training mode") as record:
        unicam_of(pair).attribute(x, target=y)
    assert record[0].filename == __file__  # the warning points at the caller
    with pytest.warns(UniCAMWarning, match="Student is in training mode") as record:
        unicam_of(pair).score(x, target=y)
    assert record[0].filename == __file__
    assert student.training and not base.training
    assert all(m.training for m in student.modules())


# ---------------------------------------------------------------------------
# Nothing of the user's is changed
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("deep", [False, True])
def test_user_state_is_never_changed(data, deep):
    x, y = data
    student, base = make(SmallResNet, 1), make(SmallResNet, 2)
    student.layer1.train()  # a mixed-mode model stays mixed
    x = x.clone().requires_grad_()
    x_before = x.detach().clone()
    table = torch.randn(4, 3, dtype=torch.float64)
    table_before = table.clone()
    params = list(student.parameters()) + list(base.parameters())
    for p in params[::3]:
        p.requires_grad_(False)
    flags = [p.requires_grad for p in params]
    modes = [m.training for m in list(student.modules()) + list(base.modules())]
    kwargs = (
        dict(student_feature_layer=student.layer2, base_feature_layer=base.layer2) if deep else {}
    )
    layer_s, layer_b = (student.layer1, base.layer1) if deep else (student.layer2, base.layer2)
    unicam = UniCAM(student, layer_s, base, layer_b, label_embeddings=table, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UniCAMWarning)
        unicam.attribute(x, target=y, features="both")
        with torch.no_grad():  # e.g. inside captum.metrics.sensitivity_max
            maps = unicam.attribute(x, target=y, features="both")
            assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    assert float(maps[0].abs().max()) > 0
    assert torch.equal(x.detach(), x_before) and x.requires_grad and x.grad is None
    assert torch.equal(table, table_before)
    assert flags == [p.requires_grad for p in params]
    assert all(p.grad is None for p in params)
    assert modes == [m.training for m in list(student.modules()) + list(base.modules())]
    assert all_hooks(student, base) == 0


def test_docstring_example_runs():
    globs = {"__name__": "unicam_doctest"}
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [
        t
        for t in finder.find(unicam_module.UniCAM.attribute, "attribute", globs=globs)
        if t.examples
    ]
    assert tests
    for test in tests:
        runner.run(test)
    assert runner.failures == 0 and runner.tries >= 10
