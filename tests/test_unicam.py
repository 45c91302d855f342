"""UniCAM values: scores against dcor, maps against an independent computation,
batch permutation, context, mixed architectures, token layers, tuple inputs."""

from __future__ import annotations

import dcor
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_unicam_common import (
    SmallResNet,
    SmallVGG,
    TinyViT,
    TwoInputNet,
    all_hooks,
    assert_close,
    batch,
    make,
    one_hot,
    tokens_to_grid,
    unicam_oracle,
)

from captum_unicam import stats
from captum_unicam.attr import UniCAM


@pytest.fixture(scope="module")
def pair():
    return make(SmallResNet, 1), make(SmallResNet, 2)


@pytest.fixture(scope="module")
def data():
    return batch(12, seed=3)


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().flatten(1).to(torch.float64).numpy()


# ---------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------


def test_score_equals_dcor_partial_distance_correlation(pair, data):
    student, base = pair
    x, y = data
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    s_d, s_r = unicam.score(x, target=y)
    with torch.no_grad():
        x_s = student.layer2(student.layer1_out(x))
        x_b = base.layer2(base.layer1_out(x))
    labels = one_hot(y).numpy()
    expected_d = dcor.partial_distance_correlation(np64(x_s), labels, np64(x_b))
    expected_r = dcor.partial_distance_correlation(np64(x_b), labels, np64(x_s))
    assert abs(float(s_d) - expected_d) < 1e-9
    assert abs(float(s_r) - expected_r) < 1e-9
    assert abs(expected_d) > 1e-3 and abs(expected_r) > 1e-3  # not a trivial case
    # attribute(return_score=True) returns the same scores with the maps
    (_, _), (s_d2, s_r2) = unicam.attribute(x, target=y, features="both", return_score=True)
    assert float(s_d2) == pytest.approx(float(s_d), abs=1e-12)
    assert float(s_r2) == pytest.approx(float(s_r), abs=1e-12)


def test_score_float32_and_label_embeddings(data):
    student, base = make(SmallResNet, 1, torch.float32), make(SmallResNet, 2, torch.float32)
    x, y = data
    x = x.float()
    table = torch.randn(4, 5, generator=torch.Generator().manual_seed(7))
    unicam = UniCAM(student, student.layer1, base, base.layer1, label_embeddings=table)
    s_d = unicam.score(x, target=y, features="distilled")
    with torch.no_grad():
        x_s, x_b = student.layer1_out(x), base.layer1_out(x)
    expected = dcor.partial_distance_correlation(np64(x_s), table[y].double().numpy(), np64(x_b))
    assert abs(float(s_d) - expected) < 1e-5
    assert float(s_d) == pytest.approx(
        float(stats.partial_distance_correlation(x_s, table[y], x_b)), abs=1e-6
    )
    # label vectors given directly as target are the same thing
    assert float(unicam.score(x, target=table[y], features="distilled")) == pytest.approx(
        float(s_d), abs=1e-7
    )


# ---------------------------------------------------------------------------
# Maps against the oracle
# ---------------------------------------------------------------------------


def test_maps_equal_independent_computation(pair, data):
    student, base = pair
    x, y = data
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    with torch.no_grad():
        a_s = student.layer2(student.layer1_out(x))
        a_b = base.layer2(base.layer1_out(x))
    exp_d, exp_r, s_d, s_r = unicam_oracle(a_s, a_b, one_hot(y))
    d, r = unicam.attribute(x, target=y, features="both")
    assert_close(d, exp_d)
    assert_close(r, exp_r)
    assert_close(unicam.attribute(x, target=y), exp_d)
    assert_close(unicam.attribute(x, target=y, features="residual"), exp_r)
    assert d.shape == (12, 1, 4, 4)
    # without ReLU: the signed map; ReLU of it is the default map
    exp_signed, _, _, _ = unicam_oracle(a_s, a_b, one_hot(y), relu=False)
    signed = unicam.attribute(x, target=y, relu_attributions=False)
    assert_close(signed, exp_signed)
    assert (signed < 0).any() and (signed > 0).any()
    # per-channel maps sum to the signed map
    per_channel = unicam.attribute(x, target=y, relu_attributions=False, attr_dim_summation=False)
    assert per_channel.shape == (12, 16, 4, 4)
    assert_close(per_channel.sum(1, keepdim=True), exp_signed)
    assert all_hooks(student, base) == 0


def test_deeper_feature_layer_records_graph_from_layer_only(pair, data):
    student, base = pair
    x, y = data
    unicam = UniCAM(
        student,
        student.layer1,
        base,
        base.layer1,
        student_feature_layer=student.layer2,
        base_feature_layer=base.layer2,
    )
    with torch.no_grad():
        a_s, a_b = student.layer1_out(x), base.layer1_out(x)
    exp_d, exp_r, s_d, s_r = unicam_oracle(
        a_s, a_b, one_hot(y), rep_s=student.layer2, rep_b=base.layer2
    )
    (d, r), (got_d, got_r) = unicam.attribute(x, target=y, features="both", return_score=True)
    assert d.shape == (12, 1, 8, 8)
    assert_close(d, exp_d)
    assert_close(r, exp_r)
    assert float(got_d) == pytest.approx(s_d, abs=1e-9)
    assert float(got_r) == pytest.approx(s_r, abs=1e-9)
    # no parameter gradient was accumulated, grad mode untouched
    assert all(p.grad is None for p in student.parameters())
    assert torch.is_grad_enabled()


def test_target_none_means_student_predictions(data):
    student, base = make(SmallResNet, 1), make(SmallResNet, 2)
    with torch.no_grad():
        student.fc.weight.mul_(1000.0)  # random weights: make the predictions vary
    x, _ = data
    predicted = student(x).argmax(1)
    # two classes with repeats: not a degenerate label matrix (see test_degenerate.py)
    assert int((torch.bincount(predicted) >= 2).sum()) >= 2
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    d, r = unicam.attribute(x, features="both")
    d2, r2 = unicam.attribute(x, target=predicted, features="both")
    assert torch.equal(d, d2) and torch.equal(r, r2)


# ---------------------------------------------------------------------------
# Batch permutation and context
# ---------------------------------------------------------------------------


@settings(max_examples=6, deadline=None)
@given(st.permutations(list(range(12))))
def test_permuting_the_batch_permutes_the_maps(perm):
    student, base = make(SmallResNet, 1), make(SmallResNet, 2)
    x, y = batch(12, seed=3)
    p = torch.tensor(perm)
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    (d, r), (s_d, s_r) = unicam.attribute(x, target=y, features="both", return_score=True)
    (dp, rp), (s_dp, s_rp) = unicam.attribute(x[p], target=y[p], features="both", return_score=True)
    assert_close(dp, d[p], rtol=1e-9)
    assert_close(rp, r[p], rtol=1e-9)
    assert float(s_dp) == pytest.approx(float(s_d), abs=1e-12)
    assert float(s_rp) == pytest.approx(float(s_r), abs=1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_context_equals_rows_of_joint_batch(pair, data, k):
    student, base = pair
    x, y = data
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    # signed maps (a single row can be all zero after the ReLU)
    d, r = unicam.attribute(x, target=y, features="both", relu_attributions=False)
    dk, rk = unicam.attribute(
        x[:k], target=y[:k], features="both", context=(x[k:], y[k:]), relu_attributions=False
    )
    assert dk.shape == (k, 1, 4, 4)
    assert_close(dk, d[:k])
    assert_close(rk, r[:k])
    # context target None: the Student's predictions for the context rows (a Student
    # whose predictions vary: with one predicted class and k = 1 the label matrix of the
    # joint batch is exactly degenerate)
    student = make(SmallResNet, 1)
    with torch.no_grad():
        student.fc.weight.mul_(1000.0)
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    pred = student(x).argmax(1)
    joint = unicam.attribute(x, target=torch.cat([y[:k], pred[k:]]), relu_attributions=False)
    got = unicam.attribute(x[:k], target=y[:k], context=(x[k:], None), relu_attributions=False)
    assert_close(got, joint[:k])
    assert all_hooks(student, base) == 0


# ---------------------------------------------------------------------------
# Architectures and inputs
# ---------------------------------------------------------------------------


def test_mixed_architectures_resnet_student_vgg_base(data):
    student, base = make(SmallResNet, 1), make(SmallVGG, 5)
    x, y = data
    # features[3] is a conv followed by an in-place ReLU: the captured map must be the conv output
    unicam = UniCAM(student, student.layer2, base, base.features[3])
    (d, r), (s_d, s_r) = unicam.attribute(x, target=y, features="both", return_score=True)
    assert d.shape == (12, 1, 4, 4) and r.shape == (12, 1, 8, 8)
    with torch.no_grad():
        a_s = student.layer2(student.layer1_out(x))
        a_b = base.features[:4](x)
    exp_d, exp_r, _, _ = unicam_oracle(a_s, a_b, one_hot(y))
    assert_close(d, exp_d)
    assert_close(r, exp_r)
    labels = one_hot(y).numpy()
    assert float(s_d) == pytest.approx(
        dcor.partial_distance_correlation(np64(a_s), labels, np64(a_b)), abs=1e-9
    )
    assert float(s_r) == pytest.approx(
        dcor.partial_distance_correlation(np64(a_b), labels, np64(a_s)), abs=1e-9
    )


def test_vit_token_layer_with_reshape_transform(data):
    student, base = make(TinyViT, 1), make(TinyViT, 2)
    x, y = data
    unicam = UniCAM(student, student.block1, base, base.block1, reshape_transform=tokens_to_grid)
    d, r = unicam.attribute(x, target=y, features="both")
    assert d.shape == (12, 1, 4, 4)
    with torch.no_grad():
        a_s = tokens_to_grid(student.block1(student.tokens(x)))
        a_b = tokens_to_grid(base.block1(base.tokens(x)))
    exp_d, exp_r, _, _ = unicam_oracle(a_s, a_b, one_hot(y))
    assert_close(d, exp_d)
    assert_close(r, exp_r)


def test_vit_student_against_cnn_base_with_a_transform_pair(data):
    student, base = make(TinyViT, 1), make(SmallResNet, 2)
    x, y = data
    unicam = UniCAM(
        student, student.block2, base, base.layer1, reshape_transform=(tokens_to_grid, None)
    )
    d, r = unicam.attribute(x, target=y, features="both")
    assert d.shape == (12, 1, 4, 4) and r.shape == (12, 1, 8, 8)
    with torch.no_grad():
        a_s = tokens_to_grid(student.block2(student.block1(student.tokens(x))))
        a_b = base.layer1_out(x)
    exp_d, exp_r, _, _ = unicam_oracle(a_s, a_b, one_hot(y))
    assert_close(d, exp_d)
    assert_close(r, exp_r)


def test_tuple_inputs_additional_forward_args_and_context():
    student, base = make(TwoInputNet, 1), make(TwoInputNet, 2, c=6)
    g = torch.Generator().manual_seed(4)
    img = torch.randn(10, 3, 8, 8, generator=g, dtype=torch.float64)
    depth = torch.randn(10, 1, 8, 8, generator=g, dtype=torch.float64)
    scale = torch.rand(10, generator=g, dtype=torch.float64) + 0.5
    y = torch.arange(10) % 4
    unicam = UniCAM(student, student.layer, base, base.layer)
    d, r = unicam.attribute(
        (img, depth), target=y, additional_forward_args=(scale, "diff"), features="both"
    )
    with torch.no_grad():
        a_s = student.layer(student.fused(img, depth, scale, "diff"))
        a_b = base.layer(base.fused(img, depth, scale, "diff"))
    exp_d, exp_r, _, _ = unicam_oracle(a_s, a_b, one_hot(y))
    assert_close(d, exp_d)
    assert_close(r, exp_r)
    # the non-tensor argument reaches the models: "sum" gives other maps
    # a single map for tuple inputs comes as a 1-tuple (Captum's convention for tuple inputs)
    (d_sum,) = unicam.attribute((img, depth), target=y, additional_forward_args=(scale, "sum"))
    assert not torch.allclose(d, d_sum)
    # attribute to the layer input: the fused activations (N, 8, 8, 8) for the Student
    (d_in,) = unicam.attribute(
        (img, depth),
        target=y,
        additional_forward_args=(scale, "diff"),
        attribute_to_layer_input=True,
    )
    with torch.no_grad():
        f_s = student.fused(img, depth, scale, "diff")
        f_b = base.fused(img, depth, scale, "diff")
    assert_close(d_in, unicam_oracle(f_s, f_b, one_hot(y))[0])
    # context with batch-wise additional args: the third element of `context`
    k = 3
    (dk,) = unicam.attribute(
        (img[:k], depth[:k]),
        target=y[:k],
        additional_forward_args=(scale[:k], "diff"),
        context=((img[k:], depth[k:]), y[k:], (scale[k:], "diff")),
    )
    assert_close(dk, d[:k])


def test_parameters_without_requires_grad(pair, data):
    student, base = make(SmallResNet, 1), make(SmallResNet, 2)
    x, y = data
    reference = UniCAM(
        student,
        student.layer1,
        base,
        base.layer1,
        student_feature_layer=student.layer2,
        base_feature_layer=base.layer2,
    ).attribute(x, target=y, features="both")
    default_ref = UniCAM(student, student.layer2, base, base.layer2).attribute(
        x, target=y, features="both"
    )
    for p in list(student.parameters()) + list(base.parameters())[::2]:
        p.requires_grad_(False)
    flags = [p.requires_grad for p in list(student.parameters()) + list(base.parameters())]
    frozen = UniCAM(
        student,
        student.layer1,
        base,
        base.layer1,
        student_feature_layer=student.layer2,
        base_feature_layer=base.layer2,
    ).attribute(x, target=y, features="both")
    default_frozen = UniCAM(student, student.layer2, base, base.layer2).attribute(
        x, target=y, features="both"
    )
    for a, b in zip(frozen + default_frozen, reference + default_ref):
        assert torch.equal(a, b)
    assert flags == [p.requires_grad for p in list(student.parameters()) + list(base.parameters())]


def test_layer_input_with_feature_layer_equals_previous_layer_output(pair, data):
    """Attributing to layer2's input (= layer1's output) with layer2's output as the
    representation is the deeper-feature-layer computation at layer1."""
    student, base = pair
    x, y = data
    via_input = UniCAM(
        student,
        student.layer2,
        base,
        base.layer2,
        student_feature_layer=student.layer2,
        base_feature_layer=base.layer2,
    ).attribute(x, target=y, features="both", attribute_to_layer_input=True)
    via_output = UniCAM(
        student,
        student.layer1,
        base,
        base.layer1,
        student_feature_layer=student.layer2,
        base_feature_layer=base.layer2,
    ).attribute(x, target=y, features="both")
    for a, b in zip(via_input, via_output):
        assert_close(a, b, rtol=1e-12)
    assert all_hooks(student, base) == 0
