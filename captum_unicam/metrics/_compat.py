"""The metrics' call forms before one signature was shared, kept for one release.

``feature_similarity_score``, ``relevance_score`` and ``evaluate_kd`` now take the model,
its layer(s) and the data first, then keyword-only arguments with the Base named
``base_forward_func`` / ``base_layer`` and the perturbation named ``perturbation``. The
decorators below turn an old call into the new one and warn with a ``DeprecationWarning``
that shows the new form; the new form never goes through them.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

from torch import Tensor

__all__ = ["fss_compat", "rs_compat", "kd_compat"]

_RELEASE = "will be removed in the next release"


def _deprecated(old: str, new: str) -> None:
    # stacklevel 3: _deprecated <- the wrapper <- the caller's line
    warnings.warn(f"{old} is deprecated and {_RELEASE}; use {new}.", DeprecationWarning, stacklevel=3)


def _bind_positional(func: str, names: Sequence[str], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    if len(args) > len(names):
        raise TypeError(f"{func}() takes at most {len(names)} positional arguments in its old form ({len(args)} given)")
    out = dict(kwargs)
    for name, value in zip(names, args):
        if name in out:
            raise TypeError(f"{func}() got multiple values for argument {name!r}")
        out[name] = value
    return out


def _rename(kwargs: Dict[str, Any], old: str, new: str, func: str) -> bool:
    if old not in kwargs:
        return False
    if new in kwargs:
        raise TypeError(f"{func}() got both {old!r} (deprecated) and {new!r}; pass only {new}=.")
    kwargs[new] = kwargs.pop(old)
    return True


_FSS_OLD = (
    "forward_func", "layer", "base_forward_func", "base_layer", "inputs",
    "attributions", "perturb_func", "additional_forward_args", "estimator",
)
_FSS_NEW = "feature_similarity_score(forward_func, layer, inputs, base_forward_func=..., base_layer=..., ...)"


def _looks_like_inputs(value: Any) -> bool:
    return isinstance(value, Tensor) or (isinstance(value, tuple) and all(isinstance(v, Tensor) for v in value))


def fss_compat(func: Callable) -> Callable:
    """Accept ``feature_similarity_score(forward_func, layer, base_forward_func, base_layer,
    inputs, attributions, perturb_func, ...)`` and ``perturb_func=``, with a warning."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        old_positional = len(args) > 3 or (
            len(args) == 3 and "base_forward_func" not in kwargs and callable(args[2]) and not _looks_like_inputs(args[2])
        )
        if old_positional and _looks_like_inputs(args[2]):
            raise TypeError(
                f"feature_similarity_score() takes 3 positional arguments (forward_func, layer, inputs) but "
                f"{len(args)} were given; pass the rest by keyword: {_FSS_NEW}"
            )
        if old_positional:
            _deprecated("feature_similarity_score(forward_func, layer, base_forward_func, base_layer, inputs, ...)", _FSS_NEW)
            kwargs = _bind_positional("feature_similarity_score", _FSS_OLD, args, kwargs)
            args = ()
        if "perturb_func" in kwargs:
            if not old_positional:
                _deprecated("perturb_func=", "perturbation= (the same (inputs, attributions) -> perturbed inputs callable)")
            _rename(kwargs, "perturb_func", "perturbation", "feature_similarity_score")
        return func(*args, **kwargs)

    return wrapper


_RS_OLD = (
    "forward_func", "layer", "inputs", "target", "attributions", "label_embeddings",
    "perturb_func", "given", "additional_forward_args", "estimator",
)
_RS_NEW = "relevance_score(forward_func, layer, inputs, target=..., base_forward_func=..., base_layer=..., ...)"


def rs_compat(func: Callable) -> Callable:
    """Accept ``relevance_score(forward_func, layer, inputs, target, attributions, ...)``,
    ``given=(base_forward_func, base_layer)`` and ``perturb_func=``, with a warning."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if len(args) > 3:
            _deprecated("relevance_score(forward_func, layer, inputs, target, attributions, ...) with positional arguments after inputs", _RS_NEW)
            kwargs = _bind_positional("relevance_score", _RS_OLD, args, kwargs)
            args = ()
        if "given" in kwargs:
            given = kwargs.pop("given")
            _deprecated("given=(base_forward_func, base_layer)", "base_forward_func=..., base_layer=...")
            if given is not None:
                if "base_forward_func" in kwargs or "base_layer" in kwargs:
                    raise TypeError("relevance_score() got both given= (deprecated) and base_forward_func=/base_layer=; pass only the latter.")
                if not (isinstance(given, (tuple, list)) and len(given) == 2):
                    from captum_unicam.errors import InputError

                    raise InputError("given must be a pair (base_forward_func, base_layer); pass base_forward_func= and base_layer= instead.")
                kwargs["base_forward_func"], kwargs["base_layer"] = given
        if "perturb_func" in kwargs:
            _deprecated("perturb_func=", "perturbation= (the same (inputs, attributions) -> perturbed inputs callable)")
            _rename(kwargs, "perturb_func", "perturbation", "relevance_score")
        return func(*args, **kwargs)

    return wrapper


_KD_NEW = "evaluate_kd(student, layers, data, base_forward_func=base, ...)"


def kd_compat(func: Callable) -> Callable:
    """Accept ``evaluate_kd(student, base, loader, layers, ...)``, ``map_kinds=`` and
    ``perturb_func=``, with a warning."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        old_positional = len(args) >= 2 and not isinstance(args[1], Mapping) and "base_forward_func" not in kwargs
        if old_positional:
            _deprecated("evaluate_kd(student, base, loader, layers, ...)", _KD_NEW)
            if len(args) > 4:
                raise TypeError(f"evaluate_kd() takes at most 4 positional arguments in its old form ({len(args)} given)")
            kwargs = _bind_positional("evaluate_kd", ("student", "base", "loader", "layers"), args, kwargs)
            args = ()
        renamed = [
            (old, new) for old, new in (("student", "forward_func"), ("base", "base_forward_func"), ("loader", "data"))
            if old in kwargs
        ]
        for old, new in renamed:
            _rename(kwargs, old, new, "evaluate_kd")
        if renamed and not old_positional:
            _deprecated(", ".join(f"{o}=" for o, _ in renamed), ", ".join(f"{n}=" for _, n in renamed))
        for old, new in (("map_kinds", "maps"), ("perturb_func", "perturbation")):
            if old in kwargs:
                _deprecated(f"{old}=", f"{new}=")
                _rename(kwargs, old, new, "evaluate_kd")
        return func(*args, **kwargs)

    return wrapper
