"""The per-image contract (docs/per-image.md): batch-mode UniCAM inside Captum's tools, which
build batches of their own, warns once naming reference mode; an ordinary batch of distinct
images and reference mode never warn; reference_set draws a stratified reference set; the
score as a forward function (score_function) under Occlusion equals a hand loop.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from captum.attr import NoiseTunnel, Occlusion
from captum.metrics import infidelity, sensitivity_max
from test_unicam_common import SmallResNet, batch, make

from captum_unicam import reference_set
from captum_unicam.attr import UniCAM, UniCAMWarning
from captum_unicam.errors import InputError


@pytest.fixture(scope="module")
def setup():
    student, base = make(SmallResNet, 1), make(SmallResNet, 2)
    x, y = batch(8, seed=21)
    pool_x, pool_y = batch(40, seed=5)
    return student, base, x, y, reference_set((pool_x, pool_y), 12)


def identity(inputs, perturb_radius=0.0):
    return inputs


def batch_warnings(record):
    return [
        w
        for w in record
        if issubclass(w.category, UniCAMWarning) and "reference mode" in str(w.message)
    ]


def run(fn):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = fn()
    return out, batch_warnings(record)


def tools(unicam, x, y):
    return {
        "noise_tunnel": lambda: NoiseTunnel(unicam).attribute(
            x, nt_type="smoothgrad", nt_samples=2, stdevs=0.1, target=y
        ),
        "sensitivity_max": lambda: sensitivity_max(
            unicam.attribute, x, perturb_func=identity, target=y, n_perturb_samples=2
        ),
        "infidelity": lambda: infidelity(
            unicam.score_function(),
            lambda inp: (torch.zeros_like(inp), inp),
            x,
            torch.zeros_like(x),
            additional_forward_args=(y,),
            n_perturb_samples=2,
        ),
    }


@pytest.mark.parametrize("tool", ["noise_tunnel", "sensitivity_max", "infidelity"])
def test_batch_mode_inside_captum_tools_warns_once(setup, tool):
    student, base, x, y, _ = setup
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    _, found = run(tools(unicam, x, y)[tool])
    assert len(found) == 1, [str(w.message) for w in found]
    assert "reference_set" in str(found[0].message)
    _, again = run(tools(unicam, x, y)[tool])  # once per instance
    assert again == []


@pytest.mark.parametrize("tool", ["noise_tunnel", "sensitivity_max", "infidelity"])
def test_reference_mode_inside_captum_tools_never_warns(setup, tool):
    student, base, x, y, reference = setup
    unicam = UniCAM(student, student.layer2, base, base.layer2, reference=reference)
    _, found = run(tools(unicam, x, y)[tool])
    assert found == []


def test_sensitivity_max_identity_is_zero_in_reference_mode_not_in_batch_mode(setup):
    student, base, x, y, reference = setup
    batch_mode = UniCAM(student, student.layer2, base, base.layer2)
    got_batch, _ = run(tools(batch_mode, x, y)["sensitivity_max"])
    per_image = UniCAM(student, student.layer2, base, base.layer2, reference=reference)
    got_ref, _ = run(tools(per_image, x, y)["sensitivity_max"])
    assert float(got_batch.max()) > 0.05
    assert float(got_ref.abs().max()) < 1e-12  # 0 up to the rounding of other batch sizes


def test_ordinary_batch_of_distinct_images_does_not_warn(setup):
    student, base, x, y, _ = setup
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    for call in (
        lambda: unicam.attribute(x, target=y),
        lambda: unicam.score(x, target=y),
        lambda: unicam.attribute(x[:1], target=y[:1], context=(x[1:], y[1:])),
    ):
        _, found = run(call)
        assert found == []


def test_a_batch_with_repeated_samples_warns_outside_any_tool(setup):
    """The batches those tools build, built by hand: the repetition itself is detected."""
    student, base, x, y, _ = setup
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    _, found = run(
        lambda: unicam.attribute(x.repeat_interleave(2, 0), target=y.repeat_interleave(2))
    )
    assert len(found) == 1 and "repeated" in str(found[0].message)


def test_reference_set_is_stratified_and_seeded(setup):
    pool_x, pool_y = batch(40, seed=5)
    ref_x, ref_y = reference_set((pool_x, pool_y), 12, seed=3)
    assert ref_x.shape == (12,) + pool_x.shape[1:]
    counts = torch.bincount(ref_y)
    assert int(counts[counts > 0].min()) >= 2  # every class present repeats
    assert len(counts[counts > 0]) >= 2
    # each drawn input is the pool's input of that class
    for xi, yi in zip(ref_x, ref_y):
        match = (pool_x == xi).flatten(1).all(1)
        assert match.any() and int(pool_y[match][0]) == int(yi)
    again = reference_set((pool_x, pool_y), 12, seed=3)
    assert torch.equal(again[0], ref_x) and torch.equal(again[1], ref_y)
    assert not torch.equal(
        reference_set((pool_x, pool_y), 12, seed=4)[1], ref_y
    ) or not torch.equal(reference_set((pool_x, pool_y), 12, seed=4)[0], ref_x)


def test_reference_set_from_a_map_style_dataset():
    pool_x, pool_y = batch(30, seed=2)
    dataset = list(zip(pool_x, pool_y.tolist()))
    ref_x, ref_y = reference_set(dataset, 8)
    counts = torch.bincount(ref_y)
    assert ref_x.shape == (8, 3, 16, 16) and int(counts[counts > 0].min()) >= 2
    with pytest.raises(InputError, match="two classes"):
        reference_set(list(zip(pool_x, [0] * 30)), 8)
    with pytest.raises(InputError, match="n"):
        reference_set(dataset, 3)


def test_score_function_under_occlusion_equals_a_hand_loop(setup):
    student, base, x, y, reference = setup
    x, y = x[:3], y[:3]
    unicam = UniCAM(student, student.layer2, base, base.layer2, reference=reference)
    f = unicam.score_function("distilled")
    base_scores = unicam.score(x, target=y, features="distilled")
    torch.testing.assert_close(f(x, y), base_scores)
    got = Occlusion(f).attribute(
        x, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8), additional_forward_args=(y,)
    )
    want = torch.zeros_like(x)
    for i in range(2):
        for j in range(2):
            occluded = x.clone()
            occluded[:, :, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8] = 0
            drop = base_scores - unicam.score(occluded, target=y, features="distilled")
            want[:, :, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8] = drop[:, None, None, None]
    # Captum's Occlusion accumulates in the default dtype (float32)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-8)
    assert float(want.abs().max()) > 0


def test_score_function_in_batch_mode_warns_under_occlusion(setup):
    student, base, x, y, _ = setup
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    f = unicam.score_function("residual")
    value = f(x, y)
    assert value.shape == (8,) and bool((value == value[0]).all())
    _, found = run(
        lambda: Occlusion(f).attribute(
            x, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8), additional_forward_args=(y,)
        )
    )
    assert len(found) == 1
