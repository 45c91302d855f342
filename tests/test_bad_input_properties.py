"""Property tests of bad input (hypothesis): whatever the bad value and wherever it sits,
UniCAM, FSS and RS raise a ValueError that names the problem, before any forward pass where
the problem is visible in the arguments, and leave no hook, no changed tensor and no changed
model mode behind."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_unicam_common import NUM_CLASSES, SmallResNet, all_hooks, make

from captum_unicam import feature_similarity_score, relevance_score
from captum_unicam.attr import UniCAM

SETTINGS = settings(max_examples=20, deadline=None)


@pytest.fixture(scope="module")
def pair():
    return make(SmallResNet, 1, width=4), make(SmallResNet, 2, width=4)


def _forward_counter(*models):
    calls = []
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in models]
    return calls, handles


def _state(models, tensors):
    modes = [[m.training for m in model.modules()] for model in models]
    return modes, [t.clone() for t in tensors]


def _assert_untouched(models, tensors, before):
    modes, copies = before
    assert [[m.training for m in model.modules()] for model in models] == modes
    for t, c in zip(tensors, copies):
        assert torch.equal(t.nan_to_num(), c.nan_to_num()) and t.isnan().eq(c.isnan()).all()
    assert all_hooks(*models) == 0


def _batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64), torch.arange(
        n
    ) % NUM_CLASSES


@SETTINGS
@given(n=st.integers(1, 4), context=st.integers(0, 3), seed=st.integers(0, 100))
def test_unicam_too_few_samples(pair, n, context, seed):
    """Under 5 samples with the context counted: refused before any forward pass."""
    total = n + context
    assume(total < 5)
    student, base = pair
    x, y = _batch(total, seed)
    kwargs = {"context": (x[n:], y[n:])} if context else {}
    before = _state(pair, [x])
    calls, handles = _forward_counter(student, base)
    try:
        with pytest.raises(ValueError, match=r"context=") as info:
            UniCAM(student, student.layer2, base, base.layer2).attribute(
                x[:n], target=y[:n], **kwargs
            )
    finally:
        for h in handles:
            h.remove()
    assert calls == []
    assert str(total) in str(info.value)
    _assert_untouched(pair, [x], before)


@SETTINGS
@given(
    bad=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    position=st.integers(0, 6 * 3 * 16 * 16 - 1),
    features=st.sampled_from(["distilled", "residual", "both"]),
)
def test_unicam_non_finite_input_anywhere(pair, bad, position, features):
    student, base = pair
    x, y = _batch(6, 0)
    x.view(-1)[position] = bad
    before = _state(pair, [x])
    with pytest.raises(ValueError, match="NaN or Inf"):
        UniCAM(student, student.layer2, base, base.layer2).attribute(x, target=y, features=features)
    _assert_untouched(pair, [x], before)


@SETTINGS
@given(length=st.integers(0, 12).filter(lambda k: k != 6), as_tensor=st.booleans())
def test_unicam_target_of_the_wrong_length(pair, length, as_tensor):
    assume(not (as_tensor and length == 1))  # as in Captum: one class for every sample
    student, base = pair
    x, _ = _batch(6, 1)
    target = [i % NUM_CLASSES for i in range(length)]
    if as_tensor:
        target = torch.tensor(target, dtype=torch.long)
    calls, handles = _forward_counter(student, base)
    try:
        with pytest.raises(ValueError, match=rf"length {length}|shape \({length},?\)"):
            UniCAM(student, student.layer2, base, base.layer2).attribute(x, target=target)
    finally:
        for h in handles:
            h.remove()
    assert calls == [] and all_hooks(*pair) == 0


@SETTINGS
@given(cls=st.integers(NUM_CLASSES, 50), row=st.integers(0, 5))
def test_unicam_class_index_out_of_range(pair, cls, row):
    student, base = pair
    x, y = _batch(6, 2)
    y = y.clone()
    y[row] = cls
    with pytest.raises(ValueError, match=f"out of range: there are {NUM_CLASSES} classes"):
        UniCAM(student, student.layer2, base, base.layer2).attribute(x, target=y)
    assert all_hooks(*pair) == 0


@SETTINGS
@given(
    n_attr=st.integers(1, 9).filter(lambda k: k != 6),
    channels=st.integers(1, 3),
    metric=st.sampled_from(["fss", "rs", "rs_given"]),
)
def test_metrics_attributions_that_cannot_be_matched(pair, n_attr, channels, metric):
    """Attributions for another number of samples are refused before any forward pass."""
    student, base = pair
    x, y = _batch(6, 3)
    attr = torch.rand(n_attr, channels, 4, 4, dtype=torch.float64)
    before = _state(pair, [x, attr])
    calls, handles = _forward_counter(student, base)
    try:
        with pytest.raises(ValueError, match="cannot be matched"):
            if metric == "fss":
                feature_similarity_score(
                    student,
                    student.layer2,
                    x,
                    base_forward_func=base,
                    base_layer=base.layer2,
                    attributions=attr,
                )
            elif metric == "rs":
                relevance_score(student, student.layer2, x, target=y, attributions=attr)
            else:
                relevance_score(
                    student,
                    student.layer2,
                    x,
                    target=y,
                    attributions=attr,
                    base_forward_func=base,
                    base_layer=base.layer2,
                )
    finally:
        for h in handles:
            h.remove()
    assert calls == []
    _assert_untouched(pair, [x, attr], before)


@SETTINGS
@given(
    bad=st.sampled_from([float("nan"), float("inf")]),
    position=st.integers(0, 6 * 16 - 1),
    where=st.sampled_from(["inputs", "attributions"]),
    metric=st.sampled_from(["fss", "rs"]),
)
def test_metrics_non_finite_values(pair, bad, position, where, metric):
    student, base = pair
    x, y = _batch(6, 4)
    attr = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    target = x if where == "inputs" else attr
    target.view(-1)[position * (target.numel() // (6 * 16))] = bad
    before = _state(pair, [x, attr])
    with pytest.raises(ValueError, match="NaN"):
        if metric == "fss":
            feature_similarity_score(
                student,
                student.layer2,
                x,
                base_forward_func=base,
                base_layer=base.layer2,
                attributions=attr,
            )
        else:
            relevance_score(student, student.layer2, x, target=y, attributions=attr)
    _assert_untouched(pair, [x, attr], before)
