"""Benchmark: the dataset-level estimator of evaluate_kd against the per-batch mean it replaces.

torchvision ResNet-18 Student and Base (random weights, ``weights=None``: nothing is
downloaded), eval mode, raw features (``maps=("none",)``) at L1..L4, ``--batches`` batches of
``--batch`` images of 3x``--size``x``--size``.

- peer: ``evaluate_kd(..., aggregation="batch_mean")``, the paper's mean of per-batch
  correlations;
- ours: ``evaluate_kd(..., aggregation="dataset")`` (the default), which also accumulates the
  U-centred inner products of every batch and forms the correlations from their sums.

Both compute the same forward passes; the difference is the bookkeeping of the products and
the bootstrap over batches of the accumulated sums in ``summary()``. The two are timed
interleaved (A B A B ...), each including ``summary()``; the ratio is ours / peer.

    python benchmarks/bench_estimator.py [--repeats 3] [--batches 4] [--batch 32] [--size 112]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.models import resnet18

from captum_unicam.metrics import evaluate_kd


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    student = resnet18(weights=None, num_classes=10).eval()
    base = resnet18(weights=None, num_classes=10).eval()
    g = torch.Generator().manual_seed(1)
    n = args.batches * args.batch
    x = torch.randn(n, 3, args.size, args.size, generator=g)
    y = torch.arange(n) % 5  # classes repeat in every batch
    loader = [(x[i : i + args.batch], y[i : i + args.batch]) for i in range(0, n, args.batch)]
    layers = {
        f"L{i}": (getattr(student, f"layer{i}")[-1], getattr(base, f"layer{i}")[-1])
        for i in range(1, 5)
    }
    options = dict(maps=("none",), progress=False, n_bootstrap=1000, n_permutations=1000)

    def run(aggregation: str):
        t0 = time.perf_counter()
        ev = evaluate_kd(
            student, layers, loader, base_forward_func=base, aggregation=aggregation, **options
        )
        summary = ev.summary()
        return summary, time.perf_counter() - t0

    times = {"batch_mean": [], "dataset": []}
    for _ in range(args.repeats):
        for aggregation in times:
            _, t = run(aggregation)
            times[aggregation].append(t)
    peer, ours = (statistics.median(times[k]) for k in ("batch_mean", "dataset"))
    print(
        f"evaluate_kd raw features, ResNet-18, {args.batches} batches of {args.batch} x "
        f"3x{args.size}x{args.size}, L1..L4, {args.threads} CPU threads, {args.repeats} "
        "interleaved repeats, medians, summary() included"
    )
    print()
    print("| aggregation | time (s) | per-repeat (s) |")
    print("|---|---|---|")
    for key, label in (("batch_mean", "per-batch mean (peer)"), ("dataset", "dataset-level")):
        per = ", ".join(f"{t:.2f}" for t in times[key])
        print(f"| {label} | {statistics.median(times[key]):.2f} | {per} |")
    print()
    print(f"ratio dataset-level / per-batch mean: {ours / peer:.3f}x (bar: <= 1.05x)")


if __name__ == "__main__":
    main()
