"""Benchmark: UniCAM distilled + residual against two LayerGradCam calls.

Setting of DESIGN.md section 6: torchvision ResNet-18 Student and Base (random weights,
``weights=None``: nothing is downloaded), eval mode, batch 32 of 3x224x224, CPU,
``torch.set_num_threads(2)``. In one run, the two sides are measured interleaved
(A B A B ...), so a change of machine load hits both alike:

- peer: ``LayerGradCam(student, student.layerK).attribute(x, y)`` +
  ``LayerGradCam(base, base.layerK).attribute(x, y)``;
- UniCAM: ``UniCAM(student, student.layerK, base, base.layerK).attribute(x, y,
  features="both")`` (distilled and residual maps from one forward pass of each model).

Bar: ratio UniCAM / peer <= 1.15 at layer4 (L4). Layer1 (L1) is printed for information.

    python benchmarks/bench_unicam.py [--repeats 5] [--batch 32] [--size 224] [--layers layer4 layer1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from captum.attr import LayerGradCam
from torchvision.models import resnet18

from captum_unicam.attr import UniCAM

BAR = 1.15


def _models(seed: int = 0):
    torch.manual_seed(seed)
    student = resnet18(weights=None).eval()
    base = resnet18(weights=None).eval()
    return student, base


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_layer(student, base, layer: str, x: torch.Tensor, y: torch.Tensor, repeats: int) -> dict:
    s_layer, b_layer = getattr(student, layer), getattr(base, layer)
    grad_cam_s = LayerGradCam(student, s_layer)
    grad_cam_b = LayerGradCam(base, b_layer)
    unicam = UniCAM(student, s_layer, base, b_layer)

    def peer():
        grad_cam_s.attribute(x, target=y)
        grad_cam_b.attribute(x, target=y)

    def ours():
        unicam.attribute(x, target=y, features="both")

    peer()  # warm-up (allocator, kernels)
    ours()
    t_peer, t_ours = [], []
    for i in range(repeats):
        # alternate which side goes first, so neither always follows the other
        if i % 2 == 0:
            t_peer.append(_timed(peer))
            t_ours.append(_timed(ours))
        else:
            t_ours.append(_timed(ours))
            t_peer.append(_timed(peer))
    peer_median, ours_median = statistics.median(t_peer), statistics.median(t_ours)
    return {
        "layer": layer,
        "peer": peer_median,
        "unicam": ours_median,
        "ratio": ours_median / peer_median,
        "peer_all": t_peer,
        "unicam_all": t_ours,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", nargs="+", default=["layer4", "layer1"])
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    student, base = _models()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    y = torch.arange(args.batch) % 10

    print(
        f"UniCAM (features='both') vs LayerGradCam(student) + LayerGradCam(base): ResNet-18, "
        f"batch {args.batch}, 3x{args.size}x{args.size}, CPU, {args.threads} threads, "
        f"{args.repeats} interleaved repeats, medians"
    )
    print()
    print("| layer | 2 x LayerGradCam (s) | UniCAM both (s) | ratio | per-repeat ratios | bar |")
    print("|---|---|---|---|---|---|")
    for layer in args.layers:
        r = bench_layer(student, base, layer, x, y, args.repeats)
        name = {"layer1": "L1", "layer2": "L2", "layer3": "L3", "layer4": "L4"}.get(layer, layer)
        bar = f"<= {BAR} {'PASS' if r['ratio'] <= BAR else 'FAIL'}" if layer == "layer4" else "(info)"
        pairs = ", ".join(f"{u / p:.2f}" for u, p in zip(r["unicam_all"], r["peer_all"]))
        print(f"| {name} ({layer}) | {r['peer']:.3f} | {r['unicam']:.3f} | {r['ratio']:.3f} | {pairs} | {bar} |")
    print()
    print("Figures are provisional when the machine is shared (see the spread of the repeats).")


if __name__ == "__main__":
    main()
