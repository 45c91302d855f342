"""Internal: the validation phase of :func:`~captum_unicam.metrics.evaluate_kd`.

Every check that can be made before a batch is scored: layers, perturbation, devices, the
models' output widths, and each batch's form and targets. Not a public API.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from captum_unicam._outputs import logits_of
from captum_unicam.errors import DeviceError, InputError
from captum_unicam.metrics._features import check_perturbation, target_indices
from captum_unicam.perturb import mask_multiply, road_impute

__all__ = [
    "unpack",
    "check_layers",
    "check_positive_int",
    "resolve_perturbation",
    "resolve_device",
    "output_widths",
    "check_target",
]

PERTURBATIONS = ("mask", "road", "none")


def unpack(item: Any, index: int) -> Tuple[Tensor, Any]:
    if isinstance(item, Mapping):
        raise InputError(
            f"batch {index} is a mapping; evaluate_kd expects data items (inputs, target) or "
            "(inputs, target, mask)."
        )
    if not isinstance(item, (tuple, list)) or len(item) < 2 or not isinstance(item[0], Tensor):
        raise InputError(
            f"batch {index} is not (inputs, target[, ...]) with a tensor of inputs; got "
            f"{type(item).__name__}."
        )
    return item[0], item[1]


def check_layers(layers: Any, student: Any, base: Any) -> Dict[str, Tuple[nn.Module, nn.Module]]:
    if not isinstance(layers, Mapping) or not layers:
        raise InputError(
            "layers must be a non-empty mapping name -> (student_layer, base_layer), e.g. "
            "{'L4': (student.layer4[-1], base.layer4[-1])}."
        )
    out = {}
    for name, pair in layers.items():
        if (
            not isinstance(pair, (tuple, list))
            or len(pair) != 2
            or not all(isinstance(m, nn.Module) for m in pair)
        ):
            raise InputError(
                f"layers[{name!r}] must be a pair (student_layer, base_layer) of nn.Modules."
            )
        for model, layer, who in ((student, pair[0], "student"), (base, pair[1], "base")):
            if isinstance(model, nn.Module) and not any(m is layer for m in model.modules()):
                raise InputError(
                    f"layers[{name!r}]: the {who} layer is not a module of the {who} model."
                )
        out[str(name)] = (pair[0], pair[1])
    return out


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}.")
    return value


def resolve_perturbation(perturbation: Any) -> Tuple[Optional[Callable], str]:
    """(callable or None, name for the settings) of ``perturbation``."""
    if isinstance(perturbation, str):
        if perturbation not in PERTURBATIONS:
            raise InputError(
                "perturbation must be a callable (inputs, attributions) -> perturbed inputs, None, "
                f"or one of {PERTURBATIONS}; got {perturbation!r}."
            )
        func = {"mask": mask_multiply, "road": road_impute, "none": None}[perturbation]
        return func, perturbation
    check_perturbation(perturbation)
    if perturbation is None:
        return None, "none"
    return perturbation, getattr(perturbation, "__name__", type(perturbation).__name__)


def model_device(model: Any, layers: Sequence[nn.Module]) -> Optional[torch.device]:
    """Device of the model's first parameter (or buffer); of its layers' if it is not a
    Module; None if it has none."""
    roots = [model] if isinstance(model, nn.Module) else list(layers)
    for root in roots:
        for t in root.parameters():
            return t.device
        for t in root.buffers():
            return t.device
    return None


def normalise_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_device(
    device: Any, student: Any, base: Any, layer_pairs: Mapping[str, Tuple[nn.Module, nn.Module]]
) -> Optional[torch.device]:
    """Where batches go: ``device``, or the Student's device when it is None. A Base on
    another device than the Student, or a ``device`` other than the models', is a
    :class:`~captum_unicam.errors.DeviceError`."""
    s_dev = model_device(student, [s for s, _ in layer_pairs.values()])
    b_dev = model_device(base, [b for _, b in layer_pairs.values()])
    if (
        s_dev is not None
        and b_dev is not None
        and normalise_device(s_dev) != normalise_device(b_dev)
    ):
        raise DeviceError(
            f"the Student's parameters are on {s_dev} and the Base's on {b_dev}; evaluate_kd runs "
            "both on the same batches: move them to one device first (e.g. base.to(device))."
        )
    if device is None:
        return s_dev if s_dev is not None else b_dev
    try:
        wanted = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(
            "device must be None, a torch.device or a device string such as 'cuda:0'; got "
            f"{device!r}."
        ) from err
    model_dev = s_dev if s_dev is not None else b_dev
    if model_dev is not None and normalise_device(wanted) != normalise_device(model_dev):
        raise DeviceError(
            f"device={str(device)!r}, but the models' parameters are on {model_dev}; evaluate_kd "
            "moves the batches, never the models. Pass device=None (the models' device) or move "
            "the models with .to(device) first."
        )
    return wanted


def output_widths(student: Callable, base: Callable, x: Tensor, need_logits: bool) -> Optional[int]:
    """Number of classes of both models, from one forward pass of each on two samples; a
    clear error if they differ (or if Grad-CAM needs logits and there are none)."""
    widths = []
    with torch.no_grad():
        for model, who in ((student, "Student"), (base, "Base")):
            try:
                out = model(x)
            except Exception as err:  # noqa: BLE001 - re-raised with what to check
                raise InputError(
                    f"the {who} failed on the first batch's inputs of shape {tuple(x.shape)} "
                    f"({type(err).__name__}: {err}); check the inputs' shape, dtype and device."
                ) from err
            try:  # a Hugging Face ModelOutput, a tuple with the logits first
                out = logits_of(out, who)
            except InputError:
                out = None
            widths.append(out.shape[1] if isinstance(out, Tensor) and out.dim() == 2 else None)
    w_s, w_b = widths
    if need_logits and (w_s is None or w_b is None):
        raise InputError(
            "Grad-CAM maps (maps with 'gradcam') read each model's output as (N, num_classes) "
            "logits; a model returns something else. Wrap it to return logits, or leave "
            "'gradcam' out of maps."
        )
    if w_s is not None and w_b is not None and w_s != w_b:
        raise InputError(
            f"the Student has {w_s} outputs and the Base {w_b}; FSS and RS compare two models of "
            "the same classification task, explained for the same targets: pass models with the "
            "same classes."
        )
    return w_s if w_s is not None else w_b


def check_target(i: int, y: Any, n: int, width: Optional[int], rows: Optional[int]) -> Tensor:
    """The batch's class indices as a LongTensor (n,), checked before any work on it."""
    try:
        t = target_indices(y, n)
    except InputError as err:
        raise InputError(f"batch {i}: {err}") from err
    top = int(t.max())
    if width is not None and top >= width:
        raise InputError(
            f"batch {i}: target holds class index {top}, but the models have {width} outputs "
            f"(classes 0..{width - 1}); the data's labels must index the models' classes."
        )
    if rows is not None and top >= rows:
        raise InputError(
            f"batch {i}: target holds class index {top}, but label_embeddings has {rows} rows; it "
            "needs one row per class, in class-index order."
        )
    return t
