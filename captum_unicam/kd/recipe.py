r"""Every choice of one training run: :class:`Recipe`.

:func:`captum_unicam.kd.train.train_model` reads the training fields (epochs, optimiser,
learning rate, weight decay, KD method, temperature, weights of the KD terms, seed);
:func:`captum_unicam.pipeline.training.train_checkpoint` reads the rest (architecture,
image size, normalisation, augmentation, labelled subset, transfer set, pretrained
weights) and records the whole recipe in the checkpoint. :meth:`Recipe.check` holds every
rule that combines the fields, with messages that name them as ``field=``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

from captum_unicam.errors import InputError
from captum_unicam.output.tables import KD_METHODS

__all__ = [
    "Recipe",
    "OPTIMIZERS",
    "NORMALIZATIONS",
    "AUGMENTATIONS",
    "MAX_SEED",
    "DEFAULT_BETA",
    "positive_int",
]

#: Optimisers: SGD with Nesterov momentum, or AdamW.
OPTIMIZERS = ("sgd", "adam")

#: Normalisations: ``imagenet`` (ImageNet's per-channel mean / std, as torchvision's
#: pretrained weights expect) or ``none`` (images in [0, 1]).
NORMALIZATIONS = ("imagenet", "none")

#: Training augmentations: random horizontal ``flip`` (wrong where a mirror image is another
#: class: digits, letters, text) and random ``crop`` after zero padding by 1/8 of the side.
AUGMENTATIONS = ("flip", "crop")

#: The largest seed of a recipe: torch's generators take seeds up to 2**63 - 1 here (the
#: command line allows 0 to 2**32 - 1, so that seeds derived from its seed stay in range).
MAX_SEED = 2**63 - 1

#: Weight of the feature term of each feature-based KD method, when the recipe gives none.
DEFAULT_BETA = {"attention": 1e3, "overhaul": 1e-3}


def positive_int(value: Any, name: str) -> int:
    r"""``value`` when it is an int >= 1 (not a bool); else an :class:`InputError` naming ``name=``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return value


@dataclasses.dataclass
class Recipe:
    r"""Every choice of one training run (recorded in the checkpoint's ``recipe``).

    Attributes:
        arch (str, optional): Architecture (``captum_unicam.models.ARCHITECTURES``); needed
                    to build a model, not to train one. Default: None
        epochs (int): Passes over the training data. Default: 10
        batch_size (int): Default: 64
        lr (float): Peak learning rate (cosine decay to 0 over all steps). Default: 0.05
        optimizer (str): ``"sgd"`` (Nesterov momentum 0.9) or ``"adam"`` (AdamW).
                    Default: "sgd"
        weight_decay (float): Default: 5e-4
        augment (tuple of str): Training augmentations, any of :data:`AUGMENTATIONS`
                    (``("flip", "crop")``); none is applied unless named. Default: ()
        image_size (int, optional): Image side; None: the Teacher's, else the data's
                    default. Default: None
        normalize (str, optional): ``"imagenet"`` or ``"none"``; None: the Teacher's,
                    else ``"imagenet"`` with ``weights``, else ``"none"``. Default: None
        labelled (int, optional): Train on a seeded, class-stratified subset of this
                    many labelled images. Default: None (all)
        limit (int, optional): Use only this many training images (a seeded subset).
        transfer (str, optional): Data spec of the images a Student is distilled on;
                    their labels are never read. Default: None
        method (str, optional): KD method with a Teacher (``"response"``,
                    ``"attention"``, ``"overhaul"``). Default: None
        temperature (float): KD softmax temperature. Default: 4.0
        alpha (float): Weight of the response-KD term (the cross-entropy of ``response``
                    gets ``1 - alpha``). Default: 0.9
        beta (float, optional): Weight of the feature-KD term: ``beta / 2`` times the
                    attention-transfer loss or ``beta`` times the overhaul loss.
                    Default: None (:data:`DEFAULT_BETA`)
        weights (str, optional): torchvision pretrained weights to start from, e.g.
                    ``"IMAGENET1K_V1"``.
        seed (int): Seed of the subsets, initialisation and training, from 0 to
                    :data:`MAX_SEED`. Default: 0

    Examples::

        >>> Recipe("small_resnet_s", epochs=5, method="response")
    """

    arch: Optional[str] = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    augment: Tuple[str, ...] = ()
    image_size: Optional[int] = None
    normalize: Optional[str] = None
    labelled: Optional[int] = None
    limit: Optional[int] = None
    transfer: Optional[str] = None
    method: Optional[str] = None
    temperature: float = 4.0
    alpha: float = 0.9
    beta: Optional[float] = None
    weights: Optional[str] = None
    seed: int = 0

    def feature_beta(self) -> Optional[float]:
        """``beta``, or the method's default weight of its feature term."""
        return self.beta if self.beta is not None else DEFAULT_BETA.get(self.method or "")

    def check_training(self, has_teacher: bool) -> None:
        r"""The rules of training itself: numbers, optimiser, KD method and Teacher.

        Raises:
            InputError: naming the field (``field=``) and what to do.
        """
        positive_int(self.epochs, "epochs")
        positive_int(self.batch_size, "batch_size")
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise InputError(f"seed must be an int from 0 to {MAX_SEED} (2**63 - 1), got {seed!r}")
        for name in ("lr", "temperature"):
            if not float(getattr(self, name)) > 0:
                raise InputError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not float(self.weight_decay) >= 0:
            raise InputError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise InputError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.method is not None and self.method not in KD_METHODS:
            raise InputError(
                f"unknown KD method {self.method!r}; choose one of {', '.join(KD_METHODS)}"
            )
        if self.method is not None and not has_teacher:
            raise InputError(f"method {self.method!r} needs a Teacher (teacher=...)")
        if has_teacher and self.method is None:
            raise InputError(
                f"a Teacher was given but no KD method; choose one (method= one of "
                f"{', '.join(KD_METHODS)})"
            )

    def check(self, has_teacher: bool) -> None:
        r"""Every rule of a training run from a data spec, before any work: the
        architecture, the data fields and :meth:`check_training`.

        Raises:
            InputError: naming the field (``field=``) and what to do.
        """
        from captum_unicam.models import ARCHITECTURES  # lazy: models import torch

        if self.arch not in ARCHITECTURES:
            raise InputError(
                f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}"
            )
        for name in ("labelled", "limit", "image_size"):
            if getattr(self, name) is not None:
                positive_int(getattr(self, name), name)
        if self.image_size is not None and self.image_size < 8:
            raise InputError(f"image_size must be at least 8, got {self.image_size}")
        augment = self.augment
        if (
            isinstance(augment, (str, bool))
            or not isinstance(augment, (tuple, list))
            or any(a not in AUGMENTATIONS for a in augment)
            or len(set(augment)) != len(augment)
        ):
            raise InputError(
                f"augment must be a tuple of {', '.join(AUGMENTATIONS)} (each at "
                f"most once; () for none), got {augment!r}"
            )
        if self.normalize is not None and self.normalize not in NORMALIZATIONS:
            raise InputError(
                f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}"
            )
        self.check_training(has_teacher)
        if self.transfer is not None and not has_teacher:
            raise InputError(
                "a transfer set has no labels to learn from: it needs a Teacher (teacher=...)"
            )
        if self.transfer is not None and self.labelled is not None:
            raise InputError(
                "labelled= and transfer= exclude each other: a Student distilled on a transfer "
                "set reads no labels; train a Base with labelled=N, and the Student with transfer=SPEC"
            )
        if self.weights is not None and self.arch.startswith("small_resnet"):
            raise InputError(
                f"pretrained weights exist only for torchvision's ResNets, not {self.arch!r}"
            )

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)
