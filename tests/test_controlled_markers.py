"""The class-coloured marker of ControlledShapes: a planted, localised feature with its mask."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_unicam.data.controlled import ControlledShapes, marker_side
from captum_unicam.errors import InputError


def _digest(ds: ControlledShapes) -> str:
    # images rounded to 1e-4: the last bits of float32 pixel values differ between CPUs
    # (vectorised math), the generated scenes do not
    h = hashlib.sha256()
    h.update(torch.round(ds.images.double() * 1e4).to(torch.int64).numpy().tobytes())
    for t in (ds.masks, ds.labels):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


# sha256 of images (rounded), masks and labels made by the implementation before the marker
# existed (the parent of commit f3299b6), for two configurations; marker_strength=0 must give
# the same data.
_BEFORE_MARKERS = [
    (
        dict(size=70, seed=3, cue_strength=0.6),
        "0b8cb60aac0c94b30f5b575aed0c82736c19a5b0705c3b31dc76b7b0e08c83f9",
    ),
    (
        dict(size=40, seed=0, image_size=24, num_classes=6, split="transfer"),
        "00f726e07eca04a2e9eeffca11ce94d8d85a08c842ea9629f132f506645b9815",
    ),
]


@pytest.mark.parametrize("kwargs,digest", _BEFORE_MARKERS)
def test_marker_strength_zero_is_bit_identical_to_the_data_before_markers(kwargs, digest):
    ds = ControlledShapes(**kwargs, marker_strength=0.0)
    assert _digest(ds) == digest
    assert _digest(ControlledShapes(**kwargs)) == digest
    assert not bool(ds.has_marker.any())
    assert float(ds.marker_masks.sum()) == 0.0


def _pair(p, **kw):
    return ControlledShapes(**kw, marker_strength=p), ControlledShapes(**kw)


def test_marker_changes_only_its_own_pixels_and_has_the_class_colour():
    marked, plain = _pair(0.8, size=96, seed=5, noise=0.0, cue_strength=0.3)
    mm = marked.marker_masks.bool()
    outside = (~mm).expand_as(marked.images)
    assert torch.equal(marked.images[outside], plain.images[outside])
    assert torch.equal(marked.labels, plain.labels)
    # with noise 0 the marker's pixels are exactly the class colour
    for i in torch.nonzero(marked.has_marker).flatten().tolist():
        px = marked.images[i][:, mm[i, 0]]
        want = marked.marker_palette[int(marked.labels[i])].view(3, 1).expand_as(px)
        assert torch.equal(px, want)
    # object mask = the old object mask minus the marker, so the two are disjoint
    assert torch.equal(marked.masks, plain.masks * (1 - marked.marker_masks))
    assert float((marked.masks * marked.marker_masks).sum()) == 0.0


def test_marker_is_a_square_of_marker_side_inside_the_image():
    ds = ControlledShapes(64, seed=2, image_size=40, marker_strength=1.0)
    side = marker_side(40)
    assert side == 5
    assert bool(ds.has_marker.all())
    for m in ds.marker_masks[:, 0]:
        rows = torch.nonzero(m.sum(1)).flatten()
        cols = torch.nonzero(m.sum(0)).flatten()
        assert len(rows) == side and len(cols) == side
        assert int(rows[-1] - rows[0]) == side - 1 and int(cols[-1] - cols[0]) == side - 1
        assert float(m.sum()) == side * side


def test_marker_presence_rate_and_independence_from_the_object():
    n, p = 1024, 0.3
    ds = ControlledShapes(n, seed=11, marker_strength=p)
    rate = float(ds.has_marker.float().mean())
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(rate - p) < 5 * sd
    # marker centre against object centre: no correlation beyond sampling noise
    on = ds.has_marker
    mm = ds.marker_masks[on, 0]
    coords = torch.arange(32, dtype=torch.float32) + 0.5
    mx = (mm.sum(1) * coords).sum(1) / mm.sum((1, 2))
    ox = ds.geometry[on, 0]
    r = float(np.corrcoef(mx.numpy(), ox.numpy())[0, 1])
    assert abs(r) < 5 / (int(on.sum()) ** 0.5)
    # presence does not depend on the class
    for c in range(4):
        sel = ds.labels == c
        assert (
            abs(float(ds.has_marker[sel].float().mean()) - p)
            < 5 * (p * (1 - p) / int(sel.sum())) ** 0.5
        )


def test_items_are_the_same_in_any_dataset_size_and_through_getitem():
    big = ControlledShapes(600, seed=4, marker_strength=0.5)
    small = ControlledShapes(9, seed=4, marker_strength=0.5)
    assert torch.equal(big.marker_masks[:9], small.marker_masks)
    assert torch.equal(big.images[:9], small.images)
    img, label, mask = big[520]
    assert torch.equal(img, big.images[520]) and torch.equal(mask, big.masks[520])
    assert label == int(big.labels[520])


def test_empty_dataset_has_empty_marker_tensors():
    ds = ControlledShapes(0, marker_strength=0.5)
    assert ds.marker_masks.shape == (0, 1, 32, 32)
    assert ds.has_marker.shape == (0,) and ds.has_marker.dtype == torch.bool


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.5", None, float("nan")])
def test_bad_marker_strength_is_refused(bad):
    with pytest.raises(InputError, match="marker_strength"):
        ControlledShapes(10, marker_strength=bad)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**20), p=st.floats(0.05, 1.0), size=st.integers(16, 48))
def test_marker_property_disjoint_masks_and_untouched_background(seed, p, size):
    marked, plain = _pair(p, size=12, seed=seed, image_size=size)
    assert float((marked.masks * marked.marker_masks).sum()) == 0.0
    outside = (marked.marker_masks == 0).expand_as(marked.images)
    assert torch.equal(marked.images[outside], plain.images[outside])
    side = marker_side(size)
    counts = marked.marker_masks.sum((1, 2, 3))
    assert torch.equal(counts, marked.has_marker.float() * side * side)


@pytest.mark.parametrize("side", [1, 8, 13])
def test_marker_size_sets_the_side_and_changes_nothing_else(side):
    ds = ControlledShapes(40, seed=6, marker_strength=1.0, marker_size=side)
    assert ds.marker_size == side
    assert torch.equal(ds.marker_masks.sum((1, 2, 3)), torch.full((40,), float(side * side)))
    for m in ds.marker_masks[:, 0]:
        rows, cols = torch.nonzero(m.sum(1)).flatten(), torch.nonzero(m.sum(0)).flatten()
        assert len(rows) == side and len(cols) == side
        assert int(rows[-1] - rows[0]) == side - 1 and int(cols[-1] - cols[0]) == side - 1
    plain = ControlledShapes(40, seed=6)
    outside = (ds.marker_masks == 0).expand_as(ds.images)
    assert torch.equal(ds.images[outside], plain.images[outside])
    assert torch.equal(ds.labels, plain.labels)


def test_default_marker_size_is_marker_side_and_without_marker_the_size_does_not_matter():
    a = ControlledShapes(30, seed=1, marker_strength=0.5)
    b = ControlledShapes(30, seed=1, marker_strength=0.5, marker_size=marker_side(32))
    assert a.marker_size == 4 and torch.equal(a.images, b.images)
    kwargs, _ = _BEFORE_MARKERS[0]
    assert _digest(ControlledShapes(**kwargs, marker_size=9)) == _digest(ControlledShapes(**kwargs))


@pytest.mark.parametrize("bad", [0, 33, -1, 2.5, True, "8"])
def test_bad_marker_size_is_refused(bad):
    with pytest.raises(InputError, match="marker_size"):
        ControlledShapes(10, marker_strength=0.5, marker_size=bad)
