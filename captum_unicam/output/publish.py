r"""Writing outputs so that a crash never leaves a half-written result that looks complete.

A report folder is built in a temporary folder beside its destination and moved into
place by renames only when it is complete (:func:`publish_folder`); the destination is
checked before any work is done (:func:`check_output_dir`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Union

from captum_unicam.errors import OutputError

__all__ = ["OutputError", "check_output_dir", "publish_folder"]

PathLike = Union[str, "os.PathLike[str]"]
OutputFolderError = OutputError



def check_output_dir(out_dir: PathLike, *, overwrite: bool = False) -> Path:
    r"""Checks that a report can be written to ``out_dir``, before any work is done.

    Args:
        out_dir (str or PathLike): the report folder.
        overwrite (bool, optional): allow replacing an existing non-empty folder.
            Default: False

    Returns:
        pathlib.Path: the absolute folder path.

    Raises:
        OutputFolderError: ``out_dir`` is a file, or a non-empty folder and ``overwrite``
        is False, or its parent cannot be written.
    """
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise OutputFolderError(
            f"output path {str(out)!r} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputFolderError(
            f"output folder {str(out)!r} exists and is not empty; choose another --out, "
            "or pass --overwrite to replace it")
    anc = out.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir() or not os.access(anc, os.W_OK | os.X_OK):
        raise OutputFolderError(
            f"cannot create the output folder {str(out)!r}: {str(anc)!r} is not a writable "
            "folder; choose another --out")
    return out


def publish_folder(tmp: Path, out: Path, *, overwrite: bool) -> None:
    """Moves the complete folder ``tmp`` to ``out`` by renames (the last step of
    write_report): an empty ``out`` is replaced; an existing one only with ``overwrite``,
    and it is restored if the final rename fails."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(tmp, out)
        return
    if not overwrite:  # appeared while we were working
        raise OutputFolderError(
            f"output folder {str(out)!r} appeared while the report was written; choose "
            "another --out, or pass --overwrite")
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.rmdir(old)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


