r"""Summaries of one layer and map kind: the point estimates, their intervals and tests.

Two aggregations of the same per-batch records (see ``docs/method.md``):

- ``"dataset"`` (default): correlations formed from the inner products averaged over
  batches (:mod:`captum_unicam.metrics.estimators`); interval: percentile bootstrap over
  batches of the products; test: the two models' products swapped in random batches;
- ``"batch_mean"``: the paper's mean over batches of the per-batch correlations; interval:
  percentile bootstrap of the mean; test: paired sign flips of the per-batch differences.

Beside every masked kind the same statistics on the leakage baseline (uninformative images
masked by the same maps) are summarised, and each RS is marked as above its baseline or not.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from captum_unicam.metrics.estimators import (
    dataset_keys,
    degenerate_reason,
    product_rows,
    scores_from_products,
    swapped_means,
)
from captum_unicam.metrics.intervals import (
    bootstrap_interval,
    bootstrap_statistic,
    paired_permutation_pvalue,
    swap_permutation_pvalue,
)
from captum_unicam.output.tables import METRICS

__all__ = ["summarise", "RS_METRICS", "TESTS"]

#: The RS statistics, which a leakage baseline is reported beside.
RS_METRICS = ("rs_base", "rs_student", "rs_distilled", "rs_residual")
#: The one-sided tests of every summary: name -> (a, b) for "a > b".
TESTS = {
    "p_student_gt_base": ("rs_student", "rs_base"),
    "p_distilled_gt_residual": ("rs_distilled", "rs_residual"),
}


class Settings:
    """Bootstrap, permutation and estimator settings of one summary."""

    def __init__(self, n_bootstrap: int, n_permutations: int, seed: int, estimator: str) -> None:
        self.n_bootstrap = n_bootstrap
        self.n_permutations = n_permutations
        self.seed = seed
        self.estimator = estimator


def _batch_mean(values: Mapping[str, Sequence[float]], st: Settings) -> Dict[str, Any]:
    entry: Dict[str, Any] = {}
    for metric in METRICS:
        entry[metric] = bootstrap_interval(values[metric], st.n_bootstrap, st.seed)
    for name, (a, b) in TESTS.items():
        entry[name] = paired_permutation_pvalue(values[a], values[b], st.n_permutations, st.seed)
    return entry


def _dataset(rows: np.ndarray, st: Settings) -> Dict[str, Any]:
    entry: Dict[str, Any] = {}
    degenerate: Dict[str, str] = {}
    means = rows.mean(axis=0)
    for metric in METRICS:
        entry[metric] = bootstrap_statistic(
            rows,
            lambda r, m=metric: scores_from_products(r.mean(axis=1), st.estimator)[m],
            st.n_bootstrap,
            st.seed,
        )
        why = degenerate_reason(means, metric) if entry[metric]["mean"] == 0.0 else None
        if why is not None:
            degenerate[metric] = why
    for name, (a, b) in TESTS.items():

        def diff(signs: np.ndarray, a: str = a, b: str = b) -> np.ndarray:
            scores = scores_from_products(swapped_means(rows, signs), st.estimator)
            return scores[a] - scores[b]

        entry[name] = swap_permutation_pvalue(diff, rows.shape[0], st.n_permutations, st.seed)
    if degenerate:
        entry["degenerate"] = degenerate
    return entry


def _leakage(leak: Mapping[str, Sequence[float]], aggregation: str, st: Settings) -> Dict[str, Any]:
    rows = product_rows(leak, dataset_keys(st.estimator))
    if aggregation == "dataset":
        return {
            m: bootstrap_statistic(
                rows,
                lambda r, m=m: scores_from_products(r.mean(axis=1), st.estimator)[m],
                st.n_bootstrap,
                st.seed,
            )
            for m in METRICS
        }
    per_batch = scores_from_products(rows, st.estimator)
    return {m: bootstrap_interval(per_batch[m], st.n_bootstrap, st.seed) for m in METRICS}


def _above(entry: Mapping[str, Any], leakage: Mapping[str, Any]) -> Dict[str, bool]:
    """Whether each RS interval lies wholly above its leakage baseline's interval."""
    return {m: bool(entry[m]["low"] > leakage[m]["high"]) for m in RS_METRICS}


def summarise(
    values: Mapping[str, Sequence[float]],
    products: Optional[Mapping[str, Sequence[float]]],
    leakage: Optional[Mapping[str, Sequence[float]]],
    aggregation: str,
    st: Settings,
) -> Dict[str, Any]:
    """The summary entry of one layer and map kind (see :meth:`KDEvaluation.summary`)."""
    if aggregation == "dataset":
        entry = _dataset(product_rows(products, dataset_keys(st.estimator)), st)
    else:
        entry = _batch_mean(values, st)
    entry["n_batches"] = len(values[METRICS[0]])
    if leakage:
        entry["leakage"] = _leakage(leakage, aggregation, st)
        entry["above_leakage"] = _above(entry, entry["leakage"])
    return entry
