r"""How a Teacher, a Base and a Student are trained: one recipe, one function.

:class:`Recipe` holds every choice of a training run (architecture, epochs, optimiser,
image size, normalisation, augmentation, labelled subset, transfer set, KD method and
weights, pretrained weights, seed); :func:`train_checkpoint` trains one model by it and
writes a checkpoint whose ``recipe`` records all of it, including the preprocessing
(``image_size``, ``normalize``) that ``explain`` and ``quantify`` read back.

- **Teacher / Base**: no ``teacher``; trained with labels (``labelled=N`` keeps a seeded,
  class-stratified subset of N labelled images).
- **Student**: ``teacher=`` a checkpoint and ``method``; trained by distillation, with
  labels on the data spec, or on a ``transfer`` spec whose labels are never read (the
  KD term is then the only supervision). The Student follows the Teacher's image size
  and normalisation unless the recipe sets them (then a warning).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

from captum_unicam.errors import CheckpointError, DataSpecError, InputError

__all__ = ["Recipe", "build", "fit", "train_checkpoint", "pretrained_state_dict"]

_OPTIMIZERS = ("sgd", "adam")
_KD_METHODS = ("response", "attention", "overhaul")


@dataclasses.dataclass
class Recipe:
    r"""Every choice of one training run (recorded in the checkpoint's ``recipe``).

    Attributes:
        arch (str): Architecture (``captum_unicam.models.ARCHITECTURES``).
        epochs (int): Passes over the training data. Default: 10
        batch_size (int): Default: 64
        lr (float): Peak learning rate (cosine decay). Default: 0.05
        optimizer (str): ``"sgd"`` or ``"adam"``. Default: "sgd"
        weight_decay (float): Default: 5e-4
        augment (bool): Random horizontal flips and crops. Default: False
        image_size (int, optional): Image side; None: the Teacher's, else the data's
                    default. Default: None
        normalize (str, optional): ``"imagenet"`` or ``"none"``; None: the Teacher's,
                    else ``"imagenet"`` with ``weights``, else ``"none"``. Default: None
        labelled (int, optional): Train on a seeded, class-stratified subset of this
                    many labelled images. Default: None (all)
        limit (int, optional): Use only this many training images (a seeded subset).
        transfer (str, optional): Data spec of the images a Student is distilled on;
                    their labels are never read. Its ``transfer`` split is used: the
                    controlled dataset's transfer stream, CIFAR-10's training images, a
                    folder's ``train/`` (or, without ``train/`` and ``test/``, the 80 %
                    of its images that are not held out for testing). Default: None
        method (str, optional): KD method with a Teacher (``"response"``,
                    ``"attention"``, ``"overhaul"``). Default: None
        temperature (float): KD softmax temperature. Default: 4.0
        alpha (float): Weight of the response-KD term. Default: 0.9
        beta (float, optional): Weight of the feature-KD term. Default: the method's
        weights (str, optional): torchvision pretrained weights to start from, e.g.
                    ``"IMAGENET1K_V1"`` or ``"ResNet18_Weights.IMAGENET1K_V1"``.
        seed (int): Seed of the subsets, initialisation and training. Default: 0
    """

    arch: str
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    augment: bool = False
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

    def check(self, has_teacher: bool) -> None:
        r"""Raises :class:`~captum_unicam.errors.InputError` for a bad value, before any work."""
        from captum_unicam.models import ARCHITECTURES
        from captum_unicam.pipeline.data import NORMALIZATIONS

        if self.arch not in ARCHITECTURES:
            raise InputError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        for name in ("epochs", "batch_size"):
            _positive(getattr(self, name), name)
        for name in ("labelled", "limit", "image_size"):
            if getattr(self, name) is not None:
                _positive(getattr(self, name), name)
        if self.image_size is not None and self.image_size < 8:
            raise InputError(f"image_size must be at least 8, got {self.image_size}")
        for name in ("lr", "temperature"):
            if not float(getattr(self, name)) > 0:
                raise InputError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not float(self.weight_decay) >= 0:
            raise InputError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise InputError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise InputError(f"optimizer must be one of {', '.join(_OPTIMIZERS)}, got {self.optimizer!r}")
        if self.normalize is not None and self.normalize not in NORMALIZATIONS:
            raise InputError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}")
        if self.method is not None and self.method not in _KD_METHODS:
            raise InputError(f"unknown KD method {self.method!r}; choose one of {', '.join(_KD_METHODS)}")
        if self.method is not None and not has_teacher:
            raise InputError(f"method {self.method!r} needs a Teacher checkpoint (teacher=...)")
        if has_teacher and self.method is None:
            raise InputError(f"a Teacher was given; choose the KD method (method= one of {', '.join(_KD_METHODS)})")
        if self.transfer is not None and not has_teacher:
            raise InputError("a transfer set has no labels to learn from: it needs a Teacher (teacher=...)")
        if self.transfer is not None and self.labelled is not None:
            raise InputError("labelled= and transfer= exclude each other: a Student distilled on a transfer "
                             "set reads no labels; train a Base with labelled=N, and the Student with transfer=SPEC")
        if self.weights is not None and self.arch.startswith("small_resnet"):
            raise InputError(f"pretrained weights exist only for torchvision's ResNets, not {self.arch!r}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return value


def pretrained_state_dict(arch: str, name: str, *, download: bool = False, progress: bool = False) -> Tuple[Dict[str, Any], str]:
    r"""The state dict of torchvision's pretrained weights ``name`` for ``arch``.

    Read from the local torch cache (``torch.hub.get_dir()/checkpoints``); fetched from
    the network only with ``download=True``.

    Args:
        arch (str): A torchvision ResNet (``"resnet18"`` ...).
        name (str): ``"IMAGENET1K_V1"``, ``"DEFAULT"`` or a full name such as
                    ``"ResNet18_Weights.IMAGENET1K_V1"``.
        download (bool, optional): Allow downloading. Default: False

    Returns:
        *(dict, str)*: the state dict and the weights' full name.

    Raises:
        InputError: unknown weights for ``arch``.
        CheckpointError: the weights are not in the local cache and ``download`` is False.
    """
    import torch
    from torchvision import models as tvm

    try:
        enum = tvm.get_model_weights(arch)
        short = name.split(".", 1)[1] if "." in name else name
        if "." in name and name.split(".", 1)[0] != enum.__name__:
            raise KeyError(name)
        weights = enum[short] if short != "DEFAULT" else enum.DEFAULT
    except (KeyError, ValueError):
        known = ", ".join(f"{w.__class__.__name__}.{w.name}" for w in tvm.get_model_weights(arch))
        raise InputError(f"unknown weights {name!r} for {arch}; use one of {known}") from None
    full = f"{type(weights).__name__}.{weights.name}"
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    if os.path.isfile(path):
        return torch.load(path, map_location="cpu", weights_only=True), full
    if not download:
        raise CheckpointError(f"pretrained weights {full} are not in the local torch cache ({path}); "
                              "put the file there, or pass download=True to fetch it")
    return weights.get_state_dict(progress=progress, check_hash=True), full


def _start_from(model, state: Dict[str, Any]) -> List[str]:
    """Copies the tensors of ``state`` whose names and shapes fit; returns the names left out."""
    import torch

    own = model.state_dict()
    skipped = []
    with torch.no_grad():
        for k, v in state.items():
            if k in own and tuple(own[k].shape) == tuple(v.shape):
                own[k].copy_(v)
            else:
                skipped.append(k)
    return sorted(skipped)


def build(arch: str, num_classes: int, seed: int, **build_kwargs: Any):
    r"""``build_model(arch, num_classes, **build_kwargs)`` with its random initialisation
    drawn from ``seed`` (the caller's random state is left untouched)."""
    import torch

    from captum_unicam.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build_model(arch, num_classes, **build_kwargs)


def fit(model, dataset, recipe: Recipe, *, teacher=None, unlabelled: bool = False, order_seed: Optional[int] = None,
        device: Any = "cpu", progress: bool = True, desc: Optional[str] = None):
    r"""Trains ``model`` on ``dataset`` by ``recipe``: how every Teacher, Base and Student of
    the command line, the demo and the experiments is trained.

    The data come in seeded shuffled batches of ``recipe.batch_size`` (generator seeded
    with ``order_seed``, default ``recipe.seed``; the last short batch is dropped when
    there is more than one batch); :func:`~captum_unicam.kd.train.train_model` trains with
    the recipe's optimiser, learning rate, weight decay, epochs and seed, and with a
    ``teacher`` by distillation (``recipe.method``, ``temperature``, ``alpha``, ``beta``);
    ``unlabelled=True`` never reads the labels (a transfer set).

    Returns:
        *nn.Module*: ``model``, trained.
    """
    import torch
    from torch.utils.data import DataLoader

    from captum_unicam.kd.train import train_model

    g = torch.Generator().manual_seed(int(recipe.seed if order_seed is None else order_seed))
    loader = DataLoader(dataset, batch_size=min(recipe.batch_size, len(dataset)), shuffle=True, generator=g,
                        drop_last=len(dataset) > recipe.batch_size)
    return train_model(model, loader, epochs=recipe.epochs, teacher=teacher, method=recipe.method, lr=recipe.lr,
                       optimizer=recipe.optimizer, weight_decay=recipe.weight_decay, temperature=recipe.temperature,
                       alpha=recipe.alpha, beta=recipe.beta, unlabelled=unlabelled, seed=recipe.seed, device=device,
                       progress=progress, desc=desc or f"train {recipe.arch}")


def train_checkpoint(
    data: str,
    recipe: Recipe,
    out: Union[str, os.PathLike],
    *,
    teacher: Optional[Union[str, os.PathLike]] = None,
    device: Any = "cpu",
    progress: bool = True,
    download: bool = False,
    folds: Optional[int] = None,
    test_limit: Optional[int] = None,
    teacher_arch: Optional[str] = None,
    warn=warnings.warn,
) -> Dict[str, Any]:
    r"""Trains one model by ``recipe`` on the data spec ``data`` and writes its checkpoint.

    Args:
        data (str): Data spec of the labelled data (its ``train`` split trains, its
                    ``test`` split measures the accuracy).
        recipe (Recipe): What to train and how.
        out (str or PathLike): Checkpoint file to write.
        teacher (str or PathLike, optional): Teacher checkpoint: train a Student by
                    distillation. Default: None
        device, progress: Where to train; progress bars.
        download (bool, optional): Allow downloading CIFAR-10 or pretrained weights.
        folds (int, optional): Also run ``folds``-fold cross-validation first.
        test_limit (int, optional): Measure the test accuracy on this many images.
        teacher_arch (str, optional): Architecture of a plain state-dict Teacher.
        warn (callable, optional): Receives one line per preprocessing override.

    Returns:
        *dict*: ``path``, ``arch``, ``num_classes``, ``class_names``, ``kd_method``,
        ``teacher``, ``test_accuracy``, ``train_size``, ``test_size``, ``recipe``.

    Raises:
        InputError, DataSpecError, CheckpointError: bad recipe, data or Teacher; all
        before training starts.
    """
    import torch
    from torch.utils.data import DataLoader

    from captum_unicam.kd.train import cross_validate, evaluate_accuracy
    from captum_unicam.models import load_checkpoint, save_checkpoint
    from captum_unicam.pipeline.data import Preprocessing, checkpoint_preprocessing, labelled_subset, load_data

    recipe.check(has_teacher=teacher is not None)
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
        raise InputError(f"folds must be an int >= 2, got {folds!r}")
    if test_limit is not None:
        _positive(test_limit, "test_limit")
    out_path = pathlib.Path(out)
    if out_path.is_dir():
        raise InputError(f"out {str(out_path)!r} is a folder; give a checkpoint file name like model.pt")
    device = torch.device(device)

    # ---- the Teacher: its classes and preprocessing ----
    teacher_model = t_meta = None
    if teacher is not None:
        if not pathlib.Path(teacher).is_file():
            raise CheckpointError(f"Teacher checkpoint {str(teacher)!r} does not exist; train one first "
                                  "(without a teacher)")
        teacher_model, t_meta = load_checkpoint(teacher, arch=teacher_arch, map_location=device)
        t_prep = checkpoint_preprocessing(t_meta)
        for key in ("image_size", "normalize"):
            mine, theirs = getattr(recipe, key), t_prep[key]
            if mine is None:
                setattr(recipe, key, theirs)
            elif theirs is not None and mine != theirs:
                warn(f"the Teacher was trained with {key} {theirs}; the Student is trained with {mine}")
    if recipe.normalize is None and recipe.weights is not None:
        recipe.normalize = "imagenet"  # what torchvision's pretrained weights expect
    prep = Preprocessing(recipe.image_size, recipe.normalize or "none")

    # ---- data ----
    train_ds = load_data(data, "train", prep, augment=recipe.augment, limit=recipe.limit, download=download)
    test_ds = load_data(data, "test", prep, limit=test_limit, download=download)
    if len(train_ds) == 0 or len(test_ds) == 0:
        raise DataSpecError(f"data spec {data!r} has no {'training' if len(train_ds) == 0 else 'test'} images")
    class_names = [str(c) for c in getattr(train_ds, "classes", [])]
    if len(class_names) < 2:
        raise DataSpecError(f"data spec {data!r} has {len(class_names)} class(es); at least 2 are needed")
    num_classes = len(class_names)
    if t_meta is not None:
        t_names = t_meta.get("class_names")
        if t_meta.get("num_classes") not in (None, num_classes):
            raise CheckpointError(f"the Teacher checkpoint {str(teacher)!r} has {t_meta.get('num_classes')} classes, "
                                  f"the data {data!r} has {num_classes}; use a Teacher trained on the same classes")
        if t_names is not None and list(t_names) != class_names:
            raise CheckpointError(f"the Teacher checkpoint {str(teacher)!r} was trained on classes {list(t_names)}, "
                                  f"but {data!r} has {class_names}; use a Teacher trained on the same data")
        if recipe.method in ("attention", "overhaul"):
            from captum_unicam.models import stage_layers

            stage_layers(teacher_model)
    if recipe.labelled is not None:
        train_ds = labelled_subset(train_ds, recipe.labelled, seed=recipe.seed)
    fit_ds = train_ds
    if recipe.transfer is not None:
        fit_ds = load_data(recipe.transfer, "transfer", prep, augment=recipe.augment, download=download)
        if len(fit_ds) == 0:
            raise DataSpecError(f"transfer spec {recipe.transfer!r} holds no images")
    side = int(test_ds[0][0].shape[-1])
    recipe.image_size = side
    recipe.normalize = prep.normalize
    state = weights_name = None
    if recipe.weights is not None:
        state, weights_name = pretrained_state_dict(recipe.arch, recipe.weights, download=download, progress=progress)
    build_kwargs = {"cifar_stem": side <= 64}

    def build_one():
        m = build(recipe.arch, num_classes, recipe.seed, **build_kwargs)
        if state is not None:
            m._captum_unicam_skipped = _start_from(m, state)  # type: ignore[attr-defined]
        return m

    result: Dict[str, Any] = {}
    if folds is not None:
        train_kwargs = dict(teacher=teacher_model, method=recipe.method, lr=recipe.lr, optimizer=recipe.optimizer,
                            weight_decay=recipe.weight_decay, temperature=recipe.temperature, alpha=recipe.alpha,
                            beta=recipe.beta)
        cv = cross_validate(build_one, train_ds, k=folds, epochs=recipe.epochs, batch_size=recipe.batch_size,
                            seed=recipe.seed, device=device, progress=progress, **train_kwargs)
        result["cross_validation"] = {"k": folds, "accuracies": cv["accuracies"], "mean": cv["mean"], "std": cv["std"]}

    model = build_one()
    fit(model, fit_ds, recipe, teacher=teacher_model, unlabelled=recipe.transfer is not None, device=device,
        progress=progress)
    test_loader = DataLoader(test_ds, batch_size=256)
    acc = evaluate_accuracy(model, test_loader, device=device, progress=progress)
    recorded = recipe.to_dict()
    recorded.update(data=data, weights=weights_name,
                    weights_skipped=getattr(model, "_captum_unicam_skipped", None),
                    role="student" if teacher is not None else ("base" if recipe.labelled else "teacher or base"),
                    teacher=str(teacher) if teacher is not None else None)
    if hasattr(model, "_captum_unicam_skipped"):
        del model._captum_unicam_skipped
    extra = {"test_accuracy": acc, "train_size": len(fit_ds), "test_size": len(test_ds),
             "labelled_size": None if recipe.transfer is not None else len(train_ds)}
    if "cross_validation" in result:
        extra["cross_validation"] = result["cross_validation"]
    save_checkpoint(out_path, model, arch=recipe.arch, num_classes=num_classes, class_names=class_names,
                    recipe=recorded, kd_method=recipe.method, teacher=str(teacher) if teacher is not None else None,
                    extra=extra, build_kwargs=build_kwargs)
    result.update(path=str(out_path), arch=recipe.arch, num_classes=num_classes, class_names=class_names,
                  kd_method=recipe.method, teacher=str(teacher) if teacher is not None else None,
                  test_accuracy=acc, train_size=len(fit_ds), test_size=len(test_ds), recipe=recorded)
    return result
