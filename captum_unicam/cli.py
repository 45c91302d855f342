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
from captum_unicam.pipeline.requests import (
    ARCHITECTURE_NAMES,
    AUGMENTATIONS,
    MAX_SEED,
    CompareRequest,
    DemoRequest,
    ExplainRequest,
    QuantifyRequest,
    TrainRequest,
    in_flags,
    request_from,
)

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


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {v}")
    return v


def _float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def _positive_float(text: str) -> float:
    v = _float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return v


def _nonneg_float(text: str) -> float:
    v = _float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def _unit_float(text: str) -> float:
    v = _float(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return v


def _path(text: str) -> str:
    """A path flag's value with ``~`` expanded (also in ``--flag=~/x``, which no shell
    expands)."""
    return os.path.expanduser(text)


def _spec(text: str) -> str:
    """A data spec with ``~`` expanded in its root (``imagefolder:~/pets``)."""
    scheme, sep, root = text.partition(":")
    return f"{scheme}{sep}{os.path.expanduser(root)}" if sep and root.startswith("~") else text


def _add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="run even when the estimated memory of --image-size (batch size x 3 x "
        "size^2 x 4 bytes x 100) exceeds the memory available (otherwise refused "
        "before any data are loaded)",
    )


# --- train / demo: argument types of --seed and --augment ---
def _seed(text: str) -> int:
    v = _nonneg_int(text)
    if v > MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"must be an integer from 0 to {MAX_SEED} (2**32 - 1), got {v}"
        )
    return v


def _augmentations(text: str) -> tuple:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give none, or a comma-separated list of "
            f"{', '.join(AUGMENTATIONS)} (each once), e.g. flip,crop"
        )
    return tuple(names)


# --- end train / demo ---


def _add_common(
    p: argparse.ArgumentParser,
    *,
    out_help: str,
    out_default: Optional[str] = None,
    seed_help: str = "seed of the bootstrap intervals and permutation tests",
) -> None:
    p.add_argument(
        "--out",
        type=_path,
        required=out_default is None,
        default=out_default,
        metavar="DIR",
        help=out_help,
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing non-empty output folder (otherwise it is refused and left untouched)",
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    p.add_argument(
        "--seed", type=_seed, default=0, metavar="N", help=seed_help + f" (0 to {MAX_SEED})"
    )
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide the progress bars"
    )


def _class_map(text: str) -> dict:
    """``OLD=NEW,OLD2=NEW2`` -> ``{"OLD": "NEW", ...}`` (class names of the data -> names)."""
    out = {}
    for part in (p.strip() for p in text.split(",")):
        old, sep, new = part.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise argparse.ArgumentTypeError(f"{part!r} is not OLD=NEW; give e.g. 0=zero,1=one")
        if old.strip() in out:
            raise argparse.ArgumentTypeError(f"{old.strip()!r} is mapped twice")
        out[old.strip()] = new.strip()
    return out


# explain / quantify / compare: the models of a pair (library architectures or factories of
# the user's own code), how images are read, and how classes are matched
def _add_models(p: argparse.ArgumentParser, teacher: bool = True) -> None:
    p.add_argument(
        "--arch",
        default=None,
        metavar="ARCH",
        help="architecture of plain state-dict checkpoints of the Student and the "
        "Base; see 'captum-unicam train --help' for names",
    )
    p.add_argument(
        "--student-arch",
        default=None,
        metavar="ARCH",
        help="architecture of the Student, if it differs from --arch",
    )
    p.add_argument(
        "--base-arch",
        default=None,
        metavar="ARCH",
        help="architecture of the Base, if it differs from --arch",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="MODULE:FUNCTION",
        help="your own architecture for the Student and the Base: the function of "
        "your code (importable, e.g. on PYTHONPATH) that builds the model, called "
        "with num_classes= when it takes it; the weights are read from the "
        "checkpoints with torch.load(weights_only=True). Name its layers by "
        "dotted path (--layers features.3)",
    )
    p.add_argument(
        "--student-model",
        default=None,
        metavar="MODULE:FUNCTION",
        help="the Student's, if it differs from --model",
    )
    p.add_argument(
        "--base-model",
        default=None,
        metavar="MODULE:FUNCTION",
        help="the Base's, if it differs from --model",
    )
    if teacher:
        p.add_argument(
            "--teacher-arch",
            default=None,
            metavar="ARCH",
            help="architecture of a plain state-dict Teacher (--arch and --model do "
            "not apply to it)",
        )
        p.add_argument(
            "--teacher-model",
            default=None,
            metavar="MODULE:FUNCTION",
            help="your own architecture for the Teacher, as --model",
        )


def _add_reading(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--image-size",
        type=_positive_int,
        metavar="N",
        default=None,
        help="image side in pixels the models were trained at (default: the one "
        "recorded in the checkpoints; required when none records it: nothing is "
        "guessed); overrides the checkpoints with a warning",
    )
    p.add_argument(
        "--normalize",
        default=None,
        choices=("imagenet", "none"),
        help="input normalisation the models were trained with (default: the one "
        "recorded in the checkpoints; required when none records it); overrides "
        "the checkpoints with a warning",
    )
    p.add_argument(
        "--resize",
        default=None,
        choices=("shorter-side-crop", "exact", "pad", "none"),
        help="how images of another size than --image-size are brought to it: "
        "shorter-side-crop (shorter side to N, then the centre square), exact "
        "(stretched), pad (longer side to N, black borders) or none (refused); "
        "images already N x N are never resized or cropped (default: the rule "
        "recorded in the checkpoints, else shorter-side-crop)",
    )
    p.add_argument(
        "--class-map",
        type=_class_map,
        default=None,
        metavar="OLD=NEW,...",
        help="rename the data's classes (folder names) to the class names the "
        "checkpoints record, e.g. 0=zero,1=one; classes are matched by name, "
        "never by position",
    )
    p.add_argument(
        "--follow-links",
        action="store_true",
        help="follow symbolic links that lead out of the image folder (skipped with a "
        "warning otherwise)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="allow downloading CIFAR-10 into ROOT (nothing is downloaded otherwise)",
    )


def _add_pair(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--student",
        type=_path,
        required=True,
        metavar="CKPT",
        help="checkpoint of the Student (written by 'captum-unicam train', or a "
        "plain state dict with --arch or --model)",
    )
    p.add_argument(
        "--base",
        type=_path,
        required=True,
        metavar="CKPT",
        help="checkpoint of the Base (the Student's architecture trained without KD, or the Teacher)",
    )
    p.add_argument(
        "--teacher",
        type=_path,
        default=None,
        metavar="CKPT",
        help="checkpoint of the Teacher, only to state its accuracy in the report",
    )
    _add_models(p)
    p.add_argument(
        "--data",
        type=_spec,
        required=True,
        metavar="SPEC",
        help="data spec: controlled, controlled:SEED, cifar10:ROOT or imagefolder:ROOT",
    )
    p.add_argument(
        "--split", default="test", choices=("train", "test", "val"), help="split of the data to use"
    )
    _add_reading(p)
    p.add_argument(
        "--order",
        default="stratified",
        choices=("stratified", "shuffle", "file"),
        help="how images are batched: stratified (seeded; every batch holds as many classes as its "
        "size allows), shuffle (seeded) or file (the data's order). A last batch under 5 images "
        "is merged into the one before",
    )
    p.add_argument(
        "--layers",
        nargs="+",
        default=["L1", "L2", "L3", "L4"],
        metavar="LAYER",
        help="layers to explain: L1..L4 (last block of each ResNet stage) or dotted "
        "module paths present in both models (e.g. features.3 or encoder.layer.1)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        default=32,
        help="images per batch; UniCAM and the statistics are batch statistics and need at least 5",
    )
    p.add_argument(
        "--label-model",
        type=_path,
        default=None,
        metavar="MODEL",
        help="text encoder for the label embeddings (local folder or cached Hugging Face id); "
        "default: the bundled all-MiniLM-L6-v2",
    )
    p.add_argument(
        "--one-hot",
        action="store_true",
        help="use one-hot label vectors instead of text embeddings of the class names",
    )
    p.add_argument(
        "--limit",
        type=_positive_int,
        metavar="N",
        default=None,
        help="evaluate a seeded subset of N images of the split (the same N gives the "
        "same images in explain and quantify): maps, accuracies and scores "
        "(default: all images)",
    )
    _add_force(p)


def _add_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--student",
        type=_path,
        required=True,
        metavar="CKPT",
        help="Student checkpoint (captum-unicam train / demo, or a plain state dict "
        "with --arch or --model)",
    )
    parser.add_argument("--base", type=_path, required=True, metavar="CKPT", help="Base checkpoint")
    _add_models(parser, teacher=False)
    parser.add_argument(
        "--data",
        type=_spec,
        required=True,
        metavar="SPEC",
        help="data spec: controlled[:SEED], cifar10:ROOT, imagefolder:ROOT",
    )
    _add_reading(parser)
    parser.add_argument("--out", type=_path, required=True, help="report folder to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing report folder"
    )
    parser.add_argument(
        "--layer",
        default="L4",
        help="layer explained: L1..L4 (ResNet stages) or a dotted module path "
        "present in both models",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=64,
        help="test images explained, drawn class-stratified (seeded by --seed: the "
        "classes take turns, so every class is represented even when the "
        "files are stored class by class)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="images per attribution call (UniCAM's context)"
    )
    parser.add_argument(
        "--reference-images",
        type=_nonneg_int,
        default=16,
        metavar="N",
        help="UniCAM runs in reference mode with N class-stratified train images "
        "(0: draw the reference set from the test images instead)",
    )
    parser.add_argument(
        "--percentiles",
        type=float,
        nargs="*",
        default=[0, 10, 20, 30, 40, 50, 60, 70, 80, 90],
        help="percentages of pixels removed (ROAD imputation) along each "
        "deletion curve, in [0, 100)",
    )
    parser.add_argument("--sanity-images", type=int, default=32, help="images of the sanity checks")
    parser.add_argument("--no-sanity", action="store_true", help="skip the sanity checks")
    parser.add_argument(
        "--random-label-student",
        type=_path,
        default=None,
        help="checkpoint of a Student-architecture model trained on random labels",
    )
    parser.add_argument(
        "--ig-steps", type=_positive_int, default=16, help="Integrated Gradients steps"
    )
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of ROAD's noise, randomisation, bootstrap"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide the progress bars"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; small images are explained fastest on one (measured on a shared "
        "2-core machine: 91 s with 1, 308 s with 2); raise it for large models on an idle machine",
    )


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

    p = sub.add_parser(
        "demo",
        formatter_class=_Formatter,
        help="train, explain and quantify a KD demo offline; write a report",
        description="Train a Teacher, a Base and a KD Student on the built-in controlled dataset "
        "(no network, no files of yours; cached per seed), explain and quantify L1..L4 and "
        "write the report folder, including models/teacher.pt, base.pt, student.pt.",
    )
    _add_common(
        p,
        out_help="report folder to write",
        out_default="unicam-report",
        seed_help="seed of the demo: data, training (models are cached per seed) and intervals",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smaller, faster run (for tests): fewer epochs, images and bootstrap resamples",
    )
    p.add_argument(
        "--cache-dir",
        type=_path,
        default=None,
        metavar="DIR",
        help="where the trained demo models are cached (default: the user's cache folder, e.g. ~/.cache/captum-unicam)",
    )
    p.add_argument(
        "--images",
        type=_positive_int,
        metavar="N",
        default=None,
        help="images shown per layer in the map grids (default: one per class)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        default=1,
        help="torch intra-op threads; the demo's models are tiny, so a second thread saves little "
        "and costs much more on a busy machine",
    )
    p.set_defaults(func=cmd_demo)

    from_models = ", ".join(ARCHITECTURE_NAMES)
    p = sub.add_parser(
        "train",
        formatter_class=_Formatter,
        help="train a model (optionally by distillation) and save a checkpoint",
        description=f"Train ARCH on the data; with --teacher, by knowledge distillation. Architectures: {from_models}.",
    )
    p.add_argument(
        "--data",
        type=_spec,
        required=True,
        metavar="SPEC",
        help="data spec: controlled, controlled:SEED, cifar10:ROOT or imagefolder:ROOT",
    )
    p.add_argument(
        "--arch", required=True, metavar="ARCH", help=f"architecture, one of {from_models}"
    )
    p.add_argument(
        "--teacher",
        type=_path,
        default=None,
        metavar="CKPT",
        help="Teacher checkpoint: train by distillation from it",
    )
    p.add_argument(
        "--teacher-arch",
        default=None,
        metavar="ARCH",
        help="architecture of a plain state-dict Teacher checkpoint",
    )
    p.add_argument(
        "--method",
        default=None,
        choices=("response", "attention", "overhaul"),
        help="KD method (needs --teacher; default with --teacher: response)",
    )
    p.add_argument(
        "--epochs",
        type=_positive_int,
        metavar="N",
        default=10,
        help="training epochs; the optimisation steps they make are printed before "
        "training, with a warning under 100",
    )
    p.add_argument(
        "--image-size",
        type=_positive_int,
        metavar="N",
        default=None,
        help="image side in pixels (default: the Teacher's with --teacher, else 32 for controlled "
        "and CIFAR-10, 224 for image folders)",
    )
    p.add_argument(
        "--normalize",
        default=None,
        choices=("imagenet", "none"),
        help="input normalisation: imagenet (ImageNet mean/std, for --weights) or none "
        "(default: the Teacher's with --teacher, imagenet with --weights, else none)",
    )
    p.add_argument(
        "--augment",
        type=_augmentations,
        default=(),
        metavar="LIST",
        help="training augmentation, recorded in the checkpoint: none, or a "
        "comma-separated list of flip (random horizontal flip; wrong for data "
        "whose mirror image is another class, e.g. digits or text) and crop "
        "(random crop after zero padding by 1/8 of the side) "
        "(default: none)",
    )
    _add_force(p)
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        default=64,
        help="images per training batch",
    )
    p.add_argument(
        "--lr",
        type=_positive_float,
        metavar="X",
        default=0.05,
        help="peak learning rate (cosine decay)",
    )
    p.add_argument(
        "--optimizer",
        default="sgd",
        choices=("sgd", "adam"),
        help="SGD with Nesterov momentum, or AdamW",
    )
    p.add_argument(
        "--weight-decay", type=_nonneg_float, metavar="X", default=5e-4, help="weight decay"
    )
    p.add_argument(
        "--labelled",
        type=_positive_int,
        metavar="N",
        default=None,
        help="train on a seeded, class-stratified subset of N labelled images (e.g. a Base)",
    )
    p.add_argument(
        "--transfer",
        type=_spec,
        default=None,
        metavar="SPEC",
        help="data spec of the images a Student is distilled on (needs --teacher); their "
        "labels are never read; an image folder without train/ and test/ "
        "sub-folders is used whole",
    )
    p.add_argument(
        "--temperature",
        type=_positive_float,
        metavar="T",
        default=4.0,
        help="KD softmax temperature",
    )
    p.add_argument(
        "--alpha",
        type=_unit_float,
        metavar="A",
        default=0.9,
        help="weight of the response-KD term (the cross-entropy gets 1 - A)",
    )
    p.add_argument(
        "--weights",
        default=None,
        metavar="NAME",
        help="start from torchvision's pretrained weights NAME (e.g. IMAGENET1K_V1), read from the "
        "local torch cache; fetched only with --download",
    )
    p.add_argument(
        "--limit", type=_positive_int, metavar="N", default=None, help="use only N training images"
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="allow downloading CIFAR-10 into ROOT, and --weights",
    )
    p.add_argument(
        "--out", type=_path, required=True, metavar="CKPT", help="checkpoint file to write"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing checkpoint file (a regular file only: never a folder, "
        "FIFO or device)",
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    p.add_argument(
        "--seed",
        type=_seed,
        default=0,
        metavar="N",
        help=f"seed of the subsets, initialisation and data order (0 to {MAX_SEED})",
    )
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide the progress bars"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "explain",
        formatter_class=_Formatter,
        help="Grad-CAM and UniCAM maps of a Student/Base pair; write a report",
        description="Draw Grad-CAM (Student, Base) and UniCAM (distilled, residual) maps per layer over "
        "the evaluated images in class-stratified batches (UniCAM is a batch statistic; each "
        "batch is its own context) and draw one image per class; on data with object masks "
        "(the controlled dataset), measure their localisation.",
    )
    _add_pair(p)
    p.add_argument(
        "--images",
        type=_positive_int,
        metavar="N",
        default=None,
        help="images drawn per layer, one per class in turn (default: one per class, at most 16)",
    )
    p.add_argument(
        "--reference",
        type=_nonneg_int,
        metavar="N",
        default=0,
        help="reference mode: score each image with a fixed set of N images of the train split "
        "(class-stratified, seeded) alone, so each map is per image and does not depend on its "
        "batch (0: batch mode, each batch is its own context)",
    )
    _add_common(p, out_help="report folder to write")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "quantify",
        formatter_class=_Formatter,
        help="FSS and RS per layer with intervals; write a report",
        description="FSS and RS of a Student/Base pair per layer and map kind over the data, with bootstrap "
        "intervals and permutation p-values (Table 1). Under torchrun the batches are shared "
        "between processes and rank 0 writes the same numbers as one process.",
    )
    _add_pair(p)
    p.add_argument(
        "--perturb",
        default="mask",
        choices=("mask", "road", "none"),
        help="how a map selects features: mask (image x map), road (impute the least relevant 50 %% of pixels), "
        "none (raw features, no maps)",
    )
    p.add_argument(
        "--maps",
        nargs="+",
        default=["none", "gradcam", "distilled", "residual"],
        choices=("none", "gradcam", "distilled", "residual"),
        metavar="KIND",
        help="map kinds to evaluate: none (raw features, map-free: the report's conclusion reads "
        "it), gradcam, distilled, residual (ignored with --perturb none)",
    )
    p.add_argument(
        "--n-bootstrap",
        type=_positive_int,
        metavar="N",
        default=1000,
        help="bootstrap resamples of the batches for the intervals",
    )
    _add_common(p, out_help="report folder to write")
    p.set_defaults(func=cmd_quantify)

    p = sub.add_parser(
        "compare",
        formatter_class=_Formatter,
        help="UniCAM next to Captum's attribution methods: localisation, ROAD, sanity checks; write a report",
        description="UniCAM distilled and residual next to Captum's LayerGradCam, GuidedGradCam, "
        "LayerGradientXActivation and IntegratedGradients (and Grad-CAM of each model) on "
        "the same test images: localisation (when masks exist), ROAD most- and "
        "least-relevant-first curves, and the sanity checks; one table and one figure per "
        "measure.",
    )
    _add_compare(p)
    p.set_defaults(func=cmd_compare)
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
    msg = " ".join(str(e).split()) or type(e).__name__
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
        if issubclass(category, (DeprecationWarning, PendingDeprecationWarning)):
            return previous(message, category, filename, lineno, file, line)
        _warn(args, " ".join(str(message).split()))

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
