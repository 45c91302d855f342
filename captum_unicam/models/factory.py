r"""Models of your own architecture: a factory ``"package.module:function"``.

A factory is a function of your code that returns the ``nn.Module`` (with random or any
weights); captum-unicam imports its module with :mod:`importlib` (as code: you chose to
run it) and calls it, with ``num_classes=`` when the function takes that argument. The
weights come from a file read with ``torch.load(weights_only=True)`` as always
(:func:`~captum_unicam.models.load_checkpoint` with ``factory=``): a plain state dict of
``torch.save(model.state_dict(), path)``, or a checkpoint of
:func:`~captum_unicam.models.save_checkpoint` written with ``factory=``. A file only
*records* the factory it was saved from; it never makes captum-unicam import code by itself.

Layers of such a model are named by their dotted path of
:meth:`torch.nn.Module.named_modules` (``"features.3.conv"``, ``"encoder.layer.1"``),
see :func:`~captum_unicam.models.get_layer`.

Examples::

    # mynets.py, on PYTHONPATH
    def small_cnn(num_classes=10):
        return torch.nn.Sequential(...)

    >>> model, meta = load_checkpoint("cnn_state.pt", factory="mynets:small_cnn",
    ...                               num_classes=10)
    >>> layer = get_layer(model, "3")
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any, Callable, Optional

from torch import nn

from captum_unicam.errors import InputError

__all__ = ["parse_factory", "import_factory", "build_from_factory"]

_SPEC = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")
_HOW = "give it as 'package.module:function', e.g. 'mynets:small_cnn'"


def parse_factory(spec: Any) -> tuple:
    r"""``(module, attribute)`` of a factory ``"package.module:function"``.

    Args:

        spec (str): e.g. ``"mynets.cnn:build"`` (the attribute may be dotted:
                    ``"mynets:Nets.small"``).

    Returns:
        *tuple[str, str]*: the module and the attribute path.

    Raises:
        InputError: ``spec`` is not of that form.
    """
    m = _SPEC.match(spec.strip()) if isinstance(spec, str) else None
    if m is None:
        raise InputError(f"factory {spec!r} is not a module and a function; {_HOW}")
    return m.group(1), m.group(2)


def _import(spec: str, module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and module != e.name and not module.startswith(e.name + "."):
            raise InputError(
                f"factory {spec!r}: importing {module!r} failed: it needs the module "
                f"{e.name!r}, which is not installed; install it"
            ) from e
        raise InputError(
            f"factory {spec!r}: no module named {module!r} can be imported; put the folder "
            "that holds it on PYTHONPATH (or install its package), or fix the name"
        ) from e
    except Exception as e:  # the user's module failed while it was imported
        raise InputError(
            f"factory {spec!r}: importing {module!r} raised {type(e).__name__}: {e}; "
            "fix that module"
        ) from e


def import_factory(spec: str) -> Callable[..., Any]:
    r"""The function named by a factory ``"package.module:function"``, imported.

    Args:

        spec (str): the factory.

    Returns:
        *callable*: the function (or class).

    Raises:
        InputError: a malformed ``spec``, a module that cannot be imported (the missing
        module is named), an attribute that does not exist (the module's public callables
        are listed), or one that is not callable.
    """
    module, attr = parse_factory(spec)
    obj = _import(spec, module)
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n, v in vars(obj).items() if callable(v) and not n.startswith("_"))
            listed = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise InputError(
                f"factory {spec!r}: {getattr(obj, '__name__', module)!r} has no attribute "
                f"{part!r}; it defines: {listed or 'no public callables'}; fix the name"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(
            f"factory {spec!r}: {attr!r} is a {type(obj).__name__}, not a function; name the "
            "function that returns the model"
        )
    return obj


def _takes_num_classes(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "num_classes" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def build_from_factory(spec: str, num_classes: Optional[int] = None) -> nn.Module:
    r"""Imports the factory ``spec`` and calls it: ``function(num_classes=num_classes)``
    when it takes ``num_classes`` (or ``**kwargs``) and ``num_classes`` is given, else
    ``function()``.

    Args:

        spec (str): ``"package.module:function"``.
        num_classes (int, optional): Number of classes. Default: None

    Returns:
        *nn.Module*: what the function returns (its weights are the function's).

    Raises:
        InputError: see :func:`import_factory`; the call raised; or it returned something
        that is not an ``nn.Module``.

    Examples::

        >>> net = build_from_factory("torchvision.models:mobilenet_v3_small", 10)
    """
    fn = import_factory(spec)
    kwargs = (
        {"num_classes": num_classes} if num_classes is not None and _takes_num_classes(fn) else {}
    )
    try:
        model = fn(**kwargs)
    except Exception as e:  # the user's function failed
        call = "num_classes=" + str(num_classes) if kwargs else ""
        raise InputError(
            f"factory {spec!r}: calling it ({call}) raised {type(e).__name__}: {e}; fix the "
            "function or the arguments"
        ) from e
    if not isinstance(model, nn.Module):
        raise InputError(
            f"factory {spec!r} returned a {type(model).__name__}, not a torch.nn.Module; make "
            "it return the model"
        )
    return model
