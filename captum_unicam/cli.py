r"""The ``captum-unicam`` command: ``demo``, ``train``, ``explain``, ``quantify`` and ``compare``.

::

    captum-unicam demo     [--out DIR] [--quick] [--seed N] [--device cpu|cuda]
    captum-unicam train    --data SPEC --arch ARCH [--teacher CKPT --method M] --out CKPT
    captum-unicam explain  --student CKPT --base CKPT --data SPEC [--layers ...] --out DIR
    captum-unicam quantify --student CKPT --base CKPT --data SPEC [--perturb road|mask|none] --out DIR
    captum-unicam compare  --student CKPT --base CKPT --data SPEC --out DIR

The command line is a thin layer over the pipeline (:mod:`captum_unicam.pipeline`): it
checks what it can without torch first (flags, files, data spec, output folder), then loads
the checkpoints, takes the image size and normalisation they record, and calls
:func:`~captum_unicam.pipeline.training.train_checkpoint` (``train``),
:func:`~captum_unicam.pipeline.evaluation.compute_maps` (``explain``),
:func:`~captum_unicam.pipeline.evaluation.score_pair` (``quantify``) on
:func:`~captum_unicam.pipeline.stratified_loader` batches, and
:func:`~captum_unicam.report.write_report`. Expected failures (the
:class:`~captum_unicam.errors.CaptumUnicamError` family) print one line on stderr saying what
is wrong and what to do, in terms of flags, and exit with code 2 (no traceback, no report
left behind); ``CAPTUM_UNICAM_TRACEBACK=1`` in the environment shows the traceback instead.
Any other exception is a bug and keeps its traceback.

Output folders and files are checked before any work
(:func:`~captum_unicam.output.publish.check_output_dir`,
:func:`~captum_unicam.output.publish.check_output_file`): ``--out`` may not be, hold or lie
inside anything the run reads (checkpoints, data folders, a local ``--label-model``, the
demo's model cache), nor be the current folder or a parent, and ``--overwrite`` replaces
only a report of this tool. SIGTERM and SIGHUP end a run like Ctrl-C (exit 130, temporary
folders removed). Library warnings are shown as one line each.
"""

from __future__ import annotations

from captum_unicam import errors as _errors

import argparse
import contextlib
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["main", "build_parser", "CLIError"]

PROG = "captum-unicam"
LAYERS = ("L1", "L2", "L3", "L4")
MAP_COLUMNS = {
    "gradcam_student": "Grad-CAM student",
    "gradcam_base": "Grad-CAM base",
    "distilled": "UniCAM distilled",
    "residual": "UniCAM residual",
}


CLIError = _errors.InputError  # the library's one family of expected failures


# ---------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of the usage block.

    ``lazy_arguments(parser)``, if given, adds the arguments when the parser is first used
    or its help shown (so that a command whose module imports torch costs nothing to the
    others' --help and errors).
    """

    def __init__(self, *args, lazy_arguments=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._lazy_arguments = lazy_arguments

    def _add_lazy_arguments(self) -> None:
        add, self._lazy_arguments = self._lazy_arguments, None
        if add is not None:
            add(self)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._add_lazy_arguments()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._add_lazy_arguments()
        return super().format_help()

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


def _add_common(p: argparse.ArgumentParser, *, out_help: str, out_default: Optional[str] = None,
                seed_help: str = "seed of the bootstrap intervals and permutation tests") -> None:
    p.add_argument("--out", required=out_default is None, default=out_default, metavar="DIR",
                   help=out_help)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing non-empty output folder (otherwise it is refused and left untouched)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    p.add_argument("--seed", type=_nonneg_int, default=0, metavar="N", help=seed_help)
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide the progress bars")


def _add_pair(p: argparse.ArgumentParser) -> None:
    p.add_argument("--student", required=True, metavar="CKPT",
                   help="checkpoint of the Student (written by 'captum-unicam train', or a plain state dict with --arch)")
    p.add_argument("--base", required=True, metavar="CKPT",
                   help="checkpoint of the Base (the Student's architecture trained without KD, or the Teacher)")
    p.add_argument("--teacher", default=None, metavar="CKPT",
                   help="checkpoint of the Teacher, only to state its accuracy in the report")
    p.add_argument("--arch", default=None, metavar="ARCH",
                   help="architecture of plain state-dict checkpoints (all of them); see 'captum-unicam train --help' for names")
    p.add_argument("--student-arch", default=None, metavar="ARCH", help="architecture of the Student, if it differs from --arch")
    p.add_argument("--base-arch", default=None, metavar="ARCH", help="architecture of the Base, if it differs from --arch")
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="data spec: controlled, controlled:SEED, cifar10:ROOT or imagefolder:ROOT")
    p.add_argument("--split", default="test", choices=("train", "test", "val"), help="split of the data to use")
    p.add_argument("--download", action="store_true", help="allow downloading CIFAR-10 into ROOT (nothing is downloaded otherwise)")
    p.add_argument("--image-size", type=_positive_int, metavar="N", default=None,
                   help="image side in pixels (default: the one recorded in the checkpoints; when they record "
                        "none, 32 for controlled and CIFAR-10, 224 for image folders); overrides the checkpoints "
                        "with a warning")
    p.add_argument("--normalize", default=None, choices=("imagenet", "none"),
                   help="input normalisation (default: the one recorded in the checkpoints, else none); "
                        "overrides the checkpoints with a warning")
    p.add_argument("--order", default="stratified", choices=("stratified", "shuffle", "file"),
                   help="how images are batched: stratified (seeded; every batch holds as many classes as its "
                        "size allows), shuffle (seeded) or file (the data's order). A last batch under 5 images "
                        "is merged into the one before")
    p.add_argument("--layers", nargs="+", default=list(LAYERS), metavar="LAYER",
                   help="layers to explain: L1..L4 (last block of each ResNet stage) or dotted module paths present in both models")
    p.add_argument("--batch-size", type=_positive_int, metavar="N", default=32,
                   help="images per batch; UniCAM and the statistics are batch statistics and need at least 5")
    p.add_argument("--label-model", default=None, metavar="MODEL",
                   help="text encoder for the label embeddings (local folder or cached Hugging Face id); "
                        "default: the bundled all-MiniLM-L6-v2")
    p.add_argument("--one-hot", action="store_true", help="use one-hot label vectors instead of text embeddings of the class names")


def build_parser() -> argparse.ArgumentParser:
    r"""The argument parser of ``captum-unicam`` (one sub-parser per command)."""
    from captum_unicam import __version__

    parser = _Parser(prog=PROG, formatter_class=_Formatter,
                     description="UniCAM, FSS and RS: explain and measure what knowledge distillation changed.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("demo", formatter_class=_Formatter, help="train, explain and quantify a KD demo offline; write a report",
                       description="Train a Teacher, a Base and a KD Student on the built-in controlled dataset "
                                   "(no network, no files of yours; cached per seed), explain and quantify L1..L4 and "
                                   "write the report folder, including models/teacher.pt, base.pt, student.pt.")
    _add_common(p, out_help="report folder to write", out_default="unicam-report",
                seed_help="seed of the demo: data, training (models are cached per seed) and intervals")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (for tests): fewer epochs, images and bootstrap resamples")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="where the trained demo models are cached (default: the user's cache folder, e.g. ~/.cache/captum-unicam)")
    p.add_argument("--images", type=_positive_int, metavar="N", default=None,
                   help="images shown per layer in the map grids (default: one per class)")
    p.add_argument("--threads", type=_positive_int, metavar="N", default=1,
                   help="torch intra-op threads; the demo's models are tiny, so a second thread saves little "
                        "and costs much more on a busy machine")
    p.set_defaults(func=cmd_demo)

    from_models = ", ".join(_architectures())
    p = sub.add_parser("train", formatter_class=_Formatter, help="train a model (optionally by distillation) and save a checkpoint",
                       description=f"Train ARCH on the data; with --teacher, by knowledge distillation. Architectures: {from_models}.")
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="data spec: controlled, controlled:SEED, cifar10:ROOT or imagefolder:ROOT")
    p.add_argument("--arch", required=True, metavar="ARCH", help=f"architecture, one of {from_models}")
    p.add_argument("--teacher", default=None, metavar="CKPT", help="Teacher checkpoint: train by distillation from it")
    p.add_argument("--teacher-arch", default=None, metavar="ARCH", help="architecture of a plain state-dict Teacher checkpoint")
    p.add_argument("--method", default=None, choices=("response", "attention", "overhaul"),
                   help="KD method (needs --teacher; default with --teacher: response)")
    p.add_argument("--epochs", type=_positive_int, metavar="N", default=10, help="training epochs")
    p.add_argument("--image-size", type=_positive_int, metavar="N", default=None,
                   help="image side in pixels (default: the Teacher's with --teacher, else 32 for controlled "
                        "and CIFAR-10, 224 for image folders)")
    p.add_argument("--normalize", default=None, choices=("imagenet", "none"),
                   help="input normalisation: imagenet (ImageNet mean/std, for --weights) or none "
                        "(default: the Teacher's with --teacher, imagenet with --weights, else none)")
    p.add_argument("--augment", action="store_true", help="random horizontal flips and crops while training")
    p.add_argument("--batch-size", type=_positive_int, metavar="N", default=64, help="images per training batch")
    p.add_argument("--lr", type=_positive_float, metavar="X", default=0.05, help="peak learning rate (cosine decay)")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"), help="SGD with Nesterov momentum, or AdamW")
    p.add_argument("--weight-decay", type=_nonneg_float, metavar="X", default=5e-4, help="weight decay")
    p.add_argument("--labelled", type=_positive_int, metavar="N", default=None,
                   help="train on a seeded, class-stratified subset of N labelled images (e.g. a Base)")
    p.add_argument("--transfer", default=None, metavar="SPEC",
                   help="data spec of the images a Student is distilled on (needs --teacher); their labels are never read")
    p.add_argument("--temperature", type=_positive_float, metavar="T", default=4.0, help="KD softmax temperature")
    p.add_argument("--alpha", type=_unit_float, metavar="A", default=0.9,
                   help="weight of the response-KD term (the cross-entropy gets 1 - A)")
    p.add_argument("--weights", default=None, metavar="NAME",
                   help="start from torchvision's pretrained weights NAME (e.g. IMAGENET1K_V1), read from the "
                        "local torch cache; fetched only with --download")
    p.add_argument("--limit", type=_positive_int, metavar="N", default=None, help="use only N training images")
    p.add_argument("--download", action="store_true", help="allow downloading CIFAR-10 into ROOT, and --weights")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint file")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    p.add_argument("--seed", type=_nonneg_int, default=0, metavar="N", help="seed of the subsets, initialisation and data order")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("explain", formatter_class=_Formatter, help="Grad-CAM and UniCAM maps of a Student/Base pair; write a report",
                       description="Draw Grad-CAM (Student, Base) and UniCAM (distilled, residual) maps per layer over "
                                   "the evaluated images in class-stratified batches (UniCAM is a batch statistic; each "
                                   "batch is its own context) and draw one image per class; on data with object masks "
                                   "(the controlled dataset), measure their localisation.")
    _add_pair(p)
    p.add_argument("--images", type=_positive_int, metavar="N", default=None,
                   help="images drawn per layer, one per class in turn (default: one per class, at most 16)")
    p.add_argument("--limit", type=_positive_int, metavar="N", default=256,
                   help="evaluate a seeded subset of N images: maps, accuracies and localisation")
    p.add_argument("--reference", type=_nonneg_int, metavar="N", default=0,
                   help="reference mode: score each image with a fixed set of N images of the train split "
                        "(class-stratified, seeded) alone, so each map is per image and does not depend on its "
                        "batch (0: batch mode, each batch is its own context)")
    _add_common(p, out_help="report folder to write")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("quantify", formatter_class=_Formatter, help="FSS and RS per layer with intervals; write a report",
                       description="FSS and RS of a Student/Base pair per layer and map kind over the data, with bootstrap "
                                   "intervals and permutation p-values (Table 1). Under torchrun the batches are shared "
                                   "between processes and rank 0 writes the same numbers as one process.")
    _add_pair(p)
    p.add_argument("--perturb", default="mask", choices=("mask", "road", "none"),
                   help="how a map selects features: mask (image x map), road (impute the least relevant 50 %% of pixels), "
                        "none (raw features, no maps)")
    p.add_argument("--maps", nargs="+", default=["gradcam", "distilled", "residual"],
                   choices=("none", "gradcam", "distilled", "residual"), metavar="KIND",
                   help="map kinds to evaluate: none, gradcam, distilled, residual (ignored with --perturb none)")
    p.add_argument("--limit", type=_positive_int, metavar="N", default=None, help="evaluate a seeded subset of N images (default: all)")
    p.add_argument("--n-bootstrap", type=_positive_int, metavar="N", default=1000, help="bootstrap resamples of the batches for the intervals")
    _add_common(p, out_help="report folder to write")
    p.set_defaults(func=cmd_quantify)

    p = sub.add_parser("compare", formatter_class=_Formatter, lazy_arguments=_compare_arguments,
                       help="UniCAM next to Captum's attribution methods: localisation, ROAD, sanity checks; write a report",
                       description="UniCAM distilled and residual next to Captum's LayerGradCam, GuidedGradCam, "
                                   "LayerGradientXActivation and IntegratedGradients (and Grad-CAM of each model) on "
                                   "the same test images: localisation (when masks exist), ROAD most- and "
                                   "least-relevant-first curves, and the sanity checks; one table and one figure per "
                                   "measure.")
    p.set_defaults(func=cmd_compare)
    return parser


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    from captum_unicam.comparison import add_compare_arguments  # imports torch

    add_compare_arguments(p)


#: The names of captum_unicam.models.ARCHITECTURES, spelt out so that --help and early
#: errors do not import torch (tests check that the two agree).
_ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "small_resnet_s", "small_resnet_m",
                  "small_resnet_l", "small_resnet")


def _architectures() -> Tuple[str, ...]:
    return _ARCHITECTURES


# ---------------------------------------------------------------------------
# validation helpers (cheap, before any long work)
# ---------------------------------------------------------------------------


def _device(name: str):
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise CLIError(f"unknown device {name!r} ({e}); use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"device {name!r} asked for but CUDA is not available; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"device {name!r} is not supported; use cpu or cuda")
    return dev


def _check_data_spec(spec: str, flag: str = "--data") -> None:
    """The checks of a data spec that need no torch (the loader repeats them)."""
    scheme, sep, arg = spec.strip().partition(":")
    if scheme.lower() not in ("controlled", "cifar10", "imagefolder"):
        raise CLIError(f"{flag}: unknown data spec {spec!r}; use controlled, controlled:SEED, cifar10:ROOT "
                       "or imagefolder:ROOT")
    if scheme.lower() == "imagefolder":
        root = Path(os.path.expanduser(arg))
        if not arg or not root.is_dir():
            raise CLIError(f"{flag}: image folder {arg!r} does not exist or is not a folder; give the folder "
                           "that holds one sub-folder of images per class (or train/ and test/ sub-folders of those)")


def _check_arch(name: Optional[str], flag: str) -> Optional[str]:
    if name is None:
        return None
    archs = _architectures()
    if name not in archs:
        raise CLIError(f"unknown architecture {name!r} for {flag}; use one of {', '.join(archs)}")
    return name


def _load_model(path: str, role: str, *, arch: Optional[str], num_classes: int, device):
    from captum_unicam.models import CheckpointError, load_checkpoint

    if not Path(path).exists():
        raise CLIError(f"{role} checkpoint {path!r} does not exist; give the path of a .pt file "
                       "written by 'captum-unicam train' (or 'captum-unicam demo' in models/)")
    try:
        model, meta = load_checkpoint(path, arch=arch, num_classes=num_classes)
    except CheckpointError as e:
        raise CLIError(f"{role}: {e}") from None
    model = model.to(device).eval()
    return model, meta


def _resolve_layers(names: Sequence[str], student, base) -> Dict[str, Tuple[Any, Any]]:
    from captum_unicam.models import get_layer

    layers: Dict[str, Tuple[Any, Any]] = {}
    for name in names:
        key = name.upper() if name.upper() in LAYERS else name
        pair = []
        for role, model in (("Student", student), ("Base", base)):
            try:
                pair.append(get_layer(model, key))
            except ValueError as e:
                raise CLIError(f"--layers {name}: {role}: {e}") from None
        layers[key] = (pair[0], pair[1])
    if not layers:
        raise CLIError("--layers needs at least one layer, e.g. --layers L1 L2 L3 L4")
    return layers


def _check_feature_maps(layers: Dict[str, Tuple[Any, Any]], student, base, x) -> None:
    """Each layer of ``--layers`` must give feature maps (N, C, H, W): one forward pass of
    one image through each model says so before any computation (hooks removed after)."""
    import torch

    for role, model, which in (("Student", student, 0), ("Base", base, 1)):
        shapes: Dict[str, Any] = {}
        handles = []
        for name, pair in layers.items():
            def hook(_module, _inputs, output, name=name):
                shapes.setdefault(name, tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__)
            handles.append(pair[which].register_forward_hook(hook))
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
        for name in layers:
            shape = shapes.get(name)
            if shape is None:
                raise CLIError(f"--layers {name}: the {role}'s layer {name!r} is not used in its forward pass; "
                               "use L1..L4 or the dotted path of a block or convolution, e.g. layer4.0")
            if not (isinstance(shape, tuple) and len(shape) == 4):
                raise CLIError(f"--layers {name}: the {role}'s layer {name!r} gives outputs of shape {shape}, not "
                               "feature maps (N, C, H, W) that Grad-CAM and UniCAM can explain; use L1..L4 or the "
                               "dotted path of a block or convolution, e.g. layer4.0")


def _label_embeddings(class_names: Sequence[str], args) -> Tuple[Any, str]:
    if getattr(args, "one_hot", False):
        return None, "one-hot"
    from captum_unicam.embeddings import embed_labels

    model = getattr(args, "label_model", None)
    table = embed_labels(list(class_names), model=model) if model else embed_labels(list(class_names))
    return table.detach().float().cpu(), f"text embeddings of the class names ({model or 'all-MiniLM-L6-v2'})"


def _dist_info() -> Tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _maybe_init_distributed(device) -> bool:
    """Joins the torchrun process group (gloo on CPU, nccl on CUDA); True if we started it."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


# ---------------------------------------------------------------------------
# maps, accuracies
# ---------------------------------------------------------------------------


def _localisation(maps, masks, *, seed: int, n_bootstrap: int) -> Optional[Dict[str, Any]]:
    """Localisation of every map kind per layer, only where the data have object masks."""
    if masks is None:
        return None
    from captum_unicam.metrics.localisation import localisation
    from captum_unicam.pipeline.evaluation import MAP_COLUMNS as columns

    return {layer: localisation({columns[k]: m for k, m in kinds.items()}, masks, n_bootstrap=n_bootstrap, seed=seed)
            for layer, kinds in maps.items()}


def _model_info(meta: Dict[str, Any], accuracy: Optional[float], path: Optional[str]) -> Dict[str, Any]:
    return {"arch": meta.get("arch"), "accuracy": accuracy, "kd_method": meta.get("kd_method"),
            "checkpoint": path, "num_classes": meta.get("num_classes")}


def _command_line(argv: Optional[Sequence[str]]) -> List[str]:
    return [PROG] + list(sys.argv[1:] if argv is None else argv)


# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------


def cmd_demo(args, argv) -> int:
    from captum_unicam.pipeline.demo import default_cache_dir
    from captum_unicam.output.publish import check_output_dir

    cache = args.cache_dir if args.cache_dir is not None else default_cache_dir(args.seed, args.quick)
    out = check_output_dir(args.out, overwrite=args.overwrite, reads=[cache])
    device = _device(args.device)

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _demo(args, argv, out, device)
    finally:
        torch.set_num_threads(threads)


def _demo(args, argv, out, device) -> int:
    from captum_unicam.data import ControlledShapes
    from captum_unicam.pipeline.demo import train_demo_models
    from captum_unicam.pipeline.batches import stratified_loader
    from captum_unicam.pipeline.evaluation import compute_maps, map_grids, score_pair

    quick = args.quick
    n_show = args.images
    eval_batches, eval_bs = (3, 32) if quick else (8, 64)
    n_boot = 200 if quick else 1000
    timings: Dict[str, float] = {}

    t0 = time.perf_counter()
    demo = train_demo_models(seed=args.seed, quick=quick, cache_dir=args.cache_dir, device=str(device),
                             progress=args.progress)
    timings["train_or_load_models_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    class_names = list(demo.class_names)
    test = ControlledShapes(eval_batches * eval_bs, seed=args.seed, split="test",
                            num_classes=len(class_names), cue_strength=0.0)
    loader = stratified_loader(test, eval_bs, seed=args.seed)
    student, base = demo.student.to(device).eval(), demo.base.to(device).eval()
    layers = _resolve_layers(list(LAYERS), student, base)
    emb, emb_desc = _label_embeddings(class_names, args)

    evaluation = score_pair(student, base, loader, layers, label_embeddings=emb,
                            map_kinds=("none", "gradcam", "distilled", "residual"), perturbation="mask",
                            n_bootstrap=n_boot, seed=args.seed, progress=args.progress, device=device)
    timings["quantify_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    batches = list(loader)[:1 if quick else 2]
    maps = compute_maps(student, base, layers, batches, label_embeddings=emb, device=device,
                        progress=args.progress)
    grids, _, masks = map_grids(maps, batches, class_names, n_show)
    loc = _localisation(maps, masks, seed=args.seed, n_bootstrap=n_boot)
    timings["explain_s"] = time.perf_counter() - t2
    t_cued = time.perf_counter()
    from captum_unicam.pipeline.demo import demo_cued_evaluation

    cued_res = demo_cued_evaluation(student, base, layers, n_images=eval_batches * eval_bs, batch_size=eval_bs,
                                    seed=args.seed, num_classes=len(class_names), label_embeddings=emb,
                                    n_bootstrap=n_boot, device=device, progress=args.progress)
    timings["cued_s"] = time.perf_counter() - t_cued

    accs = dict(demo.accuracies)
    cued = dict(getattr(demo, "cued_accuracies", {}) or {})
    paths = dict(demo.paths)
    recipe = _recipe(demo)
    archs = recipe.get("arch", {}) if isinstance(recipe.get("arch"), dict) else {}
    models = {}
    for role in ("teacher", "base", "student"):
        models[role.capitalize()] = {
            "arch": archs.get(role), "accuracy": accs.get(role), "cued_accuracy": cued.get(role),
            "kd_method": recipe.get("method", "response") if role == "student" else None,
            "checkpoint": f"models/{role}.pt", "trained_on": _describe_split(demo, role)}
    data = (f"controlled dataset, seed {args.seed}: {len(test)} held-out cue-free test images "
            f"({eval_batches} class-stratified batches of {eval_bs}) for FSS/RS; maps and localisation on the first "
            f"{sum(b[0].shape[0] for b in batches)} of them; labels: {emb_desc}")
    test_desc = (getattr(demo, "datasets", None) or {}).get("test") or {}
    acc_set = (f"the demo's cue-free test set ({test_desc.get('size', '?')} images of the test stream, "
               f"seed {args.seed})")
    notes = _demo_notes(demo, accs)
    t3 = time.perf_counter()
    _write_report(out, args.overwrite, title="captum-unicam demo: what did distillation change?",
                 command=_command_line(argv), data=data, models=models, evaluation=evaluation,
                 grids=grids, localisation=loc, accuracy_set=acc_set, cued=cued_res,
                 model_files={f"{k}.pt": v for k, v in paths.items()},
                 notes=notes[:1], warnings=notes[1:],
                 extra_metrics={"recipe": recipe, "demo_datasets": getattr(demo, "datasets", None),
                                "models_from_cache": getattr(demo, "from_cache", None),
                                "label_embeddings": emb_desc, "timings": timings, "quick": quick,
                                "seed": args.seed},
                 progress=args.progress)
    timings["report_s"] = time.perf_counter() - t3
    total = time.perf_counter() - t0
    print(f"report written to {out}/index.html ({total:.0f} s: models {timings['train_or_load_models_s']:.0f} s, "
          f"quantify {timings['quantify_s']:.0f} s, maps {timings['explain_s']:.0f} s, "
          f"cued {timings['cued_s']:.0f} s, report {timings['report_s']:.0f} s)")
    return 0


def _write_report(out, overwrite, progress=True, **fields):
    from captum_unicam.output.report import Report, write_report

    return write_report(out, Report(**fields), overwrite=overwrite, progress=progress)


def _recipe(demo) -> Dict[str, Any]:
    r = getattr(demo, "recipe", None)
    return dict(r) if isinstance(r, dict) else {}


def _describe_split(demo, role: str) -> Optional[str]:
    d = (getattr(demo, "datasets", None) or {}).get(role)
    if not isinstance(d, dict):
        return None
    cue = d.get("cue_strength")
    return (f"{d.get('size')} controlled images ({d.get('split')} stream), "
            + ("labelled" if d.get("labelled", True) else "unlabelled, distilled from the Teacher")
            + (f", background tint agrees with the class {100 * cue:.0f} % of the time" if cue else ", no tint cue"))


def _demo_notes(demo, accs) -> List[str]:
    s, b = accs.get("student"), accs.get("base")
    method = _recipe(demo).get("method") or "response"
    notes = ["Scenario: the Teacher learnt the shapes on cue-free images; the Base learnt from a few "
             "hundred labelled images whose background tint mostly agrees with the class (a shortcut); "
             f"the Student, of the Base's architecture, learnt from the Teacher by distillation ({method} KD) "
             "on a larger unlabelled set with the same cue. Accuracies are on cue-free test images, where "
             "the tint shortcut does not help."]
    if isinstance(s, (int, float)) and isinstance(b, (int, float)) and s <= b:
        notes.append(f"Distillation did not help in this run: Student {100 * s:.1f} % vs Base {100 * b:.1f} % "
                     "test accuracy. The maps below explain the models as they are.")
    return notes


def _local_label_model(args) -> List[str]:
    """``--label-model`` when it names a local folder (a hub id reads nothing of the user's)."""
    model = getattr(args, "label_model", None)
    return [model] if model and Path(os.path.expanduser(model)).exists() else []


def _check_out_dir(args, checkpoints: Sequence[Optional[str]]) -> Path:
    """The report folder of explain / quantify / compare, checked before any work: it may
    not be, hold or lie inside the checkpoints and data folders the run reads, and
    ``--overwrite`` replaces only a report of this tool."""
    from captum_unicam.data.loaders import spec_paths
    from captum_unicam.output.publish import check_output_dir

    reads = [p for p in checkpoints if p] + spec_paths(args.data) + _local_label_model(args)
    return check_output_dir(args.out, overwrite=args.overwrite, reads=reads)


def _pair_setup(args):
    """Validates and loads what explain / quantify share; returns a namespace of objects.

    Cheap checks (flags, files, output folder) come before torch is imported; the
    checkpoints' recorded preprocessing decides the data's image size and normalisation.
    """
    out = _check_out_dir(args, [args.student, args.base, args.teacher])
    for flag in ("arch", "student_arch", "base_arch"):
        _check_arch(getattr(args, flag), "--" + flag.replace("_", "-"))
    for role, path in (("Student", args.student), ("Base", args.base), ("Teacher", args.teacher)):
        if path is not None and not Path(path).is_file():
            what = "is a folder" if Path(path).is_dir() else "does not exist"
            raise CLIError(f"{role} checkpoint {path!r} {what}; give the path of a .pt file written by "
                           "'captum-unicam train' (or models/*.pt of a demo report)")
    if args.batch_size < 5:
        raise CLIError(f"--batch-size {args.batch_size} is too small: UniCAM, FSS and RS are batch statistics "
                       "and need at least 5 images per batch")
    _check_data_spec(args.data)
    device = _device(args.device)

    from captum_unicam.pipeline.data import agreed_preprocessing, load_data

    loaded = {}
    for role, path, arch in (("Student", args.student, args.student_arch or args.arch),
                             ("Base", args.base, args.base_arch or args.arch),
                             ("Teacher", args.teacher, None)):
        if path is not None:
            loaded[role] = _load_model(path, role, arch=arch, num_classes=None, device=device)
    prep, notes = agreed_preprocessing({r: m for r, (_, m) in loaded.items()}, image_size=args.image_size,
                                       normalize=args.normalize)
    for line in notes:
        _warn(args, line)
    ds = load_data(args.data, args.split, prep, download=args.download, limit=getattr(args, "limit", None))
    if len(ds) == 0:
        raise CLIError(f"data {args.data!r} ({args.split} split) holds no images; point --data at a folder with images")
    classes = list(getattr(ds, "classes", []) or [])
    if not classes:
        raise CLIError(f"data {args.data!r} has no class names; use an ImageFolder tree of class folders")
    from captum_unicam.models import check_class_names

    for role, (_, meta) in loaded.items():
        check_class_names(meta, classes, role)  # an error if the counts differ, a warning if the names do
    if len(ds) < 5:
        raise CLIError(f"data {args.data!r} has {len(ds)} images in its {args.split} split; UniCAM, FSS and RS "
                       "need at least 5")
    student, s_meta = loaded["Student"]
    base, b_meta = loaded["Base"]
    teacher, t_meta = loaded.get("Teacher", (None, None))
    layers = _resolve_layers(args.layers, student, base)
    _check_feature_maps(layers, student, base, ds[0][0].unsqueeze(0).to(device))
    emb, emb_desc = _label_embeddings(classes, args)

    from captum_unicam.pipeline.batches import stratified_loader

    loader = stratified_loader(ds, min(args.batch_size, len(ds)), seed=args.seed, order=args.order)
    what = (f"{args.data}, {args.split} split" + (f", {len(ds)} images (a seeded subset, --limit)"
                                                    if getattr(args, "limit", None) and args.limit <= len(ds)
                                                    else f", all {len(ds)} images")
            + f", {prep.image_size or int(ds[0][0].shape[-1])} px, normalize {prep.normalize}")
    return argparse.Namespace(out=out, device=device, ds=ds, classes=classes, student=student, s_meta=s_meta,
                              base=base, b_meta=b_meta, teacher=teacher, t_meta=t_meta, layers=layers,
                              emb=emb, emb_desc=emb_desc, prep=prep, loader=loader, evaluated_set=what,
                              preprocessing_notes=notes)


def _pair_models(args, st) -> Dict[str, Dict[str, Any]]:
    """Each model's accuracy, once, on the evaluated set (the batches of st.loader)."""
    from captum_unicam.pipeline.evaluation import accuracy

    models: Dict[str, Dict[str, Any]] = {}
    if st.teacher is not None:
        models["Teacher"] = _model_info(st.t_meta, accuracy(st.teacher, st.loader, st.device), args.teacher)
    else:
        models["Teacher"] = {"arch": None, "accuracy": None, "checkpoint": "not given (--teacher)"}
    models["Base"] = _model_info(st.b_meta, accuracy(st.base, st.loader, st.device), args.base)
    models["Student"] = _model_info(st.s_meta, accuracy(st.student, st.loader, st.device), args.student)
    return models


def _classes_per_batch(st) -> List[int]:
    from captum_unicam.pipeline.batches import labels_of

    labels = labels_of(st.ds)
    return [len({labels[i] for i in b}) for b in st.loader.batch_sampler]


def _reference_set(args, st):
    """``(reference, description)`` for explain: None in batch mode, else ``--reference N``
    images of the train split (the checkpoints' preprocessing, class-stratified, seeded)."""
    if not args.reference:
        return None, "UniCAM in batch mode (each batch is its own context)"
    if args.reference < 4:
        raise CLIError(f"--reference {args.reference} is too small: a reference set needs at least 4 images "
                       "(each image is scored with them, n = 1 + N >= 5)")
    import torch

    from captum_unicam.pipeline.batches import labels_of, stratified_order
    from captum_unicam.pipeline.data import load_data

    ref_ds = load_data(args.data, "train", st.prep, download=args.download)
    if len(ref_ds) < args.reference:
        raise CLIError(f"--reference {args.reference}: the train split of {args.data!r} has only {len(ref_ds)} "
                       "images; pass a smaller --reference")
    chosen = stratified_order(labels_of(ref_ds), seed=args.seed)[: args.reference]
    items = [ref_ds[i] for i in chosen]
    x_ref = torch.stack([it[0] for it in items]).to(st.device)
    y_ref = torch.tensor([int(it[1]) for it in items], device=st.device)
    classes = len(set(y_ref.tolist()))
    return (x_ref, y_ref), (f"UniCAM in reference mode: each image scored with {args.reference} train images "
                            f"({classes} classes) alone")


def cmd_explain(args, argv) -> int:
    st = _pair_setup(args)

    from captum_unicam.pipeline.evaluation import compute_maps, map_grids

    batches = list(st.loader)
    models = _pair_models(args, st)
    reference, reference_desc = _reference_set(args, st)
    maps = compute_maps(st.student, st.base, st.layers, batches, label_embeddings=st.emb,
                        device=st.device, progress=args.progress, reference=reference)
    grids, labels, masks = map_grids(maps, batches, st.classes, args.images or min(len(st.classes), 16),
                                     mean=getattr(st.ds, "mean", None), std=getattr(st.ds, "std", None))
    loc = _localisation(maps, masks, seed=args.seed, n_bootstrap=1000)
    sizes = sorted({int(b[0].shape[0]) for b in batches})
    data = (f"{st.evaluated_set}; {len(batches)} {args.order} batches of {'/'.join(map(str, sizes))} images; "
            f"labels: {st.emb_desc}; {reference_desc}")
    _write_report(st.out, args.overwrite, title="captum-unicam explain", command=_command_line(argv),
                 data=data, models=models, grids=grids, localisation=loc, accuracy_set=f"the evaluated set ({st.evaluated_set})",
                 warnings=[_flags(n) for n in st.preprocessing_notes],
                 extra_metrics={"label_embeddings": st.emb_desc, "layers": list(st.layers),
                                "preprocessing": st.prep.to_dict(), "order": args.order,
                                "unicam_mode": reference_desc,
                                "batch_sizes": [int(b[0].shape[0]) for b in batches],
                                "classes_per_batch": [len(set(b[1].tolist())) for b in batches]},
                 progress=args.progress)
    print(f"report written to {st.out}/index.html")
    return 0


def cmd_quantify(args, argv) -> int:
    st = _pair_setup(args)

    from captum_unicam.pipeline.evaluation import score_pair

    started = _maybe_init_distributed(st.device)
    try:
        rank, world = _dist_info()
        evaluation = score_pair(st.student, st.base, st.loader, st.layers, label_embeddings=st.emb,
                                map_kinds=args.maps, perturbation=args.perturb, n_bootstrap=args.n_bootstrap,
                                seed=args.seed, progress=args.progress and rank == 0, device=st.device)
        if rank == 0:
            models = _pair_models(args, st)
            sizes = sorted({len(b) for b in st.loader.batch_sampler})
            data = (f"{st.evaluated_set}; {len(st.loader)} {args.order} batches of {'/'.join(map(str, sizes))} "
                    f"images; perturbation: {args.perturb}; labels: {st.emb_desc}"
                    + (f"; {world} processes" if world > 1 else ""))
            _write_report(st.out, args.overwrite, title="captum-unicam quantify",
                         command=_command_line(argv), data=data, models=models, evaluation=evaluation,
                         accuracy_set=f"the evaluated set ({st.evaluated_set})", warnings=[_flags(n) for n in st.preprocessing_notes],
                         extra_metrics={"label_embeddings": st.emb_desc, "perturb": args.perturb,
                                        "map_kinds": list(evaluation.map_kinds), "world_size": world,
                                        "preprocessing": st.prep.to_dict(), "order": args.order,
                                        "batch_sizes": [len(b) for b in st.loader.batch_sampler],
                                        "classes_per_batch": _classes_per_batch(st)},
                         progress=args.progress)
            print(f"report written to {st.out}/index.html")
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def cmd_train(args, argv) -> int:
    _check_arch(args.arch, "--arch")
    _check_arch(args.teacher_arch, "--teacher-arch")
    if args.method is not None and args.teacher is None:
        raise CLIError("--method needs --teacher CKPT (the model to distil from)")
    if args.transfer is not None and args.teacher is None:
        raise CLIError("--transfer needs --teacher CKPT: a transfer set has no labels, only distillation can learn from it")
    if args.transfer is not None and args.labelled is not None:
        raise CLIError("--labelled and --transfer exclude each other: train the Base with --labelled N and the "
                       "Student with --teacher CKPT --transfer SPEC")
    if args.weights is not None and args.arch.startswith("small_resnet"):
        raise CLIError(f"--weights: pretrained weights exist only for torchvision's ResNets, not {args.arch}")
    from captum_unicam.data.loaders import spec_paths
    from captum_unicam.output.publish import check_output_file

    reads = [p for p in (args.teacher,) if p] + spec_paths(args.data) + (spec_paths(args.transfer) if args.transfer else [])
    out = check_output_file(args.out, overwrite=args.overwrite, reads=reads)
    if args.teacher is not None and not Path(args.teacher).is_file():
        raise CLIError(f"Teacher checkpoint {args.teacher!r} does not exist; train one first with "
                       "'captum-unicam train' (without --teacher)")
    _check_data_spec(args.data)
    if args.transfer is not None:
        _check_data_spec(args.transfer, "--transfer")
    device = _device(args.device)

    from captum_unicam.pipeline.training import Recipe, train_checkpoint

    teacher = args.teacher
    recipe = Recipe(arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    optimizer=args.optimizer, weight_decay=args.weight_decay, augment=args.augment,
                    image_size=args.image_size, normalize=args.normalize, labelled=args.labelled,
                    limit=args.limit, transfer=args.transfer,
                    method=args.method or ("response" if teacher else None), temperature=args.temperature,
                    alpha=args.alpha, weights=args.weights, seed=args.seed)
    result = train_checkpoint(args.data, recipe, str(out), teacher=teacher, device=device, progress=args.progress,
                              download=args.download, teacher_arch=args.teacher_arch,
                              warn=lambda line: _warn(args, line))
    acc = _result_accuracy(result)
    print(f"checkpoint written to {out} ({result['recipe']['image_size']} px, normalize "
          f"{result['recipe']['normalize']}" + (f", test accuracy {100 * acc:.1f} %" if acc is not None else "") + ")")
    return 0


def cmd_compare(args, argv) -> int:
    r"""``captum-unicam compare``: :func:`captum_unicam.comparison.run_compare`, after the
    output checks of explain / quantify."""
    from captum_unicam.comparison import run_compare

    _check_out_dir(args, [args.student, args.base, args.random_label_student])
    return run_compare(args)


def _warn(args, line: str) -> None:
    print(f"{PROG} {args.command}: warning: {_flags(line)}", file=sys.stderr)


def _flags(text: str) -> str:
    """A library message in the command line's words (arguments become flags)."""
    for arg, flag in (("image_size=", "--image-size"), ("normalize=", "--normalize"), ("teacher=...", "--teacher CKPT"),
                      ("labelled=N", "--labelled N"), ("transfer=SPEC", "--transfer SPEC"), ("labelled=", "--labelled"),
                      ("transfer=", "--transfer"), ("download=True", "--download"), ("method=", "--method")):
        text = text.replace(arg, flag)
    return text


def _result_accuracy(result) -> Optional[float]:
    for key in ("test_accuracy", "accuracy"):
        v = result.get(key) if isinstance(result, dict) else getattr(result, key, None)
        if isinstance(v, (int, float)):
            return float(v)
    return None


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------


def _known_errors() -> Tuple[type, ...]:
    """Exactly the library's family of expected failures; anything else is a bug and keeps
    its traceback."""
    return (_errors.CaptumUnicamError,)


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

    Exit codes: 0 success, 2 bad input (one line on stderr), 130 interrupted (Ctrl-C,
    SIGTERM or SIGHUP; temporary folders are removed, any previous report is left in place).
    Library warnings are shown as one line each.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    os.environ.setdefault("MPLBACKEND", "Agg")
    from captum_unicam.output.publish import terminate_as_interrupt

    try:
        with terminate_as_interrupt(), _one_line_warnings(args):
            return int(args.func(args, argv) or 0)
    except KeyboardInterrupt as e:
        print(f"{PROG} {args.command}: interrupted" + (f" ({e})" if str(e) else ""), file=sys.stderr)
        return 130
    except _known_errors() as e:
        if os.environ.get("CAPTUM_UNICAM_TRACEBACK"):
            raise
        print(f"{PROG} {args.command}: error: {_flags(_one_line(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
