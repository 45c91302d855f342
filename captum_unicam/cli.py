r"""The ``captum-unicam`` command: ``demo``, ``train``, ``explain``, ``quantify`` and ``compare``.

::

    captum-unicam demo     [--out DIR] [--quick] [--seed N] [--device cpu|cuda]
    captum-unicam train    --data SPEC --arch ARCH [--teacher CKPT --method M] --out CKPT
    captum-unicam explain  --student CKPT --base CKPT --data SPEC [--layers ...] --out DIR
    captum-unicam quantify --student CKPT --base CKPT --data SPEC [--perturb road|mask|none] --out DIR
    captum-unicam compare  --student CKPT --base CKPT --data SPEC --out DIR

A shell over the pipeline: argparse, then one call per command into
:mod:`captum_unicam.pipeline.runs` with its typed request
(:mod:`captum_unicam.pipeline.requests`), then the exit code. Expected failures (the
:class:`~captum_unicam.errors.CaptumUnicamError` family) print one line on stderr saying
what is wrong and what to do, in terms of flags (the library's ``field=`` names translated
by :func:`~captum_unicam.pipeline.requests.in_flags`), and exit with code 2 (no traceback,
no report left behind); ``CAPTUM_UNICAM_TRACEBACK=1`` in the environment shows the
traceback instead. Any other exception is a bug and keeps its traceback. SIGTERM and SIGHUP
end a run like Ctrl-C (exit 130, temporary folders removed). Library warnings are shown as
one line each.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import warnings
from typing import Optional, Sequence

from captum_unicam import errors
from captum_unicam.pipeline import __version__
from captum_unicam.pipeline.arguments import (
    COMMANDS,
    HELP,
    augmentations,
    class_map,
    data_spec,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    seed_value,
    unit_float,
    user_path,
)
from captum_unicam.pipeline.requests import (
    RESIZE_NAMES,
    CompareRequest,
    DemoRequest,
    ExplainRequest,
    QuantifyRequest,
    TrainRequest,
    in_flags,
    request_from,
)
from captum_unicam.pipeline.warning_lines import is_reported, one_line

__all__ = ["main", "build_parser"]

PROG = "captum-unicam"

#: errno values of a write that failed for want of space (disk, quota).
_DISK_FULL = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)


# ---------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default: flags as "off", required options as "required"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if "default" in text.lower():
            return text
        if action.required:
            return text + " (required)"
        if isinstance(action, argparse._StoreTrueAction):
            return text + " (default: off)"
        if isinstance(action, argparse._StoreFalseAction):
            return text + " (default: shown)"
        if action.default is None:
            return text + " (default: none)"
        if isinstance(action.default, list):
            return text + " (default: " + " ".join(map(str, action.default)) + ")"
        return text + " (default: %(default)s)"


def _arg(p: argparse.ArgumentParser, flag: str, key: Optional[str] = None, **kwargs) -> None:
    """``p.add_argument(flag, **kwargs)`` with the help text ``HELP[key]`` (by default
    ``key`` is the option's dest, e.g. ``"batch_size"`` for ``--batch-size``)."""
    key = key or kwargs.get("dest") or flag[2:].replace("-", "_")
    p.add_argument(flag, help=HELP[key], **kwargs)


def _add_force(p: argparse.ArgumentParser) -> None:
    _arg(p, "--force", action="store_true")


def _add_common(
    p: argparse.ArgumentParser, *, out_default: Optional[str] = None, seed: str = "seed"
) -> None:
    """``--out`` (a report folder), ``--overwrite``, ``--device``, ``--seed`` (help text
    ``HELP[seed]``) and ``--no-progress``."""
    _arg(
        p, "--out", type=user_path, required=out_default is None, default=out_default, metavar="DIR"
    )
    _arg(p, "--overwrite", action="store_true")
    _arg(p, "--device", default="cpu")
    _arg(p, "--seed", seed, type=seed_value, default=0, metavar="N")
    _arg(p, "--no-progress", dest="progress", action="store_false")


# explain / quantify / compare: the models of a pair (library architectures or factories of
# the user's own code), how images are read, and how classes are matched
def _add_models(p: argparse.ArgumentParser, teacher: bool = True) -> None:
    roles = ("", "student_", "base_")
    for role in roles:
        _arg(p, "--" + role.replace("_", "-") + "arch", metavar="ARCH")
    for role in roles:
        _arg(p, "--" + role.replace("_", "-") + "model", metavar="MODULE:FUNCTION")
    if teacher:
        _arg(p, "--teacher-arch", metavar="ARCH")
        _arg(p, "--teacher-model", metavar="MODULE:FUNCTION")


def _add_reading(p: argparse.ArgumentParser) -> None:
    _arg(p, "--image-size", type=positive_int, metavar="N")
    _arg(p, "--normalize", choices=("imagenet", "none"))
    _arg(p, "--resize", choices=RESIZE_NAMES)
    _arg(p, "--class-map", type=class_map, metavar="OLD=NEW,...")
    _arg(p, "--follow-links", action="store_true")
    _arg(p, "--download", action="store_true")


def _add_pair(p: argparse.ArgumentParser) -> None:
    _arg(p, "--student", type=user_path, required=True, metavar="CKPT")
    _arg(p, "--base", type=user_path, required=True, metavar="CKPT")
    _arg(p, "--teacher", type=user_path, metavar="CKPT")
    _add_models(p)
    _arg(p, "--data", type=data_spec, required=True, metavar="SPEC")
    _arg(p, "--split", default="test", choices=("train", "test", "val"))
    _add_reading(p)
    _arg(p, "--order", default="stratified", choices=("stratified", "shuffle", "file"))
    _arg(p, "--layers", nargs="+", default=["L1", "L2", "L3", "L4"], metavar="LAYER")
    _arg(p, "--batch-size", type=positive_int, metavar="N", default=32)
    _arg(p, "--label-model", type=user_path, metavar="MODEL")
    _arg(p, "--one-hot", action="store_true")
    _arg(p, "--limit", type=positive_int, metavar="N")
    _add_force(p)


def _add_compare(p: argparse.ArgumentParser) -> None:
    _arg(p, "--student", "compare.student", type=user_path, required=True, metavar="CKPT")
    _arg(p, "--base", "compare.base", type=user_path, required=True, metavar="CKPT")
    _add_models(p, teacher=False)
    _arg(p, "--data", "compare.data", type=data_spec, required=True, metavar="SPEC")
    _add_reading(p)
    _arg(p, "--out", type=user_path, required=True)
    _arg(p, "--overwrite", "compare.overwrite", action="store_true")
    _arg(p, "--layer", default="L4")
    _arg(p, "--images", "compare.images", type=int, default=64)
    _arg(p, "--batch-size", "compare.batch_size", type=int, default=64)
    _arg(p, "--reference-images", type=nonneg_int, default=16, metavar="N")
    _arg(p, "--percentiles", type=float, nargs="*", default=[0, 10, 20, 30, 40, 50, 60, 70, 80, 90])
    _arg(p, "--sanity-images", type=int, default=32)
    _arg(p, "--no-sanity", action="store_true")
    _arg(p, "--random-label-student", type=user_path)
    _arg(p, "--ig-steps", type=positive_int, default=16)
    _arg(p, "--n-bootstrap", "compare.n_bootstrap", type=int, default=1000)
    _arg(p, "--seed", "compare.seed", type=int, default=0)
    _arg(p, "--device", "compare.device", default="cpu")
    _arg(p, "--no-progress", dest="progress", action="store_false")
    _arg(p, "--threads", "compare.threads", type=int, default=1)


def _add_train(p: argparse.ArgumentParser) -> None:
    _arg(p, "--data", type=data_spec, required=True, metavar="SPEC")
    _arg(p, "--arch", "train.arch", required=True, metavar="ARCH")
    _arg(p, "--teacher", "train.teacher", type=user_path, metavar="CKPT")
    _arg(p, "--teacher-arch", "train.teacher_arch", metavar="ARCH")
    _arg(p, "--method", choices=("response", "attention", "overhaul"))
    _arg(p, "--epochs", type=positive_int, metavar="N", default=10)
    _arg(p, "--image-size", "train.image_size", type=positive_int, metavar="N")
    _arg(p, "--normalize", "train.normalize", choices=("imagenet", "none"))
    _arg(p, "--augment", type=augmentations, default=(), metavar="LIST")
    _add_force(p)
    _arg(p, "--batch-size", "train.batch_size", type=positive_int, metavar="N", default=64)
    _arg(p, "--lr", type=positive_float, metavar="X", default=0.05)
    _arg(p, "--optimizer", default="sgd", choices=("sgd", "adam"))
    _arg(p, "--weight-decay", type=nonneg_float, metavar="X", default=5e-4)
    _arg(p, "--labelled", type=positive_int, metavar="N")
    _arg(p, "--transfer", type=data_spec, metavar="SPEC")
    _arg(p, "--temperature", type=positive_float, metavar="T", default=4.0)
    _arg(p, "--alpha", type=unit_float, metavar="A", default=0.9)
    _arg(p, "--weights", metavar="NAME")
    _arg(p, "--limit", "train.limit", type=positive_int, metavar="N")
    _arg(p, "--download", "train.download", action="store_true")
    _arg(p, "--out", "train.out", type=user_path, required=True, metavar="CKPT")
    _arg(p, "--overwrite", "train.overwrite", action="store_true")
    _arg(p, "--device", default="cpu")
    _arg(p, "--seed", "train.seed", type=seed_value, default=0, metavar="N")
    _arg(p, "--no-progress", dest="progress", action="store_false")


def _add_demo(p: argparse.ArgumentParser) -> None:
    _add_common(p, out_default="unicam-report", seed="demo.seed")
    _arg(p, "--quick", action="store_true")
    _arg(p, "--cache-dir", type=user_path, metavar="DIR")
    _arg(p, "--images", "demo.images", type=positive_int, metavar="N")
    _arg(p, "--threads", "demo.threads", type=positive_int, metavar="N", default=1)


def _add_explain(p: argparse.ArgumentParser) -> None:
    _add_pair(p)
    _arg(p, "--images", "explain.images", type=positive_int, metavar="N")
    _arg(p, "--reference", type=nonneg_int, metavar="N", default=0)
    _add_common(p)


def _add_quantify(p: argparse.ArgumentParser) -> None:
    _add_pair(p)
    _arg(p, "--perturb", default="mask", choices=("mask", "road", "none"))
    kinds = ("none", "gradcam", "distilled", "residual")
    _arg(p, "--maps", nargs="+", default=list(kinds), choices=kinds, metavar="KIND")
    _arg(p, "--n-bootstrap", type=positive_int, metavar="N", default=1000)
    _add_common(p)


def build_parser() -> argparse.ArgumentParser:
    r"""The argument parser of ``captum-unicam`` (one sub-parser per command)."""
    parser = _Parser(
        prog=PROG,
        formatter_class=_Formatter,
        description="UniCAM, FSS and RS: explain and measure what knowledge distillation changed.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    commands = {
        "demo": (_add_demo, cmd_demo),
        "train": (_add_train, cmd_train),
        "explain": (_add_explain, cmd_explain),
        "quantify": (_add_quantify, cmd_quantify),
        "compare": (_add_compare, cmd_compare),
    }
    for name, (add_options, func) in commands.items():
        summary, description = COMMANDS[name]
        p = sub.add_parser(name, formatter_class=_Formatter, help=summary, description=description)
        add_options(p)
        p.set_defaults(func=func)
    return parser


# ---------------------------------------------------------------------------
# commands: a request, one run, the line it prints
# ---------------------------------------------------------------------------


def _runs():
    # imported when a command runs, not for --help or a usage error (it loads torch)
    from captum_unicam.pipeline import runs

    return runs


def _print(written) -> int:
    if written is not None:
        print(written.summary)
    return 0


def cmd_demo(args, argv) -> int:
    return _print(_runs().demo(request_from(DemoRequest, args), command=argv))


def cmd_train(args, argv) -> int:
    return _print(
        _runs().train(
            request_from(TrainRequest, args),
            warn=lambda line: _warn(args, line),
            inform=lambda line: print(f"{PROG} train: {line}", file=sys.stderr),
        )
    )


def cmd_explain(args, argv) -> int:
    request = request_from(ExplainRequest, args)
    return _print(_runs().explain(request, command=argv, warn=lambda line: _warn(args, line)))


def cmd_quantify(args, argv) -> int:
    request = request_from(QuantifyRequest, args)
    return _print(_runs().quantify(request, command=argv, warn=lambda line: _warn(args, line)))


def cmd_compare(args, argv) -> int:
    request = request_from(CompareRequest, args)
    return _print(_runs().compare(request, command=argv, warn=lambda line: _warn(args, line)))


# ---------------------------------------------------------------------------
# errors and warnings, one line each
# ---------------------------------------------------------------------------


def _warn(args, line: str) -> None:
    print(f"{PROG} {args.command}: warning: {in_flags(line)}", file=sys.stderr)


def _one_line(e: BaseException) -> str:
    msg = one_line(e) or type(e).__name__
    if isinstance(e, (FileNotFoundError, PermissionError)) and getattr(e, "filename", None):
        msg = f"{e.strerror or type(e).__name__}: {e.filename!s}; check the path"
    return msg


@contextlib.contextmanager
def _one_line_warnings(args):
    """Library warnings shown as one line each, ``captum-unicam CMD: warning: ...``
    (the library's messages in the command line's words), the previous display restored
    afterwards. Warnings turned into errors by a filter still raise."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not is_reported(category):
            return previous(message, category, filename, lineno, file, line)
        _warn(args, one_line(message))

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""Runs ``captum-unicam`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    Exit codes: 0 success, 2 bad input or a full disk (one line on stderr), 130 interrupted
    (Ctrl-C, SIGTERM or SIGHUP; temporary folders are removed, any previous report is left in
    place).
    Library warnings are shown as one line each.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    os.environ.setdefault("MPLBACKEND", "Agg")
    argv = list(sys.argv[1:] if argv is None else argv)
    from captum_unicam.pipeline import terminate_as_interrupt  # signals: no torch needed

    try:
        with terminate_as_interrupt(), _one_line_warnings(args):
            return int(args.func(args, argv) or 0)
    except KeyboardInterrupt as e:
        print(
            f"{PROG} {args.command}: interrupted" + (f" ({e})" if str(e) else ""), file=sys.stderr
        )
        return 130
    except errors.CaptumUnicamError as e:
        if os.environ.get("CAPTUM_UNICAM_TRACEBACK"):
            raise
        print(f"{PROG} {args.command}: error: {in_flags(_one_line(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk anywhere (a cache, a temporary file): one line too
        if e.errno not in _DISK_FULL or os.environ.get("CAPTUM_UNICAM_TRACEBACK"):
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(
            f"{PROG} {args.command}: error: {e.strerror or 'no space left on device'}{where}; "
            "free some space (or raise the quota) and run again",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
