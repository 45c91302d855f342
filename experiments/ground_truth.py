#!/usr/bin/env python
r"""Ground truth for both halves of UniCAM: a planted Base-unique feature and a shared one.

On the controlled shapes dataset (no background tint), three small ResNets
(``small_resnet_s``) are trained with the demo's training function
(:func:`captum_unicam.kd.train.train_model`) and its KD hyperparameters
(:func:`captum_unicam.pipeline.demo.demo_recipe`: AdamW, overhaul feature distillation + response
KD on unlabelled images):

- the **Teacher** on labelled, marker-free images: it knows the shapes;
- the **Base** on labelled images of which a share ``--base-marker`` carries the
  class-coloured marker (``ControlledShapes(..., marker_strength=p)``): it learns the
  shapes (shared with the Student) and the marker (its own, a **Base-unique** feature);
- the **Student** by distillation from the Teacher on unlabelled, marker-free transfer
  images: it learns the shapes only;
- a **random-label Student** (same architecture) on the Base's images with labels
  permuted at random, for the data randomisation sanity check.

They are evaluated on the same test images without markers ("cue-free") and with a
marker on every image ("cued"; the marker's position is drawn independently of the
object, and the rest of each image is identical). For each layer: the scores S_d and S_r
(per batch, the batch being UniCAM's context; 95 % bootstrap intervals over batches); the
share of the positive mass of each map kind (Grad-CAM of the Student and of the Base,
UniCAM distilled and residual) on the object, on the marker and on the rest (95 %
bootstrap intervals over images, :func:`captum_unicam.metrics.localisation.localisation`); and the two
comparisons the paper's claim implies, as paired differences over images:

- residual map's mass on the marker minus Grad-CAM(Base)'s (positive: UniCAM isolates the
  Base-unique feature better than the Base's own Grad-CAM);
- distilled map's mass on the object minus Grad-CAM(Student)'s.

Then the sanity checks of :mod:`captum_unicam.sanity` (cascading randomisation of the
Student and of the Base, the random-label Student) on the cued images at ``--sanity-layer``.

Writes ``results.json``, ``results.md``, ``sanity.md/.csv`` and ``figures/*.png`` to OUT
(models in ``OUT/models/``)::

    python experiments/ground_truth.py --out experiments/results/ground_truth/seed0 --seed 0
    python experiments/ground_truth.py --summarise experiments/results/ground_truth/seed*

``--size tiny`` trains for seconds (numbers meaningless; for the tests).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

LAYERS = ("L2", "L3", "L4")
KINDS = {"gradcam_student": "Grad-CAM Student", "gradcam_base": "Grad-CAM Base",
         "distilled": "UniCAM distilled", "residual": "UniCAM residual"}
REGIONS = ("object", "marker", "background")
CONDITIONS = ("cue-free", "cued")

#: Data sizes, epochs and evaluation settings. "modest" measured with seed 0 on one thread: 91 CPU-seconds
#: of training, 14 of evaluation, 6 of sanity checks (wall time is several times that on a busy machine).
SIZES: Dict[str, Dict[str, Any]] = {
    "tiny": dict(teacher=96, base=96, transfer=96, test=32, teacher_epochs=1, base_epochs=1, student_epochs=1,
                 random_epochs=1, batch_size=32, eval_batch=16, sanity_images=16, n_bootstrap=50, n_show=2),
    "modest": dict(teacher=2000, base=1000, transfer=2000, test=384, teacher_epochs=8, base_epochs=15,
                   student_epochs=8, random_epochs=15, batch_size=64, eval_batch=48, sanity_images=96,
                   n_bootstrap=1000, n_show=4),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="experiments/results/ground_truth/seed0", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of training")
    p.add_argument("--size", choices=sorted(SIZES), default="modest", help="data sizes and epochs")
    p.add_argument("--base-marker", type=float, default=0.7,
                   help="share of the Base's training images that carry the class-coloured marker")
    p.add_argument("--layers", nargs="+", default=list(LAYERS), choices=("L1",) + LAYERS, help="layers evaluated")
    p.add_argument("--sanity-layer", default="L3", choices=("L1",) + LAYERS, help="layer of the sanity checks")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: unchanged)")
    p.add_argument("--progress", action="store_true", help="show training progress bars")
    p.add_argument("--summarise", nargs="+", metavar="RUN", help="summarise finished runs (their folders) instead")
    p.add_argument("--compare", metavar="RUN", help="instead: compare every attribution method on a finished run's "
                   "models and cued test images, with object and marker masks; writes RUN/compare/")
    return p


# ---------------------------------------------------------------------------
# data and models
# ---------------------------------------------------------------------------


def _data(split: str, size: int, seed: int, marker: float):
    from captum_unicam.data.controlled import ControlledShapes

    return ControlledShapes(size, seed=seed, split=split, cue_strength=0.0, marker_strength=marker)


def train_models(seed: int, s: Mapping[str, Any], base_marker: float, models_dir: Path, progress: bool):
    """Teacher, Base, Student and random-label Student, trained with the demo's function
    and KD hyperparameters; checkpoints in ``models_dir``."""
    from captum_unicam.pipeline.demo import demo_recipe
    from captum_unicam.kd.recipe import Recipe
    from captum_unicam.kd.train import train_model
    from captum_unicam.models import build_model, save_checkpoint

    r = demo_recipe(seed)
    common = dict(optimizer=r["optimizer"], lr=r["lr"], weight_decay=r["weight_decay"])
    teacher_ds = _data("train", s["teacher"], seed, 0.0)
    base_ds = _data("val", s["base"], seed, base_marker)
    transfer_ds = _data("transfer", s["transfer"], seed, 0.0)
    g = torch.Generator().manual_seed(seed * 1000 + 7)
    random_labels = base_ds.labels[torch.randperm(len(base_ds), generator=g)]

    def loader(x, y, i):
        gen = torch.Generator().manual_seed(seed * 1000 + 10 + i)
        bs = s["batch_size"]
        return DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True, generator=gen, drop_last=len(x) > bs)

    models = {}
    with torch.random.fork_rng(devices=[]):
        for i, role in enumerate(("teacher", "base", "student", "random_student")):
            torch.manual_seed(seed * 1000 + i)
            models[role] = build_model("small_resnet_s", 4)
    seconds = {}
    t0 = time.process_time()
    train_model(models["teacher"], loader(teacher_ds.images, teacher_ds.labels, 0),
                Recipe(epochs=s["teacher_epochs"], seed=seed * 1000 + 20, **common), desc="teacher", progress=progress)
    seconds["teacher"] = time.process_time() - t0
    t0 = time.process_time()
    train_model(models["base"], loader(base_ds.images, base_ds.labels, 1),
                Recipe(epochs=s["base_epochs"], seed=seed * 1000 + 21, **common), desc="base", progress=progress)
    seconds["base"] = time.process_time() - t0
    t0 = time.process_time()
    train_model(models["student"], loader(transfer_ds.images, transfer_ds.labels, 2),
                Recipe(epochs=s["student_epochs"], method=r["method"], temperature=r["temperature"], beta=r["beta"],
                       seed=seed * 1000 + 22, **common),
                teacher=models["teacher"].eval(), unlabelled=True, desc="student (KD)", progress=progress)
    seconds["student"] = time.process_time() - t0
    t0 = time.process_time()
    train_model(models["random_student"], loader(base_ds.images, random_labels, 3),
                Recipe(epochs=s["random_epochs"], seed=seed * 1000 + 23, **common), desc="random-label student",
                progress=progress)
    seconds["random_student"] = time.process_time() - t0
    recipe = {"seed": seed, **s, "base_marker": base_marker, "arch": "small_resnet_s",
              "optimizer": r["optimizer"], "lr": r["lr"], "weight_decay": r["weight_decay"], "method": r["method"],
              "temperature": r["temperature"], "beta": r["beta"]}
    for role, m in models.items():
        m.eval()
        save_checkpoint(models_dir / f"{role}.pt", m, arch="small_resnet_s", num_classes=4,
                        class_names=teacher_ds.classes, recipe=recipe,
                        kd_method=r["method"] if role == "student" else None)
    train_acc_random = float((models["random_student"](base_ds.images).argmax(1) == random_labels).float().mean())
    return models, recipe, seconds, train_acc_random


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------


def _interval(values: Sequence[float], n_bootstrap: int, seed: int) -> Dict[str, Any]:
    from captum_unicam.metrics.aggregate import bootstrap_ci

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    low, high = bootstrap_ci(v, n_bootstrap=n_bootstrap, seed=seed)
    return {"mean": float(v.mean()), "low": low, "high": high, "n": int(v.size)}


def per_image_energy(maps: torch.Tensor, masks: torch.Tensor) -> List[Optional[float]]:
    """Mask energy fraction of each image (None for an empty map), by the definition of
    :func:`captum_unicam.metrics.localisation.localisation`, one image at a time."""
    from captum_unicam.metrics.localisation import localisation

    out = []
    for i in range(maps.shape[0]):
        e = localisation({"m": maps[i : i + 1]}, masks[i : i + 1], n_bootstrap=0)["kinds"]["m"]["energy"]["mean"]
        out.append(e)
    return out


def compute_maps(student, base, layer_names, x, y, eval_batch):
    """Per layer: the four map kinds (N,1,h,w) and the per-batch scores S_d, S_r."""
    from captum.attr import LayerGradCam

    from captum_unicam.attr.unicam import UniCAM
    from captum_unicam.models import stage_layers

    s_l, b_l = stage_layers(student), stage_layers(base)
    out = {}
    for name in layer_names:
        gc_s, gc_b = LayerGradCam(student, s_l[name]), LayerGradCam(base, b_l[name])
        uc = UniCAM(student, s_l[name], base, b_l[name])
        kinds = {k: [] for k in KINDS}
        sd, sr = [], []
        for i in range(0, x.shape[0] - eval_batch + 1, eval_batch):
            xb, yb = x[i : i + eval_batch], y[i : i + eval_batch]
            kinds["gradcam_student"].append(gc_s.attribute(xb, target=yb, relu_attributions=True).detach())
            kinds["gradcam_base"].append(gc_b.attribute(xb, target=yb, relu_attributions=True).detach())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # empty maps are counted (n_empty)
                (d, r), (s_d, s_r) = uc.attribute(xb, target=yb, features="both", return_score=True)
            kinds["distilled"].append(d.detach())
            kinds["residual"].append(r.detach())
            sd.append(float(s_d))
            sr.append(float(s_r))
        out[name] = {"maps": {k: torch.cat(v) for k, v in kinds.items()}, "s_d": sd, "s_r": sr}
    return out


def evaluate(models, s, seed, layer_names, n_eval: Optional[int] = None):
    from captum_unicam.kd.train import evaluate_accuracy
    from captum_unicam.metrics.localisation import localisation

    nb = int(s["n_bootstrap"])
    n_eval = n_eval or s["test"]
    tests = {"cue-free": _data("test", n_eval, seed, 0.0), "cued": _data("test", n_eval, seed, 1.0)}
    acc = {}
    for cond, ds in tests.items():
        loader = DataLoader(TensorDataset(ds.images, ds.labels), batch_size=256)
        acc[cond] = {role: evaluate_accuracy(m, loader) for role, m in models.items()}
    results: Dict[str, Any] = {}
    raw: Dict[str, Any] = {}
    for cond, ds in tests.items():
        n_used = (len(ds) // s["eval_batch"]) * s["eval_batch"]
        x, y = ds.images[:n_used], ds.labels[:n_used]
        obj, mark = ds.masks[:n_used], ds.marker_masks[:n_used]
        regions = {"object": obj, "marker": mark, "background": (1 - obj - mark).clamp(0, 1)}
        per_layer = compute_maps(models["student"], models["base"], layer_names, x, y, s["eval_batch"])
        raw[cond] = per_layer
        results[cond] = {}
        for name, d in per_layer.items():
            entry: Dict[str, Any] = {"s_d": _interval(d["s_d"], nb, seed), "s_r": _interval(d["s_r"], nb, seed),
                                     "n_images": n_used, "n_batches": len(d["s_d"]), "mass": {}}
            for region, mask in regions.items():
                loc = localisation(d["maps"], mask, n_bootstrap=nb, seed=seed)
                entry["mass"][region] = {k: loc["kinds"][k]["energy"] for k in KINDS}
                entry["mass"][region]["chance"] = loc["chance"]["energy"]
                entry.setdefault("n_empty", {k: loc["kinds"][k]["n_empty"] for k in KINDS})
            e = {(k, region): per_image_energy(d["maps"][k], regions[region])
                 for k in KINDS for region in ("object", "marker")}

            def diff(a, b):
                return [p - q for p, q in zip(e[a], e[b]) if p is not None and q is not None]

            entry["comparisons"] = {
                "residual_minus_gradcam_base_on_marker":
                    _interval(diff(("residual", "marker"), ("gradcam_base", "marker")), nb, seed),
                "distilled_minus_gradcam_student_on_object":
                    _interval(diff(("distilled", "object"), ("gradcam_student", "object")), nb, seed),
            }
            results[cond][name] = entry
    return acc, results, raw, tests


def sanity(models, s, seed, layer, tests):
    from captum.attr import LayerGradCam

    from captum_unicam.attr.unicam import UniCAM
    from captum_unicam.models import stage_layers
    from captum_unicam.sanity import cascading_randomisation, label_randomisation

    st, ba, rs = models["student"], models["base"], models["random_student"]
    sl, bl, rl = stage_layers(st)[layer], stage_layers(ba)[layer], stage_layers(rs)[layer]
    n = s["sanity_images"]
    ds = tests["cued"]
    x, y = ds.images[:n], ds.labels[:n]
    uc = UniCAM(st, sl, ba, bl)
    both = {"UniCAM distilled": (uc, {"features": "distilled"}), "UniCAM residual": (uc, {"features": "residual"})}
    relu = {"relu_attributions": True}
    common = dict(batch_size=s["eval_batch"], seed=seed, n_bootstrap=int(s["n_bootstrap"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined Spearman values are counted in the table
        res = cascading_randomisation(st, {**both, "Grad-CAM Student": (LayerGradCam(st, sl), relu)}, x, y,
                                      check="Student randomised", **common)
        res = res + cascading_randomisation(ba, {**both, "Grad-CAM Base": (LayerGradCam(ba, bl), relu)}, x, y,
                                            check="Base randomised", **common)
        uc_r = UniCAM(rs, rl, ba, bl)
        res = res + label_randomisation(
            {**both, "Grad-CAM Student": (LayerGradCam(st, sl), relu)},
            {"UniCAM distilled": (uc_r, {"features": "distilled"}), "UniCAM residual": (uc_r, {"features": "residual"}),
             "Grad-CAM Student": (LayerGradCam(rs, rl), relu)}, x, y, check="Student on random labels", **common)
    return res


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def _ci(d: Optional[Mapping[str, Any]], digits: int = 3) -> str:
    if not d or d.get("mean") is None:
        return "–"
    return f"{d['mean']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


def markdown(res: Mapping[str, Any]) -> str:
    acc = res["accuracies"]
    lines = [f"# Ground truth: planted Base-unique marker (seed {res['recipe']['seed']})", "",
             f"Command: `{res['command']}`", "",
             "| model | accuracy, cue-free test | accuracy, cued test (marker on every image) |", "|---|---|---|"]
    for role in ("teacher", "base", "student", "random_student"):
        lines.append(f"| {role} | {acc['cue-free'][role]:.3f} | {acc['cued'][role]:.3f} |")
    lines += ["", f"Random-label Student, accuracy on its own (permuted) training labels: "
              f"{res['random_label_train_accuracy']:.3f}", ""]
    for cond in CONDITIONS:
        lines += [f"## {cond} test images", "",
                  "Scores per batch (mean [95 % bootstrap interval over batches]); mass = share of each map's "
                  "positive mass in the region (mean [95 % interval over images]).", "",
                  "| layer | S_d | S_r | region | " + " | ".join(KINDS.values()) + " | chance |",
                  "|---|---|---|---|" + "---|" * len(KINDS) + "---|"]
        for layer, e in res["evaluation"][cond].items():
            for j, region in enumerate(REGIONS):
                m = e["mass"][region]
                head = [layer, _ci(e["s_d"]), _ci(e["s_r"])] if j == 0 else ["", "", ""]
                lines.append("| " + " | ".join(head + [region] + [_ci(m[k]) for k in KINDS]
                                                  + [f"{m['chance']:.3f}"]) + " |")
        lines += ["", "| layer | residual − Grad-CAM(Base), mass on marker | "
                      "distilled − Grad-CAM(Student), mass on object |", "|---|---|---|"]
        for layer, e in res["evaluation"][cond].items():
            c = e["comparisons"]
            lines.append(f"| {layer} | {_ci(c['residual_minus_gradcam_base_on_marker'])} | "
                         f"{_ci(c['distilled_minus_gradcam_student_on_object'])} |")
        lines.append("")
    lines += ["## Sanity checks", "", f"At {res['sanity_layer']}, on cued test images: see sanity.md.", ""]
    return "\n".join(lines)


def write(out: Path, res: Dict[str, Any], raw, tests, sanity_res, s) -> None:
    from captum_unicam import viz

    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    n = int(s["n_show"])
    for cond in CONDITIONS:
        ds = tests[cond]
        for layer, d in raw[cond].items():
            maps = {KINDS[k]: d["maps"][k][:n] for k in ("gradcam_student", "distilled", "gradcam_base", "residual")}
            fig = viz.attribution_grid(ds.images[:n], maps, title=f"{cond} test images, {layer}",
                                       row_labels=[ds.classes[int(i)] for i in ds.labels[:n]])
            viz.save_figure(fig, figs / f"maps_{cond}_{layer}.png", dpi=72)
    viz.save_figure(sanity_res.figure(), figs / "sanity.png", dpi=80)
    (out / "sanity.md").write_text(sanity_res.to_markdown(), encoding="utf-8")
    (out / "sanity.csv").write_text(sanity_res.to_csv(), encoding="utf-8")
    (out / "results.md").write_text(markdown(res), encoding="utf-8")
    torch.save({cond: {layer: d["maps"] for layer, d in raw[cond].items()} for cond in CONDITIONS}, out / "maps.pt")
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")


def run(out: Path, seed: int, size: str, base_marker: float, layers: Sequence[str], sanity_layer: str,
        progress: bool = False, command: str = "") -> Dict[str, Any]:
    from captum_unicam.output.report import to_jsonable, versions

    s = SIZES[size]
    out.mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    models, recipe, train_cpu, rand_acc = train_models(seed, s, base_marker, out / "models", progress)
    t1 = time.process_time()
    acc, evaluation, raw, tests = evaluate(models, s, seed, layers)
    t2 = time.process_time()
    sanity_res = sanity(models, s, seed, sanity_layer, tests)
    t3 = time.process_time()
    res = {"recipe": {**recipe, "size": size, "layers": list(layers)}, "command": command,
           "accuracies": acc, "random_label_train_accuracy": rand_acc, "evaluation": evaluation,
           "sanity_layer": sanity_layer, "sanity": sanity_res.to_dict(),
           "label_vectors": "one-hot",
           "cpu_seconds": {"train": {k: round(v, 1) for k, v in train_cpu.items()}, "train_total": round(t1 - c0, 1),
                           "evaluation": round(t2 - t1, 1), "sanity": round(t3 - t2, 1)},
           "wall_seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
           "versions": versions()}
    res = to_jsonable(res)
    write(out, res, raw, tests, sanity_res, s)
    return res


# ---------------------------------------------------------------------------
# summary over seeds
# ---------------------------------------------------------------------------


def summarise(folders: Sequence[str]) -> str:
    runs = [json.loads((Path(f) / "results.json").read_text()) for f in folders]
    seeds = [r["recipe"]["seed"] for r in runs]
    lines = [f"# Ground truth over seeds {', '.join(map(str, seeds))}", "",
             "Each cell: one value per seed, mean [95 % bootstrap interval over images or batches].", "",
             "| model | accuracy cue-free (per seed) | accuracy cued (per seed) |", "|---|---|---|"]
    for role in ("teacher", "base", "student", "random_student"):
        lines.append(f"| {role} | " + " / ".join(f"{r['accuracies']['cue-free'][role]:.2f}" for r in runs)
                     + " | " + " / ".join(f"{r['accuracies']['cued'][role]:.2f}" for r in runs) + " |")
    lines.append("")
    for cond in CONDITIONS:
        lines += [f"## {cond}", "", "| layer | quantity | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                  "|---|---|" + "---|" * len(runs)]
        for layer in runs[0]["evaluation"][cond]:
            rows = {
                "S_d": lambda e: e["s_d"], "S_r": lambda e: e["s_r"],
                "residual on marker": lambda e: e["mass"]["marker"]["residual"],
                "Grad-CAM Base on marker": lambda e: e["mass"]["marker"]["gradcam_base"],
                "residual − Grad-CAM Base, marker": lambda e: e["comparisons"]["residual_minus_gradcam_base_on_marker"],
                "distilled on object": lambda e: e["mass"]["object"]["distilled"],
                "Grad-CAM Student on object": lambda e: e["mass"]["object"]["gradcam_student"],
                "distilled − Grad-CAM Student, object":
                    lambda e: e["comparisons"]["distilled_minus_gradcam_student_on_object"],
            }
            for q, get in rows.items():
                lines.append(f"| {layer} | {q} | " + " | ".join(_ci(get(r["evaluation"][cond][layer])) for r in runs)
                             + " |")
        lines.append("")
    return "\n".join(lines)


def compare_run(folder: Path, layer: str = "L3", n_images: int = 64, command: str = "") -> Dict[str, Any]:
    """:func:`captum_unicam.comparison.compare` of every method on a finished run's Student
    and Base, on its cued test images (object and marker masks), with the sanity checks;
    the report goes to ``folder/compare`` (replaced if present)."""
    import shutil
    import tempfile

    from captum_unicam.comparison import compare, default_methods
    from captum_unicam.models import load_checkpoint, stage_layers
    from captum_unicam.output.publish import publish_folder

    res = json.loads((folder / "results.json").read_text())
    seed = int(res["recipe"]["seed"])
    models = {role: load_checkpoint(folder / "models" / f"{role}.pt")[0].eval()
              for role in ("student", "base", "random_student")}
    st, ba = models["student"], models["base"]
    ds = _data("test", n_images, seed, 1.0)
    methods = default_methods(st, stage_layers(st)[layer], ba, stage_layers(ba)[layer])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = compare(ds.images, ds.labels, methods, masks={"object": ds.masks, "marker": ds.marker_masks},
                         sanity_models={"Student": st, "Base": ba},
                         random_label_models={"Student": (st, models["random_student"])}, seed=seed)
    out = folder / "compare"
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".compare.tmp-"))
    try:
        result.write(tmp, title=f"Every method on the ground-truth models (seed {seed}, {layer}, cued images)",
                     command=command, notes=[f"{n_images} cued test images; masks: object and marker."])
        publish_folder(tmp, out, overwrite=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result.metrics


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = "python experiments/ground_truth.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.compare:
        if args.threads:
            torch.set_num_threads(args.threads)
        metrics = compare_run(Path(args.compare), layer=args.sanity_layer, command=command)
        print(f"wrote {Path(args.compare) / 'compare'} ({metrics['timings']})")
        return 0
    if args.summarise:
        text = summarise(args.summarise)
        print(text)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(Path(args.out), args.seed, args.size, args.base_marker, args.layers, args.sanity_layer,
              progress=args.progress, command=command)
    print((Path(args.out) / "results.md").read_text())
    print(f"CPU seconds: {res['cpu_seconds']}, wall seconds: {res['wall_seconds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
