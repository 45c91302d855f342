"""Tests of captum_unicam.perturb: road_impute against grad-cam's NoisyLinearImputer,
mask_multiply against hand computations, and the input checks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import spsolve

from captum_unicam.perturb import (
    _prolong_1d,
    _restrict_1d,
    mask_multiply,
    removal_count,
    removal_mask,
    road_impute,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n, c, h, w, seed=0, dtype=torch.float32):
    return torch.rand(n, c, h, w, generator=_gen(seed), dtype=torch.float64).to(dtype)


def _upsampled(attributions, size):
    """Independent upsampling: Captum's LayerAttribution.interpolate (a constant map
    stays exactly constant)."""
    maps = attributions.float()
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if maps.shape[-2:] != size:
        up = LayerAttribution.interpolate(maps, size, "bilinear")
        for i in range(maps.shape[0]):
            if maps[i].min() == maps[i].max():
                up[i] = maps[i].min()
        maps = up
    return maps


def _numpy_mask(attributions, size, percentile):
    """Removal mask from a stable numpy argsort (True = removed)."""
    maps = _upsampled(attributions, size).numpy()
    n = maps.shape[0]
    k = int(math.floor(percentile / 100 * size[0] * size[1] + 0.5))
    mask = np.zeros((n, size[0] * size[1]), dtype=bool)
    for i in range(n):
        order = np.argsort(maps[i].reshape(-1), kind="stable")
        mask[i, order[:k]] = True
    return torch.from_numpy(mask.reshape(n, 1, *size))


def _gradcam(images, removed):
    """grad-cam's imputer, looped per image (mask: 1 = kept, 0 = imputed)."""
    imputer = NoisyLinearImputer(noise=0.0)
    keep = (~removed[:, 0]).float()
    return torch.stack([imputer(images[i].float(), keep[i]) for i in range(images.shape[0])])


def _exact(images, removed):
    """grad-cam's sparse system solved in float64 (no final float32 cast)."""
    out = images.double().clone()
    for i in range(images.shape[0]):
        keep = (~removed[i, 0]).double().numpy()
        img = images[i].double().numpy()
        a, b = NoisyLinearImputer.setup_sparse_system(keep, img, _weights())
        sol = spsolve(csc_matrix(a), b).reshape(-1, img.shape[0])
        flat = out[i].reshape(img.shape[0], -1)
        removed_idx = torch.from_numpy(np.argwhere(keep.reshape(-1) == 0).ravel())
        flat[:, removed_idx] = torch.from_numpy(sol.T)
    return out


def _weights():
    from pytorch_grad_cam.metrics.road import neighbors_weights

    return neighbors_weights


def _cam_like(n, h=7, w=7, seed=1, relu_shift=0.0):
    maps = torch.rand(n, 1, h, w, generator=_gen(seed)) - relu_shift
    return maps.clamp_min(0.0) if relu_shift else maps


# --------------------------------------------------------------------------------------
# road_impute against grad-cam
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, c, size, attr, percentile",
    [
        (3, 3, (32, 32), "cam", 50.0),
        (2, 3, (64, 64), "cam", 30.0),
        (2, 3, (64, 64), "cam", 80.0),
        (2, 1, (37, 53), "random", 50.0),  # odd sizes, a full-size random map
        (2, 2, (40, 24), "relu", 60.0),  # ReLU'd CAM: many tied zeros
        (2, 3, (32, 32), "quantized", 45.0),  # a map of 4 values: ties everywhere
        (2, 3, (8, 8), "random", 50.0),  # small enough for the direct solve alone
        (2, 3, (1, 40), "random", 50.0),  # a single row
    ],
)
def test_road_impute_matches_gradcam(n, c, size, attr, percentile):
    images = _images(n, c, *size, seed=3)
    if attr == "cam":
        maps = _cam_like(n)
    elif attr == "relu":
        maps = _cam_like(n, relu_shift=0.5)
    elif attr == "quantized":
        maps = (torch.rand(n, 1, *size, generator=_gen(5)) * 4).floor()
    else:
        maps = torch.rand(n, 1, *size, generator=_gen(5))
    out = road_impute(images, maps, percentile=percentile, noise=0.0)
    removed = _numpy_mask(maps, size, percentile)
    assert torch.equal(removal_mask(_upsampled(maps, size).float(), percentile), removed)
    reference = _gradcam(images, removed)
    assert (out - reference).abs().max().item() <= 1e-3
    # in fact much closer: the solver's tolerance is 1e-4
    assert (out - reference).abs().max().item() <= 2e-4
    assert torch.equal(out[~removed.expand_as(out)], images[~removed.expand_as(images)])


def test_road_impute_float64_tight_tolerance():
    images = _images(2, 3, 48, 40, seed=7, dtype=torch.float64)
    maps = _cam_like(2, seed=8).double()
    out = road_impute(images, maps, percentile=50.0, noise=0.0, tol=1e-9)
    removed = _numpy_mask(maps, (48, 40), 50.0)
    assert out.dtype == torch.float64
    assert (out - _exact(images, removed)).abs().max().item() <= 1e-7


def test_removal_matches_gradcam_threshold_without_ties():
    # grad-cam's RemoveLeastRelevantFirst(q) removes the (100 - q) % least relevant
    # pixels; on a map without ties and with these sizes the sets coincide with ours.
    size = (16, 24)
    values = torch.randperm(size[0] * size[1], generator=_gen(2)).float() / (size[0] * size[1])
    cam = values.reshape(size)
    captured = {}

    def spy(img, mask):
        captured["mask"] = mask
        return img

    for percentile in (25.0, 50.0, 75.0):
        RemoveLeastRelevantFirst(100 - percentile, spy)(torch.zeros(1, *size), cam)
        gradcam_removed = captured["mask"] == 0
        ours = removal_mask(cam[None, None], percentile)[0, 0]
        assert torch.equal(ours, gradcam_removed)


def test_removal_count_and_tie_order():
    assert removal_count(10, 10, 50.0) == 50
    assert removal_count(3, 3, 50.0) == 5  # 4.5 rounds up
    assert removal_count(7, 7, 0.0) == 0
    flat = torch.zeros(1, 1, 3, 4)  # all tied: raster order
    mask = removal_mask(flat, 50.0)
    assert mask.reshape(-1).tolist() == [True] * 6 + [False] * 6


def test_constant_map_removes_first_pixels_in_raster_order():
    images = _images(1, 3, 10, 10)
    out = road_impute(images, torch.zeros(1, 1, 7, 7), percentile=30.0, noise=0.0)
    changed = (out != images).any(dim=1)[0].reshape(-1)
    assert changed[30:].sum() == 0
    removed = torch.zeros(1, 1, 10, 10, dtype=torch.bool)
    removed.view(-1)[:30] = True
    assert (out - _gradcam(images, removed)).abs().max() <= 2e-4


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 3),
    h=st.integers(1, 20),
    w=st.integers(2, 20),
    hm=st.integers(1, 9),
    wm=st.integers(1, 9),
    percentile=st.floats(0.0, 99.0),
    seed=st.integers(0, 1000),
)
def test_road_impute_properties(n, c, h, w, hm, wm, percentile, seed):
    k = removal_count(h, w, percentile)
    if k >= h * w:
        return
    images = _images(n, c, h, w, seed=seed)
    maps = torch.randn(n, 1, hm, wm, generator=_gen(seed + 1))
    before = images.clone()
    out = road_impute(images, maps, percentile=percentile, noise=0.0)
    assert torch.equal(images, before)
    assert out.shape == images.shape and out.dtype == images.dtype
    removed = removal_mask(_upsampled(maps, (h, w)).float(), percentile)
    assert int(removed.sum()) == n * k
    kept = ~removed.expand_as(images)
    assert torch.equal(out[kept], images[kept])
    # maximum principle: an imputed value is a weighted mean of kept values
    lo = images.masked_fill(~kept, math.inf).amin(dim=(-2, -1), keepdim=True)
    hi = images.masked_fill(~kept, -math.inf).amax(dim=(-2, -1), keepdim=True)
    assert bool(((out >= lo - 1e-4) & (out <= hi + 1e-4)).all())
    # with noise every removed value changes, and only those
    noisy = road_impute(images, maps, percentile=percentile, noise=0.1, generator=_gen(seed))
    assert torch.equal(noisy != out, ~kept)


# --------------------------------------------------------------------------------------
# noise, dtypes, devices, gradients
# --------------------------------------------------------------------------------------


def test_noise_reproducible_and_has_the_stated_std():
    images = _images(2, 3, 64, 64)
    maps = _cam_like(2)
    base = road_impute(images, maps, percentile=50.0, noise=0.0)
    a = road_impute(images, maps, percentile=50.0, noise=0.05, generator=_gen(11))
    b = road_impute(images, maps, percentile=50.0, noise=0.05, generator=_gen(11))
    c = road_impute(images, maps, percentile=50.0, noise=0.05, generator=_gen(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    removed = removal_mask(_upsampled(maps, (64, 64)).float(), 50.0).expand_as(images)
    diff = (a - base)[removed].double()
    assert diff.numel() == 2 * 3 * 64 * 64 // 2
    assert abs(diff.std().item() - 0.05) < 0.05 * 0.03
    assert abs(diff.mean().item()) < 0.05 * 0.03
    assert torch.equal(a[~removed], images[~removed])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_preserved_and_inputs_untouched(dtype):
    images = _images(2, 3, 16, 16, dtype=dtype).requires_grad_(dtype != torch.float16)
    before = images.detach().clone()
    maps = _cam_like(2)
    out = road_impute(images, maps, noise=0.0)
    assert out.dtype == dtype and out.device == images.device and not out.requires_grad
    assert torch.equal(images.detach(), before)
    ref = _gradcam(images.detach().float(), _numpy_mask(maps, (16, 16), 50.0)).to(dtype)
    bound = 1e-3 if dtype in (torch.float32, torch.float64) else 1e-2  # half: rounding
    assert (out.float() - ref.float()).abs().max() <= bound
    masked = mask_multiply(images, maps)
    assert masked.dtype == dtype and masked.shape == images.shape
    assert torch.equal(images.detach(), before)


def test_mask_multiply_gradient_flows_to_inputs():
    images = _images(1, 2, 4, 4).requires_grad_(True)
    maps = torch.arange(16.0).reshape(1, 1, 4, 4)
    mask_multiply(images, maps).sum().backward()
    assert torch.allclose(images.grad, (maps / 15.0).expand(1, 2, 4, 4))


# --------------------------------------------------------------------------------------
# mask_multiply
# --------------------------------------------------------------------------------------


def test_mask_multiply_hand_computation():
    images = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 0.5], [2.0, 8.0]]]])
    maps = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    scaled = torch.tensor([[0.0, 0.25], [0.5, 1.0]])
    expected = images * scaled
    assert torch.equal(mask_multiply(images, maps), expected)
    assert torch.equal(mask_multiply(images, maps[:, 0]), expected)  # (N, h, w)
    # (N, C, h, w) input attributions are summed over channels
    split = torch.cat([maps * 0.25, maps * 0.75], dim=1)
    assert torch.allclose(mask_multiply(images, split), expected)


def test_mask_multiply_upsamples_small_maps():
    images = _images(2, 3, 12, 10)
    maps = torch.randn(2, 1, 3, 4, generator=_gen(4))
    up = LayerAttribution.interpolate(maps, (12, 10), "bilinear")
    lo = up.amin(dim=(-2, -1), keepdim=True)
    hi = up.amax(dim=(-2, -1), keepdim=True)
    expected = images * (up - lo) / (hi - lo)
    assert torch.allclose(mask_multiply(images, maps), expected, atol=1e-6)
    one = torch.tensor([[[[5.0]]], [[[-2.0]]]])  # 1x1 maps: constant after upsampling
    assert torch.equal(mask_multiply(images, one), torch.zeros_like(images))


def test_mask_multiply_constant_map_gives_zeros():
    images = _images(3, 3, 8, 8)
    maps = torch.stack([torch.zeros(1, 4, 4), torch.full((1, 4, 4), 3.0), torch.rand(1, 4, 4)])
    out = mask_multiply(images, maps)
    assert torch.equal(out[:2], torch.zeros_like(out[:2]))
    assert out[2].abs().sum() > 0
    assert out[2].max() <= images[2].max()


# --------------------------------------------------------------------------------------
# internals: the restriction is the adjoint of the prolongation, which is bilinear
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5])
def test_prolongation_is_bilinear_and_restriction_its_adjoint(n):
    c = torch.randn(3, 4, n, dtype=torch.float64, generator=_gen(n))
    out = torch.empty(3, 4, 2 * n, dtype=torch.float64)
    _prolong_1d(c, out)
    expected = F.interpolate(c, scale_factor=2, mode="linear", align_corners=False)
    assert torch.allclose(out / 4, expected)
    f = torch.randn(3, 4, 2 * n, dtype=torch.float64, generator=_gen(n + 9))
    lhs = (out * f).sum()
    rhs = (c * _restrict_1d(f)).sum()
    assert torch.allclose(lhs, rhs)


def test_warns_when_not_converged():
    images = _images(1, 3, 64, 64)
    with pytest.warns(RuntimeWarning, match="max_iter"):
        road_impute(images, _cam_like(1), noise=0.0, tol=1e-12, max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        road_impute(images, _cam_like(1), noise=0.0)


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------

_GOOD = _images(2, 3, 8, 8)
_MAPS = torch.rand(2, 1, 4, 4, generator=_gen(0))


@pytest.mark.parametrize("func", [road_impute, mask_multiply])
@pytest.mark.parametrize(
    "inputs, attributions, match",
    [
        ([[1.0]], _MAPS, "torch.Tensor"),
        (_GOOD[0], _MAPS, r"\(N, C, H, W\)"),
        (_GOOD[None], _MAPS, r"\(N, C, H, W\)"),
        ((_GOOD * 255).to(torch.uint8), _MAPS, "floating-point"),
        (_GOOD[:, :, :0], _MAPS, "empty"),
        (_GOOD, _MAPS.tolist(), "torch.Tensor"),
        (_GOOD, _MAPS[:1], "2 examples"),
        (_GOOD, torch.rand(3, 4, 4), "2 examples"),
        (_GOOD, torch.rand(2, 2, 4, 4), "channels"),
        (_GOOD, torch.rand(2, 16), "shape"),
        (_GOOD, torch.rand(2, 1, 1, 4, 4), "shape"),
        (_GOOD, torch.rand(2, 1, 0, 4), "empty"),
        (_GOOD, _MAPS.bool(), "real"),
        (_GOOD, _MAPS.masked_fill(_MAPS > 0.5, float("nan")), "NaN or Inf"),
        (_GOOD, _MAPS.masked_fill(_MAPS > 0.5, float("inf")), "NaN or Inf"),
    ],
)
def test_bad_inputs_raise(func, inputs, attributions, match):
    with pytest.raises(ValueError, match=match):
        func(inputs, attributions)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"percentile": -1.0}, "percentile"),
        ({"percentile": 100.5}, "percentile"),
        ({"percentile": 100.0}, "removes all 64 pixels"),
        ({"percentile": 99.5}, "removes all 64 pixels"),
        ({"percentile": True}, "percentile"),
        ({"percentile": "50"}, "percentile"),
        ({"noise": -0.1}, "noise"),
        ({"noise": float("nan")}, "noise"),
        ({"noise": float("inf")}, "noise"),
        ({"tol": 0.0}, "tol"),
        ({"max_iter": 0}, "max_iter"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"generator": 3}, "generator"),
    ],
)
def test_bad_road_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        road_impute(_GOOD, _MAPS, **kwargs)


def test_nonfinite_inputs_raise_for_road_impute():
    bad = _GOOD.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="inputs contain NaN"):
        road_impute(bad, _MAPS)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 4),
    attr_n=st.integers(1, 3),
    attr_c=st.integers(1, 4),
    rank=st.sampled_from([2, 3, 4, 5]),
)
def test_shape_matching(n, c, attr_n, attr_c, rank):
    images = _images(n, c, 6, 6)
    shape = {
        2: (attr_n, 9),
        3: (attr_n, 3, 3),
        4: (attr_n, attr_c, 3, 3),
        5: (attr_n, attr_c, 1, 3, 3),
    }[rank]
    maps = torch.rand(*shape, generator=_gen(n))
    valid = attr_n == n and (rank == 3 or (rank == 4 and attr_c in (1, c)))
    for func in (mask_multiply, road_impute):
        if valid:
            out = func(images, maps)
            assert out.shape == images.shape
        else:
            with pytest.raises(ValueError):
                func(images, maps)
