r"""Trained models are reused: a checkpoint is loaded instead of retrained when it records
the same recipe.

:func:`load_cached` is the one check the demo and the experiment runner make before they
train a model: the file must load as the expected architecture and class count, and its
metadata must record exactly the recipe of this run (compared as JSON values, so tuples
and lists are equal).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Optional, Tuple, Union

__all__ = ["load_cached", "same_recipe"]


def same_recipe(a: Any, b: Any) -> bool:
    """True when two recipes are equal as JSON values."""
    def normal(obj: Any) -> Any:
        return json.loads(json.dumps(obj, sort_keys=True, default=str))

    return normal(a) == normal(b)


def load_cached(path: Union[str, os.PathLike], recipe: Mapping[str, Any], *, arch: str, num_classes: int,
                map_location: Any = "cpu", accept: Optional[Callable[[dict], bool]] = None
                ) -> Tuple[Optional[Any], Optional[dict], str]:
    r"""The model cached in ``path`` when it was trained by ``recipe``.

    Args:
        path (str or PathLike): The checkpoint file.
        recipe (dict): The recipe of this run; the checkpoint's ``recipe`` must equal it.
        arch (str), num_classes (int): What the checkpoint must hold.
        map_location: Device of the returned model. Default: "cpu"
        accept (callable, optional): A further test of the metadata.

    Returns:
        *(model, metadata, reason)*: the model and its metadata, or ``(None, None,
        reason)`` saying why the file cannot be reused ("absent", a checkpoint error,
        "its recipe differs from this run's").
    """
    from captum_unicam.errors import CheckpointError
    from captum_unicam.models import load_checkpoint

    if not os.path.isfile(path):
        return None, None, "absent"
    try:
        model, meta = load_checkpoint(path, arch=arch, num_classes=num_classes, map_location=map_location)
    except CheckpointError as e:
        return None, None, str(e)
    if not same_recipe(meta.get("recipe"), recipe):
        return None, None, "its recipe differs from this run's"
    if accept is not None and not accept(meta):
        return None, None, "its metadata is incomplete"
    return model, meta, ""
