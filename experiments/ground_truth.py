#!/usr/bin/env python
r"""Ground truth that can discriminate: a planted marker the Base relies on, the Student not.

On the controlled shapes dataset (no background tint) three small ResNets
(``small_resnet_s``) are trained with :func:`captum_unicam.kd.train.train_model`:

- the **Teacher** on labelled, marker-free images: it knows the shapes;
- the **Base** on few labelled images of which a share ``--base-marker`` carries the
  class-coloured marker (``ControlledShapes(..., marker_strength=p, marker_size=8)``, an 8 x 8
  px square at a random position, one cell of the 4 x 4 grid of L4 at 32 px): it learns the
  marker and some of the shapes, and **relies** on the marker (its accuracy on test images
  with the marker is measured against its accuracy without);
- the **Student** by distillation (overhaul feature distillation + response KD) from the
  Teacher on unlabelled, marker-free transfer images: it learns the shapes, not the marker.

So the marker is what the Base knows and the Student lacks (what UniCAM's **residual** map
should show) and the shape is what the Student knows better (its **distilled** map's
object). On cued test images (the marker on every image) each layer L2, L3, L4 gives six map
kinds: Grad-CAM of the Base and of the Student, UniCAM residual and distilled (reference mode:
each image is scored with a fixed reference set of other cued test images, so its map does not
depend on the other evaluated images), and the naive baselines a user would try first,
ReLU(norm Grad-CAM(Base) - norm Grad-CAM(Student)) ("naive residual") and the reverse ("naive
distilled"), each Grad-CAM map divided by its maximum per image. Each map is measured on the
marker and on the object (:mod:`captum_unicam.metrics.localisation`):

- **mass**: share of the map's positive mass on the region after bilinear upsampling;
- **relative mass**: mass / the best mass any map on the same grid reaches;
- **grid pointing**: the map's largest cell overlaps the region.

Per seed: 95 % bootstrap intervals over images and the paired differences UniCAM minus
Grad-CAM and UniCAM minus the naive baseline. ``--summarise`` pools seeds (mean of the seeds'
means; interval from resampling images within every seed).

Writes ``results.json`` (every number, per-image values, recipe, timings), ``results.md``
and ``figures/maps_L*.png`` to OUT (models in ``OUT/models/``)::

    python experiments/ground_truth.py --out experiments/results/ground_truth/seed0 --seed 0 \
        --threads 1
    python experiments/ground_truth.py --summarise experiments/results/ground_truth/seed* \
        > experiments/results/ground_truth/summary.md

``--size tiny`` trains for seconds (numbers meaningless; for the tests).
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import torch
from captum.attr import LayerGradCam
from torch.utils.data import DataLoader, TensorDataset

from captum_unicam import UniCAM
from captum_unicam.data.controlled import ControlledShapes
from captum_unicam.kd import Recipe
from captum_unicam.kd.train import evaluate_accuracy, train_model
from captum_unicam.metrics.localisation import (
    grid_masks,
    grid_pointing_game,
    interval,
    mask_energy,
    relative_mask_energy,
)
from captum_unicam.models import build_model, save_checkpoint, stage_layers

LAYERS = ("L2", "L3", "L4")
KINDS = {
    "gradcam_base": "Grad-CAM Base",
    "residual": "UniCAM residual",
    "naive_residual": "naive residual",
    "gradcam_student": "Grad-CAM Student",
    "distilled": "UniCAM distilled",
    "naive_distilled": "naive distilled",
    "uniform": "chance (uniform map; random cell)",
}
MEASURES = {"mass": "mass", "relative_mass": "relative mass", "pointing_grid": "grid pointing"}
REGIONS = ("marker", "object")
ACCURACY_SETS = ("cue-free", "cued", "grey marker")
ROLES = ("teacher", "base", "student")
#: paired differences per image: (region, map, minus map)
COMPARISONS = (
    ("marker", "residual", "gradcam_base"),
    ("marker", "residual", "naive_residual"),
    ("object", "distilled", "gradcam_student"),
    ("object", "distilled", "naive_distilled"),
)
ARCH, NUM_CLASSES, MARKER_SIZE = "small_resnet_s", 4, 8
#: optimiser and KD hyperparameters (those of the package's demo)
TRAIN = dict(optimizer="adam", lr=1e-2, weight_decay=5e-4)
KD = dict(method="overhaul", temperature=4.0, beta=1e-3)

#: Data sizes and epochs. "modest": see the README of the published results for the CPU
#: seconds per seed on one thread.
SIZES: Dict[str, Dict[str, Any]] = {
    "tiny": dict(
        teacher=96,
        base=64,
        transfer=96,
        test=24,
        reference=8,
        teacher_epochs=1,
        base_epochs=1,
        student_epochs=1,
        batch_size=32,
        eval_batch=12,
        n_bootstrap=50,
        n_show=2,
    ),
    "modest": dict(
        teacher=2000,
        base=1000,
        transfer=2000,
        test=384,
        reference=48,
        teacher_epochs=8,
        base_epochs=15,
        student_epochs=8,
        batch_size=64,
        eval_batch=64,
        n_bootstrap=1000,
        n_show=4,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", default="experiments/results/ground_truth/seed0", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of training")
    p.add_argument("--size", choices=sorted(SIZES), default="modest", help="data sizes and epochs")
    p.add_argument(
        "--base-marker",
        type=float,
        default=0.8,
        help="share of the Base's training images that carry the class-coloured marker",
    )
    p.add_argument(
        "--base-images",
        type=int,
        default=None,
        help="the Base's labelled images (default: the size's)",
    )
    p.add_argument(
        "--layers",
        nargs="+",
        default=list(LAYERS),
        choices=("L1",) + LAYERS,
        help="layers evaluated",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: unchanged)")
    p.add_argument("--progress", action="store_true", help="show training progress bars")
    p.add_argument(
        "--summarise",
        nargs="+",
        metavar="RUN",
        help="summarise finished runs (their folders) instead",
    )
    return p


# ---------------------------------------------------------------------------
# data and models
# ---------------------------------------------------------------------------


def _data(split: str, size: int, seed: int, marker: float) -> ControlledShapes:
    return ControlledShapes(
        size,
        seed=seed,
        split=split,
        cue_strength=0.0,
        marker_strength=marker,
        marker_size=MARKER_SIZE,
    )


def _loader(x, y, seed: int, batch_size: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(x, y),
        batch_size=batch_size,
        shuffle=True,
        generator=gen,
        drop_last=len(x) > batch_size,
    )


def train_models(
    seed: int,
    s: Mapping[str, Any],
    base_marker: float,
    base_images: int,
    models_dir: Path,
    progress: bool,
):
    """Teacher, Base and Student; checkpoints in ``models_dir``; CPU seconds per model."""
    sets = {
        "teacher": _data("train", s["teacher"], seed, 0.0),
        "base": _data("val", base_images, seed, base_marker),
        "student": _data("transfer", s["transfer"], seed, 0.0),
    }
    models = {}
    with torch.random.fork_rng(devices=[]):
        for i, role in enumerate(ROLES):
            torch.manual_seed(seed * 1000 + i)
            models[role] = build_model(ARCH, NUM_CLASSES)
    seconds = {}
    for i, role in enumerate(ROLES):
        ds = sets[role]
        student = role == "student"
        recipe = Recipe(
            ARCH,
            epochs=s[f"{role}_epochs"],
            seed=seed * 1000 + 20 + i,
            **TRAIN,
            **(KD if student else {}),
        )
        t0 = time.process_time()
        train_model(
            models[role],
            _loader(ds.images, ds.labels, seed * 1000 + 10 + i, s["batch_size"]),
            recipe,
            teacher=models["teacher"].eval() if student else None,
            unlabelled=student,
            desc=role,
            progress=progress,
        )
        seconds[role] = round(time.process_time() - t0, 1)
        models[role].eval()
    recipe = {
        "seed": seed,
        **s,
        "base": base_images,
        "base_marker": base_marker,
        "marker_size": MARKER_SIZE,
        "arch": ARCH,
        **TRAIN,
        **KD,
    }
    for role, m in models.items():
        save_checkpoint(
            models_dir / f"{role}.pt",
            m,
            arch=ARCH,
            num_classes=NUM_CLASSES,
            class_names=sets["teacher"].classes,
            recipe=recipe,
            kd_method=KD["method"] if role == "student" else None,
            overwrite=True,  # the experiment's own models of an earlier run
        )
    return models, recipe, seconds


# ---------------------------------------------------------------------------
# maps
# ---------------------------------------------------------------------------


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map divided by its maximum (a map with no positive value stays 0)."""
    peak = maps.flatten(1).max(1).values.clamp_min(0.0)
    return torch.where(
        peak.view(-1, 1, 1, 1) > 0,
        maps / peak.clamp_min(1e-30).view(-1, 1, 1, 1),
        torch.zeros_like(maps),
    )


def compute_maps(
    student, base, layer_names, x, y, ref, eval_batch
) -> Dict[str, Dict[str, torch.Tensor]]:
    """Per layer: the map kinds of :data:`KINDS`, each (N,1,h,w), and the per-image
    reference-mode scores S_d, S_r."""
    s_l, b_l = stage_layers(student), stage_layers(base)
    out = {}
    for name in layer_names:
        gc_s, gc_b = LayerGradCam(student, s_l[name]), LayerGradCam(base, b_l[name])
        uc = UniCAM(student, s_l[name], base, b_l[name], reference=ref)
        parts: Dict[str, List[torch.Tensor]] = {
            k: []
            for k in ("gradcam_base", "gradcam_student", "distilled", "residual", "s_d", "s_r")
        }
        for i in range(0, x.shape[0], eval_batch):
            xb, yb = x[i : i + eval_batch], y[i : i + eval_batch]
            parts["gradcam_student"].append(
                gc_s.attribute(xb, target=yb, relu_attributions=True).detach()
            )
            parts["gradcam_base"].append(
                gc_b.attribute(xb, target=yb, relu_attributions=True).detach()
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # empty maps are counted (n_empty)
                (d, r), (s_d, s_r) = uc.attribute(xb, target=yb, features="both", return_score=True)
            for k, v in (("distilled", d), ("residual", r), ("s_d", s_d), ("s_r", s_r)):
                parts[k].append(v.detach())
        maps = {k: torch.cat(v) for k, v in parts.items()}
        gb, gs = _normalise(maps["gradcam_base"]), _normalise(maps["gradcam_student"])
        maps["naive_residual"] = (gb - gs).clamp_min(0.0)
        maps["naive_distilled"] = (gs - gb).clamp_min(0.0)
        maps["uniform"] = torch.ones_like(maps["gradcam_base"])
        out[name] = maps
    return out


def _nan_list(v: torch.Tensor) -> List[Any]:
    return [None if not np.isfinite(a) else float(a) for a in v.tolist()]


def measure(maps: torch.Tensor, mask: torch.Tensor) -> Dict[str, List[Any]]:
    """Per image: mass, relative mass and grid pointing of ``maps`` on ``mask`` (None for
    an empty map)."""
    return {
        "mass": _nan_list(mask_energy(maps, mask)),
        "relative_mass": _nan_list(relative_mask_energy(maps, mask)),
        "pointing_grid": _nan_list(grid_pointing_game(maps, mask)),
    }


def _finite(values: Sequence[Any]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None], dtype=np.float64)


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------


def neutral_marker(ds: ControlledShapes) -> torch.Tensor:
    """The marked images with the marker's colour replaced by grey (0.5, keeping the pixel
    noise): the same occlusion of the object, no class information."""
    colour = ds.marker_palette[ds.labels].view(-1, 3, 1, 1)
    grey = (0.5 + ds.images - colour).clamp(0.0, 1.0)
    return torch.where(ds.marker_masks.bool(), grey, ds.images)


def accuracies(models, seed: int, n: int) -> Dict[str, Dict[str, float]]:
    """Accuracy of each model on the same n test images without the marker, with it, and
    with a grey marker at the same place; ``reliance`` = with - without, ``marker_information``
    = with - grey (the marker's colour, occlusion taken out)."""
    cued = _data("test", n, seed, 1.0)
    tests = {
        "cue-free": _data("test", n, seed, 0.0).images,
        "cued": cued.images,
        "grey marker": neutral_marker(cued),
    }
    out: Dict[str, Dict[str, float]] = {}
    for role, m in models.items():
        out[role] = {}
        for cond, x in tests.items():
            loader = DataLoader(TensorDataset(x, cued.labels), batch_size=256)
            out[role][cond] = evaluate_accuracy(m, loader)
        out[role]["reliance"] = out[role]["cued"] - out[role]["cue-free"]
        out[role]["marker_information"] = out[role]["cued"] - out[role]["grey marker"]
    return out


def evaluate(models, s, seed, layer_names):
    """Maps on the cued test images, their localisation per image and with intervals."""
    nb = int(s["n_bootstrap"])
    n, m = s["test"], s["reference"]
    ds = _data(
        "test", n + m, seed, 1.0
    )  # the first n are evaluated, the last m are the reference set
    x, y = ds.images[:n], ds.labels[:n]
    ref = (ds.images[n:], ds.labels[n:])
    masks = {"marker": ds.marker_masks[:n], "object": ds.masks[:n]}
    raw = compute_maps(models["student"], models["base"], layer_names, x, y, ref, s["eval_batch"])
    per_image: Dict[str, Any] = {}
    summary: Dict[str, Any] = {}
    for layer, maps in raw.items():
        per_image[layer] = {
            region: {k: measure(maps[k], mk) for k in KINDS} for region, mk in masks.items()
        }
        for region, mk in masks.items():  # chance of the grid pointing game: a cell drawn at random
            cells = (
                (grid_masks(mk, tuple(maps["uniform"].shape[-2:])) > 0).double().flatten(1).mean(1)
            )
            per_image[layer][region]["uniform"]["pointing_grid"] = _nan_list(cells)
        entry: Dict[str, Any] = {
            "s_d": interval(maps["s_d"].numpy(), nb, seed),
            "s_r": interval(maps["s_r"].numpy(), nb, seed),
            "grid": list(maps["residual"].shape[-2:]),
            "n_empty": {k: int((maps[k].flatten(1).clamp_min(0).sum(1) <= 0).sum()) for k in KINDS},
            "localisation": {},
            "comparisons": {},
        }
        for region in REGIONS:
            entry["localisation"][region] = {
                k: {
                    q: interval(_finite(v), nb, seed)
                    for q, v in per_image[layer][region][k].items()
                }
                for k in KINDS
            }
        for region, a, b in COMPARISONS:
            entry["comparisons"][f"{a}-{b}:{region}"] = {
                q: interval(
                    _finite(
                        _paired(per_image[layer][region][a][q], per_image[layer][region][b][q])
                    ),
                    nb,
                    seed,
                )
                for q in MEASURES
            }
        summary[layer] = entry
    return summary, per_image, raw, ds


def _paired(a: Sequence[Any], b: Sequence[Any]) -> List[Any]:
    return [p - q if p is not None and q is not None else None for p, q in zip(a, b)]


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def _ci(d: Mapping[str, Any], digits: int = 3) -> str:
    if not d or d.get("mean") is None:
        return "–"
    return f"{d['mean']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


def _accuracy_lines(acc: Mapping[str, Mapping[str, float]]) -> List[str]:
    lines = [
        "| model | accuracy without marker | with marker | with grey marker | with − without "
        "| with − grey |",
        "|---|---|---|---|---|---|",
    ]
    for role in ROLES:
        a = acc[role]
        lines.append(
            f"| {role} | {a['cue-free']:.3f} | {a['cued']:.3f} | {a['grey marker']:.3f} "
            f"| {a['reliance']:+.3f} | {a['marker_information']:+.3f} |"
        )
    return lines


def markdown(res: Mapping[str, Any]) -> str:
    r = res["recipe"]
    lines = [
        f"# Ground truth: a planted marker the Base relies on (seed {r['seed']})",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Base: {r['base']} labelled images, {r['base_marker']:.0%} with the "
        f"{r['marker_size']} × {r['marker_size']} px class-coloured marker. Test: {r['test']} "
        "images, marker-free, with the marker on every image, and with a grey marker (same "
        "place, no class colour). Maps on the marked images; UniCAM in reference mode "
        f"({r['reference']} other marked test images). CPU seconds: {res['cpu_seconds']}.",
        "",
    ]
    lines += _accuracy_lines(res["accuracies"]) + [""]
    for region in REGIONS:
        lines += [
            f"## Localisation on the {region}",
            "",
            "Mean [95 % bootstrap interval over images]; empty maps left out (counted below).",
            "",
            "| map | "
            + " | ".join(f"{layer} {q}" for layer in res["evaluation"] for q in MEASURES.values())
            + " |",
            "|---|" + "---|" * (len(MEASURES) * len(res["evaluation"])),
        ]
        for k, label in KINDS.items():
            cells = [
                _ci(e["localisation"][region][k][q])
                for e in res["evaluation"].values()
                for q in MEASURES
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Paired differences per image",
        "",
        "| difference | "
        + " | ".join(f"{layer} {q}" for layer in res["evaluation"] for q in MEASURES.values())
        + " |",
        "|---|" + "---|" * (len(MEASURES) * len(res["evaluation"])),
    ]
    for region, a, b in COMPARISONS:
        key = f"{a}-{b}:{region}"
        cells = [
            _ci(e["comparisons"][key][q]) for e in res["evaluation"].values() for q in MEASURES
        ]
        lines.append(f"| {KINDS[a]} − {KINDS[b]}, {region} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Scores and empty maps",
        "",
        "| layer | grid | S_d | S_r | empty maps ("
        + ", ".join(KINDS[k] for k in KINDS if k != "uniform")
        + ") |",
        "|---|---|---|---|---|",
    ]
    for layer, e in res["evaluation"].items():
        empty = " / ".join(str(e["n_empty"][k]) for k in KINDS if k != "uniform")
        grid = f"{e['grid'][0]} × {e['grid'][1]}"
        lines.append(f"| {layer} | {grid} | {_ci(e['s_d'])} | {_ci(e['s_r'])} | {empty} |")
    return "\n".join(lines) + "\n"


def write_figures(out: Path, raw, ds, n_show: int) -> None:
    from captum_unicam import viz  # lazy: matplotlib only when figures are drawn

    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    for layer, maps in raw.items():
        shown = {KINDS[k]: maps[k][:n_show] for k in KINDS if k != "uniform"}
        fig = viz.attribution_grid(
            ds.images[:n_show],
            shown,
            title=f"marked test images, {layer}",
            row_labels=[ds.classes[int(i)] for i in ds.labels[:n_show]],
        )
        viz.save_figure(fig, figs / f"maps_{layer}.png", dpi=72)


def run(
    out: Path,
    seed: int,
    size: str,
    base_marker: float,
    layers: Sequence[str],
    *,
    base_images=None,
    progress: bool = False,
    command: str = "",
) -> Dict[str, Any]:
    s = SIZES[size]
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    models, recipe, train_cpu = train_models(
        seed, s, base_marker, base_images or s["base"], out / "models", progress
    )
    c1 = time.process_time()
    acc = accuracies(models, seed, s["test"])
    evaluation, per_image, raw, ds = evaluate(models, s, seed, layers)
    c2 = time.process_time()
    res = {
        "recipe": {**recipe, "size": size, "layers": list(layers)},
        "command": command,
        "accuracies": acc,
        "evaluation": evaluation,
        "label_vectors": "one-hot",
        "unicam_mode": "reference",
        "cpu_seconds": {
            **train_cpu,
            "train_total": round(c1 - c0, 1),
            "evaluation": round(c2 - c1, 1),
            "total": round(c2 - c0, 1),
        },
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        "per_image": per_image,
    }
    write_figures(out, raw, ds, int(s["n_show"]))
    (out / "results.md").write_text(markdown(res), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(res) + "\n", encoding="utf-8")
    return res


# ---------------------------------------------------------------------------
# summary over seeds
# ---------------------------------------------------------------------------


def pooled(
    per_seed: Sequence[Sequence[Any]], n_bootstrap: int = 1000, seed: int = 0
) -> Dict[str, Any]:
    """Mean over seeds of each seed's mean, and its 95 % percentile interval from resampling
    the images within every seed (``n_bootstrap`` replicates); also each seed's mean."""
    vals = [_finite(v) for v in per_seed]
    vals = [v for v in vals if v.size]
    if not vals:
        return {"mean": None, "low": None, "high": None, "seeds": []}
    rng = np.random.default_rng(seed)
    reps = np.mean(
        [v[rng.integers(0, v.size, (n_bootstrap, v.size))].mean(1) for v in vals], axis=0
    )
    low, high = np.quantile(reps, [0.025, 0.975])
    return {
        "mean": float(np.mean([v.mean() for v in vals])),
        "low": float(low),
        "high": float(high),
        "seeds": [float(v.mean()) for v in vals],
    }


def _table(runs, layers, rows: Mapping[str, Any], get, first: str = "map") -> List[str]:
    lines = [
        f"| {first} | "
        + " | ".join(f"{layer} {q}" for layer in layers for q in MEASURES.values())
        + " |",
        "|---|" + "---|" * (len(MEASURES) * len(layers)),
    ]
    for key, label in rows.items():
        cells = [
            _ci(pooled([get(r, layer, key, q) for r in runs])) for layer in layers for q in MEASURES
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _spread(runs, layers, rows, get, q) -> List[str]:
    lines = ["| map | " + " | ".join(layers) + " |", "|---|" + "---|" * len(layers)]
    for key, label in rows.items():
        cells = [
            " / ".join(f"{m:.3f}" for m in pooled([get(r, layer, key, q) for r in runs])["seeds"])
            for layer in layers
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _summary_head(runs) -> List[str]:
    seeds = [r["recipe"]["seed"] for r in runs]
    r0 = runs[0]["recipe"]
    lines = [
        f"# Ground truth over seeds {', '.join(map(str, seeds))}",
        "",
        f"Base: {r0['base']} labelled images, {r0['base_marker']:.0%} of them with the "
        f"{r0['marker_size']} × {r0['marker_size']} px class-coloured marker; Teacher and Student "
        f"never see it. Maps on {r0['test']} marked test images per seed; UniCAM in reference mode "
        f"({r0['reference']} other marked test images). Cells: mean over seeds of each seed's mean "
        "[95 % bootstrap interval, images resampled within every seed]; empty maps left out. "
        "**mass**: share of the map's positive mass on the region (bilinear upsampling); "
        "**relative mass**: mass / the best any map on the same grid reaches; **grid pointing**: "
        "the map's largest cell overlaps the region.",
        "",
        "## Accuracies (seed " + " / ".join(map(str, seeds)) + ")",
        "",
        "Grey marker: the marked images with the marker's colour replaced by grey (the same "
        "occlusion, no class information).",
        "",
        "| model | without marker | with marker | with grey marker | with − without | "
        "with − grey |",
        "|---|---|---|---|---|---|",
    ]
    for role in ROLES:
        a = [r["accuracies"][role] for r in runs]
        cells = [
            " / ".join(f"{x[c]:.3f}" if c in ACCURACY_SETS else f"{x[c]:+.3f}" for x in a)
            for c in ACCURACY_SETS + ("reliance", "marker_information")
        ]
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    cpu = " / ".join(f"{r['cpu_seconds']['total']:.0f}" for r in runs)
    wall = " / ".join(f"{r['wall_seconds']:.0f}" for r in runs)
    lines += ["", f"CPU seconds per seed (one thread): {cpu}; wall seconds: {wall}", ""]
    lines += [
        "## Scores on the marked images (mean over images, seed by seed)",
        "",
        "| layer | S_d (distilled) | S_r (residual) |",
        "|---|---|---|",
    ]
    for layer in runs[0]["evaluation"]:
        sd, sr = (
            " / ".join(f"{r['evaluation'][layer][k]['mean']:.3f}" for r in runs)
            for k in ("s_d", "s_r")
        )
        lines.append(f"| {layer} | {sd} | {sr} |")
    return lines + [""]


def _per_image(r, layer, key, q, region):
    return r["per_image"][layer][region][key][q]


def _diff(r, layer, key, q):
    pair, region = key.split(":")
    a, b = pair.split("-")
    return _paired(_per_image(r, layer, a, q, region), _per_image(r, layer, b, q, region))


def summarise(folders: Sequence[str]) -> str:
    """The Markdown summary of finished runs (their folders), pooled over seeds."""
    runs = [json.loads((Path(f) / "results.json").read_text()) for f in folders]
    layers = list(runs[0]["evaluation"])
    lines = _summary_head(runs)
    for region in REGIONS:
        get = functools.partial(_per_image, region=region)
        lines += [f"## Localisation on the {region}", ""]
        lines += _table(runs, layers, KINDS, get)
        lines += ["", f"Relative mass on the {region} per seed:", ""]
        lines += _spread(runs, layers, KINDS, get, "relative_mass") + [""]
    diffs = {f"{a}-{b}:{reg}": f"{KINDS[a]} − {KINDS[b]}, {reg}" for reg, a, b in COMPARISONS}
    lines += (
        ["## Paired differences per image", ""]
        + _table(runs, layers, diffs, _diff, "difference")
        + [""]
    )
    n = runs[0]["recipe"]["test"]
    lines += [
        f"## Empty maps (no positive value; of {n} per seed, seed by seed)",
        "",
        "| map | " + " | ".join(layers) + " |",
        "|---|" + "---|" * len(layers),
    ]
    for k, label in KINDS.items():
        if k != "uniform":
            cells = [
                " / ".join(str(r["evaluation"][layer]["n_empty"][k]) for r in runs)
                for layer in layers
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = "python experiments/ground_truth.py " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:])
    )
    if args.summarise:
        print(summarise(args.summarise))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(
        Path(args.out),
        args.seed,
        args.size,
        args.base_marker,
        args.layers,
        base_images=args.base_images,
        progress=args.progress,
        command=command,
    )
    print((Path(args.out) / "results.md").read_text())
    print(f"CPU seconds: {res['cpu_seconds']}, wall seconds: {res['wall_seconds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
