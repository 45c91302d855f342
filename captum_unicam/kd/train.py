r"""Training Teachers, Bases and Students: plain, with each KD method, in
Teacher-assistant chains and with k-fold splits.

- :func:`train_model` trains one model on data alone (a Teacher or a Base) or by
  distillation from a Teacher (a Student) with one of :data:`KD_METHODS`:

  ============= =================================================================
  method        loss (labelled data; ``unlabelled=True`` replaces the cross-entropy
                by the response-KD term, the only supervision left)
  ============= =================================================================
  None          :math:`\mathrm{CE}(z_s, y)`
  ``response``  :math:`(1-\alpha)\,\mathrm{CE} + \alpha\,T^2\,\mathrm{KL}` (Hinton et al.)
  ``attention`` :math:`\mathrm{CE} + \frac{\beta}{2}\sum_j \lVert Q^S_j - Q^T_j\rVert^2`
                over L1..L4, :math:`\beta = 10^3` (Zagoruyko & Komodakis)
  ``overhaul``  :math:`\mathrm{CE} + \beta\,\ell_\text{overhaul}`, :math:`\beta = 10^{-3}`
                (Heo et al.; connectors are trained with the Student)
  ============= =================================================================

- :func:`train_teacher_assistant_chain` trains a Teacher, then each next architecture
  by distillation from the previous one (R101 -> R50 -> R18 in the paper).
- :func:`kfold_indices` and :func:`cross_validate` give seeded k-fold splits and scores.

**Determinism.** Training runs inside :func:`torch.random.fork_rng` seeded with
``seed``: the same model, data, seed and arguments give bit-identical weights on the
same machine, and the caller's global random state is left untouched. Models are moved
to ``device``; their train / eval modes are restored on return (also after an error).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from captum_unicam.errors import InputError
from captum_unicam.kd.losses import OverhaulDistiller, attention_transfer_loss, response_kd_loss
from captum_unicam.kd.recipe import Recipe, positive_int
from captum_unicam.models import ARCHITECTURES, build_model, stage_layers
from captum_unicam.output.tables import KD_METHODS

__all__ = [
    "KD_METHODS",
    "Recipe",
    "train_model",
    "evaluate_accuracy",
    "train_teacher_assistant_chain",
    "kfold_indices",
    "cross_validate",
    "first_nonfinite_module",
]

#: SGD's (Nesterov) momentum.
MOMENTUM = 0.9


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _split_batch(batch: Any, labelled: bool) -> Tuple[Tensor, Optional[Tensor]]:
    if isinstance(batch, Tensor):
        if labelled:
            raise InputError(
                "the loader yields bare tensors without labels; pass unlabelled=True with "
                "a teacher to distil on unlabelled data, or yield (inputs, labels) batches"
            )
        return batch, None
    if not isinstance(batch, (tuple, list)) or not batch or not isinstance(batch[0], Tensor):
        raise InputError(
            "each batch must be a tensor of inputs or a tuple (inputs, labels, ...); got "
            f"{type(batch).__name__}"
        )
    if not labelled:
        return batch[0], None
    if len(batch) < 2:
        raise InputError("labelled training needs (inputs, labels) batches")
    return batch[0], torch.as_tensor(batch[1])


@contextlib.contextmanager
def _capture(modules: Sequence[nn.Module]) -> Iterator[List[Optional[Tensor]]]:
    """Forward hooks keeping the latest output of each module; removed on exit."""
    store: List[Optional[Tensor]] = [None] * len(modules)
    handles = []

    def make(j: int) -> Callable:
        def hook(module: nn.Module, args: Any, output: Tensor) -> None:
            store[j] = output

        return hook

    try:
        for j, m in enumerate(modules):
            handles.append(m.register_forward_hook(make(j)))
        yield store
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _modes(*models: Optional[nn.Module]) -> Iterator[None]:
    """Restores the train / eval mode of every sub-module on exit."""
    saved = [[(m, m.training) for m in model.modules()] for model in models if model is not None]
    try:
        yield
    finally:
        for entries in saved:
            for m, flag in entries:
                m.training = flag


def _rng_devices(device: torch.device) -> List[int]:
    if device.type == "cuda" and torch.cuda.is_available():
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


def _tqdm(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


# ---------------------------------------------------------------------------
# training and evaluation
# ---------------------------------------------------------------------------


def train_model(
    model: nn.Module,
    train_loader: Any,
    recipe: Recipe,
    *,
    teacher: Optional[nn.Module] = None,
    unlabelled: bool = False,
    layers: Optional[Sequence[Tuple[nn.Module, nn.Module]]] = None,
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
    desc: Optional[str] = None,
) -> nn.Module:
    r"""Trains ``model`` in place by ``recipe``, on data alone or by distillation from ``teacher``.

    Args:

        model (nn.Module): The model to train (Teacher, Base or Student).
        train_loader (iterable): Batches ``(inputs, labels, ...)`` (extra items, such
                    as the controlled dataset's masks, are ignored), or bare input
                    tensors when ``unlabelled=True``. A ``DataLoader`` with
                    ``shuffle=True`` is reshuffled deterministically from ``recipe.seed``.
        recipe (Recipe): The training fields: ``epochs``, ``optimizer`` (``"sgd"``:
                    Nesterov momentum 0.9; ``"adam"``: AdamW), ``lr`` (peak of a cosine
                    decay to 0 over all steps), ``weight_decay``, ``method`` (required
                    with a teacher), ``temperature``, ``alpha``, ``beta`` and ``seed``.
        teacher (nn.Module, optional): The Teacher, kept frozen in eval mode.
                    Default: None (train on data alone)
        unlabelled (bool, optional): The loader's labels are ignored (a transfer set):
                    needs a teacher, and the response-KD term replaces the
                    cross-entropy. Default: False
        layers (sequence of (nn.Module, nn.Module), optional): (student, teacher)
                    block pairs of the feature methods. Default: L1..L4 of both
                    (``captum_unicam.models.stage_layers``).
        device (str or torch.device, optional): Device to train on; ``model`` and
                    ``teacher`` are moved there. Default: "cpu"
        progress (bool, optional): Show a tqdm progress bar. Default: True
        desc (str, optional): Label of the progress bar.

    Returns:
        *nn.Module*: ``model``, trained, in the train / eval mode it had on entry.

    Raises:
        InputError: a bad recipe (unknown method, method without teacher or teacher
        without method, bad numbers), or batches without labels for labelled training;
        raised before any training step. During training, a loss that becomes NaN or
        Inf: the message names the step and, when the Teacher's outputs are at fault, the
        first of its modules whose output is not finite (else it advises a lower ``lr``).

    Examples::

        >>> teacher = train_model(build_model("small_resnet_l", 4), loader, Recipe(epochs=10))
        >>> student = train_model(build_model("small_resnet_s", 4), transfer_loader,
        ...                       Recipe(epochs=10, method="response"), teacher=teacher,
        ...                       unlabelled=True)
    """
    steps_per_epoch = _check_training(model, train_loader, recipe, teacher, unlabelled)
    device = torch.device(device)
    model.to(device)
    if teacher is not None:
        teacher.to(device)
    layer_pairs = _layer_pairs(model, teacher, recipe.method, layers)
    with _modes(model, teacher), torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(recipe.seed)
        distiller = None
        if recipe.method == "overhaul":
            distiller = OverhaulDistiller(model, teacher, layer_pairs).to(device)
        params = list(model.parameters()) + (list(distiller.parameters()) if distiller else [])
        opt, sched = _optimizer(params, recipe, recipe.epochs * steps_per_epoch)
        model.train()
        if distiller is not None:
            distiller.train()
        if teacher is not None:
            teacher.eval()
        step = functools.partial(
            _step_loss,
            model,
            teacher,
            recipe.method,
            distiller,
            layer_pairs,
            alpha=float(recipe.alpha),
            temperature=float(recipe.temperature),
            beta=recipe.feature_beta(),
        )
        bar = _tqdm(
            recipe.epochs * steps_per_epoch,
            desc or ("student" if teacher is not None else "train"),
            progress,
        )
        try:
            for epoch in range(recipe.epochs):
                _one_epoch(
                    train_loader,
                    step,
                    opt,
                    sched,
                    bar,
                    epoch,
                    unlabelled,
                    device,
                    teacher,
                    recipe.epochs * steps_per_epoch,
                )
        finally:
            bar.close()
    return model


def _check_training(
    model: Any, train_loader: Any, recipe: Recipe, teacher: Any, unlabelled: bool
) -> int:
    """Every check of :func:`train_model` before any step; returns the steps per epoch."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise InputError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    if not isinstance(recipe, Recipe):
        raise InputError(f"recipe must be a captum_unicam.kd.Recipe, got {type(recipe).__name__}")
    recipe.check_training(has_teacher=teacher is not None)
    if unlabelled and teacher is None:
        raise InputError(
            "unlabelled=True needs a teacher: without labels only distillation can train"
        )
    try:
        steps_per_epoch = len(train_loader)
    except TypeError:
        raise InputError(
            "train_loader must have a length (a DataLoader or a list of batches)"
        ) from None
    if steps_per_epoch < 1:
        raise InputError("train_loader is empty; give it at least one batch")
    return steps_per_epoch


def _layer_pairs(
    model: nn.Module,
    teacher: Optional[nn.Module],
    method: Optional[str],
    layers: Optional[Sequence[Tuple[nn.Module, nn.Module]]],
) -> List[Tuple[nn.Module, nn.Module]]:
    if layers is not None:
        return [tuple(p) for p in layers]  # type: ignore[misc]
    if method in ("attention", "overhaul"):
        s_st, t_st = stage_layers(model), stage_layers(teacher)
        return [(s_st[k], t_st[k]) for k in s_st]
    return []


def _optimizer(params: List[Tensor], recipe: Recipe, total: int):
    """The optimiser of the recipe and its cosine learning-rate schedule over ``total`` steps."""
    if recipe.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=recipe.lr, momentum=MOMENTUM, weight_decay=recipe.weight_decay, nesterov=True
        )
    else:
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    )
    return opt, sched


def _one_epoch(
    train_loader,
    step,
    opt,
    sched,
    bar,
    epoch: int,
    unlabelled: bool,
    device: torch.device,
    teacher: Optional[nn.Module] = None,
    total: int = 0,
) -> None:
    for batch in train_loader:
        x, y = _split_batch(batch, labelled=not unlabelled)
        x = x.to(device)
        y = y.to(device) if y is not None else None
        loss = step(x, y)
        if not torch.isfinite(loss):
            raise _diverged(loss, x, teacher, sched.last_epoch + 1, total, epoch, opt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)


def first_nonfinite_module(model: nn.Module, inputs: Tensor) -> Optional[str]:
    r"""The name of the first module (in the order they run) whose output holds NaN or Inf
    on ``inputs``, ``""`` for the model's own output, or None when every output is finite.

    One forward pass under ``torch.no_grad()`` with temporary hooks (removed on return);
    the model's modes are restored.
    """
    names = {m: n for n, m in model.named_modules() if n}
    found: List[str] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if not found and isinstance(output, Tensor) and not bool(torch.isfinite(output).all()):
            found.append(names.get(module, ""))

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with _modes(model), torch.no_grad():
            model.eval()
            out = model(inputs)
    finally:
        for h in handles:
            h.remove()
    if found:
        return found[0]
    return "" if not bool(torch.isfinite(out).all()) else None


def _diverged(
    loss: Tensor, x: Tensor, teacher: Optional[nn.Module], step: int, total: int, epoch: int, opt
) -> InputError:
    """The one-line error of a non-finite loss: the Teacher's outputs, or the training."""
    where = f"at step {step} of {total} (epoch {epoch + 1})"
    culprit = first_nonfinite_module(teacher, x) if teacher is not None else None
    if culprit is not None:
        module = f"module {culprit!r}" if culprit else "its final output"
        return InputError(
            f"the Teacher's outputs hold NaN or Inf {where}, first at {module}: its weights give "
            "non-finite outputs on these images (check the Teacher's weights, e.g. its BatchNorm "
            "running statistics, and its preprocessing); a lower learning rate cannot help"
        )
    lr = opt.param_groups[0].get("lr")
    return InputError(
        f"training diverged {where}: the loss became {loss.item()} (learning rate then "
        f"{lr:.3g}); lower the learning rate (lr=) or, with a Teacher, the weight of the KD "
        "term (alpha=)"
    )


def _step_loss(
    model, teacher, method, distiller, layer_pairs, x, y, *, alpha, temperature, beta
) -> Tensor:
    if teacher is None:
        return F.cross_entropy(model(x), y)
    if method == "overhaul":
        out = distiller(x)
        s_logits, t_logits, feat = out.student_logits, out.teacher_logits, beta * out.loss
    elif method == "attention":
        with _capture([p[1] for p in layer_pairs]) as t_store:
            with torch.no_grad():
                t_logits = teacher(x)
        with _capture([p[0] for p in layer_pairs]) as s_store:
            s_logits = model(x)
        feat = beta / 2 * attention_transfer_loss(list(s_store), list(t_store))
    else:
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = model(x)
        feat = None
    if s_logits.shape != t_logits.shape:
        raise InputError(
            f"Student logits {tuple(s_logits.shape)} and Teacher logits {tuple(t_logits.shape)} "
            "differ: Student and Teacher must have the same number of classes"
        )
    kd = response_kd_loss(s_logits, t_logits, temperature)
    if y is None:
        base = kd
    elif method == "response":
        base = (1 - alpha) * F.cross_entropy(s_logits, y) + alpha * kd
    else:
        base = F.cross_entropy(s_logits, y)
    return base if feat is None else base + feat


def evaluate_accuracy(
    model: nn.Module,
    loader: Any,
    *,
    device: Union[str, torch.device] = "cpu",
    progress: bool = False,
) -> float:
    r"""Top-1 accuracy of ``model`` over ``loader``'s ``(inputs, labels, ...)`` batches.

    The model runs in eval mode under ``torch.no_grad()``; its mode is restored.

    Returns:
        *float*: the fraction of correct predictions, in [0, 1].
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    device = torch.device(device)
    correct = total = 0
    with _modes(model), torch.no_grad():
        model.eval()
        n = len(loader) if hasattr(loader, "__len__") else None
        bar = _tqdm(n or 0, "evaluate", progress)
        try:
            for batch in loader:
                x, y = _split_batch(batch, labelled=True)
                pred = model(x.to(device)).argmax(dim=1).cpu()
                correct += int((pred == y.view(-1).cpu()).sum())
                total += int(y.numel())
                bar.update(1)
        finally:
            bar.close()
    if total == 0:
        raise InputError("the evaluation loader is empty")
    return correct / total


# ---------------------------------------------------------------------------
# Teacher-assistant chains and k-fold
# ---------------------------------------------------------------------------


def train_teacher_assistant_chain(
    train_loader: Any,
    recipe: Recipe,
    *,
    num_classes: int,
    archs: Sequence[str] = ("resnet101", "resnet50", "resnet18"),
    epochs: Optional[Sequence[int]] = None,
    build_kwargs: Optional[Dict[str, Any]] = None,
    transfer_loader: Any = None,
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
) -> List[nn.Module]:
    r"""Teacher-assistant KD (Mirzadeh et al. 2020): a chain Teacher -> assistant(s) -> Student.

    The first architecture is trained on ``train_loader`` with cross-entropy; each next
    one is distilled from the one before with ``recipe.method`` (default ``"response"``),
    on ``transfer_loader`` (unlabelled) when given, else on ``train_loader`` (labelled).

    Args:

        train_loader (iterable): Labelled batches ``(inputs, labels, ...)``.
        recipe (Recipe): The training of every link (:func:`train_model`); model ``i`` is
                    built and trained with seed ``recipe.seed + i``.
        num_classes (int): Number of classes of every model.
        archs (sequence of str, optional): At least two architectures of
                    ``captum_unicam.models.ARCHITECTURES``, largest first.
                    Default: ("resnet101", "resnet50", "resnet18"), the paper's chain
        epochs (sequence of int, optional): Epochs of each model. Default: ``recipe.epochs``
        build_kwargs (dict, optional): Keywords of ``build_model`` (e.g.
                    ``{"cifar_stem": True}``).
        transfer_loader (iterable, optional): Unlabelled data for the distilled links.
        device, progress: As in :func:`train_model`.

    Returns:
        *list[nn.Module]*: the trained models, in the order of ``archs`` (Teacher,
        assistant(s), Student).

    Examples::

        >>> teacher, assistant, student = train_teacher_assistant_chain(
        ...     loader, Recipe(epochs=5), num_classes=10,
        ...     archs=("small_resnet_l", "small_resnet_m", "small_resnet_s"))
    """
    archs = list(archs)
    if len(archs) < 2:
        raise InputError("a Teacher-assistant chain needs at least two architectures")
    for a in archs:
        if a not in ARCHITECTURES:
            raise InputError(f"unknown architecture {a!r}; choose from {', '.join(ARCHITECTURES)}")
    method = recipe.method or "response"
    epoch_list = [recipe.epochs] * len(archs) if epochs is None else list(epochs)
    if len(epoch_list) != len(archs):
        raise InputError(f"epochs has {len(epoch_list)} entries for {len(archs)} architectures")
    for e in epoch_list:
        positive_int(e, "epochs")
    models: List[nn.Module] = []
    for i, (arch, ep) in enumerate(zip(archs, epoch_list)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed + i)
            model = build_model(arch, num_classes, **(build_kwargs or {}))
        prev = models[-1] if models else None
        loader = train_loader if prev is None or transfer_loader is None else transfer_loader
        link = dataclasses.replace(
            recipe,
            arch=arch,
            epochs=ep,
            seed=recipe.seed + i,
            method=None if prev is None else method,
        )
        train_model(
            model,
            loader,
            link,
            teacher=prev,
            unlabelled=prev is not None and transfer_loader is not None,
            device=device,
            progress=progress,
            desc=f"{arch} ({i + 1}/{len(archs)})",
        )
        models.append(model)
    return models


def kfold_indices(n: int, k: int, seed: int = 0) -> List[Tuple[List[int], List[int]]]:
    r"""Seeded k-fold split of ``range(n)``.

    The indices are shuffled with ``seed`` and cut into ``k`` folds whose sizes differ
    by at most one; fold ``i`` is the validation set of split ``i`` and the rest, in
    increasing order, its training set.

    Returns:
        *list[tuple[list[int], list[int]]]*: ``k`` pairs ``(train_idx, val_idx)``; the
        validation sets are disjoint and cover ``range(n)``.
    """
    n = int(n)
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise InputError(f"k must be an int >= 2, got {k!r}")
    if n < k:
        raise InputError(f"cannot split {n} items into {k} folds; use k <= n")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    out = []
    start = 0
    for size in sizes:
        val = sorted(perm[start : start + size])
        val_set = set(val)
        train = [i for i in range(n) if i not in val_set]
        out.append((train, val))
        start += size
    return out


def cross_validate(
    build: Callable[[], nn.Module],
    dataset: Dataset,
    recipe: Recipe,
    *,
    k: int = 5,
    teacher: Optional[nn.Module] = None,
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
) -> Dict[str, Any]:
    r"""k-fold cross-validation: trains ``build()`` on each training part by ``recipe`` and
    scores it on the held-out fold (the paper trains with 5-fold cross-validation).

    Args:

        build (callable): Returns a fresh model; called once per fold, with the
                    global seed set to ``recipe.seed + fold``.
        dataset (Dataset): Labelled items ``(input, label, ...)``.
        recipe (Recipe): The training of each fold (:func:`train_model`), in batches of
                    ``recipe.batch_size``, with seed ``recipe.seed + fold``.
        k (int, optional): Number of folds. Default: 5
        teacher (nn.Module, optional): Distil from it (``recipe.method``).
        device, progress: As in :func:`train_model`.

    Returns:
        *dict*: ``accuracies`` (one per fold), ``mean``, ``std`` (sample standard
        deviation) and ``folds`` (the :func:`kfold_indices` splits).
    """
    seed = recipe.seed
    splits = kfold_indices(len(dataset), k, seed)
    accs = []
    for fold, (tr, va) in enumerate(splits):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + fold)
            model = build()
        g = torch.Generator().manual_seed(seed + fold)
        tl = DataLoader(
            Subset(dataset, tr), batch_size=recipe.batch_size, shuffle=True, generator=g
        )
        vl = DataLoader(Subset(dataset, va), batch_size=recipe.batch_size)
        train_model(
            model,
            tl,
            dataclasses.replace(recipe, seed=seed + fold),
            teacher=teacher,
            device=device,
            progress=progress,
            desc=f"fold {fold + 1}/{k}",
        )
        accs.append(evaluate_accuracy(model, vl, device=device))
    mean = sum(accs) / len(accs)
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1))
    return {"accuracies": accs, "mean": mean, "std": std, "folds": splits}
