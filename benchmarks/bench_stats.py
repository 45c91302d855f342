"""Benchmark: partial distance correlation at n=128, d=100,352 (ResNet-50 L1 at 112^2 scale).

Measures, in one run and on the same data:

- ``captum_unicam.stats.partial_distance_correlation`` on float32 tensors;
- ``dcor.partial_distance_correlation`` on the same arrays (the reference);
- the floor: the three Gram products x x^T, y y^T, z z^T that any Gram-based method needs;
- peak extra memory of each (in a fresh subprocess, from ru_maxrss);
- agreement with dcor in float64 (bar: 1e-9) and in float32.

Beside the times: the tensor operations of one call (torch.profiler, top-level aten
operations) and its host round trips (benchmarks/counting.py).

Bars (docs/method.md): >= 100x faster than dcor, <= 3x the floor (<= 2x on an H200),
float64 within 1e-9.

    python benchmarks/bench_stats.py [--n 128] [--d 100352] [--repeats 9] [--dcor-repeats 3]
    python benchmarks/bench_stats.py --device cuda --no-dcor   # GPU: floor and ours only
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from counting import RoundTrips, count_ops  # noqa: E402


def _data(n: int, d: int, seed: int = 0, dtype=torch.float32):
    """x: ReLU features; z: a Base sharing most of x; y: labels-like, partly from x.

    Built in place so that the only memory is the three inputs (the memory child
    measures growth of the peak over this).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n, d, dtype=dtype).normal_(generator=g).relu_()
    z = torch.empty(n, d, dtype=dtype).normal_(generator=g).relu_().mul_(0.3).add_(x, alpha=0.7)
    y = torch.empty(n, d // 2, dtype=dtype).normal_(generator=g).neg_().add_(x[:, : d // 2])
    return x, y, z


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_CPU = torch.device("cpu")


def _seconds(fn, device: torch.device = _CPU) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _memory_child(which: str, n: int, d: int) -> None:
    """Runs in a subprocess: prints the peak RSS growth (MiB) of one computation."""
    import dcor

    from captum_unicam import stats

    x, y, z = _data(n, d)
    xn, yn, zn = x.numpy(), y.numpy(), z.numpy()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if which == "ours":
        stats.partial_distance_correlation(x, y, z)
    elif which == "floor":
        [v @ v.T for v in (x, y, z)]
    else:
        dcor.partial_distance_correlation(xn, yn, zn)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_extra_mib": (after - before) / 1024}))


def _memory(which: str, n: int, d: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", which, "--n", str(n), "--d", str(d)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--d", type=int, default=100352)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--dcor-repeats", type=int, default=3)
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--no-dcor", action="store_true", help="skip dcor and the memory children (slow)"
    )
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, args.n, args.d)
        return

    from captum_unicam import stats

    device = torch.device(args.device)
    n, d = args.n, args.d
    use_dcor = not args.no_dcor
    # first, while this process is small: a child's peak RSS starts at its parent's RSS
    # at fork time, so measuring later would hide the children's growth
    mem = (
        {k: _memory(k, n, d) for k in ("floor", "ours", "dcor")}
        if use_dcor and device.type == "cpu"
        else {}
    )
    x, y, z = _data(n, d)
    xn, yn, zn = x.numpy(), y.numpy(), z.numpy()
    xd, yd, zd = (t.to(device) for t in (x, y, z))

    # interleaved rounds, so that the floor and ours see the same machine state (on a
    # shared VM the speed of the same matmul drifts by up to 30 % over a minute)
    floor_fn = lambda: [v @ v.T for v in (xd, yd, zd)]  # noqa: E731
    ours_fn = lambda: stats.partial_distance_correlation(xd, yd, zd)  # noqa: E731
    fns = [floor_fn, ours_fn]
    if use_dcor:
        import dcor

        dcor_fn = lambda: dcor.partial_distance_correlation(xn, yn, zn)  # noqa: E731
        fns.append(dcor_fn)
    t_floor, t_ours, t_dcor = [], [], []
    for fn in fns:
        fn()  # warm-up
    for i in range(max(args.repeats, args.dcor_repeats if use_dcor else 0)):
        if i < args.repeats:
            t_floor.append(_seconds(floor_fn, device))
            t_ours.append(_seconds(ours_fn, device))
        if use_dcor and i < args.dcor_repeats:
            t_dcor.append(_seconds(dcor_fn))
    t_floor, t_ours = statistics.median(t_floor), statistics.median(t_ours)
    t_dcor = statistics.median(t_dcor) if t_dcor else float("nan")

    ops = count_ops(ours_fn)
    with RoundTrips() as trips:
        ours_fn()

    x64, y64, z64 = (t.double().to(device) for t in (x, y, z))
    ours32 = float(stats.partial_distance_correlation(xd, yd, zd))
    ours64 = float(stats.partial_distance_correlation(x64, y64, z64))

    where = f"{device.type}" + (
        f" ({torch.cuda.get_device_name(device)})"
        if device.type == "cuda"
        else f", torch threads={torch.get_num_threads()}"
    )
    print(f"partial_distance_correlation, n={n}, d={d}, float32, {where}")
    print(f"{'what':40s} {'time (ms)':>10s} {'peak extra MiB':>15s}")
    rows = [
        ("floor: 3 Gram products (float32)", t_floor, mem.get("floor")),
        ("captum_unicam.stats pdCor (float32)", t_ours, mem.get("ours")),
    ]
    if use_dcor:
        rows.append(("dcor pdCor (float32 arrays)", t_dcor, mem.get("dcor")))
    for name, t, m in rows:
        print(f"{name:40s} {1000 * t:10.2f} {'-' if m is None else f'{m:.1f}':>15s}")
    vs_floor = t_ours / t_floor
    print()
    print(f"time / floor:              {vs_floor:8.2f}x   (bar <= 3x; <= 2x on an H200)")
    print(
        f"operations per call:       {ops:8d}    host round trips per call: {trips.count} (the NaN/Inf check)"
    )
    if use_dcor:
        ref32 = float(
            dcor.partial_distance_correlation(
                xn.astype(np.float64), yn.astype(np.float64), zn.astype(np.float64)
            )
        )
        err64 = abs(ours64 - ref32)  # ref32 is dcor on the float64 copy of the same data
        err32 = abs(ours32 - ref32)
        speedup = t_dcor / t_ours
        print(
            f"speed-up over dcor:        {speedup:8.1f}x   (bar >= 100x)  {'OK' if speedup >= 100 else 'MISSED'}"
        )
        print(
            f"|ours - dcor|, float64:    {err64:10.2e} (bar <= 1e-9)  {'OK' if err64 <= 1e-9 else 'MISSED'}"
        )
        print(f"|ours - dcor|, float32 in: {err32:10.2e} (float32 Gram, float64 after it)")
    else:
        print(f"|float32 - float64|:       {abs(ours32 - ours64):10.2e} (dcor skipped: --no-dcor)")
    print(
        f"inputs: {3 * n * d * 4 / 2**20:.0f} MiB; an (n, n, d) tensor would be {n * n * d * 4 / 2**30:.1f} GiB"
    )


if __name__ == "__main__":
    main()
