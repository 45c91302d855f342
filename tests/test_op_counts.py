"""UniCAM's own work per call: tensor operations and host round trips, counted (not timed).

Bars (docs/method.md): at most 300 tensor operations per ``attribute(features="both")``
beyond the two forward passes, counted with torch.profiler on the CPU, and at most 2
host round trips (reads of device values, data-dependent output sizes), counted by a
TorchDispatchMode that sees every operation (benchmarks/counting.py). On CUDA, a
target given as a CUDA tensor adds its one copy to the host in the argument checks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_unicam_common import SmallResNet, batch, make

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from counting import RoundTrips, count_ops  # noqa: E402

from captum_unicam import stats  # noqa: E402
from captum_unicam.attr import UniCAM  # noqa: E402

MAX_OPS = 300
MAX_ROUND_TRIPS = 2


@pytest.fixture(scope="module")
def setting():
    student, base = (
        make(SmallResNet, 1, dtype=torch.float32),
        make(SmallResNet, 2, dtype=torch.float32),
    )
    x, y = batch(12, seed=3, dtype=torch.float32)
    return student, base, x, y.tolist()


def _forward_ops(student, base, x) -> int:
    def forward():
        with torch.no_grad():
            student(x)
            base(x)

    forward()
    return count_ops(forward)


@pytest.mark.parametrize("layer", ["layer1", "layer2"])
def test_operations_per_attribute_both(setting, layer):
    student, base, x, y = setting
    unicam = UniCAM(student, getattr(student, layer), base, getattr(base, layer))
    call = lambda: unicam.attribute(x, target=y, features="both")  # noqa: E731
    call()
    ops = count_ops(call) - _forward_ops(student, base, x)
    assert 0 < ops <= MAX_OPS, ops


def test_operations_do_not_grow_with_the_batch(setting):
    student, base, x, y = setting
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    counts = []
    for n in (6, 12):

        def call(n=n):
            return unicam.attribute(x[:n], target=y[:n], features="both")

        call()
        counts.append(count_ops(call) - _forward_ops(student, base, x[:n]))
    assert counts[0] == counts[1]


@pytest.mark.filterwarnings(
    "ignore::captum_unicam.attr.UniCAMWarning"
)  # target=None: one predicted class
@pytest.mark.parametrize("target", ["list", "none", "vectors"])
def test_round_trips_per_attribute_both(setting, target):
    student, base, x, y = setting
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    t = {"list": y, "none": None, "vectors": torch.randn(12, 3)}[target]
    unicam.attribute(x, target=t, features="both")
    with RoundTrips() as trips:
        unicam.attribute(x, target=t, features="both")
    assert 1 <= trips.count <= MAX_ROUND_TRIPS, trips.names


def test_operations_reference_mode(setting):
    student, base, x, y = setting
    unicam = UniCAM(student, student.layer2, base, base.layer2, reference=(x[4:], y[4:]))
    call = lambda: unicam.attribute(x[:4], target=y[:4], features="both")  # noqa: E731
    call()  # builds the cache
    ops = count_ops(call) - _forward_ops(student, base, x[:4])
    assert 0 < ops <= MAX_OPS, ops


def test_round_trips_reference_mode(setting):
    student, base, x, y = setting
    unicam = UniCAM(student, student.layer2, base, base.layer2, reference=(x[4:], y[4:]))
    unicam.attribute(x[:4], target=y[:4], features="both")  # builds the cache
    with RoundTrips() as trips:
        unicam.attribute(x[:4], target=y[:4], features="both")
    assert 1 <= trips.count <= MAX_ROUND_TRIPS, trips.names


def test_the_counter_sees_round_trips():
    """The counter itself: each kind of read is seen, host-built values are not."""
    t = torch.randn(5)
    with RoundTrips() as trips:
        float(t.sum())
        bool((t > 0).any())
        t.tolist()
        t.nonzero()
        t[t > 0]
        torch.tensor([1, 2, 3]).max().item()  # host data, from Python numbers
    assert trips.count == 5, trips.names


def test_partial_distance_correlation_one_round_trip():
    """The public statistic reads back once: the NaN/Inf check of its inputs."""
    g = torch.Generator().manual_seed(0)
    x, y, z = (torch.randn(16, 30, generator=g) for _ in range(3))
    with RoundTrips() as trips:
        stats.partial_distance_correlation(x, y, z)
    assert trips.count == 1, trips.names
