"""Every diagnosis names the real cause:

- distinct one-hot classes get the "distinct classes / embed_labels" message at every n
  (batch mode) and m (reference mode, plus an input of another class), never "one class";
- bfloat16 models are scored in the float32 path: their scores are within 0.05 of the
  float32 models' and no "same model" diagnosis appears;
- a reference set of another example shape is an InputError before any forward pass;
- the training-mode warning only for modules that behave differently in training.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_unicam_common import SmallResNet, batch, make
from torch import nn

from captum_unicam.attr import UniCAM, UniCAMWarning
from captum_unicam.errors import InputError


def tiny(seed: int, classes: int = 48) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, classes)).double().eval()


STUDENT, BASE = tiny(1), tiny(2)


def messages(fn):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in record if issubclass(w.category, UniCAMWarning)]


def assert_distinct_classes_message(found):
    label = [m for m in found if "label" in m]
    assert label, found
    assert all("distinct classes" in m and "embed_labels" in m for m in label), label
    assert not any("one class" in m for m in found), found


@settings(max_examples=25, deadline=None)
@given(n=st.integers(5, 40), seed=st.integers(0, 3))
def test_distinct_one_hot_classes_in_a_batch(n, seed):
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    unicam = UniCAM(STUDENT, STUDENT[1], BASE, BASE[1])
    target = torch.randperm(48, generator=torch.Generator().manual_seed(seed))[:n]
    found = messages(lambda: unicam.score(x, target=target))
    assert_distinct_classes_message(found)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(4, 40), seed=st.integers(0, 3))
def test_distinct_one_hot_classes_in_a_reference_set(m, seed):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(m, 6, generator=g, dtype=torch.float64)
    classes = torch.randperm(48, generator=g)
    unicam = UniCAM(STUDENT, STUDENT[1], BASE, BASE[1], reference=(ref, classes[:m]))
    x = torch.randn(2, 6, generator=g, dtype=torch.float64)
    found = messages(lambda: unicam.score(x, target=classes[m : m + 2]))
    assert_distinct_classes_message(found)


def test_one_class_is_still_named_one_class():
    x = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    unicam = UniCAM(STUDENT, STUDENT[1], BASE, BASE[1])
    found = messages(lambda: unicam.score(x[:1], target=[3], context=(x[1:], [3] * 5)))
    assert any("one class" in m for m in found), found


@pytest.mark.parametrize("layer", ["layer1", "layer2"])
def test_bfloat16_scores_are_those_of_float32(layer):
    s32, b32 = make(SmallResNet, 1, dtype=torch.float32), make(SmallResNet, 2, dtype=torch.float32)
    s16, b16 = (
        make(SmallResNet, 1, dtype=torch.float32).bfloat16(),
        make(SmallResNet, 2, dtype=torch.float32).bfloat16(),
    )
    x, y = batch(16, seed=4, dtype=torch.float32)
    want = UniCAM(s32, getattr(s32, layer), b32, getattr(b32, layer)).score(x, target=y)
    unicam = UniCAM(s16, getattr(s16, layer), b16, getattr(b16, layer))
    found = messages(lambda: unicam.score(x.bfloat16(), target=y))
    got = unicam.score(x.bfloat16(), target=y)
    assert not any("same distance structure" in m for m in found), found
    for g, w in zip(got, want):
        assert abs(float(g) - float(w)) < 0.05
        assert float(g) != 0.0
    d, r = unicam.attribute(x.bfloat16(), target=y, features="both")
    assert d.dtype == torch.bfloat16 and float(d.float().abs().max() + r.float().abs().max()) > 0


def test_a_reference_set_of_another_shape_is_refused_before_any_work():
    student, base = make(SmallResNet, 1), make(SmallResNet, 2)
    ref_x, ref_y = batch(8, seed=1, size=16)
    calls = []
    handle = student.register_forward_hook(lambda *a: calls.append(1))
    try:
        unicam = UniCAM(student, student.layer2, base, base.layer2, reference=(ref_x, ref_y))
        x, y = batch(2, seed=2, size=24)
        with pytest.raises(InputError, match="example shape"):
            unicam.attribute(x, target=y)
        with pytest.raises(InputError, match="example shape"):
            unicam.score(x, target=y)
    finally:
        handle.remove()
    assert calls == []


class Wrapper(nn.Module):
    """A wrapper around eval() models, itself left in training mode (the default)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


class NoisyInTraining(nn.Module):
    def forward(self, x):
        return x + 0.1 * torch.randn_like(x) if self.training else x


def training_messages(student, base, layer, base_layer, x, y):
    unicam = UniCAM(student, layer, base, base_layer)
    return [m for m in messages(lambda: unicam.score(x, target=y)) if "training mode" in m]


def test_training_warning_only_for_modules_that_behave_differently():
    student, base = make(SmallResNet, 1), make(SmallResNet, 2)
    x, y = batch(8, seed=3)
    ws, wb = Wrapper(student), Wrapper(base)
    assert ws.training and not student.training
    assert training_messages(ws, wb, student.layer2, base.layer2, x, y) == []
    # batch norm in training mode
    student.train()
    try:
        found = training_messages(ws, wb, student.layer2, base.layer2, x, y)
    finally:
        student.eval()
    assert len(found) == 1 and "Student" in found[0] and "BatchNorm2d" in found[0]
    # dropout, and a module of one's own that reads self.training
    for extra in (nn.Dropout(0.1), NoisyInTraining()):
        wrapped = nn.Sequential(base, extra)
        found = training_messages(student, wrapped, student.layer2, base.layer2, x, y)
        assert len(found) == 1 and "Base" in found[0] and type(extra).__name__ in found[0]


def test_small_batch_message_is_right_for_any_n():
    student, base = make(SmallResNet, 1), make(SmallResNet, 2)
    x, y = batch(3, seed=3)
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    for n in (1, 3):
        with pytest.raises(InputError, match=f"got {n}. .*none below n = 4") as err:
            unicam.attribute(x[:n], target=y[:n] if n > 1 else [0, 1, 2][:n])
        assert "reference=" in str(err.value)


def test_nan_in_a_representation_is_named_in_good_english():
    student, base = make(SmallResNet, 1), make(SmallResNet, 2)
    x, y = batch(6, seed=3)
    x[2, 0, 0, 0] = float("nan")
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    with pytest.raises(InputError, match="representation contains NaN"):
        unicam.score(x, target=y)
