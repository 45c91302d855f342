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
  orthogonal complement of :math:`\tilde C`, formed explicitly (equal to dcor's formula
  from the three pairwise correlations, and exact to 1e-8 in float64 where that formula
  loses accuracy: samples on which x and z nearly agree), and 0 where the projection
  leaves nothing;
- exactly degenerate cases are exactly 0: a U-centred matrix below
  :math:`1024\,\epsilon_{64}` times the mean distance (the rounding of the centring;
  e.g. one-hot rows of distinct classes, whose U-centred matrix is exactly zero) is taken
  as 0, so the 0/0 of a correlation is 0 as in dcor's definitions, not a ratio of
  rounding noise;
- low-precision floats (bfloat16, float16) are read in float32.

Bad input raises :class:`~captum_unicam.errors.InputError` (a ``ValueError``) naming
the argument and the fix: fewer samples
than the statistic needs (4 for U-statistics, 2 for V-statistics), sample counts that
differ, NaN or Inf, empty or non-floating tensors, tensors on different devices.
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch
from torch import Tensor

from captum_unicam._fused import ACC, noise_factor
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


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _as_samples(x: Tensor, name: str) -> Tensor:
    """Checks one argument and returns it as an (n, d) view or copy."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as err:  # pragma: no cover - message only
            raise InputError(
                f"`{name}` must be a tensor of shape (n, ...); got {type(x).__name__}"
            ) from err
    if not (x.is_floating_point()):
        raise InputError(
            f"`{name}` must be a floating-point tensor, got dtype {x.dtype}; "
            f"convert it with `{name}.float()` or `{name}.double()`."
        )
    if x.dim() == 0:
        raise InputError(f"`{name}` must have a sample dimension: shape (n, ...), got a scalar.")
    if x.numel() == 0:
        raise InputError(
            f"`{name}` is empty (shape {tuple(x.shape)}): it needs n samples with at least one "
            "feature."
        )
    if x.dtype.itemsize < 4:
        x = x.float()  # bfloat16 / float16: the Gram product in float32 at least
    return x.reshape(x.shape[0], -1)


def _check_samples(
    tensors: Sequence[Tensor], names: Sequence[str], min_n: int, what: str
) -> list[Tensor]:
    out = [_as_samples(t, nm) for t, nm in zip(tensors, names)]
    n = out[0].shape[0]
    for t, nm in zip(out[1:], names[1:]):
        if t.shape[0] != n:
            counts = ", ".join(f"{k}: {v.shape[0]}" for k, v in zip(names, out))
            raise InputError(
                "The arguments must have the same number of samples (first dimension); got "
                f"{counts}."
            )
        if t.device != out[0].device:
            raise InputError(
                f"`{names[0]}` is on {out[0].device} but `{nm}` is on {t.device}; move them to one "
                "device."
            )
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
        raise InputError(
            f"`exponent` must be in (0, 2) for a valid distance covariance, got {exponent}."
        )


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
    return (x @ x.mT).to(ACC)


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
    noise = torch.tensor([noise_factor(x) for x in samples], dtype=ACC, device=grams.device)[
        :, None, None
    ]
    tolerance = torch.tensor(
        [_GRAM_TOLERANCE.get(x.dtype, _GRAM_TOLERANCE_DEFAULT) for x in samples],
        dtype=ACC,
        device=grams.device,
    )
    # pairs whose squared distance the Gram route cannot give within `tolerance` (its rounding
    # is about noise * (|x_i|^2 + |x_j|^2)) are recomputed from x_i - x_j below
    noise_near = noise / tolerance[:, None, None]
    small = torch.tensor(
        [torch.finfo(x.dtype).tiny / torch.finfo(x.dtype).eps for x in samples],
        dtype=ACC,
        device=grams.device,
    )
    scales = torch.ones(len(samples), dtype=ACC, device=grams.device)
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
        near = ((sq.detach() <= noise_near * both) & off).any(-1).any(-1)
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
                scales[v] = scale.to(ACC)
                flags[1][v] = (
                    bool(((sq[v].detach() <= noise_near[v] * both_v) & off).any())
                    if bool(g.isfinite().all())
                    else False
                )
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
            norms_v = (x.detach() * x.detach()).sum(-1).to(ACC)
            limit = noise_near[v, 0, 0] * (norms_v[:, None] + norms_v[None, :])
            r_idx, c_idx = torch.nonzero(
                torch.triu((sq_v.detach() <= limit) & off, diagonal=1), as_tuple=True
            )
            exact = torch.cat(
                [
                    (x[r] - x[c]).to(ACC).pow(2).sum(dim=1)
                    for r, c in zip(r_idx.split(256), c_idx.split(256))
                ]
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
    return out.masked_fill(torch.eye(n, dtype=torch.bool, device=a.device), 0.0)  # +0, not -0


def _u_product(a: Tensor, b: Tensor) -> Tensor:
    n = a.shape[0]
    return (a * b).sum() / (n * (n - 3))


def distance_matrix(x: Tensor, *, exponent: float = 1.0) -> Tensor:
    r"""Pairwise Euclidean distances :math:`\lVert x_i - x_j \rVert^{\text{exponent}}`.

    Equals ``dcor.distances.pairwise_distances(x, exponent=exponent)``. In float64 each
    distance is within 1e-12 relative of the exact one, also for near-copies (pairs closer
    than the Gram product resolves are recomputed from :math:`x_i - x_j`); in float32,
    within about 1e-3 relative on the squared distance.

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
    return _double_centered(a.to(ACC)).to(a.dtype)


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
    return _u_centered(a.to(ACC)).to(a.dtype)


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
        raise InputError(
            f"`a` and `b` must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    return (a.to(ACC) * b.to(ACC)).mean().to(_result_dtype(a, b))


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
        raise InputError(
            f"`a` and `b` must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    if a.shape[0] < 4:
        raise InputError(f"u_product needs n >= 4 (it divides by n(n-3)), got n={a.shape[0]}.")
    return _u_product(a.to(ACC), b.to(ACC)).to(_result_dtype(a, b))


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


# A U-centred matrix whose squared norm is below (ZERO_RATIO * mean distance)^2 is taken as
# exactly zero: U-centring removes matrices of the form c (J - I) and f(i) + f(j) exactly
# (one-hot rows of distinct classes, all samples but one equal), and what is left is the
# rounding of the centring, about eps * mean distance per entry. Without this, 0/0 cases
# (e.g. the distance correlation of 17 distinct one-hot rows with themselves) return
# ratios of rounding noise instead of the 0 that dcor's exact definition gives.
_ZERO_RATIO = 1024 * torch.finfo(torch.float64).eps


def _centred(
    samples: Sequence[Tensor], names: Sequence[str], exponent: float, unbiased: bool
) -> Tensor:
    """The (V, n, n) stack of centred distance matrices of V validated variables, in float64,
    differentiable: U-centred when ``unbiased``, else double-centred. A U-centred matrix that
    is zero but for rounding (see ``_ZERO_RATIO``) is returned as exactly 0.

    Few operations whatever V: one Gram product per variable, then the (V, n, n) stack
    is centred by broadcasting. One read back to the host: the NaN/Inf check."""
    n = samples[0].shape[0]
    a = _distance_stack(samples, names, exponent)
    if not unbiased:
        rows = a.mean(-1, keepdim=True)
        return a - rows - rows.mT + rows.mean(-2, keepdim=True)
    rows = a.sum(-1, keepdim=True) / (n - 2)
    total = rows.sum(-2, keepdim=True) / (n - 1)
    off = 1 - torch.eye(n, dtype=ACC, device=a.device)
    c = (a - rows - rows.mT + total) * off
    mean = a.detach().mean((-2, -1))
    live = c.detach().square().mean((-2, -1)) > (_ZERO_RATIO * mean) ** 2
    return c * live[:, None, None]


def _products(
    samples: Sequence[Tensor], names: Sequence[str], exponent: float, unbiased: bool
) -> Tensor:
    """The (V, V) matrix of inner products of the centred distance matrices (:func:`_centred`):
    ``(A_v . A_w)`` of the U-centred matrices when ``unbiased``, else the mean products of the
    double-centred ones; all from one ``einsum``."""
    n = samples[0].shape[0]
    c = _centred(samples, names, exponent, unbiased)
    return torch.einsum("vij,wij->vw", c, c) / (n * (n - 3) if unbiased else n * n)


def _projected_products(samples: Sequence[Tensor], names: Sequence[str], exponent: float) -> Tensor:
    """(P(A) . P(B)), (P(A) . P(A)), (P(B) . P(B)) for samples (x, y, z), with P the projection
    off z's U-centred matrix C, formed explicitly: P(M) = M - (M . C) / (C . C) C. Computing
    the partial statistics from the three pairwise correlations instead (dcor's formula)
    loses accuracy as eps / (1 - r_xz) when x and z nearly agree; the explicit projection
    only as eps / sqrt(1 - r_xz^2)."""
    n = samples[0].shape[0]
    c = _centred(samples, names, exponent, unbiased=True)
    p = torch.einsum("vij,ij->v", c, c[2])  # (A.C), (B.C), (C.C), without the 1/(n(n-3))
    k = _safe_div(p[:2], p[2])
    proj = c[:2] - k[:, None, None] * c[2]
    q = torch.einsum("vij,wij->vw", proj, proj) / (n * (n - 3))
    # nothing left (e.g. x is z): the projection is the rounding of the subtraction
    var = torch.einsum("vij,vij->v", c[:2], c[:2]) / (n * (n - 3))
    live = (q.diagonal() > _ZERO_RATIO**2 * var).to(q.dtype)
    return torch.stack([q[0, 1] * live[0] * live[1], q[0, 0] * live[0], q[1, 1] * live[1]])


def _stats(x: Tensor, y: Tensor, exponent: float, unbiased: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(cov_xy, var_x, var_y) of validated samples, in float64."""
    p = _products([x, y], ["x", "y"], exponent, unbiased)
    return p[0, 1], p[0, 0], p[1, 1]


def _correlation(cov: Tensor, var_x: Tensor, var_y: Tensor, low: float = -1.0) -> Tensor:
    """cov / sqrt(var_x var_y), 0 where a variance is 0; clamped to [low, 1], since rounding
    alone can step past the bounds Cauchy-Schwarz sets."""
    return _safe_div(cov, _safe_sqrt((var_x * var_y).abs())).clamp(low, 1)


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


def partial_distance_covariance(
    x: Tensor, y: Tensor, z: Tensor, *, exponent: float = 1.0
) -> Tensor:
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
    # (P_z(A) . P_z(B)) with P_z the projection off C, formed explicitly
    cov = _projected_products([x, y, z], ["x", "y", "z"], exponent)[0]
    return cov.to(_result_dtype(x, y, z))


def partial_distance_correlation(
    x: Tensor, y: Tensor, z: Tensor, *, exponent: float = 1.0
) -> Tensor:
    r"""Partial distance correlation :math:`\mathcal{R}^*(x, y; z)`.

    Equals ``dcor.partial_distance_correlation(x, y, z)``, which forms it from the
    bias-corrected correlations :math:`r_{xy}, r_{xz}, r_{yz}`,

    .. math::
        \mathcal{R}^*(x, y; z) = \frac{r_{xy} - r_{xz} r_{yz}}
        {\sqrt{1 - r_{xz}^2}\sqrt{1 - r_{yz}^2}},

    the correlation of :math:`\tilde A` and :math:`\tilde B` projected off
    :math:`\tilde C`. Here the projections are formed explicitly, which stays exact (to
    1e-8 in float64, tested against a 50-digit oracle) when x and z nearly agree, where
    the formula above loses accuracy as :math:`\epsilon / (1 - r_{xz})`. It is 0 when a
    projection leaves nothing (e.g. ``x`` is ``z``); a constant ``z`` removes nothing. Needs
    ``n >= 4``. UniCAM's distilled score is
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
    cov, var_x, var_y = _projected_products([x, y, z], ["x", "y", "z"], exponent).unbind()
    return _correlation(cov, var_x, var_y).to(_result_dtype(x, y, z))
