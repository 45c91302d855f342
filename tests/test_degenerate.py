"""Degenerate label matrices and too few samples: zero maps with a UniCAMWarning naming
cause and fix, or a clear error; never a silent result. Near-degenerate input is not
flagged."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_unicam_common import SmallResNet, batch, make

from captum_unicam import _fused
from captum_unicam.attr import UniCAM, UniCAMWarning
from captum_unicam.errors import InputError

CLASSES = 10


class Wide(SmallResNet):
    """SmallResNet with 10 outputs, so that 8 samples can have 8 distinct classes."""

    def __init__(self) -> None:
        super().__init__(classes=CLASSES)


@pytest.fixture(scope="module")
def pair():
    return make(Wide, 1), make(Wide, 2)


def _run(unicam, x, target, **kwargs):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = unicam.attribute(x, target=target, features="both", relu_attributions=False, **kwargs)
    return out, [str(w.message) for w in record if issubclass(w.category, UniCAMWarning)]


def test_all_distinct_one_hot_classes_give_zero_maps_and_a_warning(pair):
    student, base = pair
    x, _ = batch(8, seed=1)
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    (d, r), messages = _run(unicam, x, torch.arange(8))
    assert torch.equal(d, torch.zeros_like(d)) and torch.equal(r, torch.zeros_like(r))
    assert len(messages) == 2
    for m in messages:
        assert "same distance" in m and "label_embeddings=embed_labels(class_names)" in m
        assert "batch with repeated classes" in m
    with pytest.warns(
        UniCAMWarning, match="U-centred distance matrix of the label vectors is zero"
    ):
        s_d, s_r = unicam.score(x, target=torch.arange(8))
    assert float(s_d) == 0 and float(s_r) == 0


def test_one_class_and_all_but_one_in_one_class_are_flagged(pair):
    student, base = pair
    x, _ = batch(8, seed=1)
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    (d, _), messages = _run(unicam, x, [3] * 8)
    assert torch.equal(d, torch.zeros_like(d))
    assert messages and all("same label vector" in m for m in messages)
    # one sample of another class: every distance from it is the same and all others are
    # 0, whose U-centred matrix is exactly zero too
    (d, _), messages = _run(unicam, x, [3] * 7 + [5])
    assert torch.equal(d, torch.zeros_like(d))
    assert messages and all("every sample but one of a single class" in m for m in messages)


def test_near_degenerate_labels_are_not_flagged(pair):
    """One repeated class pair among otherwise distinct classes: the label matrix is small
    but informative, so a map with no warning."""
    student, base = pair
    x, _ = batch(8, seed=1)
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    (d, r), messages = _run(unicam, x, [0, 1, 2, 3, 4, 5, 6, 0])
    assert messages == []
    assert float(d.abs().max()) > 0 and float(r.abs().max()) > 0


def test_label_embeddings_remove_the_degeneracy(pair):
    student, base = pair
    x, _ = batch(8, seed=1)
    table = torch.randn(CLASSES, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    unicam = UniCAM(student, student.layer2, base, base.layer2, label_embeddings=table)
    (d, _), messages = _run(unicam, x, torch.arange(8))
    assert messages == [] and float(d.abs().max()) > 0


def test_reference_set_of_distinct_classes_is_flagged_and_repeated_classes_fix_it(pair):
    student, base = pair
    x, _ = batch(12, seed=2)
    flagged = UniCAM(
        student, student.layer2, base, base.layer2, reference=(x[2:8], torch.arange(6))
    )
    (d, _), messages = _run(flagged, x[:2], [6, 7])
    assert torch.equal(d, torch.zeros_like(d))
    assert messages and all(
        "label_embeddings=embed_labels" in m
        and "for some inputs" in m
        and "reference set with repeated" in m
        for m in messages
    )
    fixed = UniCAM(
        student, student.layer2, base, base.layer2, reference=(x[2:12], torch.arange(10) % 3)
    )
    (d, _), messages = _run(fixed, x[:2], [0, 1])
    assert messages == [] and float(d.abs().max()) > 0


@pytest.mark.parametrize("n", [4])
def test_four_samples_are_refused_with_the_reason(pair, n):
    student, base = pair
    x, _ = batch(n, seed=1)
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    with pytest.raises(InputError, match="2-dimensional"):
        unicam.attribute(x, target=[0, 1, 0, 1])
    with pytest.raises(InputError, match="2-dimensional"):
        unicam.score(x[:1], target=[0], context=(x[1:], [1, 0, 1]))


def test_near_duplicate_samples_keep_their_exact_distance():
    """UniCAM's fused path, float32: a sample and a slightly perturbed copy are closer than
    the Gram route can resolve; their distance (and so its gradient) is recomputed
    exactly, not set to 0, and an exact duplicate stays at exactly 0."""
    import dcor
    import numpy as np

    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 5000, generator=g) + 3.0
    x[4] = x[3] + 1e-4 * torch.randn(5000, generator=g)
    x[2] = x[5]
    y = torch.randn(10, 3, generator=g)
    a, rescaled, scales = _fused.batch_distances([x, y, x.flip(0)])
    d = (a[0, 0] * scales[0]).numpy()
    ref = dcor.distances.pairwise_distances(x.double().numpy())
    assert d[2, 5] == 0 and d[5, 2] == 0
    assert d[3, 4] == pytest.approx(ref[3, 4], rel=1e-3)
    np.testing.assert_allclose(d, ref, rtol=1e-4, atol=1e-3 * ref[3, 4])


def test_near_duplicates_in_reference_mode_keep_their_exact_distance():
    """Reference mode: near-copies inside the reference set, and an input that is a
    near-copy of a reference, keep their exact distances (float32)."""
    import dcor
    import numpy as np

    g = torch.Generator().manual_seed(3)
    ref = torch.randn(10, 5000, generator=g) + 3.0
    ref[4] = ref[3] + 1e-4 * torch.randn(5000, generator=g)
    labels = torch.nn.functional.one_hot(torch.arange(10) % 3).float()
    block = _fused.reference_block([ref, labels, ref.flip(0)])
    inputs = torch.stack([ref[6] + 1e-4 * torch.randn(5000, generator=g), ref[2]])
    a, _, scales = _fused.reference_distances([inputs, labels[:2], inputs], block)
    for i in range(2):
        d = (a[0, i] * scales[0]).numpy()
        expected = dcor.distances.pairwise_distances(
            torch.cat([inputs[i : i + 1], ref]).double().numpy()
        )
        np.testing.assert_allclose(d, expected, rtol=1e-4, atol=1e-2 * expected[4, 5])
    assert (
        float(a[0, 0, 0, 7]) > 0 and float(a[0, 1, 0, 3]) == 0
    )  # near-copy of ref 6; ref 2 itself
