"""captum_unicam.stats against the reference package dcor, plus gradients and errors."""

from __future__ import annotations

import math
from fractions import Fraction

import dcor
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from captum_unicam import stats

PAIR_FUNCTIONS = [
    "distance_covariance_sqr",
    "distance_correlation_sqr",
    "u_distance_covariance_sqr",
    "u_distance_correlation_sqr",
]
TRIPLE_FUNCTIONS = ["partial_distance_covariance", "partial_distance_correlation"]
MIN_N = {
    "distance_covariance_sqr": 2,
    "distance_correlation_sqr": 2,
    "u_distance_covariance_sqr": 4,
    "u_distance_correlation_sqr": 4,
    "partial_distance_covariance": 4,
    "partial_distance_correlation": 4,
}

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().reshape(t.shape[0], -1).double().numpy()


def _reference(name: str, *tensors: torch.Tensor) -> float:
    """dcor's value. Pairs use its naive O(n^2) method: for 1-D samples dcor's default picks
    a fast O(n log n) one whose sums cancel when the samples sit far from 0 (relative error
    5e-9 at offset 5, spread 3e-3, against 1e-16 for the naive method and for ours, both
    checked against 50-digit arithmetic)."""
    arrays = [_np(t) for t in tensors]
    if len(arrays) == 2:
        return float(getattr(dcor, name)(*arrays, method="naive"))
    return float(getattr(dcor, name)(*arrays))


def _scale(name: str, *tensors: torch.Tensor) -> float:
    """The size of a statistic's terms, to turn float32 errors into relative ones."""
    if "correlation" in name:
        return 1.0
    # covariances are bounded by the product of the distance standard deviations
    sizes = [abs(float(dcor.distance_covariance_sqr(_np(t), _np(t)))) ** 0.5 for t in tensors[:2]]
    return max(sizes[0] * sizes[1], 1e-12)


def _degenerate(t: torch.Tensor, name: str) -> bool:
    """Whether a variable's own (U-)distance variance is (nearly) zero, so that a correlation
    with it is 0/0 and both dcor's value and ours are rounding noise. Measured on centred data
    with dcor's naive method, which cancels least."""
    covariance = (
        dcor.u_distance_covariance_sqr if name.startswith("u_") else dcor.distance_covariance_sqr
    )
    a = _np(t) - _np(t).mean(axis=0)
    scale = float(dcor.distances.pairwise_distances(a).mean()) ** 2
    rel = 1e-6 if t.dtype == torch.float64 else 1e-3
    return abs(float(covariance(a, a, method="naive"))) <= rel * scale


def _tolerance(name: str, dtype: torch.dtype, *tensors: torch.Tensor) -> float:
    rel = 1e-9 if dtype == torch.float64 else 2e-3
    return rel * _scale(name, *tensors) + 1e-15


@st.composite
def samples(draw, n=None, min_n=4, max_n=64):
    """A tensor (n, d) or (n, c, h, w) with duplicates, constant columns and offsets."""
    n = draw(st.integers(min_n, max_n)) if n is None else n
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if draw(st.booleans()):
        shape = (n, draw(st.integers(1, 300)))
    else:
        shape = (n, draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    flat = x.view(n, -1)
    if draw(st.booleans()):  # duplicated rows
        k = draw(st.integers(1, max(1, n // 2)))
        src = torch.randint(0, n, (k,), generator=g)
        dst = torch.randint(0, n, (k,), generator=g)
        flat[dst] = flat[src]
    if draw(st.booleans()):  # constant columns
        cols = torch.randint(0, flat.shape[1], (max(1, flat.shape[1] // 3),), generator=g)
        flat[:, cols] = 2.5
    x = x * draw(st.sampled_from([1e-3, 1.0, 30.0])) + draw(st.sampled_from([0.0, 5.0, -100.0]))
    return x.to(dtype)


def _same_dtype(*tensors):
    dtype = tensors[0].dtype
    return [t.to(dtype) for t in tensors]


@pytest.mark.parametrize("name", PAIR_FUNCTIONS)
@SETTINGS
@given(data=st.data())
def test_pair_statistics_equal_dcor(name, data):
    x = data.draw(samples(), label="x")
    y = data.draw(samples(n=x.shape[0]), label="y")
    x, y = _same_dtype(x, y)
    ours = float(getattr(stats, name)(x, y))
    ref = _reference(name, x, y)
    assert math.isfinite(ours)
    if "correlation" in name and (_degenerate(x, name) or _degenerate(y, name)):
        # 0/0: dcor divides rounding noise by rounding noise (e.g. n=4 with three equal
        # rows, whose U-centred matrix is exactly 0); any value in range is as right
        assert (0.0 if name == "distance_correlation_sqr" else -1.0) <= ours <= 1.0
        return
    assert ours == pytest.approx(ref, abs=_tolerance(name, x.dtype, x, y))


@pytest.mark.parametrize("name", TRIPLE_FUNCTIONS)
@SETTINGS
@given(data=st.data())
def test_partial_statistics_equal_dcor(name, data):
    x = data.draw(samples(), label="x")
    n = x.shape[0]
    y = data.draw(samples(n=n), label="y")
    z = data.draw(samples(n=n), label="z")
    x, y, z = _same_dtype(x, y, z)
    ours = float(getattr(stats, name)(x, y, z))
    ref = _reference(name, x, y, z)
    if name == "partial_distance_correlation" and x.dtype == torch.float32:
        # pdCor divides by sqrt(1 - r_xz^2): float32 errors in r_xz grow where |r_xz| ~ 1
        r_xz = dcor.u_distance_correlation_sqr(_np(x), _np(z))
        r_yz = dcor.u_distance_correlation_sqr(_np(y), _np(z))
        assume(max(abs(r_xz), abs(r_yz)) < 0.9)
    tol = 1e-9 if x.dtype == torch.float64 else 3e-3
    if name == "partial_distance_covariance":
        tol *= _scale("distance_covariance_sqr", x, y)
    assert ours == pytest.approx(ref, abs=tol)


@SETTINGS
@given(x=samples(min_n=1, max_n=40), exponent=st.sampled_from([1.0, 0.5, 1.5]))
def test_distance_matrix_equals_dcor(x, exponent):
    ours = stats.distance_matrix(x, exponent=exponent)
    ref = dcor.distances.pairwise_distances(_np(x), exponent=exponent)
    assert ours.dtype == x.dtype
    assert ours.shape == (x.shape[0], x.shape[0])
    scale = max(float(np.abs(ref).max()), 1e-12)
    tol = 1e-10 if x.dtype == torch.float64 else 1e-3
    np.testing.assert_allclose(ours.double().numpy(), ref, atol=tol * scale, rtol=0)
    assert torch.equal(ours, ours.T)
    assert torch.all(ours.diagonal() == 0)


def test_duplicated_rows_are_at_distance_exactly_zero():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(20, 5000, generator=g, dtype=dtype) * 3 + 7
        x[5] = x[11]
        x[0] = x[19]
        d = stats.distance_matrix(x)
        assert d[5, 11] == 0 and d[11, 5] == 0 and d[0, 19] == 0
        off = ~torch.eye(20, dtype=torch.bool)
        off[5, 11] = off[11, 5] = off[0, 19] = off[19, 0] = False
        assert d[off].min() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_variable_gives_exactly_zero(dtype):
    g = torch.Generator().manual_seed(1)
    constant = torch.full((16, 3, 4, 4), 0.3, dtype=dtype)
    y = torch.randn(16, 7, generator=g, dtype=dtype)
    z = torch.randn(16, 2, generator=g, dtype=dtype)
    for name in PAIR_FUNCTIONS:
        assert float(getattr(stats, name)(constant, y)) == 0.0 == _reference(name, constant, y)
    assert float(stats.partial_distance_correlation(constant, y, z)) == 0.0
    assert _reference("partial_distance_correlation", constant, y, z) == 0.0
    # a constant z removes nothing: pdCor(x, y; const) = dCor*(x, y), as in dcor
    x = torch.randn(16, 5, generator=g, dtype=dtype)
    ours = float(stats.partial_distance_correlation(x, y, constant))
    ref = _reference("partial_distance_correlation", x, y, constant)
    assert ours == pytest.approx(ref, abs=1e-9 if dtype == torch.float64 else 1e-5)
    assert ours == pytest.approx(float(stats.u_distance_correlation_sqr(x, y)), abs=1e-6)


def test_partial_correlation_with_nothing_left_is_zero():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 4, generator=g, dtype=torch.float64)
    y = torch.randn(12, 3, generator=g, dtype=torch.float64)
    # x given x: the projection of x off itself leaves nothing
    value = float(stats.partial_distance_correlation(x, y, x))
    assert abs(value) < 1e-6
    assert value == pytest.approx(_reference("partial_distance_correlation", x, y, x), abs=1e-6)
    assert float(stats.partial_distance_covariance(x, y, x)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_invariance_to_shift_scale_rotation(dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(24, 6, generator=g, dtype=torch.float64)
    y = x[:, :3] ** 2 + 0.3 * torch.randn(24, 3, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    moved = (x @ q * 4.0 + 11.0).to(dtype)
    x, y = x.to(dtype), y.to(dtype)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for name in ["distance_correlation_sqr", "u_distance_correlation_sqr"]:
        f = getattr(stats, name)
        assert float(f(moved, y)) == pytest.approx(float(f(x, y)), abs=tol)
        assert float(f(x, moved)) == pytest.approx(1.0, abs=tol)
    if dtype == torch.float64:
        # nothing of `moved` is left once x is removed (in float32 the rounding of the
        # Gram product is all that is left, and pdCor amplifies it: an ill-posed case)
        assert float(stats.partial_distance_correlation(moved, y, x)) == pytest.approx(
            0.0, abs=1e-4
        )


def test_trailing_dimensions_are_flattened():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(10, 2, 3, 4, generator=g, dtype=torch.float64)
    y = torch.randn(10, 5, 5, generator=g, dtype=torch.float64)
    z = torch.randn(10, generator=g, dtype=torch.float64)
    assert float(stats.u_distance_correlation_sqr(x, y)) == float(
        stats.u_distance_correlation_sqr(x.reshape(10, -1), y.reshape(10, -1))
    )
    ref = _reference("partial_distance_correlation", x, y, z)
    assert float(stats.partial_distance_correlation(x, y, z)) == pytest.approx(ref, abs=1e-12)


def test_large_offset_float32_matches_float64():
    """Samples far from the origin: the Gram route must not lose the small distances."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(32, 20000, generator=g) * 0.01 + 1000.0
    y = torch.randn(32, 3, generator=g)
    ours = float(stats.u_distance_correlation_sqr(x, y))
    ref = _reference("u_distance_correlation_sqr", x, y)
    assert ours == pytest.approx(ref, abs=1e-3)


def test_matrix_functions_equal_dcor():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64)
    y = torch.randn(9, 2, generator=g, dtype=torch.float64)
    a_np = dcor.distances.pairwise_distances(_np(x))
    b_np = dcor.distances.pairwise_distances(_np(y))
    a, b = stats.distance_matrix(x), stats.distance_matrix(y)
    np.testing.assert_allclose(
        stats.double_centered(a).numpy(), dcor.double_centered(a_np), atol=1e-12
    )
    ua, ub = stats.u_centered(a), stats.u_centered(b)
    np.testing.assert_allclose(ua.numpy(), dcor.u_centered(a_np), atol=1e-12)
    assert float(stats.u_product(ua, ub)) == pytest.approx(
        dcor.u_product(dcor.u_centered(a_np), dcor.u_centered(b_np)), abs=1e-12
    )
    assert float(stats.mean_product(a, b)) == pytest.approx(
        dcor.mean_product(a_np, b_np), abs=1e-12
    )
    uc = dcor.u_centered(b_np)
    np.testing.assert_allclose(
        stats.u_projection(ua)(ub).numpy(), dcor.u_projection(dcor.u_centered(a_np))(uc), atol=1e-12
    )
    np.testing.assert_allclose(
        stats.u_complementary_projection(ua)(ub).numpy(),
        dcor.u_complementary_projection(dcor.u_centered(a_np))(uc),
        atol=1e-12,
    )


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAIR_FUNCTIONS + TRIPLE_FUNCTIONS + ["distance_matrix"])
def test_gradcheck_float64(name):
    g = torch.Generator().manual_seed(7)
    n = 7
    args = [
        torch.randn(n, 3, generator=g, dtype=torch.float64, requires_grad=True),
        torch.randn(n, 2, 2, generator=g, dtype=torch.float64, requires_grad=True),
        torch.randn(n, 4, generator=g, dtype=torch.float64, requires_grad=True),
    ]
    arity = 1 if name == "distance_matrix" else (3 if name in TRIPLE_FUNCTIONS else 2)
    f = getattr(stats, name)
    assert torch.autograd.gradcheck(f, tuple(args[:arity]), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("exponent", [0.5, 1.0, 1.5])
def test_gradcheck_exponent(exponent):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    f = lambda a, b: stats.u_distance_correlation_sqr(a, b, exponent=exponent)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, y), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_finite_with_duplicates_and_constants(dtype):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(10, 6, generator=g, dtype=dtype)
    x[3] = x[7]
    x[:, 2] = 1.0
    y = torch.randn(10, 2, generator=g, dtype=dtype)
    y[1] = y[2]
    z = torch.full((10, 4), 0.5, dtype=dtype)
    for args in [(x, y, z), (x, y, x), (z, y, x)]:
        leaves = [a.clone().requires_grad_() for a in args]
        value = stats.partial_distance_correlation(*leaves)
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
        assert math.isfinite(value.detach().item())
        for grad in grads:
            assert grad is None or bool(torch.isfinite(grad).all())
    leaf = z.clone().requires_grad_()
    (grad,) = torch.autograd.grad(stats.u_distance_correlation_sqr(leaf, y), leaf)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_inputs_are_not_modified():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(8, 3, generator=g)
    y = torch.randn(8, 2, generator=g)
    z = torch.randn(8, 5, generator=g)
    copies = [t.clone() for t in (x, y, z)]
    stats.partial_distance_correlation(x, y, z)
    for t, c in zip((x, y, z), copies):
        assert torch.equal(t, c)


def test_output_dtype_follows_inputs():
    x32 = torch.randn(8, 3)
    x64 = x32.double()
    assert stats.u_distance_correlation_sqr(x32, x32).dtype == torch.float32
    assert stats.u_distance_correlation_sqr(x64, x64).dtype == torch.float64
    assert stats.u_distance_correlation_sqr(x32, x64).dtype == torch.float64


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAIR_FUNCTIONS + TRIPLE_FUNCTIONS)
def test_too_few_samples(name):
    min_n = MIN_N[name]
    arity = 3 if name in TRIPLE_FUNCTIONS else 2
    args = [torch.randn(min_n - 1, 3) for _ in range(arity)]
    with pytest.raises(ValueError, match=rf"at least {min_n} samples.*context="):
        getattr(stats, name)(*args)
    getattr(stats, name)(*[torch.randn(min_n, 3) for _ in range(arity)])  # enough is fine


@pytest.mark.parametrize("name", PAIR_FUNCTIONS + TRIPLE_FUNCTIONS)
def test_mismatched_sample_counts(name):
    arity = 3 if name in TRIPLE_FUNCTIONS else 2
    args = [torch.randn(8, 3) for _ in range(arity)]
    args[-1] = torch.randn(9, 3)
    with pytest.raises(ValueError, match="same number of samples"):
        getattr(stats, name)(*args)


@pytest.mark.parametrize("name", PAIR_FUNCTIONS + TRIPLE_FUNCTIONS + ["distance_matrix"])
@settings(max_examples=25, deadline=None)
@given(
    bad=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    position=st.integers(0, 8 * 5 - 1),
    which=st.integers(0, 2),
)
def test_non_finite_values(name, bad, position, which):
    arity = 1 if name == "distance_matrix" else (3 if name in TRIPLE_FUNCTIONS else 2)
    args = [torch.randn(8, 5) for _ in range(arity)]
    which = which % arity
    args[which].view(-1)[position] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        getattr(stats, name)(*args)


@pytest.mark.parametrize("magnitude", [1e-25, 1e-30, 1e19, 1e30])
@pytest.mark.parametrize(
    "name",
    ["u_distance_correlation_sqr", "distance_correlation_sqr", "partial_distance_correlation"],
)
def test_float32_underflow_and_overflow_are_rescaled(magnitude, name):
    """float32 samples whose squared norms under- or overflow: each variable is rescaled
    first (correlations are scale-free), so the value is dcor's, not a silent 0 or an error."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(12, 6, generator=g, dtype=torch.float64)
    y = x[:, :2] ** 2 + 0.5 * torch.randn(12, 2, generator=g, dtype=torch.float64)
    z = x[:, 2:] + torch.randn(12, 4, generator=g, dtype=torch.float64)
    args = [x, y, z][: 3 if name.startswith("partial") else 2]
    tiny = [(a * magnitude).float() for a in args]
    ref = _reference(name, *[t.double() for t in tiny])
    assert abs(ref) > 0.05
    assert float(getattr(stats, name)(*tiny)) == pytest.approx(ref, abs=1e-5)


def test_float32_underflow_covariance_and_distances_keep_their_scale():
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(10, 5, generator=g, dtype=torch.float64) * 1e-21).float()
    y = (torch.randn(10, 3, generator=g, dtype=torch.float64) * 1e10).float()
    ref = dcor.u_distance_covariance_sqr(_np(x), _np(y))
    assert abs(ref) > 1e-14
    assert float(stats.u_distance_covariance_sqr(x, y)) == pytest.approx(ref, rel=1e-5, abs=0)
    d = stats.distance_matrix(x).double().numpy()
    np.testing.assert_allclose(d, dcor.distances.pairwise_distances(_np(x)), rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.arange(8).reshape(8, 1), "floating-point"),
        (torch.ones(8, 2, dtype=torch.bool), "floating-point"),
        (torch.tensor(1.0), "scalar"),
        (torch.empty(0, 3), "empty"),
        (torch.empty(8, 0), "empty"),
    ],
)
def test_bad_tensors(bad, message):
    with pytest.raises(ValueError, match=message):
        stats.u_distance_correlation_sqr(bad, torch.randn(8, 2))
    with pytest.raises(ValueError, match=message):
        stats.partial_distance_correlation(torch.randn(8, 2), bad, torch.randn(8, 2))


def test_bad_exponent_and_matrices():
    x = torch.randn(6, 2)
    with pytest.raises(ValueError, match="exponent"):
        stats.distance_correlation_sqr(x, x, exponent=2.0)
    with pytest.raises(ValueError, match="square"):
        stats.u_centered(torch.randn(4, 5))
    with pytest.raises(ValueError, match="n >= 3"):
        stats.u_centered(torch.randn(2, 2))
    with pytest.raises(ValueError, match="n >= 4"):
        stats.u_product(torch.randn(3, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="same shape"):
        stats.u_product(torch.randn(5, 5), torch.randn(6, 6))
    with pytest.raises(ValueError, match="NaN or Inf"):
        stats.double_centered(torch.full((3, 3), float("nan")))


def _exact_dcov_sqr(x: list, y: list, unbiased: bool) -> Fraction:
    """dCov² of 1-D samples in exact rational arithmetic (floats are rationals, and so are
    their absolute differences): the oracle where floating-point sums cancel."""
    n = len(x)

    def centred(v):
        a = [[abs(Fraction(p) - Fraction(q)) for q in v] for p in v]
        rows = [sum(r) for r in a]
        total = sum(rows)
        if unbiased:
            return [
                [
                    Fraction(0)
                    if i == j
                    else a[i][j]
                    - rows[i] / (n - 2)
                    - rows[j] / (n - 2)
                    + total / ((n - 1) * (n - 2))
                    for j in range(n)
                ]
                for i in range(n)
            ]
        return [
            [a[i][j] - rows[i] / n - rows[j] / n + total / n**2 for j in range(n)] for i in range(n)
        ]

    a, b = centred(x), centred(y)
    s = sum(a[i][j] * b[i][j] for i in range(n) for j in range(n))
    return s / (n * (n - 3)) if unbiased else s / n**2


@pytest.mark.parametrize("seed", range(6))
def test_one_dimensional_samples_far_from_zero_equal_exact_arithmetic(seed):
    """Offset 5, spread 3e-3, with a duplicate: where dcor's default 1-D method loses digits."""
    g = torch.Generator().manual_seed(seed)
    n = 4 + seed
    x = 5 + 3e-3 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    y = -7 + 2e-3 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    x[1] = x[0]
    for unbiased, fn in (
        (False, stats.distance_covariance_sqr),
        (True, stats.u_distance_covariance_sqr),
    ):
        exact = _exact_dcov_sqr(x[:, 0].tolist(), y[:, 0].tolist(), unbiased)
        scale = (
            float(_exact_dcov_sqr(x[:, 0].tolist(), x[:, 0].tolist(), unbiased)) ** 0.5
            * float(_exact_dcov_sqr(y[:, 0].tolist(), y[:, 0].tolist(), unbiased)) ** 0.5
        )
        assert abs(float(fn(x, y)) - float(exact)) <= 1e-12 * scale
