r"""Trained models are reused: a checkpoint is loaded instead of retrained when it records
the same recipe.

:func:`load_cached` is the one check the demo and the experiment runner make before they
train a model: the file must load as the expected architecture and class count, and its
metadata must record exactly the recipe of this run (compared as JSON values, so tuples
and lists are equal).

A cache folder may hold files of the user's own (a ``teacher.pt`` given as ``--cache-dir``
by mistake): the cache never replaces a file it did not write. Each file it writes is
recorded, with its SHA-256, in the marker :data:`MARKER` of that folder
(:func:`record_written`); :func:`check_replaceable` allows replacing only a file the marker
names with the same content, and refuses any other existing file before any training.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from captum_unicam.errors import OutputError

__all__ = ["load_cached", "same_recipe", "check_replaceable", "record_written", "MARKER"]

#: The marker file of a cache folder: the files the cache wrote, with their SHA-256.
MARKER = "captum-unicam-cache.json"
_MARKER_FORMAT = "captum-unicam/model-cache"

PathLike = Union[str, os.PathLike]


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _marker(folder: pathlib.Path) -> Dict[str, str]:
    """``{file name: sha256}`` of the files the cache wrote in ``folder`` ({} without a
    marker); a marker that is not the cache's is refused (it would be replaced)."""
    path = folder / MARKER
    if not os.path.lexists(path):
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError):
        data = None
    ours = isinstance(data, dict) and data.get("format") == _MARKER_FORMAT
    if not ours or not isinstance(data.get("files"), dict):
        raise OutputError(
            f"{str(path)!r} is not the model cache's marker file; it is never "
            "replaced: move it, or give another cache folder (cache_dir=)"
        )
    return {str(k): str(v) for k, v in data["files"].items()}


def check_replaceable(folder: PathLike, names: Sequence[str]) -> Dict[str, bool]:
    r"""Checks, before any training, that the cache may write ``names`` in ``folder``.

    Args:
        folder (str or PathLike): The cache folder (it need not exist).
        names (sequence of str): The file names the cache is about to write.

    Returns:
        *dict[str, bool]*: for each name, True when it replaces a file the cache wrote
        (pass ``overwrite=True``), False when the file is absent (create it exclusively).

    Raises:
        OutputError: a file of that name exists that the cache did not write, or that
        was changed since (its SHA-256 differs from the marker's), or that is not a
        regular file; or the folder holds a file named :data:`MARKER` that is not ours.
        The message names the file; nothing is replaced.
    """
    root = pathlib.Path(folder).expanduser()
    owned = _marker(root) if root.is_dir() else {}
    replace = {}
    for name in names:
        path = root / name
        if not os.path.lexists(path):
            replace[name] = False
            continue
        if path.is_symlink() or not path.is_file() or owned.get(name) != _sha256(path):
            raise OutputError(
                f"{str(path)!r} was not written by this cache (or was changed "
                "since); it is never replaced: move it, or give another cache "
                "folder (cache_dir=)"
            )
        replace[name] = True
    return replace


def record_written(folder: PathLike, names: Sequence[str]) -> None:
    r"""Records ``names`` (files just written in ``folder``) and their SHA-256 in the
    folder's marker, replaced atomically."""
    root = pathlib.Path(folder).expanduser()
    files = _marker(root)
    files.update({name: _sha256(root / name) for name in names})
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{MARKER}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"format": _MARKER_FORMAT, "files": dict(sorted(files.items()))}, f, indent=1)
        os.replace(tmp, root / MARKER)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def same_recipe(a: Any, b: Any) -> bool:
    """True when two recipes are equal as JSON values."""

    def normal(obj: Any) -> Any:
        return json.loads(json.dumps(obj, sort_keys=True, default=str))

    return normal(a) == normal(b)


def load_cached(
    path: Union[str, os.PathLike],
    recipe: Mapping[str, Any],
    *,
    arch: str,
    num_classes: int,
    map_location: Any = "cpu",
    accept: Optional[Callable[[dict], bool]] = None,
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
        model, meta = load_checkpoint(
            path, arch=arch, num_classes=num_classes, map_location=map_location
        )
    except CheckpointError as e:
        return None, None, str(e)
    if not same_recipe(meta.get("recipe"), recipe):
        return None, None, "its recipe differs from this run's"
    if accept is not None and not accept(meta):
        return None, None, "its metadata is incomplete"
    return model, meta, ""
