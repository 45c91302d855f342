r"""Faithfulness of a saliency map to the quantity it explains: deletion and insertion curves.

A map ranks the pixels of an image. If the ranking is faithful, removing the pixels it calls
most relevant first (MoRF) makes the explained quantity fall faster than removing them in a
random order, and removing the least relevant first (LeRF) makes it fall slower. This module
measures exactly that, on the quantity the map explains:

- for a UniCAM map, the per-image score it is the gradient of: ``S_d`` (distilled) or
  ``S_r`` (residual) of the image scored against a fixed reference set (reference mode);
- for Grad-CAM and Captum's attribution methods, the logit (or the probability) of the
  target class: :func:`target_logit`, :func:`target_probability`.

Functions:

- :func:`perturbation_curve`: per-image curves ``(N, P)`` and their areas for one map per
  image, one order (``"morf"`` / ``"lerf"``) and one mode (``"deletion"`` / ``"insertion"``),
  with ROAD's noisy linear imputation (:func:`captum_unicam.perturb.road_impute`) or a
  constant baseline for the removed pixels;
- :func:`faithfulness`: both orders for a map and for seeded random maps at the map's own
  resolution on the same images, with bootstrap intervals over images and paired intervals
  of the difference to random.

Randomness (the imputation noise, the random maps, the order of tied pixels) is drawn from
generators seeded by ``seed`` and the bytes of each image, so an image's numbers do not
depend on the other images of the call, their order, or ``batch_size``.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import numbers
import warnings
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np
import torch
from captum.attr import LayerAttribution
from torch import Tensor

from captum_unicam.errors import InputError
from captum_unicam.metrics.intervals import bootstrap_ci
from captum_unicam.perturb import removal_count, road_impute

__all__ = [
    "FaithfulnessWarning",
    "PerturbationCurve",
    "faithfulness",
    "perturbation_curve",
    "target_logit",
    "target_probability",
]

_ORDERS = ("morf", "lerf")
_MODES = ("deletion", "insertion")


class FaithfulnessWarning(UserWarning):
    """A faithfulness measurement that is doubtful: constant maps (their pixel order is
    random), or an explained quantity that does not change under the perturbations."""


class PerturbationCurve(NamedTuple):
    """The result of :func:`perturbation_curve`.

    - **percentiles** (*Tensor*): ``(P,)`` float64, the percentages of pixels removed
      (deletion) or present (insertion).
    - **curves** (*Tensor*): ``(N, P)`` float64, ``forward_func`` on each perturbed image.
    - **auc** (*Tensor*): ``(N,)`` float64, the area under each curve (trapezoidal rule
      over ``percentiles / 100``) divided by the range of ``percentiles / 100``: the mean
      height of the curve, in the units of ``forward_func``'s output.
    """

    percentiles: Tensor
    curves: Tensor
    auc: Tensor


# --------------------------------------------------------------------------------------
# forward functions
# --------------------------------------------------------------------------------------


def target_logit(model: Callable[..., Tensor]) -> Callable[..., Tensor]:
    r"""The forward function for maps that explain a class logit (Grad-CAM, Captum's
    attribution methods): ``inputs, *additional_forward_args -> model(inputs, *args)``,
    ``(N, num_classes)``, of which :func:`perturbation_curve` reads the ``target``
    column of each row.

    Args:

        model (Callable): The model that was explained.

    Returns:
        *Callable*: ``forward_func(inputs, *additional_forward_args)``.

    Examples::

        >>> cam = LayerGradCam(net, net.layer4).attribute(x, target=y)
        >>> curve = perturbation_curve(target_logit(net), x, cam, target=y)
    """
    if not callable(model):
        raise InputError(f"target_logit: `model` must be callable, got {type(model).__name__}.")

    def forward_func(inputs: Tensor, *args: Any) -> Tensor:
        return model(inputs, *args)

    return forward_func


def target_probability(model: Callable[..., Tensor]) -> Callable[..., Tensor]:
    r"""Like :func:`target_logit`, with the softmax over the classes of the model's output:
    the forward function for maps read as explaining the target class probability.

    Args:

        model (Callable): The model that was explained; its output ``(N, num_classes)``
                    holds logits.

    Returns:
        *Callable*: ``forward_func(inputs, *additional_forward_args)``, probabilities
        ``(N, num_classes)``.

    Examples::

        >>> curve = perturbation_curve(target_probability(net), x, cam, target=y)
    """
    if not callable(model):
        raise InputError(
            f"target_probability: `model` must be callable, got {type(model).__name__}."
        )

    def forward_func(inputs: Tensor, *args: Any) -> Tensor:
        return torch.softmax(model(inputs, *args), dim=1)

    return forward_func


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------


def _check_inputs(inputs: Any) -> Tensor:
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise InputError(
            f"`inputs` must be a floating-point (N, C, H, W) tensor of images, got {shape}; "
            "add a batch dimension with inputs.unsqueeze(0) for a single image."
        )
    if inputs.shape[0] == 0 or inputs.shape[2] * inputs.shape[3] < 2:
        raise InputError(f"`inputs` is empty or has a single pixel: shape {tuple(inputs.shape)}.")
    if not bool(torch.isfinite(inputs).all()):
        raise InputError("`inputs` contain NaN or Inf; clean the images first.")
    return inputs


def _check_maps(inputs: Tensor, attributions: Any) -> Tensor:
    """The maps as (N, 1, h, w) float tensors on the input's device (channels summed)."""
    if not isinstance(attributions, Tensor) or attributions.dim() not in (3, 4):
        shape = tuple(attributions.shape) if isinstance(attributions, Tensor) else None
        raise InputError(
            "`attributions` must be a tensor of shape (N, 1, h, w), (N, h, w) or (N, C, h, w) "
            f"(one map per image), got {shape or type(attributions).__name__}."
        )
    maps = attributions.detach()
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    n, c = inputs.shape[:2]
    if maps.shape[0] != n or maps.shape[1] not in (1, c) or maps[0, 0].numel() == 0:
        raise InputError(
            f"`attributions` of shape {tuple(attributions.shape)} do not fit inputs of shape "
            f"{tuple(inputs.shape)}: pass one map per image, with 1 or {c} channels."
        )
    if maps.is_complex() or maps.dtype == torch.bool:
        raise InputError(f"`attributions` must be real numbers, got dtype {maps.dtype}.")
    maps = maps.to(device=inputs.device, dtype=torch.float64)
    if not bool(torch.isfinite(maps).all()):
        raise InputError(
            "`attributions` contain NaN or Inf; fix the attribution method (or replace them, "
            "e.g. torch.nan_to_num) first."
        )
    return maps.sum(dim=1, keepdim=True)


def _check_percentiles(percentiles: Any, mode: str, baseline: Any) -> Tensor:
    if percentiles is None:
        percentiles = range(0, 100, 10) if mode == "deletion" else range(10, 101, 10)
    try:
        values = [float(p) for p in percentiles]
    except (TypeError, ValueError) as err:
        raise InputError(
            f"`percentiles` must be a sequence of numbers, got {percentiles!r}."
        ) from err
    ok = bool(values) and all(0.0 <= p <= 100.0 for p in values)
    if not ok or any(b <= a for a, b in itertools.pairwise(values)):
        raise InputError(
            f"`percentiles` must be a non-empty, strictly increasing sequence in [0, 100], "
            f"got {values}."
        )
    everything = values[-1] if mode == "deletion" else values[0]
    if isinstance(baseline, str) and everything == (100.0 if mode == "deletion" else 0.0):
        raise InputError(
            f"{mode} at {everything:g} % removes every pixel, and ROAD's imputation needs at "
            "least one kept pixel to impute from; drop that percentile or pass a constant "
            "`baseline` (e.g. baseline=0.0)."
        )
    return torch.tensor(values, dtype=torch.float64)


def _check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InputError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.")
    return value


def _check_baseline(baseline: Any, inputs: Tensor) -> Union[str, Tensor]:
    if isinstance(baseline, str):
        return _check_choice(baseline, "baseline", ("road",))
    if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        if not math.isfinite(float(baseline)):
            raise InputError(f"`baseline` must be finite, got {baseline!r}.")
        return torch.full((1, 1, 1, 1), float(baseline), dtype=inputs.dtype, device=inputs.device)
    if isinstance(baseline, Tensor):
        try:
            torch.broadcast_shapes(baseline.shape, inputs.shape[1:])
        except RuntimeError as err:
            raise InputError(
                f"`baseline` of shape {tuple(baseline.shape)} does not broadcast to one image of "
                f"shape {tuple(inputs.shape[1:])}; pass a number or a (C, H, W) tensor."
            ) from err
        if torch.broadcast_shapes(baseline.shape, inputs.shape[1:]) != inputs.shape[1:]:
            raise InputError(
                f"`baseline` of shape {tuple(baseline.shape)} is larger than one image."
            )
        return baseline.detach().to(device=inputs.device, dtype=inputs.dtype)
    raise InputError(
        f"`baseline` must be 'road', a number or a (C, H, W) tensor, got {type(baseline).__name__}."
    )


def _check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise InputError(f"`{name}` must be an integer >= {low}, got {value!r}.")
    return int(value)


def _check_noise(noise: Any) -> float:
    ok = isinstance(noise, numbers.Real) and not isinstance(noise, bool)
    if not ok or not (0.0 <= float(noise) < math.inf):
        raise InputError(f"`noise` must be a finite number >= 0, got {noise!r}.")
    return float(noise)


# --------------------------------------------------------------------------------------
# seeds, ranks, chunks
# --------------------------------------------------------------------------------------


def _image_seeds(inputs: Tensor, seed: int) -> List[bytes]:
    """One key per image: a hash of ``seed`` and the image's bytes (so an image draws the
    same random numbers whatever else is in the call)."""
    host = inputs.detach().cpu().contiguous()
    keys = []
    for image in host:
        digest = hashlib.blake2b(str(seed).encode(), digest_size=16)
        digest.update(image.reshape(-1).view(torch.uint8).numpy().tobytes())
        keys.append(digest.digest())
    return keys


def _generator(key: bytes, tag: str) -> torch.Generator:
    value = hashlib.blake2b(key + tag.encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(value, "little") & (2**63 - 1))


def _upsampled(maps: Tensor, size: Tuple[int, int]) -> Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    constant = lo == maps.amax(dim=(-2, -1), keepdim=True)
    # a constant map stays exactly constant (the bilinear weights round otherwise), so its
    # pixels are ordered by the tie-break, not by rounding noise
    return torch.where(constant, lo, LayerAttribution.interpolate(maps, size, "bilinear"))


def _ranks(maps: Tensor, keys: Sequence[bytes]) -> Tensor:
    """(N, H*W) rank of each pixel by increasing relevance (0 = least relevant); ties are
    ordered by a random permutation seeded per image."""
    n = maps.shape[0]
    flat = maps.reshape(n, -1)
    size = flat.shape[1]
    perm = torch.stack([torch.randperm(size, generator=_generator(k, "ties")) for k in keys])
    perm = perm.to(flat.device)
    within = torch.sort(flat.gather(1, perm), dim=1, stable=True).indices
    order = perm.gather(1, within)
    steps = torch.arange(size, device=flat.device).expand(n, size)
    return torch.empty_like(order).scatter_(1, order, steps)


def _chunk(value: Any, start: int, stop: int, n: int) -> Any:
    """Captum's rule: a tensor (or list) with one row per example is split with the
    batch; anything else is passed unchanged."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value[start:stop]
    if isinstance(value, (list, tuple)) and len(value) == n and n > 1:
        return type(value)(value[start:stop])
    return value


def _select(output: Any, target: Any, func: str) -> Tensor:
    if not isinstance(output, Tensor):
        raise InputError(f"`forward_func` must return a tensor, got {type(output).__name__}.")
    n = output.shape[0] if output.dim() > 0 else 0
    if output.dim() == 2 and output.shape[1] == 1 and target is None:
        output = output[:, 0]
    if output.dim() == 1 and target is None:
        return output
    if output.dim() == 2 and target is not None:
        index = torch.as_tensor(target, device=output.device).reshape(-1)
        if index.dtype in (torch.bool,) or index.is_floating_point() or index.numel() not in (1, n):
            raise InputError(f"`target` must be an int or {n} class indices, got {target!r}.")
        if bool(((index < 0) | (index >= output.shape[1])).any()):
            raise InputError(f"`target` holds class indices outside [0, {output.shape[1]}).")
        return output.gather(1, index.expand(n).unsqueeze(1).long())[:, 0]
    raise InputError(
        f"{func}: forward_func returned shape {tuple(output.shape)} with target={target!r}: "
        "it must return one value per image (N,) with target=None, or (N, num_classes) with "
        "target= the class per image (e.g. target_logit(model) and target=labels)."
    )


# --------------------------------------------------------------------------------------
# perturbation_curve
# --------------------------------------------------------------------------------------


def _perturbed(
    inputs: Tensor,
    ranks: Tensor,
    removed: int,
    keep_high: bool,
    baseline: Any,
    noise_fields: Optional[Tensor],
) -> Tensor:
    """Images with ``removed`` pixels replaced: the lowest ranks when ``keep_high``, else the
    highest."""
    n, _, height, width = inputs.shape
    size = height * width
    key = (ranks if keep_high else (size - 1) - ranks).reshape(n, 1, height, width)
    mask = (key < removed).reshape(n, 1, height, width)
    if removed == 0:
        return inputs.detach().clone()
    if not isinstance(baseline, str):
        return torch.where(mask, baseline.expand_as(inputs), inputs.detach())
    percent = 100.0 * removed / size
    assert removal_count(height, width, percent) == removed
    # float64 keys: distinct integers for any image size (float16 would merge ranks > 2048)
    imputed = road_impute(inputs, key.to(torch.float64), percent, noise=0.0)
    if noise_fields is not None:
        imputed = torch.where(mask, imputed + noise_fields, imputed)
    return imputed


def _noise_fields(
    inputs: Tensor, keys: Sequence[bytes], index: int, noise: float
) -> Optional[Tensor]:
    if noise == 0:
        return None
    shape = tuple(inputs.shape[1:])
    fields = [
        torch.randn(shape, generator=_generator(k, f"noise{index}"), dtype=inputs.dtype)
        for k in keys
    ]
    return (noise * torch.stack(fields)).to(inputs.device)


def _auc(percentiles: Tensor, curves: Tensor) -> Tensor:
    if percentiles.numel() == 1:
        return curves[:, 0].clone()
    x = percentiles / 100.0
    return torch.trapezoid(curves, x, dim=1) / (x[-1] - x[0])


def _curves_of(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    ranks: Tensor,
    keys: Sequence[bytes],
    target: Any,
    args: Tuple[Any, ...],
    percentiles: Tensor,
    settings: Dict[str, Any],
) -> Tensor:
    """(n, P) values of forward_func on one chunk of images."""
    _, _, height, width = inputs.shape
    size = height * width
    keep_high = (settings["mode"] == "deletion") == (settings["order"] == "lerf")
    columns = []
    for index, p in enumerate(percentiles.tolist()):
        k = removal_count(height, width, p)
        removed = k if settings["mode"] == "deletion" else size - k
        fields = None
        if isinstance(settings["baseline"], str):
            fields = _noise_fields(inputs, keys, index, settings["noise"])
        x = _perturbed(inputs, ranks, removed, keep_high, settings["baseline"], fields)
        with torch.no_grad():
            out = _select(forward_func(x, *args), target, "perturbation_curve")
        if out.shape[0] != inputs.shape[0]:
            raise InputError(
                f"forward_func returned {out.shape[0]} values for {inputs.shape[0]} images."
            )
        columns.append(out.detach().to(device="cpu", dtype=torch.float64))
    return torch.stack(columns, dim=1)


def _format_args(additional_forward_args: Any) -> Tuple[Any, ...]:
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def perturbation_curve(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: Any = None,
    additional_forward_args: Any = None,
    *,
    percentiles: Optional[Sequence[float]] = None,
    order: str = "morf",
    mode: str = "deletion",
    baseline: Union[str, float, Tensor] = "road",
    noise: float = 0.01,
    seed: int = 0,
    batch_size: Optional[int] = None,
) -> PerturbationCurve:
    r"""
    Deletion or insertion curve of each image: ``forward_func`` on the image with a growing
    share of its pixels removed (deletion) or present (insertion), in the order of its map.

    Each map is upsampled to the input size like ``LayerAttribution.interpolate(
    attributions, (H, W), "bilinear")`` and ranks the pixels; tied pixels (e.g. the zero
    region of a ReLU map) are ordered at random (seeded per image). For each ``p`` in
    ``percentiles``, with ``k = round(p / 100 * H * W)``:

    - ``mode="deletion"``: the ``k`` most relevant (``order="morf"``) or least relevant
      (``"lerf"``) pixels are removed;
    - ``mode="insertion"``: only those ``k`` pixels are present, all others are removed.

    Removed pixels are imputed as ROAD does (``baseline="road"``: noisy linear imputation
    from the 8 neighbours, :func:`captum_unicam.perturb.road_impute`, plus ``noise`` times a
    standard normal draw per pixel and channel) or set to a constant ``baseline``.

    Args:

        forward_func (Callable): The quantity the map explains:
                    ``forward_func(perturbed, *additional_forward_args)`` returns one value
                    per image ``(N,)`` (use ``target=None``), or ``(N, num_classes)``, of
                    which the ``target`` column is read (:func:`target_logit`,
                    :func:`target_probability`). For a UniCAM map, the per-image
                    reference-mode score ``S_d`` (distilled) or ``S_r`` (residual), with
                    the labels in ``additional_forward_args``.
        inputs (Tensor): Images ``(N, C, H, W)``, floating point, finite. Not modified.
        attributions (Tensor): One map per image: ``(N, 1, h, w)`` (``LayerGradCam``,
                    ``UniCAM``), ``(N, h, w)`` or ``(N, C, h, w)`` input attributions
                    (summed over channels). Any ``h, w``.
        target (int, list or Tensor, optional): Class per image when ``forward_func``
                    returns ``(N, num_classes)``: one int for all, or ``N`` indices.
                    Default: None
        additional_forward_args (Any, optional): Passed to ``forward_func`` after the
                    perturbed inputs; a tensor (or list) with ``N`` rows is split with
                    the images when ``batch_size`` is set, as in Captum. Default: None
        percentiles (sequence of float, optional): Strictly increasing percentages in
                    [0, 100]. Default: 0, 10, ..., 90 for deletion, 10, 20, ..., 100 for
                    insertion (ROAD cannot impute an image with no pixel left).
        order (str, optional): ``"morf"`` (most relevant first) or ``"lerf"``.
                    Default: ``"morf"``
        mode (str, optional): ``"deletion"`` or ``"insertion"``. Default: ``"deletion"``
        baseline (str, float or Tensor, optional): ``"road"``, a number, or a ``(C, H, W)``
                    tensor (broadcastable) for the removed pixels. Default: ``"road"``
        noise (float, optional): Standard deviation of ROAD's noise, in input units; used
                    with ``baseline="road"`` only. Default: 0.01
        seed (int, optional): Seed of the noise and of the order of tied pixels, combined
                    with each image's bytes. Default: 0
        batch_size (int, optional): Images per call of ``forward_func``; the numbers do
                    not depend on it. Default: None (all at once)

    Returns:
        :class:`PerturbationCurve` ``(percentiles, curves, auc)``: ``(P,)``, ``(N, P)`` and
        ``(N,)`` float64 CPU tensors; ``auc`` is the mean height of the curve (trapezoidal
        area over ``percentiles / 100`` divided by their range).

    Examples::

        >>> cam = LayerGradCam(net, net.layer4).attribute(x, target=y)
        >>> morf = perturbation_curve(target_logit(net), x, cam, target=y, order="morf")
        >>> morf.auc.mean()   # lower than for a random map: the map is faithful
    """
    inputs = _check_inputs(inputs)
    maps = _check_maps(inputs, attributions)
    settings = {
        "order": _check_choice(order, "order", _ORDERS),
        "mode": _check_choice(mode, "mode", _MODES),
        "baseline": _check_baseline(baseline, inputs),
        "noise": _check_noise(noise),
    }
    grid = _check_percentiles(percentiles, mode, baseline)
    seed = _check_int(seed, "seed", 0)
    if not callable(forward_func):
        raise InputError(f"`forward_func` must be callable, got {type(forward_func).__name__}.")
    n = inputs.shape[0]
    step = n if batch_size is None else _check_int(batch_size, "batch_size", 1)
    keys = _image_seeds(inputs, seed)
    ranks = _ranks(_upsampled(maps, tuple(inputs.shape[-2:])), keys)
    args = _format_args(additional_forward_args)
    parts = []
    for start in range(0, n, step):
        stop = min(n, start + step)
        chunk_args = tuple(_chunk(a, start, stop, n) for a in args)
        parts.append(
            _curves_of(
                forward_func,
                inputs[start:stop],
                ranks[start:stop],
                keys[start:stop],
                _chunk(target, start, stop, n),
                chunk_args,
                grid,
                settings,
            )
        )
    curves = torch.cat(parts)
    if not bool(torch.isfinite(curves).all()):
        raise InputError(
            "forward_func returned NaN or Inf on perturbed images; check the model and the "
            "baseline (the values must stay in the range the model was trained on)."
        )
    return PerturbationCurve(grid, curves, _auc(grid, curves))


# --------------------------------------------------------------------------------------
# faithfulness: the map against random maps
# --------------------------------------------------------------------------------------


def _random_maps(maps: Tensor, keys: Sequence[bytes], draw: int) -> Tensor:
    shape = tuple(maps.shape[1:])
    fields = [
        torch.rand(shape, generator=_generator(k, f"random{draw}"), dtype=torch.float64)
        for k in keys
    ]
    return torch.stack(fields).to(maps.device)


def _interval(values: np.ndarray, n_bootstrap: int, seed: int, confidence: float) -> Dict[str, Any]:
    low, high = bootstrap_ci(values, n_bootstrap=n_bootstrap, seed=seed, level=confidence)
    return {"mean": float(values.mean()), "low": low, "high": high, "n": int(values.size)}


def _verdict(diff: Dict[str, Any], sign: int) -> str:
    low, high = sign * diff["low"], sign * diff["high"]
    if min(low, high) > 0:
        return "better than random"
    if max(low, high) < 0:
        return "worse than random"
    return "not distinguishable from random"


def _entry(
    method: np.ndarray, random: np.ndarray, sign: int, boot: Tuple[int, int, float]
) -> Dict[str, Any]:
    diff = _interval(method - random, *boot)
    return {
        "auc": _interval(method, *boot),
        "random_auc": _interval(random, *boot),
        "minus_random": diff,
        "faithful_sign": sign,
        "verdict": _verdict(diff, sign),
    }


def _constant_maps(maps: Tensor) -> int:
    flat = maps.reshape(maps.shape[0], -1)
    return int((flat.amax(dim=1) == flat.amin(dim=1)).sum())


def faithfulness(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Union[Tensor, Mapping[str, Tensor]],
    target: Any = None,
    additional_forward_args: Any = None,
    *,
    percentiles: Optional[Sequence[float]] = None,
    mode: str = "deletion",
    baseline: Union[str, float, Tensor] = "road",
    noise: float = 0.01,
    n_random: int = 5,
    seed: int = 0,
    batch_size: Optional[int] = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
) -> Dict[str, Any]:
    r"""
    MoRF and LeRF curves of a map and of random maps on the same images, with intervals.

    The random baseline: ``n_random`` maps per image, uniform on [0, 1) at the map's own
    resolution ``(h, w)``, upsampled in the same way, drawn from generators seeded by
    ``seed``, the draw and the image's bytes; an image's random AUC is the mean over the
    draws. The imputation noise is the same for the map and the random maps (a paired
    comparison).

    Per order (``"morf"``, ``"lerf"``) and for the ``"gap"`` (deletion: LeRF − MoRF AUC;
    insertion: MoRF − LeRF, ROAD's summary), the result holds the mean AUC of the map over
    images (``auc``), that of the random maps (``random_auc``) and the per-image difference
    (``minus_random``), each ``{"mean", "low", "high", "n"}`` with a percentile bootstrap
    interval over images (the same resamples for all three), ``faithful_sign`` (+1 where a
    faithful map has the larger value, -1 where the smaller: deletion MoRF) and a
    ``verdict``: ``"better than random"`` when the interval of the difference lies on the
    faithful side of 0, ``"worse than random"`` on the other, else ``"not
    distinguishable from random"``.

    Args:

        forward_func, inputs, target, additional_forward_args, percentiles, mode, baseline,
        noise, seed, batch_size: As in :func:`perturbation_curve`.
        attributions (Tensor or Mapping[str, Tensor]): One map per image, as in
                    :func:`perturbation_curve`; or several methods' maps by name, all
                    explaining ``forward_func`` (e.g. Grad-CAM and Integrated Gradients of
                    one model's logit): the random baseline is then computed once per map
                    resolution and shared (the same numbers as separate calls).
        n_random (int, optional): Random maps per image (>= 1). Default: 5
        n_bootstrap (int, optional): Bootstrap resamples of the images. Default: 1000
        confidence (float, optional): Level of the intervals. Default: 0.95

    Returns:
        *dict*: ``{"mode", "baseline", "percentiles", "n_images", "n_random", "seed",
        "n_constant_maps", "morf", "lerf", "gap", "curves", "per_image"}``; ``curves``
        holds the mean curve over images of the map and of the random maps per order,
        ``per_image`` the AUCs per image (lists of floats, JSON-ready). For a mapping of
        maps, ``{name: that dict}``.

    Examples::

        >>> cam = LayerGradCam(net, net.layer4).attribute(x, target=y)
        >>> result = faithfulness(target_logit(net), x, cam, target=y)
        >>> result["morf"]["minus_random"]   # below 0 for a faithful map
        >>> both = faithfulness(target_logit(net), x, {"Grad-CAM": cam, "IG": ig}, target=y)
    """
    n_random = _check_int(n_random, "n_random", 1)
    n_bootstrap = _check_int(n_bootstrap, "n_bootstrap", 1)
    if not isinstance(confidence, numbers.Real) or not 0.0 < float(confidence) < 1.0:
        raise InputError(f"`confidence` must be in (0, 1), got {confidence!r}.")
    inputs = _check_inputs(inputs)
    named = isinstance(attributions, Mapping)
    if named and not attributions:
        raise InputError("`attributions` is an empty mapping; pass at least one map per image.")
    all_maps = {
        name: _check_maps(inputs, a)
        for name, a in (attributions.items() if named else [("", attributions)])
    }
    common = {
        "percentiles": percentiles,
        "mode": mode,
        "baseline": baseline,
        "noise": noise,
        "seed": seed,
        "batch_size": batch_size,
    }
    keys = _image_seeds(inputs, _check_int(seed, "seed", 0))
    run = (forward_func, inputs, target, additional_forward_args, common)
    boot = (n_bootstrap, int(seed), float(confidence))
    randoms: Dict[Tuple[int, ...], Dict[str, Any]] = {}
    results = {}
    for name, maps in all_maps.items():
        shape = tuple(maps.shape[1:])
        if shape not in randoms:  # one random baseline per map resolution
            randoms[shape] = _curves_per_order(
                run, [_random_maps(maps, keys, d) for d in range(n_random)]
            )
        method = _curves_per_order(run, [maps])
        results[name] = _summary(method, randoms[shape], maps, mode, boot, name)
        results[name].update(
            {
                "baseline": baseline if isinstance(baseline, str) else "constant",
                "n_random": n_random,
                "seed": int(seed),
            }
        )
    return results if named else results[""]


def _curves_per_order(run: Tuple[Any, ...], maps: Sequence[Tensor]) -> Dict[str, Any]:
    """Per order: the per-image AUC averaged over ``maps`` (numpy) and the mean curve."""
    forward_func, inputs, target, args, common = run
    out: Dict[str, Any] = {}
    for order in _ORDERS:
        curves = [
            perturbation_curve(forward_func, inputs, m, target, args, order=order, **common)
            for m in maps
        ]
        out[order] = torch.stack([c.auc for c in curves]).mean(0).numpy()
        out[f"{order}_curve"] = torch.stack([c.curves for c in curves]).mean((0, 1)).tolist()
        out["percentiles"] = curves[0].percentiles.tolist()
    return out


def _summary(
    method: Dict[str, Any],
    random: Dict[str, Any],
    maps: Tensor,
    mode: str,
    boot: Tuple[int, int, float],
    name: str,
) -> Dict[str, Any]:
    sign = 1 if mode == "deletion" else -1
    n_constant = _constant_maps(maps)
    label = f" ({name})" if name else ""
    if n_constant:
        warnings.warn(
            f"faithfulness{label}: {n_constant} of {maps.shape[0]} maps are constant (e.g. all "
            "zero after ReLU: nothing in the image raises the explained score); their pixel order "
            "is random, so they score like a random map. Count them apart, or explain another "
            "target or layer.",
            FaithfulnessWarning,
            stacklevel=3,
        )
    curves = {
        "morf": method["morf_curve"],
        "lerf": method["lerf_curve"],
        "random_morf": random["morf_curve"],
        "random_lerf": random["lerf_curve"],
    }
    if all(float(np.ptp(np.asarray(c))) == 0.0 for c in curves.values()):
        warnings.warn(
            f"faithfulness{label}: forward_func gave the same value on every perturbed image; "
            "the curves cannot rank maps. Check that forward_func is the quantity the map "
            "explains.",
            FaithfulnessWarning,
            stacklevel=3,
        )
    return {
        "mode": mode,
        "percentiles": method["percentiles"],
        "n_images": int(maps.shape[0]),
        "n_constant_maps": n_constant,
        "morf": _entry(method["morf"], random["morf"], -sign, boot),
        "lerf": _entry(method["lerf"], random["lerf"], sign, boot),
        "gap": _entry(
            sign * (method["lerf"] - method["morf"]),
            sign * (random["lerf"] - random["morf"]),
            1,
            boot,
        ),
        "curves": curves,
        "per_image": {
            "morf": method["morf"].tolist(),
            "lerf": method["lerf"].tolist(),
            "random_morf": random["morf"].tolist(),
            "random_lerf": random["lerf"].tolist(),
        },
    }
