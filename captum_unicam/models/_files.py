"""Internal to :mod:`captum_unicam.models`: the file side of checkpoints (path checks before
any work, the exclusive or checked write, a full disk, the rescue copy of a trained model).
Not part of the public API; :func:`check_writable` and :func:`checkpoint_size` are exported
by :mod:`captum_unicam.models`.
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import stat
import tempfile
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch
from torch import nn

from captum_unicam.errors import OutputError

__all__ = [
    "expand",
    "kind_of",
    "check_writable",
    "checkpoint_size",
    "write_checkpoint_file",
    "free_bytes",
    "MARGIN_BYTES",
]

PathLike = Union[str, os.PathLike]

#: free space asked for on top of a checkpoint's estimated size (and 5 % of it)
MARGIN_BYTES = 1 << 20
# per-tensor and per-file overhead of torch.save's zip container (headers, 64-byte alignment)
_PER_TENSOR_BYTES = 512
_PER_FILE_BYTES = 32 << 10

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def expand(path: PathLike) -> pathlib.Path:
    """``path`` as a :class:`pathlib.Path` with ``~`` expanded."""
    return pathlib.Path(os.fspath(path)).expanduser()


def kind_of(path: pathlib.Path) -> Optional[str]:
    """None when ``path`` is absent, ``"a regular file"``, or what else it is (a symlink is
    followed; ``"a dangling symlink"`` when its target is missing)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "a dangling symlink" if os.path.islink(path) else None
    except NotADirectoryError:
        return None
    except PermissionError:
        return "a path that cannot be examined (permission denied on a parent folder)"
    if stat.S_ISREG(st.st_mode):
        return "a regular file"
    for test, name in _KINDS:
        if test(st.st_mode):
            return name
    return "not a regular file"


def _not_regular(path: pathlib.Path, kind: str) -> OutputError:
    link = f" (a symlink to {os.path.realpath(path)!r})" if os.path.islink(path) else ""
    return OutputError(
        f"checkpoint {str(path)!r} is {kind}{link}, not a regular file; it is never "
        "replaced, even with overwrite=True (--overwrite); give the path of a .pt file"
    )


def _check_destination(path: pathlib.Path, overwrite: bool) -> None:
    """The destination is absent, or a regular file and ``overwrite``."""
    kind = kind_of(path)
    if kind is None:
        return
    if kind != "a regular file":
        raise _not_regular(path, kind)
    if not overwrite:
        raise OutputError(
            f"checkpoint {str(path)!r} exists; pass overwrite=True (--overwrite) to replace "
            "it, or give another file name"
        )


def _existing_folder(path: pathlib.Path) -> pathlib.Path:
    """The nearest folder above ``path`` that exists (missing ones are created at write)."""
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(
            f"checkpoint {str(path)!r} cannot be written: {str(folder)!r} is not a folder"
        )
    return folder


def free_bytes(folder: PathLike) -> Optional[int]:
    """Free bytes of the disk holding ``folder`` for this user, None when unknown."""
    try:
        return int(shutil.disk_usage(folder).free)
    except OSError:
        return None


def checkpoint_size(model: Union[nn.Module, Mapping[str, torch.Tensor]]) -> int:
    r"""Estimated bytes of the checkpoint of ``model`` (its tensors and the container).

    Args:

        model (nn.Module or dict of Tensor): the model (e.g. as built, before training:
                    training changes no shape) or its state dict.

    Returns:
        *int*: bytes, an upper estimate for :func:`check_writable`'s ``estimated_bytes``.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    tensors = [t for t in state.values() if isinstance(t, torch.Tensor)]
    data = sum(t.numel() * t.element_size() for t in tensors)
    return int(data + _PER_TENSOR_BYTES * len(tensors) + _PER_FILE_BYTES)


def _inside(path: pathlib.Path, root: PathLike) -> bool:
    r = expand(root).resolve()
    return path == r or path.is_relative_to(r)


def check_writable(
    path: PathLike,
    *,
    overwrite: bool = False,
    estimated_bytes: Optional[int] = None,
    forbidden_roots: Iterable[Optional[PathLike]] = (),
) -> pathlib.Path:
    r"""Checks, before any training, that a checkpoint can be written to ``path``.

    :func:`~captum_unicam.models.save_checkpoint` checks the destination again when it
    writes (exclusively unless ``overwrite``), so a file that appears meanwhile is never
    replaced.

    Args:

        path (str or PathLike): the checkpoint to write (``~`` is expanded).
        overwrite (bool, optional): allow replacing an existing regular file (never a
                    folder, device, FIFO, socket, or a link to one). Default: False
        estimated_bytes (int, optional): the checkpoint's size
                    (:func:`checkpoint_size`); the disk must have it free plus a margin
                    (1 MiB and 5 %). None skips the check. Default: None
        forbidden_roots (iterable of str or PathLike, optional): the data folders (and
                    files, e.g. the Teacher's checkpoint) that the run reads; ``path`` may
                    not be inside any of them. Default: ()

    Returns:
        *pathlib.Path*: ``path``, expanded.

    Raises:
        OutputError: ``path`` exists (without ``overwrite``) or is not a regular file; a
        parent is a file; its folder is not writable; it is inside a forbidden root; or
        the disk has too little free space (the bytes needed and free are named).

    Examples::

        >>> model = build_model("small_resnet_s", 4)
        >>> out = check_writable("student.pt", estimated_bytes=checkpoint_size(model),
        ...                      forbidden_roots=["data/shapes"])
    """
    p = expand(path)
    if p.name in ("", ".", ".."):
        raise OutputError(f"checkpoint path {str(path)!r} names a folder; give a file name")
    _check_destination(p, overwrite)
    folder = _existing_folder(p)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(
            f"checkpoint {str(p)!r} cannot be written: the folder {str(folder)!r} is not "
            "writable; fix its permissions or give another path"
        )
    resolved = p.absolute().parent.resolve() / p.name
    for root in forbidden_roots:
        if root is not None and _inside(resolved, root):
            raise OutputError(
                f"checkpoint {str(p)!r} is inside {str(root)!r}, which this run reads; a "
                "file written there would become part of the data; give a path outside it"
            )
    if estimated_bytes is not None:
        _check_space(p, folder, int(estimated_bytes))
    return p


def _check_space(p: pathlib.Path, folder: pathlib.Path, estimated: int) -> None:
    need = estimated + MARGIN_BYTES + estimated // 20
    free = free_bytes(folder)
    if free is not None and free < need:
        raise OutputError(
            f"not enough free space for checkpoint {str(p)!r}: it needs {need} bytes "
            f"(about {estimated} and a margin), the disk of {str(folder)!r} has {free} bytes "
            "free; free some space or give a path on another disk"
        )


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(err)
    # torch's zip writer reports a short write as "[enforce fail at inline_container.cc:..]
    # . unexpected pos ..." or "PytorchStreamWriter failed writing file ..."
    return isinstance(err, RuntimeError) and (
        "unexpected pos" in text or "PytorchStreamWriter failed" in text
    )


def _rescue(payload: Mapping[str, Any], path: pathlib.Path, save: Callable) -> str:
    """Saves ``payload`` in the system's temporary folder; its path, or why it failed."""
    try:
        fd, name = tempfile.mkstemp(prefix=f"{path.stem}-unsaved-", suffix=path.suffix or ".pt")
    except OSError as e:
        return f"nowhere: the temporary folder cannot be written either ({e.strerror})"
    try:
        with os.fdopen(fd, "wb") as f:
            save(payload, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:
        _unlink(pathlib.Path(name))
        return f"nowhere: saving it to {name!r} failed too ({e})"
    return name


def _unlink(p: pathlib.Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _write_failed(
    err: BaseException, path: pathlib.Path, payload: Mapping[str, Any], save: Callable
) -> OutputError:
    kept = _rescue(payload, path, save)
    where = (
        f"the trained model was kept at {kept}"
        if not kept.startswith("nowhere")
        else (f"the model could be kept {kept}")
    )
    if _is_disk_full(err):
        free = free_bytes(path.parent)
        return OutputError(
            f"disk full while writing checkpoint {str(path)!r}: {free} bytes free; {where}; "
            "free some space and move it there"
        )
    cause = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return OutputError(f"checkpoint {str(path)!r} could not be written ({cause}); {where}")


def _exists(
    path: pathlib.Path, payload: Mapping[str, Any], save: Callable, meanwhile: bool = False
) -> OutputError:
    """The error for an existing destination (``meanwhile``: one that appeared while this
    checkpoint was written); the payload is kept in the temporary folder."""
    kept = _rescue(payload, path, save)
    how = " (written by another run meanwhile)" if meanwhile else ""
    return OutputError(
        f"checkpoint {str(path)!r} exists{how}; it is not replaced: pass overwrite=True "
        f"(--overwrite) to replace it, or give another file name; the trained model was "
        f"kept at {kept}"
    )


def _recheck(path: pathlib.Path, payload: Mapping[str, Any], save: Callable) -> None:
    """Just before ``os.replace``: the destination is still absent or a regular file; else
    the payload is kept in the temporary folder and the error says where."""
    try:
        _check_destination(path, True)
    except OutputError as e:
        kept = _rescue(payload, path, save)
        raise OutputError(f"{e}; the trained model was kept at {kept}") from e


def _link_exclusively(tmp: pathlib.Path, path: pathlib.Path) -> None:
    """``tmp`` becomes ``path`` only if ``path`` does not exist (atomically: a hard link,
    or an exclusive create and copy where the file system has no hard links)."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
    with open(path, "xb") as dst, open(tmp, "rb") as src:  # no hard links here
        shutil.copyfileobj(src, dst)
        dst.flush()
        os.fsync(dst.fileno())


def write_checkpoint_file(
    path: pathlib.Path,
    payload: Mapping[str, Any],
    *,
    overwrite: bool,
    save: Optional[Callable] = None,
    before: Optional[Callable[[pathlib.Path], None]] = None,
) -> None:
    """Writes ``payload`` to a temporary file next to ``path`` and then, exclusively,
    to ``path`` (or over a regular file there when ``overwrite``).

    Raises OutputError when ``path`` exists without ``overwrite`` or is not a regular
    file (before and again after the write), and when the write fails (a full disk among
    others): the payload is then kept in the system's temporary folder, named in the message.
    ``before`` is called with ``path`` once its folder exists (to remove stale
    temporaries). ``save(payload, file)`` writes (default: :func:`torch.save`).
    """
    save = torch.save if save is None else save
    kind = kind_of(path)
    if kind == "a regular file" and not overwrite:
        raise _exists(path, payload, save)
    _check_destination(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise OutputError(
            f"checkpoint {str(path)!r} cannot be written: a parent is a file ({e.filename})"
        ) from e
    if before is not None:
        before(path)
    try:
        fd, name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp"
        )
    except PermissionError as e:
        raise OutputError(
            f"checkpoint {str(path)!r} cannot be written: its folder is not writable "
            f"({e.strerror}); fix its permissions or give another path"
        ) from e
    except OSError as e:
        raise _write_failed(e, path, payload, save) from e
    tmp = pathlib.Path(name)
    try:
        _write_and_place(fd, tmp, path, payload, overwrite, save)
    finally:
        _unlink(tmp)


def _write_and_place(
    fd: int,
    tmp: pathlib.Path,
    path: pathlib.Path,
    payload: Mapping[str, Any],
    overwrite: bool,
    save: Callable,
) -> None:
    try:
        with os.fdopen(fd, "wb") as f:
            save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            _recheck(path, payload, save)  # again: it may have changed meanwhile
            os.replace(tmp, path)
        else:
            _link_exclusively(tmp, path)
    except FileExistsError as e:
        raise _exists(path, payload, save, meanwhile=True) from e
    except OutputError:
        raise
    except (OSError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not _is_disk_full(e):
            raise
        raise _write_failed(e, path, payload, save) from e
