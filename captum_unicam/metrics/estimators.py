r"""Dataset-level FSS and RS from inner products accumulated over batches.

The paper reports the mean over batches of per-batch correlations (``"batch_mean"``). A
ratio of two batch statistics is biased for small batches and its mean depends on how the
data set was cut into batches. The ``"dataset"`` estimator instead accumulates, batch by
batch, the inner products of U-centred distance matrices,

.. math::
    (\tilde A \cdot \tilde B)_k = \frac{1}{n_k(n_k-3)} \sum_{i \ne j} \tilde a_{ij} \tilde b_{ij},

each an unbiased estimate of the population squared distance covariance, averages them over
the k batches, and forms the correlations from the averages (as minibatch CKA does with
unbiased HSIC):

- FSS = :math:`\overline{(S\cdot B)} / \sqrt{\overline{(S\cdot S)}\,\overline{(B\cdot B)}}`,
  RS = :math:`\overline{(S\cdot Y)} / \sqrt{\overline{(S\cdot S)}\,\overline{(Y\cdot Y)}}`;
- pdCor(S, Y; B) =
  :math:`\frac{(S\cdot Y) - (S\cdot B)(Y\cdot B)/(B\cdot B)}
  {\sqrt{((S\cdot S) - (S\cdot B)^2/(B\cdot B))((Y\cdot Y) - (Y\cdot B)^2/(B\cdot B))}}`
  from the averaged products (a proper correlation in [-1, 1]: the averaged products are an
  inner product on the direct sum of the batches' matrices).

With one batch it equals the exact whole-set statistic (``dcor`` on the concatenated
features). Intervals: percentile bootstrap over batches of the per-batch products
(:func:`~captum_unicam.metrics.intervals.bootstrap_statistic`). Test of "a > b": swap the
two models' products in a random subset of batches
(:func:`~captum_unicam.metrics.intervals.swap_permutation_pvalue`).
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from captum_unicam import stats

__all__ = [
    "AGGREGATIONS",
    "PRODUCTS",
    "V_PRODUCTS",
    "batch_products",
    "product_rows",
    "dataset_keys",
    "scores_from_products",
    "swap_models",
    "swapped_means",
    "degenerate_reason",
]

#: How per-batch statistics become one number: ``"dataset"`` (correlations from products
#: accumulated over batches, the default) or ``"batch_mean"`` (the paper's mean of per-batch
#: correlations).
AGGREGATIONS = ("dataset", "batch_mean")
#: Inner products of the U-centred distance matrices of the Student's features (s), the
#: Base's (b) and the label vectors (y), kept per batch.
PRODUCTS = ("ss", "bb", "yy", "sb", "sy", "by")
#: The same products of double-centred matrices (V-statistics, ``estimator="v"``).
V_PRODUCTS = tuple(f"v_{p}" for p in PRODUCTS)
#: A squared correlation between two models within this of 1 leaves nothing unique.
_ONE_TOL = 1e-12


def _products(mats: Tensor, inner) -> Dict[str, float]:
    index = {"s": 0, "b": 1, "y": 2}
    return {p: float(inner(mats[index[p[0]]], mats[index[p[1]]])) for p in PRODUCTS}


def batch_products(
    feats_s: Tensor, feats_b: Tensor, labels: Tensor, estimator: str
) -> Dict[str, float]:
    """The six U-centred inner products of one batch (and the six V-products with
    ``estimator="v"``), as floats keyed by :data:`PRODUCTS` (and :data:`V_PRODUCTS`)."""
    dist = torch.stack(
        [stats.distance_matrix(t.to(torch.float64)) for t in (feats_s, feats_b, labels.to(feats_s))]
    )
    out = _products(torch.stack([stats.u_centered(d) for d in dist]), stats.u_product)
    if estimator == "v":
        v = _products(torch.stack([stats.double_centered(d) for d in dist]), stats.mean_product)
        out.update({f"v_{k}": val for k, val in v.items()})
    return out


def product_rows(products: Mapping[str, Sequence[float]], keys: Sequence[str]) -> np.ndarray:
    """``(k, len(keys))`` array of the per-batch products."""
    return np.stack([np.asarray(products[key], dtype=np.float64) for key in keys], axis=1)


def _ratio(num: np.ndarray, den_sq: np.ndarray) -> np.ndarray:
    den = np.sqrt(np.clip(den_sq, 0.0, None))
    safe = np.where(den > 0, den, 1.0)
    return np.clip(np.where(den > 0, num / safe, 0.0), -1.0, 1.0)


def _partial(
    xy: np.ndarray, xz: np.ndarray, yz: np.ndarray, xx: np.ndarray, yy: np.ndarray, zz: np.ndarray
) -> np.ndarray:
    """pdCor(x, y; z) from inner products; 0 where x and z (or y and z) are parallel."""
    zz_safe = np.where(zz > 0, zz, 1.0)
    proj = np.where(zz > 0, 1.0, 0.0) / zz_safe
    num = xy - xz * yz * proj
    rest_x = xx - xz**2 * proj
    rest_y = yy - yz**2 * proj
    same = (rest_x <= _ONE_TOL * np.abs(xx)) | (rest_y <= _ONE_TOL * np.abs(yy))
    return np.where(same, 0.0, _ratio(num, rest_x * rest_y))


def scores_from_products(means: np.ndarray, estimator: str = "u") -> Dict[str, np.ndarray]:
    """FSS, RS Base, RS Student, RS distilled and RS residual from products.

    ``means`` is ``(..., 6)`` (columns :data:`PRODUCTS`) or ``(..., 12)`` (then the last six
    are :data:`V_PRODUCTS`, used for FSS and the plain RS with ``estimator="v"``). A zero
    denominator (features constant in every batch) gives 0.

    Returns:
        dict: metric -> array of the leading shape.
    """
    ss, bb, yy, sb, sy, by = (means[..., i] for i in range(6))
    plain = means[..., 6:12] if estimator == "v" else means[..., :6]
    pss, pbb, pyy, psb, psy, pby = (plain[..., i] for i in range(6))
    return {
        "fss": _ratio(psb, pss * pbb),
        "rs_base": _ratio(pby, pbb * pyy),
        "rs_student": _ratio(psy, pss * pyy),
        "rs_distilled": _partial(sy, sb, by, ss, yy, bb),
        "rs_residual": _partial(by, sb, sy, bb, yy, ss),
    }


def swap_models(rows: np.ndarray) -> np.ndarray:
    """The products with the Student and the Base exchanged (ss <-> bb, sy <-> by)."""
    order = [1, 0, 2, 3, 5, 4]
    if rows.shape[-1] == 12:
        order += [6 + i for i in order]
    return rows[..., order]


def dataset_keys(estimator: str) -> Sequence[str]:
    """The product columns the dataset estimator needs for ``estimator``."""
    return PRODUCTS + V_PRODUCTS if estimator == "v" else PRODUCTS


def swapped_means(rows: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """``(P, columns)`` mean products over batches, with the models swapped in the batches
    whose sign is -1 (one row of ``signs`` per pattern)."""
    keep = (1.0 + signs) / 2.0
    return (keep @ rows + (1.0 - keep) @ swap_models(rows)) / rows.shape[0]


def degenerate_reason(means: np.ndarray, metric: str) -> Optional[str]:
    """Why the dataset value of ``metric`` is 0, or None (``means`` one row of products)."""
    ss, bb, yy, sb = means[0], means[1], means[2], means[3]
    if metric in ("rs_distilled", "rs_residual") and ss > 0 and bb > 0:
        if 1.0 - sb**2 / (ss * bb) <= _ONE_TOL:
            return "the Student's and the Base's features have the same distance structure"
    zero = [who for who, v in (("Student", ss), ("Base", bb), ("labels", yy)) if v <= 0]
    if zero:
        return f"the {' and '.join(zero)} have no distance structure in any batch"
    return None
