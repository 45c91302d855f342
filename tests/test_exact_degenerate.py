"""Statistics exact where the problem is well-posed, checked against a 50-digit oracle
(mpmath), and exactly degenerate cases that return 0 (the 0/0 of dcor's definitions):

- near-copies (six samples 1e-7 apart plus two others), where the two representations nearly
  agree (1 - r_xz ~ 1e-12): the partial distance correlation, public and fused, within 1e-8
  of the oracle in float64 (dcor's three-correlation formula is off by up to 6e-3 here);
- distance_matrix on near-copies within 1e-12 relative of the exact distances;
- distinct one-hot rows, whose U-centred matrix is exactly zero: the distance correlation
  of such rows with themselves (0/0) is 0, not a ratio of rounding noise.
"""

from __future__ import annotations

import mpmath as mp
import pytest
import torch

from captum_unicam import _fused, stats

mp.mp.dps = 50


def _dist(rows):
    n = len(rows)
    return [
        [
            mp.sqrt(sum((mp.mpf(a) - mp.mpf(b)) ** 2 for a, b in zip(rows[i], rows[j])))
            for j in range(n)
        ]
        for i in range(n)
    ]


def _u_centred(a):
    n = len(a)
    rows = [sum(r) for r in a]
    total = sum(rows)
    return [
        [
            mp.mpf(0)
            if i == j
            else a[i][j] - rows[i] / (n - 2) - rows[j] / (n - 2) + total / ((n - 1) * (n - 2))
            for j in range(n)
        ]
        for i in range(n)
    ]


def _prod(a, b):
    n = len(a)
    return sum(a[i][j] * b[i][j] for i in range(n) for j in range(n)) / (n * (n - 3))


def exact_pdcor(x, y, z):
    """pdCor(x, y; z) with every step in 50-digit arithmetic, from the float64 samples."""
    a, b, c = (_u_centred(_dist(t.tolist())) for t in (x, y, z))
    cc = _prod(c, c)

    def proj(m):
        k = _prod(m, c) / cc
        return [[m[i][j] - k * c[i][j] for j in range(len(m))] for i in range(len(m))]

    pa, pb = proj(a), proj(b)
    return float(_prod(pa, pb) / mp.sqrt(_prod(pa, pa) * _prod(pb, pb)))


def near_copies(seed):
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(1, 6, generator=g, dtype=torch.float64)
    base = torch.cat(
        [
            centre + 1e-7 * torch.randn(6, 6, generator=g, dtype=torch.float64),
            torch.randn(2, 6, generator=g, dtype=torch.float64),
        ]
    )
    student = torch.cat(
        [
            centre + 1e-7 * torch.randn(6, 6, generator=g, dtype=torch.float64),
            base[6:] + 1e-7 * torch.randn(2, 6, generator=g, dtype=torch.float64),
        ]
    )
    labels = torch.randn(8, 3, generator=g, dtype=torch.float64)
    return student, labels, base


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_near_copies_partial_correlation_is_exact(seed):
    s, y, b = near_copies(seed)
    want_d, want_r = exact_pdcor(s, y, b), exact_pdcor(b, y, s)
    assert float(stats.partial_distance_correlation(s, y, b)) == pytest.approx(want_d, abs=1e-8)
    assert float(stats.partial_distance_correlation(b, y, s)) == pytest.approx(want_r, abs=1e-8)
    dist, _, _ = _fused.batch_distances([s, y, b])
    scores, _, _ = _fused.unicam_scores(dist, [0, 2], 8 * torch.finfo(torch.float64).eps)
    assert float(scores[0, 0]) == pytest.approx(want_d, abs=1e-8)
    assert float(scores[1, 0]) == pytest.approx(want_r, abs=1e-8)


def test_near_copies_distance_matrix_is_exact_to_1e12():
    s, _, _ = near_copies(0)
    got = stats.distance_matrix(s)
    exact = _dist(s.tolist())
    for i in range(8):
        for j in range(8):
            if i != j:
                assert abs(float(got[i, j]) - float(exact[i][j])) <= 1e-12 * float(exact[i][j])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [5, 9, 17, 33])
def test_distinct_one_hot_rows_give_exact_zero(n, dtype):
    """U-centring removes c (J - I) exactly: each statistic of such rows is 0 (0/0 in the
    correlations), at every n, where rounding noise gave up to 1.0."""
    e = torch.eye(n, dtype=dtype)
    g = torch.Generator().manual_seed(n)
    y = torch.randn(n, 2, generator=g).to(dtype)
    z = torch.randn(n, 3, generator=g).to(dtype)
    assert float(stats.u_distance_correlation_sqr(e, e)) == 0.0
    assert float(stats.u_distance_correlation_sqr(e, y)) == 0.0
    assert float(stats.u_distance_covariance_sqr(e, e)) == 0.0
    assert float(stats.partial_distance_correlation(e, y, z)) == 0.0
    assert float(stats.partial_distance_correlation(y, e, z)) == 0.0
    assert float(stats.partial_distance_covariance(e, y, z)) == 0.0
    # a z with no structure removes nothing
    want = stats.u_distance_correlation_sqr(y, z)
    assert float(stats.partial_distance_correlation(y, z, e)) == pytest.approx(
        float(want), abs=1e-6
    )


def test_nothing_left_after_the_projection_is_exact_zero():
    """x equal to z (separate tensors): the projection leaves rounding only; the result is 0."""
    g = torch.Generator().manual_seed(0)
    x = 1e-3 * torch.randn(19, 1, generator=g, dtype=torch.float64)
    assert float(stats.partial_distance_correlation(x, x.clone(), x.clone())) == 0.0
    assert float(stats.partial_distance_covariance(x, x.clone(), x.clone())) == 0.0
