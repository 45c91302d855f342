r"""Writing outputs so that no run loses data and no crash leaves a half-written result.

A report folder ``X`` is checked before any work is done (:func:`check_output_dir`), built
in a temporary folder ``.X.tmp-PID-RANDOM`` beside it (:func:`staged_folder`) and moved
into place by renames only when it is complete (:func:`publish_folder`). An existing
``X`` is replaced only with ``overwrite=True``, and only when it is a report that this
tool wrote (its ``metrics.json`` or ``results.json`` says so, see :func:`is_report_dir`);
it is moved aside to ``.X.old-PID-RANDOM`` first and deleted once the new one is in place.

The process id in the temporary names tells the folders of a live run (never touched)
from those a killed run left behind: :func:`recover_output_dir`, which
:func:`check_output_dir` and :func:`staged_folder` call, deletes stale ``.X.tmp-*``
folders and puts back an old report that a run killed between its two renames left in
``.X.old-*``. :func:`terminate_as_interrupt` turns SIGTERM into :class:`KeyboardInterrupt`
so that a terminated run cleans up like an interrupted one.

A checkpoint file a run writes is checked with :func:`check_output_file`.

Examples::

    >>> out = check_output_dir("report", overwrite=False, reads=["student.pt"])
    >>> with terminate_as_interrupt(), staged_folder(out) as tmp:
    ...     (tmp / "metrics.json").write_text(json.dumps({"format": REPORT_FORMAT}))
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import signal
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Union

from captum_unicam._process import pid_alive
from captum_unicam.errors import OutputError

__all__ = [
    "OutputError",
    "REPORT_FORMAT",
    "check_output_dir",
    "check_output_file",
    "is_report_dir",
    "make_temp_dir",
    "publish_folder",
    "recover_output_dir",
    "staged_folder",
    "terminate_as_interrupt",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The ``"format"`` value that marks the ``metrics.json`` of a report of this tool.
REPORT_FORMAT = "captum-unicam/report"

#: Files whose content marks a folder as written by this tool (report, experiment).
_MARKERS = ("metrics.json", "results.json")

#: Renames tried before giving up when another run writes the same folder at the same time.
_PUBLISH_ATTEMPTS = 8

#: Test hook: called with the name of each stage of :func:`staged_folder` /
#: :func:`publish_folder` ("tmp-created", "before-publish", "moved-aside", "published").
_HOOK: Optional[Callable[[str], None]] = None


def _stage(name: str) -> None:
    if _HOOK is not None:
        _HOOK(name)


# ---------------------------------------------------------------------------
# what is ours
# ---------------------------------------------------------------------------


def is_report_dir(path: PathLike) -> bool:
    r"""Whether ``path`` is a folder written by captum-unicam (a report or an experiment).

    A report's ``metrics.json`` holds ``"format": REPORT_FORMAT``; an experiment folder's
    ``results.json`` holds a ``"format"`` starting with ``"captum-unicam/"``.

    Args:
        path (str or PathLike): a folder.

    Returns:
        bool: True if the folder holds such a file (a regular file, not a link).
    """
    folder = Path(path)
    for name in _MARKERS:
        marker = folder / name
        if marker.is_symlink() or not marker.is_file():
            continue
        try:
            with open(marker, encoding="utf-8") as f:
                data = json.loads(f.read(64 * 2**20) or "null")
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        fmt = data.get("format")
        if isinstance(fmt, str) and fmt.startswith("captum-unicam/"):
            return True
    return False


# ---------------------------------------------------------------------------
# leftovers of killed runs
# ---------------------------------------------------------------------------


def _leftover_re(name: str) -> "re.Pattern[str]":
    # .X.tmp-PID-RANDOM / .X.old-PID-RANDOM
    return re.compile(rf"^\.{re.escape(name)}\.(tmp|old)-(\d+)-[A-Za-z0-9_]+$")


def _leftovers(out: Path):
    """(path, kind, pid, mtime) of the temporary folders of ``out`` in its parent."""
    pattern = _leftover_re(out.name)
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return []
    found = []
    for e in entries:
        m = pattern.match(e.name)
        if not m:
            continue
        try:
            if not e.is_dir(follow_symlinks=False):
                continue
            mtime = e.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        found.append((Path(e.path), m.group(1), int(m.group(2)), mtime))
    return found


def _stale(pid: int, mtime: float) -> bool:
    return not pid_alive(pid)


def recover_output_dir(out_dir: PathLike) -> List[str]:
    r"""Cleans up what killed runs left beside ``out_dir``; never touches a live run's files.

    - ``.X.tmp-PID-*`` folders whose process is gone are deleted;
    - when ``X`` is missing and a run that is gone left the previous report in
      ``.X.old-PID-*`` (it was killed between its two renames), that report is put back
      as ``X``; when ``X`` exists (the run had published it), the old one is deleted.

    Each action is reported by a :class:`UserWarning`.

    Args:
        out_dir (str or PathLike): the report folder ``X``.

    Returns:
        list of str: what was done, one sentence each.
    """
    out = Path(out_dir).expanduser().absolute()
    done: List[str] = []
    items = _leftovers(out)
    for path, kind, pid, mtime in items:
        if kind == "tmp" and _stale(pid, mtime):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                done.append(
                    f"removed {path.name!r}, the unfinished output of an earlier run "
                    f"that was killed (process {pid})"
                )
    olds = sorted((i for i in items if i[1] == "old" and _stale(i[2], i[3])), key=lambda i: i[3])
    if olds and not os.path.lexists(out):
        path, pid = olds[-1][0], olds[-1][2]  # the newest
        try:
            os.rename(path, out)
            olds.pop()
            done.append(
                f"restored {str(out)!r} from {path.name!r}: an earlier run"
                f" (process {pid}) was killed while replacing it"
            )
        except OSError:
            pass
    if os.path.lexists(out):
        for path, _kind, _pid, _mtime in olds:
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                done.append(
                    f"removed {path.name!r}, a report already replaced by an earlier run "
                    "that was killed before deleting it"
                )
    for msg in done:
        warnings.warn(msg, stacklevel=2)
    return done


# ---------------------------------------------------------------------------
# checks before any work
# ---------------------------------------------------------------------------


def _given(path: PathLike, what: str, fix: str) -> Path:
    """The absolute path as given (symlinks kept); a dangling symlink is an OutputError."""
    given = Path(path).expanduser().absolute()
    if given.is_symlink() and not given.exists():
        raise OutputError(
            f"{what} {str(given)!r} is a symbolic link to {os.readlink(given)!r}, which does not "
            f"exist; remove the link or {fix}"
        )
    return given


def _resolved(path: PathLike) -> Path:
    p = Path(path).expanduser().absolute()
    try:
        return p.resolve(strict=False)
    except (RuntimeError, OSError) as e:  # a symlink loop on the way
        raise OutputError(
            f"cannot resolve the path {str(p)!r} ({e}); it holds a symbolic "
            "link that loops; give another path"
        ) from e


def _nearest_existing(path: Path) -> Path:
    anc = path
    while not os.path.lexists(anc) and anc != anc.parent:
        anc = anc.parent
    return anc


def _check_parent_writable(target: Path, what: str) -> None:
    anc = _nearest_existing(target.parent)
    if not anc.is_dir():
        raise OutputError(
            f"cannot create the {what} {str(target)!r}: {str(anc)!r} is a file, not a folder; "
            "choose another output path"
        )
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot create the {what} {str(target)!r}: the folder {str(anc)!r} is not "
            "writable; choose another output path or fix its permissions"
        )


def _reads_conflict(out: Path, reads: Iterable[PathLike], what: str) -> None:
    for r in reads:
        if r is None:
            continue
        rp = _resolved(r)
        if rp == out:
            raise OutputError(
                f"the {what} {str(out)!r} is {str(r)!r}, which this run reads; choose "
                "another output path"
            )
        if out in rp.parents:
            raise OutputError(
                f"the {what} {str(out)!r} holds {str(r)!r}, which this run reads, so "
                "replacing it would delete that input; choose another output folder"
            )
        if rp in out.parents:
            raise OutputError(
                f"the {what} {str(out)!r} is inside {str(r)!r}, which this run reads; "
                "choose an output folder outside the inputs"
            )


def check_output_dir(
    out_dir: PathLike, *, overwrite: bool = False, reads: Iterable[PathLike] = ()
) -> Path:
    r"""Checks that a report can be written to ``out_dir``, before any work is done.

    Leftovers of killed runs are cleaned up first (:func:`recover_output_dir`). A symlink
    is resolved: the report is written where it points (a dangling one is refused).

    Args:
        out_dir (str or PathLike): the report folder.
        overwrite (bool, optional): allow replacing an existing non-empty folder, which
            must then be a report written by this tool (:func:`is_report_dir`).
            Default: False
        reads (iterable of str or PathLike, optional): the files and folders this run
            reads (checkpoints, data folders); the report folder may neither be one of
            them, nor hold one, nor lie inside one. Default: ()

    Returns:
        pathlib.Path: the absolute folder path, symlinks resolved.

    Raises:
        OutputError: ``out_dir`` is a dangling symlink or a file; is the current folder
        or one of its parents, or the home folder; holds, is or lies inside something
        in ``reads``; is a non-empty folder and ``overwrite`` is False, or a non-empty
        folder that is not a report of this tool; or its parent cannot be written.

    Examples::

        >>> out = check_output_dir("report", reads=["models/student.pt"])
    """
    given = _given(out_dir, "output path", "give the folder itself")
    out = _resolved(given)
    if out.exists() and not out.is_dir():
        raise OutputError(
            f"output path {str(given)!r} exists and is not a folder; choose another output folder"
        )
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents or out == Path.home().resolve():
        which = (
            "the current folder"
            if out == cwd
            else "a parent of the current folder"
            if out in cwd.parents
            else "the home folder"
        )
        raise OutputError(
            f"output folder {str(given)!r} is {which}; writing a report there would replace "
            "everything in it; give a new sub-folder, e.g. 'report'"
        )
    _reads_conflict(out, reads, "output folder")
    recover_output_dir(out)
    if out.is_dir():
        try:
            non_empty = any(out.iterdir())
        except PermissionError:
            raise OutputError(
                f"output folder {str(out)!r} cannot be read (permission "
                "denied); choose another output folder"
            ) from None
        if non_empty and not overwrite:
            raise OutputError(
                f"output folder {str(given)!r} exists and is not empty; choose another "
                "output folder, or pass overwrite=True (--overwrite) to replace it"
            )
        if non_empty and not is_report_dir(out):
            raise OutputError(
                f"output folder {str(given)!r} is not a captum-unicam report (no metrics.json "
                "of ours), so it is not replaced even with overwrite; choose another output "
                "folder"
            )
    _check_parent_writable(out, "output folder")
    return out


def check_output_file(
    path: PathLike, *, overwrite: bool = False, reads: Iterable[PathLike] = ()
) -> Path:
    r"""Checks that a file (e.g. the checkpoint ``train`` writes) can be written, before
    any work is done.

    Args:
        path (str or PathLike): the file to write.
        overwrite (bool, optional): allow replacing an existing file. Default: False
        reads (iterable of str or PathLike, optional): the files this run reads (e.g. the
            Teacher's checkpoint); ``path`` may not be one of them, even with
            ``overwrite``. Default: ()

    Returns:
        pathlib.Path: the absolute file path, symlinks resolved.

    Raises:
        OutputError: ``path`` is a folder or a dangling symlink; is (or links to) a file
        in ``reads``; exists and ``overwrite`` is False; a parent is a file; or the
        folder cannot be written.

    Examples::

        >>> out = check_output_file("student.pt", reads=["teacher.pt"])
    """
    given = _given(path, "output file", "give another file name")
    out = _resolved(given)
    if out.is_dir():
        raise OutputError(
            f"output file {str(given)!r} is a folder; give a file name such as 'student.pt'"
        )
    for r in reads:
        if r is None:
            continue
        same = _resolved(r) == out
        if not same and out.exists():
            try:
                same = os.path.samefile(r, out)
            except OSError:
                pass
        if same:
            raise OutputError(
                f"output file {str(given)!r} is {str(r)!r}, which this run reads; writing it "
                "would replace that input; give another file name"
            )
    if out.exists() and not overwrite:
        raise OutputError(
            f"output file {str(given)!r} exists; choose another file name, or pass "
            "overwrite=True (--overwrite) to replace it"
        )
    _check_parent_writable(out, "output file")
    return out


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def make_temp_dir(out_dir: PathLike) -> Path:
    r"""Creates the empty temporary folder ``.X.tmp-PID-RANDOM`` beside ``out_dir`` (and
    any missing parents), with the permissions of a folder made by ``mkdir``.

    Args:
        out_dir (str or PathLike): the final folder ``X``.

    Returns:
        pathlib.Path: the temporary folder.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue
    raise OutputError(f"cannot create a temporary folder beside {str(out)!r}")  # pragma: no cover


def _old_name(out: Path) -> Path:
    return out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"


def publish_folder(
    tmp: PathLike, out: PathLike, *, overwrite: bool, only_reports: bool = False
) -> None:
    r"""Moves the complete folder ``tmp`` to ``out`` by renames.

    A missing or empty ``out`` is replaced in one rename. An existing one only with
    ``overwrite`` (and, with ``only_reports``, only if it is a report of this tool): it
    is renamed to
    ``.X.old-PID-*``, ``tmp`` renamed to ``out``, then the old one deleted. If another run
    publishes to ``out`` at the same time, the renames are tried again (the last complete
    report wins; reports are never mixed); if that keeps failing, or ``out`` appears
    without ``overwrite``, :class:`OutputError` is raised, the previous report is left
    in place, and ``tmp`` is left for the caller to delete.

    Args:
        tmp (str or PathLike): the complete folder, in the same parent as ``out``.
        out (str or PathLike): the destination.
        overwrite (bool): allow replacing an existing report.
        only_reports (bool, optional): replace only a folder that :func:`is_report_dir`
            recognises (checked again here, as it may have changed since
            :func:`check_output_dir`). Default: False

    Raises:
        OutputError: ``out`` appeared (non-empty) while the report was written and
        ``overwrite`` is False; it is not a report of this tool (``only_reports``), or
        not a folder; or
        other runs kept replacing it.
    """
    tmp, out = Path(tmp), Path(out)
    olds: List[Path] = []  # folders we moved aside; the first is the report we replace
    try:
        for _ in range(_PUBLISH_ATTEMPTS):
            try:
                os.rename(tmp, out)  # atomic; replaces a missing or empty folder
                break
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise OutputError(
                        f"cannot move the finished report to {str(out)!r} "
                        f"({e.strerror}); choose another output folder"
                    ) from e
            if out.is_symlink() or not out.is_dir():
                raise OutputError(
                    f"output path {str(out)!r} is no longer a folder (another "
                    "program replaced it); choose another output folder"
                )
            if not overwrite:
                raise OutputError(
                    f"output folder {str(out)!r} appeared while the report was written; "
                    "choose another output folder, or pass overwrite=True (--overwrite)"
                )
            if only_reports and not is_report_dir(out):
                raise OutputError(
                    f"output folder {str(out)!r} is not a captum-unicam report (no "
                    "metrics.json of ours), so it is not replaced; choose another output folder"
                )
            old = _old_name(out)
            try:
                os.rename(out, old)
            except FileNotFoundError:
                continue  # another run moved it aside first; try again
            olds.append(old)
            _stage("moved-aside")
        else:
            raise OutputError(
                f"another run kept replacing {str(out)!r} at the same time; the report was "
                "not written; run again, or give each run its own output folder"
            )
    except BaseException:
        if olds and not os.path.lexists(out):
            try:  # put back the newest report we moved aside
                os.rename(olds.pop(), out)
            except OSError:
                pass
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)
        raise
    try:
        _stage("published")
    finally:
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)


#: errno values of a write that failed for want of space (disk, quota, file size limit).
_DISK_FULL = frozenset(
    e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG) if e is not None
)


def _disk_full(err: OSError, out: Path) -> OutputError:
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    kept = (
        "the previous report there is kept" if os.path.lexists(out) else "nothing was written there"
    )
    return OutputError(
        f"the report {str(out)!r} could not be written: {err.strerror or 'no space left'}{where}; "
        f"{kept} and the unfinished copy was removed; free some space (or raise the quota) "
        "and run again, or choose an output folder on another disk"
    )


@contextlib.contextmanager
def staged_folder(
    out_dir: PathLike, *, overwrite: bool = False, only_reports: bool = True
) -> Iterator[Path]:
    r"""Context manager: an empty temporary folder to fill, published as ``out_dir`` on
    success (:func:`publish_folder`), deleted on any error or interrupt.

    Leftovers of killed runs are cleaned up first (:func:`recover_output_dir`). Parent
    folders created for the report are removed again on failure when left empty. A write
    that fails for want of space (``ENOSPC``, ``EDQUOT``, ``EFBIG``) becomes one
    :class:`OutputError` saying so; the previous report is kept.

    Args:
        out_dir (str or PathLike): the report folder (checked by :func:`check_output_dir`).
        overwrite (bool, optional): allow replacing an existing report. Default: False
        only_reports (bool, optional): replace only a report of this tool (see
            :func:`publish_folder`). Default: True

    Yields:
        pathlib.Path: the temporary folder ``.X.tmp-PID-RANDOM``.

    Examples::

        >>> with staged_folder("report") as tmp:
        ...     (tmp / "index.html").write_text("<html></html>")
    """
    out = Path(out_dir).expanduser().absolute()
    recover_output_dir(out)
    created: List[Path] = []
    anc = out.parent
    while not os.path.lexists(anc):
        created.append(anc)
        anc = anc.parent
    tmp = None
    try:
        tmp = make_temp_dir(out)
        _stage("tmp-created")
        yield tmp
        _stage("before-publish")
        publish_folder(tmp, out, overwrite=overwrite, only_reports=only_reports)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break
        if isinstance(err, OSError) and err.errno in _DISK_FULL:
            raise _disk_full(err, out) from None
        raise


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    r"""Context manager: SIGTERM (and SIGHUP) raise :class:`KeyboardInterrupt` inside it,
    so that a terminated run cleans up (temporary folders, hooks) like an interrupted
    one. The previous handlers are restored on exit. Outside the main thread it does
    nothing (Python delivers signals to the main thread only).

    Examples::

        >>> with terminate_as_interrupt():
        ...     run()   # `kill PID` now ends it with KeyboardInterrupt
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"terminated by signal {signal.Signals(signum).name}")

    signums = [
        s
        for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
        if s is not None
    ]
    previous = {}
    try:
        for s in signums:
            previous[s] = signal.signal(s, _raise)
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
