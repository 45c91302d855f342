r"""The commands of ``captum-unicam``, one function each: :func:`train`, :func:`explain`,
:func:`quantify`, :func:`compare` and :func:`demo`.

Each takes its typed request (:mod:`captum_unicam.pipeline.requests`), checks the output
(:func:`~captum_unicam.output.publish.check_output_dir` /
:func:`~captum_unicam.output.publish.check_output_file`: it may not be, hold or lie inside
anything the run reads) and every input before any long work, runs, and returns what it
wrote as :class:`Written` (the path and the one line the command prints). ``warn``
receives the lines a run continues with (a recorded preprocessing that is overridden);
the report states them too.

Examples::

    >>> from captum_unicam.pipeline import runs
    >>> from captum_unicam.pipeline.requests import QuantifyRequest
    >>> runs.quantify(QuantifyRequest(student="student.pt", base="base.pt", data="controlled",
    ...                               out="report"))
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from captum_unicam import comparison, models
from captum_unicam._distributed import join_process_group, leave_process_group, rank_and_world
from captum_unicam.data import data_summary
from captum_unicam.data.loaders import spec_paths
from captum_unicam.errors import InputError
from captum_unicam.kd.recipe import Recipe
from captum_unicam.kd.train import evaluate_accuracy
from captum_unicam.output.publish import check_output_dir, check_output_file, staged_folder
from captum_unicam.output.report import Report, write_report
from captum_unicam.pipeline import demo as demo_models
from captum_unicam.pipeline import evaluation, training
from captum_unicam.pipeline.batches import labels_of, stratified_loader, stratified_order
from captum_unicam.pipeline.data import PreprocessingWarning, load_data
from captum_unicam.pipeline.memory import check_image_memory
from captum_unicam.pipeline.pair import (
    Pair,
    load_pair,
    local_path,
    resolve_device,
    stratified_images,
)
from captum_unicam.pipeline.process import torch_threads
from captum_unicam.pipeline.requests import (
    CompareRequest,
    DemoRequest,
    ExplainRequest,
    PairRequest,
    QuantifyRequest,
    TrainRequest,
    in_flags,
)
from captum_unicam.pipeline.warning_lines import is_reported, one_line

__all__ = ["Written", "train", "explain", "quantify", "compare", "demo", "PROG"]

PROG = "captum-unicam"

Warn = Callable[[str], None]


@dataclasses.dataclass
class Written:
    r"""What a run wrote: ``path`` (a report folder or a checkpoint) and ``summary``, the one
    line the command prints."""

    path: Path
    summary: str


@contextlib.contextmanager
def recorded_warnings():
    r"""Every warning shown while the block runs, as one line each (the list it yields),
    still shown as before (on stderr, or as the command line shows them); for the
    report's warnings section and metrics.json. A warning the filters hide or turn into
    an error is not recorded."""
    lines: List[str] = []
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if is_reported(category):
            lines.append(one_line(message))
        return previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield lines
    finally:
        warnings.showwarning = previous


#: The warning lines of the run in progress (set by :func:`_recording`).
_RECORDED: contextvars.ContextVar = contextvars.ContextVar(
    "captum_unicam_run_warnings", default=None
)


def _recording(run):
    """Runs ``run`` under :func:`recorded_warnings`; :func:`_run_warnings` reads its lines."""

    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        with recorded_warnings() as lines:
            token = _RECORDED.set(lines)
            try:
                return run(*args, **kwargs)
            finally:
                _RECORDED.reset(token)

    return wrapper


def _run_warnings(pair: Pair) -> List[str]:
    """The pair's notes (preprocessing, class names) and every warning shown so far in the
    run, in the command line's words, each once."""
    notes = list(pair.notes) + list(getattr(pair, "class_notes", None) or [])
    return list(dict.fromkeys(in_flags(n) for n in notes + list(_RECORDED.get() or [])))


def _data_summary(pair: Pair) -> Dict[str, Any]:
    """The evaluated data's classes, counts and preprocessing (the pair's, where it carries one)."""
    summary = getattr(pair, "data_summary", None)
    summary = dict(summary) if isinstance(summary, dict) else data_summary(pair.data)
    if not summary.get("classes"):
        summary["classes"] = [str(c) for c in pair.class_names]
    if not summary.get("preprocessing"):
        summary["preprocessing"] = pair.preprocessing.to_dict()
    return summary


def _sanity(table: Dict[str, Dict[str, Any]], pair: Pair) -> List[str]:
    """The sanity lines of the models table, each also warned (stderr) as it is found."""
    lines = evaluation.sanity_lines(table, len(pair.class_names), n_images=len(pair.data))
    for line in lines:
        warnings.warn(line, PreprocessingWarning, stacklevel=3)
    return lines


def _warner(depth: int) -> Warn:
    """``warnings.warn(line, PreprocessingWarning)`` shown at the caller of the run
    function, ``depth`` frames above the line that warns."""
    return lambda line: warnings.warn(line, PreprocessingWarning, stacklevel=depth + 1)


# ---------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------


def train(
    request: TrainRequest,
    *,
    warn: Optional[Warn] = None,
    inform: Optional[Callable[[str], None]] = None,
) -> Written:
    r"""``captum-unicam train``: trains one model by the request's recipe and writes its
    checkpoint (:func:`~captum_unicam.pipeline.training.train_checkpoint`, which checks the
    destination, the images and the Teacher before training). ``inform`` receives the
    line of the optimisation steps."""
    request.check()
    recipe = Recipe(**request.recipe_fields())
    recipe.check(has_teacher=request.teacher is not None)
    reads = (
        ([request.teacher] if request.teacher else [])
        + spec_paths(request.data)
        + (spec_paths(request.transfer) if request.transfer else [])
    )
    out = check_output_file(request.out, overwrite=request.overwrite, reads=reads)
    check_image_memory(request.image_size, request.batch_size, force=request.force)
    device = resolve_device(request.device)
    result = training.train_checkpoint(
        request.data,
        recipe,
        str(out),
        teacher=request.teacher,
        device=device,
        progress=request.progress,
        download=request.download,
        teacher_arch=request.teacher_arch,
        overwrite=request.overwrite,
        warn=warn or _warner(3),
        inform=inform,
    )
    out = Path(result["path"])
    acc = result.get("test_accuracy")
    shown = f", test accuracy {100 * acc:.1f} %" if isinstance(acc, (int, float)) else ""
    train_acc = result.get("train_accuracy")
    if isinstance(train_acc, (int, float)):
        shown += f", training accuracy {100 * train_acc:.1f} %"
    return Written(
        out,
        f"checkpoint written to {out} ({result['recipe']['image_size']} px, normalize "
        f"{result['recipe']['normalize']}{shown})",
    )


# ---------------------------------------------------------------------------
# explain and quantify: one pair, its batches, its report
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Opened:
    out: Path
    pair: Pair
    loader: Any
    evaluated_set: str


def _open_pair(request: PairRequest, warn: Optional[Warn]) -> _Opened:
    """The output folder checked, then the pair loaded and batched."""
    reads = (
        [p for _, p in request.checkpoints() if p]
        + spec_paths(request.data)
        + local_path(request.label_model)
    )
    out = check_output_dir(request.out, overwrite=request.overwrite, reads=reads)
    check_image_memory(request.image_size, request.batch_size, force=request.force)
    pair = load_pair(request, warn=warn or _warner(4))  # load_pair <- _open_pair <- run <- caller
    ds = pair.data
    loader = stratified_loader(
        ds, min(request.batch_size, len(ds)), seed=request.seed, order=request.order
    )
    subset = request.limit and request.limit <= len(ds)
    what = (
        f"{request.data}, {request.split} split"
        + (
            f", {len(ds)} images (a seeded subset, --limit)"
            if subset
            else f", all {len(ds)} images"
        )
        + f", {pair.preprocessing.image_size or int(ds[0][0].shape[-1])} px, "
        f"normalize {pair.preprocessing.normalize}"
    )
    return _Opened(out, pair, loader, what)


def _recorded_accuracy(meta: Dict[str, Any]) -> Optional[float]:
    """The accuracy a checkpoint records (measured when it was trained), if any."""
    extra = meta.get("extra") if isinstance(meta.get("extra"), dict) else {}
    for value in (meta.get("accuracy"), extra.get("test_accuracy"), extra.get("accuracy")):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _model_info(
    meta: Dict[str, Any], accuracy: Optional[float], path: Optional[str]
) -> Dict[str, Any]:
    return {
        "arch": meta.get("arch"),
        "accuracy": accuracy,
        "recorded_accuracy": _recorded_accuracy(meta),
        "kd_method": meta.get("kd_method"),
        "checkpoint": path,
        "num_classes": meta.get("num_classes"),
    }


def _models(request: PairRequest, opened: _Opened) -> Dict[str, Dict[str, Any]]:
    """Each model's accuracy, once, on the evaluated set (the batches of the loader)."""
    pair, loader = opened.pair, opened.loader
    table: Dict[str, Dict[str, Any]] = {}
    for role, path in (
        ("Teacher", request.teacher),
        ("Base", request.base),
        ("Student", request.student),
    ):
        model = pair.model(role)
        if model is None:
            table[role] = {"arch": None, "accuracy": None, "checkpoint": "not given (--teacher)"}
        else:
            table[role] = _model_info(
                pair.metas[role], evaluate_accuracy(model, loader, device=pair.device), path
            )
    return table


def _reference_set(request: ExplainRequest, pair: Pair) -> Tuple[Any, str]:
    """``(reference, description)``: None in batch mode, else ``reference`` images of the
    train split (the pair's preprocessing, class-stratified, seeded)."""
    if not request.reference:
        return None, "UniCAM in batch mode (each batch is its own context)"
    x_ref, y_ref = _train_reference(request, pair, request.reference, "reference")
    classes = len(set(y_ref.tolist()))
    return (x_ref, y_ref), (
        f"UniCAM in reference mode: each image scored with {request.reference} train images "
        f"({classes} classes) alone"
    )


def _train_reference(request: Any, pair: Pair, n: int, field: str) -> Tuple[Tensor, Tensor]:
    """``n`` images of the train split (the pair's preprocessing, class-stratified, seeded):
    the reference set of UniCAM in reference mode."""
    ref_ds = load_data(request.data, "train", pair.preprocessing, download=request.download)
    if len(ref_ds) < n:
        raise InputError(
            f"{field}= {n}: the train split of {request.data!r} has "
            f"only {len(ref_ds)} images; pass a smaller {field}="
        )
    chosen = stratified_order(labels_of(ref_ds), seed=request.seed)[:n]
    items = [ref_ds[i] for i in chosen]
    x_ref = torch.stack([it[0] for it in items]).to(pair.device)
    y_ref = torch.tensor([int(it[1]) for it in items], device=pair.device)
    return x_ref, y_ref


def _teacher_layers(pair: Pair) -> Dict[str, Any]:
    """The Teacher's module of each explained layer name (those it has; the rest warned)."""
    found = getattr(pair, "teacher_layers", None)
    if isinstance(found, dict):
        return found
    layers = {}
    for name in pair.layers:
        try:
            layers[name] = models.get_layer(pair.teacher, name)
        except (ValueError, InputError) as e:
            warnings.warn(
                f"no Grad-CAM of the Teacher at {name}: {e}", PreprocessingWarning, stacklevel=2
            )
    return layers


def _explain_grids(
    request: ExplainRequest, pair: Pair, batches, maps, tmaps
) -> Tuple[Any, Any, Dict[str, int]]:
    """The drawn rows (Base wrong / Student right first, then the reverse, then one per
    class), each with every model's prediction; the masks; the disagreement counts."""
    roles = {"Teacher": pair.teacher, "Base": pair.base, "Student": pair.student}
    preds = evaluation.predictions(roles, batches, device=pair.device)
    labels = torch.cat([b[1] for b in batches])
    n_show = request.images or min(len(pair.class_names), 16)
    pick, counts = evaluation.pick_images(labels, preds, n_show)
    grids, _labels, masks = evaluation.map_grids(
        maps,
        batches,
        pair.class_names,
        pick=pick,
        extra=tmaps,
        mean=getattr(pair.data, "mean", None),
        std=getattr(pair.data, "std", None),
    )
    marks = evaluation.prediction_marks(pick, labels, preds, pair.class_names)
    for grid in grids.values():
        grid["marks"] = marks
        grid["labels"] = [f"true: {name}" for name in grid["labels"]]
    return grids, masks, counts


@_recording
def explain(
    request: ExplainRequest, *, command: Optional[Sequence[str]] = None, warn: Optional[Warn] = None
) -> Written:
    r"""``captum-unicam explain``: Grad-CAM and UniCAM maps per layer of the pair (and
    Grad-CAM of the Teacher when one is given), each drawn image with every model's
    prediction, the images the Base gets wrong and the Student right (and the reverse)
    first, UniCAM's scores of the evaluated set, localisation where the data have masks;
    writes the report folder."""
    opened = _open_pair(request, warn)
    pair = opened.pair
    batches = list(opened.loader)
    table = _models(request, opened)
    sanity = _sanity(table, pair)
    reference, reference_desc = _reference_set(request, pair)
    maps = evaluation.compute_maps(
        pair.student,
        pair.base,
        pair.layers,
        batches,
        label_embeddings=pair.label_vectors,
        device=pair.device,
        progress=request.progress,
        reference=reference,
    )
    tmaps = None
    if pair.teacher is not None:
        tmaps = evaluation.teacher_maps(
            pair.teacher, _teacher_layers(pair), batches, device=pair.device
        )
    grids, masks, counts = _explain_grids(request, pair, batches, maps, tmaps)
    scores = evaluation.set_scores(
        pair.student,
        pair.base,
        pair.layers,
        batches,
        label_embeddings=pair.label_vectors,
        reference=reference,
        device=pair.device,
        seed=request.seed,
    )
    loc = evaluation.localise(maps, masks, seed=request.seed, n_bootstrap=1000)
    sizes = sorted({int(b[0].shape[0]) for b in batches})
    data = (
        f"{opened.evaluated_set}; {len(batches)} {request.order} batches of {'/'.join(map(str, sizes))} "
        f"images; labels: {pair.label_description}; {reference_desc}"
    )
    extra = {
        "label_embeddings": pair.label_description,
        "layers": list(pair.layers),
        "preprocessing": pair.preprocessing.to_dict(),
        "order": request.order,
        "unicam_mode": reference_desc,
        "batch_sizes": [int(b[0].shape[0]) for b in batches],
        "classes_per_batch": [len(set(b[1].tolist())) for b in batches],
        "disagreements": counts,
        "drawn": [
            [{"model": r, "predicted": c, "correct": ok} for r, c, ok in row]
            for row in next(iter(grids.values()))["marks"]
        ],
    }
    report = Report(
        title=f"{PROG} explain",
        command=_command_line(command),
        data=data,
        models=table,
        grids=grids,
        localisation=loc,
        accuracy_set=f"the evaluated set ({opened.evaluated_set})",
        warnings=_run_warnings(pair),
        sanity=sanity,
        data_summary=_data_summary(pair),
        empty_maps=evaluation.empty_map_counts(maps, tmaps),
        set_scores=scores,
        notes=[_disagreement_note(counts, len(pair.data))],
        extra_metrics=extra,
    )
    out = write_report(opened.out, report, overwrite=request.overwrite, progress=request.progress)
    return Written(out, f"report written to {out}/index.html")


def _disagreement_note(counts: Mapping[str, int], n: int) -> str:
    gained, lost = counts["base_wrong_student_right"], counts["student_wrong_base_right"]
    return (
        f"Of the {n} evaluated images, the Base gets {gained} wrong that the Student gets "
        f"right, and the Student {lost} wrong that the Base gets right; the maps show those first "
        "(where what distillation changed shows), then one image per class."
    )


def _classes_per_batch(opened: _Opened) -> List[int]:
    labels = labels_of(opened.pair.data)
    return [len({labels[i] for i in b}) for b in opened.loader.batch_sampler]


@_recording
def quantify(
    request: QuantifyRequest,
    *,
    command: Optional[Sequence[str]] = None,
    warn: Optional[Warn] = None,
) -> Optional[Written]:
    r"""``captum-unicam quantify``: FSS and RS per layer and map kind with intervals; writes
    the report folder. Under ``torchrun`` the batches are shared between the processes and
    rank 0 writes the report (the other ranks return None). The report opens with the
    sanity check of every model's accuracy and the conclusion of the map-free scores."""
    # the process group first (bounded, SIGTERM honoured), so no model is loaded in vain
    request.check()
    started = join_process_group(resolve_device(request.device))
    try:
        rank, world = rank_and_world()
        opened = _open_pair(request, warn)
        pair = opened.pair
        table = _models(request, opened)
        accuracies = {
            r.lower(): i["accuracy"] for r, i in table.items() if i.get("accuracy") is not None
        }
        result = evaluation.score_pair(
            pair.student,
            pair.base,
            opened.loader,
            pair.layers,
            label_embeddings=pair.label_vectors,
            map_kinds=request.maps,
            perturbation=request.perturb,
            n_bootstrap=request.n_bootstrap,
            seed=request.seed,
            progress=request.progress and rank == 0,
            device=pair.device,
            accuracies=accuracies,
        )
        if rank != 0:
            return None
        sanity = _sanity(table, pair)
        sizes = sorted({len(b) for b in opened.loader.batch_sampler})
        data = (
            f"{opened.evaluated_set}; {len(opened.loader)} {request.order} batches of "
            f"{'/'.join(map(str, sizes))} images; perturbation: {request.perturb}; labels: "
            f"{pair.label_description}" + (f"; {world} processes" if world > 1 else "")
        )
        extra = {
            "label_embeddings": pair.label_description,
            "perturb": request.perturb,
            "map_kinds": list(result.map_kinds),
            "world_size": world,
            "preprocessing": pair.preprocessing.to_dict(),
            "order": request.order,
            "batch_sizes": [len(b) for b in opened.loader.batch_sampler],
            "classes_per_batch": _classes_per_batch(opened),
        }
        report = Report(
            title=f"{PROG} quantify",
            command=_command_line(command),
            data=data,
            models=table,
            evaluation=result,
            accuracy_set=f"the evaluated set ({opened.evaluated_set})",
            warnings=_run_warnings(pair),
            sanity=sanity,
            data_summary=_data_summary(pair),
            extra_metrics=extra,
        )
        out = write_report(
            opened.out, report, overwrite=request.overwrite, progress=request.progress
        )
    finally:
        leave_process_group(started)
    return Written(out, f"report written to {out}/index.html")


# ---------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _forward_progress(modules: Sequence[Any], enabled: bool, desc: str = "compare"):
    """A progress bar counting the forward passes of ``modules`` (and of the copies made
    of them while it is open), for runs whose total is not known in advance; its hooks are
    removed on exit."""
    from tqdm.auto import tqdm

    if not enabled:
        yield
        return
    bar = tqdm(desc=desc, unit=" forward passes", leave=False)

    def tick(*_: Any) -> None:  # returns None: the output is left as it is
        bar.update(1)

    handles = [m.register_forward_hook(tick) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        bar.close()


def compare(
    request: CompareRequest, *, command: Optional[Sequence[str]] = None, warn: Optional[Warn] = None
) -> Written:
    r"""``captum-unicam compare``: the report of :func:`captum_unicam.compare` for the pair
    at one layer, on class-stratified test images; built in a temporary folder and
    published complete."""
    request.check()
    t_start = time.perf_counter()
    reads = [
        p for p in (request.student, request.base, request.random_label_student) if p
    ] + spec_paths(request.data)
    out = check_output_dir(request.out, overwrite=request.overwrite, reads=reads)
    with torch_threads(request.threads):
        pair = load_pair(request.pair(), warn=warn or _warner(3))  # load_pair <- compare <- caller
        random_student = None
        if request.random_label_student:
            arch, factory = request.pair().role_model("Student")
            random_student, _ = models.load_checkpoint(
                request.random_label_student,
                arch=arch,
                factory=factory,
                num_classes=len(pair.class_names),
                map_location=pair.device,
            )
            random_student.eval()
        x, y, masks = stratified_images(pair.data, request.images, request.seed)
        x, y = x.to(pair.device), y.to(pair.device)
        reference = (
            _train_reference(request, pair, request.reference_images, "reference_images")
            if request.reference_images
            else None
        )
        s_layer, b_layer = pair.layers[next(iter(pair.layers))]
        methods = comparison.default_methods(
            pair.student, s_layer, pair.base, b_layer, ig_steps=request.ig_steps
        )
        sanity_models = None if request.no_sanity else {"Student": pair.student, "Base": pair.base}
        random_models = (
            None
            if request.no_sanity or random_student is None
            else {"Student": (pair.student, random_student)}
        )
        counted = [m for m in (pair.student, pair.base, random_student) if m is not None]
        with _forward_progress(counted, request.progress):
            result = comparison.compare(
                x,
                y,
                methods,
                reference=reference,
                masks=masks,
                percentiles=list(request.percentiles),
                sanity_models=sanity_models,
                random_label_models=random_models,
                sanity_images=request.sanity_images,
                batch_size=request.batch_size,
                n_bootstrap=request.n_bootstrap,
                seed=request.seed,
            )
        notes = [
            f"Student {request.student}, Base {request.base}, data {request.data} ({x.shape[0]} test images, "
            f"classes {', '.join(map(str, pair.class_names))}), layer {request.layer}.",
            "Methods other than those on the Base explain the Student. UniCAM runs in reference mode "
            + (
                f"({request.reference_images} class-stratified train images)"
                if request.reference_images
                else "(a reference set drawn from the test images)"
            )
            + "; each map's faithfulness is measured on what it explains: S_d or S_r for UniCAM, "
            "the target logit of the explained model for the other methods, against random maps.",
        ]
        with staged_folder(out, overwrite=request.overwrite) as tmp:
            result.metrics["timings"]["total_s"] = round(time.perf_counter() - t_start, 2)
            result.write(tmp, command=shlex.join(_command_line(command)), notes=notes)
    return Written(out, f"wrote {out} ({result.metrics['timings']['total_s']:.0f} s)")


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------


@_recording
def demo(request: DemoRequest, *, command: Optional[Sequence[str]] = None) -> Written:
    r"""``captum-unicam demo``: Teacher, Base and Student of the controlled dataset (trained
    or read from the cache), explained and quantified; writes the report folder
    (:func:`captum_unicam.pipeline.demo.run_demo`)."""
    request.check()
    cache = (
        request.cache_dir
        if request.cache_dir is not None
        else demo_models.default_cache_dir(request.seed, request.quick)
    )
    out = check_output_dir(request.out, overwrite=request.overwrite, reads=[cache])
    device = resolve_device(request.device)
    with torch_threads(request.threads):
        return Written(
            *demo_models.run_demo(
                request, out, device, _command_line(command), recorded=_RECORDED.get()
            )
        )


def _command_line(argv: Optional[Sequence[str]]) -> List[str]:
    return [PROG] + list(sys.argv[1:] if argv is None else argv)
