r"""Internal: read a model's forward output as logits, and a layer's output as hidden states.

Hugging Face models return a ``ModelOutput`` (an ordered mapping whose ``logits`` entry holds
the class scores); older code paths and many wrappers return a tuple whose first element is
the logits; Hugging Face layers may return a tuple with the hidden states first. These two
functions are the one place where captum-unicam decides how to read such values, so that
UniCAM, the metrics, ``compare`` and the sanity checks accept them without a user wrapper.

This module is internal (shared by the attribution and the metrics), as Captum's ``_utils``:
its names may change between releases.

Examples::

    >>> import torch
    >>> from captum_unicam._outputs import hidden_of, logits_of
    >>> logits_of({"logits": torch.zeros(2, 3)}).shape
    torch.Size([2, 3])
    >>> hidden_of((torch.zeros(2, 5, 8), None)).shape
    torch.Size([2, 5, 8])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from captum_unicam.errors import InputError

__all__ = ["describe", "hidden_of", "logits_of"]


def describe(value: Any) -> str:
    """A short description of a value for error messages: a tensor's shape and dtype, a
    mapping's keys, a sequence's length and first element's type."""
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        keys = ", ".join(repr(k) for k in list(value.keys())[:6]) or "no keys"
        return f"{type(value).__name__} with keys {keys}"
    if isinstance(value, (tuple, list)):
        if not value:
            return f"an empty {type(value).__name__}"
        return (
            f"a {type(value).__name__} of length {len(value)} whose first element is "
            f"{describe(value[0]) if isinstance(value[0], Tensor) else type(value[0]).__name__}"
        )
    return type(value).__name__


def logits_of(output: Any, model: str = "model") -> Tensor:
    r"""The logits in a forward function's output.

    Accepted forms, in this order: a tensor (returned as is); an object with a tensor
    attribute ``logits`` (a Hugging Face ``ModelOutput`` such as
    ``SequenceClassifierOutput`` or ``ImageClassifierOutput``); a mapping with a tensor
    under ``"logits"``; a tuple or list whose first element is a tensor (as a model with
    ``return_dict=False`` returns). Nothing is copied or detached.

    Args:

        output (Any): What the forward function returned.
        model (str, optional): The model's name in the error message ("Student",
                    "Base", ...).
                    Default: "model"

    Returns:
        *Tensor* of **logits**:
        - **logits** (*Tensor*): The tensor read from ``output``.

    Raises:
        InputError: ``output`` has none of the forms above; the message names what was
        received and how to fix it.

    Examples::

        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> model = BertForSequenceClassification(BertConfig(num_labels=4)).eval()
        >>> logits_of(model(input_ids)).shape          # a SequenceClassifierOutput
        torch.Size([N, 4])
    """
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise InputError(
        f"The {model}'s output is {describe(output)}; captum-unicam reads logits from a "
        "tensor, a Hugging Face ModelOutput or mapping with a `logits` tensor, or a tuple "
        "whose first element is the logits. Return one of these from the forward function "
        "(e.g. `lambda *a, **k: model(*a, **k).scores`)."
    )


def hidden_of(layer_output: Any, layer: str = "layer") -> Tensor:
    r"""The hidden states in a layer's output.

    Accepted forms: a tensor (returned as is); a tuple or list whose first element is a
    tensor (Hugging Face layers that also return attention weights or caches); an object
    or mapping with a tensor ``last_hidden_state`` (a ``BaseModelOutput``).

    Args:

        layer_output (Any): What the layer's forward returned (or received, for the
                    layer's input).
        layer (str, optional): The layer's name in the error message.
                    Default: "layer"

    Returns:
        *Tensor* of **hidden states**:
        - **hidden states** (*Tensor*): e.g. ``(N, T, C)`` for a transformer block.

    Raises:
        InputError: no tensor can be read; the message names what was received.

    Examples::

        >>> hidden_of((torch.zeros(2, 7, 16), attention_weights)).shape
        torch.Size([2, 7, 16])
    """
    if isinstance(layer_output, Tensor):
        return layer_output
    if (
        isinstance(layer_output, (tuple, list))
        and layer_output
        and isinstance(layer_output[0], Tensor)
    ):
        return layer_output[0]
    hidden = getattr(layer_output, "last_hidden_state", None)
    if hidden is None and isinstance(layer_output, Mapping):
        hidden = layer_output.get("last_hidden_state")
    if isinstance(hidden, Tensor):
        return hidden
    raise InputError(
        f"The output of `{layer}` is {describe(layer_output)}; captum-unicam reads a layer's "
        "hidden states from a tensor, a tuple whose first element is the hidden states, or "
        "a `last_hidden_state` tensor. Choose another layer (e.g. a transformer block)."
    )
