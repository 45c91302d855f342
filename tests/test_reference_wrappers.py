"""Captum's wrappers over UniCAM in reference mode (``UniCAM(..., reference=(ref_inputs,
ref_target))``), where each input is scored with the reference set alone, so a map is a
per-image function of its input as Captum's wrappers assume:

- ``NoiseTunnel`` (smoothgrad, smoothgrad_sq, vargrad) equals the mean over the same
  noisy inputs of UniCAM called on one noisy input at a time;
- ``sensitivity_max`` with a real perturbation equals the hand computation from
  per-image calls;
- a tuple-output layer gives a tuple of maps, each equal to batch mode with the
  reference set as ``context``;
- one int target for the whole call is fine (the reference set brings the other labels);
- ``torch.inference_mode()`` is named in the error.

Batch-mode versions live in tests/test_wrappers.py.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from captum.attr import LayerGradCam, NoiseTunnel
from captum.metrics import sensitivity_max
from test_unicam_common import SmallResNet, all_hooks, assert_close, batch, make
from test_wrappers import NT_TYPES, TupleNet, noisy_copies, smoothing

from captum_unicam.attr import UniCAM
from captum_unicam.errors import InputError

if "reference" not in inspect.signature(UniCAM.__init__).parameters:
    pytest.skip(
        "UniCAM has no `reference=` constructor keyword yet (reference mode is being added "
        "in another branch); these tests run once it is merged.",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def setup():
    student, base = make(SmallResNet, 1), make(SmallResNet, 2)
    x, y = batch(6, seed=31)
    ref_x, ref_y = batch(8, seed=32)
    unicam = UniCAM(student, student.layer2, base, base.layer2, reference=(ref_x, ref_y))
    return student, base, unicam, x, y, (ref_x, ref_y)


def one_at_a_time(unicam, inputs, target, **kwargs):
    return torch.cat(
        [
            unicam.attribute(inputs[i : i + 1], target=target[i : i + 1], **kwargs)
            for i in range(inputs.shape[0])
        ]
    )


@pytest.mark.parametrize("nt_type", NT_TYPES)
def test_noise_tunnel_equals_the_mean_over_the_same_noisy_inputs(setup, nt_type):
    student, base, unicam, x, y, _ = setup
    k, stdev, n = 3, 0.2, x.shape[0]
    torch.manual_seed(11)
    got = NoiseTunnel(unicam).attribute(x, nt_type=nt_type, nt_samples=k, stdevs=stdev, target=y)
    noisy = noisy_copies(x, k, stdev, seed=11)
    want = smoothing(one_at_a_time(unicam, noisy, y.repeat_interleave(k)), n, k, nt_type)
    assert_close(got, want, rtol=1e-6)
    # the same in calls of any size: Captum's internal batching changes nothing
    torch.manual_seed(11)
    split = NoiseTunnel(unicam).attribute(
        x, nt_type=nt_type, nt_samples=k, stdevs=stdev, target=y, nt_samples_batch_size=1
    )
    torch.manual_seed(11)
    assert_close(
        split,
        smoothing(
            one_at_a_time(unicam, _partitioned_noise(x, k, stdev), y.repeat_interleave(k)),
            n,
            k,
            nt_type,
        ),
        rtol=1e-6,
    )
    # LayerGradCam through NoiseTunnel on the same model: same call, same shape
    torch.manual_seed(11)
    gc = NoiseTunnel(LayerGradCam(student, student.layer2)).attribute(
        x, nt_type=nt_type, nt_samples=k, stdevs=stdev, target=y
    )
    assert gc.shape == got.shape
    assert all_hooks(student, base) == 0


def _partitioned_noise(x, k, stdev):
    """NoiseTunnel with nt_samples_batch_size=1 draws k partitions of one copy each, in
    order; the copies of image i are rows i, n + i, 2n + i, ... of the draws, regrouped
    here so that row i * k + j is draw j of image i."""
    draws = [x + torch.normal(0, torch.tensor(stdev).repeat(tuple(x.shape))) for _ in range(k)]
    return torch.stack(draws, dim=1).reshape((x.shape[0] * k,) + tuple(x.shape[1:]))


def test_sensitivity_max_equals_the_per_image_hand_computation(setup):
    _, _, unicam, x, y, _ = setup
    delta = 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)

    def perturb(inputs, perturb_radius=0.0):
        return inputs + delta.repeat_interleave(inputs.shape[0] // x.shape[0], dim=0)

    got = sensitivity_max(unicam.attribute, x, perturb_func=perturb, target=y, n_perturb_samples=3)
    a = one_at_a_time(unicam, x, y)
    a_p = one_at_a_time(unicam, x + delta, y)
    norm = a.flatten(1).norm(dim=1)
    want = (a - a_p).flatten(1).norm(dim=1) / torch.where(norm == 0, torch.ones_like(norm), norm)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    assert float(want.max()) > 0


def test_tuple_output_layer_in_reference_mode():
    torch.manual_seed(0)
    student, base = TupleNet().double().eval(), TupleNet().double().eval()
    x, y = batch(3, seed=3)
    ref_x, ref_y = batch(8, seed=4)
    unicam = UniCAM(student, student.block, base, base.block, reference=(ref_x, ref_y))
    got = unicam.attribute(x, target=y)
    gc = LayerGradCam(student, student.block).attribute(x, target=y)
    assert isinstance(got, tuple) and [m.shape for m in got] == [m.shape for m in gc]
    plain = UniCAM(student, student.block, base, base.block)
    for i in range(3):
        want = plain.attribute(x[i : i + 1], target=y[i : i + 1], context=(ref_x, ref_y))
        for g, w in zip(got, want):
            assert_close(g[i : i + 1], w, rtol=1e-6)
    assert all_hooks(student, base) == 0


def test_one_int_target_with_a_reference_set(setup):
    _, _, unicam, x, y, _ = setup
    got = unicam.attribute(x, target=2)
    assert torch.equal(got, unicam.attribute(x, target=torch.full((x.shape[0],), 2)))


def test_inference_mode_is_named_in_reference_mode(setup):
    _, _, unicam, x, y, _ = setup
    with torch.inference_mode():
        with pytest.raises(InputError, match=r"torch\.inference_mode\(\)"):
            unicam.attribute(x, target=y)
