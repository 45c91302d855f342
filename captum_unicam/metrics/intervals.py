r"""Intervals and tests over batches: the one interval type of the library and its builders.

- :func:`interval`: the interval record ``{"mean", "low", "high"}`` every summary, table and
  figure reads (``"mean"`` is the point estimate: a mean over batches or images, or the
  dataset-level estimate of :mod:`captum_unicam.metrics.estimators`);
- :func:`bootstrap_ci` / :func:`bootstrap_interval`: percentile bootstrap of a mean;
- :func:`bootstrap_statistic`: percentile bootstrap of any statistic of resampled rows (the
  dataset-level estimator resamples batches of accumulated sums);
- :func:`paired_permutation_pvalue`: one-sided paired sign-flip test over batches.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "interval",
    "bootstrap_ci",
    "bootstrap_interval",
    "bootstrap_statistic",
    "paired_permutation_pvalue",
    "swap_permutation_pvalue",
]


def interval(
    mean: float, low: Optional[float], high: Optional[float]
) -> Dict[str, Optional[float]]:
    """The interval record ``{"mean": mean, "low": low, "high": high}`` (floats, or None for a
    missing bound)."""
    return {
        "mean": float(mean),
        "low": None if low is None else float(low),
        "high": None if high is None else float(high),
    }


def _resample_indices(k: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """``(n_bootstrap, k)`` indices drawn with replacement from ``default_rng(seed)``."""
    return np.random.default_rng(seed).integers(0, k, size=(n_bootstrap, k))


def _quantiles(values: np.ndarray, level: float) -> Tuple[float, float]:
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Sequence[float], n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95
) -> Tuple[float, float]:
    r"""Percentile bootstrap interval of the mean of ``values``.

    Draws ``n_bootstrap`` resamples of the ``k`` values with replacement (indices from
    ``numpy.random.default_rng(seed).integers(0, k, (n_bootstrap, k))``) and returns the
    :math:`(1-\text{level})/2` and :math:`(1+\text{level})/2` quantiles of their means.
    One value gives the degenerate interval (v, v).

    Args:
        values (sequence of float): one value per batch (or image).
        n_bootstrap (int, optional): resamples. Default: 1000.
        seed (int, optional): seed of the resampling. Default: 0.
        level (float, optional): coverage. Default: 0.95.

    Returns:
        tuple[float, float]: (low, high).

    Examples::

        >>> bootstrap_ci([0.1, 0.4, 0.2, 0.9, 0.3], n_bootstrap=500, seed=7)
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty 1-D sequence of values.")
    if v.size == 1:
        return float(v[0]), float(v[0])
    means = v[_resample_indices(v.size, n_bootstrap, seed)].mean(axis=1)
    return _quantiles(means, level)


def bootstrap_interval(
    values: Sequence[float], n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95
) -> Dict[str, Optional[float]]:
    """:func:`interval` of the mean of ``values`` with its :func:`bootstrap_ci` bounds."""
    low, high = bootstrap_ci(values, n_bootstrap, seed, level)
    return interval(float(np.mean(np.asarray(values, dtype=np.float64))), low, high)


def bootstrap_statistic(
    rows: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Dict[str, Optional[float]]:
    r"""Percentile bootstrap of ``statistic`` over the rows of ``rows``.

    ``rows`` is ``(k, ...)``: one row per batch (e.g. its accumulated inner products).
    ``statistic`` maps an array ``(B, k, ...)`` of B resamples to B values (and the array
    ``(1, k, ...)`` of the rows themselves to the point estimate). The resample indices are
    those of :func:`bootstrap_ci` with the same ``seed``, so with ``statistic`` = the mean
    both give the same bounds. One row gives the degenerate interval.

    Returns:
        dict: :func:`interval` of the point estimate and its bounds.
    """
    rows = np.asarray(rows, dtype=np.float64)
    point = float(statistic(rows[None])[0])
    if rows.shape[0] == 1:
        return interval(point, point, point)
    draws = statistic(rows[_resample_indices(rows.shape[0], n_bootstrap, seed)])
    low, high = _quantiles(np.asarray(draws, dtype=np.float64), level)
    return interval(point, low, high)


def _sign_patterns(k: int, n_permutations: int, seed: int) -> Tuple[np.ndarray, bool]:
    """Sign patterns ``(P, k)`` of +-1 and whether they are all :math:`2^k` of them."""
    if 2**k <= n_permutations:
        codes = np.arange(2**k)[:, None] >> np.arange(k)[None, :] & 1
        return 1.0 - 2.0 * codes, True
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([-1.0, 1.0]), size=(n_permutations, k)), False


def paired_permutation_pvalue(
    a: Sequence[float], b: Sequence[float], n_permutations: int = 10000, seed: int = 0
) -> float:
    r"""One-sided paired permutation p-value for "mean of a > mean of b".

    The paired differences :math:`d_i = a_i - b_i` (one per batch) have their signs
    flipped at random; the p-value is the share of sign patterns whose mean difference
    is at least the observed one. When :math:`2^k \le` ``n_permutations`` all
    :math:`2^k` patterns are enumerated (exact test; its smallest p-value is
    :math:`2^{-k}`); otherwise ``n_permutations`` random patterns are drawn with
    ``numpy.random.default_rng(seed)`` and :math:`p = (1 + \#\{\ge\}) / (1 + B)`.
    Identical ``a`` and ``b`` give 1.

    Returns:
        float: the p-value in (0, 1].
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(
            "paired_permutation_pvalue needs two equal-length, non-empty 1-D sequences."
        )
    tol = 1e-9 * float(np.abs(d).mean())  # rounding of equal sums in another order
    return swap_permutation_pvalue(
        lambda signs: (signs * d).mean(axis=1), d.size, n_permutations, seed, tol
    )


def swap_permutation_pvalue(
    statistic: Callable[[np.ndarray], np.ndarray],
    k: int,
    n_permutations: int = 10000,
    seed: int = 0,
    tol: Optional[float] = None,
) -> float:
    r"""One-sided p-value of a paired swap test over ``k`` batches.

    ``statistic(signs)`` gives, for each sign pattern (rows of +-1, one column per batch;
    -1 = the two paired quantities of that batch swapped), the statistic "a minus b". The
    observed value is that of the all-ones pattern; the patterns are those of
    :func:`paired_permutation_pvalue` (all :math:`2^k` when that is not more than
    ``n_permutations``, else random ones with :math:`p = (1 + \#\{\ge\}) / (1 + B)`).
    Values within ``tol`` of the observed one count as ties (default: 1e-9 of the mean
    absolute value), so rounding of equal sums in another order does not decide the test.

    Returns:
        float: the p-value in (0, 1].
    """
    signs, exact = _sign_patterns(k, n_permutations, seed)
    observed = float(statistic(np.ones((1, k)))[0])
    values = np.asarray(statistic(signs), dtype=np.float64)
    if tol is None:
        tol = 1e-9 * float(np.abs(values).mean())
    hits = values >= observed - tol
    if exact:
        return float(hits.mean())
    return (1 + int(hits.sum())) / (1 + signs.shape[0])
