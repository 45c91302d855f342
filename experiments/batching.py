"""Do FSS and RS depend on the batching? The demo's models, three batch sizes, two estimators.

Trains (or loads from the demo's cache) the demo's Teacher, Base and Student, and evaluates
the Student against the Base on the demo's cue-free test images with raw features (no map) at
L1..L4, in class-stratified batches of 16, 32 and 64 and in a shuffled order of batches of 32,
and in file order (batches of 32 as the images are stored), with raw features and with
Grad-CAM-masked images (``mask_multiply``), with both aggregations of
:func:`captum_unicam.evaluate_kd`:

- ``aggregation="dataset"`` (the default): the U-centred inner products of every batch are
  averaged and the correlations formed from the averages;
- ``aggregation="batch_mean"``: the paper's mean of per-batch correlations.

It also computes the exact whole-set values (one batch of every image) for comparison.
Writes ``results.md`` and ``results.json`` into ``--out``.

    python experiments/batching.py --out experiments/results/batching [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from captum_unicam import evaluate_kd
from captum_unicam.data.controlled import ControlledShapes
from captum_unicam.models import stage_layers
from captum_unicam.output.tables import format_interval, markdown_table
from captum_unicam.pipeline import stratified_loader
from captum_unicam.pipeline.demo import train_demo_models

STATISTICS = (
    ("rs_distilled", "S_d"),
    ("rs_residual", "S_r"),
    ("rs_student", "RS Student"),
    ("rs_base", "RS Base"),
    ("fss", "FSS"),
)
BATCHINGS = (
    ("stratified, 16", 16, "stratified"),
    ("stratified, 32", 32, "stratified"),
    ("stratified, 64", 64, "stratified"),
    ("shuffled, 32", 32, "shuffle"),
    ("file order, 32", 32, "file"),
)
KINDS = ("none", "gradcam")


def _evaluate(demo, layers, dataset, batch_size, order, aggregation):
    loader = stratified_loader(dataset, batch_size, seed=0, order=order)
    ev = evaluate_kd(
        demo.student,
        layers,
        loader,
        base_forward_func=demo.base,
        maps=KINDS,
        aggregation=aggregation,
        progress=False,
        n_bootstrap=1000,
        n_permutations=2000,
    )
    summary = ev.summary()["by_layer"]
    return {
        layer: {kind: {m: summary[layer][kind][m] for m, _ in STATISTICS} for kind in KINDS}
        for layer in layers
    }


def _whole_set(demo, layers, dataset):
    x, y = dataset.images, dataset.labels
    ev = evaluate_kd(
        demo.student,
        layers,
        [(x, y)],
        base_forward_func=demo.base,
        maps=("none",),
        progress=False,
        n_bootstrap=10,
        n_permutations=10,
    )
    return {layer: {m: ev.values[layer]["none"][m][0] for m, _ in STATISTICS} for layer in layers}


def _table(results, exact, layer, kind):
    header = ["statistic", "whole set"] + [
        f"{name}: {agg}" for name, _, _ in BATCHINGS for agg in ("dataset", "batch mean")
    ]
    rows = []
    for metric, title in STATISTICS:
        row = [title, f"{exact[layer][metric]:.3f}" if kind == "none" else "–"]
        for name, _, _ in BATCHINGS:
            for agg in ("dataset", "batch_mean"):
                row.append(format_interval(results[name][agg][layer][kind][metric]))
        rows.append(row)
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="experiments/results/batching")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    demo = train_demo_models(seed=0, quick=args.quick, progress=False)
    r = demo.recipe
    test = ControlledShapes(
        r["sizes"]["test"],
        seed=r["seed"],
        image_size=r["image_size"],
        num_classes=r["num_classes"],
        split="test",
    )
    s_layers, b_layers = stage_layers(demo.student), stage_layers(demo.base)
    layers = {name: (s_layers[name], b_layers[name]) for name in ("L1", "L2", "L3", "L4")}
    results = {
        name: {
            agg: _evaluate(demo, layers, test, bs, order, agg) for agg in ("dataset", "batch_mean")
        }
        for name, bs, order in BATCHINGS
    }
    exact = _whole_set(demo, layers, test)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# FSS and RS of the demo's {'quick ' if args.quick else ''}models against the batching",
        "",
        f"Student vs Base, raw features, {len(test)} cue-free test images "
        f"({r['num_classes']} classes); accuracies Teacher / Base / Student "
        f"{demo.accuracies['teacher']:.3f} / {demo.accuracies['base']:.3f} / "
        f"{demo.accuracies['student']:.3f}. Cells: value [95 % bootstrap interval over "
        "batches]; 'whole set' is one batch of every image (exact).",
        "",
        f"Made by `python experiments/batching.py --out {args.out}"
        f"{' --quick' if args.quick else ''}` in {time.perf_counter() - t0:.0f} s.",
        "",
    ]
    for layer in layers:
        for kind, title in (("none", "raw features"), ("gradcam", "Grad-CAM-masked images")):
            lines += [f"## {layer}, {title}", "", _table(results, exact, layer, kind)]
    (out / "results.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "results.json").write_text(
        json.dumps({"batchings": results, "whole_set": exact}, indent=2, default=float),
        encoding="utf-8",
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
