"""Benchmark: UniCAM against LayerGradCam on the Student plus LayerGradCam on the Base.

torchvision ResNet-18 Student and Base (random weights, ``weights=None``: nothing is
downloaded), eval mode, 3x224x224 inputs. Each row measures both sides in one run,
interleaved (A B A B ..., alternating which goes first), so a change of machine load
hits both alike; on CUDA every timing is bracketed by ``torch.cuda.synchronize()``.

Batch mode (the paper's):
  peer = ``LayerGradCam(student, student.layerK).attribute(x, y)`` +
  ``LayerGradCam(base, base.layerK).attribute(x, y)``;
  UniCAM = ``UniCAM(student, student.layerK, base, base.layerK).attribute(x, y,
  features="both")`` (both maps from one forward pass of each model), batch 32.
  Bar: ratio <= 1.15 at layer4 (layer1 for information).

Reference mode: ``UniCAM(..., reference=(ref_x, ref_y))`` with a 64-image reference set,
explaining 256 images in calls of 1 image (bar <= 1.5x the two LayerGradCam calls, also
one image per call) and in calls of 32 (bar <= 1.3x).

Beside the times: the tensor operations of one UniCAM call beyond the two forward passes
(torch.profiler, top-level aten operations; bar <= 300) and its host round trips (bar
<= 2); see benchmarks/counting.py and docs/method.md.

    python benchmarks/bench_unicam.py [--device cuda] [--quick] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from captum.attr import LayerGradCam
from torchvision.models import resnet18

sys.path.insert(0, str(Path(__file__).resolve().parent))
from counting import RoundTrips, count_ops  # noqa: E402

from captum_unicam.attr import UniCAM  # noqa: E402

BAR_BATCH = 1.15
BAR_REF_ONE = 1.5
BAR_REF_32 = 1.3


def _models(device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    student = resnet18(weights=None).eval().to(device)
    base = resnet18(weights=None).eval().to(device)
    return student, base


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _interleaved(
    peer: Callable, ours: Callable, repeats: int, device: torch.device
) -> Dict[str, object]:
    peer()  # warm-up (allocator, kernels, the reference cache)
    ours()
    t_peer: List[float] = []
    t_ours: List[float] = []
    for i in range(repeats):
        if i % 2 == 0:
            t_peer.append(_timed(peer, device))
            t_ours.append(_timed(ours, device))
        else:
            t_ours.append(_timed(ours, device))
            t_peer.append(_timed(peer, device))
    p, o = statistics.median(t_peer), statistics.median(t_ours)
    return {"peer": p, "ours": o, "ratio": o / p, "pairs": [u / q for u, q in zip(t_ours, t_peer)]}


def _counts(student, base, call: Callable, x: torch.Tensor) -> Dict[str, int]:
    """Per call: ``call`` should pass its targets as a list (host data): a target tensor on
    the device costs one more round trip, its copy to the host for the argument checks."""

    def forward():
        with torch.no_grad():
            student(x)
            base(x)

    forward()
    call()
    ops = count_ops(call) - count_ops(forward)
    with RoundTrips() as trips:
        call()
    return {"ops": ops, "trips": trips.count}


def _row(name: str, r: Dict[str, object], counts: Dict[str, int], bar: float | None) -> str:
    verdict = "(info)" if bar is None else f"<= {bar} {'PASS' if r['ratio'] <= bar else 'FAIL'}"
    pairs = ", ".join(f"{v:.2f}" for v in r["pairs"])
    return (
        f"| {name} | {1000 * r['peer']:.1f} | {1000 * r['ours']:.1f} | {r['ratio']:.3f} | {pairs} | "
        f"{counts['ops']} | {counts['trips']} | {verdict} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (CPU runs)")
    parser.add_argument("--layers", nargs="+", default=["layer4", "layer1"])
    parser.add_argument(
        "--ref-images", type=int, default=256, help="images explained in reference mode"
    )
    parser.add_argument("--ref-size", type=int, default=64, help="images in the reference set")
    parser.add_argument("--ref-repeats", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true", help="skip the reference-mode rows")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a sanity run")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.size, args.repeats = 8, 64, 3
        args.ref_images, args.ref_size, args.ref_repeats = 16, 12, 3

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    student, base = _models(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
    y = (torch.arange(args.batch) % min(10, args.batch // 2)).to(device)  # repeated classes
    where = f"{device.type}" + (
        f", {args.threads} threads"
        if device.type == "cpu"
        else f" ({torch.cuda.get_device_name(device)})"
    )
    print(
        f"UniCAM vs LayerGradCam(student) + LayerGradCam(base): ResNet-18, 3x{args.size}x{args.size}, "
        f"{where}, interleaved repeats, medians"
    )
    print()
    print(
        "| row | 2 x LayerGradCam (ms) | UniCAM (ms) | ratio | per-repeat ratios "
        "| UniCAM ops beyond forwards | host round trips | bar |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for layer in args.layers:
        s_layer, b_layer = getattr(student, layer), getattr(base, layer)
        cam_s, cam_b = LayerGradCam(student, s_layer), LayerGradCam(base, b_layer)
        unicam = UniCAM(student, s_layer, base, b_layer)

        def peer(cam_s=cam_s, cam_b=cam_b):
            return cam_s.attribute(x, target=y), cam_b.attribute(x, target=y)

        def ours(unicam=unicam):
            return unicam.attribute(x, target=y, features="both")

        r = _interleaved(peer, ours, args.repeats, device)
        y_list = y.tolist()
        counts = _counts(
            student,
            base,
            lambda unicam=unicam, y_list=y_list: unicam.attribute(
                x, target=y_list, features="both"
            ),
            x,
        )
        name = f"batch {args.batch}, {layer}, both"
        print(_row(name, r, counts, BAR_BATCH if layer == "layer4" else None), flush=True)

    if not args.no_reference:
        m, total = args.ref_size, args.ref_images
        gx = torch.Generator().manual_seed(2)
        ref_x = torch.randn(m, 3, args.size, args.size, generator=gx).to(device)
        ref_y = (torch.arange(m) % 10).to(device)
        images = torch.randn(total, 3, args.size, args.size, generator=gx).to(device)
        labels = (torch.arange(total) % 10).to(device)
        cam_s, cam_b = LayerGradCam(student, student.layer4), LayerGradCam(base, base.layer4)
        unicam = UniCAM(student, student.layer4, base, base.layer4, reference=(ref_x, ref_y))
        for per_call, bar in ((1, BAR_REF_ONE), (min(32, total), BAR_REF_32)):
            chunks = [
                (images[i : i + per_call], labels[i : i + per_call])
                for i in range(0, total, per_call)
            ]

            def peer(chunks=chunks):
                for xi, yi in chunks:
                    cam_s.attribute(xi, target=yi)
                    cam_b.attribute(xi, target=yi)

            def ours(chunks=chunks):
                for xi, yi in chunks:
                    unicam.attribute(xi, target=yi, features="both")

            r = _interleaved(peer, ours, args.ref_repeats, device)
            first = chunks[0]
            first_y = first[1].tolist()
            counts = _counts(
                student,
                base,
                lambda unicam=unicam, first=first, first_y=first_y: unicam.attribute(
                    first[0], target=first_y, features="both"
                ),
                first[0],
            )
            name = f"reference mode (m={m}), {total} images in calls of {per_call}, layer4, both"
            print(_row(name, r, counts, bar), flush=True)
    print()
    print("Times are per row (all images of the row); counts are per UniCAM call.")
    print("Figures are provisional when the machine is shared (see the spread of the repeats).")


if __name__ == "__main__":
    main()
