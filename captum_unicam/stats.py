r"""Distance statistics on torch tensors, with the names and values of ``dcor``.

Every function takes samples as a tensor of shape ``(n, ...)``: the first dimension
indexes the ``n`` observations, the trailing dimensions are flattened, so a batch of
feature maps ``(n, C, h, w)`` is read as ``n`` vectors of length ``C * h * w`` and a
1-D tensor ``(n,)`` as ``n`` scalars. Two or three arguments must share ``n`` but may
differ in their number of features.

The functions return what the package `dcor <https://dcor.readthedocs.io>`_ returns on
the same data (:func:`distance_matrix` is ``dcor.distances.pairwise_distances``), and
they differ from it in three ways that matter for explaining neural networks:

- **Differentiable.** Gradients flow to every input, and stay finite where two samples
  coincide (a distance of zero), with no ``eps`` under the square root: such an ``eps``
  would make a constant variable look non-constant. The gradient of a zero distance
  is taken as 0 (a subgradient of the Euclidean norm at the origin).
- **Large features, small memory.** Distances come from the Gram matrix
  :math:`x x^\top`, so the cost is one ``(n, d) @ (d, n)`` product per variable and
  the memory is :math:`O(n^2 + n d)`: an ``(n, n, d)`` tensor is never formed. All
  the work on the ``(n, n)`` matrices of the variables is batched (one stack, centring
  by broadcasting, every inner product from one ``einsum``): about 140 tensor
  operations for :func:`partial_distance_correlation`, and one read back to the host.
- **Precision.** The Gram product runs in the input's dtype; everything after it
  (centring, inner products, ratios) runs in float64, and the result is returned in
  the input's dtype. A Gram matrix that would cancel (samples far from the origin
  compared with their spread), underflow (float32 values near 1e-25) or overflow is
  redone on the samples translated by the first one and divided by a power of two
  (every correlation is scale-free; covariances and distances are scaled back), and
  pairs within the Gram product's rounding of zero are recomputed from
  :math:`x_i - x_j`, so duplicated samples are at a distance of exactly 0.

Definitions (Székely & Rizzo 2014, "Partial distance correlation with methods for
dissimilarities"): with :math:`a_{ij} = \lVert x_i - x_j \rVert^{\text{exponent}}`,

- double-centred :math:`A_{ij} = a_{ij} - \bar a_{i.} - \bar a_{.j} + \bar a_{..}`;
  the V-statistic :math:`\mathcal{V}^2_n(x, y) = \frac{1}{n^2}\sum_{ij} A_{ij}B_{ij}`;
- U-centred :math:`\tilde A_{ij} = a_{ij} - \frac{a_{i.}}{n-2} - \frac{a_{.j}}{n-2}
  + \frac{a_{..}}{(n-1)(n-2)}` for :math:`i \neq j`, 0 on the diagonal; the inner
  product :math:`(\tilde A \cdot \tilde B) = \frac{1}{n(n-3)}\sum_{i \neq j}
  \tilde A_{ij} \tilde B_{ij}` is the unbiased estimator of :math:`\mathcal{V}^2`;
- correlations divide by :math:`\sqrt{|\text{var}_x \text{var}_y|}` and are 0 where
  that is 0; the partial distance correlation :math:`\mathcal{R}^*(x, y; z)` is the
  correlation of :math:`\tilde A` and :math:`\tilde B` after projecting both onto the
  orthogonal complement of :math:`\tilde C`, computed as ``dcor`` does from the three
  pairwise correlations, and 0 where the projection leaves nothing.

Bad input raises :class:`~captum_unicam.errors.InputError` (a ``ValueError``) naming
the argument and the fix: fewer samples
than the statistic needs (4 for U-statistics, 2 for V-statistics), sample counts that
differ, NaN or Inf, empty or non-floating tensors, tensors on different devices.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_unicam.errors import InputError

__all__ = [
    "distance_matrix",
    "double_centered",
    "u_centered",
    "mean_product",
    "u_product",
    "u_projection",
    "u_complementary_projection",
    "distance_covariance_sqr",
    "distance_correlation_sqr",
    "u_distance_covariance_sqr",
    "u_distance_correlation_sqr",
    "partial_distance_covariance",
    "partial_distance_correlation",
]

_ACC = torch.float64  # dtype of every step after the Gram product

# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _as_samples(x: Tensor, name: str) -> Tensor:
    """Checks one argument and returns it as an (n, d) view or copy."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as err:  # pragma: no cover - message only
            raise InputError(f"`{name}` must be a tensor of shape (n, ...); got {type(x).__name__}") from err
    if not (x.is_floating_point()):
        raise InputError(
            f"`{name}` must be a floating-point tensor, got dtype {x.dtype}; "
            f"convert it with `{name}.float()` or `{name}.double()`."
        )
    if x.dim() == 0:
        raise InputError(f"`{name}` must have a sample dimension: shape (n, ...), got a scalar.")
    if x.numel() == 0:
        raise InputError(f"`{name}` is empty (shape {tuple(x.shape)}): it needs n samples with at least one feature.")
    return x.reshape(x.shape[0], -1)


def _check_samples(tensors: Sequence[Tensor], names: Sequence[str], min_n: int, what: str) -> list[Tensor]:
    out = [_as_samples(t, nm) for t, nm in zip(tensors, names)]
    n = out[0].shape[0]
    for t, nm in zip(out[1:], names[1:]):
        if t.shape[0] != n:
            counts = ", ".join(f"{k}: {v.shape[0]}" for k, v in zip(names, out))
            raise InputError(f"The arguments must have the same number of samples (first dimension); got {counts}.")
        if t.device != out[0].device:
            raise InputError(f"`{names[0]}` is on {out[0].device} but `{nm}` is on {t.device}; move them to one device.")
    if n < min_n:
        raise InputError(
            f"{what} needs at least {min_n} samples, got n={n}. Use a larger batch "
            "(UniCAM: pass a reference set with `context=`)."
        )
    return out


def _check_square(a: Tensor, name: str) -> Tensor:
    if not isinstance(a, Tensor) or not a.is_floating_point():
        raise InputError(f"`{name}` must be a floating-point tensor (an n x n matrix).")
    if a.dim() != 2 or a.shape[0] != a.shape[1]:
        raise InputError(f"`{name}` must be a square n x n matrix, got shape {tuple(a.shape)}.")
    if not bool(torch.isfinite(a).all()):
        raise InputError(f"`{name}` contains NaN or Inf values.")
    return a


def _check_exponent(exponent: float) -> None:
    if not (0 < exponent < 2):
        raise InputError(f"`exponent` must be in (0, 2) for a valid distance covariance, got {exponent}.")


def _result_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# ---------------------------------------------------------------------------
# Numerically safe pieces
# ---------------------------------------------------------------------------


def _safe_pow_half(sq: Tensor, exponent: float) -> Tensor:
    """sq ** (exponent / 2), with value 0 and gradient 0 where sq <= 0."""
    positive = sq > 0
    safe = torch.where(positive, sq, 1.0)
    root = safe.sqrt() if exponent == 1 else safe.pow(exponent / 2)
    return torch.where(positive, root, 0.0)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, and 0 (with gradient 0) where den == 0, as dcor does."""
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, 1.0), 0.0)


def _safe_sqrt(v: Tensor) -> Tensor:
    return _safe_pow_half(v, 1.0)


# ---------------------------------------------------------------------------
# Matrices
# ---------------------------------------------------------------------------


def _pow2_scale(x: Tensor) -> Tensor:
    """A power of two near max |x| (0-d, x's dtype, no gradient): dividing by it is exact
    and brings the samples to order 1, so the Gram product neither underflows (values
    near 1e-25 in float32) nor overflows (near 1e20). Every correlation is scale-free;
    covariances and distances are scaled back in float64."""
    peak = torch.linalg.vector_norm(x.detach(), ord=float("inf"))
    return torch.exp2(torch.floor(torch.log2(peak.clamp_min(torch.finfo(x.dtype).tiny))))


def _translated(x: Tensor, origin: Tensor, scale: Tensor) -> Tensor:
    """(x - origin) / scale in one pass. ``scale`` is a power of two, so this is the
    correctly rounded difference, scaled exactly: duplicated rows stay identical and the
    origin's row is exactly 0."""
    inv = 1 / scale
    return torch.addcmul(origin * -inv, x, inv)


def _gram(x: Tensor) -> Tensor:
    return (x @ x.mT).to(_ACC)


def _noise_factor(x: Tensor) -> float:
    """Rounding of a squared distance from the Gram route, relative to |x_i|^2 + |x_j|^2."""
    return 4 * torch.finfo(x.dtype).eps * x.shape[-1] ** 0.5


def _sq_from_gram(gram: Tensor, noise: Union[float, Tensor]) -> Tensor:
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


# Relative error of a squared distance that the raw Gram route may leave before the
# public functions redo it on translated samples (float64 is held to dcor within 1e-9).
_GRAM_TOLERANCE = {torch.float64: 1e-12}
_GRAM_TOLERANCE_DEFAULT = 1e-3


def _sq_distance_stack(samples: Sequence[Tensor], names: Sequence[str]) -> Tuple[Tensor, Tensor]:
    """Squared distances (V, n, n) in float64 of V validated variables, differentiable, and
    the (V,) scales they are in (distance = scale * sqrt(sq)). The public functions' route:

    1. One Gram product ``x @ x.T`` per variable on the samples as they are (the cost
       floor: no other pass over the samples in the common case).
    2. One read back to the host decides, per variable, what the rest needs: a Gram
       matrix that is not finite, that underflows, or whose squared distances cancel
       (samples far from the origin compared with their spread: relative error about
       kappa * eps * sqrt(d), kappa = mean |x_i|^2 / mean distance^2) is redone on the
       samples translated by the first one and divided by a power of two near their
       largest magnitude; pairs within the Gram product's rounding of zero (duplicated
       or nearly duplicated samples) are recomputed directly from ``x_i - x_j``, so
       duplicates are at a distance of exactly 0, as in dcor.
    3. NaN or Inf in the samples leave the redone Gram matrix non-finite: an error.
    """
    n = samples[0].shape[0]
    grams = torch.stack([_gram(x) for x in samples])
    noise = torch.tensor([_noise_factor(x) for x in samples], dtype=_ACC, device=grams.device)[:, None, None]
    tolerance = torch.tensor(
        [_GRAM_TOLERANCE.get(x.dtype, _GRAM_TOLERANCE_DEFAULT) for x in samples],
        dtype=_ACC, device=grams.device,
    )
    small = torch.tensor([torch.finfo(x.dtype).tiny / torch.finfo(x.dtype).eps for x in samples], dtype=_ACC, device=grams.device)
    scales = torch.ones(len(samples), dtype=_ACC, device=grams.device)
    off = ~torch.eye(n, dtype=torch.bool, device=grams.device)

    def squared(g: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        norms = g.diagonal(dim1=-2, dim2=-1)
        both = norms.unsqueeze(-1) + norms.unsqueeze(-2)
        sq = both - 2 * g
        return (sq + sq.mT) / 2, both.detach(), norms.detach()

    sq, both, norms = squared(grams)
    with torch.no_grad():
        mean_sq = (sq.detach().clamp_min(0) * off).sum((-2, -1)) / max(n * (n - 1), 1)
        kappa = norms.mean(-1) / mean_sq  # inf where every distance is 0
        cancels = kappa * noise[:, 0, 0] / 4 > tolerance
        redo = ~grams.isfinite().all(-1).all(-1) | cancels | (norms.amax(-1) < small)
        near = ((sq.detach() <= noise * both) & off).any(-1).any(-1)
        flags = torch.stack([redo, near]).tolist()
    rows = list(samples)
    if any(flags[0]):
        sq = list(sq.unbind())
        checks = []
        for v, x in enumerate(samples):
            if flags[0][v]:
                scale = _pow2_scale(x)
                rows[v] = _translated(x, x[:1], scale)
                g = _gram(rows[v])
                sq[v], both_v, _ = squared(g)
                scales[v] = scale.to(_ACC)
                flags[1][v] = bool(((sq[v].detach() <= noise[v] * both_v) & off).any()) if bool(g.isfinite().all()) else False
                checks.append((g.isfinite().all(), names[v]))
        for ok, name in checks:
            if not bool(ok):
                raise InputError(
                    f"`{name}` contains NaN or Inf values; distance statistics need finite "
                    "samples (check the data, or the model's activations, for NaN/Inf)."
                )
        sq = torch.stack(sq)
    sq = sq.clamp_min(0)
    for v, x in enumerate(rows):
        if flags[1][v]:
            sq_v = sq[v]
            norms_v = (x.detach() * x.detach()).sum(-1).to(_ACC)
            limit = noise[v, 0, 0] * (norms_v[:, None] + norms_v[None, :])
            r_idx, c_idx = torch.nonzero(torch.triu((sq_v.detach() <= limit) & off, diagonal=1), as_tuple=True)
            exact = torch.cat(
                [(x[r] - x[c]).to(_ACC).pow(2).sum(dim=1) for r, c in zip(r_idx.split(256), c_idx.split(256))]
            )
            sq_v = sq_v.index_put((r_idx, c_idx), exact).index_put((c_idx, r_idx), exact)
            sq = torch.cat([sq[:v], sq_v[None], sq[v + 1 :]])
    return sq, scales


def _root(sq: Tensor, exponent: float, grad_safe: bool = True) -> Tensor:
    """sq ** (exponent / 2), with value 0 and gradient 0 where sq == 0."""
    if not grad_safe:
        return sq.sqrt() if exponent == 1 else sq.pow(exponent / 2)
    return _safe_pow_half(sq, exponent)


def _distances(x: Tensor, exponent: float = 1.0, name: str = "x") -> Tensor:
    """Euclidean distance matrix ``|x_i - x_j| ** exponent`` of (n, d) samples, in float64."""
    return _distance_stack([x], [name], exponent)[0]


def _distance_stack(samples: Sequence[Tensor], names: Sequence[str], exponent: float) -> Tensor:
    """(V, n, n) distance matrices ``|x_i - x_j| ** exponent`` of V variables, in float64."""
    sq, scales = _sq_distance_stack(samples, names)
    root = _root(sq, exponent)
    if exponent != 1:
        # vectorised pow kernels may round the same value differently at different
        # positions (sqrt is correctly rounded): mirror the upper triangle so that the
        # matrix is exactly symmetric
        upper = torch.triu(root, diagonal=1)
        root = upper + upper.mT
    return root * (scales**exponent)[:, None, None]


def _double_centered(a: Tensor) -> Tensor:
    row = a.mean(dim=1, keepdim=True)
    col = a.mean(dim=0, keepdim=True)
    return a - row - col + a.mean()


def _u_centered(a: Tensor) -> Tensor:
    n = a.shape[0]
    row = a.sum(dim=1, keepdim=True) / (n - 2)
    col = a.sum(dim=0, keepdim=True) / (n - 2)
    total = a.sum() / ((n - 1) * (n - 2))
    out = a - row - col + total
    return out * (1 - torch.eye(n, dtype=a.dtype, device=a.device))


def _u_product(a: Tensor, b: Tensor) -> Tensor:
    n = a.shape[0]
    return (a * b).sum() / (n * (n - 3))


def distance_matrix(x: Tensor, *, exponent: float = 1.0) -> Tensor:
    r"""Pairwise Euclidean distances :math:`\lVert x_i - x_j \rVert^{\text{exponent}}`.

    Equals ``dcor.distances.pairwise_distances(x, exponent=exponent)``.

    Args:
        x (Tensor): samples, shape ``(n, ...)``; trailing dimensions are flattened.
        exponent (float, optional): power of the distances, in (0, 2). Default: 1.

    Returns:
        Tensor: ``(n, n)`` symmetric matrix with a zero diagonal, in ``x``'s dtype.

    Examples::

        >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
        >>> distance_matrix(x)
        tensor([[0., 5.],
                [5., 0.]])
    """
    _check_exponent(exponent)
    (x,) = _check_samples([x], ["x"], 1, "A distance matrix")
    return _distances(x, exponent, "x").to(x.dtype)


def double_centered(a: Tensor) -> Tensor:
    r"""Double-centred copy of a square matrix: rows and columns sum to 0.

    Equals ``dcor.double_centered(a)``.

    Args:
        a (Tensor): ``(n, n)`` matrix, usually from :func:`distance_matrix`.

    Returns:
        Tensor: :math:`A_{ij} = a_{ij} - \bar a_{i.} - \bar a_{.j} + \bar a_{..}`.

    Examples::

        >>> double_centered(torch.tensor([[1.0, 2.0], [2.0, 4.0]]))
        tensor([[ 0.2500, -0.2500],
                [-0.2500,  0.2500]])
    """
    a = _check_square(a, "a")
    return _double_centered(a.to(_ACC)).to(a.dtype)


def u_centered(a: Tensor) -> Tensor:
    r"""U-centred copy of a square matrix (Székely & Rizzo 2014, Definition 1).

    Equals ``dcor.u_centered(a)``. Needs ``n >= 3``.

    Args:
        a (Tensor): ``(n, n)`` matrix, usually from :func:`distance_matrix`.

    Returns:
        Tensor: :math:`\tilde A`, zero on the diagonal.

    Examples::

        >>> u_centered(torch.tensor([[1.0, 2, 3], [2, 4, 5], [3, 5, 6]]))
        tensor([[ 0.0000,  0.5000, -1.5000],
                [ 0.5000,  0.0000, -4.5000],
                [-1.5000, -4.5000,  0.0000]])
    """
    a = _check_square(a, "a")
    if a.shape[0] < 3:
        raise InputError(f"U-centring needs an n x n matrix with n >= 3, got n={a.shape[0]}.")
    return _u_centered(a.to(_ACC)).to(a.dtype)


def mean_product(a: Tensor, b: Tensor) -> Tensor:
    r"""Mean of the element-wise product :math:`\frac{1}{n^2}\sum_{ij} a_{ij} b_{ij}`.

    Equals ``dcor.mean_product(a, b)``; on double-centred distance matrices it is the
    V-statistic of the squared distance covariance.

    Args:
        a (Tensor): first matrix.
        b (Tensor): second matrix, same shape.

    Returns:
        Tensor: a scalar.
    """
    if a.shape != b.shape:
        raise InputError(f"`a` and `b` must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    return (a.to(_ACC) * b.to(_ACC)).mean().to(_result_dtype(a, b))


def u_product(a: Tensor, b: Tensor) -> Tensor:
    r"""Inner product of U-centred matrices, :math:`\frac{1}{n(n-3)}\sum_{ij} a_{ij} b_{ij}`.

    Equals ``dcor.u_product(a, b)``. Needs ``n >= 4``.

    Args:
        a (Tensor): ``(n, n)`` U-centred matrix (see :func:`u_centered`).
        b (Tensor): ``(n, n)`` U-centred matrix.

    Returns:
        Tensor: a scalar.

    Examples::

        >>> a = u_centered(distance_matrix(torch.randn(8, 3)))
        >>> bool(u_product(a, a) >= 0)
        True
    """
    a = _check_square(a, "a")
    b = _check_square(b, "b")
    if a.shape != b.shape:
        raise InputError(f"`a` and `b` must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    if a.shape[0] < 4:
        raise InputError(f"u_product needs n >= 4 (it divides by n(n-3)), got n={a.shape[0]}.")
    return _u_product(a.to(_ACC), b.to(_ACC)).to(_result_dtype(a, b))


def u_projection(a: Tensor) -> Callable[[Tensor], Tensor]:
    r"""The orthogonal projection onto a U-centred matrix :math:`\tilde A`.

    Equals ``dcor.u_projection(a)``: the returned function maps :math:`\tilde B` to
    :math:`\frac{(\tilde A \cdot \tilde B)}{(\tilde A \cdot \tilde A)} \tilde A`
    (0 where :math:`(\tilde A \cdot \tilde A) = 0`).

    Args:
        a (Tensor): ``(n, n)`` U-centred matrix.

    Returns:
        Callable[[Tensor], Tensor]: the projection.
    """
    a = _check_square(a, "a")
    aa = u_product(a, a)

    def projection(b: Tensor) -> Tensor:
        return _safe_div(u_product(a, b), aa) * a

    return projection


def u_complementary_projection(a: Tensor) -> Callable[[Tensor], Tensor]:
    r"""The projection onto the orthogonal complement of a U-centred matrix.

    Equals ``dcor.u_complementary_projection(a)``: :math:`\tilde B \mapsto
    \tilde B - \text{proj}_{\tilde A}(\tilde B)`.

    Args:
        a (Tensor): ``(n, n)`` U-centred matrix.

    Returns:
        Callable[[Tensor], Tensor]: the projection.
    """
    proj = u_projection(a)
    return lambda b: b - proj(b)


# ---------------------------------------------------------------------------
# Statistics of samples
# ---------------------------------------------------------------------------


def _products(samples: Sequence[Tensor], names: Sequence[str], exponent: float, unbiased: bool) -> Tensor:
    """The (V, V) matrix of inner products of the centred distance matrices of V validated
    variables, in float64, differentiable: ``(A_v . A_w)`` of the U-centred matrices when
    ``unbiased``, else the mean products of the double-centred ones.

    Few operations whatever V: one Gram product per variable, then the (V, n, n) stack
    is centred by broadcasting and all the products come from one ``einsum``. One read
    back to the host: the NaN/Inf check."""
    n = samples[0].shape[0]
    a = _distance_stack(samples, names, exponent)
    if unbiased:
        rows = a.sum(-1, keepdim=True) / (n - 2)
        total = rows.sum(-2, keepdim=True) / (n - 1)
        off = 1 - torch.eye(n, dtype=_ACC, device=a.device)
        c = (a - rows - rows.mT + total) * off
        return torch.einsum("vij,wij->vw", c, c) / (n * (n - 3))
    rows = a.mean(-1, keepdim=True)
    c = a - rows - rows.mT + rows.mean(-2, keepdim=True)
    return torch.einsum("vij,wij->vw", c, c) / (n * n)


def _stats(x: Tensor, y: Tensor, exponent: float, unbiased: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(cov_xy, var_x, var_y) of validated samples, in float64."""
    p = _products([x, y], ["x", "y"], exponent, unbiased)
    return p[0, 1], p[0, 0], p[1, 1]


def _correlation(cov: Tensor, var_x: Tensor, var_y: Tensor, low: float = -1.0) -> Tensor:
    """cov / sqrt(var_x var_y), 0 where a variance is 0; clamped to [low, 1], since rounding
    alone can step past the bounds Cauchy-Schwarz sets."""
    return _safe_div(cov, _safe_sqrt((var_x * var_y).abs())).clamp(low, 1)


def _partial_correlation(r_xy: Tensor, r_xz: Tensor, r_yz: Tensor) -> Tensor:
    """pdCor(x, y; z) from the three bias-corrected correlations, by dcor's formula: the
    correlation of x's and y's U-centred matrices projected off z's, so within [-1, 1] but
    for rounding where the denominator is small; 0 where a projection leaves nothing."""
    den = _safe_sqrt(1 - r_xz**2) * _safe_sqrt(1 - r_yz**2)
    return _safe_div(r_xy - r_xz * r_yz, den).clamp(-1, 1)


def distance_covariance_sqr(x: Tensor, y: Tensor, *, exponent: float = 1.0) -> Tensor:
    r"""Squared distance covariance, the usual (biased) V-statistic.

    Equals ``dcor.distance_covariance_sqr(x, y)``.

    Args:
        x (Tensor): samples ``(n, ...)``.
        y (Tensor): samples ``(n, ...)``; the number of features may differ from ``x``.
        exponent (float, optional): power of the distances, in (0, 2). Default: 1.

    Returns:
        Tensor: a scalar :math:`\mathcal{V}^2_n(x, y) \ge 0`.

    Examples::

        >>> x = torch.randn(16, 5, dtype=torch.float64)
        >>> v = distance_covariance_sqr(x, x ** 2)
    """
    _check_exponent(exponent)
    x, y = _check_samples([x, y], ["x", "y"], 2, "The V-statistic distance covariance")
    cov, _, _ = _stats(x, y, exponent, unbiased=False)
    return cov.to(_result_dtype(x, y))


def distance_correlation_sqr(x: Tensor, y: Tensor, *, exponent: float = 1.0) -> Tensor:
    r"""Squared distance correlation, the usual (biased) estimator.

    Equals ``dcor.distance_correlation_sqr(x, y)``: 0 when either distance variance is 0.

    Args:
        x (Tensor): samples ``(n, ...)``.
        y (Tensor): samples ``(n, ...)``.
        exponent (float, optional): power of the distances, in (0, 2). Default: 1.

    Returns:
        Tensor: a scalar in [0, 1].

    Examples::

        >>> x = torch.randn(16, 5)
        >>> float(distance_correlation_sqr(x, 2 * x + 1))
        1.0
    """
    _check_exponent(exponent)
    x, y = _check_samples([x, y], ["x", "y"], 2, "The V-statistic distance correlation")
    return _correlation(*_stats(x, y, exponent, unbiased=False), low=0.0).to(_result_dtype(x, y))


def u_distance_covariance_sqr(x: Tensor, y: Tensor, *, exponent: float = 1.0) -> Tensor:
    r"""Unbiased estimator of the squared distance covariance, :math:`(\tilde A \cdot \tilde B)`.

    Equals ``dcor.u_distance_covariance_sqr(x, y)``. Needs ``n >= 4``.

    Args:
        x (Tensor): samples ``(n, ...)``.
        y (Tensor): samples ``(n, ...)``.
        exponent (float, optional): power of the distances, in (0, 2). Default: 1.

    Returns:
        Tensor: a scalar (it can be slightly negative: it is unbiased).
    """
    _check_exponent(exponent)
    x, y = _check_samples([x, y], ["x", "y"], 4, "The U-statistic distance covariance")
    cov, _, _ = _stats(x, y, exponent, unbiased=True)
    return cov.to(_result_dtype(x, y))


def u_distance_correlation_sqr(x: Tensor, y: Tensor, *, exponent: float = 1.0) -> Tensor:
    r"""Bias-corrected squared distance correlation (the FSS and RS statistic).

    Equals ``dcor.u_distance_correlation_sqr(x, y)``: :math:`(\tilde A \cdot \tilde B)
    / \sqrt{|(\tilde A \cdot \tilde A)(\tilde B \cdot \tilde B)|}`, 0 when the
    denominator is 0. Needs ``n >= 4``.

    Args:
        x (Tensor): samples ``(n, ...)``.
        y (Tensor): samples ``(n, ...)``.
        exponent (float, optional): power of the distances, in (0, 2). Default: 1.

    Returns:
        Tensor: a scalar in [-1, 1] (near 0 for independent samples).

    Examples::

        >>> features = torch.randn(32, 64, 4, 4)
        >>> labels = torch.nn.functional.one_hot(torch.arange(32) % 4).float()
        >>> r = u_distance_correlation_sqr(features, labels)
    """
    _check_exponent(exponent)
    x, y = _check_samples([x, y], ["x", "y"], 4, "The U-statistic distance correlation")
    return _correlation(*_stats(x, y, exponent, unbiased=True)).to(_result_dtype(x, y))


def partial_distance_covariance(x: Tensor, y: Tensor, z: Tensor, *, exponent: float = 1.0) -> Tensor:
    r"""Partial distance covariance :math:`(P_{z^\perp}(x) \cdot P_{z^\perp}(y))`.

    Equals ``dcor.partial_distance_covariance(x, y, z)``. Needs ``n >= 4``.

    Args:
        x (Tensor): samples ``(n, ...)``.
        y (Tensor): samples ``(n, ...)``.
        z (Tensor): samples ``(n, ...)`` whose influence is removed.
        exponent (float, optional): power of the distances, in (0, 2). Default: 1.

    Returns:
        Tensor: a scalar.
    """
    _check_exponent(exponent)
    x, y, z = _check_samples([x, y, z], ["x", "y", "z"], 4, "The partial distance covariance")
    p = _products([x, y, z], ["x", "y", "z"], exponent, unbiased=True)
    # (P_z(A) . P_z(B)) with P_z the projection off C: (A.B) - (A.C)(B.C)/(C.C)
    return (p[0, 1] - _safe_div(p[0, 2] * p[1, 2], p[2, 2])).to(_result_dtype(x, y, z))


def partial_distance_correlation(x: Tensor, y: Tensor, z: Tensor, *, exponent: float = 1.0) -> Tensor:
    r"""Partial distance correlation :math:`\mathcal{R}^*(x, y; z)`.

    Equals ``dcor.partial_distance_correlation(x, y, z)``: from the bias-corrected
    correlations :math:`r_{xy}, r_{xz}, r_{yz}` (each clipped to [-1, 1]),

    .. math::
        \mathcal{R}^*(x, y; z) = \frac{r_{xy} - r_{xz} r_{yz}}
        {\sqrt{1 - r_{xz}^2}\sqrt{1 - r_{yz}^2}},

    which is the correlation of :math:`\tilde A` and :math:`\tilde B` projected off
    :math:`\tilde C`; 0 when a projection leaves nothing (e.g. ``x`` is ``z``). A
    constant ``z`` removes nothing. Needs ``n >= 4``. UniCAM's distilled score is
    ``partial_distance_correlation(student_features, labels, base_features)``.

    Args:
        x (Tensor): samples ``(n, ...)``.
        y (Tensor): samples ``(n, ...)``.
        z (Tensor): samples ``(n, ...)`` whose influence is removed.
        exponent (float, optional): power of the distances, in (0, 2). Default: 1.

    Returns:
        Tensor: a scalar in [-1, 1].

    Examples::

        >>> base = torch.randn(32, 10, dtype=torch.float64)
        >>> labels = torch.randn(32, 3, dtype=torch.float64)
        >>> student = torch.cat([base, labels], dim=1)
        >>> float(partial_distance_correlation(student, labels, base)) > 0
        True
    """
    _check_exponent(exponent)
    x, y, z = _check_samples([x, y, z], ["x", "y", "z"], 4, "The partial distance correlation")
    p = _products([x, y, z], ["x", "y", "z"], exponent, unbiased=True)
    d = p.diagonal()
    r = _correlation(p, d[:, None], d[None, :])  # the three correlations at once
    r_xy, r_xz, r_yz = r[[0, 0, 1], [1, 2, 2]].unbind()
    return _partial_correlation(r_xy, r_xz, r_yz).to(_result_dtype(x, y, z))


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

def _rescale_all(samples: Sequence[Tensor], origins: Optional[Sequence[Tensor]] = None, scales: Optional[Tensor] = None) -> Tuple[List[Tensor], Tensor]:
    """Translates and rescales several variables (detached samples), their scales computed
    together: (x_v - origin_v) / scale_v, by default origin_v = x_v[0] and scale_v a
    power of two near max |x_v|. Returns the rescaled samples and the (V,) float64
    scales."""
    if scales is None:
        peaks = torch.stack([torch.linalg.vector_norm(x, ord=float("inf"), dtype=_ACC) for x in samples])
        scales = torch.exp2(torch.floor(torch.log2(peaks.clamp_min(torch.finfo(torch.float32).tiny))))
    inv = (1 / scales).to(samples[0].dtype).unbind()
    rescaled = []
    for v, x in enumerate(samples):
        origin = x[:1] if origins is None else origins[v]
        rescaled.append(torch.addcmul(origin * -inv[v], x, inv[v]))
    return rescaled, scales


def _u_centered_stack(a: Tensor) -> Tensor:
    """U-centres symmetric (..., n, n) matrices in place, by broadcasting."""
    n = a.shape[-1]
    rows = a.sum(-1, keepdim=True) / (n - 2)
    total = rows.sum(-2, keepdim=True) / (n - 1)
    a.sub_(rows).sub_(rows.mT).add_(total)
    a.diagonal(dim1=-2, dim2=-1).zero_()
    return a


def _noise(samples: Sequence[Tensor], device: torch.device) -> Tensor:
    return torch.tensor([_noise_factor(x) for x in samples], dtype=_ACC, device=device)


def _batch_distances(samples: Sequence[Tensor]) -> Tuple[Tensor, List[Tensor], Tensor]:
    """Rescaled distance matrices (V, 1, n, n) of V variables (n, d_v) on one batch, the
    rescaled samples and the (V,) scales. One Gram product per variable; everything on
    the (n, n) matrices batched over the variables, in float64."""
    rescaled, scales = _rescale_all(samples)
    grams = torch.stack([(x @ x.mT).to(_ACC) for x in rescaled])
    sq = _sq_from_gram(grams, _noise(samples, grams.device)[:, None, None])
    sq = _exact_closest_pairs(sq, grams, rescaled)
    return sq.sqrt().unsqueeze(1), rescaled, scales


def _exact_closest_pairs(sq: Tensor, grams: Tensor, rescaled: Sequence[Tensor]) -> Tensor:
    """Recomputes, for the two representations (variables 0 and 2 of 3), the 2n closest
    pairs (relative to their squared norms) directly from ``x_i - x_j``, without a
    data-dependent branch.

    The Gram route cannot resolve a squared distance below its rounding (about
    eps sqrt(d) (|x_i|^2 + |x_j|^2)); :func:`_sq_from_gram` sets such pairs to 0, which is
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
    key = sq[0::2, rows, cols] / (norms[:, rows] + norms[:, cols])  # NaN (never picked first) for 0/0
    pick = key.topk(k, dim=-1, largest=False).indices  # (2, k)
    r, c = rows[pick], cols[pick]
    exact = torch.stack(
        [torch.linalg.vector_norm(rescaled[v][r[i]] - rescaled[v][c[i]], dim=-1, dtype=_ACC) for i, v in enumerate((0, 2))]
    ).square()
    v_idx = torch.arange(0, 3, 2, device=sq.device)[:, None].expand(-1, k)
    return sq.index_put((torch.cat([v_idx, v_idx]), torch.cat([r, c]), torch.cat([c, r])), torch.cat([exact, exact]))


def _reference_block(samples: Sequence[Tensor]) -> Dict[str, Any]:
    """What reference mode keeps of V variables on the m reference samples: the rescaled
    samples, their origins and scales, squared norms, and the m x m distance blocks."""
    rescaled, scales = _rescale_all(samples)
    grams = torch.stack([(x @ x.mT).to(_ACC) for x in rescaled])
    noise = _noise(samples, grams.device)
    return {
        "x": rescaled,
        "origins": [x.detach()[:1] for x in samples],
        "scales": scales,
        "norms": grams.diagonal(dim1=-2, dim2=-1).clone(),  # (V, m)
        "distances": _exact_closest_pairs(_sq_from_gram(grams, noise[:, None, None]), grams, rescaled).sqrt(),
        "noise": noise,
    }


def _reference_distances(samples: Sequence[Tensor], block: Dict[str, Any]) -> Tuple[Tensor, List[Tensor], Tensor]:
    """Distance matrices (V, N, 1 + m, 1 + m), input i followed by the m references, for V
    variables; the rescaled inputs (N, d_v); the (V,) scales. The m x m blocks are the
    cached ones; each input adds one row and column."""
    rescaled, scales = _rescale_all(samples, block["origins"], block["scales"])
    cross = torch.stack([(x @ r.mT).to(_ACC) for x, r in zip(rescaled, block["x"])])  # (V, N, m)
    # each input's squared norm from the same kind of product as its cross terms, so
    # that an input equal to a reference is at distance exactly 0
    norms = torch.stack([(x.unsqueeze(1) @ x.unsqueeze(2)).reshape(-1).to(_ACC) for x in rescaled])  # (V, N)
    both = norms.unsqueeze(-1) + block["norms"].unsqueeze(1)
    sq = both - 2 * cross
    sq = torch.where(sq <= block["noise"][:, None, None] * both, 0.0, sq)
    # each input's closest reference, for both representations, exactly (an input that is a
    # near-copy of a reference keeps its distance and gradient; see _exact_closest_pairs)
    nearest = (sq[0::2] / both[0::2]).nan_to_num(nan=0.0).argmin(-1)  # (2, N)
    exact = torch.stack(
        [torch.linalg.vector_norm(rescaled[v] - block["x"][v][nearest[i]], dim=-1, dtype=_ACC) for i, v in enumerate((0, 2))]
    ).square()
    inputs = torch.arange(sq.shape[1], device=sq.device)
    sq = sq.index_put((torch.arange(0, 3, 2, device=sq.device)[:, None], inputs, nearest), exact)
    d = sq.sqrt()  # (V, N, m)
    v, n_in, m = d.shape
    top = torch.cat([d.new_zeros(v, n_in, 1), d], dim=2)  # (V, N, 1 + m)
    rest = torch.cat([d.unsqueeze(-1), block["distances"].unsqueeze(1).expand(v, n_in, m, m)], dim=3)
    return torch.cat([top.unsqueeze(2), rest], dim=2), rescaled, scales


def _divide(num: Tensor, den: Tensor) -> Tensor:
    """num / den, 0 where den == 0 (no gradient needed here; NaN or Inf in the inputs
    are caught before, from the products)."""
    return torch.nan_to_num(num / den, nan=0.0, posinf=0.0, neginf=0.0)


def _unicam_scores(a: Tensor, explained: Sequence[int], tolerance: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Partial distance correlations of a stack of problems, and what their gradients need.

    Args:
        a: (3, B, n, n) distance matrices of (student, labels, base) for B problems.
        explained: for each score, the explained variable: 0 for the distilled score
            pdCor(s, y; b), 2 for the residual score pdCor(b, y; s).
        tolerance: a correlation within this of +-1 counts as +-1.

    Returns:
        ``(S, W, flags)``: S (K, B), the K scores of each problem; W (K, B, n, n), the
        derivative of each score with respect to the squared distances of its explained
        variable (dS/dx = 4 (diag(W 1) - W) x, :func:`_laplacian_product`); flags
        (B, 4 + 2K + 3) booleans per problem: student constant, labels identical, label
        matrix numerically zero (e.g. one-hot labels of distinct classes), base
        constant; for each score, "same distance structure" (r_xz = +-1), then for each
        score "labels explained by the other model" (r_yz = +-1); then for each variable
        "finite". A degenerate score is 0 and its W is 0.
    """
    n = a.shape[-1]
    norm = n * (n - 3)
    u = _u_centered_stack(a.clone())
    p = torch.einsum("vbij,wbij->bvw", u, u) / norm  # (B, 3, 3)
    d = p.diagonal(dim1=-2, dim2=-1)  # (B, 3)
    root = (d.unsqueeze(-1) * d.unsqueeze(-2)).abs().sqrt()
    r = _divide(p, root).clamp(-1, 1)  # the three correlations, and 1 or 0 on the diagonal
    # (B, K) views of the quantities of each score, in one gather from (r, root, p)
    rows = [
        [x * 3 + 1 for x in explained],  # r_xy
        [2 for x in explained],  # r_xz
        [(2 - x) * 3 + 1 for x in explained],  # r_yz
        [9 + x * 3 + 1 for x in explained],  # root_xy
        [9 + 2 for x in explained],  # root_xz
        [18 + x * 4 for x in explained],  # p_xx
        [18 + (2 - x) * 4 for x in explained],  # p_zz
    ]
    flat = torch.cat([r.flatten(1), root.flatten(1), p.flatten(1)], dim=1)
    picked = flat[:, torch.tensor(rows, device=a.device)]  # (B, 7, K)
    r_xy, r_xz, r_yz, root_xy, root_xz, p_xx, p_zz = picked.unbind(1)
    one_xz, one_yz = 1 - r_xz**2, 1 - r_yz**2
    den = (one_xz * one_yz).clamp_min(0).sqrt()
    s = _divide(r_xy - r_xz * r_yz, den).clamp(-1, 1)

    # degenerate cases, decided on the device
    mean_a = a.mean(dim=(-2, -1)).mT  # (B, 3)
    constant = d <= 0  # every distance 0: exact, translated duplicates are exact
    flat_labels = (d[:, 1:2] <= 1e-9 * mean_a[:, 1:2] ** 2) & ~constant[:, 1:2]
    z_constant = p_zz <= 0
    same = (1 - r_xz.abs() <= tolerance) & ~z_constant
    by_other = (1 - r_yz.abs() <= tolerance) & ~z_constant
    zero = (p_xx <= 0) | constant[:, 1:2] | flat_labels | same | by_other
    live = (~zero).to(p.dtype)
    s = s * live

    # dS/dp for the products with the explained variable; their weights in dS/da_x
    g_xy = _divide(live, den)
    g_xz = _divide(s * r_xz, one_xz) - r_yz * g_xy
    c_xy = _divide(g_xy, root_xy)
    c_xz = _divide(g_xz, root_xz)
    c_xx = _divide(g_xy * r_xy + g_xz * r_xz, -p_xx)  # 2 dS/dp_xx
    weights = torch.stack([c_xx, c_xy, c_xz], dim=-1)  # (B, K, 3) in the order (x, y, z)
    order = torch.tensor([[0, 1, 2] if x == 0 else [2, 1, 0] for x in explained], device=a.device)
    weights = weights.gather(-1, order.expand_as(weights))  # in the order (s, y, b)
    m = torch.einsum("bkv,vbij->kbij", weights / (2 * norm), u)
    a_x = a[0::2] if list(explained) == [0, 2] else a[explained[0] : explained[0] + 1]
    w = _divide(m, a_x)
    flags = torch.cat([constant[:, :2], flat_labels, constant[:, 2:], same, by_other, p.isfinite().all(-1)], dim=1)
    return s.mT, w, flags


def _laplacian_product(w: Tensor, x: Tensor) -> Tensor:
    """4 (diag(W 1) - W) x for W (n, n) and samples x (n, d): dS/dx from dS/d(a^2)."""
    w = w.to(x.dtype)
    return 4 * (w.sum(-1, keepdim=True) * x - w @ x)


def _reference_row_product(w_row: Tensor, x_in: Tensor, x_ref: Tensor) -> Tensor:
    """Reference mode: row 0 of 4 L(W) x for each of N problems, whose sample 0 is the
    input and samples 1..m the references: 4 (W_i 1) x_i - 4 W_i x_ref, with W_i (N, m)."""
    w_row = w_row.to(x_in.dtype)
    return 4 * (w_row.sum(-1, keepdim=True) * x_in - w_row @ x_ref)
