r"""Relevance score (RS, paper Sec. 3.2.2, Eq. 9), plain or of the unique features."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from captum_unicam.attr._targets import rows_of
from captum_unicam.errors import InputError
from captum_unicam.metrics._features import (
    LABEL_FIX,
    MIN_BATCH,
    MIN_BATCH_PARTIAL,
    AttributionsType,
    Estimator,
    Perturbation,
    Scores,
    check_attributions,
    check_estimator,
    check_forward_func,
    check_inputs,
    check_label_embeddings,
    check_layer,
    check_perturbation,
    check_pooling,
    label_degeneracy,
    layer_features,
    paired_features,
    perturb,
    single_input,
    target_indices,
    warn_degenerate,
)
from captum_unicam.perturb import mask_multiply

__all__ = ["relevance_score", "label_vectors"]


def label_vectors(target: Any, n: int, label_embeddings: Optional[Tensor] = None) -> Tensor:
    r"""The label vectors :math:`Y` of a batch, float64 ``(n, e)``.

    - ``target`` an ``(n, e)`` float tensor: used as it is (``label_embeddings`` must be None);
    - otherwise ``target`` holds ``n`` class indices and :math:`Y = E[t]`, with ``E`` =
      ``label_embeddings`` ``(num_classes, e)``, or one-hot vectors of width
      ``max(target) + 1`` when it is None. The width of a one-hot code does not change
      any distance between label vectors (each pair is 0 or :math:`\sqrt 2` apart), so
      RS with one-hot labels does not depend on the number of classes.

    Raises:
        InputError: a single class index for the whole batch; a target of the wrong
                    length or type; a negative index; a label-embedding table with
                    ``num_classes <= max(target)``; NaN/Inf in the table or vectors.
    """
    if isinstance(target, Tensor) and target.is_floating_point():
        if target.dim() != 2 or target.shape[0] != n:
            raise InputError(
                f"a float target must be an ({n}, e) tensor of label vectors; got shape "
                f"{tuple(target.shape)}."
            )
        if label_embeddings is not None:
            raise InputError(
                "pass label vectors as target or label_embeddings with class indices, not both."
            )
        if not torch.isfinite(target).all():
            raise InputError("target label vectors contain NaN or Inf.")
        return target.detach().to(torch.float64)
    t = target_indices(target, n)
    check_label_embeddings(label_embeddings)
    top = int(t.max())
    if label_embeddings is not None and label_embeddings.shape[0] <= top:
        raise InputError(
            f"label_embeddings has {label_embeddings.shape[0]} rows but target holds class index "
            f"{top}; it needs one row per class (at least {top + 1}), in class-index order."
        )
    table = None if label_embeddings is None else label_embeddings.detach()
    return rows_of(t, table, top + 1).to(torch.float64)


def relevance_score(
    forward_func: Callable,
    layer: nn.Module,
    inputs: Tensor,
    *,
    target: Any,
    label_embeddings: Optional[Tensor] = None,
    base_forward_func: Optional[Callable] = None,
    base_layer: Optional[nn.Module] = None,
    attributions: AttributionsType = None,
    perturbation: Perturbation = mask_multiply,
    additional_forward_args: Any = None,
    estimator: Estimator = "u",
    attention_mask: Optional[Tensor] = None,
    pooling: str = "mean",
) -> Tensor:
    r"""Relevance score (RS) of a model's features at a layer on one batch.

    .. math::
        \text{RS} = \mathcal{R}^{*2}_n(\hat x, Y), \quad \hat x = f(\text{perturb}(I, H))

    (paper Eq. 9): the bias-corrected squared distance correlation between the
    flattened output of ``layer`` on the perturbed batch and the label vectors
    :math:`Y` of the targets (BERT embeddings in the paper: pass
    ``label_embeddings=embed_labels(class_names)``; default one-hot). Over a data set,
    RS is the mean over batches (:func:`~captum_unicam.metrics.evaluate_kd`).

    With ``base_forward_func`` and ``base_layer`` it is the RS of the features *unique*
    to ``forward_func``: the partial distance correlation
    :math:`\mathcal{R}^*(\hat x, Y; \hat x_{base})` (``dcor.partial_distance_correlation``),
    the relevance left in this model's features once everything the Base's features
    explain is removed. For the Student given the Base this is the RS of the distilled
    features; swap the models for the residual features (the Base given the Student).

    The arguments after ``inputs`` are keyword-only, in the order of
    :func:`~captum_unicam.feature_similarity_score`.

    Args:
        forward_func (Callable): the model (or a function running it).
        layer (torch.nn.Module): the layer whose output is scored.
        inputs (Tensor): one batch ``(N, C, H, W)``; ``N >= 4``, or ``N >= 5`` with a
                    Base (at ``N = 4`` the partial correlation is always +-1).
        target (list or Tensor): class index of each sample (list or 1-D tensor of N
                    integers); or an ``(N, e)`` float tensor of label vectors. A single
                    int is refused: every sample would have the same label.
        label_embeddings (Tensor, optional): ``(num_classes, e)`` table indexed by
                    target. Default: None (one-hot, width ``max(target) + 1``; the
                    value is the same for any larger width).
        base_forward_func (Callable, optional): the model whose features are
                    partialled out. Default: None (plain RS).
        base_layer (torch.nn.Module, optional): its layer; given together with
                    ``base_forward_func``.
        attributions (Tensor or tuple[Tensor, Tensor], optional): saliency ``(N, 1,
                    h, w)``, any spatial size. With a Base, one tensor perturbs the
                    inputs of both models (paper Eq. 7), a pair ``(attributions,
                    base_attributions)`` perturbs each with its own map. Default:
                    None (raw features, no perturbation).
        perturbation (Callable or None, optional): ``perturbation(inputs,
                    attributions)`` returns the perturbed batch: ``mask_multiply``
                    (default, Eq. C.8), ``road_impute`` or your own; None: raw features.
        additional_forward_args (Any, optional): extra arguments for the forward
                    function(s), as in Captum. Default: None.
        estimator (str, optional): ``"u"`` (bias-corrected, the paper's) or ``"v"``
                    (biased ``distance_correlation_sqr``). The partial distance
                    correlation exists only as a U-statistic, so a Base requires
                    ``"u"``. Default: "u".
        attention_mask (Tensor, optional): for text, the ``(N, T)`` mask of the batch (1
                    for valid tokens, 0 for padding). A token layer ``(N, T, C)`` is then read
                    as one vector per sequence pooled over its valid tokens, so padding never
                    enters the statistics; unless it is one of
                    ``additional_forward_args``, the mask is also passed to the forward
                    function(s) as the keyword ``attention_mask`` (Hugging Face models take
                    it so). ``inputs`` may then be integer token ids (raw features only:
                    no attributions). Default: None.
        pooling (str, optional): how a token layer is read: ``"mean"`` over the valid
                    tokens, or ``"cls"``, the first token. Default: "mean".

    Returns:
        Tensor: a 0-dim float64 tensor. It is 0, with a
        :class:`~captum_unicam.UniCAMWarning` that names the cause and the fix, when the
        labels carry no information in the batch (one class; or one-hot labels of a
        batch in which no class repeats: all label vectors equally far apart), when the
        features are the same for every sample, or (with a Base) when both models'
        features have the same distance structure or the Base's explain the labels fully.

    Raises:
        InputError: fewer than 4 samples (5 with a Base); NaN/Inf; attributions whose
                    shape cannot be matched to the inputs; a label-embedding table
                    smaller than the largest target; a single target for the whole
                    batch; only one of ``base_forward_func`` / ``base_layer``; a Base
                    with ``estimator="v"``.

    Examples::

        >>> from captum_unicam import UniCAM, embed_labels, relevance_score
        >>> E = embed_labels(class_names)
        >>> distilled = UniCAM(student, student.layer4, base, base.layer4,
        ...                    label_embeddings=E).attribute(x, target=y)
        >>> rs = relevance_score(student, student.layer4, x, target=y, label_embeddings=E,
        ...                      base_forward_func=base, base_layer=base.layer4,
        ...                      attributions=distilled)   # RS of the distilled features
    """
    inputs = single_input(inputs)
    check_forward_func(forward_func, "forward_func")
    check_layer(layer, "layer")
    if (base_forward_func is None) != (base_layer is None):
        raise InputError(
            "pass base_forward_func and base_layer together (the RS of the features unique to "
            "forward_func, given the Base's), or neither (plain RS)."
        )
    with_base = base_forward_func is not None
    tokens = attributions is None
    if with_base:
        check_inputs(
            inputs, MIN_BATCH_PARTIAL, "RS given a Base (a partial distance correlation)", tokens
        )
    else:
        check_inputs(inputs, MIN_BATCH, tokens=tokens)
    check_pooling(pooling, attention_mask, inputs)
    check_estimator(estimator)
    check_perturbation(perturbation, attributions)
    y = label_vectors(target, inputs.shape[0], label_embeddings)
    if not with_base:
        if isinstance(attributions, (tuple, list)):
            raise InputError(
                "a pair of attributions needs a Base (base_forward_func=, base_layer=); without "
                "one pass one tensor."
            )
        if attributions is not None:
            check_attributions(attributions, inputs)
    else:
        check_forward_func(base_forward_func, "base_forward_func")
        check_layer(base_layer, "base_layer")
        if estimator != "u":
            raise InputError(
                "with a Base, RS is the partial distance correlation, which exists only as a "
                "bias-corrected U-statistic (as in dcor); use estimator='u'."
            )
    degenerate = label_degeneracy(y)
    if degenerate is not None:
        warn_degenerate(f"RS set to 0: {degenerate}. To fix it, {LABEL_FIX}.")
        return torch.zeros((), dtype=torch.float64)
    if not with_base:
        feats = layer_features(
            forward_func,
            layer,
            perturb(inputs, attributions, perturbation),
            additional_forward_args,
            attention_mask,
            pooling,
        )
        scores = Scores({"x": feats, "y": y.to(feats.device)}, {"x": "the model's features"})
        value, reason = scores.dcor("x", "y", estimator)
    else:
        feats, feats_base = paired_features(
            ((forward_func, layer), (base_forward_func, base_layer)),
            inputs,
            attributions,
            perturbation,
            additional_forward_args,
            ("model", "base"),
            attention_mask,
            pooling,
        )
        scores = Scores(
            {"x": feats, "y": y.to(feats.device), "z": feats_base},
            {"x": "the model's features", "z": "the Base's features"},
        )
        value, reason = scores.pdcor("x", "y", "z")
    if reason is not None:
        warn_degenerate(f"RS set to 0: {reason}.")
    return value
