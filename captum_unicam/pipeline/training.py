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
  and normalisation unless the recipe sets them (then a warning). An image folder given
  as the transfer set without ``train/`` and ``test/`` sub-folders is used whole.

Nothing is wasted and nothing is lost: before any step, every image file of the train,
test and transfer data is checked from its header, the Teacher is run on one batch (NaN
or Inf outputs are named), and the checkpoint's destination is checked (not inside
anything the run reads, no existing file without ``overwrite``, never a device or FIFO,
enough free space for the checkpoint); the checkpoint is then written exclusively (or
over a regular file with ``overwrite``), and a write that fails after training keeps the
trained model in the system's temporary folder and says where.

A run that did too little says so (a warning, also recorded in the checkpoint's
``extra["warnings"]``): fewer than :data:`MIN_STEPS` optimisation steps, or a training
accuracy at the end within :data:`CHANCE_MARGIN` of chance (for a Student distilled on a
transfer set, whose labels are never read, the test accuracy).
"""

from __future__ import annotations

import os
import pathlib
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch.utils.data import DataLoader, Dataset

from captum_unicam.data import check_images, load_dataset, spec_paths
from captum_unicam.data.loaders import IMAGENET_MEAN, IMAGENET_STD
from captum_unicam.errors import CheckpointError, DataSpecError, InputError
from captum_unicam.kd.recipe import Recipe, positive_int
from captum_unicam.kd.train import (
    cross_validate,
    evaluate_accuracy,
    first_nonfinite_module,
    train_model,
)
from captum_unicam.models import (
    build_model,
    check_writable,
    checkpoint_size,
    load_checkpoint,
    save_checkpoint,
    stage_layers,
)
from captum_unicam.pipeline.batches import labels_of
from captum_unicam.pipeline.data import (
    Preprocessing,
    checkpoint_preprocessing,
    labelled_subset,
    load_data,
)

__all__ = [
    "build",
    "fit",
    "train_checkpoint",
    "pretrained_state_dict",
    "training_steps",
    "MIN_STEPS",
    "CHANCE_MARGIN",
    "TrainingWarning",
]


class TrainingWarning(UserWarning):
    """A training run that did too little: too few steps, or a fit near chance."""


def _warn_training(line: str) -> None:
    warnings.warn(line, TrainingWarning, stacklevel=3)


#: A run of fewer optimisation steps is too short to fit a model: it is warned about.
MIN_STEPS = 100

#: A training accuracy at the end less than this far above chance (1 / classes; 0.05 =
#: 5 percentage points) means the model did not fit: it is warned about.
CHANCE_MARGIN = 0.05


def pretrained_state_dict(
    arch: str, name: str, *, download: bool = False, progress: bool = False
) -> Tuple[Dict[str, Any], str]:
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
        raise CheckpointError(
            f"pretrained weights {full} are not in the local torch cache ({path}); "
            "put the file there, or pass download=True to fetch it"
        )
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


def fit(
    model,
    dataset,
    recipe: Recipe,
    *,
    teacher=None,
    unlabelled: bool = False,
    order_seed: Optional[int] = None,
    device: Any = "cpu",
    progress: bool = True,
    desc: Optional[str] = None,
):
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
    loader = DataLoader(
        dataset,
        batch_size=min(recipe.batch_size, len(dataset)),
        shuffle=True,
        generator=g,
        drop_last=len(dataset) > recipe.batch_size,
    )  # as training_steps counts
    return train_model(
        model,
        loader,
        recipe,
        teacher=teacher,
        unlabelled=unlabelled,
        device=device,
        progress=progress,
        desc=desc or f"train {recipe.arch}",
    )


def training_steps(n_images: int, batch_size: int, epochs: int) -> Dict[str, int]:
    r"""The optimisation steps of :func:`fit`: batches of ``min(batch_size, n_images)``
    images, the last short batch dropped when there is more than one batch.

    Returns:
        *dict*: ``images``, ``batch_size``, ``epochs``, ``steps_per_epoch``, ``steps``
        and ``dropped`` (images left out of each epoch).

    Examples::

        >>> training_steps(100, 64, 15)["steps"]
        15
    """
    b = min(int(batch_size), int(n_images))
    per_epoch = n_images // b if n_images > batch_size else 1
    return {
        "images": int(n_images),
        "batch_size": b,
        "epochs": int(epochs),
        "steps_per_epoch": per_epoch,
        "steps": per_epoch * int(epochs),
        "dropped": int(n_images) - per_epoch * b,
    }


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
    overwrite: bool = False,
    warn: Callable[[str], None] = _warn_training,
    inform: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    r"""Trains one model by ``recipe`` on the data spec ``data`` and writes its checkpoint.

    Args:
        data (str): Data spec of the labelled data (its ``train`` split trains, its
                    ``test`` split measures the accuracy).
        recipe (Recipe): What to train and how (its ``image_size`` and ``normalize`` are
                    set to what was used).
        out (str or PathLike): Checkpoint file to write; never inside the data, the
                    transfer data or the Teacher's checkpoint.
        teacher (str or PathLike, optional): Teacher checkpoint: train a Student by
                    distillation. Default: None
        device, progress: Where to train; progress bars.
        download (bool, optional): Allow downloading CIFAR-10 or pretrained weights.
        folds (int, optional): Also run ``folds``-fold cross-validation first.
        test_limit (int, optional): Measure the test accuracy on this many images.
        teacher_arch (str, optional): Architecture of a plain state-dict Teacher.
        overwrite (bool, optional): Replace an existing regular file ``out`` (never a
                    folder, device or FIFO). Default: False
        warn (callable, optional): Receives one line per preprocessing override and per
                    doubt about the run (too few steps, a fit near chance). Default: a
                    :class:`TrainingWarning`
        inform (callable, optional): Receives the line ``"N images, B per batch, E epochs
                    = S steps"`` before training. Default: None (not shown)

    Returns:
        *dict*: ``path``, ``arch``, ``num_classes``, ``class_names``, ``kd_method``,
        ``teacher``, ``test_accuracy``, ``train_accuracy``, ``train_size``, ``test_size``,
        ``steps``, ``warnings``, ``recipe`` (and ``cross_validation`` with ``folds``).
        The checkpoint records the test accuracy as ``meta["accuracy"]``, the
        preprocessing as ``meta["preprocessing"]``, and ``extra["train_accuracy"]``,
        ``extra["steps"]``, ``extra["warnings"]``.

    Raises:
        InputError, DataSpecError, CheckpointError, OutputError: bad recipe, data,
        Teacher or destination; all before training starts. OutputError after training
        when the write fails (the message says where the trained model was kept).

    Examples::

        >>> train_checkpoint("imagefolder:/data/pets", Recipe("resnet18", image_size=32,
        ...                  labelled=300, epochs=20), "base.pt")
    """
    out_path = _check_request(recipe, out, teacher, folds, test_limit)
    reads = (
        spec_paths(data)
        + (spec_paths(recipe.transfer) if recipe.transfer else [])
        + ([pathlib.Path(teacher)] if teacher is not None else [])
    )
    # before anything is loaded; again with the checkpoint's size once the model is built
    check_writable(out_path, overwrite=overwrite, forbidden_roots=reads)
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
        state, weights_name = pretrained_state_dict(
            recipe.arch, recipe.weights, download=download, progress=progress
        )
    build_kwargs = {"cifar_stem": side <= 64}

    def build_one():
        m = build(recipe.arch, len(class_names), recipe.seed, **build_kwargs)
        skipped = _start_from(m, state) if state is not None else None
        return m, skipped

    model, skipped = build_one()
    out_path = check_writable(
        out_path, overwrite=overwrite, estimated_bytes=checkpoint_size(model), forbidden_roots=reads
    )
    if teacher_model is not None:
        _check_teacher_outputs(teacher_model, sets["fit_eval"], teacher, recipe.batch_size, device)
    steps = training_steps(len(sets["fit"]), recipe.batch_size, recipe.epochs)
    doubts = _announce(steps, inform, warn)
    cv = None
    if folds is not None:
        cv = cross_validate(
            lambda: build_one()[0],
            sets["train"],
            recipe,
            k=folds,
            teacher=teacher_model,
            device=device,
            progress=progress,
        )
        cv = {"k": folds, "accuracies": cv["accuracies"], "mean": cv["mean"], "std": cv["std"]}
    fit(
        model,
        sets["fit"],
        recipe,
        teacher=teacher_model,
        unlabelled=recipe.transfer is not None,
        device=device,
        progress=progress,
    )
    acc = evaluate_accuracy(
        model, DataLoader(sets["test"], batch_size=256), device=device, progress=progress
    )
    train_acc = None
    if recipe.transfer is None:
        train_acc = evaluate_accuracy(
            model, DataLoader(sets["fit_eval"], batch_size=256), device=device
        )
    doubts += _fit_doubts(train_acc, acc, len(class_names), warn)
    teacher_name = str(teacher) if teacher is not None else None
    recorded = recipe.to_dict()
    recorded.update(
        data=data,
        weights=weights_name,
        weights_skipped=skipped,
        role="student"
        if teacher is not None
        else ("base" if recipe.labelled else "teacher or base"),
        teacher=teacher_name,
    )
    extra = {
        "test_accuracy": acc,
        "train_accuracy": train_acc,
        "train_size": len(sets["fit"]),
        "test_size": len(sets["test"]),
        "steps": steps["steps"],
        "steps_per_epoch": steps["steps_per_epoch"],
        "warnings": doubts,
        "labelled_size": None if recipe.transfer is not None else len(sets["train"]),
    }
    if cv is not None:
        extra["cross_validation"] = cv
    save_checkpoint(
        out_path,
        model,
        arch=recipe.arch,
        num_classes=len(class_names),
        class_names=class_names,
        recipe=recorded,
        kd_method=recipe.method,
        teacher=teacher_name,
        extra=extra,
        build_kwargs=build_kwargs,
        preprocessing=_preprocessing(sets["test"], recipe),
        accuracy=acc,
        overwrite=overwrite,
    )
    result: Dict[str, Any] = {} if cv is None else {"cross_validation": cv}
    result.update(
        path=str(out_path),
        arch=recipe.arch,
        num_classes=len(class_names),
        class_names=class_names,
        kd_method=recipe.method,
        teacher=teacher_name,
        test_accuracy=acc,
        train_accuracy=train_acc,
        train_size=len(sets["fit"]),
        test_size=len(sets["test"]),
        steps=steps["steps"],
        warnings=doubts,
        recipe=recorded,
    )
    return result


def _announce(steps: Dict[str, int], inform, warn) -> List[str]:
    """The steps line (to ``inform``) and, for a run too short to fit, its warning."""
    dropped = (
        f" (the last {steps['dropped']} images of each epoch's order are left out: no short batch)"
        if steps["dropped"]
        else ""
    )
    if inform is not None:
        inform(
            f"{steps['images']} images, {steps['batch_size']} per batch, {steps['epochs']} "
            f"epochs = {steps['steps']} steps{dropped}"
        )
    if steps["steps"] >= MIN_STEPS:
        return []
    line = (
        f"this run trains only {steps['steps']} optimisation steps, fewer than {MIN_STEPS}: "
        "too few to fit a model; raise epochs= (or give more images, or a smaller "
        "batch_size=)"
    )
    warn(line)
    return [line]


def _fit_doubts(train_acc: Optional[float], test_acc: float, n_classes: int, warn) -> List[str]:
    """A warning when the accuracy that shows the fit (training accuracy; the test accuracy
    of a Student that read no labels) is within :data:`CHANCE_MARGIN` of chance."""
    chance = 1.0 / n_classes
    measured, what = (train_acc, "training") if train_acc is not None else (test_acc, "test")
    if measured - chance >= CHANCE_MARGIN:
        return []
    line = (
        f"the {what} accuracy at the end is {100 * measured:.1f} %, within "
        f"{100 * CHANCE_MARGIN:.0f} points of chance ({100 * chance:.1f} % for {n_classes} "
        "classes): the model did not fit; train longer (epochs=), or check lr= and the data"
    )
    warn(line)
    return [line]


def _preprocessing(test_ds: Dataset, recipe: Recipe) -> Dict[str, Any]:
    """What the checkpoint records as its ``preprocessing``: the data's image size and
    resize rule, the normalisation and the training augmentation."""
    prep = dict(_attribute(test_ds, "preprocessing") or {})
    return {
        "image_size": recipe.image_size,
        "resize": prep.get("resize"),
        "normalize": recipe.normalize,
        "augment": list(recipe.augment),
    }


def _attribute(ds: Any, name: str) -> Any:
    """``ds.<name>``, looked up through wrappers that keep their data set as ``.base``."""
    while ds is not None:
        value = getattr(ds, name, None)
        if value is not None:
            return value
        ds = getattr(ds, "base", None)
    return None


def _check_request(recipe: Recipe, out, teacher, folds, test_limit) -> pathlib.Path:
    recipe.check(has_teacher=teacher is not None)
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
        raise InputError(f"folds must be an int >= 2, got {folds!r}")
    if test_limit is not None:
        positive_int(test_limit, "test_limit")
    out_path = pathlib.Path(out).expanduser()
    if out_path.is_dir():
        raise InputError(
            f"out {str(out_path)!r} is a folder; give a checkpoint file name like model.pt"
        )
    return out_path


def _load_teacher(teacher, teacher_arch, recipe: Recipe, device, warn):
    """The Teacher and its metadata (None, None without one); the recipe takes the
    Teacher's image size and normalisation where it sets none (a warning where it differs)."""
    if teacher is not None:
        teacher_model, t_meta = load_checkpoint(teacher, arch=teacher_arch, map_location=device)
        t_prep = checkpoint_preprocessing(t_meta)
        for key in ("image_size", "normalize"):
            mine, theirs = getattr(recipe, key), t_prep[key]
            if mine is None:
                setattr(recipe, key, theirs)
            elif theirs is not None and mine != theirs:
                warn(
                    f"the Teacher was trained with {key} {theirs}; the Student is trained with {mine}"
                )
    else:
        teacher_model = t_meta = None
    if recipe.normalize is None and recipe.weights is not None:
        recipe.normalize = "imagenet"  # what torchvision's pretrained weights expect
    return teacher_model, t_meta


def _check_teacher_outputs(
    teacher_model, fit_ds: Dataset, teacher, batch_size: int, device
) -> None:
    """The Teacher's outputs on the first training batch hold no NaN or Inf (its weights
    are finite: load_checkpoint refuses those), before any step."""
    n = min(int(batch_size), len(fit_ds))
    x = torch.stack([fit_ds[i][0] for i in range(n)]).to(device)
    culprit = first_nonfinite_module(teacher_model, x)
    if culprit is None:
        return
    module = f"module {culprit!r}" if culprit else "its final output"
    raise CheckpointError(
        f"the Teacher checkpoint {str(teacher)!r} gives NaN or Inf outputs on "
        f"the first {n} training images, first at {module}, although its "
        "weights are finite (check its BatchNorm running statistics and its "
        "preprocessing); give a Teacher that works on these images"
    )


def _datasets(
    data: str, recipe: Recipe, prep: Preprocessing, download: bool, test_limit
) -> Dict[str, Any]:
    """``train`` (labelled, after ``labelled``), ``fit`` (what is trained on: ``train`` or
    the transfer set, with the recipe's augmentation), ``fit_eval`` (the same without
    augmentation), ``test`` and the ``class_names``; every image file checked first."""
    augment = tuple(recipe.augment)
    # augmented images are normalised after the augmentation (a crop pads with black)
    fit_prep = Preprocessing(prep.image_size, "none") if augment else prep
    train_ds = load_data(data, "train", fit_prep, limit=recipe.limit, download=download)
    test_ds = load_data(data, "test", prep, limit=test_limit, download=download)
    if len(train_ds) == 0 or len(test_ds) == 0:
        raise DataSpecError(
            f"data spec {data!r} has no {'training' if len(train_ds) == 0 else 'test'} images"
        )
    class_names = [str(c) for c in getattr(train_ds, "classes", [])]
    if len(class_names) < 2:
        raise DataSpecError(
            f"data spec {data!r} has {len(class_names)} class(es); at least 2 are needed"
        )
    transfer_ds = None
    if recipe.transfer is not None:
        transfer_ds = _transfer_set(recipe.transfer, fit_prep, download)
    for ds in (train_ds, test_ds, transfer_ds):
        if ds is not None:
            check_images(ds)  # headers only: a damaged file anywhere is named before any epoch
    if recipe.labelled is not None:
        train_ds = labelled_subset(train_ds, recipe.labelled, seed=recipe.seed)
    base = train_ds if transfer_ds is None else transfer_ds
    if augment:  # "train" also feeds cross-validation: augmented and normalised as "fit"
        train_ds = _Augmented(train_ds, augment, prep.normalize)
        fit_ds = train_ds if transfer_ds is None else _Augmented(base, augment, prep.normalize)
        fit_eval = _Augmented(base, (), prep.normalize)
    else:
        fit_ds = fit_eval = base
    return {
        "train": train_ds,
        "fit": fit_ds,
        "fit_eval": fit_eval,
        "test": test_ds,
        "class_names": class_names,
    }


def _transfer_set(spec: str, prep: Preprocessing, download: bool) -> Dataset:
    """The transfer set: an image folder without ``train/`` and ``test/`` (or ``val/``)
    sub-folders is read whole (every image below it, labels never read); any other spec
    gives its ``transfer`` split."""
    roots = spec_paths(spec)
    scheme = spec.strip().partition(":")[0].lower()
    if scheme == "imagefolder" and roots:
        parts = [p for p in ("train", "test", "val") if (roots[0] / p).is_dir()]
        if "train" not in parts or len(parts) < 2:
            return load_dataset(
                spec,
                "transfer",
                image_size=prep.image_size,
                normalize=prep.normalize == "imagenet",
                unlabelled=True,
            )
    ds = load_data(spec, "transfer", prep, download=download)
    if len(ds) == 0:
        raise DataSpecError(f"transfer spec {spec!r} holds no images")
    return ds


class _Augmented(Dataset):
    """Items of ``base`` (images in [0, 1]) with the training augmentation ``augment``
    (random horizontal ``flip``; random ``crop`` after zero padding by 1/8 of the side,
    4 pixels at 32 px), then the normalisation; drawn from torch's global generator,
    which training seeds."""

    def __init__(self, base: Dataset, augment: Tuple[str, ...], normalize: str) -> None:
        self.base, self.augment, self.normalize = base, tuple(augment), normalize
        for name in ("classes", "class_to_idx", "root", "split"):
            if hasattr(base, name):
                setattr(self, name, getattr(base, name))
        self.preprocessing = dict(
            _attribute(base, "preprocessing") or {}, normalize=normalize, augment=list(self.augment)
        )
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    @property
    def targets(self) -> List[int]:
        return labels_of(self.base)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        item = self.base[i]
        x = item[0]
        if "flip" in self.augment and torch.rand(()) < 0.5:
            x = x.flip(-1)
        if "crop" in self.augment:
            h, w = x.shape[-2:]
            pad = max(1, h // 8)
            padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
            top = int(torch.randint(0, 2 * pad + 1, ()))
            left = int(torch.randint(0, 2 * pad + 1, ()))
            x = padded[..., top : top + h, left : left + w]
        if self.normalize == "imagenet":
            x = (x - self._mean) / self._std
        return (x,) + tuple(item[1:])


def _check_teacher_classes(t_meta, teacher, teacher_model, data: str, class_names, method) -> None:
    t_names = t_meta.get("class_names")
    if t_meta.get("num_classes") not in (None, len(class_names)):
        raise CheckpointError(
            f"the Teacher checkpoint {str(teacher)!r} has {t_meta.get('num_classes')} classes, "
            f"the data {data!r} has {len(class_names)}; use a Teacher trained on the same classes"
        )
    if t_names is not None and list(t_names) != class_names:
        raise CheckpointError(
            f"the Teacher checkpoint {str(teacher)!r} was trained on classes {list(t_names)}, "
            f"but {data!r} has {class_names}; use a Teacher trained on the same data"
        )
    if method in ("attention", "overhaul"):
        stage_layers(teacher_model)
