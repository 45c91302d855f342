r"""The experiment runner: trains (or loads) the models of a KD study and writes the
paper's artefacts, plus the localisation check the paper could not make.

:func:`run_experiment` does, for one dataset:

1. **Models** (cached in ``out/models/``, one checkpoint per role, reused when its
   recipe is unchanged): a **Teacher** (large), a **Base** (small, data alone), one
   **Student** per KD method (small, distilled from the Teacher), and a
   **Teacher-assistant chain** large -> medium -> small (paper Sec. 4.2.3, R101 -> R50 ->
   R18), whose end is compared with the direct large -> small Student (the response
   Student; trained separately when ``"response"`` is not among the methods).
2. **Evaluation** with :func:`~captum_unicam.metrics.evaluate_kd` on held-out data, per
   layer L1..L4 and map kind (raw features, Grad-CAM, UniCAM distilled / residual): FSS,
   RS of Base / Student / distilled / residual features, bootstrap 95 % intervals over
   batches, paired permutation p-values.
3. **Artefacts** in ``out/``: ``table1_<method>.md/.csv`` (paper Table 1 layout),
   ``table2.md/.csv`` (direct Student against the Teacher-assistant chain, paper
   Table 2), ``accuracies.md/.csv``, ``evaluation_<pair>.md/.csv`` (every number of
   evaluate_kd), on the controlled dataset ``localisation.md/.csv`` (mask energy
   fraction and pointing game of every map kind, with bootstrap intervals) and
   ``cued_evaluation.md/.csv`` (cue-free against cued test images: S_d, S_r and each map
   kind's mass on the object and the background,
   :func:`~captum_unicam.pipeline.evaluation.cued_evaluation`), figures in
   ``out/figures/`` (Grad-CAM / UniCAM grids per layer and method, paper Figs. 3, 5,
   7, 8; FSS / RS per layer, Fig. 4; localisation) and ``results.json`` (all numbers,
   the recipe, the command, versions, timings).

**Output folder.** Checkpoints are written to ``out/models/`` as each model finishes
(each file atomically), so an interrupted run resumes without retraining. Everything
else is built in a temporary sibling folder and renamed onto ``out`` only when
complete: ``out`` holds either the previous complete results or the new ones. A
non-empty ``out`` that is not an experiment folder (no ``results.json``, not only
``models/``) is refused before any work.

**Datasets.**

- ``"controlled[:SEED]"`` (default): the controlled shapes dataset. The Teacher learns
  the shapes on cue-free data; the Base learns from a few hundred labelled images whose
  background tint agrees with the class most of the time (a spurious cue, strength
  0.9); the Students are distilled from the Teacher on a larger *unlabelled* transfer
  set with a weaker cue (strength 0.5). Test data are cue-free (and, for the accuracies,
  also cued). Small ResNets stand in for R101 / R50 / R18 (see
  :data:`CONTROLLED_ARCHS`); see :data:`RECIPES`.

  Why a weaker transfer cue: with the Base's cue (0.9) in the transfer set and this
  short schedule (96 steps), the small Students imitated the Teacher through the tint
  (cue-free accuracy 27 %, as the Base's, but 93 % on cued data), since the tint
  predicts the Teacher's output about 80 % of the time; a 3x longer schedule escapes
  the shortcut (55 % cue-free in a side run) but does not fit the CPU budget.
- ``"cifar10:ROOT"`` and ``"imagefolder:ROOT"`` (via
  :func:`~captum_unicam.data.load_dataset`): every model is trained on the labelled
  training split (Students with their KD loss plus cross-entropy), with augmentation;
  the real torchvision ResNets R101 / R50 / R18 (CIFAR stem for images of 64 pixels or
  less) and many more epochs. This needs a GPU and hours; it was not run here.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shlex
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from captum_unicam.data import SCHEMES, DataSpecError, load_dataset
from captum_unicam.errors import InputError, OutputError
from captum_unicam.output.tables import (
    LAYERS,
    MAP_TITLES,
    csv_table,
    format_interval,
    format_pm,
    markdown_table,
)
from captum_unicam.pipeline.process import torch_threads

__all__ = [
    "run_experiment",
    "RECIPES",
    "CONTROLLED_ARCHS",
    "REAL_ARCHS",
]

PathLike = Union[str, os.PathLike]
ArchSpec = Union[str, Tuple[str, Mapping[str, Any]], Mapping[str, Any]]

_FORMAT = "captum-unicam/experiment"
_FORMAT_VERSION = 1

#: Default (teacher, assistant, student) architectures on the controlled dataset:
#: small ResNets of widths 16 / 12 / 8 standing in for R101 / R50 / R18 (parameter
#: ratios 4 : 2.3 : 1, close to R101 : R50 : R18 = 3.8 : 2.2 : 1).
CONTROLLED_ARCHS: Dict[str, ArchSpec] = {
    "teacher": "small_resnet_m",
    "assistant": ("small_resnet_s", {"width": 12}),
    "student": "small_resnet_s",
}

#: Default architectures on CIFAR-10 and image folders: the paper's R101 -> R50 -> R18.
REAL_ARCHS: Dict[str, ArchSpec] = {
    "teacher": "resnet101",
    "assistant": "resnet50",
    "student": "resnet18",
}

#: Training and evaluation recipes. ``controlled`` takes about 7 minutes of CPU time on
#: one thread (5 for training: Teacher 144 steps, Base 100, each distilled model 192
#: steps of 64 images); on a 2-core machine shared with other jobs the wall time is
#: several times that. ``controlled_quick`` is for tests; ``real`` is for CIFAR-10 /
#: image folders on a GPU (hours). Keys: data sizes and cue strengths (controlled only),
#: epochs, ``batch_size``, ``optimizer``, ``lr`` (Teacher, Base), ``student_lr``
#: (distilled models), ``weight_decay``; evaluation: ``test_size``, ``eval_batch_size``,
#: ``eval_batches`` (evaluate_kd batches), ``map_batches`` (batches whose maps are
#: localised and drawn), ``n_show`` (images per grid), ``n_bootstrap``,
#: ``n_permutations``, ``dpi``, ``grid_layers``.
RECIPES: Dict[str, Dict[str, Any]] = {
    "controlled": {
        "image_size": 32,
        "num_classes": 4,
        "cue_strength": 0.9,
        "transfer_cue": 0.5,
        "teacher_size": 1536,
        "base_size": 256,
        "transfer_size": 1536,
        "test_size": 512,
        "teacher_epochs": 6,
        "base_epochs": 25,
        "student_epochs": 8,
        "batch_size": 64,
        "optimizer": "adam",
        "lr": 3e-3,
        "student_lr": 1e-2,
        "weight_decay": 5e-4,
        "eval_batch_size": 48,
        "eval_batches": 8,
        "map_batches": 2,
        "n_show": 3,
        "n_bootstrap": 1000,
        "n_permutations": 10000,
        "dpi": 64,
        "grid_layers": LAYERS,
    },
    "controlled_quick": {
        "image_size": 32,
        "num_classes": 4,
        "cue_strength": 0.9,
        "transfer_cue": 0.5,
        "teacher_size": 192,
        "base_size": 64,
        "transfer_size": 128,
        "test_size": 48,
        "teacher_epochs": 1,
        "base_epochs": 1,
        "student_epochs": 1,
        "batch_size": 32,
        "optimizer": "adam",
        "lr": 3e-3,
        "student_lr": 1e-2,
        "weight_decay": 5e-4,
        "eval_batch_size": 24,
        "eval_batches": 2,
        "map_batches": 1,
        "n_show": 2,
        "n_bootstrap": 100,
        "n_permutations": 1000,
        "dpi": 40,
        "grid_layers": LAYERS,
    },
    "real": {
        "image_size": None,
        "teacher_epochs": 60,
        "base_epochs": 60,
        "student_epochs": 60,
        "batch_size": 64,
        "optimizer": "sgd",
        "lr": 0.05,
        "student_lr": 0.05,
        "weight_decay": 5e-4,
        "eval_batch_size": 64,
        "eval_batches": 16,
        "map_batches": 1,
        "n_show": 6,
        "n_bootstrap": 1000,
        "n_permutations": 10000,
        "dpi": 80,
        "grid_layers": LAYERS,
    },
    "real_quick": {
        "image_size": None,
        "teacher_epochs": 1,
        "base_epochs": 1,
        "student_epochs": 1,
        "batch_size": 16,
        "optimizer": "adam",
        "lr": 3e-3,
        "student_lr": 3e-3,
        "weight_decay": 5e-4,
        "eval_batch_size": 8,
        "eval_batches": 2,
        "map_batches": 1,
        "n_show": 2,
        "n_bootstrap": 100,
        "n_permutations": 1000,
        "dpi": 40,
        "grid_layers": LAYERS,
    },
}

#: Recipe keys of the evaluation only: changing them does not retrain any model.
_EVAL_KEYS = frozenset(
    {
        "test_size",
        "eval_batch_size",
        "eval_batches",
        "map_batches",
        "n_show",
        "n_bootstrap",
        "n_permutations",
        "dpi",
        "grid_layers",
    }
)

_MAP_TITLES = {
    k: MAP_TITLES[k] for k in ("gradcam_base", "gradcam_student", "distilled", "residual")
}


# ---------------------------------------------------------------------------
# argument checks (all before any training)
# ---------------------------------------------------------------------------


def _arch(spec: Any, role: str) -> Tuple[str, Dict[str, Any]]:
    """(name, build keywords) of an architecture given as 'name', ('name', {...}) or
    {'arch': 'name', ...}."""
    from captum_unicam.models import ARCHITECTURES

    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, Mapping) and isinstance(spec.get("arch"), str):
        name, kwargs = spec["arch"], {k: v for k, v in spec.items() if k != "arch"}
    elif (
        isinstance(spec, (tuple, list))
        and len(spec) == 2
        and isinstance(spec[0], str)
        and isinstance(spec[1], Mapping)
    ):
        name, kwargs = spec[0], dict(spec[1])
    else:
        raise InputError(
            f"{role}_arch must be an architecture name like 'resnet18', a pair "
            f"('small_resnet_s', {{'width': 12}}) or a dict {{'arch': ..., ...}}; got {spec!r}"
        )
    if name not in ARCHITECTURES:
        raise InputError(
            f"{role}_arch: unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    return name, dict(kwargs)


def _arch_label(name: str, kwargs: Mapping[str, Any]) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items()) if k != "cifar_stem")
    return f"{name}({extra})" if extra else name


def _check_methods(methods: Any) -> Tuple[str, ...]:
    from captum_unicam.kd.train import KD_METHODS

    if isinstance(methods, str):
        methods = (methods,)
    try:
        methods = tuple(methods)
    except TypeError:
        raise InputError(f"methods must be a sequence of KD methods, got {methods!r}") from None
    bad = [m for m in methods if m not in KD_METHODS]
    if not methods or bad or len(set(methods)) != len(methods):
        raise InputError(
            f"methods must be distinct names among {', '.join(KD_METHODS)}; got {list(methods)!r}"
        )
    return methods


def _check_out(out: PathLike) -> Path:
    path = Path(out).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise OutputError(f"out {str(path)!r} exists and is not a folder; choose another out")
    if path.is_dir():
        entries = {p.name for p in path.iterdir()}
        if entries and "results.json" not in entries and entries != {"models"}:
            raise OutputError(
                f"out {str(path)!r} is a non-empty folder that is not an experiment folder "
                "(no results.json); it would be replaced, so choose a new or empty folder"
            )
    return path


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def _scheme(spec: str) -> str:
    return spec.strip().partition(":")[0].lower()


def _controlled_data(spec: str, r: Mapping[str, Any]) -> Dict[str, Any]:
    from captum_unicam.data import load_dataset

    common = dict(image_size=r["image_size"], num_classes=r["num_classes"])
    cue = r["cue_strength"]
    return {
        # the Teacher learns the shapes on cue-free labelled data
        "teacher": load_dataset(spec, "train", size=r["teacher_size"], cue_strength=0.0, **common),
        # the Base: few labelled images with the spurious tint cue
        "base": load_dataset(spec, "val", size=r["base_size"], cue_strength=cue, **common),
        # the Students: a larger unlabelled transfer set with a weaker cue (with the Base's
        # cue the small Students copy the Teacher through the tint: see RECIPES notes)
        "transfer": load_dataset(
            spec, "transfer", size=r["transfer_size"], cue_strength=r["transfer_cue"], **common
        ),
        "test": load_dataset(spec, "test", size=r["test_size"], cue_strength=0.0, **common),
        "test_cued": load_dataset(spec, "test", size=r["test_size"], cue_strength=cue, **common),
        # the cued evaluation: the tint of its class on every test image
        "test_cue_always": load_dataset(
            spec, "test", size=r["test_size"], cue_strength=1.0, **common
        ),
        "unlabelled_transfer": True,
    }


def _real_data(spec: str, r: Mapping[str, Any], image_size: Optional[int]) -> Dict[str, Any]:
    from captum_unicam.data import DataSpecError, load_dataset

    size = image_size or r.get("image_size")
    train = load_dataset(spec, "train", image_size=size, augment=True)
    test = load_dataset(spec, "test", image_size=size)
    if len(train) == 0 or len(test) == 0:
        raise DataSpecError(f"data spec {spec!r} has an empty train or test split")
    return {
        "teacher": train,
        "base": train,
        "transfer": train,
        "test": test,
        "test_cued": None,
        "test_cue_always": None,
        "unlabelled_transfer": False,
    }


def _loader(ds, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False):
    g = torch.Generator().manual_seed(seed)
    drop = drop_last and len(ds) > batch_size
    return torch.utils.data.DataLoader(
        ds,
        batch_size=min(batch_size, len(ds)),
        shuffle=shuffle,
        generator=g if shuffle else None,
        drop_last=drop,
    )


# ---------------------------------------------------------------------------
# models (trained once, cached in out/models)
# ---------------------------------------------------------------------------


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _normal(obj: Any) -> Any:
    """JSON round trip, so tuples and lists compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _obtain(
    role: str,
    arch: Tuple[str, Dict[str, Any]],
    recipe: Dict[str, Any],
    *,
    models_dir: Path,
    num_classes: int,
    class_names: Sequence[str],
    train_fn,
    device,
    log: Dict[str, Any],
    kd_method: Optional[str] = None,
    teacher: Optional[str] = None,
) -> nn.Module:
    """Loads ``models_dir/<role>.pt`` when its recipe matches, else trains and saves it."""
    from captum_unicam.models import save_checkpoint
    from captum_unicam.pipeline.cache import load_cached

    path = models_dir / f"{role}.pt"
    name, kwargs = arch
    model, _, why = load_cached(
        path, recipe, arch=name, num_classes=num_classes, map_location=device
    )
    if model is not None:
        log[role] = {"status": "loaded", "seconds": 0.0}
        return model
    if why != "absent":
        warnings.warn(
            f"retraining {role}: the cached checkpoint {str(path)!r} cannot be reused ({why})",
            stacklevel=5,
        )  # _obtain <- _train_models <- _run <- run_experiment <- its caller
    from captum_unicam.pipeline.training import build

    t0 = time.perf_counter()
    model = build(name, num_classes, int(recipe["seed"]), **kwargs)
    train_fn(model)
    model.to(device).eval()
    save_checkpoint(
        path,
        model,
        arch=name,
        num_classes=num_classes,
        class_names=list(class_names),
        recipe=recipe,
        kd_method=kd_method,
        teacher=teacher,
        overwrite=True,
    )  # a cached checkpoint of another recipe
    log[role] = {"status": "trained", "seconds": round(time.perf_counter() - t0, 2)}
    return model


# ---------------------------------------------------------------------------
# formatting and writing
# ---------------------------------------------------------------------------


def _write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text, encoding="utf-8")


def _save_png(fig, path: Path, dpi: int) -> None:
    """Saves with viz.save_figure, then re-encodes with an adaptive palette (PNGs stay small)."""
    from captum_unicam.viz import save_figure

    save_figure(fig, path, dpi=dpi)
    try:
        from PIL import Image

        with Image.open(path) as im:
            small = im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)
    except Exception:  # pragma: no cover - Pillow missing or failing: keep the plain PNG
        pass


# ---------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------


def _table1(
    method: str, summary: Mapping[str, Any], settings: Mapping[str, Any]
) -> Tuple[str, str]:
    """Paper Table 1 for one KD method: layer-specific (Grad-CAM) and UniCAM features."""
    header_md = [
        "Layer",
        "FSS (Grad-CAM)",
        "RS Base (Grad-CAM)",
        "RS Student (Grad-CAM)",
        "p (Student > Base)",
        "RS Base (residual map)",
        "RS Student (distilled map)",
        "pdCor distilled (raw)",
        "pdCor residual (raw)",
        "p (distilled > residual)",
    ]
    header_csv = ["layer"]
    cols = [
        ("gradcam", "fss", "fss_gradcam"),
        ("gradcam", "rs_base", "rs_base_gradcam"),
        ("gradcam", "rs_student", "rs_student_gradcam"),
        ("residual", "rs_base", "rs_base_residual_map"),
        ("distilled", "rs_student", "rs_student_distilled_map"),
        ("none", "rs_distilled", "rs_distilled_raw"),
        ("none", "rs_residual", "rs_residual_raw"),
    ]
    for _, _, key in cols:
        header_csv += [f"{key}_mean", f"{key}_ci_low", f"{key}_ci_high"]
    header_csv += ["p_student_gt_base_gradcam", "p_distilled_gt_residual_raw", "n_batches"]
    md_rows, csv_rows = [], []
    for layer in LAYERS:
        s = summary[layer]
        cell = {key: s[kind][metric] for kind, metric, key in cols}
        p_sb = s["gradcam"]["p_student_gt_base"]
        p_dr = s["none"]["p_distilled_gt_residual"]
        md_rows.append(
            [
                layer,
                format_pm(cell["fss_gradcam"], 4),
                format_pm(cell["rs_base_gradcam"], 4),
                format_pm(cell["rs_student_gradcam"], 4),
                f"{p_sb:.3g}",
                format_pm(cell["rs_base_residual_map"], 4),
                format_pm(cell["rs_student_distilled_map"], 4),
                format_pm(cell["rs_distilled_raw"], 4),
                format_pm(cell["rs_residual_raw"], 4),
                f"{p_dr:.3g}",
            ]
        )
        row: List[Any] = [layer]
        for _, _, key in cols:
            row += [cell[key]["mean"], cell[key]["low"], cell[key]["high"]]
        row += [p_sb, p_dr, s["gradcam"]["n_batches"]]
        csv_rows.append(row)
    notes = [
        f"Table 1 layout, KD method **{method}**: Student and Base compared on "
        f"{summary['L1']['gradcam']['n_batches']} held-out batches. Mean ± half-width of the 95 % bootstrap "
        "interval over batches; p: one-sided paired permutation test over batches.",
        "Grad-CAM columns: each model's input is masked by its own Grad-CAM (paper: layer-specific features). "
        "Residual / distilled map columns: the input is masked by the UniCAM residual / distilled map and the Base / "
        "Student features are scored (paper: residual / distilled features). pdCor columns: partial distance "
        "correlation of the raw features with the labels given the other model's features "
        f"(RS of the unique features). Labels: {settings.get('label_embeddings', '?')}; "
        f"estimator {settings.get('estimator', '?')!r}.",
    ]
    return markdown_table(header_md, md_rows, notes), csv_table(header_csv, csv_rows)


def _table2(
    direct: Mapping[str, Any],
    ta: Mapping[str, Any],
    accs: Mapping[str, Mapping[str, Any]],
    roles: Mapping[str, str],
    labels: Mapping[str, str],
) -> Tuple[str, str]:
    """Paper Table 2: Base, direct Student (T -> S) and Teacher-assistant Student (T -> A -> S)."""
    stats = [
        ("RS, Grad-CAM (layer-specific)", "gradcam", "rs_student", True),
        ("FSS vs Base, Grad-CAM", "gradcam", "fss", False),
        ("RS, distilled map (Student features)", "distilled", "rs_student", False),
        ("RS, residual map (Base features)", "residual", "rs_base", False),
        ("pdCor distilled (raw features)", "none", "rs_distilled", False),
    ]
    md_rows, csv_rows = [], []
    for layer in LAYERS:
        for title, kind, metric, with_base in stats:
            b = direct[layer][kind]["rs_base"] if with_base else None
            d, t = direct[layer][kind][metric], ta[layer][kind][metric]
            md_rows.append(
                [layer, title, format_pm(b, 4) if b else "–", format_pm(d, 4), format_pm(t, 4)]
            )
            for model, e in (("base", b), ("direct", d), ("ta", t)):
                if e is not None:
                    csv_rows.append([layer, title, model, e["mean"], e["low"], e["high"]])
    for split, title in (("test", "accuracy, cue-free test"), ("test_cued", "accuracy, cued test")):
        vals = {k: accs.get(roles[k], {}).get(split) for k in ("base", "direct", "ta")}
        if all(v is None for v in vals.values()):
            continue
        md_rows.append(
            ["all", title] + ["–" if v is None else f"{100 * v:.1f} %" for v in vals.values()]
        )
        for model, v in vals.items():
            if v is not None:
                csv_rows.append(["all", title, model, v, None, None])
    header = [
        "Layer",
        "Statistic",
        f"Base ({labels['base']})",
        f"direct T→S ({labels['direct']})",
        f"TA chain T→A→S ({labels['ta']})",
    ]
    notes = [
        "Table 2 layout: the Student distilled directly from the Teacher (response KD) against the Student "
        "distilled through the Teacher assistant, each compared with the same Base. Mean ± half-width of the 95 % "
        "bootstrap interval over batches."
    ]
    return (
        markdown_table(header, md_rows, notes),
        csv_table(["layer", "statistic", "model", "mean", "ci_low", "ci_high"], csv_rows),
    )


def _localisation_table(
    loc: Mapping[str, Mapping[str, Any]], pair_titles: Mapping[str, str]
) -> Tuple[str, str]:
    md_rows, csv_rows = [], []
    chance = None
    for pair, by_layer in loc.items():
        for layer in LAYERS:
            entry = by_layer[layer]
            chance = entry["chance"]["energy"]
            for kind, title in _MAP_TITLES.items():
                k = entry["kinds"][kind]
                md_rows.append(
                    [
                        pair_titles[pair],
                        layer,
                        title,
                        format_interval(k["energy"]),
                        format_interval(k["pointing"]),
                        f"{k['n_empty']}/{k['n_images']}",
                    ]
                )
                csv_rows.append(
                    [
                        pair,
                        layer,
                        kind,
                        k["energy"]["mean"],
                        k["energy"]["low"],
                        k["energy"]["high"],
                        k["pointing"]["mean"],
                        k["pointing"]["low"],
                        k["pointing"]["high"],
                        k["n_images"],
                        k["n_empty"],
                        entry["chance"]["energy"],
                    ]
                )
    header = [
        "Pair",
        "Layer",
        "Map",
        "mask energy fraction [95 % CI]",
        "pointing game [95 % CI]",
        "empty maps",
    ]
    notes = (
        [
            f"Share of each map's positive mass on the object mask, and the share of images whose map peaks on the "
            f"object; 95 % percentile bootstrap intervals over images. A uniform map scores the mean mask area, "
            f"{chance:.3f} (chance). Empty maps (nothing left after ReLU) are left out of the means."
        ]
        if chance is not None
        else []
    )
    csv_header = [
        "pair",
        "layer",
        "map",
        "energy_mean",
        "energy_low",
        "energy_high",
        "pointing_mean",
        "pointing_low",
        "pointing_high",
        "n_images",
        "n_empty",
        "chance",
    ]
    return markdown_table(header, md_rows, notes), csv_table(csv_header, csv_rows)


def _cued_table(
    cued: Mapping[str, Mapping[str, Any]], pair_titles: Mapping[str, str]
) -> Tuple[str, str]:
    """The cued evaluation of every pair: markdown (the report's two tables, with a pair
    column) and a long CSV (one row per pair, condition, layer, quantity and map kind)."""
    from captum_unicam.output.report import cued_tables

    md_parts: Dict[str, Tuple[List[str], List[List[Any]]]] = {}
    csv_rows: List[List[Any]] = []
    for pair, res in cued.items():
        for name, (header, rows) in cued_tables(res).items():
            part = md_parts.setdefault(name, (["Pair"] + header, []))
            part[1].extend([pair_titles.get(pair, pair)] + row for row in rows)
        for cond, entry in res["conditions"].items():
            for layer, e in entry["layers"].items():
                for q in ("s_d", "s_r"):
                    csv_rows.append(
                        [
                            pair,
                            cond,
                            layer,
                            q,
                            "",
                            e[q]["mean"],
                            e[q]["low"],
                            e[q]["high"],
                            e[q]["n"],
                            "",
                        ]
                    )
                for region, by_kind in e["mass"].items():
                    for kind, iv in by_kind.items():
                        csv_rows.append(
                            [
                                pair,
                                cond,
                                layer,
                                f"mass_{region}",
                                kind,
                                iv["mean"],
                                iv["low"],
                                iv["high"],
                                iv["n"],
                                e["chance"][region],
                            ]
                        )
    notes = [
        "S_d, S_r: UniCAM's scores per batch (the batch is UniCAM's context), mean [95 % bootstrap interval "
        "over batches]. Masses: share of each map's positive mass on the object / on the background, mean "
        "[95 % bootstrap interval over images]; chance = the region's mean area. Cued: the tint of its class on "
        "every test image (cue_strength 1.0)."
    ]
    md = ""
    for name, (header, rows) in md_parts.items():
        title = (
            "Scores and mass on the object" if name == "cued_scores" else "Mass on the background"
        )
        md += f"### {title}\n\n" + markdown_table(header, rows) + "\n"
    md += notes[0] + "\n"
    return md, csv_table(
        ["pair", "condition", "layer", "quantity", "map", "mean", "low", "high", "n", "chance"],
        csv_rows,
    )


def _accuracy_table(
    accs: Mapping[str, Mapping[str, Any]], info: Mapping[str, Mapping[str, Any]]
) -> Tuple[str, str]:
    md_rows, csv_rows = [], []
    for role, a in accs.items():
        i = info[role]
        md_rows.append(
            [
                role,
                i["arch"],
                i["trained_on"],
                f"{100 * a['test']:.1f} %",
                "–" if a.get("test_cued") is None else f"{100 * a['test_cued']:.1f} %",
            ]
        )
        csv_rows.append([role, i["arch"], i["trained_on"], a["test"], a.get("test_cued")])
    header = [
        "Model",
        "Architecture",
        "Trained on",
        "accuracy, cue-free test",
        "accuracy, cued test",
    ]
    return (
        markdown_table(header, md_rows),
        csv_table(["model", "arch", "trained_on", "acc_test", "acc_test_cued"], csv_rows),
    )


# ---------------------------------------------------------------------------
# run_experiment
# ---------------------------------------------------------------------------


def run_experiment(
    dataset: str = "controlled",
    *,
    out: PathLike,
    methods: Sequence[str] = ("response", "attention", "overhaul"),
    teacher_arch: Optional[ArchSpec] = None,
    student_arch: Optional[ArchSpec] = None,
    assistant_arch: Optional[ArchSpec] = None,
    seed: int = 0,
    quick: bool = False,
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
    label_embeddings: str = "text",
    image_size: Optional[int] = None,
    recipe: Optional[Mapping[str, Any]] = None,
    num_threads: Optional[int] = None,
    command: Optional[str] = None,
) -> Dict[str, Any]:
    r"""Trains (or loads) the models of a KD study and writes the paper's tables and figures.

    See the module docstring for what is trained, evaluated and written.

    Args:

        dataset (str, optional): Data spec: ``"controlled"``, ``"controlled:SEED"``,
                    ``"cifar10:ROOT"`` or ``"imagefolder:ROOT"``. Default: "controlled"
        out (str or PathLike): Output folder. Created; an existing experiment folder is
                    updated (its models reused when their recipe is unchanged) and
                    replaced atomically.
        methods (sequence of str, optional): KD methods, one Student each, among
                    ``"response"``, ``"attention"``, ``"overhaul"``.
                    Default: all three
        teacher_arch, student_arch, assistant_arch (str, tuple or dict, optional):
                    Architectures of the Teacher (large), the Base and Students
                    (small) and the Teacher assistant (medium): a name of
                    ``captum_unicam.models.ARCHITECTURES``, a pair
                    ``(name, build keywords)`` or a dict ``{"arch": name, ...}``.
                    Default: :data:`CONTROLLED_ARCHS` on the controlled dataset,
                    :data:`REAL_ARCHS` (R101 / R18 / R50) otherwise.
        seed (int, optional): Seed of every model's initialisation and training, of the
                    bootstrap and of the permutations (the controlled dataset's seed
                    is in the spec). Default: 0
        quick (bool, optional): A tiny recipe, for tests (seconds, numbers
                    meaningless). Default: False
        device (str or torch.device, optional): Device to train and evaluate on.
                    Default: "cpu"
        progress (bool, optional): tqdm progress bars. Default: True
        label_embeddings (str, optional): ``"text"``: embeddings of the class names by
                    ``captum_unicam.embed_labels`` (the paper's choice; the bundled
                    encoder, offline), or ``"one-hot"``. Default: "text"
        image_size (int, optional): Image side for CIFAR-10 / image folders (default
                    32 / 224); the controlled dataset's is in the recipe.
        recipe (dict, optional): Overrides of the entries of :data:`RECIPES` (sizes,
                    epochs, learning rate, ...).
        num_threads (int, optional): torch threads during the run (restored after).
                    Default: None (unchanged)
        command (str, optional): The command line to record in ``results.json``.

    Returns:
        *dict*: what ``results.json`` holds: ``config``, ``recipe``, ``models``
        (architecture, status ``trained`` / ``loaded``, seconds), ``accuracies``,
        ``evaluations`` (the summary of every Student/Base pair, per layer and map
        kind), ``localisation`` (controlled dataset), ``tables`` (the Markdown text of
        every table), ``files``, ``timings``, ``versions``, ``command``; plus ``out``.

    Raises:
        DataSpecError: the dataset spec cannot be loaded (before any training).
        OutputError: ``out`` is a file or a foreign non-empty folder.
        InputError: unknown method or architecture, bad seed, recipe or label option.

    Examples::

        >>> from captum_unicam.pipeline.study import run_experiment
        >>> results = run_experiment("controlled", out="runs/controlled")
        >>> print(results["tables"]["table2"])
    """
    t_start = time.perf_counter()
    methods = _check_arguments(dataset, methods, seed, label_embeddings, num_threads)
    controlled = _scheme(dataset) == "controlled"
    recipe = dict(recipe or {})
    known = set().union(*RECIPES.values())
    if set(recipe) - known:
        raise InputError(
            f"unknown recipe keys {sorted(set(recipe) - known)}; known: {sorted(known)}"
        )
    r = dict(RECIPES[("controlled" if controlled else "real") + ("_quick" if quick else "")])
    defaults = CONTROLLED_ARCHS if controlled else REAL_ARCHS
    given = {"teacher": teacher_arch, "assistant": assistant_arch, "student": student_arch}
    archs = {
        role: _arch(given[role] if given[role] is not None else defaults[role], role)
        for role in given
    }
    out_path = _check_out(out)
    device = torch.device(device)

    # ---- data (DataSpecError here, before training) ------------------------------------
    data = (
        _controlled_data(dataset, {**r, **recipe})
        if controlled
        else _real_data(dataset, r, image_size)
    )
    unused = set(recipe) - set(r)
    if unused:
        raise InputError(
            f"recipe keys {sorted(unused)} do not apply to {dataset!r}; use {sorted(r)}"
        )
    r.update(recipe)
    class_names = _check_evaluation(dataset, data, r)
    stem = int(data["test"][0][0].shape[-1]) <= 64
    for _name, kwargs in archs.values():
        kwargs.setdefault("cifar_stem", stem)
    with torch_threads(num_threads):
        return _run(
            _Study(
                dataset=dataset,
                controlled=controlled,
                data=data,
                class_names=class_names,
                r=r,
                archs=archs,
                methods=tuple(methods),
                seed=seed,
                quick=quick,
                device=device,
                progress=progress,
                label_embeddings=label_embeddings,
                out_path=out_path,
                command=command,
                t_start=t_start,
            )
        )


def _check_arguments(
    dataset: Any, methods: Any, seed: Any, label_embeddings: Any, num_threads: Any
):
    """The cheap checks of :func:`run_experiment`; returns the KD methods."""
    if not isinstance(dataset, str) or not dataset.strip():
        raise DataSpecError(
            f"dataset must be a spec like 'controlled' or 'cifar10:ROOT', got {dataset!r}"
        )
    methods = _check_methods(methods)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}")
    if label_embeddings not in ("text", "one-hot"):
        raise InputError(f"label_embeddings must be 'text' or 'one-hot', got {label_embeddings!r}")
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
    ):
        raise InputError(f"num_threads must be a positive int, got {num_threads!r}")
    if _scheme(dataset) not in SCHEMES:
        load_dataset(dataset)  # raises DataSpecError naming the accepted specs
    return methods


def _check_evaluation(dataset: str, data: Mapping[str, Any], r: Mapping[str, Any]) -> List[str]:
    """The evaluation settings against the data; returns the class names."""
    if not set(r["grid_layers"]) <= set(LAYERS):
        raise InputError(f"recipe grid_layers must be among {LAYERS}, got {r['grid_layers']!r}")
    n_eval = min(len(data["test"]), int(r["eval_batches"]) * int(r["eval_batch_size"]))
    if int(r["eval_batch_size"]) < 5 or n_eval < 5:
        raise InputError(
            f"recipe eval_batch_size {r['eval_batch_size']} over {len(data['test'])} test images: "
            "UniCAM, FSS and RS need batches of at least 5 images"
        )
    class_names = [str(c) for c in data["test"].classes]
    if len(class_names) < 2:
        raise DataSpecError(
            f"data spec {dataset!r} has {len(class_names)} class(es); at least 2 are needed"
        )
    return class_names


@dataclasses.dataclass
class _Study:
    """The plan of one experiment run: data, roles, recipes and where it is written."""

    dataset: str
    controlled: bool
    data: Dict[str, Any]
    class_names: List[str]
    r: Dict[str, Any]
    archs: Dict[str, Tuple[str, Dict[str, Any]]]
    methods: Tuple[str, ...]
    seed: int
    quick: bool
    device: Any
    progress: bool
    label_embeddings: str
    out_path: Path
    command: Optional[str]
    t_start: float

    @property
    def direct_role(self) -> str:
        return "student_response" if "response" in self.methods else "student_direct"

    @property
    def roles(self) -> List[str]:
        roles = ["teacher", "base"] + [f"student_{m}" for m in self.methods]
        if self.direct_role not in roles:
            roles.append(self.direct_role)
        return roles + ["assistant", "student_ta"]

    @property
    def pairs(self) -> Dict[str, str]:
        pairs = {m: f"student_{m}" for m in self.methods}
        if "direct" not in pairs and self.direct_role == "student_direct":
            pairs["direct"] = self.direct_role
        pairs["ta"] = "student_ta"
        return pairs

    def training_plan(self) -> List[Tuple[str, str, int, Optional[str], Optional[str]]]:
        """(role, architecture key, epochs, KD method, Teacher role), in training order."""
        r = self.r
        plan = [
            ("teacher", "teacher", r["teacher_epochs"], None, None),
            ("base", "student", r["base_epochs"], None, None),
        ]
        plan += [
            (f"student_{m}", "student", r["student_epochs"], m, "teacher") for m in self.methods
        ]
        if self.direct_role == "student_direct":
            plan.append(("student_direct", "student", r["student_epochs"], "response", "teacher"))
        plan.append(("assistant", "assistant", r["student_epochs"], "response", "teacher"))
        plan.append(("student_ta", "student", r["student_epochs"], "response", "assistant"))
        return plan

    def data_id(self, group: str) -> Dict[str, Any]:
        common_keys = ("image_size", "num_classes", "batch_size", "optimizer", "weight_decay")
        role_keys = {
            "teacher": ("teacher_size", "teacher_epochs", "lr"),
            "base": ("base_size", "cue_strength", "base_epochs", "lr"),
            "distilled": ("transfer_size", "transfer_cue", "student_epochs", "student_lr"),
        }
        return {
            "dataset": self.dataset,
            **{k: self.r.get(k) for k in common_keys + role_keys[group]},
        }


def _run(study: _Study) -> Dict[str, Any]:
    from tqdm.auto import tqdm

    timings: Dict[str, float] = {}
    bar = tqdm(
        total=len(study.roles) + len(study.pairs) + 2,
        desc="experiment",
        unit="stage",
        disable=not study.progress,
        position=0,
    )
    try:
        t0 = time.perf_counter()
        models, recipes, log, info = _train_models(study, bar)
        timings["models_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        accs = _accuracies(study, models)
        bar.update(1)
        timings["accuracies_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        emb, emb_desc = _label_vectors(study)
        evaluations, maps_by_pair, map_batches, cued = _evaluate_pairs(study, models, emb, bar)
        timings["evaluation_s"] = time.perf_counter() - t0
        loc = _localise(study, maps_by_pair, map_batches)
        t0 = time.perf_counter()
        return _publish(
            study,
            models=models,
            recipes=recipes,
            log=log,
            info=info,
            accs=accs,
            evaluations=evaluations,
            maps_by_pair=maps_by_pair,
            map_batches=map_batches,
            loc=loc,
            emb_desc=emb_desc,
            timings=timings,
            t_write=t0,
            bar=bar,
            cued=cued,
        )
    finally:
        bar.close()


def _train_models(study: _Study, bar):
    """Trains (or loads from ``out/models``) every model of the plan, by
    :func:`captum_unicam.pipeline.training.fit`."""
    from captum_unicam.kd.recipe import Recipe

    r, data, archs = study.r, study.data, study.archs
    labelled = {"teacher": data["teacher"], "base": data["base"]}
    transfer = data["transfer"]
    unlabelled = bool(data["unlabelled_transfer"])
    trained_on = {
        "teacher": f"{len(data['teacher'])} labelled images"
        + (" (cue-free)" if study.controlled else ""),
        "base": f"{len(data['base'])} labelled images"
        + (f" (cue {r['cue_strength']})" if study.controlled else ""),
    }
    distil_desc = (
        f"{len(transfer)} unlabelled transfer images (cue {r['transfer_cue']})"
        if unlabelled
        else f"{len(transfer)} labelled images + KD loss"
    )
    models: Dict[str, nn.Module] = {}
    recipes: Dict[str, Dict[str, Any]] = {}
    log: Dict[str, Any] = {}
    info: Dict[str, Dict[str, Any]] = {}
    for i, (role, arch_key, epochs, method, teacher_role) in enumerate(study.training_plan()):
        name, kwargs = archs[arch_key]
        recipes[role] = _normal(
            {
                "role": role,
                "arch": name,
                "build_kwargs": kwargs,
                "epochs": int(epochs),
                "method": method,
                "seed": study.seed + i,
                "dataset": study.dataset,
                "data": study.data_id(role if teacher_role is None else "distilled"),
                "teacher": None if teacher_role is None else _fingerprint(recipes[teacher_role]),
            }
        )
        teacher = models.get(teacher_role) if teacher_role else None
        info[role] = {
            "arch": _arch_label(name, kwargs),
            "trained_on": trained_on[role]
            if teacher_role is None
            else f"{method} KD from the {teacher_role} on {distil_desc}",
        }
        plan = Recipe(
            arch=name,
            epochs=int(epochs),
            batch_size=int(r["batch_size"]),
            method=method,
            lr=float(r["lr"] if teacher is None else r["student_lr"]),
            optimizer=r["optimizer"],
            weight_decay=float(r["weight_decay"]),
            seed=study.seed + i,
        )
        train_fn = functools.partial(
            _fit_role,
            plan=plan,
            data=labelled[role] if teacher is None else transfer,
            teacher=teacher,
            unlabelled=teacher is not None and unlabelled,
            device=study.device,
            progress=study.progress,
            desc=role,
        )
        models[role] = _obtain(
            role,
            archs[arch_key],
            recipes[role],
            models_dir=study.out_path / "models",
            num_classes=len(study.class_names),
            class_names=study.class_names,
            train_fn=train_fn,
            device=study.device,
            log=log,
            kd_method=method,
            teacher=teacher_role,
        )
        bar.update(1)
        bar.set_postfix_str(f"{role}: {log[role]['status']}", refresh=False)
    return models, recipes, log, info


def _fit_role(model, *, plan, data, teacher, unlabelled, device, progress, desc):
    from captum_unicam.pipeline.training import fit

    if teacher is not None:
        teacher.eval()
    fit(
        model,
        data,
        plan,
        teacher=teacher,
        unlabelled=unlabelled,
        device=device,
        progress=progress,
        desc=desc,
    )


def _accuracies(study: _Study, models) -> Dict[str, Dict[str, Any]]:
    from captum_unicam.kd.train import evaluate_accuracy

    data, device = study.data, study.device
    test_loader = _loader(data["test"], 256, shuffle=False)
    cued_loader = (
        _loader(data["test_cued"], 256, shuffle=False) if data["test_cued"] is not None else None
    )
    accs: Dict[str, Dict[str, Any]] = {}
    for role in study.roles:
        m = models[role].to(device).eval()
        accs[role] = {
            "test": evaluate_accuracy(m, test_loader, device=device),
            "test_cued": evaluate_accuracy(m, cued_loader, device=device) if cued_loader else None,
        }
    return accs


def _label_vectors(study: _Study):
    if study.label_embeddings != "text":
        return None, "one-hot"
    from captum_unicam.embeddings import embed_labels

    emb = embed_labels(study.class_names).detach().float().cpu()
    return emb, f"text embeddings of the class names (embed_labels, {tuple(emb.shape)[1]}-d)"


def _evaluate_pairs(study: _Study, models, emb, bar):
    """FSS / RS (:func:`captum_unicam.pipeline.evaluation.score_pair`) and maps of every
    Student against the Base; on the controlled dataset also the cued evaluation
    (:func:`captum_unicam.pipeline.evaluation.cued_evaluation`) on the same cue-free
    batches and on the same images with the tint of their class on every one."""
    from captum_unicam.models import stage_layers
    from captum_unicam.pipeline.batches import labels_of, stratified_loader
    from captum_unicam.pipeline.evaluation import compute_maps, cued_evaluation, score_pair

    r, data, device = study.r, study.data, study.device
    eval_bs = int(r["eval_batch_size"])
    n_eval = min(len(data["test"]), int(r["eval_batches"]) * eval_bs)
    eval_ds = torch.utils.data.Subset(data["test"], range(n_eval))
    # the pipeline's batches; file order keeps the published results' batches (the controlled
    # and CIFAR-10 test images are not stored class by class); a short last batch is merged
    eval_loader = stratified_loader(
        eval_ds,
        min(eval_bs, n_eval),
        seed=study.seed,
        order="file",
        labels=labels_of(data["test"])[:n_eval],
    )
    conditions = None
    if study.controlled and data.get("test_cue_always") is not None:
        cued_ds = torch.utils.data.Subset(data["test_cue_always"], range(n_eval))
        conditions = {
            "cue-free": eval_loader,
            "cued": stratified_loader(
                cued_ds,
                min(eval_bs, n_eval),
                seed=study.seed,
                order="file",
                labels=labels_of(data["test_cue_always"])[:n_eval],
            ),
        }
    cued: Dict[str, Any] = {}
    base = models["base"].to(device).eval()
    evaluations: Dict[str, Any] = {}
    maps_by_pair: Dict[str, Any] = {}
    map_batches = [b for _, b in zip(range(int(r["map_batches"])), eval_loader)]
    for pair, role in study.pairs.items():
        student = models[role].to(device).eval()
        s_l, b_l = stage_layers(student), stage_layers(base)
        layers = {k: (s_l[k], b_l[k]) for k in LAYERS}
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # degenerate-batch notes of UniCAM; counted in the tables
            evaluations[pair] = score_pair(
                student,
                base,
                eval_loader,
                layers,
                label_embeddings=emb,
                n_bootstrap=int(r["n_bootstrap"]),
                n_permutations=int(r["n_permutations"]),
                seed=study.seed,
                progress=study.progress,
                device=device,
            )
            maps_by_pair[pair] = compute_maps(
                student,
                base,
                layers,
                map_batches,
                label_embeddings=emb,
                device=device,
                progress=study.progress,
            )
            if conditions is not None:
                cued[pair] = cued_evaluation(
                    student,
                    base,
                    layers,
                    conditions,
                    label_embeddings=emb,
                    n_bootstrap=int(r["n_bootstrap"]),
                    seed=study.seed,
                    device=device,
                    progress=study.progress,
                )
        bar.update(1)
    return evaluations, maps_by_pair, map_batches, cued


def _localise(study: _Study, maps_by_pair, map_batches) -> Dict[str, Any]:
    """Localisation of every map on the object masks (controlled data only)."""
    from captum_unicam.metrics.localisation import localisation

    if not study.controlled:
        return {}
    masks = torch.cat([b[2] for b in map_batches])
    return {
        pair: {
            layer: localisation(
                kinds, masks, n_bootstrap=int(study.r["n_bootstrap"]), seed=study.seed
            )
            for layer, kinds in by_layer.items()
        }
        for pair, by_layer in maps_by_pair.items()
    }


def _publish(
    study: _Study,
    *,
    models,
    recipes,
    log,
    info,
    accs,
    evaluations,
    maps_by_pair,
    map_batches,
    loc,
    emb_desc,
    timings,
    t_write,
    bar,
    cued=None,
) -> Dict[str, Any]:
    """Writes every table, figure, results.json and the checkpoints into a temporary
    folder and publishes it (:func:`captum_unicam.output.publish.staged_folder`)."""
    from captum_unicam.output.publish import staged_folder
    from captum_unicam.output.report import to_jsonable, versions

    out_path, roles, pairs = study.out_path, study.roles, study.pairs
    summaries = {pair: ev.summary()["by_layer"] for pair, ev in evaluations.items()}
    with staged_folder(out_path, overwrite=True, only_reports=False) as tmp:
        files = _write_all(
            tmp,
            study.r,
            study.methods,
            pairs,
            models,
            roles,
            accs,
            info,
            evaluations,
            summaries,
            maps_by_pair,
            map_batches,
            loc,
            study.class_names,
            study.direct_role,
            emb_desc,
            cued=cued,
        )
        bar.update(1)
        timings["write_s"] = time.perf_counter() - t_write
        timings["total_s"] = time.perf_counter() - study.t_start
        results = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "config": {
                "dataset": study.dataset,
                "methods": list(study.methods),
                "seed": study.seed,
                "quick": study.quick,
                "device": str(study.device),
                "label_embeddings": emb_desc,
                "class_names": study.class_names,
                "archs": {k: _arch_label(*v) for k, v in study.archs.items()},
                "pairs": {p: {"student": role, "base": "base"} for p, role in pairs.items()},
                "direct_student": study.direct_role,
            },
            "recipe": study.r,
            "models": {
                role: {
                    **info[role],
                    **log[role],
                    "recipe": recipes[role],
                    "checkpoint": f"models/{role}.pt",
                }
                for role in roles
            },
            "accuracies": accs,
            "evaluations": {p: ev.to_dict() for p, ev in evaluations.items()},
            "localisation": loc or None,
            "cued_evaluation": cued or None,
            "tables": files.pop("_tables"),
            "files": files,
            "timings": {k: round(v, 2) for k, v in timings.items()},
            "versions": versions(),
            "command": study.command
            or _default_command(study.dataset, study.methods, study.seed, study.quick, out_path),
        }
        results = to_jsonable(results)
        (tmp / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        # the cached checkpoints join the new folder (hard links when possible)
        (tmp / "models").mkdir()
        for role in roles:
            src, dst = out_path / "models" / f"{role}.pt", tmp / "models" / f"{role}.pt"
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    results["out"] = str(out_path)
    return results


def _default_command(dataset, methods, seed, quick, out_path) -> str:
    args = [
        "python",
        "experiments/run_controlled.py",
        "--out",
        str(out_path),
        "--seed",
        str(seed),
        "--methods",
        *methods,
    ] + (["--quick"] if quick else [])
    if _scheme(dataset) != "controlled" or dataset.strip() != "controlled":
        return (
            f"run_experiment({dataset!r}, out={str(out_path)!r}, methods={tuple(methods)!r}, "
            f"seed={seed}, quick={quick})"
        )
    return " ".join(shlex.quote(a) for a in args)


def _write_all(
    folder: Path,
    r,
    methods,
    pairs,
    models,
    roles,
    accs,
    info,
    evaluations,
    summaries,
    maps_by_pair,
    map_batches,
    loc,
    class_names,
    direct_role,
    emb_desc,
    cued=None,
) -> Dict[str, Any]:
    figs = folder / "figures"
    figs.mkdir()
    tables: Dict[str, str] = {}
    written: Dict[str, List[str]] = {"tables": [], "figures": []}

    def table(name: str, md: str, csv_text: str) -> None:
        _write(folder, f"{name}.md", md)
        _write(folder, f"{name}.csv", csv_text)
        tables[name] = md
        written["tables"] += [f"{name}.md", f"{name}.csv"]

    pair_titles = {p: ("Teacher-assistant chain" if p == "ta" else f"{p} KD") for p in pairs}
    # Table 1 per method, full evaluations
    for m in methods:
        md, csv_text = _table1(m, summaries[m], evaluations[m].settings)
        table(f"table1_{m}", md, csv_text)
    for p, ev in evaluations.items():
        table(f"evaluation_{p}", ev.to_markdown(), ev.to_csv())
    # Table 2
    labels = {
        "base": info["base"]["arch"],
        "direct": info[direct_role]["arch"],
        "ta": info["student_ta"]["arch"],
    }
    direct_pair = "response" if "response" in pairs else "direct"
    md, csv_text = _table2(
        summaries[direct_pair],
        summaries["ta"],
        accs,
        {"base": "base", "direct": direct_role, "ta": "student_ta"},
        labels,
    )
    table("table2", md, csv_text)
    # accuracies, localisation
    md, csv_text = _accuracy_table(accs, info)
    table("accuracies", md, csv_text)
    if loc:
        md, csv_text = _localisation_table(loc, pair_titles)
        table("localisation", md, csv_text)
    if cued:
        md, csv_text = _cued_table(cued, pair_titles)
        table("cued_evaluation", md, csv_text)

    written["figures"] += _study_figures(
        folder, r, pair_titles, direct_pair, summaries, maps_by_pair, map_batches, loc, class_names
    )
    written["_tables"] = tables  # type: ignore[assignment]
    return written


def _study_figures(
    folder: Path,
    r,
    pair_titles,
    direct_pair,
    summaries,
    maps_by_pair,
    map_batches,
    loc,
    class_names,
) -> List[str]:
    """The figures of a study: map grids per layer and pair (Figs. 3, 5, 8), direct vs TA
    (Fig. 7), FSS / RS per layer (Fig. 4), localisation; returns their paths."""
    from captum_unicam import viz

    dpi = int(r["dpi"])
    names: List[str] = []
    n_show = int(r["n_show"])
    images = torch.cat([b[0] for b in map_batches])[:n_show]
    labels_idx = torch.cat([b[1] for b in map_batches])[:n_show]
    row_labels = [class_names[int(i)] for i in labels_idx]
    grid_layers = [layer for layer in LAYERS if layer in tuple(r["grid_layers"])]
    for p, by_layer in maps_by_pair.items():
        for layer in grid_layers:
            kinds = by_layer[layer]
            maps = {_MAP_TITLES[k]: kinds[k][:n_show] for k in _MAP_TITLES}
            fig = viz.attribution_grid(
                images, maps, title=f"{pair_titles[p]}: {layer}", row_labels=row_labels
            )
            names.append(f"figures/grid_{p}_{layer}.png")
            _save_png(fig, folder / names[-1], dpi)
    for layer in grid_layers:
        d, t = maps_by_pair[direct_pair][layer], maps_by_pair["ta"][layer]
        maps = {
            "Grad-CAM direct": d["gradcam_student"][:n_show],
            "UniCAM distilled, direct": d["distilled"][:n_show],
            "Grad-CAM TA chain": t["gradcam_student"][:n_show],
            "UniCAM distilled, TA chain": t["distilled"][:n_show],
        }
        fig = viz.attribution_grid(
            images, maps, title=f"direct vs Teacher-assistant: {layer}", row_labels=row_labels
        )
        names.append(f"figures/grid_direct_vs_ta_{layer}.png")
        _save_png(fig, folder / names[-1], dpi)
    for p, s in summaries.items():
        fig = viz.scores_per_layer(
            _score_panels(s), title=f"{pair_titles[p]}: FSS and RS per layer"
        )
        names.append(f"figures/scores_{p}.png")
        _save_png(fig, folder / names[-1], dpi + 16)
    for p, by_layer in loc.items():
        per_layer = {
            layer: {_MAP_TITLES[k]: by_layer[layer]["kinds"][k] for k in _MAP_TITLES}
            for layer in LAYERS
        }
        fig = viz.localisation_plot(
            per_layer,
            chance=by_layer["L1"]["chance"],
            title=f"{pair_titles[p]}: localisation on the object",
        )
        names.append(f"figures/localisation_{p}.png")
        _save_png(fig, folder / names[-1], dpi + 16)
    return names


def _score_panels(s: Mapping[str, Any]) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """FSS / RS per layer panels of one pair's summary (paper Fig. 4)."""
    return {
        "(a) FSS, Grad-CAM": {
            "Student vs Base": {layer: s[layer]["gradcam"]["fss"] for layer in LAYERS}
        },
        "(b) RS, Grad-CAM": {
            "Base": {layer: s[layer]["gradcam"]["rs_base"] for layer in LAYERS},
            "Student": {layer: s[layer]["gradcam"]["rs_student"] for layer in LAYERS},
        },
        "(c) RS, UniCAM maps": {
            "Base on residual map": {layer: s[layer]["residual"]["rs_base"] for layer in LAYERS},
            "Student on distilled map": {
                layer: s[layer]["distilled"]["rs_student"] for layer in LAYERS
            },
        },
    }
