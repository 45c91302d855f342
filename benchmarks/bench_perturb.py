"""Benchmark: batched ``road_impute`` against grad-cam's ``NoisyLinearImputer`` looped per image.

Setting (the project's benchmark setting): batch 32, 3 x 224 x 224 images, CAM-like saliency (random
7 x 7 maps upsampled bilinearly to 224 x 224: large smooth holes), 50 % of the pixels
removed, noise 0, ``torch.set_num_threads(2)``. Both run in the same process on the same
images and the same removal masks (``road_impute``'s); the time is the best of
``--repeats`` runs.

Bars: >= 5x faster than the loop; max abs difference <= 1e-3.

On a machine shared with other jobs, two torch threads spend much of their time waiting
for each other at the end of every operation (road_impute runs a few hundred of them);
the CPU-time ratio and a run with ``--threads 1`` show how much of a low ratio is that.

    python benchmarks/bench_perturb.py [--batch 32] [--size 224] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def _data(batch: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # smooth synthetic images (a blurred noise field plus fine noise), in [0, 1]
    coarse = torch.rand(batch, 3, size // 8, size // 8, generator=g)
    images = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    images = (0.8 * images + 0.2 * torch.rand(batch, 3, size, size, generator=g)).clamp(0, 1)
    cams = torch.rand(batch, 1, 7, 7, generator=g)  # CAM-like: a 7x7 map, upsampled inside
    return images.contiguous(), cams


def _best(fn, repeats: int):
    """Best wall time and best CPU time (this process, all threads) over the repeats."""
    out, walls, cpus = None, [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--percentile", type=float, default=50.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    from captum_unicam.perturb import _saliency_maps, removal_mask, road_impute

    images, cams = _data(args.batch, args.size)
    # the removal mask road_impute uses, handed to grad-cam (1 = kept, 0 = imputed)
    removed = removal_mask(_saliency_maps(images, cams, "bench"), args.percentile)
    keep = (~removed[:, 0]).float()
    imputer = NoisyLinearImputer(noise=0.0)

    def loop():
        return torch.stack([imputer(images[i], keep[i]) for i in range(args.batch)])

    def batched():
        return road_impute(images, cams, percentile=args.percentile, noise=0.0)

    batched()  # warm-up
    t_ours, c_ours, ours = _best(batched, args.repeats)
    t_ref, c_ref, ref = _best(loop, args.repeats)
    diff = (ours - ref).abs().max().item()
    ratio = t_ref / t_ours

    print(
        f"road_impute vs grad-cam NoisyLinearImputer: batch {args.batch}, "
        f"3x{args.size}x{args.size}, CAM-like 7x7 maps, {args.percentile:g}% removed, noise 0, "
        f"{torch.get_num_threads()} threads, best of {args.repeats}"
    )
    print(f"{'method':<38} {'wall (s)':>9} {'per image (ms)':>15} {'CPU (s)':>9}")
    for name, wall, cpu in (
        ("grad-cam NoisyLinearImputer, looped", t_ref, c_ref),
        ("captum_unicam road_impute, batched", t_ours, c_ours),
    ):
        print(f"{name:<38} {wall:>9.3f} {1e3 * wall / args.batch:>15.1f} {cpu:>9.3f}")
    print(f"speed-up (wall): {ratio:.2f}x (bar >= 5x) {'PASS' if ratio >= 5 else 'FAIL'}")
    print(f"speed-up (CPU time of all threads, steadier under load): {c_ref / c_ours:.2f}x")
    print(f"max abs difference: {diff:.2e} (bar <= 1e-3) {'PASS' if diff <= 1e-3 else 'FAIL'}")


if __name__ == "__main__":
    main()
