r"""The command line's vocabulary: what each ``captum-unicam`` option and command means.

:data:`HELP` maps an option's dest (the field name of its request in
:mod:`captum_unicam.pipeline.requests`, e.g. ``"epochs"`` for ``--epochs``) to the text
``--help`` shows for it. An option whose meaning differs between commands has a key of its
own per command, ``"COMMAND.FIELD"`` (``"train.out"`` is the checkpoint file ``train``
writes, ``"out"`` the report folder of the other commands); the plain key is the text the
report commands (``explain``, ``quantify`` and, where they share the option, ``demo`` and
``compare``) use. :data:`COMMANDS` holds each command's summary and description, and the
``type=`` functions (:func:`positive_int`, :func:`data_spec`, :func:`class_map`, ...) the
values an option takes. The parser (:mod:`captum_unicam.cli`) picks the types, defaults,
choices and metavars; ``--help`` appends each default. No torch import: ``--help`` stays
fast.
"""

from __future__ import annotations

import argparse
import os
from typing import Dict, Tuple

from captum_unicam.pipeline.requests import ARCHITECTURE_NAMES, AUGMENTATIONS, MAX_SEED

__all__ = [
    "HELP",
    "COMMANDS",
    "augmentations",
    "class_map",
    "data_spec",
    "finite_float",
    "nonneg_float",
    "nonneg_int",
    "positive_float",
    "positive_int",
    "seed_value",
    "unit_float",
    "user_path",
]

_ARCHITECTURES = ", ".join(ARCHITECTURE_NAMES)

#: option dest (or ``"COMMAND.dest"``) -> its help text.
HELP: Dict[str, str] = {
    "out": "report folder to write",
    "overwrite": (
        "replace an existing non-empty output folder (otherwise it is refused and left untouched)"
    ),
    "device": "torch device: cpu, cuda or cuda:N",
    "demo.seed": (
        "seed of the demo: data, training (models are cached per seed) and intervals"
        f" (0 to {MAX_SEED})"
    ),
    "progress": "hide the progress bars",
    "quick": "a smaller, faster run (for tests): fewer epochs, images and bootstrap resamples",
    "cache_dir": (
        "where the trained demo models are cached (default: the user's cache folder, e.g. "
        "~/.cache/captum-unicam)"
    ),
    "demo.images": "images shown per layer in the map grids (default: one per class)",
    "demo.threads": (
        "torch intra-op threads; the demo's models are tiny, so a second thread saves little "
        "and costs much more on a busy machine"
    ),
    "data": "data spec: controlled, controlled:SEED, cifar10:ROOT or imagefolder:ROOT",
    "train.arch": f"architecture, one of {_ARCHITECTURES}",
    "train.teacher": "Teacher checkpoint: train by distillation from it",
    "train.teacher_arch": "architecture of a plain state-dict Teacher checkpoint",
    "method": "KD method (needs --teacher; default with --teacher: response)",
    "epochs": (
        "training epochs; the optimisation steps they make are printed before training, with a "
        "warning under 100"
    ),
    "train.image_size": (
        "image side in pixels (default: the Teacher's with --teacher, else 32 for controlled "
        "and CIFAR-10, 224 for image folders)"
    ),
    "train.normalize": (
        "input normalisation: imagenet (ImageNet mean/std, for --weights) or none (default: "
        "the Teacher's with --teacher, imagenet with --weights, else none)"
    ),
    "augment": (
        "training augmentation, recorded in the checkpoint: none, or a comma-separated list of "
        "flip (random horizontal flip; wrong for data whose mirror image is another class, "
        "e.g. digits or text) and crop (random crop after zero padding by 1/8 of the side) "
        "(default: none)"
    ),
    "force": (
        "run even when the estimated memory of --image-size (batch size x 3 x size^2 x 4 bytes "
        "x 100) exceeds the memory available (otherwise refused before any data are loaded)"
    ),
    "train.batch_size": "images per training batch",
    "lr": "peak learning rate (cosine decay)",
    "optimizer": "SGD with Nesterov momentum, or AdamW",
    "weight_decay": "weight decay",
    "labelled": "train on a seeded, class-stratified subset of N labelled images (e.g. a Base)",
    "transfer": (
        "data spec of the images a Student is distilled on (needs --teacher); their labels are "
        "never read; an image folder without train/ and test/ sub-folders is used whole"
    ),
    "temperature": "KD softmax temperature",
    "alpha": "weight of the response-KD term (the cross-entropy gets 1 - A)",
    "weights": (
        "start from torchvision's pretrained weights NAME (e.g. IMAGENET1K_V1), read from the "
        "local torch cache; fetched only with --download"
    ),
    "train.limit": "use only N training images",
    "train.download": "allow downloading CIFAR-10 into ROOT, and --weights",
    "train.out": "checkpoint file to write",
    "train.overwrite": (
        "replace an existing checkpoint file (a regular file only: never a folder, FIFO or device)"
    ),
    "train.seed": f"seed of the subsets, initialisation and data order (0 to {MAX_SEED})",
    "student": (
        "checkpoint of the Student (written by 'captum-unicam train', or a plain state dict "
        "with --arch or --model)"
    ),
    "base": (
        "checkpoint of the Base (the Student's architecture trained without KD, or the Teacher)"
    ),
    "teacher": "checkpoint of the Teacher, only to state its accuracy in the report",
    "arch": (
        "architecture of plain state-dict checkpoints of the Student and the Base; see "
        "'captum-unicam train --help' for names"
    ),
    "student_arch": "architecture of the Student, if it differs from --arch",
    "base_arch": "architecture of the Base, if it differs from --arch",
    "model": (
        "your own architecture for the Student and the Base: the function of your code "
        "(importable, e.g. on PYTHONPATH) that builds the model, called with num_classes= when "
        "it takes it; the weights are read from the checkpoints with "
        "torch.load(weights_only=True). Name its layers by dotted path (--layers features.3)"
    ),
    "student_model": "the Student's, if it differs from --model",
    "base_model": "the Base's, if it differs from --model",
    "teacher_arch": (
        "architecture of a plain state-dict Teacher (--arch and --model do not apply to it)"
    ),
    "teacher_model": "your own architecture for the Teacher, as --model",
    "split": "split of the data to use",
    "image_size": (
        "image side in pixels the models were trained at (default: the one recorded in the "
        "checkpoints; required when none records it: nothing is guessed); overrides the "
        "checkpoints with a warning"
    ),
    "normalize": (
        "input normalisation the models were trained with (default: the one recorded in the "
        "checkpoints; required when none records it); overrides the checkpoints with a warning"
    ),
    "resize": (
        "how images of another size than --image-size are brought to it: shorter-side-crop "
        "(shorter side to N, then the centre square), exact (stretched), pad (longer side to "
        "N, black borders) or none (refused); images already N x N are never resized or "
        "cropped (default: the rule recorded in the checkpoints, else shorter-side-crop)"
    ),
    "class_map": (
        "rename the data's classes (folder names) to the class names the checkpoints record, "
        "e.g. 0=zero,1=one; classes are matched by name, never by position"
    ),
    "follow_links": (
        "follow symbolic links that lead out of the image folder (skipped with a warning otherwise)"
    ),
    "download": "allow downloading CIFAR-10 into ROOT (nothing is downloaded otherwise)",
    "order": (
        "how images are batched: stratified (seeded; every batch holds as many classes as its "
        "size allows), shuffle (seeded) or file (the data's order). A last batch under 5 "
        "images is merged into the one before"
    ),
    "layers": (
        "layers to explain: L1..L4 (last block of each ResNet stage) or dotted module paths "
        "present in both models (e.g. features.3 or encoder.layer.1)"
    ),
    "batch_size": (
        "images per batch; UniCAM and the statistics are batch statistics and need at least 5"
    ),
    "label_model": (
        "text encoder for the label embeddings (local folder or cached Hugging Face id); "
        "default: the bundled all-MiniLM-L6-v2"
    ),
    "one_hot": "use one-hot label vectors instead of text embeddings of the class names",
    "limit": (
        "evaluate a seeded subset of N images of the split (the same N gives the same images "
        "in explain and quantify): maps, accuracies and scores (default: all images)"
    ),
    "explain.images": (
        "images drawn per layer, one per class in turn (default: one per class, at most 16)"
    ),
    "reference": (
        "reference mode: score each image with a fixed set of N images of the train split "
        "(class-stratified, seeded) alone, so each map is per image and does not depend on its "
        "batch (0: batch mode, each batch is its own context)"
    ),
    "seed": f"seed of the bootstrap intervals and permutation tests (0 to {MAX_SEED})",
    "perturb": (
        "how a map selects features: mask (image x map), road (impute the least relevant 50 %% "
        "of pixels), none (raw features, no maps)"
    ),
    "maps": (
        "map kinds to evaluate: none (raw features, map-free: the report's conclusion reads "
        "it), gradcam, distilled, residual (ignored with --perturb none)"
    ),
    "n_bootstrap": "bootstrap resamples of the batches for the intervals",
    "compare.student": (
        "Student checkpoint (captum-unicam train / demo, or a plain state dict with --arch or "
        "--model)"
    ),
    "compare.base": "Base checkpoint",
    "compare.data": "data spec: controlled[:SEED], cifar10:ROOT, imagefolder:ROOT",
    "compare.overwrite": "replace an existing report folder",
    "layer": (
        "layer explained: L1..L4 (ResNet stages) or a dotted module path present in both models"
    ),
    "compare.images": (
        "test images explained, drawn class-stratified (seeded by --seed: the classes take "
        "turns, so every class is represented even when the files are stored class by class)"
    ),
    "compare.batch_size": "images per attribution call (UniCAM's context)",
    "reference_images": (
        "UniCAM runs in reference mode with N class-stratified train images (0: draw the "
        "reference set from the test images instead)"
    ),
    "percentiles": (
        "percentages of pixels removed (ROAD imputation) along each deletion curve, in [0, 100)"
    ),
    "sanity_images": "images of the sanity checks",
    "no_sanity": "skip the sanity checks",
    "random_label_student": "checkpoint of a Student-architecture model trained on random labels",
    "ig_steps": "Integrated Gradients steps",
    "compare.n_bootstrap": "bootstrap resamples",
    "compare.seed": "seed of ROAD's noise, randomisation, bootstrap",
    "compare.device": "cpu or cuda",
    "compare.threads": (
        "torch CPU threads; small images are explained fastest on one (measured on a shared "
        "2-core machine: 91 s with 1, 308 s with 2); raise it for large models on an idle "
        "machine"
    ),
}

#: command -> (its one-line summary in ``captum-unicam --help``, its ``--help`` description).
COMMANDS: Dict[str, Tuple[str, str]] = {
    "demo": (
        "train, explain and quantify a KD demo offline; write a report",
        "Train a Teacher, a Base and a KD Student on the built-in controlled dataset "
        "(no network, no files of yours; cached per seed), explain and quantify L1..L4 and "
        "write the report folder, including models/teacher.pt, base.pt, student.pt.",
    ),
    "train": (
        "train a model (optionally by distillation) and save a checkpoint",
        "Train ARCH on the data; with --teacher, by knowledge distillation. "
        f"Architectures: {_ARCHITECTURES}.",
    ),
    "explain": (
        "Grad-CAM and UniCAM maps of a Student/Base pair; write a report",
        "Draw Grad-CAM (Student, Base) and UniCAM (distilled, residual) maps per layer over "
        "the evaluated images in class-stratified batches (UniCAM is a batch statistic; each "
        "batch is its own context) and draw one image per class; on data with object masks "
        "(the controlled dataset), measure their localisation.",
    ),
    "quantify": (
        "FSS and RS per layer with intervals; write a report",
        "FSS and RS of a Student/Base pair per layer and map kind over the data, with "
        "bootstrap intervals and permutation p-values (Table 1). Under torchrun the batches "
        "are shared between processes and rank 0 writes the same numbers as one process.",
    ),
    "compare": (
        "UniCAM next to Captum's attribution methods: localisation, ROAD, sanity checks; "
        "write a report",
        "UniCAM distilled and residual next to Captum's LayerGradCam, GuidedGradCam, "
        "LayerGradientXActivation and IntegratedGradients (and Grad-CAM of each model) on "
        "the same test images: localisation (when masks exist), ROAD most- and "
        "least-relevant-first curves, and the sanity checks; one table and one figure per "
        "measure.",
    ),
}


# ---------------------------------------------------------------------------
# value types: argparse ``type=`` functions; a bad value raises argparse.ArgumentTypeError
# with a message that says what is wanted
# ---------------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {v}")
    return v


def finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def positive_float(text: str) -> float:
    v = finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return v


def nonneg_float(text: str) -> float:
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def unit_float(text: str) -> float:
    v = finite_float(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return v


def user_path(text: str) -> str:
    """A path flag's value with ``~`` expanded (also in ``--flag=~/x``, which no shell
    expands)."""
    return os.path.expanduser(text)


def data_spec(text: str) -> str:
    """A data spec with ``~`` expanded in its root (``imagefolder:~/pets``)."""
    scheme, sep, root = text.partition(":")
    return f"{scheme}{sep}{os.path.expanduser(root)}" if sep and root.startswith("~") else text


def seed_value(text: str) -> int:
    v = nonneg_int(text)
    if v > MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"must be an integer from 0 to {MAX_SEED} (2**32 - 1), got {v}"
        )
    return v


def augmentations(text: str) -> tuple:
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


def class_map(text: str) -> dict:
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
