"""feature_similarity_score and relevance_score against dcor on independently captured features."""

import functools

import dcor
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import TinyNet

from captum_unicam.attr.unicam import UniCAMWarning
from captum_unicam.errors import InputError
from captum_unicam.metrics import feature_similarity_score, relevance_score
from captum_unicam.perturb import mask_multiply, road_impute

N = 12


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    student, base = TinyNet(4).eval(), TinyNet(6).eval()  # different widths: p != q
    x = torch.rand(N, 3, 16, 16)
    y = torch.arange(N) % 3
    attr = torch.rand(N, 1, 4, 4)  # a coarse map, upsampled by the perturbation
    return student, base, x, y, attr


def oracle_features(model, layer, x, *args):
    """Layer output by a plain hook and a full forward, as float64 numpy (n, d)."""
    out = []
    h = layer.register_forward_hook(lambda m, i, o: out.append(o.detach()))
    try:
        with torch.no_grad():
            model(x, *args)
    finally:
        h.remove()
    return out[0].reshape(x.shape[0], -1).double().numpy()


def one_hot(y, width):
    return np.eye(width)[y.numpy()]


def custom_perturb(inputs, attributions):  # any (inputs, attributions) -> perturbed callable works
    return inputs * torch.nn.functional.interpolate(attributions, size=inputs.shape[-2:]).sigmoid()


PERTURBS = [mask_multiply, functools.partial(road_impute, noise=0.0), custom_perturb]


@pytest.mark.parametrize("layer_name", ["layer1", "layer2"])
def test_fss_raw_features_equal_dcor(setup, layer_name):
    s, b, x, y, _ = setup
    got = feature_similarity_score(
        s, getattr(s, layer_name), x, base_forward_func=b, base_layer=getattr(b, layer_name)
    )
    want = dcor.u_distance_correlation_sqr(
        oracle_features(s, getattr(s, layer_name), x), oracle_features(b, getattr(b, layer_name), x)
    )
    assert got.dtype == torch.float64 and got.dim() == 0
    assert abs(float(got) - want) < 1e-9


@pytest.mark.parametrize("perturb_func", PERTURBS)
def test_fss_perturbed_equal_dcor(setup, perturb_func):
    s, b, x, y, attr = setup
    got = feature_similarity_score(
        s,
        s.layer2,
        x,
        base_forward_func=b,
        base_layer=b.layer2,
        attributions=attr,
        perturbation=perturb_func,
    )
    xp = perturb_func(x, attr)
    want = dcor.u_distance_correlation_sqr(
        oracle_features(s, s.layer2, xp), oracle_features(b, b.layer2, xp)
    )
    assert abs(float(got) - want) < 1e-9
    raw = feature_similarity_score(s, s.layer2, x, base_forward_func=b, base_layer=b.layer2)
    assert abs(float(raw) - want) > 1e-6  # the perturbation is really applied


def test_fss_pair_of_maps_and_v_estimator(setup):
    s, b, x, y, attr = setup
    attr_b = torch.rand(N, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    got = feature_similarity_score(
        s, s.layer1, x, base_forward_func=b, base_layer=b.layer1, attributions=(attr, attr_b)
    )
    fs = oracle_features(s, s.layer1, mask_multiply(x, attr))
    fb = oracle_features(b, b.layer1, mask_multiply(x, attr_b))
    assert abs(float(got) - dcor.u_distance_correlation_sqr(fs, fb)) < 1e-9
    got_v = feature_similarity_score(
        s,
        s.layer1,
        x,
        base_forward_func=b,
        base_layer=b.layer1,
        attributions=(attr, attr_b),
        estimator="v",
    )
    assert abs(float(got_v) - dcor.distance_correlation_sqr(fs, fb)) < 1e-9


def test_additional_forward_args(setup):
    s, b, x, y, attr = setup
    got = feature_similarity_score(
        s, s.layer1, x, base_forward_func=b, base_layer=b.layer1, additional_forward_args=(0.5,)
    )
    want = dcor.u_distance_correlation_sqr(
        oracle_features(s, s.layer1, x, 0.5), oracle_features(b, b.layer1, x, 0.5)
    )
    assert abs(float(got) - want) < 1e-9
    got = relevance_score(s, s.layer2, x, target=y, attributions=attr, additional_forward_args=0.5)
    want = dcor.u_distance_correlation_sqr(
        oracle_features(s, s.layer2, mask_multiply(x, attr), 0.5), one_hot(y, 3)
    )
    assert abs(float(got) - want) < 1e-9


@pytest.mark.parametrize("perturb_func", PERTURBS)
def test_rs_equal_dcor(setup, perturb_func):
    s, b, x, y, attr = setup
    feats = oracle_features(s, s.layer2, perturb_func(x, attr))
    got = relevance_score(s, s.layer2, x, target=y, attributions=attr, perturbation=perturb_func)
    assert abs(float(got) - dcor.u_distance_correlation_sqr(feats, one_hot(y, 3))) < 1e-9
    got_v = relevance_score(
        s,
        s.layer2,
        x,
        target=y.tolist(),
        attributions=attr,
        perturbation=perturb_func,
        estimator="v",
    )
    assert abs(float(got_v) - dcor.distance_correlation_sqr(feats, one_hot(y, 3))) < 1e-9


def test_rs_label_embeddings_and_vectors(setup):
    s, b, x, y, attr = setup
    emb = torch.randn(
        5, 7, generator=torch.Generator().manual_seed(3)
    )  # more rows than classes used
    feats = oracle_features(b, b.layer1, x)
    want = dcor.u_distance_correlation_sqr(feats, emb.double().numpy()[y.numpy()])
    got = relevance_score(b, b.layer1, x, target=y, label_embeddings=emb)
    assert abs(float(got) - want) < 1e-9
    got_vec = relevance_score(b, b.layer1, x, target=emb[y])  # (N, e) float target: label vectors
    assert abs(float(got_vec) - want) < 1e-9
    # one-hot width does not matter: the default equals an identity table of any size
    default = relevance_score(b, b.layer1, x, target=y)
    wide = relevance_score(b, b.layer1, x, target=y, label_embeddings=torch.eye(10))
    assert abs(float(default) - float(wide)) < 1e-12
    assert abs(float(default) - dcor.u_distance_correlation_sqr(feats, one_hot(y, 3))) < 1e-9


def test_rs_given_equals_partial_distance_correlation(setup):
    s, b, x, y, attr = setup
    emb = torch.randn(3, 5, generator=torch.Generator().manual_seed(4))
    xp = mask_multiply(x, attr)
    fs, fb = oracle_features(s, s.layer2, xp), oracle_features(b, b.layer2, xp)
    yy = emb.double().numpy()[y.numpy()]
    distilled = relevance_score(
        s,
        s.layer2,
        x,
        target=y,
        label_embeddings=emb,
        base_forward_func=b,
        base_layer=b.layer2,
        attributions=attr,
    )
    assert abs(float(distilled) - dcor.partial_distance_correlation(fs, yy, fb)) < 1e-9
    residual = relevance_score(
        b,
        b.layer2,
        x,
        target=y,
        label_embeddings=emb,
        base_forward_func=s,
        base_layer=s.layer2,
        attributions=attr,
    )
    assert abs(float(residual) - dcor.partial_distance_correlation(fb, yy, fs)) < 1e-9
    # a pair of maps: each model on its own perturbed images
    attr2 = attr.flip(0)
    pair = relevance_score(
        s,
        s.layer2,
        x,
        target=y,
        label_embeddings=emb,
        base_forward_func=b,
        base_layer=b.layer2,
        attributions=(attr, attr2),
    )
    fb2 = oracle_features(b, b.layer2, mask_multiply(x, attr2))
    assert abs(float(pair) - dcor.partial_distance_correlation(fs, yy, fb2)) < 1e-9
    # no unique part: a model given itself is 0, with a warning that says why
    with pytest.warns(UniCAMWarning, match="same distance structure"):
        same = relevance_score(
            s, s.layer2, x, target=y, base_forward_func=s, base_layer=s.layer2, attributions=attr
        )
    assert float(same) == 0.0


def test_no_side_effects(setup):
    s, b, x, y, attr = setup
    s.train()
    x_in, attr_in = x.clone().requires_grad_(True), attr.clone()
    before = [p.clone() for p in s.parameters()]
    try:
        relevance_score(
            s,
            s.layer1,
            x_in,
            target=y,
            base_forward_func=b,
            base_layer=b.layer1,
            attributions=attr_in,
        )
        feature_similarity_score(
            s, s.layer1, x_in, base_forward_func=b, base_layer=b.layer1, attributions=attr_in
        )
        assert s.training and not b.training  # modes untouched
    finally:
        s.eval()
    assert x_in.requires_grad and x_in.grad is None and torch.equal(x_in.detach(), x)
    assert torch.equal(attr_in, attr) and not attr_in.requires_grad
    assert all(torch.equal(p, q) for p, q in zip(s.parameters(), before))
    for m in list(s.modules()) + list(b.modules()):
        assert not m._forward_hooks


def test_hooks_removed_when_forward_raises():
    class Broken(TinyNet):
        def forward(self, x):
            raise RuntimeError("boom")

    net = Broken()
    with pytest.raises(RuntimeError, match="boom"):
        relevance_score(net, net.layer1, torch.rand(4, 3, 8, 8), target=[0, 1, 2, 0])
    assert not net.layer1._forward_hooks


def test_bad_input_value_errors(setup):
    s, b, x, y, attr = setup

    def fss(x, attributions=None, **kw):
        return feature_similarity_score(
            s,
            s.layer1,
            x,
            base_forward_func=b,
            base_layer=b.layer1,
            attributions=attributions,
            **kw,
        )

    def rs(x, target, attributions=None, **kw):
        return relevance_score(s, s.layer1, x, target=target, attributions=attributions, **kw)

    cases = [
        (lambda: fss(x, attr[:5]), "cannot be matched"),
        (lambda: fss(x, attr[:, 0, 0]), "cannot be matched"),
        (lambda: fss(x[:, :, 0], attr[:, 0]), "cannot be matched"),
        (lambda: fss(x, attr.expand(N, 2, 4, 4)), "cannot be matched"),
        (lambda: fss(x, (attr, attr[:3])), "cannot be matched"),
        (lambda: rs(x, y, attr.unsqueeze(1)), "cannot be matched"),
        (lambda: fss(x[:3]), "at least 4"),
        (lambda: rs(x[:3], y[:3]), "at least 4"),
        (
            lambda: rs(x, y, label_embeddings=torch.randn(2, 5)),
            "2 rows but target holds class index 2",
        ),
        (lambda: rs(x, y, label_embeddings=torch.full((3, 2), float("nan"))), "NaN"),
        (lambda: fss(torch.where(x > 0.99, float("nan"), x)), "NaN"),
        (lambda: rs(x, y, attr.masked_fill(attr > 0.9, float("nan"))), "NaN"),
        (lambda: rs(x, 1), "one target per sample"),
        (lambda: rs(x, y[:5]), "one integer class index per sample"),
        (lambda: rs(x, -y), "negative"),
        (lambda: fss(x, estimator="w"), "estimator"),
        (lambda: rs(x, y, base_forward_func=b, base_layer=b.layer1, estimator="v"), "U-statistic"),
        (lambda: rs(x[:4], y[:4], base_forward_func=b, base_layer=b.layer1), "at least 5"),
        (lambda: rs(x, y, base_forward_func=b), "together"),
        (lambda: rs(x, y, (attr, attr)), "needs a Base"),
        (lambda: fss(x, (attr, attr, attr)), "pair"),
        (
            lambda: feature_similarity_score(
                s, b.layer1, x, base_forward_func=b, base_layer=b.layer1
            ),
            "was not called",
        ),
        (lambda: rs(x, y, attr, perturbation="mask"), "perturbation must be callable"),
        (lambda: rs(x, y, attr, perturbation=None), "perturbation=None means raw features"),
    ]
    for call, match in cases:
        with pytest.raises(InputError, match=match):
            call()
    for m in list(s.modules()) + list(b.modules()):
        assert not m._forward_hooks


def test_nan_features_value_error():
    net = TinyNet()
    with torch.no_grad():
        net.layer1[0].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        relevance_score(net, net.layer1, torch.rand(4, 3, 8, 8), target=[0, 1, 2, 0])


@settings(deadline=None, max_examples=15)
@given(seed=st.integers(0, 2**16), n=st.integers(5, 9))
def test_batch_permutation_and_symmetry(seed, n):
    """FSS / RS are batch statistics: permuting the batch changes nothing; FSS is symmetric."""
    g = torch.Generator().manual_seed(seed)
    s, b = TinyNet(3).eval(), TinyNet(5).eval()
    x = torch.rand(n, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    attr = torch.rand(n, 1, 2, 2, generator=g)
    perm = torch.randperm(n, generator=g)
    f1 = feature_similarity_score(
        s, s.layer2, x, base_forward_func=b, base_layer=b.layer2, attributions=attr
    )
    f2 = feature_similarity_score(
        s, s.layer2, x[perm], base_forward_func=b, base_layer=b.layer2, attributions=attr[perm]
    )
    f3 = feature_similarity_score(
        b, b.layer2, x, base_forward_func=s, base_layer=s.layer2, attributions=attr
    )
    assert abs(float(f1) - float(f2)) < 1e-9 and abs(float(f1) - float(f3)) < 1e-9
    r1 = relevance_score(
        s, s.layer1, x, target=y, base_forward_func=b, base_layer=b.layer1, attributions=attr
    )
    r2 = relevance_score(
        s,
        s.layer1,
        x[perm],
        target=y[perm],
        base_forward_func=b,
        base_layer=b.layer1,
        attributions=attr[perm],
    )
    assert abs(float(r1) - float(r2)) < 1e-9
    assert -1 - 1e-12 <= float(r1) <= 1 + 1e-12


def test_attributions_without_channel_dim(setup):
    s, b, x, y, attr = setup
    a = feature_similarity_score(
        s, s.layer2, x, base_forward_func=b, base_layer=b.layer2, attributions=attr
    )
    c = feature_similarity_score(
        s, s.layer2, x, base_forward_func=b, base_layer=b.layer2, attributions=attr[:, 0]
    )  # (N, h, w)
    assert abs(float(a) - float(c)) < 1e-12
