r"""What each command of the pipeline is asked to do: one typed request per command.

:class:`TrainRequest`, :class:`ExplainRequest`, :class:`QuantifyRequest`,
:class:`CompareRequest` and :class:`DemoRequest` hold every choice of one run as plain
values (paths, data specs, numbers), with the defaults of the command line. The run
functions of :mod:`captum_unicam.pipeline.runs` take them. Each request's ``check()``
holds the rules that combine its fields (``method`` needs a ``teacher``, ``labelled`` and
``transfer`` exclude each other, ...) and the checks that need no torch (architecture names,
data specs, batch sizes), so a bad combination is refused before any work.

Messages name the fields as ``field=`` (``"pass image_size= to override"``);
:func:`in_flags` turns them into the command line's flags through the one table
:data:`FLAGS` of whole field names, so that ``allow_download=`` and ``download=`` stay
distinct. This module imports neither torch nor any other module of the pipeline: the
command line builds requests and checks flags before anything heavy is loaded.

Later options (own architectures, class mappings, augmentation choices) are new fields of
these requests, with their flags added to :data:`FLAGS`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from captum_unicam.errors import InputError

__all__ = [
    "ARCHITECTURE_NAMES",
    "RESIZE_NAMES",
    "AUGMENTATIONS",
    "MAX_SEED",
    "FLAGS",
    "in_flags",
    "request_from",
    "TrainRequest",
    "PairRequest",
    "ExplainRequest",
    "QuantifyRequest",
    "CompareRequest",
    "DemoRequest",
]

#: The names of :data:`captum_unicam.models.ARCHITECTURES`, spelt out so that checks and
#: ``--help`` need no torch (a test checks that the two agree).
ARCHITECTURE_NAMES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "small_resnet_s",
    "small_resnet_m",
    "small_resnet_l",
    "small_resnet",
)

# --- train / demo: seeds and augmentation (spelt out here so that the command line needs
# no torch; a test checks AUGMENTATIONS against captum_unicam.kd.recipe) ---
#: The largest seed a command accepts: every generator it seeds (torch, numpy, the
#: controlled dataset's) takes it, and so do the seeds derived from it (the demo's
#: ``1000 * seed + 22``, a fold's ``seed + k``).
MAX_SEED = 2**32 - 1

#: Training augmentations ``--augment`` may name: random horizontal ``flip``, random
#: ``crop`` after zero padding by 1/8 of the side.
AUGMENTATIONS = ("flip", "crop")
# --- end train / demo ---

#: Field (or library argument) name -> the command line's flag, whole names only.
FLAGS: Dict[str, str] = {
    "alpha": "--alpha",
    "arch": "--arch",
    # train
    "augment": "--augment",
    "allow_download": "--download",
    "base": "--base",
    "base_arch": "--base-arch",
    "batch_size": "--batch-size",
    "cache_dir": "--cache-dir",
    "data": "--data",
    "device": "--device",
    "download": "--download",
    "epochs": "--epochs",
    "force": "--force",  # the memory estimate of image_size (pipeline.memory)
    "image_size": "--image-size",
    "images": "--images",
    "label_model": "--label-model",
    "labelled": "--labelled",
    "layers": "--layers",
    "limit": "--limit",
    "lr": "--lr",
    "method": "--method",
    "n_bootstrap": "--n-bootstrap",
    "normalize": "--normalize",
    "optimizer": "--optimizer",
    "out": "--out",
    "overwrite": "--overwrite",
    "reference": "--reference",
    "sanity_images": "--sanity-images",
    "reference_images": "--reference-images",
    "seed": "--seed",
    "student": "--student",
    "student_arch": "--student-arch",
    "teacher": "--teacher",
    "teacher_arch": "--teacher-arch",
    "temperature": "--temperature",
    "threads": "--threads",
    "transfer": "--transfer",
    "weight_decay": "--weight-decay",
    "weights": "--weights",
    # explain / quantify / compare: own architectures, preprocessing, classes by name
    "model": "--model",
    "factory": "--model",
    "student_model": "--student-model",
    "base_model": "--base-model",
    "teacher_model": "--teacher-model",
    "resize": "--resize",
    "class_map": "--class-map",
    "follow_links": "--follow-links",
}

#: Placeholder values in messages (``teacher=...``) -> the flag's metavar.
_METAVARS = {"...": "CKPT", "N": "N", "SPEC": "SPEC", "CKPT": "CKPT"}

_NAME_IS = re.compile(r"(?<![\w-])([a-z][a-z0-9_]*)=(True\b|\.\.\.|N\b|SPEC\b|CKPT\b)?(?=(\w?))")


def in_flags(text: str) -> str:
    r"""A library message in the command line's words: each whole ``name=`` of a field in
    :data:`FLAGS` becomes its flag (``image_size=`` -> ``--image-size``,
    ``teacher=...`` -> ``--teacher CKPT``, ``download=True`` -> ``--download``); every
    other text is left as it is.

    Examples::

        >>> in_flags("pass allow_download=True to fetch it")
        'pass --download to fetch it'
    """

    def flag(m: "re.Match[str]") -> str:
        name, value = m.group(1), m.group(2)
        if name not in FLAGS:
            return m.group(0)
        if value in _METAVARS:
            return f"{FLAGS[name]} {_METAVARS[value]}"
        return FLAGS[name] + (" " if not value and m.group(3) else "")

    return _NAME_IS.sub(flag, text)


def request_from(cls: type, values: Any, **overrides: Any):
    r"""A request of type ``cls`` from the attributes of ``values`` (an
    :class:`argparse.Namespace` or any object) that name its fields, with ``overrides``."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {n: getattr(values, n) for n in names if hasattr(values, n)}
    given.update(overrides)
    return cls(**given)


# ---------------------------------------------------------------------------
# checks that need no torch
# ---------------------------------------------------------------------------


def _check_arch(name: Optional[str], field: str) -> None:
    if name is not None and name not in ARCHITECTURE_NAMES:
        raise InputError(
            f"unknown architecture {name!r} for {field}=; use one of {', '.join(ARCHITECTURE_NAMES)}"
        )


def check_data_spec(spec: str, field: str = "data") -> None:
    r"""The checks of a data spec that need no torch (the loader repeats them)."""
    scheme, _sep, arg = spec.strip().partition(":")
    if scheme.lower() not in ("controlled", "cifar10", "imagefolder"):
        raise InputError(
            f"{field}=: unknown data spec {spec!r}; use controlled, controlled:SEED, cifar10:ROOT "
            "or imagefolder:ROOT"
        )
    if scheme.lower() == "controlled" and arg.strip():
        _check_controlled_seed(spec, arg.strip(), field)
    if scheme.lower() == "imagefolder":
        root = Path(os.path.expanduser(arg))
        if not arg or not root.is_dir():
            raise InputError(
                f"{field}=: image folder {arg!r} does not exist or is not a folder; give the folder "
                "that holds one sub-folder of images per class (or train/ and test/ sub-folders of "
                "those)"
            )


#: The resize rules of :data:`captum_unicam.data.resize.RESIZE_RULES`, spelt out so that
#: checks and ``--help`` need no torch (a test checks that the two agree).
RESIZE_NAMES = ("shorter-side-crop", "exact", "pad", "none")

_FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _check_factory(spec: Optional[str], field: str) -> None:
    if spec is not None and not _FACTORY.match(spec.strip()):
        raise InputError(
            f"{field}= {spec!r} is not a module and a function; give it as "
            "'package.module:function' (importable, e.g. on PYTHONPATH), e.g. "
            "'mynets:small_cnn'"
        )


def _role_model(
    arch: Optional[str], factory: Optional[str], arch_field: str, factory_field: str
) -> Tuple[Optional[str], Optional[str]]:
    if arch is not None and factory is not None:
        raise InputError(
            f"give {arch_field}= or {factory_field}=, not both: an architecture of "
            "this library or the function of your code that builds the model"
        )
    return arch, factory


def _check_pair_models(request: Any) -> None:
    """The architecture names and factories of a pair: known, well formed, one per role."""
    for field in ("arch", "student_arch", "base_arch", "teacher_arch"):
        _check_arch(getattr(request, field, None), field)
    for field in ("model", "student_model", "base_model", "teacher_model"):
        _check_factory(getattr(request, field, None), field)
    for role in ("Student", "Base", "Teacher"):
        request.role_model(role)
    if request.resize is not None and request.resize not in RESIZE_NAMES:
        raise InputError(f"resize= {request.resize!r}: use one of {', '.join(RESIZE_NAMES)}")


def _pair_role_model(request: Any, role: str) -> Tuple[Optional[str], Optional[str]]:
    """``(arch, factory)`` of ``role``: its own flags, else (Student and Base) the shared
    ``arch`` / ``model``; the Teacher takes only ``teacher_arch`` / ``teacher_model``."""
    key = role.lower()
    own = (getattr(request, f"{key}_arch", None), getattr(request, f"{key}_model", None))
    if own != (None, None) or role == "Teacher":
        return _role_model(*own, f"{key}_arch", f"{key}_model")
    return _role_model(request.arch, request.model, "arch", "model")


def _check_controlled_seed(spec: str, arg: str, field: str) -> None:
    """``controlled:SEED`` holds a seed from 0 to :data:`MAX_SEED`."""
    if not arg.isdigit() or int(arg) > MAX_SEED:
        raise InputError(
            f"{field}=: {spec!r}: the seed of the controlled dataset must be an "
            f"integer from 0 to {MAX_SEED} (2**32 - 1), e.g. 'controlled:3'"
        )


def check_seed(seed: Any, field: str = "seed") -> None:
    r"""``seed`` is an int from 0 to :data:`MAX_SEED`; else an :class:`InputError` naming
    ``field=`` and the range."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(
            f"{field}= must be an integer from 0 to {MAX_SEED} (2**32 - 1), got {seed!r}"
        )


def _check_min(value: int, field: str, least: int, why: str) -> None:
    if value < least:
        raise InputError(f"{field}= {value} is too small: {why}")


# ---------------------------------------------------------------------------
# requests
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class TrainRequest:
    r"""``train``: one model trained on ``data`` (by distillation from ``teacher`` when
    given) and written to the checkpoint ``out``. The training fields are those of
    :class:`~captum_unicam.kd.recipe.Recipe`."""

    data: str
    arch: str
    out: str
    teacher: Optional[str] = None
    teacher_arch: Optional[str] = None
    method: Optional[str] = None
    epochs: int = 10
    image_size: Optional[int] = None
    normalize: Optional[str] = None
    augment: Sequence[str] = ()
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    labelled: Optional[int] = None
    transfer: Optional[str] = None
    temperature: float = 4.0
    alpha: float = 0.9
    weights: Optional[str] = None
    limit: Optional[int] = None
    download: bool = False
    overwrite: bool = False
    device: str = "cpu"
    seed: int = 0
    progress: bool = True
    # run even when the memory estimate of image_size exceeds the memory available
    force: bool = False

    def recipe_fields(self) -> Dict[str, Any]:
        r"""The fields of the training recipe (the KD method defaults to ``response``
        with a Teacher)."""
        return dict(
            arch=self.arch,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            augment=tuple(self.augment),
            image_size=self.image_size,
            normalize=self.normalize,
            labelled=self.labelled,
            limit=self.limit,
            transfer=self.transfer,
            method=self.method or ("response" if self.teacher else None),
            temperature=self.temperature,
            alpha=self.alpha,
            weights=self.weights,
            seed=self.seed,
        )

    def check(self) -> None:
        r"""Raises :class:`~captum_unicam.errors.InputError` for names and specs that cannot
        work; the rules that combine the training fields are the recipe's
        (:meth:`~captum_unicam.kd.recipe.Recipe.check`)."""
        _check_arch(self.arch, "arch")
        _check_arch(self.teacher_arch, "teacher_arch")
        check_data_spec(self.data)
        if self.transfer is not None:
            check_data_spec(self.transfer, "transfer")
        check_seed(self.seed)
        unknown = [a for a in self.augment if a not in AUGMENTATIONS]
        if isinstance(self.augment, str) or unknown:
            raise InputError(
                f"augment= takes a list of {', '.join(AUGMENTATIONS)} (or none), got "
                f"{self.augment!r}"
            )


@dataclasses.dataclass
class PairRequest:
    r"""A Student / Base pair (and an optional Teacher) on one data spec: what ``explain``,
    ``quantify`` and ``compare`` load (:func:`captum_unicam.pipeline.pair.load_pair`)."""

    student: str
    base: str
    data: str
    out: str
    teacher: Optional[str] = None
    arch: Optional[str] = None
    student_arch: Optional[str] = None
    base_arch: Optional[str] = None
    split: str = "test"
    download: bool = False
    image_size: Optional[int] = None
    normalize: Optional[str] = None
    order: str = "stratified"
    layers: Sequence[str] = ("L1", "L2", "L3", "L4")
    batch_size: int = 32
    label_model: Optional[str] = None
    one_hot: bool = False
    limit: Optional[int] = None
    overwrite: bool = False
    device: str = "cpu"
    seed: int = 0
    progress: bool = True
    # own architectures (a factory "package.module:function" of the user's code), the
    # Teacher's architecture, the resize rule, classes matched by name
    teacher_arch: Optional[str] = None
    model: Optional[str] = None
    student_model: Optional[str] = None
    base_model: Optional[str] = None
    teacher_model: Optional[str] = None
    resize: Optional[str] = None
    class_map: Optional[Dict[str, str]] = None
    follow_links: bool = False
    # run even when the memory estimate of image_size exceeds the memory available
    force: bool = False

    def check(self) -> None:
        r"""Architecture names, factories, the batch size and the data spec, before any loading."""
        _check_pair_models(self)
        _check_min(
            self.batch_size,
            "batch_size",
            5,
            "UniCAM, FSS and RS are batch statistics and need at least 5 images per batch",
        )
        check_data_spec(self.data)

    def checkpoints(self) -> List[Tuple[str, Optional[str]]]:
        """``(role, path)`` of the models, in loading order."""
        return [("Student", self.student), ("Base", self.base), ("Teacher", self.teacher)]

    def role_model(self, role: str) -> Tuple[Optional[str], Optional[str]]:
        r"""``(arch, factory)`` for a checkpoint of ``role``: the role's own
        ``{role}_arch`` / ``{role}_model``, else for the Student and the Base the shared
        ``arch`` / ``model`` (the Teacher takes only its own)."""
        return _pair_role_model(self, role)

    def role_arch(self, role: str) -> Optional[str]:
        """The architecture given for a plain state-dict checkpoint of ``role``."""
        return self.role_model(role)[0]


@dataclasses.dataclass
class ExplainRequest(PairRequest):
    r"""``explain``: Grad-CAM and UniCAM maps of the pair, drawn ``images`` per layer, over
    the evaluated set (all images of the split, or the seeded subset of ``limit``: the same
    images as ``quantify`` with the same ``limit``); ``reference`` > 0: UniCAM in reference
    mode with that many train images."""

    images: Optional[int] = None
    reference: int = 0

    def check(self) -> None:
        super().check()
        if self.reference:
            _check_min(
                self.reference,
                "reference",
                4,
                "a reference set needs at least 4 images (each image "
                "is scored with them, n = 1 + N >= 5)",
            )


@dataclasses.dataclass
class QuantifyRequest(PairRequest):
    r"""``quantify``: FSS and RS of the pair per layer and map kind, with ``n_bootstrap``
    resamples; under torchrun the batches are shared between the processes."""

    perturb: str = "mask"
    maps: Sequence[str] = (
        "none",
        "gradcam",
        "distilled",
        "residual",
    )  # "none": the conclusion reads it
    n_bootstrap: int = 1000


@dataclasses.dataclass
class CompareRequest:
    r"""``compare``: UniCAM next to Captum's attribution methods at one ``layer``, on
    ``images`` test images drawn class-stratified."""

    student: str
    base: str
    data: str
    out: str
    overwrite: bool = False
    layer: str = "L4"
    images: int = 64
    reference_images: int = 16
    batch_size: int = 64
    percentiles: Sequence[float] = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90)
    sanity_images: int = 32
    no_sanity: bool = False
    random_label_student: Optional[str] = None
    ig_steps: int = 16
    n_bootstrap: int = 1000
    seed: int = 0
    device: str = "cpu"
    threads: Optional[int] = 1
    # the pair as explain and quantify load it: own architectures, preprocessing, classes
    progress: bool = True
    arch: Optional[str] = None
    student_arch: Optional[str] = None
    base_arch: Optional[str] = None
    model: Optional[str] = None
    student_model: Optional[str] = None
    base_model: Optional[str] = None
    image_size: Optional[int] = None
    normalize: Optional[str] = None
    resize: Optional[str] = None
    class_map: Optional[Dict[str, str]] = None
    follow_links: bool = False
    download: bool = False

    def check(self) -> None:
        self.pair().check()
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads must be a positive int, got {self.threads}")
        for name in ("images", "batch_size", "sanity_images"):
            if getattr(self, name) < 5:
                raise InputError(
                    f"{name} must be at least 5 (UniCAM's scores are batch statistics), got "
                    f"{getattr(self, name)}"
                )
        if self.reference_images and self.reference_images < 4:
            raise InputError(
                f"reference_images must be 0 or at least 4 (a reference set with classes "
                f"repeated), got {self.reference_images}"
            )

    def pair(self) -> PairRequest:
        """The Student / Base pair to load: the test split, this layer, no label vectors."""
        return PairRequest(
            student=self.student,
            base=self.base,
            data=self.data,
            out=self.out,
            layers=(self.layer,),
            one_hot=True,
            overwrite=self.overwrite,
            device=self.device,
            seed=self.seed,
            batch_size=max(self.batch_size, 5),
            progress=False,
            arch=self.arch,
            student_arch=self.student_arch,
            base_arch=self.base_arch,
            model=self.model,
            student_model=self.student_model,
            base_model=self.base_model,
            image_size=self.image_size,
            normalize=self.normalize,
            resize=self.resize,
            class_map=self.class_map,
            follow_links=self.follow_links,
            download=self.download,
        )


@dataclasses.dataclass
class DemoRequest:
    r"""``demo``: Teacher, Base and Student trained (or read from the cache) on the
    controlled dataset, explained, quantified, and written to the report ``out``."""

    out: str = "unicam-report"
    quick: bool = False
    seed: int = 0
    cache_dir: Optional[str] = None
    images: Optional[int] = None
    threads: int = 1
    overwrite: bool = False
    device: str = "cpu"
    progress: bool = True

    def check(self) -> None:
        r"""The seed is in range (the demo's own seeds are derived from it)."""
        check_seed(self.seed)
