"""Degenerate cases of FSS, RS and evaluate_kd: a zero with a UniCAMWarning naming the cause
and the fix, or a clear InputError; never a bare silent 0. Near-degenerate batches (one
repeated class pair) are not flagged and equal dcor."""

import warnings

import dcor
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import TinyNet
from torch import nn

from captum_unicam import stats
from captum_unicam.attr.unicam import UniCAMWarning
from captum_unicam.errors import InputError
from captum_unicam.metrics import (
    KDEvaluation,
    evaluate_kd,
    feature_similarity_score,
    relevance_score,
)
from captum_unicam.metrics._features import label_degeneracy


def feats_of(model, layer, x):
    out = []
    h = layer.register_forward_hook(lambda m, i, o: out.append(o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return out[0].reshape(len(x), -1).double().numpy()


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return TinyNet(4, classes=8).eval(), TinyNet(5, classes=8).eval()


def batch(n, seed=0):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def no_warnings():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("error", UniCAMWarning)
    return ctx


# ---------------------------------------------------------------------------
# labels that carry no information
# ---------------------------------------------------------------------------


def test_all_distinct_one_hot_classes_give_zero_with_a_warning(nets):
    s, b = nets
    x, y = batch(8), torch.arange(8)  # every sample its own class: the ordinary ImageNet batch
    # the reason: all pairs of one-hot vectors are sqrt(2) apart, so the U-centred label matrix
    # is zero and dcor's value is rounding noise of either sign
    noise = dcor.u_distance_correlation_sqr(feats_of(s, s.layer2, x), np.eye(8))
    assert abs(noise) < 1e-10
    with pytest.warns(UniCAMWarning, match="same distance apart") as rec:
        got = relevance_score(s, s.layer2, x, target=y)
    assert float(got) == 0.0
    assert "label_embeddings=embed_labels(class_names)" in str(rec[0].message)
    assert "stratified" in str(rec[0].message)
    with pytest.warns(UniCAMWarning, match="same distance apart"):
        got = relevance_score(s, s.layer2, x, target=y, base_forward_func=b, base_layer=b.layer2)
    assert float(got) == 0.0
    # a label table whose rows are all equally far apart is the same case
    with pytest.warns(UniCAMWarning, match="same distance apart"):
        assert (
            float(relevance_score(s, s.layer2, x, target=y, label_embeddings=3 * torch.eye(8)))
            == 0.0
        )


def test_one_class_gives_zero_with_a_warning(nets):
    s, b = nets
    x = batch(6)
    for y in (
        [2] * 6,
        torch.full((6,), 2),
        torch.ones(6, 4),
    ):  # indices, a tensor, equal label vectors
        with pytest.warns(UniCAMWarning, match="one class"):
            assert float(relevance_score(s, s.layer1, x, target=y)) == 0.0
    with pytest.warns(UniCAMWarning, match="one class"):
        got = relevance_score(
            s, s.layer1, x, target=[2] * 6, base_forward_func=b, base_layer=b.layer1
        )
    assert float(got) == 0.0


def test_int_target_is_refused_with_the_reason(nets):
    s, _ = nets
    for target in (1, torch.tensor(1)):
        with pytest.raises(InputError, match="every sample would get the same label vector"):
            relevance_score(s, s.layer1, batch(6), target=target)
        with pytest.raises(InputError, match="one-hot or from label_embeddings"):
            relevance_score(
                s, s.layer1, batch(6), target=target, label_embeddings=torch.randn(8, 3)
            )


def test_partial_rs_needs_five_samples(nets):
    s, b = nets
    x, y = batch(4), torch.tensor([0, 1, 0, 1])
    # why: at n = 4 the partial distance correlation is +-1 whatever the data (dcor agrees)
    rng = np.random.default_rng(0)
    for _ in range(5):
        v = dcor.partial_distance_correlation(
            rng.normal(size=(4, 3)), rng.normal(size=(4, 2)), rng.normal(size=(4, 5))
        )
        assert abs(abs(v) - 1) < 1e-9
    with pytest.raises(InputError, match="at least 5.*2-dimensional|2-dimensional.*at least 5"):
        relevance_score(s, s.layer1, x, target=y, base_forward_func=b, base_layer=b.layer1)
    # plain RS and FSS are defined at 4
    relevance_score(s, s.layer1, x, target=y)
    feature_similarity_score(s, s.layer1, x, base_forward_func=b, base_layer=b.layer1)


def test_one_repeated_class_pair_is_not_flagged(nets):
    s, b = nets
    x = batch(8, seed=1)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])  # near-degenerate: one pair shares a class
    assert label_degeneracy(torch.nn.functional.one_hot(y).double()) is None
    fs, fb = feats_of(s, s.layer2, x), feats_of(b, b.layer2, x)
    yy = np.eye(7)[y.numpy()]
    ctx = no_warnings()
    try:
        rs = relevance_score(s, s.layer2, x, target=y)
        pd = relevance_score(s, s.layer2, x, target=y, base_forward_func=b, base_layer=b.layer2)
    finally:
        ctx.__exit__(None, None, None)
    assert float(rs) == pytest.approx(dcor.u_distance_correlation_sqr(fs, yy), abs=1e-9)
    assert float(pd) == pytest.approx(dcor.partial_distance_correlation(fs, yy, fb), abs=1e-9)
    assert abs(float(rs)) > 1e-6


def test_label_degeneracy_threshold_is_far_from_both_sides():
    for n in (8, 64, 256):
        distinct = torch.eye(n, dtype=torch.float64)
        a = stats.distance_matrix(distinct)
        assert float(stats.u_centered(a).abs().max()) < 1e-14 * float(
            a.max()
        )  # degenerate: rounding only
        assert label_degeneracy(distinct) is not None
        y = torch.arange(n)
        y[1] = 0
        one_pair = torch.nn.functional.one_hot(y).double()
        a = stats.distance_matrix(one_pair)
        assert float(stats.u_centered(a).abs().max()) > 0.5 * float(a.max())
        assert label_degeneracy(one_pair) is None


# ---------------------------------------------------------------------------
# features that carry no information
# ---------------------------------------------------------------------------


def zero_out(inputs, attributions):  # a perturbation that removes everything
    return torch.zeros_like(inputs)


def test_constant_features_give_zero_with_a_warning(nets):
    s, b = nets
    x, y, attr = batch(6), torch.arange(6) % 3, torch.rand(6, 1, 2, 2)
    with pytest.warns(
        UniCAMWarning, match="FSS set to 0: the Student's features are the same for every sample"
    ):
        got = feature_similarity_score(
            s,
            s.layer2,
            x,
            base_forward_func=b,
            base_layer=b.layer2,
            attributions=attr,
            perturbation=zero_out,
        )
    assert float(got) == 0.0
    with pytest.warns(UniCAMWarning, match="is_empty_map"):
        assert (
            float(
                relevance_score(s, s.layer2, x, target=y, attributions=attr, perturbation=zero_out)
            )
            == 0.0
        )
    with pytest.warns(UniCAMWarning, match="RS set to 0: the model's features are the same"):
        got = relevance_score(
            s,
            s.layer2,
            x,
            target=y,
            base_forward_func=b,
            base_layer=b.layer2,
            attributions=attr,
            perturbation=zero_out,
        )
    assert float(got) == 0.0


class Planted(nn.Module):
    """Features = the first ``k`` input values, scaled; the label is planted there."""

    def __init__(self, k, scale=1.0):
        super().__init__()
        self.k, self.scale = k, scale
        self.layer = nn.Identity()

    def forward(self, x):
        return self.layer(self.scale * x.reshape(len(x), -1)[:, : self.k])


def test_labels_fully_explained_by_the_base_give_zero_with_a_warning():
    n, k = 9, 3
    y = torch.arange(n) % k
    x = torch.rand(n, 1, 1, 10, generator=torch.Generator().manual_seed(0))
    x[:, 0, 0, :k] = torch.nn.functional.one_hot(y, k).float()  # the Base's features are the labels
    student, base = Planted(10), Planted(k, scale=2.0)
    with pytest.warns(UniCAMWarning, match="labels are fully explained by the Base's features"):
        got = relevance_score(
            student, student.layer, x, target=y, base_forward_func=base, base_layer=base.layer
        )
    assert float(got) == 0.0


# ---------------------------------------------------------------------------
# evaluate_kd: degenerate batches counted and reported once
# ---------------------------------------------------------------------------


def test_evaluate_kd_counts_degenerate_batches_and_warns_once(nets):
    s, b = nets
    layers = {"L2": (s.layer2, b.layer2)}
    good = [(batch(8, seed=i), torch.arange(8) % 3) for i in (1, 2)]
    distinct = (batch(8, seed=3), torch.arange(8))  # all-distinct one-hot classes
    one_class = (batch(8, seed=4), torch.zeros(8, dtype=torch.long))
    data = [good[0], distinct, one_class, good[1]]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        result = evaluate_kd(
            s, layers, data, base_forward_func=b, maps=("none",), progress=False, n_bootstrap=20
        )
    ours = [w for w in rec if issubclass(w.category, UniCAMWarning)]
    assert len(ours) == 1  # one warning for all degenerate batches, not one per batch
    text = str(ours[0].message)
    assert "left 2 of 4 batches out" in text and "embed_labels(class_names)" in text
    assert "same distance apart" in text and "one class" in text
    assert result.degenerate_batches == [1, 2] and result.batch_indices == [0, 3]
    assert result.skipped_batches == []
    # the scored batches are exactly those of a run without the degenerate ones
    clean = evaluate_kd(
        s, layers, good, base_forward_func=b, maps=("none",), progress=False, n_bootstrap=20
    )
    assert clean.values == result.values
    assert KDEvaluation.from_json(result.to_json()).degenerate_batches == [1, 2]


def test_evaluate_kd_with_only_degenerate_batches_says_how_to_fix_it(nets):
    s, b = nets
    data = [(batch(8, seed=i), torch.arange(8)) for i in range(2)]
    with pytest.raises(InputError, match="no batch could be scored.*embed_labels"):
        evaluate_kd(
            s,
            {"L2": (s.layer2, b.layer2)},
            data,
            base_forward_func=b,
            maps=("none",),
            progress=False,
        )


def test_evaluate_kd_scores_a_near_degenerate_batch(nets):
    s, b = nets
    x, y = batch(8, seed=5), torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])
    ctx = no_warnings()
    try:
        result = evaluate_kd(
            s,
            {"L2": (s.layer2, b.layer2)},
            [(x, y)],
            base_forward_func=b,
            maps=("none",),
            progress=False,
            n_bootstrap=20,
        )
    finally:
        ctx.__exit__(None, None, None)
    assert result.degenerate_batches == [] and result.batch_indices == [0]
    fs, fb = feats_of(s, s.layer2, x), feats_of(b, b.layer2, x)
    yy = np.eye(7)[y.numpy()]
    v = result.values["L2"]["none"]
    assert v["rs_student"][0] == pytest.approx(dcor.u_distance_correlation_sqr(fs, yy), abs=1e-9)
    assert v["rs_distilled"][0] == pytest.approx(
        dcor.partial_distance_correlation(fs, yy, fb), abs=1e-9
    )
    assert v["rs_residual"][0] == pytest.approx(
        dcor.partial_distance_correlation(fb, yy, fs), abs=1e-9
    )


def test_evaluate_kd_counts_values_set_to_zero(nets):
    s, b = nets
    data = [(batch(8, seed=i), torch.arange(8) % 3) for i in range(3)]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        result = evaluate_kd(
            s,
            {"L1": (s.layer1, b.layer1)},
            data,
            base_forward_func=b,
            maps=("gradcam",),
            perturbation=zero_out,
            progress=False,
            n_bootstrap=20,
        )
    ours = [w for w in rec if issubclass(w.category, UniCAMWarning)]
    assert len(ours) == 1 and "same for every sample" in str(ours[0].message)
    assert all(
        result.degenerate_values[f"L1/gradcam/{m}"] == 3
        for m in ("fss", "rs_base", "rs_student", "rs_distilled", "rs_residual")
    )
    assert all(v == [0.0] * 3 for v in result.values["L1"]["gradcam"].values())


def test_all_but_one_in_one_class_is_degenerate_too(nets):
    """U-centring removes every additive matrix d_ij = a_i + a_j: one odd sample among one class."""
    s, _ = nets
    y = torch.tensor([0, 0, 0, 0, 0, 1])
    assert (
        abs(dcor.u_distance_correlation_sqr(feats_of(s, s.layer2, batch(6)), np.eye(2)[y.numpy()]))
        < 1e-10
    )
    with pytest.warns(UniCAMWarning, match="additive"):
        assert float(relevance_score(s, s.layer2, batch(6), target=y)) == 0.0


@settings(deadline=None, max_examples=60)
@given(labels=st.lists(st.integers(0, 5), min_size=5, max_size=10))
def test_one_hot_degeneracy_is_exactly_the_additive_cases(labels):
    """With one-hot labels the U-centred label matrix is zero exactly for one class, all classes
    distinct, or all samples but one in one class (the additive distance matrices)."""
    n, counts = len(labels), np.bincount(labels)
    expected = counts.max() == n or counts.max() == 1 or counts.max() == n - 1
    y = torch.nn.functional.one_hot(torch.tensor(labels), 6).double()
    assert (label_degeneracy(y) is not None) == expected
