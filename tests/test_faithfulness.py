"""Deletion / insertion curves and the random-map baseline (captum_unicam.metrics.faithfulness).

Oracles: hand-computed curves of a linear model (exact integers), numpy sorting of the
per-pixel contributions, ``road_impute`` called directly on the same removal sets, the model's
own logits and softmax, and UniCAM's reference-mode score on the perturbed images.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from hypothesis import given, settings
from hypothesis import strategies as st
from test_unicam_common import SmallResNet, batch, make
from tiny_models import TinyNet

from captum_unicam.attr import UniCAM
from captum_unicam.errors import InputError
from captum_unicam.metrics.faithfulness import (
    FaithfulnessWarning,
    faithfulness,
    perturbation_curve,
    target_logit,
    target_probability,
)
from captum_unicam.perturb import removal_count, road_impute

QUARTERS = [0, 25, 50, 75, 100]


def linear(weights: torch.Tensor):
    """f(x) = sum of weights * x per image: each pixel's contribution is weights * x."""

    def forward_func(x: torch.Tensor) -> torch.Tensor:
        return (x * weights).sum((1, 2, 3))

    return forward_func


def hand_case():
    w = torch.tensor([5, 12, 1, 9, 16, 3, 14, 7, 2, 10, 13, 6, 15, 4, 11, 8], dtype=torch.float64)
    return torch.ones(1, 1, 4, 4, dtype=torch.float64), w.reshape(1, 1, 4, 4)


# --------------------------------------------------------------------------------------
# exact values
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "order, mode, curve, auc",
    [
        ("morf", "deletion", [136, 78, 36, 10, 0], 48),  # 136 - (16+15+14+13) = 78, ...
        ("lerf", "deletion", [136, 126, 100, 58, 0], 88),  # 136 - (1+2+3+4) = 126, ...
        ("morf", "insertion", [0, 58, 100, 126, 136], 88),
        ("lerf", "insertion", [0, 10, 36, 78, 136], 48),
    ],
)
def test_hand_computed_linear_curves(order, mode, curve, auc):
    x, w = hand_case()
    result = perturbation_curve(
        linear(w), x, w, percentiles=QUARTERS, order=order, mode=mode, baseline=0.0
    )
    assert result.curves.tolist() == [curve]
    # trapezoid over 0, .25, ..., 1 (range 1): (c0/2 + c1 + c2 + c3 + c4/2) / 4
    assert result.auc.tolist() == [auc]
    assert result.percentiles.tolist() == QUARTERS


def test_auc_is_the_mean_height_over_the_grid_range():
    x, w = hand_case()
    result = perturbation_curve(linear(w), x, w, percentiles=[25, 50], baseline=0.0)
    assert result.curves.tolist() == [[78, 36]]
    assert result.auc.tolist() == [57.0]  # (78 + 36) / 2 over [0.25, 0.5], divided by 0.25
    one = perturbation_curve(linear(w), x, w, percentiles=[50], baseline=0.0)
    assert one.auc.tolist() == [36.0]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.integers(2, 6), p=st.floats(0, 100))
def test_deletion_equals_sorted_contributions(seed, size, p):
    """Removing the k highest-ranked pixels (constant 0) of a linear model leaves the total
    minus their contributions; the oracle sorts the map with numpy."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 1, size, size, generator=g, dtype=torch.float64)
    w = torch.randn(1, 1, size, size, generator=g, dtype=torch.float64)
    maps = torch.randn(3, 1, size, size, generator=g, dtype=torch.float64)
    contrib = (x * w).reshape(3, -1).numpy()
    k = removal_count(size, size, p)
    for order in ("morf", "lerf"):
        got = perturbation_curve(linear(w), x, maps, percentiles=[p], order=order, baseline=0.0)
        ranking = np.argsort(maps.reshape(3, -1).numpy(), axis=1, kind="stable")
        chosen = ranking[:, ::-1][:, :k] if order == "morf" else ranking[:, :k]
        expected = contrib.sum(1) - np.take_along_axis(contrib, chosen, 1).sum(1)
        np.testing.assert_allclose(got.curves[:, 0].numpy(), expected, rtol=0, atol=1e-12)


def test_low_resolution_maps_are_upsampled_bilinearly():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 2, 8, 8, generator=g, dtype=torch.float64)
    w = torch.randn(1, 2, 8, 8, generator=g, dtype=torch.float64)
    coarse = torch.rand(4, 1, 2, 2, generator=g, dtype=torch.float64)
    fine = F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    for order in ("morf", "lerf"):
        a = perturbation_curve(linear(w), x, coarse, order=order, noise=0.0)
        b = perturbation_curve(linear(w), x, fine, order=order, noise=0.0)
        assert torch.equal(a.curves, b.curves)
    # (N, C, h, w) input attributions are summed over channels
    two = torch.rand(4, 2, 8, 8, generator=g, dtype=torch.float64)
    a = perturbation_curve(linear(w), x, two, baseline=0.0)
    b = perturbation_curve(linear(w), x, two.sum(1), baseline=0.0)
    assert torch.equal(a.curves, b.curves)


def test_road_curves_equal_road_impute_on_the_same_removal():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64)
    w = torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64)
    maps = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64)
    grid = [0, 20, 50, 90]
    lerf = perturbation_curve(linear(w), x, maps, percentiles=grid, order="lerf", noise=0.0)
    morf = perturbation_curve(linear(w), x, maps, percentiles=grid, order="morf", noise=0.0)
    for j, p in enumerate(grid):
        # road_impute removes the least relevant pixels: negate the map for MoRF
        keep = linear(w)(road_impute(x, maps, p, noise=0.0))
        drop = linear(w)(road_impute(x, -maps, p, noise=0.0))
        torch.testing.assert_close(lerf.curves[:, j], keep, rtol=0, atol=1e-10)
        torch.testing.assert_close(morf.curves[:, j], drop, rtol=0, atol=1e-10)
    # insertion of p % = deletion of the other (100 - p) %
    ins = perturbation_curve(
        linear(w), x, maps, percentiles=[10, 50, 80], mode="insertion", noise=0.0
    )
    rev = perturbation_curve(linear(w), x, maps, percentiles=[20, 50, 90], order="lerf", noise=0.0)
    torch.testing.assert_close(ins.curves, rev.curves.flip(1), rtol=0, atol=1e-10)


def test_noise_only_on_removed_pixels():
    seen = []

    def record(x):
        seen.append(x.clone())
        return x.sum((1, 2, 3))

    g = torch.Generator().manual_seed(6)
    x = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    maps = torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64)
    perturbation_curve(record, x, maps, percentiles=[50], order="lerf", noise=0.0)
    perturbation_curve(record, x, maps, percentiles=[50], order="lerf", noise=0.1)
    clean, noisy = seen
    removed = maps <= maps.flatten(1).median(1).values.reshape(2, 1, 1, 1)  # LeRF lowest half
    removed = removed.expand_as(x)
    diff = noisy - clean
    assert torch.equal(diff[~removed], torch.zeros_like(diff[~removed]))
    assert float(diff[removed].std()) == pytest.approx(0.1, rel=0.1)  # 384 draws


# --------------------------------------------------------------------------------------
# the random baseline
# --------------------------------------------------------------------------------------


def linear_batch(n=16, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g, dtype=torch.float64)
    w = torch.randn(1, 1, size, size, generator=g, dtype=torch.float64)
    return x, w


@pytest.mark.parametrize(
    "mode, baseline", [("deletion", 0.0), ("insertion", 0.0), ("deletion", "road")]
)
def test_true_contribution_beats_random_and_reversed_is_worse(mode, baseline):
    """x * w is each pixel's exact contribution when a removed pixel is set to 0. Under
    ROAD a removed pixel keeps w * (imputed value), so x * w is only approximately the
    contribution; deletion still separates it from random on this data (insertion from
    a few kept pixels does not, and is not asserted)."""
    x, w = linear_batch()
    kwargs = {"mode": mode, "baseline": baseline, "n_random": 4, "n_bootstrap": 500}
    true = faithfulness(linear(w), x, x * w, **kwargs)
    reverse = faithfulness(linear(w), x, -(x * w), **kwargs)
    for key in ("morf", "lerf", "gap"):
        assert true[key]["verdict"] == "better than random", (key, true[key])
        assert reverse[key]["verdict"] == "worse than random", (key, reverse[key])
    # the same random maps for both (they depend on the images and the seed only)
    assert true["morf"]["random_auc"] == reverse["morf"]["random_auc"]
    # deletion MoRF: a lower AUC than random; the gap is LeRF - MoRF
    sign = 1 if mode == "deletion" else -1
    assert sign * (true["morf"]["auc"]["mean"] - true["morf"]["random_auc"]["mean"]) < 0
    per = true["per_image"]
    gap = sign * (np.array(per["lerf"]) - np.array(per["morf"]))
    assert true["gap"]["auc"]["mean"] == pytest.approx(float(gap.mean()), abs=1e-12)
    low, high = true["morf"]["minus_random"]["low"], true["morf"]["minus_random"]["high"]
    diffs = np.array(per["morf"]) - np.array(per["random_morf"])
    assert low <= float(diffs.mean()) <= high
    assert true["n_images"] == 16 and true["n_random"] == 4 and true["n_constant_maps"] == 0


def test_several_maps_share_the_random_baseline():
    """A mapping of maps gives, per name, the numbers of a separate call; maps of one
    resolution share the random AUCs, maps of another get their own."""
    x, w = linear_batch(n=6)
    g = torch.Generator().manual_seed(9)
    maps = {
        "true": x * w,
        "noise": torch.rand(6, 1, 8, 8, generator=g, dtype=torch.float64),
        "coarse": torch.rand(6, 1, 2, 2, generator=g, dtype=torch.float64),
    }
    kwargs = {"n_random": 2, "n_bootstrap": 100, "baseline": 0.0}
    together = faithfulness(linear(w), x, maps, **kwargs)
    assert list(together) == ["true", "noise", "coarse"]
    for name, m in maps.items():
        assert together[name] == faithfulness(linear(w), x, m, **kwargs)
    assert together["true"]["morf"]["random_auc"] == together["noise"]["morf"]["random_auc"]
    assert together["true"]["morf"]["random_auc"] != together["coarse"]["morf"]["random_auc"]


def test_random_maps_are_drawn_at_the_maps_resolution():
    """A 1 x 1 map is constant: its random maps are constant too, so every random draw
    ranks the pixels by the tie-break alone, the same as the map itself."""
    x, w = linear_batch(n=6)
    coarse = torch.rand(6, 1, 1, 1, dtype=torch.float64)
    with pytest.warns(FaithfulnessWarning, match="6 of 6 maps are constant"):
        result = faithfulness(linear(w), x, coarse, n_random=2, baseline=0.0)
    assert result["n_constant_maps"] == 6
    assert result["morf"]["minus_random"]["mean"] == 0.0
    assert result["morf"]["verdict"] == "not distinguishable from random"


# --------------------------------------------------------------------------------------
# batching, seeds, inputs
# --------------------------------------------------------------------------------------


def tiny_classifier():
    torch.manual_seed(0)
    model = TinyNet(width=4, classes=3).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    maps = LayerGradCam(model, model.layer2).attribute(x, target=y)
    return model, x, y, maps


def test_batching_invariance():
    model, x, y, maps = tiny_classifier()
    f = target_logit(model)
    for baseline, tol in ((0.0, 0.0), ("road", 1e-6)):
        whole = perturbation_curve(f, x, maps, target=y, baseline=baseline)
        halves = [
            perturbation_curve(f, x[s], maps[s], target=y[s], baseline=baseline)
            for s in (slice(0, 4), slice(4, 8))
        ]
        chunked = perturbation_curve(f, x, maps, target=y, baseline=baseline, batch_size=3)
        perm = torch.tensor([5, 2, 7, 0, 1, 6, 3, 4])
        shuffled = perturbation_curve(f, x[perm], maps[perm], target=y[perm], baseline=baseline)
        torch.testing.assert_close(
            torch.cat([h.curves for h in halves]), whole.curves, rtol=0, atol=tol
        )
        torch.testing.assert_close(chunked.curves, whole.curves, rtol=0, atol=tol)
        torch.testing.assert_close(shuffled.curves, whole.curves[perm], rtol=0, atol=tol)
    a = faithfulness(f, x, maps, target=y, n_random=2, n_bootstrap=100)
    b = faithfulness(f, x, maps, target=y, n_random=2, n_bootstrap=100, batch_size=5)
    np.testing.assert_allclose(
        a["per_image"]["random_morf"], b["per_image"]["random_morf"], rtol=0, atol=1e-6
    )


def test_determinism_under_a_seed():
    model, x, y, maps = tiny_classifier()
    f = target_logit(model)
    a = perturbation_curve(f, x, maps, target=y, seed=3)
    b = perturbation_curve(f, x, maps, target=y, seed=3)
    c = perturbation_curve(f, x, maps, target=y, seed=4)
    assert torch.equal(a.curves, b.curves)
    assert not torch.equal(a.curves[:, 1:], c.curves[:, 1:])  # other noise
    assert torch.equal(a.curves[:, 0], c.curves[:, 0])  # p = 0: the intact images
    r1 = faithfulness(f, x, maps, target=y, n_random=2, n_bootstrap=200, seed=3)
    r2 = faithfulness(f, x, maps, target=y, n_random=2, n_bootstrap=200, seed=3)
    assert r1 == r2


def test_inputs_maps_and_model_mode_unchanged():
    model, x, y, maps = tiny_classifier()
    x0, maps0, y0 = x.clone(), maps.clone(), y.clone()
    model.train()
    faithfulness(target_logit(model), x, maps, target=y, n_random=1, n_bootstrap=50)
    perturbation_curve(target_logit(model), x, maps, target=y, mode="insertion", baseline=0.5)
    assert torch.equal(x, x0) and torch.equal(maps, maps0) and torch.equal(y, y0)
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())


# --------------------------------------------------------------------------------------
# forward functions: logit, probability, UniCAM's reference-mode score
# --------------------------------------------------------------------------------------


def test_logit_and_probability_forward_funcs():
    model, x, y, maps = tiny_classifier()
    with torch.no_grad():
        logits = model(x)
    rows = torch.arange(8)
    logit = perturbation_curve(target_logit(model), x, maps, target=y, percentiles=[0, 50])
    prob = perturbation_curve(target_probability(model), x, maps, target=y, percentiles=[0, 50])
    torch.testing.assert_close(logit.curves[:, 0], logits[rows, y], rtol=0, atol=1e-12)
    torch.testing.assert_close(prob.curves[:, 0], logits.softmax(1)[rows, y], rtol=0, atol=1e-12)
    one = perturbation_curve(target_logit(model), x, maps, target=2, percentiles=[0])
    torch.testing.assert_close(one.curves[:, 0], logits[:, 2], rtol=0, atol=1e-12)
    # the scale argument of TinyNet as an additional forward argument
    scaled = perturbation_curve(
        target_logit(model), x, maps, target=y, percentiles=[0], additional_forward_args=(2.0,)
    )
    with torch.no_grad():
        torch.testing.assert_close(scaled.curves[:, 0], model(x, 2.0)[rows, y], rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def unicam_setting():
    student, base = make(SmallResNet, 1), make(SmallResNet, 2)
    x, _ = batch(10, seed=4)
    y = torch.arange(10) % 4
    ref_x, ref_y = batch(10, seed=5)
    unicam = UniCAM(student, student.layer2, base, base.layer2, reference=(ref_x, ref_y))
    return unicam, x, y


def score_of(unicam, features):
    """The per-image reference-mode score as a forward function; labels come in
    additional_forward_args, so they are split with the images."""

    def forward_func(inputs, labels):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate perturbed images score 0, warned
            return unicam.score(inputs, target=labels, features=features)

    return forward_func


@pytest.mark.parametrize("features", ["distilled", "residual"])
def test_unicam_reference_mode_score(unicam_setting, features):
    unicam, x, y = unicam_setting
    coarse = unicam.attribute(x, target=y, features=features, relu_attributions=False)
    # at the input size, with the ties of bilinear upsampling (the clamped border) broken
    # by a tiny ramp, so that road_impute's raster tie rule and the curve's agree
    up = F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)
    maps = up + 1e-9 * float(up.abs().max()) * torch.arange(256.0).reshape(1, 1, 16, 16)
    f = score_of(unicam, features)
    grid = [0, 30, 60]
    curve = perturbation_curve(
        f, x, maps, additional_forward_args=(y,), percentiles=grid, order="lerf", noise=0.0
    )
    torch.testing.assert_close(
        curve.curves[:, 0], unicam.score(x, target=y, features=features), rtol=0, atol=1e-12
    )
    for j, p in enumerate(grid[1:], start=1):
        expected = unicam.score(road_impute(x, maps, p, noise=0.0), target=y, features=features)
        torch.testing.assert_close(curve.curves[:, j], expected, rtol=0, atol=1e-8)
    chunked = perturbation_curve(
        f,
        x,
        maps,
        additional_forward_args=(y,),
        percentiles=grid,
        order="lerf",
        noise=0.0,
        batch_size=4,
    )
    torch.testing.assert_close(chunked.curves, curve.curves, rtol=0, atol=1e-6)
    result = faithfulness(
        f,
        x,
        maps,
        additional_forward_args=(y,),
        n_random=2,
        n_bootstrap=100,
        percentiles=[0, 30, 60, 90],
    )
    assert np.isfinite(result["morf"]["minus_random"]["mean"])
    assert len(result["per_image"]["random_lerf"]) == 10


# --------------------------------------------------------------------------------------
# errors and warnings
# --------------------------------------------------------------------------------------


def test_errors_name_the_cause():
    x, w = linear_batch(n=4)
    f = linear(w)
    maps = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(InputError, match="removes every pixel"):
        perturbation_curve(f, x, maps, percentiles=[0, 100])
    with pytest.raises(InputError, match="removes every pixel"):
        perturbation_curve(f, x, maps, percentiles=[0, 50], mode="insertion")
    with pytest.raises(InputError, match="strictly increasing"):
        perturbation_curve(f, x, maps, percentiles=[50, 10])
    with pytest.raises(InputError, match="one map per image"):
        perturbation_curve(f, x, maps[:3])
    with pytest.raises(InputError, match="NaN"):
        perturbation_curve(f, x, maps.clone().fill_(float("nan")))
    with pytest.raises(InputError, match="`order`"):
        perturbation_curve(f, x, maps, order="random")
    with pytest.raises(InputError, match="target="):
        perturbation_curve(lambda z: torch.zeros(z.shape[0], 3), x, maps)
    with pytest.raises(InputError, match="outside"):
        perturbation_curve(lambda z: torch.zeros(z.shape[0], 3), x, maps, target=3)
    # 100 % is fine with a constant baseline: the curve ends at f(baseline image)
    end = perturbation_curve(f, x, maps, percentiles=[100], baseline=0.0)
    assert end.curves.abs().max() == 0


def test_a_constant_forward_func_is_flagged():
    x, _ = linear_batch(n=4)
    maps = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    with pytest.warns(FaithfulnessWarning, match="same value on every perturbed image"):
        faithfulness(lambda z: torch.zeros(z.shape[0]), x, maps, n_random=1, n_bootstrap=10)


def test_infidelity_with_the_reference_mode_score(unicam_setting):
    """captum.metrics.infidelity with the per-image score as forward_func (labels in
    additional_forward_args, which infidelity repeats with the perturbed copies) equals the
    hand formula mean_j (sum(a * I_j) - (S(x) - S(x - I_j)))^2 with S = unicam.score."""
    from captum.metrics import infidelity

    unicam, x, y = unicam_setting
    x, y = x[:6], y[:6]
    cam = unicam.attribute(x, target=y, features="distilled")
    attr = F.interpolate(cam, size=x.shape[-2:], mode="bilinear").expand_as(x)

    def perturb_func(inputs):
        perturbation = 0.05 * inputs  # deterministic, so the oracle is exact
        return perturbation, inputs - perturbation

    f = score_of(unicam, "distilled")
    got = infidelity(f, perturb_func, x, attr, additional_forward_args=(y,), n_perturb_samples=3)
    s = unicam.score(x, target=y, features="distilled")
    s_pert = unicam.score(0.95 * x, target=y, features="distilled")
    expected = ((attr * 0.05 * x).sum((1, 2, 3)) - (s - s_pert)) ** 2
    torch.testing.assert_close(got, expected.to(got.dtype), rtol=1e-6, atol=1e-12)


def test_half_precision_images_remove_exactly_the_ranked_pixels():
    """64 x 64 = 4096 ranks: float16 keys would merge ranks above 2048 and remove other
    pixels than the map's; the removal must equal road_impute's on the map itself."""
    seen = []

    def record(z):
        seen.append(z.clone())
        return z.float().sum((1, 2, 3))

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g).half()
    maps = torch.rand(2, 1, 64, 64, generator=g, dtype=torch.float64)
    grid = [50, 69.95, 70, 90]  # 69.95 %: 2865 pixels, ranks 2864 and 2865 merge in float16
    perturbation_curve(record, x, maps, percentiles=grid, order="lerf", noise=0.0)
    assert seen[0].dtype == torch.float16
    for z, p in zip(seen, grid, strict=True):
        assert torch.equal(z, road_impute(x, maps, p, noise=0.0)), p


def test_tensor_baseline_per_channel():
    """A (C, 1, 1) baseline sets each removed pixel to its channel's value: for a linear
    model the curve is the total minus the removed pixels' w * (x - b)."""
    g = torch.Generator().manual_seed(8)
    x = torch.rand(3, 2, 4, 4, generator=g, dtype=torch.float64)
    w = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64)
    maps = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64)
    b = torch.tensor([0.25, -1.0], dtype=torch.float64).reshape(2, 1, 1)
    got = perturbation_curve(linear(w), x, maps, percentiles=[25, 100], baseline=b)
    top = maps.reshape(3, -1).argsort(1, descending=True)[:, :4]
    removed = torch.zeros(3, 16, dtype=torch.bool).scatter_(1, top, True).reshape(3, 1, 4, 4)
    expected = linear(w)(torch.where(removed, b.expand_as(x), x))
    torch.testing.assert_close(got.curves[:, 0], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.curves[:, 1], linear(w)(b.expand_as(x)), rtol=0, atol=1e-12)
    same = perturbation_curve(linear(w), x, maps, percentiles=[25], baseline=0.5)
    full = perturbation_curve(
        linear(w),
        x,
        maps,
        percentiles=[25],
        baseline=torch.full((2, 4, 4), 0.5, dtype=torch.float64),
    )
    assert torch.equal(same.curves, full.curves)
    with pytest.raises(InputError, match="does not broadcast"):
        perturbation_curve(linear(w), x, maps, baseline=torch.zeros(3, 1, 1))
