"""pipeline.batches: seeded, class-stratified batches and the rule for a short last batch."""

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from captum_unicam.errors import InputError
from captum_unicam.pipeline.batches import (
    MIN_BATCH,
    StratifiedBatchSampler,
    batch_sizes,
    first_per_class,
    stratified_loader,
)


@given(n=st.integers(MIN_BATCH, 400), bs=st.integers(MIN_BATCH, 64))
def test_batch_sizes_rule(n, bs):
    sizes = batch_sizes(n, bs)
    assert sum(sizes) == n  # nothing dropped
    assert all(s >= MIN_BATCH for s in sizes)
    full, rest = divmod(n, bs)
    if full == 0:
        assert sizes == [n]
    elif rest >= MIN_BATCH:
        assert sizes == [bs] * full + [rest]
    else:  # a short remainder is merged into the batch before it
        assert sizes == [bs] * (full - 1) + [bs + rest]


def test_batch_sizes_by_hand():
    assert batch_sizes(40, 16) == [16, 16, 8]
    assert batch_sizes(35, 16) == [16, 19]
    assert batch_sizes(32, 16) == [16, 16]
    with pytest.raises(InputError, match="at least 5"):
        batch_sizes(4, 5)
    with pytest.raises(InputError, match=">= 5"):
        batch_sizes(100, 4)


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(2, 10),
    per_class=st.integers(1, 30),
    bs=st.integers(MIN_BATCH, 40),
    seed=st.integers(0, 99),
    order=st.sampled_from(["stratified", "shuffle", "file"]),
)
def test_every_item_once_and_balanced_batches_hold_all_classes(k, per_class, bs, seed, order):
    labels = [c for c in range(k) for _ in range(per_class)]  # class-ordered, like a folder
    assume(len(labels) >= MIN_BATCH)
    sampler = StratifiedBatchSampler(labels, bs, seed, order)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(labels)))
    assert [len(b) for b in batches] == batch_sizes(len(labels), bs)
    assert list(StratifiedBatchSampler(labels, bs, seed, order)) == batches  # seeded
    if order == "stratified":
        for b in batches:
            assert len({labels[i] for i in b}) == min(len(b), k)
    if order == "file":
        assert [i for b in batches for i in b] == list(range(len(labels)))


def test_unbalanced_classes_spread_in_proportion():
    labels = [0] * 60 + [1] * 30 + [2] * 10
    for b in StratifiedBatchSampler(labels, 10, seed=0):
        counts = torch.bincount(torch.tensor([labels[i] for i in b]), minlength=3).tolist()
        assert abs(counts[0] - 6) <= 1 and abs(counts[1] - 3) <= 1 and abs(counts[2] - 1) <= 1


def test_loader_yields_the_sampler_batches():
    x = torch.arange(24.0).view(24, 1)
    y = torch.arange(24) // 6  # 4 classes, class-ordered
    ds = TensorDataset(x, y)
    ds.targets = y.tolist()
    loader = stratified_loader(ds, 8, seed=1)
    got = [b[1].tolist() for b in loader]
    assert [len(g) for g in got] == [8, 8, 8]
    assert all(
        sorted(set(g)) == [0, 1, 2, 3] and all(g.count(c) == 2 for c in range(4)) for g in got
    )
    assert [b[1].tolist() for b in loader] == got  # the same batches on every pass
    with pytest.raises(InputError, match="shuffle"):
        stratified_loader(ds, 8, shuffle=True)
    with pytest.raises(InputError, match="order"):
        stratified_loader(ds, 8, order="random")


def test_first_per_class():
    labels = [2, 2, 0, 1, 0, 2]
    assert first_per_class(labels) == [2, 3, 0]
    assert first_per_class(labels, 5) == [2, 3, 0, 4, 1]
