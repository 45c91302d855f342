r"""UniCAM: unique class activation maps of a distilled Student against its Base.

:class:`UniCAM` is a Captum :class:`~captum.attr.LayerAttribution` that takes the place
of :class:`~captum.attr.LayerGradCam`. Where Grad-CAM weights a layer's channels by the
gradient of a class score, UniCAM weights them by the gradient of a *batch statistic*:
the partial distance correlation between one model's representation and the label
vectors, given the other model's representation (docs/method.md). The
**distilled** score :math:`S_d = \mathcal{R}^*(X_s, Y; X_b)` measures what the Student
knows about the labels beyond the Base; the **residual** score
:math:`S_r = \mathcal{R}^*(X_b, Y; X_s)` what the Base knows beyond the Student, i.e.
what distillation made the Student drop.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from captum._utils.common import _format_additional_forward_args, _format_tensor_into_tuples
from captum._utils.typing import TargetType
from captum.attr._utils.attribution import GradientAttribution, LayerAttribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from captum_unicam import _fused
from captum_unicam._outputs import hidden_of, logits_of
from captum_unicam.attr import _diagnosis
from captum_unicam.attr._layout import (
    POOLINGS,
    check_mask,
    choose_layout,
    forward_mask_kwargs,
    mask_from_args,
    pool_tokens,
    token_gradcam,
    vit_grid,
)
from captum_unicam.attr._targets import parse_target, ravel_targets, rows_of
from captum_unicam.errors import InputError

__all__ = ["UniCAM", "UniCAMWarning"]

_FEATURES = ("distilled", "residual", "both")
_MIN_SAMPLES = 5
_WHY_FIVE = (
    "The U-centred distance matrices of n samples span a space of dimension n(n - 3)/2: "
    "none below n = 4, and at n = 4 a 2-dimensional space, so once the other model is removed "
    "the partial distance correlation is always +1 or -1 and its maps are 0 or rounding "
    "noise (see docs/method.md)."
)


def _statistics_dtype(x: Tensor) -> Tensor:
    """Representations as the statistics read them: low-precision floats (bfloat16,
    float16) in float32, whose Gram product and rounding thresholds the statistics need
    (bfloat16's 8-bit mantissa would make two different models look the same)."""
    return x.float() if x.dtype.itemsize < 4 else x


Transform = Callable[[Tensor], Tensor]


def _same(value: Any) -> Any:
    return value


class UniCAMWarning(UserWarning):
    """A UniCAM result is defined but degenerate (e.g. a score set to 0), or a model is
    in a state (training mode) that makes the explanation unreliable."""


class _HookError(InputError):
    """Raised from inside a hook; re-raised to the user as a plain InputError."""


# ---------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------


class _Capture:
    """Forward hooks on one model: the attribution layer A and, optionally, a deeper
    representation layer.

    ``graph=False``: A (and the representation) are stored as detached copies; the
    forward runs entirely under ``torch.no_grad()``.

    ``graph=True`` (a representation layer deeper than A, whose gradient is needed): the
    forward still starts under ``no_grad``; the hook on A stores a leaf copy that
    requires grad, switches autograd on and hands a differentiable copy of it to the rest
    of the network; the hook on the representation layer stores its output and switches
    autograd off again. So a graph is recorded from A to the representation only.
    The caller's ``no_grad`` block restores the grad mode when the forward ends (or
    raises).
    """

    def __init__(
        self,
        model: str,
        layer: Module,
        layer_arg: str,
        feature_layer: Optional[Module],
        feature_arg: str,
        to_input: bool,
        graph: bool,
    ) -> None:
        self.model = model
        self.layer = layer
        self.layer_arg = layer_arg
        self.feature_layer = feature_layer
        self.feature_arg = feature_arg
        self.to_input = to_input
        self.graph = graph
        self.activation: Optional[Tensor] = None
        self.shapes: Optional[List[torch.Size]] = None  # several tensors at the layer
        self.representation: Optional[Tensor] = None
        self.layout = "feature_map"  # or "tokens" / "grid", set after the forward pass
        self.mask: Optional[Tensor] = None  # the tokens' attention mask (bool), if any
        self.pooling = "mean"  # how a token layer's representation is pooled
        self._tick = 0
        self._activation_tick = 0
        self._feature_tick = 0
        self._handles: List[Any] = []

    def attach(self) -> None:
        try:
            if self.to_input:
                self._handles.append(self.layer.register_forward_pre_hook(self._pre_hook))
            else:
                self._handles.append(self.layer.register_forward_hook(self._hook))
            if self.feature_layer is not None:
                self._handles.append(self.feature_layer.register_forward_hook(self._feature_hook))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _check_value(self, tensors: Tuple[Any, ...], where: str) -> None:
        if not tensors or not all(isinstance(t, Tensor) and t.is_floating_point() for t in tensors):
            got = (
                ", ".join(
                    type(t).__name__ if not isinstance(t, Tensor) else str(t.dtype) for t in tensors
                )
                or "an empty tuple"
            )
            raise _HookError(
                f"The {where} of `{self.layer_arg}` in the {self.model} is {got}; UniCAM "
                "needs a single floating-point tensor there, or a tuple of them (one map "
                "each, as LayerGradCam). "
                f"Choose another layer (or set attribute_to_layer_input={not self.to_input})."
            )
        if len({t.shape[0] if t.dim() else None for t in tensors}) != 1 or tensors[0].dim() == 0:
            raise _HookError(
                f"The tensors of the {where} of `{self.layer_arg}` in the {self.model} do not "
                f"all have one row per example (shapes {[tuple(t.shape) for t in tensors]}); "
                "choose a layer whose tensors keep the batch dimension first."
            )

    def _unpack(self, value: Any, name: str) -> Tuple[Any, Callable[[Any], Any]]:
        """(what to capture, a function that puts a replacement back into the value's form).

        A tensor, or a tuple of floating-point tensors (several maps, as LayerGradCam), is
        captured as it is. A tuple whose other elements are not all floating-point tensors
        (attention weights set to None, caches: Hugging Face layers) gives its first element;
        a ``ModelOutput`` or mapping gives its hidden states (``_outputs.hidden_of``)."""
        if isinstance(value, Tensor):
            return value, _same
        if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
            if all(isinstance(t, Tensor) and t.is_floating_point() for t in value):
                return value, _same
            rest = tuple(value[1:])
            if isinstance(value, list):
                return value[0], lambda t: [t, *rest]
            if hasattr(value, "_fields"):
                return value[0], lambda t: type(value)(t, *rest)
            return value[0], lambda t: (t,) + rest
        try:
            hidden = hidden_of(value, name)
        except InputError as err:
            raise _HookError(str(err)) from None

        def rebuild(t: Tensor) -> Any:
            out = type(value)(**dict(value.items())) if isinstance(value, Mapping) else value
            out["last_hidden_state"] = t
            return out

        return hidden, rebuild

    def _take(self, value: Any, where: str) -> Any:
        value, rebuild = self._unpack(value, self.layer_arg)
        tensors = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        self._check_value(tensors, where)
        self._tick += 1
        self._activation_tick = self._tick
        if len(tensors) == 1:
            self.shapes = None
            leaf = tensors[0].detach().clone()
        else:
            # Several tensors (as LayerGradCam, one map each): the activation is their
            # row-wise concatenation, the representation read from it by default;
            # maps() splits it (and its gradient) back into the pieces.
            self.shapes = [t.shape for t in tensors]
            leaf = torch.cat([t.detach().reshape(t.shape[0], -1) for t in tensors], dim=1)
        self.activation = leaf
        if not self.graph:
            return None
        torch.set_grad_enabled(True)
        leaf.requires_grad_(True)
        if self.shapes is None:
            return rebuild(leaf.clone())  # a non-leaf copy: in-place layers downstream stay legal
        pieces = tuple(p.clone() for p in self.split(leaf))
        if isinstance(value, list):
            return list(pieces)
        return type(value)(*pieces) if hasattr(value, "_fields") else type(value)(pieces)

    def split(self, packed: Tensor) -> Tuple[Tensor, ...]:
        """The captured tensors (or their gradients) from the packed form, in order."""
        assert self.shapes is not None
        sizes = [int(torch.Size(shape[1:]).numel()) for shape in self.shapes]
        return tuple(
            part.reshape((packed.shape[0],) + tuple(shape[1:]))
            for part, shape in zip(packed.split(sizes, dim=1), self.shapes)
        )

    def maps(
        self, grad: Optional[Tensor], relu: bool, summation: bool, n: int
    ) -> Union[Tensor, Tuple[Tensor, ...]]:
        """Grad-CAM maps of the first n rows: one tensor, or one map per captured tensor
        (a tuple, as LayerGradCam returns for a layer with several tensors)."""
        a = self.activation.detach()
        if self.shapes is None:
            return UniCAM._gradcam(a, grad, relu, summation)[:n]
        grads = (None,) * len(self.shapes) if grad is None else self.split(grad)
        return tuple(
            UniCAM._gradcam(p, g, relu, summation)[:n] for p, g in zip(self.split(a), grads)
        )

    def _hook(self, module: Module, args: Any, output: Any) -> Optional[Tensor]:
        return self._take(output, "output")

    def _pre_hook(self, module: Module, args: Tuple[Any, ...]) -> Optional[Tuple[Any, ...]]:
        if not args:
            raise _HookError(
                f"`{self.layer_arg}` of the {self.model} received no positional input; "
                "use attribute_to_layer_input=False."
            )
        replaced = self._take(args[0], "input")
        return None if replaced is None else (replaced,) + tuple(args[1:])

    def _feature_hook(self, module: Module, args: Any, output: Any) -> Optional[Any]:
        output, rebuild = self._unpack(output, self.feature_arg)
        if not isinstance(output, Tensor) or not output.is_floating_point():
            raise _HookError(
                f"The output of `{self.feature_arg}` in the {self.model} is not a single "
                "floating-point tensor; choose another representation layer."
            )
        self._tick += 1
        self._feature_tick = self._tick
        if self.graph:
            self.representation = output
            torch.set_grad_enabled(False)  # the rest of the network needs no graph
            return rebuild(output.detach().clone())  # in-place layers downstream cannot alter it
        self.representation = output.detach().clone()
        return None

    def check(self) -> None:
        if self.activation is None:
            raise InputError(
                f"`{self.layer_arg}` ({type(self.layer).__name__}) was never called during "
                f"the {self.model}'s forward pass; pass a submodule that the model runs "
                "on these inputs."
            )
        if self.feature_layer is not None:
            if self.representation is None:
                raise InputError(
                    f"`{self.feature_arg}` ({type(self.feature_layer).__name__}) was never "
                    f"called during the {self.model}'s forward pass; pass a submodule that "
                    "the model runs, at or after the attribution layer."
                )
            if self._feature_tick < self._activation_tick:
                raise InputError(
                    f"`{self.feature_arg}` runs before `{self.layer_arg}` in the {self.model}"
                    "'s forward pass, so its output cannot depend on the attribution "
                    "layer; pass a representation layer at or after the attribution layer "
                    "(or None to read the representation at the attribution layer)."
                )
        # NaN/Inf in the activations or the representation are found without a host
        # round trip, with the other checks at the end of the call (UniCAM._report).


# ---------------------------------------------------------------------------
# UniCAM
# ---------------------------------------------------------------------------


def _degenerate_reason(
    anyf: List[bool],
    i: int,
    k: int,
    explained_null: bool,
    explained: str,
    other: str,
    where: str,
    batch: str,
) -> Optional[str]:
    """Why score i (of k) is 0, from the flags of _fused.unicam_scores, most basic cause
    first; None when it is not degenerate."""
    y_same, y_flat = anyf[1], anyf[2]
    same, by_other = anyf[4 + i], anyf[4 + k + i]
    if explained_null:
        return (
            f"the {explained}'s representation is constant over the {batch}{where} (or has every "
            "pair of samples at one distance: no distance structure)"
        )
    if y_same:
        return (
            f"every sample has the same label vector{where} (one class); explain a {batch} "
            "with several classes, or pass a reference set with repeated classes "
            "(`reference=` or `context=`)"
        )
    if y_flat:
        return (
            f"the U-centred distance matrix of the label vectors is zero{where}, so the labels "
            "carry no information: one-hot labels of distinct classes (every pair at the same "
            "distance), or every sample but one of a single class; pass "
            f"`label_embeddings=embed_labels(class_names)`, or a {batch} with repeated classes"
        )
    if same:
        return (
            "the Student's and the Base's representations have the same distance "
            f"structure{where} (e.g. they are the same model), so no unique part is left"
        )
    if by_other:
        return f"the labels are fully explained by the {other}'s representation{where}"
    return None


class UniCAM(LayerAttribution, GradientAttribution):
    r"""
    Computes UniCAM (unique class activation mapping) attributions: Grad-CAM maps of the
    features that are unique to a distilled **Student** with respect to a **Base** model
    (the same architecture trained without distillation), or unique to the Base.

    UniCAM reads a representation of each model on the batch (by default the output of
    the attribution layer), turns each into a U-centred distance matrix, and scores

    - **distilled** features: :math:`S_d = \mathcal{R}^*(X_s, Y; X_b)`, the partial
      distance correlation of the Student's representation with the label vectors
      :math:`Y`, given the Base's -- what the Student knows about the labels that the
      Base does not (``dcor.partial_distance_correlation(X_s, Y, X_b)``);
    - **residual** features: :math:`S_r = \mathcal{R}^*(X_b, Y; X_s)`, the roles swapped
      -- what the Base knows that the Student dropped.

    The gradient :math:`G` of the score with respect to the explained model's layer
    activations :math:`A` (Student's layer for distilled, Base's for residual) then
    weights the channels as in Grad-CAM: :math:`\alpha_{ik}` is the spatial mean of
    :math:`G_{ik}` and the map is :math:`\mathrm{ReLU}(\sum_k \alpha_{ik} A_{ik})`.

    The score is a **batch statistic**: in batch mode (the default, the paper's) the map
    of an image depends on the other images of the batch (at least 5 are needed: at
    n = 4 the partial correlation is always +-1), much as a contrastive explanation
    depends on its contrast set. Permuting the batch permutes the maps and changes
    nothing else. ``context=`` scores the inputs together with a fixed set of examples.
    **Reference mode** (``reference=(ref_inputs, ref_target)``) scores each input with
    a fixed reference set alone, so its map is a per-image function: it does not depend
    on the other inputs of the call, and Captum's wrappers (``NoiseTunnel``,
    ``sensitivity_max``) see a per-image explanation;
    :func:`captum_unicam.reference_set` draws a stratified reference set in one line.
    In batch mode, a call from inside Captum's or Quantus' tools, or on a batch with
    repeated or near-duplicate samples (the batches those tools build), warns once per
    instance that the maps measure the batch's make-up (docs/per-image.md).
    :meth:`score_function` is the score as a forward function, one value per input, for
    ``Occlusion``, ``FeatureAblation`` and ``captum.metrics.infidelity``; and
    :func:`captum_unicam.quantus.explain` is UniCAM as a Quantus ``explain_func``.

    Degenerate cases give zeros, never NaN, with a :class:`UniCAMWarning` that names the
    cause and the fix: Student and Base with the same representation (nothing unique
    left), a constant representation of the explained model, and label vectors whose
    U-centred distance matrix is zero -- one class in the batch, or one-hot labels of
    classes that are all distinct (pass ``label_embeddings=embed_labels(class_names)``
    or use repeated classes). A Base representation that is constant over the batch
    removes nothing (the distilled score is then the distance correlation of the
    Student with the labels), also with a warning.

    Cost: one forward pass of each model per call, also for ``features="both"``. When
    the representation is read at the attribution layer (the default) the forward
    passes record no autograd graph at all: the gradient of the score with respect to
    the representation is computed in closed form (about 270 tensor operations and one
    read back to the host per call), so UniCAM costs about as much as two LayerGradCam
    calls, or less for early layers. With a deeper representation layer, or a
    ``reshape_transform``, autograd carries that gradient back from the representation
    to the attribution layer (a graph is recorded between the two only).

    More details: the UniCAM paper (unique class activation mapping, with the FSS and RS
    metrics, for explaining knowledge distillation); the exact reading implemented here is
    described in docs/method.md: the paper's "gradient of the class
    score with respect to the unique features" is the gradient of :math:`S_d` (or
    :math:`S_r`). The authors' release projects only the Student's matrix (a semi-partial
    correlation); its maps differ from these by a positive per-batch factor.
    """

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: Module,
        base_forward_func: Callable[..., Tensor],
        base_layer: Module,
        device_ids: Union[None, List[int]] = None,
        *,
        label_embeddings: Optional[Tensor] = None,
        student_feature_layer: Optional[Module] = None,
        base_feature_layer: Optional[Module] = None,
        reshape_transform: Union[None, Transform, Sequence[Optional[Transform]]] = None,
        reference: Optional[Tuple[Any, ...]] = None,
        token_pooling: str = "mean",
    ) -> None:
        r"""
        Args:

            forward_func (Callable): The Student: the forward function of the distilled
                        model or any modification of it. Its output, shape
                        ``(N, num_classes)``, gives the predicted classes when
                        ``target=None`` and the number of classes of the default
                        one-hot label vectors.
            layer (torch.nn.Module): Layer of the Student for which attributions are
                        computed (distilled features). The output size of
                        ``attribute`` matches this layer's output, except for
                        dimension 1, which is 1 since UniCAM sums over channels.
            base_forward_func (Callable): The Base: the model trained on data alone,
                        usually of the Student's architecture (a Teacher of the same
                        architecture may serve). Architectures may differ.
            base_layer (torch.nn.Module): Layer of the Base for which residual
                        attributions are computed.
            device_ids (list[int], optional): Accepted for Captum compatibility; must be
                        None. ``DataParallel`` is not supported: the scores are batch
                        statistics, so pass the underlying module and a batch on one
                        device (CPU or CUDA).
                        Default: None
            label_embeddings (Tensor, optional): ``(num_classes, e)`` float tensor whose
                        row ``c`` is the label vector of class ``c`` (e.g. from
                        ``captum_unicam.embed_labels(class_names)``). Default: one-hot
                        vectors, with ``num_classes`` the width of the Student's output.
                        Default: None
            student_feature_layer (torch.nn.Module, optional): Layer of the Student
                        whose output is the representation :math:`X_s` in the
                        statistics. It must run at or after ``layer``. Default: None,
                        the attribution layer's activations themselves.
            base_feature_layer (torch.nn.Module, optional): The same for the Base.
                        Default: None
            reshape_transform (Callable or tuple, optional): Maps a layer's activations
                        to ``(N, C, h, w)``, e.g. the ``(N, T, C)`` tokens of a ViT
                        block to a grid. One callable for both models, or a pair
                        ``(student_transform, base_transform)`` whose entries may be
                        None. It is applied to the activations and to their gradients
                        (so it must be differentiable and act row-wise on the batch);
                        with no feature layer, the transformed activations are also the
                        representation. Default: None
            reference (tuple, optional): ``(ref_inputs, ref_target)`` or
                        ``(ref_inputs, ref_target, ref_additional_forward_args)``: a
                        fixed reference set of ``m >= 4`` examples, which switches on
                        **reference mode**: each input is scored together with the
                        reference set alone (``n = 1 + m``), so its map does not depend
                        on the other inputs of the call, on the batch size, or on
                        Captum's internal batching (``NoiseTunnel``,
                        ``sensitivity_max``). The reference set is forward-passed once,
                        on first use, and its representations, label vectors and
                        ``m x m`` distance matrices are cached (build a new UniCAM if
                        the models' weights change). ``ref_target`` follows the rules
                        of ``target``; use repeated classes in the reference set (or
                        ``label_embeddings``), see the degenerate cases above. Scores
                        are then one per input. For text, a fourth element
                        ``ref_attention_mask`` gives the reference set's mask (else it is
                        read from ``ref_additional_forward_args`` as for the inputs, see
                        ``attention_mask`` of :meth:`attribute`); the reference sequences
                        may be padded to another length than the inputs. Default: None
                        (batch mode, the paper's behaviour)
            token_pooling (str, optional): How the representation of a token layer
                        (text, ``(N, T, C)``) is read for the statistics: ``"mean"``
                        over the valid tokens, or ``"cls"``, the first token. Either way
                        padding cannot change a score. Default: "mean"
        """
        if (
            device_ids is not None
            or isinstance(forward_func, torch.nn.DataParallel)
            or isinstance(base_forward_func, torch.nn.DataParallel)
        ):
            raise InputError(
                "UniCAM does not support DataParallel (device_ids): its scores are "
                "statistics of the whole batch. Pass the underlying modules "
                "(model.module) and a batch on one device."
            )
        for name, value in (("layer", layer), ("base_layer", base_layer)):
            if not isinstance(value, Module):
                raise InputError(
                    f"`{name}` must be a torch.nn.Module inside the model, got "
                    f"{type(value).__name__}."
                )
        for name, value in (
            ("student_feature_layer", student_feature_layer),
            ("base_feature_layer", base_feature_layer),
        ):
            if value is not None and not isinstance(value, Module):
                raise InputError(
                    f"`{name}` must be None or a torch.nn.Module, got {type(value).__name__}."
                )
        if not callable(forward_func) or not callable(base_forward_func):
            raise InputError("`forward_func` and `base_forward_func` must be callables (models).")
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)
        self.base_forward_func = base_forward_func
        self.base_layer = base_layer
        self.student_feature_layer = student_feature_layer
        self.base_feature_layer = base_feature_layer
        self.label_embeddings = self._check_embeddings(label_embeddings)
        self.reshape_transform = reshape_transform
        self._transforms = self._check_transforms(reshape_transform)
        if token_pooling not in POOLINGS:
            raise InputError(f"`token_pooling` must be one of {POOLINGS}, got {token_pooling!r}.")
        self.token_pooling = token_pooling
        self._reference = self._check_reference(reference)
        self._reference_cache: Dict[Any, Any] = {}
        self._warned_batch = False  # the batch-make-up warning is shown once

    # -- construction helpers ------------------------------------------------

    @staticmethod
    def _check_embeddings(table: Any) -> Optional[Tensor]:
        if table is None:
            return None
        if not isinstance(table, Tensor):
            try:
                table = torch.as_tensor(table)
            except Exception as err:
                raise InputError(
                    "`label_embeddings` must be a (num_classes, e) float tensor."
                ) from err
        if (
            table.dim() != 2
            or table.shape[0] == 0
            or table.shape[1] == 0
            or not table.is_floating_point()
        ):
            raise InputError(
                "`label_embeddings` must be a non-empty (num_classes, e) float tensor, got "
                f"shape {tuple(table.shape)} and dtype {table.dtype}."
            )
        if not bool(torch.isfinite(table).all()):
            raise InputError("`label_embeddings` contains NaN or Inf.")
        return table

    @staticmethod
    def _check_transforms(transform: Any) -> Tuple[Optional[Transform], Optional[Transform]]:
        if transform is None or callable(transform):
            return transform, transform
        if (
            isinstance(transform, (tuple, list))
            and len(transform) == 2
            and all(t is None or callable(t) for t in transform)
        ):
            return transform[0], transform[1]
        raise InputError(
            "`reshape_transform` must be None, a callable, or a pair "
            "(student_transform, base_transform) of callables or None."
        )

    # -- public API ----------------------------------------------------------

    @log_usage(part_of_slo=True)
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Optional[object] = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = True,
        attr_dim_summation: bool = True,
        grad_kwargs: Optional[Dict[str, Any]] = None,
        *,
        features: str = "distilled",
        context: Optional[Tuple[Any, ...]] = None,
        return_score: bool = False,
        reference: Optional[Tuple[Any, ...]] = None,
        attention_mask: Optional[Tensor] = None,
    ) -> Union[Tensor, Tuple[Tensor, Tensor], Tuple[Any, Any]]:
        r"""
        Args:

            inputs (Tensor or tuple[Tensor, ...]): Input for which attributions are
                        computed, given to both models. If the models take a single
                        tensor, a single tensor should be provided; if they take
                        several, a tuple. Dimension 0 indexes the examples. UniCAM's
                        scores are batch statistics: together with ``context`` there
                        must be at least 5 examples (in reference mode, any number).
            target (int, list, Tensor, optional): The labels of the examples:

                        - a list or 1-D integer tensor of class indices, one per
                          example;
                        - an int (or a one-element tensor), applied to every example:
                          only with ``context`` (or a reference set), since one label
                          for the whole batch leaves nothing to correlate with and is
                          refused;
                        - Captum's tuple targets for a model with a multi-dimensional
                          output: a list of ``N`` tuples (or one tuple, as an int),
                          each the index of one output element; its class is the
                          element's row-major position in the output, so
                          ``label_embeddings`` needs a row per output element (for an
                          ``(N, C)`` output, ``(c,)`` is class ``c``);
                        - an ``(N, e)`` float tensor of label vectors, used as
                          :math:`Y` directly.

                        Class indices select rows of ``label_embeddings`` (default:
                        one-hot vectors). None means the **Student's predicted
                        classes** (argmax of its output), used for both models.
                        Default: None
            additional_forward_args (Any, optional): Further arguments of both
                        forward functions, passed after ``inputs`` (a single
                        argument or a tuple), as in Captum. Not attributed to.
                        Default: None
            attribute_to_layer_input (bool, optional): Whether to attribute to the
                        input of the layers (the first positional tensor) rather than
                        to their output. Default: False
            relu_attributions (bool, optional): Whether to apply a ReLU to the maps,
                        keeping the regions that increase the score. **Default True**,
                        as the UniCAM paper applies ReLU; note that
                        ``LayerGradCam``'s default is False, so pass
                        ``relu_attributions=True`` there to compare like with like, or
                        False here to keep the sign.
                        Default: True
            attr_dim_summation (bool, optional): Whether to sum the weighted
                        activations over dimension 1 (channels). Default: True
            grad_kwargs (Dict[str, Any], optional): Additional keyword arguments
                        for ``torch.autograd.grad``, where autograd is used: from a
                        representation layer deeper than the attribution layer, or
                        through ``reshape_transform``, back to the layer activations.
                        With the representation read at the attribution layer the
                        gradient is computed in closed form and they are not used.
                        Default: None
            features (str, optional): ``"distilled"`` (maps on the Student's layer),
                        ``"residual"`` (maps on the Base's layer) or ``"both"`` (a
                        pair, from one forward pass of each model).
                        Default: "distilled"
            context (tuple, optional): ``(ctx_inputs, ctx_target)`` or
                        ``(ctx_inputs, ctx_target, ctx_additional_forward_args)``: a
                        reference set scored together with ``inputs`` (appended after
                        them, tensor by tensor for tuple inputs), whose maps are not
                        returned. It makes single-image explanations possible and
                        reproducible. ``ctx_target`` follows the rules of ``target``.
                        Tensors in ``additional_forward_args`` that have a batch
                        dimension must then be given for the context too, as the third
                        element (they are concatenated in the same way); other
                        arguments are shared as they are. With two elements, a tensor
                        argument whose first dimension equals the number of inputs is
                        an error, since it cannot be extended to the context.
                        Default: None
            return_score (bool, optional): Also return the score(s), as 0-d tensors
                        (see :meth:`score`); in reference mode, one score per input.
                        Default: False
            reference (tuple, optional): A reference set for this call only, as the
                        constructor's ``reference`` (not cached); it replaces the
                        constructor's. Cannot be combined with ``context``.
                        Default: None
            attention_mask (Tensor, optional): ``(N, T)``, 1 for the valid tokens and
                        0 for padding, as a tokenizer returns it. It makes a token layer
                        ``(N, T, C)`` read as text: one map value per token, padding
                        exactly 0, the representation pooled over the valid tokens
                        (``token_pooling``). Unless it is one of
                        ``additional_forward_args``, it is also passed to both forward
                        functions as the keyword ``attention_mask`` (as Hugging Face models
                        take it). None: read from the inputs when the first input is
                        token ids ``(N, T)`` and the models' second positional argument (the
                        second input, or else the first additional forward argument) is an
                        ``(N, T)`` tensor of 0 and 1 (Hugging Face's positional order
                        ``model(input_ids, attention_mask)``); else every token is valid.
                        With ``context``, give the mask as that argument (and the context's
                        in ``context[2]``).
                        Default: None

        Returns:
            *Tensor* or *tuple[Tensor, Tensor]* of **attributions**:
            - **attributions** (*Tensor* or *tuple[Tensor, Tensor]*):
                        ``(N, 1, h, w)`` maps on the explained layer's grid, like
                        ``LayerGradCam`` (``(N, K, h, w)`` with
                        ``attr_dim_summation=False``; other layer shapes as
                        LayerGradCam treats them). ``features="both"`` returns
                        ``(distilled, residual)``, the first on the Student's grid,
                        the second on the Base's. Rows of ``context`` are not
                        returned. A layer whose output is a tuple of
                        tensors gives a tuple of maps, one per tensor, as
                        ``LayerGradCam`` does; the representation read there is the
                        row-wise concatenation of the flattened tensors. When
                        ``inputs`` is a tuple, a single map is returned as a 1-tuple,
                        as Captum's primary attributions do:
                        ``captum.metrics.sensitivity_max`` calls the explanation
                        function with a tuple and reads a bare tensor wrongly
                        (``LayerGradCam`` returns a bare tensor there, so its
                        sensitivity is mis-computed). With ``return_score=True``, a
                        pair ``(attributions, scores)`` where ``scores`` is ``S_d``,
                        ``S_r``, or ``(S_d, S_r)``.

                        Layers of transformers, with no ``reshape_transform``: a token
                        layer of a text model (token ids as inputs, or an
                        ``attention_mask``) gives ``(N, T)`` maps, one value per token,
                        aligned with ``input_ids`` (channel weights from the gradient
                        averaged over the valid tokens; padding exactly 0); a vision
                        transformer's token layer (image inputs) is laid out on its patch
                        grid after its special tokens and gives ``(N, 1, s, s)`` maps
                        (``attr._layout.vit_grid``), or an ``InputError`` naming
                        ``reshape_transform`` when its tokens do not form a square grid.

        Examples::

            >>> import torch
            >>> from torchvision.models import resnet18
            >>> from captum.attr import LayerAttribution
            >>> from captum_unicam import UniCAM
            >>> _ = torch.manual_seed(0)
            >>> student = resnet18(weights=None, num_classes=4).eval()
            >>> base = resnet18(weights=None, num_classes=4).eval()
            >>> unicam = UniCAM(student, student.layer4, base, base.layer4)
            >>> x = torch.randn(8, 3, 48, 48)
            >>> y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
            >>> # Where the Student's unique (distilled) features are, per image.
            >>> attr = unicam.attribute(x, target=y)
            >>> attr.shape
            torch.Size([8, 1, 2, 2])
            >>> # Distilled and residual maps from one forward pass of each model.
            >>> distilled, residual = unicam.attribute(x, target=y, features="both")
            >>> # Upsample to the input, as with LayerGradCam.
            >>> LayerAttribution.interpolate(distilled, (48, 48), "bilinear").shape
            torch.Size([8, 1, 48, 48])
            >>> # Explain one image against a fixed reference set.
            >>> one = unicam.attribute(x[:1], target=y[:1], context=(x[1:], y[1:]))
            >>> one.shape
            torch.Size([1, 1, 2, 2])
        """
        if features not in _FEATURES:
            raise InputError(f"`features` must be one of {_FEATURES}, got {features!r}.")
        if torch.is_inference_mode_enabled():
            raise InputError(
                "UniCAM.attribute was called under torch.inference_mode(): its maps are "
                "gradients of the score, and inference mode records no autograd graph "
                "(torch.enable_grad() cannot switch it back on). Call attribute outside "
                "the inference_mode block (torch.no_grad() around it is fine); score() "
                "needs no gradient and works there."
            )
        maps, scores = self._compute(
            inputs,
            target,
            additional_forward_args,
            attribute_to_layer_input,
            features,
            context,
            maps=True,
            relu_attributions=relu_attributions,
            attr_dim_summation=attr_dim_summation,
            grad_kwargs=grad_kwargs,
            reference=reference,
            attention_mask=attention_mask,
        )
        if features == "both":
            out: Any = maps
        elif isinstance(maps[0], tuple):
            out = maps[0]  # a layer with several tensors: a tuple of maps, as LayerGradCam
        else:
            # Captum's convention for tuple inputs, which captum.metrics relies on
            # (sensitivity_max calls the explanation function with a tuple first).
            out = (maps[0],) if isinstance(inputs, tuple) else maps[0]
        if not return_score:
            return out
        return out, (scores if features == "both" else scores[0])

    @log_usage(part_of_slo=True)
    def score(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Optional[object] = None,
        attribute_to_layer_input: bool = False,
        *,
        features: str = "both",
        context: Optional[Tuple[Any, ...]] = None,
        reference: Optional[Tuple[Any, ...]] = None,
        attention_mask: Optional[Tensor] = None,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""The scores behind the maps, without computing any gradient.

        Arguments as in :meth:`attribute`. The distilled score equals
        ``stats.partial_distance_correlation(X_s, Y, X_b)`` and the residual score
        ``stats.partial_distance_correlation(X_b, Y, X_s)`` (both are formed from the
        three distance correlations, computed once per call), on the whole batch
        (``inputs`` followed by ``context``); they equal
        ``dcor.partial_distance_correlation`` on the same representations, except in
        the degenerate cases, where they are 0 (with a :class:`UniCAMWarning`).

        In reference mode (the constructor's ``reference``, or ``reference=`` here),
        each input is scored with the reference set alone and the scores are
        ``(N,)`` tensors, one per input.

        Returns:
            *Tensor* or *tuple[Tensor, Tensor]*: 0-d tensor ``S_d`` or ``S_r``, or
            ``(S_d, S_r)`` for ``features="both"`` (the default here); ``(N,)``
            tensors in reference mode.

        Examples::

            >>> s_d, s_r = unicam.score(x, target=y)  # doctest: +SKIP
        """
        if features not in _FEATURES:
            raise InputError(f"`features` must be one of {_FEATURES}, got {features!r}.")
        _, scores = self._compute(
            inputs,
            target,
            additional_forward_args,
            attribute_to_layer_input,
            features,
            context,
            maps=False,
            reference=reference,
            attention_mask=attention_mask,
        )
        return scores if features == "both" else scores[0]

    def score_function(
        self, features: str = "distilled", num_inputs: int = 1
    ) -> Callable[..., Tensor]:
        r"""The score as a forward function, one value per input, for Captum's perturbation
        tools: ``captum.attr.Occlusion`` / ``FeatureAblation`` explain it pixel by pixel and
        ``captum.metrics.infidelity`` takes it as ``forward_func``.

        The returned function is called as Captum calls a model,
        ``f(*inputs, target=None, *additional_forward_args)``: the first ``num_inputs``
        positional arguments are the input tensors, the next one (optional) the targets
        of those inputs (as in :meth:`attribute`; pass them through the tool's
        ``additional_forward_args``, which Captum repeats with the inputs it perturbs),
        the rest the models' additional forward arguments (for text, the attention mask
        first: it is read from there, see ``attention_mask`` of :meth:`attribute`). It
        returns an ``(N,)``
        tensor: in **reference mode** input i's score with the reference set alone
        (:meth:`score`), a per-input function, which is what these tools assume. In batch
        mode the score is one statistic of the whole batch, returned for every input,
        with the :class:`UniCAMWarning` of batch mode inside those tools.

        Args:
            features (str, optional): ``"distilled"`` (S_d) or ``"residual"`` (S_r).
                        Default: "distilled"
            num_inputs (int, optional): the number of input tensors the models take.
                        Default: 1

        Returns:
            Callable: ``f(*inputs, target=None, *additional_forward_args) -> (N,) Tensor``.

        Examples::

            >>> from captum.attr import Occlusion
            >>> unicam = UniCAM(student, student.layer4, base, base.layer4,
            ...                 reference=reference_set(val_dataset, 32))
            >>> f = unicam.score_function("distilled")
            >>> occ = Occlusion(f).attribute(x, sliding_window_shapes=(3, 8, 8),
            ...                              strides=(3, 8, 8), additional_forward_args=(y,))
        """
        if features not in ("distilled", "residual"):
            raise InputError(f"`features` must be 'distilled' or 'residual', got {features!r}.")
        if isinstance(num_inputs, bool) or not isinstance(num_inputs, int) or num_inputs < 1:
            raise InputError(f"`num_inputs` must be a positive int, got {num_inputs!r}.")

        def score_of_each_input(*args: Any) -> Tensor:
            inputs = args[:num_inputs]
            target = args[num_inputs] if len(args) > num_inputs else None
            extra = args[num_inputs + 1 :]
            value = self.score(
                inputs[0] if num_inputs == 1 else tuple(inputs),
                target,
                additional_forward_args=extra if extra else None,
                features=features,
            )
            return value.expand(inputs[0].shape[0]) if value.dim() == 0 else value

        return score_of_each_input

    # -- the algorithm -------------------------------------------------------

    def _compute(
        self,
        inputs: Any,
        target: Any,
        additional_forward_args: Any,
        attribute_to_layer_input: bool,
        features: str,
        context: Any,
        maps: bool,
        relu_attributions: bool = True,
        attr_dim_summation: bool = True,
        grad_kwargs: Optional[Dict[str, Any]] = None,
        reference: Any = None,
        attention_mask: Optional[Tensor] = None,
    ) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
        kinds = ("distilled", "residual") if features == "both" else (features,)
        to_input = attribute_to_layer_input

        # 1. Validate everything before any forward pass.
        inputs, args, parts, reference = self._validate(
            inputs, target, additional_forward_args, context, grad_kwargs, reference
        )
        n = inputs[0].shape[0] if context is None else parts[0][1]
        mask, kwargs = self._input_mask(inputs, args, attention_mask, context)
        self._warn_training()
        tool = None if reference is not None else _diagnosis.calling_tool()

        # 2. The reference set (reference mode): forward-passed once, then cached.
        blocks = (
            None if reference is None else self._reference_blocks(reference, to_input, self._rows())
        )

        # 3. One forward pass of each model, recording a graph only where needed.
        need = {
            "distilled": maps and "distilled" in kinds,
            "residual": maps and "residual" in kinds,
        }
        (out_s, cap_s), (_, cap_b) = self._forward_pair(inputs, args, to_input, need, kwargs)
        out_s = self._as_logits(out_s)
        transforms = (
            self._layout(cap_s, self._transforms[0], mask, inputs, self.token_pooling),
            self._layout(cap_b, self._transforms[1], mask, inputs, self.token_pooling),
        )

        # 4. Label vectors Y, on the device of the representations.
        y, label_ok = self._labels(
            ravel_targets(parts, out_s, self._rows()), out_s, cap_s.activation.device
        )

        # 5. Scores, and the derivative of each score with respect to its explained
        #    representation, in closed form (captum_unicam._fused).
        n_total = inputs[0].shape[0]
        with torch.enable_grad() if maps else torch.no_grad():
            rep_s = self._representation(
                cap_s, transforms[0], need["distilled"], "Student", n_total
            )
            rep_b = self._representation(cap_b, transforms[1], need["residual"], "Base", n_total)
        explained = [0 if kind == "distilled" else 2 for kind in kinds]
        s_all, w_all, flags, rescaled, scales, repeated = self._statistics(
            rep_s[2], y, rep_b[2], blocks, explained
        )
        scores = tuple(
            (s_all[k, 0] if blocks is None else s_all[k]).to(rep_s[2].dtype)
            for k in range(len(kinds))
        )

        results: List[Any] = []
        if maps:
            for k in range(len(kinds)):
                v = explained[k]
                rep, transform, cap = (
                    (rep_s, transforms[0], cap_s) if v == 0 else (rep_b, transforms[1], cap_b)
                )
                if blocks is None:
                    grad_x = _fused.laplacian_product(w_all[k, 0], rescaled[v])
                else:  # each input's row (N, m)
                    grad_x = _fused.reference_row_product(
                        w_all[k, :, 0, 1:], rescaled[v], blocks["x"][v]
                    )
                grad_x = (grad_x / scales[v].to(grad_x.dtype)).to(rep[2].dtype)
                if cap.layout == "tokens":
                    grad = self._token_gradient(grad_x, *rep, cap, grad_kwargs or {})
                    results.append(
                        self._token_maps(cap, grad, relu_attributions, attr_dim_summation, n)
                    )
                    continue
                grad = self._gradient(grad_x, *rep, transform, cap, grad_kwargs or {})
                results.append(
                    self._layer_maps(cap, rep[1], grad, relu_attributions, attr_dim_summation, n)
                )

        # 6. One transfer to the host: the degenerate cases and the checks of the values.
        self._report(flags, label_ok, kinds, results, reference is not None, repeated, tool)
        return tuple(results), scores

    def _rows(self) -> Optional[int]:
        return None if self.label_embeddings is None else self.label_embeddings.shape[0]

    def _validate(
        self,
        inputs: Any,
        target: Any,
        additional_forward_args: Any,
        context: Any,
        grad_kwargs: Any,
        reference: Any,
    ) -> Tuple[
        Tuple[Tensor, ...], Tuple[Any, ...], List[Tuple[Any, int]], Optional[Tuple[Any, ...]]
    ]:
        """(inputs joined with the context, forward args, parsed targets, reference set)."""
        inputs = self._check_inputs(inputs, "inputs")
        n = inputs[0].shape[0]
        args = _format_additional_forward_args(additional_forward_args) or ()
        reference = self._reference if reference is None else self._check_reference(reference)
        if reference is not None and context is not None:
            raise InputError(
                "`context` and `reference` cannot be combined: in reference mode each input "
                "is scored with the reference set alone. Pass one of them."
            )
        if reference is not None:
            self._check_like_reference(inputs, reference)
        alone = context is None and reference is None
        parts: List[Tuple[Any, int]] = [
            (parse_target(target, n, "target", self._rows(), alone=alone), n)
        ]
        if context is not None:
            inputs, args, ctx_part = self._join_context(inputs, args, context, self._rows())
            parts.append(ctx_part)
        n_total = inputs[0].shape[0]
        if reference is None and n_total < _MIN_SAMPLES:
            raise InputError(
                f"UniCAM's scores are statistics of the batch and need at least "
                f"{_MIN_SAMPLES} samples; got {n_total}. {_WHY_FIVE} Explain a larger "
                "batch, or pass a reference set with `context=(ctx_inputs, ctx_target)` "
                "or `reference=` (per-image maps)."
            )
        if grad_kwargs is not None and not isinstance(grad_kwargs, dict):
            raise InputError(
                "`grad_kwargs` must be a dict of keyword arguments for torch.autograd.grad."
            )
        return inputs, args, parts, reference

    @staticmethod
    def _check_like_reference(inputs: Tuple[Tensor, ...], reference: Tuple[Any, ...]) -> None:
        """Inputs must have the reference set's example shape (checked before any work)."""
        ref_inputs = UniCAM._check_inputs(reference[0], "reference[0] (ref_inputs)")
        if len(ref_inputs) != len(inputs):
            raise InputError(
                f"`inputs` has {len(inputs)} tensor(s) but the reference set has "
                f"{len(ref_inputs)}; give inputs of the reference set's form."
            )
        for i, (a, r) in enumerate(zip(inputs, ref_inputs)):
            if not a.is_floating_point() and a.dim() == 2 == r.dim():
                continue  # token ids: sequences of any length (the representation is pooled)
            if a.shape[1:] != r.shape[1:]:
                raise InputError(
                    f"Input {i} has example shape {tuple(a.shape[1:])}, but the reference set's "
                    f"has {tuple(r.shape[1:])}: each input is scored with the reference set, so "
                    "both must have one example shape (resize the inputs, or build the "
                    "reference set from images of the inputs' size)."
                )

    def _forward_pair(
        self,
        inputs: Tuple[Tensor, ...],
        args: Tuple[Any, ...],
        to_input: bool,
        need: Dict[str, bool],
        kwargs: Dict[str, Any],
    ) -> Tuple[Tuple[Any, _Capture], Tuple[Any, _Capture]]:
        """One forward pass of the Student and of the Base, with their captures."""
        s_feature = self._feature_layer(self.student_feature_layer, self.layer, to_input)
        b_feature = self._feature_layer(self.base_feature_layer, self.base_layer, to_input)
        student = self._run(
            "Student",
            self.forward_func,
            self.layer,
            "layer",
            s_feature,
            "student_feature_layer",
            inputs,
            args,
            to_input,
            graph=need["distilled"] and s_feature is not None,
            kwargs=kwargs,
        )
        base = self._run(
            "Base",
            self.base_forward_func,
            self.base_layer,
            "base_layer",
            b_feature,
            "base_feature_layer",
            inputs,
            args,
            to_input,
            graph=need["residual"] and b_feature is not None,
            kwargs=kwargs,
        )
        return student, base

    @staticmethod
    def _statistics(
        x_s: Tensor, y: Tensor, x_b: Tensor, blocks: Optional[Dict[str, Any]], explained: List[int]
    ) -> Tuple[Tensor, Tensor, Tensor, List[Tensor], Tensor, Optional[Tensor]]:
        """(scores, W, flags, rescaled samples, scales, repeated-samples flag (batch mode))."""
        n = x_s.shape[0]
        flat = [
            _statistics_dtype(x_s.detach().reshape(n, -1)),
            None,
            _statistics_dtype(x_b.detach().reshape(n, -1)),
        ]
        repeated = None
        if blocks is None:
            flat[1] = y.to(flat[0].dtype)
            dist, rescaled, scales = _fused.batch_distances(flat)
            repeated = _fused.repeated_samples(dist)
        else:
            flat = [f.to(blocks["x"][v].dtype) for v, f in enumerate((flat[0], y, flat[2]))]
            dist, rescaled, scales = _fused.reference_distances(flat, blocks)
        tolerance = 8 * torch.finfo(flat[0].dtype).eps
        s_all, w_all, flags = _fused.unicam_scores(dist, explained, tolerance)
        return s_all, w_all, flags, rescaled, scales, repeated

    def _layer_maps(
        self, cap: _Capture, a: Tensor, grad: Tensor, relu: bool, summation: bool, n: int
    ) -> Union[Tensor, Tuple[Tensor, ...]]:
        if cap.shapes is not None:  # a layer with several tensors: one map each
            return cap.maps(grad, relu, summation, n)
        return self._gradcam(a.detach(), grad, relu, summation)[:n]

    # -- transformer layers --------------------------------------------------------

    @staticmethod
    def _as_logits(output: Any) -> Any:
        """The Student's output as logits (a Hugging Face ModelOutput, a mapping with
        ``logits``, a tuple with the logits first); another output is kept as it is, and
        refused by :meth:`_logits` only where logits are needed."""
        try:
            return logits_of(output, "Student")
        except InputError:
            return output

    def _input_mask(
        self, inputs: Tuple[Tensor, ...], args: Tuple[Any, ...], mask: Any, context: Any
    ) -> Tuple[Optional[Tensor], Dict[str, Any]]:
        """(the attention mask of the inputs, or None; keyword arguments for the models)."""
        if mask is None:
            return mask_from_args(inputs, args), {}
        if context is not None:
            raise InputError(
                "`attention_mask` cannot be combined with `context`: give the mask as the first "
                "additional forward argument and the context's in "
                "context=(ctx_inputs, ctx_target, (ctx_attention_mask,)), or use reference mode."
            )
        if not isinstance(mask, Tensor) or mask.dim() != 2 or mask.shape[0] != inputs[0].shape[0]:
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise InputError(
                f"`attention_mask` must be an (N, T) tensor with N = {inputs[0].shape[0]} rows, "
                f"one per input, got {got}; pass the tokenizer's attention_mask of the batch."
            )
        return mask, forward_mask_kwargs(mask, args)

    @staticmethod
    def _layout(
        cap: _Capture,
        transform: Optional[Transform],
        mask: Optional[Tensor],
        inputs: Any,
        pooling: str,
    ) -> Optional[Transform]:
        """Decides how the captured layer is read (``attr._layout.choose_layout``) and returns
        the transform to apply: the user's, ``vit_grid`` for a vision transformer's token
        layer, or None (feature maps, and token layers, read as tokens)."""
        if transform is not None or cap.shapes is not None:
            return transform
        leaf = cap.activation
        assert leaf is not None
        cap.pooling = pooling
        try:
            cap.layout = choose_layout(leaf, mask, inputs)
        except InputError as err:
            raise InputError(f"At `{cap.layer_arg}` of the {cap.model}: {err}") from None
        if cap.layout == "tokens" and mask is not None:
            cap.mask = check_mask(mask, leaf.shape[0], leaf.shape[1]).to(leaf.device)
        return vit_grid if cap.layout == "grid" else None

    @staticmethod
    def _token_gradient(
        grad_x: Tensor,
        leaf: Tensor,
        a: Tensor,
        x: Tensor,
        capture: _Capture,
        grad_kwargs: Dict[str, Any],
    ) -> Tensor:
        """dS/dA on a token layer from dS/dX: in closed form through the pooling when the
        representation is the pooled layer, else by autograd from the representation."""
        if capture.feature_layer is not None:
            return UniCAM._gradient(grad_x, leaf, a, x, None, capture, grad_kwargs)
        rows, t = grad_x.shape[0], a.shape[1]
        g = grad_x.reshape(rows, 1, -1)
        if capture.pooling == "cls":
            weight = torch.zeros(rows, t, 1, dtype=g.dtype, device=g.device)
            weight[:, 0] = 1
        elif capture.mask is None:
            weight = torch.full((rows, t, 1), 1.0 / t, dtype=g.dtype, device=g.device)
        else:
            m = capture.mask[:rows].to(g.dtype).unsqueeze(-1)
            weight = m / m.sum(dim=1, keepdim=True)
        return g * weight

    @staticmethod
    def _token_maps(cap: _Capture, grad: Tensor, relu: bool, summation: bool, n: int) -> Tensor:
        """``(N, T)`` token maps (``attr._layout.token_gradcam``); with
        ``attr_dim_summation=False`` the ``(N, T, C)`` weighted activations."""
        a = cap.activation.detach()[:n]
        mask = None if cap.mask is None else cap.mask[:n]
        grad = grad[:n].detach()
        if summation:
            return token_gradcam(a, grad, mask, relu)
        if mask is None:
            out = grad.mean(dim=1, keepdim=True) * a
        else:
            m = mask.to(grad.dtype).unsqueeze(-1)
            out = (grad * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True) * a * m
        return F.relu(out) if relu else out

    # -- reference mode ----------------------------------------------------------

    @staticmethod
    def _check_reference(reference: Any) -> Optional[Tuple[Any, ...]]:
        if reference is None:
            return None
        if not isinstance(reference, (tuple, list)) or len(reference) not in (2, 3, 4):
            length = f" of length {len(reference)}" if isinstance(reference, (tuple, list)) else ""
            raise InputError(
                "`reference` must be (ref_inputs, ref_target), (ref_inputs, ref_target, "
                "ref_additional_forward_args) or (ref_inputs, ref_target, "
                f"ref_additional_forward_args, ref_attention_mask); got "
                f"{type(reference).__name__}{length}."
            )
        ref_inputs = UniCAM._check_inputs(reference[0], "reference[0] (ref_inputs)")
        m = ref_inputs[0].shape[0]
        if m + 1 < _MIN_SAMPLES:
            raise InputError(
                f"`reference` holds {m} samples; each input is scored with the reference set, "
                f"so it needs at least {_MIN_SAMPLES - 1} (n = 1 + m >= {_MIN_SAMPLES}). "
                f"{_WHY_FIVE}"
            )
        return tuple(reference)

    def _reference_blocks(
        self, reference: Tuple[Any, ...], to_input: bool, table_rows: Optional[int]
    ) -> Dict[str, Any]:
        """The reference set's cached statistics (_fused.reference_block) for the Student's
        representation, the label vectors and the Base's representation."""
        key = (id(reference), bool(to_input))
        cached = self._reference_cache.get(key)
        if cached is not None and cached[0] is reference:
            return cached[1]
        ref_inputs = self._check_inputs(reference[0], "reference[0] (ref_inputs)")
        m = ref_inputs[0].shape[0]
        ref_args = (
            _format_additional_forward_args(reference[2] if len(reference) >= 3 else None) or ()
        )
        ref_mask, kwargs = self._input_mask(
            ref_inputs, ref_args, reference[3] if len(reference) == 4 else None, None
        )
        part = (parse_target(reference[1], m, "reference[1] (ref_target)", table_rows), m)
        s_feature = self._feature_layer(self.student_feature_layer, self.layer, to_input)
        b_feature = self._feature_layer(self.base_feature_layer, self.base_layer, to_input)
        out_s, cap_s = self._run(
            "Student",
            self.forward_func,
            self.layer,
            "layer",
            s_feature,
            "student_feature_layer",
            ref_inputs,
            ref_args,
            to_input,
            graph=False,
            kwargs=kwargs,
        )
        _, cap_b = self._run(
            "Base",
            self.base_forward_func,
            self.base_layer,
            "base_layer",
            b_feature,
            "base_feature_layer",
            ref_inputs,
            ref_args,
            to_input,
            graph=False,
            kwargs=kwargs,
        )
        out_s = self._as_logits(out_s)
        y, label_ok = self._labels(
            ravel_targets([part], out_s, table_rows), out_s, cap_s.activation.device
        )
        pooling = self.token_pooling
        with torch.no_grad():
            t_s = self._layout(cap_s, self._transforms[0], ref_mask, ref_inputs, pooling)
            t_b = self._layout(cap_b, self._transforms[1], ref_mask, ref_inputs, pooling)
            _, _, x_s = self._representation(cap_s, t_s, False, "Student", m)
            _, _, x_b = self._representation(cap_b, t_b, False, "Base", m)
        x_s = _statistics_dtype(x_s.detach().reshape(m, -1))
        x_b = _statistics_dtype(x_b.detach().reshape(m, -1))
        blocks = _fused.reference_block([x_s, y.to(x_s.dtype), x_b])
        checks = torch.cat(
            [blocks["distances"].isfinite().flatten(1).all(1), label_ok.reshape(1)]
        ).tolist()
        for ok, what in zip(
            checks, ("Student's representation", "label vectors", "Base's representation")
        ):
            if not ok:
                raise InputError(
                    f"The reference set's {what} contain NaN or Inf; check `reference`."
                )
        if not checks[-1]:
            raise InputError(self._predicted_out_of_range())
        self._reference_cache = {key: (reference, blocks)}
        return blocks

    # -- steps -----------------------------------------------------------------

    @staticmethod
    def _check_inputs(inputs: Any, name: str) -> Tuple[Tensor, ...]:
        if isinstance(inputs, list):
            inputs = tuple(inputs)
        given = inputs if isinstance(inputs, tuple) else (inputs,)
        if not given or not all(isinstance(t, Tensor) for t in given):
            kinds = ", ".join(sorted({f"{type(t).__module__}.{type(t).__name__}" for t in given}))
            raise InputError(
                f"`{name}` must be a torch.Tensor or a tuple of tensors, as in Captum; got "
                f"{kinds or 'an empty tuple'}. Convert arrays with torch.as_tensor(x, "
                "dtype=torch.float32) (the dtype of the model's parameters)."
            )
        inputs = _format_tensor_into_tuples(inputs)
        if any(t.dim() == 0 for t in inputs):
            raise InputError(f"`{name}` must have a batch dimension (dimension 0).")
        sizes = {t.shape[0] for t in inputs}
        if len(sizes) != 1:
            raise InputError(
                f"All tensors of `{name}` must have the same number of examples "
                f"(dimension 0); got {[t.shape[0] for t in inputs]}."
            )
        return inputs

    def _join_context(
        self,
        inputs: Tuple[Tensor, ...],
        args: Tuple[Any, ...],
        context: Any,
        table_rows: Optional[int],
    ) -> Tuple[Tuple[Tensor, ...], Tuple[Any, ...], Tuple[Tuple[str, Optional[Tensor]], int]]:
        if not isinstance(context, (tuple, list)) or len(context) not in (2, 3):
            raise InputError(
                "`context` must be (ctx_inputs, ctx_target) or (ctx_inputs, ctx_target, "
                "ctx_additional_forward_args)."
            )
        ctx_inputs = self._check_inputs(context[0], "context[0] (ctx_inputs)")
        if len(ctx_inputs) != len(inputs):
            raise InputError(
                f"`context` inputs must match `inputs`: {len(inputs)} tensor(s) expected, "
                f"got {len(ctx_inputs)}."
            )
        for i, (a, c) in enumerate(zip(inputs, ctx_inputs)):
            if a.shape[1:] != c.shape[1:]:
                raise InputError(
                    f"Context input {i} has example shape {tuple(c.shape[1:])}, but the "
                    f"explained input has {tuple(a.shape[1:])}."
                )
        n, m = inputs[0].shape[0], ctx_inputs[0].shape[0]
        ctx_part = (parse_target(context[1], m, "context[1] (ctx_target)", table_rows), m)
        joined = tuple(
            torch.cat([a, c.to(device=a.device, dtype=a.dtype)]) for a, c in zip(inputs, ctx_inputs)
        )
        if len(context) == 3:
            ctx_args = _format_additional_forward_args(context[2]) or ()
            if len(ctx_args) != len(args):
                raise InputError(
                    f"`context[2]` must hold the context's version of each additional "
                    f"forward argument: {len(args)} expected, got {len(ctx_args)}."
                )
            args = tuple(
                torch.cat([a, c.to(a.device)])
                if isinstance(a, Tensor) and isinstance(c, Tensor)
                else a
                for a, c in zip(args, ctx_args)
            )
        else:
            for a in args:
                if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n:
                    raise InputError(
                        "An additional forward argument is a tensor with one row per "
                        "explained input; give its rows for the context too: "
                        "context=(ctx_inputs, ctx_target, ctx_additional_forward_args)."
                    )
        return joined, args, ctx_part

    def _warn_training(self) -> None:
        for model, func, layers in (
            ("Student", self.forward_func, (self.layer, self.student_feature_layer)),
            ("Base", self.base_forward_func, (self.base_layer, self.base_feature_layer)),
        ):
            # The whole model when it is a Module, else the layers we know of.
            roots = (
                (func,) if isinstance(func, Module) else tuple(m for m in layers if m is not None)
            )
            found = _diagnosis.training_modules(roots)
            if found:
                warnings.warn(
                    f"The {model} is in training mode, and it has modules that compute "
                    f"differently there ({', '.join(sorted(set(found))[:4])}): dropout and "
                    "batch normalisation make its activations depend on chance and on the "
                    f"batch (and update running statistics). Call .eval() on the {model} "
                    "before explaining; UniCAM does not change the mode.",
                    UniCAMWarning,
                    stacklevel=5,
                )

    @staticmethod
    def _feature_layer(
        feature: Optional[Module], layer: Module, to_input: bool
    ) -> Optional[Module]:
        if feature is None or (feature is layer and not to_input):
            return None
        return feature

    @staticmethod
    def _run(
        model: str,
        forward_func: Callable[..., Any],
        layer: Module,
        layer_arg: str,
        feature: Optional[Module],
        feature_arg: str,
        inputs: Tuple[Tensor, ...],
        args: Tuple[Any, ...],
        to_input: bool,
        graph: bool,
        kwargs: Optional[Dict[str, Any]] = None,
    ) -> Tuple[Any, _Capture]:
        capture = _Capture(model, layer, layer_arg, feature, feature_arg, to_input, graph)
        capture.attach()
        try:
            with torch.no_grad():
                try:
                    output = forward_func(*inputs, *args, **(kwargs or {}))
                except _HookError as err:
                    raise InputError(str(err)) from None
                except Exception as err:
                    raise InputError(
                        f"The {model} failed on the inputs ({type(err).__name__}: {err}). "
                        "Check the shapes, dtypes and devices of `inputs`, `context` and "
                        "`additional_forward_args`."
                    ) from err
        finally:
            capture.remove()
        capture.check()
        return output, capture

    def _report(
        self,
        flags: Tensor,
        label_ok: Tensor,
        kinds: Sequence[str],
        maps: List[Any],
        per_input: bool,
        repeated: Optional[Tensor] = None,
        tool: Optional[str] = None,
    ) -> None:
        """Reads the flags of _fused.unicam_scores (the finiteness of the maps, and in batch
        mode whether the batch repeats samples) in one transfer, then raises or warns."""
        extra = [label_ok.reshape(1)] + [  # a tuple-output layer gives a tuple of maps
            torch.stack([torch.isfinite(t).all() for t in (m if isinstance(m, tuple) else (m,))])
            .all()
            .reshape(1)
            for m in maps
        ]
        if repeated is not None:
            extra.append(repeated.reshape(1))
        width = flags.shape[1]
        values = torch.cat([flags.any(dim=0), flags.all(dim=0)[-3:]] + extra).tolist()
        self._raise_invalid(
            values[width : width + 3],
            values[width + 3],
            values[width + 4 : width + 4 + len(maps)],
            kinds,
        )
        if not per_input and not self._warned_batch:
            self._warn_batch_tool(tool, bool(values[-1]) if repeated is not None else False)
        self._warn_degenerate(values[:width], kinds, per_input, flags.shape[0])

    def _raise_invalid(
        self, finite: List[bool], label_ok: bool, maps_ok: List[bool], kinds: Sequence[str]
    ) -> None:
        if not label_ok:
            raise InputError(self._predicted_out_of_range())
        for ok, name in zip(
            finite, ("Student's representation", "label vectors", "Base's representation")
        ):
            if not ok:
                raise InputError(
                    f"The {name} {'contain' if name.endswith('s') else 'contains'} NaN or Inf "
                    "(or values that overflow); check the inputs, the targets and the models' "
                    "weights."
                )
        for ok, kind in zip(maps_ok, kinds):
            if not ok:
                model = "Student" if kind == "distilled" else "Base"
                raise InputError(
                    f"The {model}'s activations at the attribution layer contain NaN or Inf; "
                    "check the inputs and the model's weights."
                )

    def _warn_batch_tool(self, tool: Optional[str], repeated: bool) -> None:
        """Batch mode inside a tool that builds its own batches, or on a batch that repeats
        samples (as those tools' batches do): the maps measure the batch's make-up. Once
        per UniCAM instance."""
        if tool is None and not repeated:
            return
        if tool is not None:
            why = f"UniCAM in batch mode is called from {tool.split('.')[0]} ({tool})"
        else:
            why = (
                "UniCAM in batch mode got a batch with repeated or near-duplicate samples (two "
                "samples with nearly the same representation in both models)"
            )
        warnings.warn(
            f"{why}: a batch-mode map is a statistic of the whole batch, so tools that build "
            "batches of their own (NoiseTunnel's noisy copies, sensitivity_max's and "
            "infidelity's perturbed copies, Occlusion's and Quantus' batches) measure the "
            "batch's make-up, not the image. Use reference mode: "
            "UniCAM(..., reference=captum_unicam.reference_set(dataset, m)) gives per-image "
            "maps (docs/per-image.md). This warning is shown once per UniCAM object.",
            UniCAMWarning,
            stacklevel=5,
        )
        self._warned_batch = True

    def _warn_degenerate(
        self, anyf: List[bool], kinds: Sequence[str], per_input: bool, count: int
    ) -> None:
        k = len(kinds)
        where = " for some inputs" if per_input and count > 1 else ""
        batch = "reference set" if per_input else "batch"
        s_null, b_null = anyf[0], anyf[3]
        for kind, explained_null, other_null, explained, other in (
            ("distilled", s_null, b_null, "Student", "Base"),
            ("residual", b_null, s_null, "Base", "Student"),
        ):
            if kind not in kinds:
                continue
            i = kinds.index(kind)
            if other_null:
                warnings.warn(
                    f"The {other}'s representation is constant over the {batch}{where} (or has "
                    "every pair of samples at one distance: no distance structure), so there is "
                    f"nothing to remove: the {kind} score is the distance correlation of the "
                    f"{explained} with the labels.",
                    UniCAMWarning,
                    stacklevel=6,
                )
            reason = _degenerate_reason(anyf, i, k, explained_null, explained, other, where, batch)
            if reason is not None:
                warnings.warn(
                    f"UniCAM {kind} score set to 0 and its maps to zero: {reason}.",
                    UniCAMWarning,
                    stacklevel=6,
                )

    def _predicted_out_of_range(self) -> str:
        return (
            "A predicted class (target=None: the Student's argmax) is out of range: the "
            f"Student has more outputs than `label_embeddings` has rows "
            f"({None if self.label_embeddings is None else self.label_embeddings.shape[0]}). "
            "Give an embedding for every class, or pass `target`."
        )

    def _logits(self, kinds: set, output: Any) -> Optional[Tensor]:
        """The Student's (N, num_classes) output, where predicted classes or the number of
        classes are needed; None otherwise."""
        if "predicted" not in kinds and not ("index" in kinds and self.label_embeddings is None):
            return None
        if not isinstance(output, Tensor) or output.dim() != 2:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            need = (
                "predicted classes (target=None)"
                if "predicted" in kinds
                else "the number of classes"
            )
            raise InputError(
                f"UniCAM reads the Student's output as (N, num_classes) logits to find {need}"
                f", but it is {shape}. Pass `target` as class indices and "
                "`label_embeddings`, or label vectors."
            )
        return output.detach()

    @staticmethod
    def _predicted(
        logits: Tensor, table: Optional[Tensor], device: torch.device
    ) -> Tuple[Tensor, Tensor]:
        """Predicted classes on the device (no transfer), clamped into the table, and a 0-d
        flag: all were in range."""
        index = logits.argmax(dim=1).to(device)
        if table is not None and logits.shape[1] > table.shape[0]:
            return index.clamp_max(table.shape[0] - 1), (index < table.shape[0]).all()
        return index, torch.ones((), dtype=torch.bool, device=device)

    def _labels(
        self,
        parts: List[Tuple[Tuple[str, Optional[Tensor]], int]],
        output: Any,
        device: torch.device,
    ) -> Tuple[Tensor, Tensor]:
        """(Y on ``device``, a 0-d bool tensor: every predicted class has a label vector).

        Class indices given by the caller are checked on the host, where they are;
        predicted classes stay on the device (no transfer): an out-of-range one is
        clamped and reported by the flag, read with the other checks at the end."""
        logits = self._logits({kind for (kind, _), _ in parts}, output)
        table = None if self.label_embeddings is None else self.label_embeddings.detach().to(device)
        num_classes = (
            table.shape[0] if table is not None else (None if logits is None else logits.shape[1])
        )
        ok = torch.ones((), dtype=torch.bool, device=device)
        rows: List[Tensor] = []
        start = 0
        for (kind, value), count in parts:
            if kind == "vector":
                rows.append(value.detach().to(device))
            elif kind == "predicted":
                index, in_range = self._predicted(logits[start : start + count], table, device)
                ok = ok & in_range
                rows.append(rows_of(index, table, num_classes))
            else:
                if table is None and bool((value >= num_classes).any()):  # on the host
                    raise InputError(
                        f"Class index {int(value.max())} is out of range: there are "
                        f"{num_classes} classes (Student outputs). Pass valid class indices, "
                        "or `label_embeddings` with a row per class."
                    )
                rows.append(rows_of(value.to(device), table, num_classes))
            start += count
        if len({r.shape[1] for r in rows}) != 1:
            raise InputError(
                "The label vectors of `target` and of the context have different widths "
                f"({[r.shape[1] for r in rows]}); give both as class indices or as label "
                "vectors of one width."
            )
        dtype = next((r.dtype for r in rows if r.is_floating_point()), torch.get_default_dtype())
        return torch.cat([r.to(dtype=dtype) for r in rows]), ok

    @staticmethod
    def _representation(
        capture: _Capture, transform: Optional[Transform], grad: bool, model: str, n: int
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """(leaf, A, X): the captured leaf, A = transform(leaf), and the representation."""
        leaf = capture.activation
        assert leaf is not None
        if grad and not capture.graph and transform is not None:
            leaf.requires_grad_(True)  # our own copy: only the transform is differentiated
        a = leaf if transform is None else transform(leaf)
        if not isinstance(a, Tensor) or a.dim() < 2 or a.shape[0] != n:
            raise InputError(
                f"`reshape_transform` must map the {model}'s activations to a tensor "
                f"(N, C, ...) with N = {n}; got "
                f"{tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__}."
            )
        x = a if capture.feature_layer is None else capture.representation
        assert x is not None
        if capture.layout == "tokens" and (x is a or x.dim() == 3):
            # one vector per sequence, pooled over the valid tokens (or the CLS token)
            x = pool_tokens(x.detach() if x is a else x, capture.mask, capture.pooling)
        if x.shape[0] != n:
            raise InputError(
                f"The {model}'s representation has {x.shape[0]} rows for {n} inputs; choose a "
                "representation layer whose output has one row per example."
            )
        return leaf, a, x

    @staticmethod
    def _gradient(
        grad_x: Tensor,
        leaf: Tensor,
        a: Tensor,
        x: Tensor,
        transform: Optional[Transform],
        capture: _Capture,
        grad_kwargs: Dict[str, Any],
    ) -> Tensor:
        """dS/dA from dS/dX (``grad_x``, rows of the explained inputs, flattened).

        With the representation read at the attribution layer and no transform, X is A
        and dS/dA is ``grad_x`` itself: no autograd graph at all. Otherwise autograd
        carries ``grad_x`` back to the layer activations (through the recorded part of
        the network, or the transform), with ``grad_kwargs``; the transform is then
        applied to that gradient, as to the activations."""
        rows = grad_x.shape[0]
        if capture.feature_layer is None and transform is None:
            return grad_x.reshape((rows,) + tuple(a.shape[1:]))
        if not x.requires_grad:
            raise InputError(
                "The representation does not depend on the attribution layer's "
                "activations; choose a feature layer downstream of the attribution layer."
            )
        full = torch.zeros_like(x)
        full[:rows] = grad_x.reshape((rows,) + tuple(x.shape[1:]))
        kwargs = dict(grad_kwargs)
        kwargs.setdefault("allow_unused", True)
        (grad,) = torch.autograd.grad(x, leaf, grad_outputs=full, **kwargs)
        if grad is None:
            raise InputError(
                "The representation does not depend on the attribution layer's "
                "activations; choose a feature layer downstream of the attribution layer."
            )
        return grad if transform is None else transform(grad)

    @staticmethod
    def _gradcam(a: Tensor, grad: Optional[Tensor], relu: bool, summation: bool) -> Tensor:
        if grad is None:
            grad = torch.zeros_like(a)
        weights = (
            grad.mean(dim=tuple(range(2, grad.dim())), keepdim=True) if grad.dim() > 2 else grad
        )
        out = weights * a
        if summation:
            out = out.sum(dim=1, keepdim=True)
        if relu:
            out = F.relu(out)
        return out.detach()
