r"""Internal: the layouts of transformer layers, for UniCAM and the metrics.

A transformer block outputs **tokens**, activations ``(N, T, C)`` with the channels last,
where a CNN layer outputs a feature map ``(N, C, h, w)``. Two readings are defined here:

- **Token layers** (text): one map value per token. Channel weights are the gradient
  averaged over the *valid* tokens (``attention_mask`` 1), the map is the channel sum of
  weight times activation, ReLU optional, and padding tokens are exactly 0
  (:func:`token_gradcam`). Maps have shape ``(N, T)``, aligned with ``input_ids`` and
  ``attention_mask`` (docs/transformers.md says why). The representation read for the
  distance statistics is pooled over the valid tokens, or the CLS token
  (:func:`pool_tokens`), so padding cannot change a score.
- **Vision transformer layers**: ``T = s * s + k`` tokens, ``k`` special tokens first (CLS;
  DeiT's CLS and distillation tokens, ``k = 2``), are laid out on the ``s x s`` patch grid
  ``(N, C, s, s)`` (:func:`vit_grid`), after which the feature-map rule of Grad-CAM applies.

:func:`choose_layout` decides between the two; UniCAM and the metrics apply its rule when no
``reshape_transform`` is given. :func:`vit_grid` is also a ``reshape_transform`` as it stands.

This module is internal, shared by the attribution and the metrics (as Captum's
``_utils``): its names may change between releases.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from captum_unicam.errors import InputError

__all__ = [
    "POOLINGS",
    "check_mask",
    "choose_layout",
    "forward_mask_kwargs",
    "grid_side",
    "mask_from_args",
    "pool_tokens",
    "token_gradcam",
    "vit_grid",
]

#: Ways to read one vector per sequence from a token layer.
POOLINGS = ("mean", "cls")


def _check_tokens(activation: Any, name: str = "activation") -> Tensor:
    if not isinstance(activation, Tensor) or activation.dim() != 3:
        got = (
            tuple(activation.shape) if isinstance(activation, Tensor) else type(activation).__name__
        )
        raise InputError(
            f"`{name}` must be a token layer's activations (N, T, C), got {got}; read a "
            "transformer block's hidden states (captum_unicam._outputs.hidden_of)."
        )
    if not activation.is_floating_point():
        raise InputError(f"`{name}` must be floating point, got {activation.dtype}.")
    return activation


def check_mask(attention_mask: Tensor | None, n: int, t: int) -> Tensor | None:
    r"""Checks an attention mask against a token layer of ``n`` sequences of ``t`` tokens.

    Args:

        attention_mask (Tensor or None): ``(N, T)``, 1 (or True) for a valid token and 0
                    for padding, as a Hugging Face tokenizer returns it. None: every token
                    is valid.
        n (int): The number of sequences N.
        t (int): The number of tokens T of the layer.

    Returns:
        *Tensor* or None: the mask as a bool tensor ``(N, T)`` (None stays None).

    Raises:
        InputError: wrong shape, values other than 0 and 1, or a sequence with no valid
        token.
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != (n, t):
        got = (
            tuple(attention_mask.shape)
            if isinstance(attention_mask, Tensor)
            else type(attention_mask).__name__
        )
        raise InputError(
            f"`attention_mask` must be an ({n}, {t}) tensor of 0 and 1, one row per sequence "
            f"and one entry per token of the layer; got {got}. Pass the tokenizer's "
            "`attention_mask` for the same batch."
        )
    if attention_mask.dtype != torch.bool and not bool(
        ((attention_mask == 0) | (attention_mask == 1)).all()
    ):
        raise InputError("`attention_mask` must hold only 0 (padding) and 1 (valid token).")
    mask = attention_mask.to(torch.bool)
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise InputError(
            f"Sequences {empty[:5]} have no valid token in `attention_mask`; every sequence "
            "needs at least one."
        )
    return mask


def token_gradcam(
    activation: Tensor,
    gradient: Tensor,
    attention_mask: Tensor | None = None,
    relu_attributions: bool = True,
) -> Tensor:
    r"""Grad-CAM on a token layer: one value per token.

    With activations :math:`A \in \mathbb{R}^{N \times T \times C}`, the gradient :math:`G`
    of a score with respect to them, and the mask :math:`m_{it} \in \{0, 1\}`:

    .. math::
        \alpha_{ic} = \frac{\sum_t m_{it} G_{itc}}{\sum_t m_{it}}, \qquad
        M_{it} = m_{it} \, \mathrm{ReLU}\Big(\sum_c \alpha_{ic} A_{itc}\Big).

    Padding tokens get exactly 0, and neither their activations nor their gradients enter
    the weights, so padding a batch further leaves the maps of the real tokens unchanged.

    Args:

        activation (Tensor): ``(N, T, C)`` activations of the token layer.
        gradient (Tensor): ``(N, T, C)`` gradient of the explained score with respect to
                    ``activation`` (a class logit for Grad-CAM, a UniCAM score).
        attention_mask (Tensor, optional): ``(N, T)``, 1 for valid tokens, 0 for padding.
                    Default: None (all tokens valid)
        relu_attributions (bool, optional): Apply the ReLU, as Grad-CAM and UniCAM do.
                    Default: True

    Returns:
        *Tensor* of **maps**:
        - **maps** (*Tensor*): ``(N, T)``, in the dtype of ``activation``.

    Examples::

        >>> h = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        >>> g, = torch.autograd.grad(logit, h)
        >>> maps = token_gradcam(h, g, mask)        # (N, T)
    """
    activation = _check_tokens(activation)
    gradient = _check_tokens(gradient, "gradient")
    if gradient.shape != activation.shape:
        raise InputError(
            f"`gradient` {tuple(gradient.shape)} must have the shape of `activation` "
            f"{tuple(activation.shape)}."
        )
    n, t, _ = activation.shape
    mask = check_mask(attention_mask, n, t)
    a, g = activation.detach(), gradient.detach()
    if mask is None:
        weights = g.mean(dim=1)
    else:
        m = mask.to(g.dtype).unsqueeze(-1)
        weights = (g * m).sum(dim=1) / m.sum(dim=1)
    maps = torch.einsum("ntc,nc->nt", a, weights.to(a.dtype))
    if relu_attributions:
        maps = maps.clamp_min(0)
    if mask is not None:
        maps = maps.masked_fill(~mask.to(maps.device), 0.0)
    return maps


def pool_tokens(
    activation: Tensor, attention_mask: Tensor | None = None, pooling: str = "mean"
) -> Tensor:
    r"""One vector per sequence from a token layer, for the distance statistics.

    ``"mean"``: the mean over the valid tokens, :math:`\sum_t m_{it} A_{it} / \sum_t m_{it}`;
    ``"cls"``: the first token (BERT's [CLS], a ViT's class token). Either way padding does
    not enter, so padding a batch further leaves it unchanged. Differentiable.

    Args:

        activation (Tensor): ``(N, T, C)``.
        attention_mask (Tensor, optional): ``(N, T)``, 1 for valid tokens.
                    Default: None (all valid)
        pooling (str, optional): ``"mean"`` or ``"cls"``.
                    Default: "mean"

    Returns:
        *Tensor* of **representation**:
        - **representation** (*Tensor*): ``(N, C)``.

    Examples::

        >>> x = pool_tokens(hidden, attention_mask)     # (N, C)
    """
    activation = _check_tokens(activation)
    if pooling not in POOLINGS:
        raise InputError(f"`pooling` must be one of {POOLINGS}, got {pooling!r}.")
    n, t, _ = activation.shape
    mask = check_mask(attention_mask, n, t)
    if pooling == "cls":
        if mask is not None and not bool(mask[:, 0].all()):
            raise InputError(
                "pooling='cls' reads the first token, but `attention_mask` marks it as "
                "padding for some sequences (left padding?); pad on the right or use "
                "pooling='mean'."
            )
        return activation[:, 0]
    if mask is None:
        return activation.mean(dim=1)
    m = mask.to(activation.dtype).unsqueeze(-1)
    return (activation * m).sum(dim=1) / m.sum(dim=1)


def grid_side(num_tokens: int, num_special: int | None = None) -> tuple[int, int] | None:
    r"""The patch grid of a vision transformer layer with ``num_tokens`` tokens.

    Args:

        num_tokens (int): T, the number of tokens of the layer.
        num_special (int, optional): The number of special tokens before the patches
                    (1: CLS, as ViT; 2: CLS and distillation, as DeiT; 0: none). None
                    tries 1, then 2, for a side s >= 2 (at most one of them fits:
                    no two squares >= 4 differ by 1).
                    Default: None

    Returns:
        ``(s, k)`` with ``T = s * s + k``, or None when the tokens cannot be laid out.
    """
    candidates = (1, 2) if num_special is None else (num_special,)
    smallest = 2 if num_special is None else 1
    for k in candidates:
        rest = num_tokens - k
        side = math.isqrt(rest) if rest > 0 else 0
        if side >= smallest and side * side == rest:
            return side, k
    return None


def vit_grid(activation: Tensor, num_special: int | None = None) -> Tensor:
    r"""Lays a vision transformer's tokens out on the patch grid: ``(N, T, C)`` to
    ``(N, C, s, s)``, dropping the ``k`` special tokens at the start (``T = s * s + k``).

    Usable as UniCAM's ``reshape_transform`` as it stands (it is differentiable and acts
    row-wise): ``UniCAM(..., reshape_transform=vit_grid)`` gives ``(N, 1, s, s)`` maps for
    torchvision's ``VisionTransformer`` and Hugging Face ViT (k = 1) or DeiT (k = 2).

    Args:

        activation (Tensor): ``(N, T, C)`` tokens, special tokens first, then the patches
                    in row-major order.
        num_special (int, optional): k; None finds it (see :func:`grid_side`).
                    Default: None

    Returns:
        *Tensor* of **grid**:
        - **grid** (*Tensor*): ``(N, C, s, s)``, a new tensor.

    Raises:
        InputError: T is not ``s * s + k``; the message names ``reshape_transform``.

    Examples::

        >>> cam = UniCAM(student, student.encoder.layers[-1], base, base.encoder.layers[-1],
        ...              reshape_transform=vit_grid)
    """
    activation = _check_tokens(activation)
    n, t, c = activation.shape
    found = grid_side(t, num_special)
    if found is None:
        special = "1 or 2" if num_special is None else str(num_special)
        raise InputError(
            f"A token layer with {t} tokens cannot be laid out on a square patch grid after "
            f"{special} special token(s) (T = s * s + k). Pass `reshape_transform=` mapping "
            "the layer's (N, T, C) output to (N, C, h, w), e.g. for a non-square grid."
        )
    side, k = found
    return activation[:, k:].transpose(1, 2).reshape(n, c, side, side)


def choose_layout(
    activation: Tensor, attention_mask: Tensor | None = None, inputs: Any = None
) -> str:
    r"""How to read a layer's activations: ``"feature_map"``, ``"tokens"`` or ``"grid"``.

    Rule, in this order:

    1. not 3-dimensional (e.g. ``(N, C, h, w)`` or ``(N, C)``): ``"feature_map"``, the
       ordinary Grad-CAM layout;
    2. an ``attention_mask`` is given, or the first input is an integer tensor (token
       ids): ``"tokens"`` (text);
    3. the first input is a floating tensor with 4 dimensions (images): ``"grid"`` (a vision
       transformer's tokens), and an InputError naming ``reshape_transform`` when the tokens
       cannot be laid out on a square patch grid after 1 or 2 special tokens;
    4. otherwise (e.g. a ``Conv1d`` layer on signals, or a transformer fed float embeddings
       without a mask): ``"feature_map"``, dimension 1 read as channels, as ``LayerGradCam``
       reads it. Pass an ``attention_mask`` to read such a layer as tokens.

    Args:

        activation (Tensor): The layer's activations (after
                    :func:`captum_unicam._outputs.hidden_of`).
        attention_mask (Tensor, optional): ``(N, T)`` mask, if the caller has one.
                    Default: None
        inputs (Tensor or tuple, optional): The model's inputs, to tell text from images.
                    Default: None

    Returns:
        str: the layout.
    """
    if not isinstance(activation, Tensor) or activation.dim() != 3:
        return "feature_map"
    if attention_mask is not None:
        check_mask(attention_mask, activation.shape[0], activation.shape[1])
        return "tokens"
    first = inputs[0] if isinstance(inputs, (tuple, list)) and inputs else inputs
    if isinstance(first, Tensor) and not first.is_floating_point():
        return "tokens"
    if isinstance(first, Tensor) and first.dim() == 4:
        vit_grid(activation[:1])  # raises the InputError naming reshape_transform
        return "grid"
    return "feature_map"


def mask_from_args(inputs: Any, additional_forward_args: Any) -> Tensor | None:
    r"""The attention mask among a model's arguments, where Hugging Face's positional order
    ``model(input_ids, attention_mask, ...)`` places it: the model's second positional
    argument (the second input tensor, or else the first additional forward argument), when
    the first input is an integer tensor of token ids ``(N, T)`` and that argument is an
    ``(N, T)`` integer or bool tensor of 0 and 1. None otherwise.

    Examples::

        >>> mask_from_args(input_ids, (attention_mask,)) is attention_mask
        True
        >>> mask_from_args((input_ids, attention_mask), None) is attention_mask
        True
    """
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    args = (
        tuple(additional_forward_args)
        if isinstance(additional_forward_args, (tuple, list))
        else (additional_forward_args,)
    )
    first = inputs[0] if inputs else None
    second = (inputs + args)[1:2]
    if not isinstance(first, Tensor) or first.is_floating_point() or first.dim() != 2 or not second:
        return None
    mask = second[0]
    if not isinstance(mask, Tensor) or mask.shape != first.shape or mask.is_floating_point():
        return None
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        return None
    return mask


def forward_mask_kwargs(attention_mask: Tensor | None, additional_forward_args: Any) -> dict:
    r"""``{"attention_mask": attention_mask}`` when a mask is given that is not already one
    of the additional forward arguments (so that a Hugging Face model receives it as its
    keyword), else ``{}``."""
    if attention_mask is None:
        return {}
    args = (
        additional_forward_args
        if isinstance(additional_forward_args, (tuple, list))
        else (additional_forward_args,)
    )
    if any(a is attention_mask for a in args):
        return {}
    return {"attention_mask": attention_mask}
