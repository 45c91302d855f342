r"""Relevance score (RS, paper Sec. 3.2.2, Eq. 9), plain or of the unique features."""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor, nn

from captum_unicam import stats
from captum_unicam.metrics.fss import (
    AttributionsType,
    _check_attributions,
    _check_estimator,
    _check_inputs,
    _check_layer,
    _check_perturb_func,
    paired_features,
    _single_input,
    dcor_sqr,
    layer_features,
    mask_multiply,
    perturb,
)

__all__ = ["relevance_score", "label_vectors"]


def _check_label_embeddings(label_embeddings: Optional[Tensor]) -> None:
    if label_embeddings is None:
        return
    if not isinstance(label_embeddings, Tensor) or label_embeddings.dim() != 2:
        raise ValueError(
            "label_embeddings must be a 2-D tensor (num_classes, e), one row per class (e.g. "
            f"embed_labels(class_names)); got {getattr(label_embeddings, 'shape', type(label_embeddings).__name__)}."
        )
    if not label_embeddings.is_floating_point():
        raise ValueError(f"label_embeddings must be floating point, got {label_embeddings.dtype}.")
    if not torch.isfinite(label_embeddings).all():
        raise ValueError("label_embeddings contain NaN or Inf.")


def _target_indices(target: Any, n: int) -> Tensor:
    if isinstance(target, int) or (isinstance(target, Tensor) and target.dim() == 0):
        raise ValueError(
            "RS needs one target per sample (a list or 1-D tensor of N class indices, or an (N, e) "
            f"float tensor of label vectors); got a single class index {int(target)}, which makes "
            "the labels constant over the batch and RS meaningless."
        )
    if target is None:
        raise ValueError("target is required: the class index of each sample (list or 1-D tensor).")
    t = target if isinstance(target, Tensor) else torch.as_tensor(target)
    if t.dim() != 1 or t.shape[0] != n or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(
            f"target must hold one integer class index per sample ({n}), as a list or 1-D tensor, "
            f"or be an ({n}, e) float tensor of label vectors; got shape {tuple(t.shape)}, dtype {t.dtype}."
        )
    if n and int(t.min()) < 0:
        raise ValueError(f"target holds a negative class index {int(t.min())}.")
    return t.long()


def label_vectors(target: Any, n: int, label_embeddings: Optional[Tensor] = None) -> Tensor:
    r"""The label vectors :math:`Y` of a batch, float64 ``(n, e)``.

    - ``target`` an ``(n, e)`` float tensor: used as it is (``label_embeddings`` must be None);
    - otherwise ``target`` holds ``n`` class indices and :math:`Y = E[t]`, with ``E`` =
      ``label_embeddings`` ``(num_classes, e)``, or one-hot vectors of width
      ``max(target) + 1`` when it is None. The width of a one-hot code does not change
      any distance between label vectors (each pair is 0 or :math:`\sqrt 2` apart), so
      RS with one-hot labels does not depend on the number of classes.

    Raises:
        ValueError: a single class index for the whole batch; a target of the wrong
                    length or type; a negative index; a label-embedding table with
                    ``num_classes <= max(target)``; NaN/Inf in the table or vectors.
    """
    if isinstance(target, Tensor) and target.is_floating_point():
        if target.dim() != 2 or target.shape[0] != n:
            raise ValueError(
                f"a float target must be an ({n}, e) tensor of label vectors; got shape {tuple(target.shape)}."
            )
        if label_embeddings is not None:
            raise ValueError("pass label vectors as target or label_embeddings with class indices, not both.")
        if not torch.isfinite(target).all():
            raise ValueError("target label vectors contain NaN or Inf.")
        return target.detach().to(torch.float64)
    t = _target_indices(target, n)
    _check_label_embeddings(label_embeddings)
    top = int(t.max())
    if label_embeddings is None:
        return torch.nn.functional.one_hot(t, top + 1).to(torch.float64)
    if label_embeddings.shape[0] <= top:
        raise ValueError(
            f"label_embeddings has {label_embeddings.shape[0]} rows but target holds class index "
            f"{top}; it needs one row per class (at least {top + 1}), in class-index order."
        )
    return label_embeddings.detach()[t.to(label_embeddings.device)].to(torch.float64)


def relevance_score(
    forward_func: Callable,
    layer: nn.Module,
    inputs: Tensor,
    target: Any,
    attributions: AttributionsType = None,
    label_embeddings: Optional[Tensor] = None,
    perturb_func: Callable = mask_multiply,
    given: Optional[Tuple[Callable, nn.Module]] = None,
    additional_forward_args: Any = None,
    estimator: str = "u",
) -> Tensor:
    r"""Relevance score (RS) of a model's features at a layer on one batch.

    .. math::
        \text{RS} = \mathcal{R}^{*2}_n(\hat x, Y), \quad \hat x = f(\text{perturb}(I, H))

    (paper Eq. 9): the bias-corrected squared distance correlation between the
    flattened output of ``layer`` on the perturbed batch and the label vectors
    :math:`Y` of the targets (BERT embeddings in the paper: pass
    ``label_embeddings=embed_labels(class_names)``; default one-hot). Over a data set,
    RS is the mean over batches (:func:`~captum_unicam.metrics.evaluate_kd`).

    With ``given=(base_forward_func, base_layer)`` it is the RS of the *unique*
    features: the partial distance correlation
    :math:`\mathcal{R}^*(\hat x, Y; \hat x_{given})` (``dcor.partial_distance_correlation``),
    the relevance left in this model's features once everything the other model's
    features explain is removed. For the Student given the Base this is the RS of the
    distilled features; for the Base given the Student, of the residual features.

    Args:
        forward_func (Callable): the model (or a function running it).
        layer (torch.nn.Module): the layer whose output is scored.
        inputs (Tensor): one batch ``(N, C, H, W)``, ``N >= 4``.
        target (list, Tensor): class index of each sample (list or 1-D tensor of N
                    integers); or an ``(N, e)`` float tensor of label vectors.
        attributions (Tensor or tuple[Tensor, Tensor], optional): saliency ``(N, 1,
                    h, w)``, any spatial size. With ``given``, one tensor perturbs the
                    inputs of both models (paper Eq. 7), a pair ``(attributions,
                    given_attributions)`` perturbs each with its own map. Default:
                    None (raw features, no perturbation).
        label_embeddings (Tensor, optional): ``(num_classes, e)`` table indexed by
                    target. Default: None (one-hot, width ``max(target) + 1``; the
                    value is the same for any larger width).
        perturb_func (Callable, optional): ``perturb_func(inputs, attributions)``:
                    ``mask_multiply`` (default, Eq. C.8) or ``road_impute``.
        given (tuple, optional): ``(base_forward_func, base_layer)``, the model whose
                    features are partialled out. Default: None.
        additional_forward_args (Any, optional): extra arguments for the forward
                    function(s), as in Captum. Default: None.
        estimator (str, optional): ``"u"`` (bias-corrected, the paper's) or ``"v"``
                    (biased ``distance_correlation_sqr``). The partial distance
                    correlation exists only as a U-statistic, so ``given`` requires
                    ``"u"``. Default: "u".

    Returns:
        Tensor: a 0-dim float64 tensor.

    Raises:
        ValueError: fewer than 4 samples; NaN/Inf; attributions whose shape cannot be
                    matched to the inputs; a label-embedding table smaller than the
                    largest target; a single target for the whole batch; ``given``
                    with ``estimator="v"``.

    Examples::

        >>> from captum_unicam import UniCAM, embed_labels, relevance_score
        >>> E = embed_labels(class_names)
        >>> distilled = UniCAM(student, student.layer4, base, base.layer4,
        ...                    label_embeddings=E).attribute(x, target=y)
        >>> rs = relevance_score(student, student.layer4, x, y, distilled, label_embeddings=E,
        ...                      given=(base, base.layer4))   # RS of the distilled features
    """
    inputs = _single_input(inputs)
    _check_inputs(inputs)
    _check_estimator(estimator)
    _check_layer(layer, "layer")
    _check_perturb_func(perturb_func)
    y = label_vectors(target, inputs.shape[0], label_embeddings)
    if given is None:
        if isinstance(attributions, (tuple, list)):
            raise ValueError(
                "a pair of attributions needs given=(base_forward_func, base_layer); without "
                "given pass one tensor."
            )
        if attributions is not None:
            _check_attributions(attributions, inputs)
        feats = layer_features(forward_func, layer, perturb(inputs, attributions, perturb_func), additional_forward_args)
        return dcor_sqr(feats, y.to(feats.device), estimator)

    if not (isinstance(given, (tuple, list)) and len(given) == 2 and callable(given[0])):
        raise ValueError("given must be a pair (base_forward_func, base_layer).")
    _check_layer(given[1], "given[1] (the given model's layer)")
    if estimator != "u":
        raise ValueError(
            "given= computes the partial distance correlation, which exists only as a bias-"
            "corrected U-statistic (as in dcor); use estimator='u'."
        )
    feats, feats_given = paired_features(
        ((forward_func, layer), (given[0], given[1])),
        inputs, attributions, perturb_func, additional_forward_args, ("model", "given"),
    )
    return stats.partial_distance_correlation(feats, y.to(feats.device), feats_given)
