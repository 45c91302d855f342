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

import os
import pathlib
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch.utils.data import DataLoader

from captum_unicam.errors import CheckpointError, DataSpecError, InputError
from captum_unicam.kd.recipe import Recipe, positive_int
from captum_unicam.kd.train import cross_validate, evaluate_accuracy, train_model
from captum_unicam.models import build_model, load_checkpoint, save_checkpoint, stage_layers
from captum_unicam.pipeline.data import Preprocessing, checkpoint_preprocessing, labelled_subset, load_data

__all__ = ["build", "fit", "train_checkpoint", "pretrained_state_dict"]

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


    g = torch.Generator().manual_seed(int(recipe.seed if order_seed is None else order_seed))
    loader = DataLoader(dataset, batch_size=min(recipe.batch_size, len(dataset)), shuffle=True, generator=g,
                        drop_last=len(dataset) > recipe.batch_size)
    return train_model(model, loader, recipe, teacher=teacher, unlabelled=unlabelled, device=device,
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
        recipe (Recipe): What to train and how (its ``image_size`` and ``normalize`` are
                    set to what was used).
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
        ``teacher``, ``test_accuracy``, ``train_size``, ``test_size``, ``recipe``
        (and ``cross_validation`` with ``folds``).

    Raises:
        InputError, DataSpecError, CheckpointError: bad recipe, data or Teacher; all
        before training starts.

    Examples::

        >>> train_checkpoint("imagefolder:/data/pets", Recipe("resnet18", image_size=32,
        ...                  labelled=300, epochs=20), "base.pt")
    """
    out_path = _check_request(recipe, out, teacher, folds, test_limit)
    device = torch.device(device)
    teacher_model, t_meta = _load_teacher(teacher, teacher_arch, recipe, device, warn)
    prep = Preprocessing(recipe.image_size, recipe.normalize or "none")
    sets = _datasets(data, recipe, prep, download, test_limit)
    class_names = sets["class_names"]
    if t_meta is not None:
        _check_teacher_classes(t_meta, teacher, teacher_model, data, class_names, recipe.method)
    side = int(sets["test"][0][0].shape[-1])
    recipe.image_size = side
    recipe.normalize = prep.normalize
    state = weights_name = None
    if recipe.weights is not None:
        state, weights_name = pretrained_state_dict(recipe.arch, recipe.weights, download=download, progress=progress)
    build_kwargs = {"cifar_stem": side <= 64}

    def build_one():
        m = build(recipe.arch, len(class_names), recipe.seed, **build_kwargs)
        skipped = _start_from(m, state) if state is not None else None
        return m, skipped

    cv = None
    if folds is not None:
        cv = cross_validate(lambda: build_one()[0], sets["train"], recipe, k=folds, teacher=teacher_model,
                            device=device, progress=progress)
        cv = {"k": folds, "accuracies": cv["accuracies"], "mean": cv["mean"], "std": cv["std"]}
    model, skipped = build_one()
    fit(model, sets["fit"], recipe, teacher=teacher_model, unlabelled=recipe.transfer is not None, device=device,
        progress=progress)
    acc = evaluate_accuracy(model, DataLoader(sets["test"], batch_size=256), device=device, progress=progress)
    teacher_name = str(teacher) if teacher is not None else None
    recorded = recipe.to_dict()
    recorded.update(data=data, weights=weights_name, weights_skipped=skipped,
                    role="student" if teacher is not None else ("base" if recipe.labelled else "teacher or base"),
                    teacher=teacher_name)
    extra = {"test_accuracy": acc, "train_size": len(sets["fit"]), "test_size": len(sets["test"]),
             "labelled_size": None if recipe.transfer is not None else len(sets["train"])}
    if cv is not None:
        extra["cross_validation"] = cv
    save_checkpoint(out_path, model, arch=recipe.arch, num_classes=len(class_names), class_names=class_names,
                    recipe=recorded, kd_method=recipe.method, teacher=teacher_name, extra=extra,
                    build_kwargs=build_kwargs)
    result: Dict[str, Any] = {} if cv is None else {"cross_validation": cv}
    result.update(path=str(out_path), arch=recipe.arch, num_classes=len(class_names), class_names=class_names,
                  kd_method=recipe.method, teacher=teacher_name, test_accuracy=acc, train_size=len(sets["fit"]),
                  test_size=len(sets["test"]), recipe=recorded)
    return result


def _check_request(recipe: Recipe, out, teacher, folds, test_limit) -> pathlib.Path:
    recipe.check(has_teacher=teacher is not None)
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
        raise InputError(f"folds must be an int >= 2, got {folds!r}")
    if test_limit is not None:
        positive_int(test_limit, "test_limit")
    out_path = pathlib.Path(out)
    if out_path.is_dir():
        raise InputError(f"out {str(out_path)!r} is a folder; give a checkpoint file name like model.pt")
    return out_path


def _load_teacher(teacher, teacher_arch, recipe: Recipe, device, warn):
    """The Teacher and its metadata (None, None without one); the recipe takes the
    Teacher's image size and normalisation where it sets none (a warning where it differs)."""
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
    else:
        teacher_model = t_meta = None
    if recipe.normalize is None and recipe.weights is not None:
        recipe.normalize = "imagenet"  # what torchvision's pretrained weights expect
    return teacher_model, t_meta


def _datasets(data: str, recipe: Recipe, prep: Preprocessing, download: bool, test_limit) -> Dict[str, Any]:
    """``train`` (labelled, after ``labelled``), ``fit`` (what is trained on: ``train`` or
    the transfer set), ``test`` and the ``class_names``."""
    train_ds = load_data(data, "train", prep, augment=recipe.augment, limit=recipe.limit, download=download)
    test_ds = load_data(data, "test", prep, limit=test_limit, download=download)
    if len(train_ds) == 0 or len(test_ds) == 0:
        raise DataSpecError(f"data spec {data!r} has no {'training' if len(train_ds) == 0 else 'test'} images")
    class_names = [str(c) for c in getattr(train_ds, "classes", [])]
    if len(class_names) < 2:
        raise DataSpecError(f"data spec {data!r} has {len(class_names)} class(es); at least 2 are needed")
    if recipe.labelled is not None:
        train_ds = labelled_subset(train_ds, recipe.labelled, seed=recipe.seed)
    fit_ds = train_ds
    if recipe.transfer is not None:
        fit_ds = load_data(recipe.transfer, "transfer", prep, augment=recipe.augment, download=download)
        if len(fit_ds) == 0:
            raise DataSpecError(f"transfer spec {recipe.transfer!r} holds no images")
    return {"train": train_ds, "fit": fit_ds, "test": test_ds, "class_names": class_names}


def _check_teacher_classes(t_meta, teacher, teacher_model, data: str, class_names, method) -> None:
    t_names = t_meta.get("class_names")
    if t_meta.get("num_classes") not in (None, len(class_names)):
        raise CheckpointError(f"the Teacher checkpoint {str(teacher)!r} has {t_meta.get('num_classes')} classes, "
                              f"the data {data!r} has {len(class_names)}; use a Teacher trained on the same classes")
    if t_names is not None and list(t_names) != class_names:
        raise CheckpointError(f"the Teacher checkpoint {str(teacher)!r} was trained on classes {list(t_names)}, "
                              f"but {data!r} has {class_names}; use a Teacher trained on the same data")
    if method in ("attention", "overhaul"):
        stage_layers(teacher_model)
