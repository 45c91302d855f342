r"""Feature similarity score (FSS, paper Sec. 3.2.1, Eq. 7-8), on one batch.

FSS of a batch is the bias-corrected squared distance correlation between the
Student's and the Base's features at a layer, both read on the *perturbed* images
(Eq. 7): :math:`\hat x_s = f_s(I \odot H)`, :math:`\hat x_b = f_b(I \odot H)`. Over a
data set, FSS is the mean over batches (Eq. 8); see
:func:`captum_unicam.metrics.evaluate_kd`. The degenerate cases (a batch too small, labels
that carry no information, constant features) are described in ``docs/method.md``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor, nn

from captum_unicam.metrics._features import (
    AttributionsType,
    Estimator,
    Perturbation,
    Scores,
    check_estimator,
    check_forward_func,
    check_inputs,
    check_layer,
    check_perturbation,
    check_pooling,
    paired_features,
    single_input,
    warn_degenerate,
)
from captum_unicam.perturb import mask_multiply

__all__ = ["feature_similarity_score"]


def feature_similarity_score(
    forward_func: Callable,
    layer: nn.Module,
    inputs: Tensor,
    *,
    base_forward_func: Callable,
    base_layer: nn.Module,
    attributions: AttributionsType = None,
    perturbation: Perturbation = mask_multiply,
    additional_forward_args: Any = None,
    estimator: Estimator = "u",
    attention_mask: Optional[Tensor] = None,
    pooling: str = "mean",
) -> Tensor:
    r"""Feature similarity score (FSS) of a Student and a Base model on one batch.

    .. math::
        \text{FSS} = \mathcal{R}^{*2}_n(\hat x_s, \hat x_b),\quad
        \hat x_s = f_s(\text{perturb}(I, H)),\ \hat x_b = f_b(\text{perturb}(I, H))

    (paper Eq. 7-8), where :math:`f` flattens the output of ``layer`` /
    ``base_layer`` and :math:`\mathcal{R}^{*2}_n` is the bias-corrected squared
    distance correlation ``stats.u_distance_correlation_sqr`` (= ``dcor``'s). Over a
    data set, FSS is the mean over batches
    (:func:`~captum_unicam.metrics.evaluate_kd`).

    Which map perturbs which model: Eq. 7 perturbs one image :math:`I \odot H` and
    feeds it to both models, so with one ``attributions`` tensor both models see the
    *same* perturbed images, and FSS asks whether they represent the same evidence
    alike. Appendix C reads :math:`H` as the map "of one model" and feeds each model
    the image perturbed with its own map; pass a pair
    ``(attributions, base_attributions)`` for that reading (e.g. each model's own
    Grad-CAM, as in the paper's Fig. 4). ``attributions=None`` compares the raw
    features (no perturbation).

    The arguments after ``inputs`` are keyword-only; the same names and order serve
    :func:`~captum_unicam.relevance_score` and :func:`~captum_unicam.metrics.evaluate_kd`.
    Args:
        forward_func (Callable): the Student (or a function running it).
        layer (torch.nn.Module): the Student's layer whose output is compared.
        inputs (Tensor): one batch ``(N, C, H, W)``, ``N >= 4``.
        base_forward_func (Callable): the Base model (keyword-only).
        base_layer (torch.nn.Module): the Base's layer (keyword-only). Its width may differ.
        attributions (Tensor or tuple[Tensor, Tensor], optional): saliency ``(N, 1,
                    h, w)`` of any spatial size (``perturbation`` upsamples it), used
                    for both models; or a pair (Student's map, Base's map). Default:
                    None (raw features).
        perturbation (Callable or None, optional): ``perturbation(inputs,
                    attributions)`` returns the perturbed batch: ``mask_multiply``
                    (paper Eq. C.8, default), ``road_impute`` (ROAD, as in the paper's
                    Fig. 1) or your own; None scores the raw features. (Not Captum's
                    ``perturb_func`` contract of ``infidelity``.)
        additional_forward_args (Any, optional): extra arguments for both forward
                    functions, as in Captum. Default: None.
        estimator (str, optional): ``"u"``: bias-corrected dCor² (paper). ``"v"``:
                    the biased V-statistic ``distance_correlation_sqr``. Default: "u".
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
        Tensor: a 0-dim float64 tensor (in [-1, 1] for "u", [0, 1] for "v"). It is 0,
        with a :class:`~captum_unicam.UniCAMWarning` naming the cause, when one model's
        features are the same for every sample (e.g. every map is zero).

    Raises:
        InputError: fewer than 4 samples; NaN/Inf in inputs or attributions;
                    attributions whose shape cannot be matched to the inputs; a bad
                    estimator; a layer the forward pass does not reach.

    Examples::

        >>> from captum.attr import LayerGradCam
        >>> from captum_unicam import feature_similarity_score
        >>> grad_cam = LayerGradCam(student, student.layer4)
        >>> cam = grad_cam.attribute(x, target=y, relu_attributions=True)
        >>> fss = feature_similarity_score(student, student.layer4, x, base_forward_func=base,
        ...                                base_layer=base.layer4, attributions=cam)
    """
    inputs = single_input(inputs)
    check_inputs(inputs, tokens=attributions is None)
    check_pooling(pooling, attention_mask, inputs)
    check_estimator(estimator)
    check_forward_func(forward_func, "forward_func")
    check_forward_func(base_forward_func, "base_forward_func")
    check_layer(layer, "layer")
    check_layer(base_layer, "base_layer")
    check_perturbation(perturbation, attributions)
    feats_s, feats_b = paired_features(
        ((forward_func, layer), (base_forward_func, base_layer)),
        inputs,
        attributions,
        perturbation,
        additional_forward_args,
        ("student", "base"),
        attention_mask,
        pooling,
    )
    scores = Scores(
        {"s": feats_s, "b": feats_b}, {"s": "the Student's features", "b": "the Base's features"}
    )
    value, reason = scores.dcor("s", "b", estimator)
    if reason is not None:
        warn_degenerate(f"FSS set to 0: {reason}.")
    return value
