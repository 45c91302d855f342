"""Benchmark: evaluate_kd over L1..L4 in one call against one call per layer.

torchvision ResNet-18 Student and Base (random weights, ``weights=None``: nothing is
downloaded), eval mode, CPU (or ``--device cuda``: the models are moved there and
``evaluate_kd(..., device=None)`` follows them), ``torch.set_num_threads(2)``, two batches of
32 images of 3x112x112, all four map kinds (raw, Grad-CAM, UniCAM distilled, UniCAM residual).

- peer: ``evaluate_kd`` called once per layer with a one-layer dict (each call runs the
  Grad-CAM forward + backward and the raw-feature forward for its own layer);
- ours: one ``evaluate_kd`` call with the four layers (Grad-CAM of all layers from one
  forward + backward per model, raw features of all layers from one forward).

The two are timed interleaved (A B A B ...) and their per-batch values must be identical.

    python benchmarks/bench_evaluate_kd.py [--repeats 3] [--batch 32] [--size 112] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.models import resnet18

from captum_unicam.metrics import evaluate_kd


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--device", default="cpu", help="where the models live (cpu, cuda, cuda:1)")
    args = parser.parse_args()
    torch.set_num_threads(2)

    torch.manual_seed(0)
    device = torch.device(args.device)
    student = resnet18(weights=None, num_classes=10).eval().to(device)
    base = resnet18(weights=None, num_classes=10).eval().to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2 * args.batch, 3, args.size, args.size, generator=g)
    y = torch.arange(2 * args.batch) % 10
    loader = [(x[: args.batch], y[: args.batch]), (x[args.batch :], y[args.batch :])]
    layers = {
        f"L{i}": (getattr(student, f"layer{i}")[-1], getattr(base, f"layer{i}")[-1])
        for i in range(1, 5)
    }
    options = dict(progress=False, n_bootstrap=10, n_permutations=10)

    def together():
        return evaluate_kd(student, layers, loader, base_forward_func=base, **options).values

    def one_by_one():
        return {
            name: evaluate_kd(
                student, {name: pair}, loader, base_forward_func=base, **options
            ).values[name]
            for name, pair in layers.items()
        }

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out, time.perf_counter() - t0

    t_ours, t_peer = [], []
    for _ in range(args.repeats):
        ours, t = timed(together)
        t_ours.append(t)
        peer, t = timed(one_by_one)
        t_peer.append(t)

    diff = max(
        abs(a - b)
        for name in layers
        for kind in ours[name]
        for metric in ours[name][kind]
        for a, b in zip(ours[name][kind][metric], peer[name][kind][metric])
    )
    m_ours, m_peer = statistics.median(t_ours), statistics.median(t_peer)
    print(
        f"evaluate_kd, ResNet-18, 2 batches of {args.batch} x 3x{args.size}x{args.size}, L1..L4, "
        f"4 map kinds, {device}, {torch.get_num_threads()} CPU threads, {args.repeats} interleaved repeats, medians"
    )
    print()
    print("| what | time (s) | per-repeat (s) |")
    print("|---|---|---|")
    print(f"| one call per layer (peer) | {m_peer:.2f} | {', '.join(f'{t:.2f}' for t in t_peer)} |")
    print(f"| one call, four layers | {m_ours:.2f} | {', '.join(f'{t:.2f}' for t in t_ours)} |")
    print()
    print(f"speed-up: {m_peer / m_ours:.2f}x; max |difference| of the per-batch values: {diff:.3g}")


if __name__ == "__main__":
    main()
