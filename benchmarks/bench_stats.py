"""Benchmark: partial distance correlation at n=128, d=100,352 (ResNet-50 L1 at 112^2 scale).

Measures, in one run and on the same data:

- ``captum_unicam.stats.partial_distance_correlation`` on float32 tensors;
- ``dcor.partial_distance_correlation`` on the same arrays (the reference);
- the floor: the three Gram products x x^T, y y^T, z z^T that any Gram-based method needs;
- peak extra memory of each (in a fresh subprocess, from ru_maxrss);
- agreement with dcor in float64 (bar: 1e-9) and in float32.

Bars (DESIGN.md section 6): >= 100x faster than dcor, <= 3x the floor, float64 within 1e-9.

    python benchmarks/bench_stats.py [--n 128] [--d 100352] [--repeats 9] [--dcor-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch


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


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--d", type=int, default=100352)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--dcor-repeats", type=int, default=3)
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, args.n, args.d)
        return

    import dcor

    from captum_unicam import stats

    n, d = args.n, args.d
    # first, while this process is small: a child's peak RSS starts at its parent's RSS
    # at fork time, so measuring later would hide the children's growth
    mem = {k: _memory(k, n, d) for k in ("floor", "ours", "dcor")}
    x, y, z = _data(n, d)
    xn, yn, zn = x.numpy(), y.numpy(), z.numpy()

    # interleaved rounds, so that the floor and ours see the same machine state (on a
    # shared VM the speed of the same matmul drifts by up to 30 % over a minute)
    floor_fn = lambda: [v @ v.T for v in (x, y, z)]  # noqa: E731
    ours_fn = lambda: stats.partial_distance_correlation(x, y, z)  # noqa: E731
    dcor_fn = lambda: dcor.partial_distance_correlation(xn, yn, zn)  # noqa: E731
    t_floor, t_ours, t_dcor = [], [], []
    for fn in (floor_fn, ours_fn, dcor_fn):
        fn()  # warm-up
    for i in range(max(args.repeats, args.dcor_repeats)):
        t_floor.append(_seconds(floor_fn))
        t_ours.append(_seconds(ours_fn))
        if i < args.dcor_repeats:
            t_dcor.append(_seconds(dcor_fn))
    t_floor, t_ours, t_dcor = (statistics.median(t) for t in (t_floor, t_ours, t_dcor))

    ours32 = float(stats.partial_distance_correlation(x, y, z))
    ref32 = float(dcor.partial_distance_correlation(xn.astype(np.float64), yn.astype(np.float64), zn.astype(np.float64)))
    x64, y64, z64 = (t.double() for t in (x, y, z))
    ours64 = float(stats.partial_distance_correlation(x64, y64, z64))
    err64 = abs(ours64 - ref32)  # ref32 is dcor on the float64 copy of the same data
    err32 = abs(ours32 - ref32)


    rows = [
        ("floor: 3 Gram products (float32)", t_floor, mem["floor"]),
        ("captum_unicam.stats pdCor (float32)", t_ours, mem["ours"]),
        ("dcor pdCor (float32 arrays)", t_dcor, mem["dcor"]),
    ]
    print(f"partial_distance_correlation, n={n}, d={d}, torch threads={torch.get_num_threads()}")
    print(f"{'what':40s} {'time (ms)':>10s} {'peak extra MiB':>15s}")
    for name, t, m in rows:
        print(f"{name:40s} {1000 * t:10.1f} {m:15.1f}")
    input_mib = 3 * n * d * 4 / 2**20
    speedup = t_dcor / t_ours
    vs_floor = t_ours / t_floor
    print()
    print(f"speed-up over dcor:        {speedup:8.1f}x   (bar >= 100x)  {'OK' if speedup >= 100 else 'MISSED'}")
    print(f"time / floor:              {vs_floor:8.2f}x   (bar <= 3x)    {'OK' if vs_floor <= 3 else 'MISSED'}")
    print(f"|ours - dcor|, float64:    {err64:10.2e} (bar <= 1e-9)  {'OK' if err64 <= 1e-9 else 'MISSED'}")
    print(f"|ours - dcor|, float32 in: {err32:10.2e} (float32 Gram, float64 after it)")
    print(f"inputs: {input_mib:.0f} MiB; an (n, n, d) tensor would be {n * n * d * 4 / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
