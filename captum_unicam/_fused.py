r"""Internal: UniCAM's fused statistics (not a public API; may change without notice).

:class:`captum_unicam.UniCAM` needs, for the Student's representation s, the label vectors
y and the Base's representation b, pdCor(s, y; b) and pdCor(b, y; s) and the gradient of
each with respect to its first argument, for a stack of problems at once and with no
value read back to the host. This module computes them; the public, dcor-compatible
statistics are in :mod:`captum_unicam.stats`, which shares :data:`ACC` and
:func:`noise_factor` with it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "ACC",
    "noise_factor",
    "batch_distances",
    "reference_block",
    "reference_distances",
    "unicam_scores",
    "laplacian_product",
    "reference_row_product",
]

ACC = torch.float64  # dtype of every step after the Gram product


def noise_factor(x: Tensor) -> float:
    """Rounding of a squared distance from the Gram route, relative to |x_i|^2 + |x_j|^2."""
    return 4 * torch.finfo(x.dtype).eps * x.shape[-1] ** 0.5


def sq_from_gram(gram: Tensor, noise: Union[float, Tensor]) -> Tensor:
    """Squared distances |x_i|^2 + |x_j|^2 - 2 x_i.x_j from Gram matrices (..., n, n).

    Exactly symmetric whatever the matmul kernel did. Pairs within the Gram product's
    rounding of zero are set to exactly 0: duplicated samples (and all pairs of a constant
    variable) are at distance 0, as in dcor, with no data-dependent branch. The error
    this makes on a distinct pair that close is below the rounding of the Gram route
    itself."""
    norms = gram.diagonal(dim1=-2, dim2=-1)
    both = norms.unsqueeze(-1) + norms.unsqueeze(-2)
    sq = both - 2 * gram
    sq = (sq + sq.mT) / 2
    return torch.where(sq <= noise * both, torch.zeros((), dtype=sq.dtype, device=sq.device), sq)


# ---------------------------------------------------------------------------
# UniCAM's fused path: both partial correlations and their gradients at once
# ---------------------------------------------------------------------------
#
# UniCAM needs, for the Student's representation s, the label vectors y and the Base's
# representation b, pdCor(s, y; b) and pdCor(b, y; s) and the gradient of each with
# respect to its first argument. The functions below compute them for a stack of
# problems at once, with no value read back to the host:
#
# - batch mode: one problem, the n samples of the batch;
# - reference mode: one problem per input, the input followed by the m samples of a
#   fixed reference set (n = 1 + m), whose m x m distance blocks are computed once.
#
# The gradient is taken in closed form. With U-centring a projection that is
# self-adjoint for the inner product (A . B) (Szekely & Rizzo 2014), the derivative of
# a score S formed from the products p_vw = (U_v . U_w) with respect to the distance
# matrix a_x of the explained variable is M = sum_w dS/dp_xw (1 + [w = x]) U_w / (n(n-3)).
# Through a_ij = |x_i - x_j| this gives dS/dx_i = 4 sum_j W_ij (x_i - x_j), with
# W = M / (2 a) (0 where a = 0): the product of an n x n Laplacian with the samples.


def rescale_all(
    samples: Sequence[Tensor],
    origins: Optional[Sequence[Tensor]] = None,
    scales: Optional[Tensor] = None,
) -> Tuple[List[Tensor], Tensor]:
    """Translates and rescales several variables (detached samples), their scales computed
    together: (x_v - origin_v) / scale_v, by default origin_v = x_v[0] and scale_v a
    power of two near max |x_v|. Returns the rescaled samples and the (V,) float64
    scales."""
    if scales is None:
        peaks = torch.stack(
            [torch.linalg.vector_norm(x, ord=float("inf"), dtype=ACC) for x in samples]
        )
        scales = torch.exp2(
            torch.floor(torch.log2(peaks.clamp_min(torch.finfo(torch.float32).tiny)))
        )
    inv = (1 / scales).to(samples[0].dtype).unbind()
    rescaled = []
    for v, x in enumerate(samples):
        origin = x[:1] if origins is None else origins[v]
        rescaled.append(torch.addcmul(origin * -inv[v], x, inv[v]))
    return rescaled, scales


def u_centered_stack(a: Tensor) -> Tensor:
    """U-centres symmetric (..., n, n) matrices in place, by broadcasting."""
    n = a.shape[-1]
    rows = a.sum(-1, keepdim=True) / (n - 2)
    total = rows.sum(-2, keepdim=True) / (n - 1)
    a.sub_(rows).sub_(rows.mT).add_(total)
    a.diagonal(dim1=-2, dim2=-1).zero_()
    return a


def noise_factors(samples: Sequence[Tensor], device: torch.device) -> Tensor:
    return torch.tensor([noise_factor(x) for x in samples], dtype=ACC, device=device)


def batch_distances(samples: Sequence[Tensor]) -> Tuple[Tensor, List[Tensor], Tensor]:
    """Rescaled distance matrices (V, 1, n, n) of V variables (n, d_v) on one batch, the
    rescaled samples and the (V,) scales. One Gram product per variable; everything on
    the (n, n) matrices batched over the variables, in float64."""
    rescaled, scales = rescale_all(samples)
    grams = torch.stack([(x @ x.mT).to(ACC) for x in rescaled])
    sq = sq_from_gram(grams, noise_factors(samples, grams.device)[:, None, None])
    sq = exact_closest_pairs(sq, grams, rescaled)
    return sq.sqrt().unsqueeze(1), rescaled, scales


def exact_closest_pairs(sq: Tensor, grams: Tensor, rescaled: Sequence[Tensor]) -> Tensor:
    """Recomputes, for the two representations (variables 0 and 2 of 3), the 2n closest
    pairs (relative to their squared norms) directly from ``x_i - x_j``, without a
    data-dependent branch.

    The Gram route cannot resolve a squared distance below its rounding (about
    eps sqrt(d) (|x_i|^2 + |x_j|^2)); :func:`sq_from_gram` sets such pairs to 0, which is
    right for duplicates but not for near-duplicates (an image and a slightly perturbed
    copy), whose distance gradient is a unit vector however small the distance. Their
    exact values restore both. More than 2n such pairs in one batch (large clusters of
    near-copies) leave the rest at 0."""
    n = sq.shape[-1]
    rows, cols = torch.triu_indices(n, n, 1, device=sq.device)
    k = min(rows.numel(), 2 * n)
    if k == 0:
        return sq
    norms = grams[0::2].diagonal(dim1=-2, dim2=-1)  # (2, n)
    key = sq[0::2, rows, cols] / (
        norms[:, rows] + norms[:, cols]
    )  # NaN (never picked first) for 0/0
    pick = key.topk(k, dim=-1, largest=False).indices  # (2, k)
    r, c = rows[pick], cols[pick]
    exact = torch.stack(
        [
            torch.linalg.vector_norm(rescaled[v][r[i]] - rescaled[v][c[i]], dim=-1, dtype=ACC)
            for i, v in enumerate((0, 2))
        ]
    ).square()
    v_idx = torch.arange(0, 3, 2, device=sq.device)[:, None].expand(-1, k)
    return sq.index_put(
        (torch.cat([v_idx, v_idx]), torch.cat([r, c]), torch.cat([c, r])), torch.cat([exact, exact])
    )


def reference_block(samples: Sequence[Tensor]) -> Dict[str, Any]:
    """What reference mode keeps of V variables on the m reference samples: the rescaled
    samples, their origins and scales, squared norms, and the m x m distance blocks."""
    rescaled, scales = rescale_all(samples)
    grams = torch.stack([(x @ x.mT).to(ACC) for x in rescaled])
    noise = noise_factors(samples, grams.device)
    return {
        "x": rescaled,
        "origins": [x.detach()[:1] for x in samples],
        "scales": scales,
        "norms": grams.diagonal(dim1=-2, dim2=-1).clone(),  # (V, m)
        "distances": exact_closest_pairs(
            sq_from_gram(grams, noise[:, None, None]), grams, rescaled
        ).sqrt(),
        "noise": noise,
    }


def reference_distances(
    samples: Sequence[Tensor], block: Dict[str, Any]
) -> Tuple[Tensor, List[Tensor], Tensor]:
    """Distance matrices (V, N, 1 + m, 1 + m), input i followed by the m references, for V
    variables; the rescaled inputs (N, d_v); the (V,) scales. The m x m blocks are the
    cached ones; each input adds one row and column."""
    rescaled, scales = rescale_all(samples, block["origins"], block["scales"])
    cross = torch.stack([(x @ r.mT).to(ACC) for x, r in zip(rescaled, block["x"])])  # (V, N, m)
    # each input's squared norm from the same kind of product as its cross terms, so
    # that an input equal to a reference is at distance exactly 0
    norms = torch.stack(
        [(x.unsqueeze(1) @ x.unsqueeze(2)).reshape(-1).to(ACC) for x in rescaled]
    )  # (V, N)
    both = norms.unsqueeze(-1) + block["norms"].unsqueeze(1)
    sq = both - 2 * cross
    sq = torch.where(sq <= block["noise"][:, None, None] * both, 0.0, sq)
    # each input's closest reference, for both representations, exactly (an input that is a
    # near-copy of a reference keeps its distance and gradient; see exact_closest_pairs)
    nearest = (sq[0::2] / both[0::2]).nan_to_num(nan=0.0).argmin(-1)  # (2, N)
    exact = torch.stack(
        [
            torch.linalg.vector_norm(rescaled[v] - block["x"][v][nearest[i]], dim=-1, dtype=ACC)
            for i, v in enumerate((0, 2))
        ]
    ).square()
    inputs = torch.arange(sq.shape[1], device=sq.device)
    sq = sq.index_put((torch.arange(0, 3, 2, device=sq.device)[:, None], inputs, nearest), exact)
    d = sq.sqrt()  # (V, N, m)
    v, n_in, m = d.shape
    top = torch.cat([d.new_zeros(v, n_in, 1), d], dim=2)  # (V, N, 1 + m)
    rest = torch.cat(
        [d.unsqueeze(-1), block["distances"].unsqueeze(1).expand(v, n_in, m, m)], dim=3
    )
    return torch.cat([top.unsqueeze(2), rest], dim=2), rescaled, scales


def divide(num: Tensor, den: Tensor) -> Tensor:
    """num / den, 0 where den == 0 (no gradient needed here; NaN or Inf in the inputs
    are caught before, from the products)."""
    return torch.nan_to_num(num / den, nan=0.0, posinf=0.0, neginf=0.0)


def _degenerate(a: Tensor, d: Tensor) -> Tuple[Tensor, Tensor]:
    """Per variable and problem (3, B): every distance exactly 0 (a constant variable:
    translated duplicates are exact), and a U-centred matrix that is numerically zero
    (below 1e-9 of the squared mean distance: every pair at one distance, e.g. one-hot
    labels of distinct classes, or distances of the additive form f(i) + f(j)). The
    second includes the first."""
    mean_a = a.mean(dim=(-2, -1))  # (3, B)
    return mean_a <= 0, d <= 1e-9 * mean_a**2


def unicam_scores(
    a: Tensor, explained: Sequence[int], tolerance: float
) -> Tuple[Tensor, Tensor, Tensor]:
    """Partial distance correlations of a stack of problems, and what their gradients need.

    Each score is formed from the explicitly projected matrices P(U_x) = U_x - k_x U_z and
    P(U_y) = U_y - k_y U_z (k_v = (U_v . U_z) / (U_z . U_z)), not from the three pairwise
    correlations: when the two models nearly agree (1 - r_xz small) dcor's formula loses
    accuracy as eps / (1 - r_xz), the explicit projection only as eps / sqrt(1 - r_xz^2).

    Args:
        a: (3, B, n, n) distance matrices of (student, labels, base) for B problems.
        explained: for each score, the explained variable: 0 for the distilled score
            pdCor(s, y; b), 2 for the residual score pdCor(b, y; s).
        tolerance: a correlation within this of +-1 counts as +-1.

    Returns:
        ``(S, W, flags)``: S (K, B), the K scores of each problem; W (K, B, n, n), the
        derivative of each score with respect to the squared distances of its explained
        variable (dS/dx = 4 (diag(W 1) - W) x, :func:`laplacian_product`); flags
        (B, 4 + 2K + 3) booleans per problem: student without distance structure,
        labels identical (one class), label matrix numerically zero (e.g. one-hot labels
        of distinct classes), base without distance structure; for each score, "same
        distance structure" (r_xz = +-1), then for each score "labels explained by the
        other model" (r_yz = +-1); then for each variable "finite". A degenerate score is
        0 and its W is 0.
    """
    n, k = a.shape[-1], len(explained)
    norm = n * (n - 3)
    u = u_centered_stack(a.clone())
    p = torch.einsum("vbij,wbij->vwb", u, u) / norm  # (3, 3, B)
    d = p.diagonal(dim1=0, dim2=1).mT  # (3, B)
    constant, null = _degenerate(a, d)
    # per score: the explained variable x and the labels (row 0 / 1 of idx), the other model z
    idx = torch.tensor([list(explained), [1] * k], device=a.device)  # (2, K)
    zs = idx[0].flip(0) if k == 2 else 2 - idx[0]
    live_z = ~null[zs]  # (K, B): no projection off a (numerically) zero U_z
    coef = divide(p[idx, zs], d[zs]) * live_z  # (2, K, B): (U_v . U_z) / (U_z . U_z)
    proj = u[idx] - coef.reshape(2, k, -1, 1, 1) * u[zs]  # (2, K, B, n, n): P(U_x), P(U_y)
    q_diag = torch.einsum("akbij,akbij->akb", proj, proj) / norm  # (2, K, B)
    q_xy = torch.einsum("kbij,kbij->kb", proj[0], proj[1]) / norm
    q_xx, q_yy = q_diag.unbind(0)
    root = (q_xx * q_yy).clamp_min(0).sqrt()

    # degenerate cases, decided on the device: no structure in x or y; nothing left of x
    # (the same distance structure as z) or of y (labels explained by z) after projecting
    left = (q_diag <= 2 * tolerance * d[idx]) & live_z  # (2, K, B)
    live = (~(null[idx].any(0) | left.any(0))).to(p.dtype)
    s = divide(q_xy, root).clamp(-1, 1) * live  # (K, B)

    # dS/dU_x = (P(U_y) / sqrt(q_xx q_yy) - S P(U_x) / q_xx) / norm; W = dS/dU_x / (4 a_x)
    g = torch.stack([-divide(s, q_xx), divide(live, root)]).reshape(2, k, -1, 1, 1)
    m = (g * proj).sum(0) / (2 * norm)
    w = divide(m, a[idx[0]])
    y_flat = null[1:2] & ~constant[1:2]
    flags = torch.cat(
        [null[:1], constant[1:2], y_flat, null[2:], left.reshape(2 * k, -1), p.isfinite().all(1)]
    ).mT
    return s, w, flags


def laplacian_product(w: Tensor, x: Tensor) -> Tensor:
    """4 (diag(W 1) - W) x for W (n, n) and samples x (n, d): dS/dx from dS/d(a^2)."""
    w = w.to(x.dtype)
    return 4 * (w.sum(-1, keepdim=True) * x - w @ x)


def reference_row_product(w_row: Tensor, x_in: Tensor, x_ref: Tensor) -> Tensor:
    """Reference mode: row 0 of 4 L(W) x for each of N problems, whose sample 0 is the
    input and samples 1..m the references: 4 (W_i 1) x_i - 4 W_i x_ref, with W_i (N, m)."""
    w_row = w_row.to(x_in.dtype)
    return 4 * (w_row.sum(-1, keepdim=True) * x_in - w_row @ x_ref)


def repeated_samples(a: Tensor, ratio: float = 1e-4) -> Tensor:
    """Batch mode: a 0-d flag, some pair of samples is at (nearly) zero distance in both
    representations (below ``ratio`` of each one's mean distance): repeated or
    near-duplicate samples, as the batches that NoiseTunnel, sensitivity_max and Quantus
    build of one image. ``a``: (3, 1, n, n) distance matrices of (student, labels, base)."""
    reps = a[0::2, 0]  # (2, n, n)
    close = (reps <= ratio * reps.mean((-2, -1), keepdim=True)).all(0)
    return close.fill_diagonal_(False).any()
