"""UniCAM as a Quantus explain_func (captum_unicam.quantus.explain), in reference mode.

Quantus' metrics run with it on tiny models and give finite values (Sparseness,
FaithfulnessCorrelation, MaxSensitivity, MPRT on randomised copies of the Student); the
maps equal UniCAM's own, upsampled; batch mode inside Quantus warns. Skipped when quantus
(the ``[eval]`` extra) is not installed.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution
from test_unicam_common import SmallResNet, batch, make

from captum_unicam import reference_set
from captum_unicam.attr import UniCAM, UniCAMWarning
from captum_unicam.errors import InputError
from captum_unicam.quantus import explain

quantus = pytest.importorskip("quantus")


@pytest.fixture(scope="module")
def setup():
    student, base = (
        make(SmallResNet, 1, dtype=torch.float32),
        make(SmallResNet, 2, dtype=torch.float32),
    )
    x, y = batch(8, seed=21, dtype=torch.float32)
    pool_x, pool_y = batch(40, seed=5, dtype=torch.float32)
    reference = reference_set((pool_x, pool_y), 12)
    kwargs = {"base": base, "layer": "layer2", "reference": reference}
    return student, base, x.numpy(), y.numpy(), kwargs


def test_explain_equals_unicam_in_reference_mode_upsampled(setup):
    student, base, x, y, kwargs = setup
    got = explain(student, x, y, **kwargs)
    unicam = UniCAM(student, student.layer2, base, base.layer2, reference=kwargs["reference"])
    want = unicam.attribute(
        torch.from_numpy(x), target=torch.from_numpy(y), relu_attributions=False
    )
    want = LayerAttribution.interpolate(want, (16, 16), "bilinear").numpy()
    assert got.shape == (8, 1, 16, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    # per image: one image explained alone gives its map of the batch
    np.testing.assert_allclose(
        explain(student, x[3:4], y[3:4], **kwargs), got[3:4], rtol=1e-5, atol=1e-9
    )


def test_empty_maps_become_uniform_with_relu(setup):
    student, base, x, y, kwargs = setup
    zero = explain(student, x, y, relu_attributions=True, empty="zero", **kwargs)
    uniform = explain(student, x, y, relu_attributions=True, **kwargs)
    empty = np.abs(zero).reshape(8, -1).max(1) == 0
    assert empty.any() and not empty.all()  # the fixture has both kinds
    assert (uniform[empty] == 1).all()
    np.testing.assert_array_equal(uniform[~empty], zero[~empty])


def _run(metric, setup, **call):
    student, _, x, y, kwargs = setup
    with warnings.catch_warnings():
        warnings.simplefilter("error", UniCAMWarning)  # reference mode: no batch warning
        return np.asarray(
            metric(
                model=student,
                x_batch=x,
                y_batch=y,
                explain_func=explain,
                explain_func_kwargs=kwargs,
                device="cpu",
                **call,
            ),
            dtype=float,
        )


def test_sparseness_is_finite(setup):
    scores = _run(quantus.Sparseness(disable_warnings=True), setup, batch_size=4)
    assert scores.shape == (8,) and np.isfinite(scores).all()
    # reference mode: the value of an image does not depend on Quantus' batch size
    np.testing.assert_allclose(
        _run(quantus.Sparseness(disable_warnings=True), setup, batch_size=8), scores, rtol=1e-5
    )


def test_faithfulness_correlation_is_finite(setup):
    metric = quantus.FaithfulnessCorrelation(
        nr_runs=10,
        subset_size=32,
        perturb_baseline="black",
        return_aggregate=True,
        disable_warnings=True,
    )
    scores = _run(metric, setup, batch_size=8)
    assert np.isfinite(scores).all()


def test_max_sensitivity_is_finite(setup):
    metric = quantus.MaxSensitivity(nr_samples=3, lower_bound=0.02, disable_warnings=True)
    scores = _run(metric, setup, batch_size=8)
    assert scores.shape == (8,) and np.isfinite(scores).all()


def test_mprt_runs_on_randomised_copies(setup):
    metric = quantus.MPRT(
        layer_order="bottom_up", return_average_correlation=True, disable_warnings=True
    )
    scores = _run(metric, setup, batch_size=8)
    assert np.isfinite(scores).all()


def test_batch_mode_inside_quantus_warns_naming_reference_mode(setup):
    student, _, x, y, kwargs = setup
    batch_kwargs = dict(kwargs, mode="batch")
    with pytest.warns(UniCAMWarning, match="reference mode"):
        quantus.Sparseness(disable_warnings=True)(
            model=student,
            x_batch=x,
            y_batch=y,
            explain_func=explain,
            explain_func_kwargs=batch_kwargs,
            device="cpu",
            batch_size=8,
        )


def test_missing_reference_and_unknown_layer_are_input_errors(setup):
    student, base, x, y, _ = setup
    with pytest.raises(InputError, match="reference_set"):
        explain(student, x, y, base=base, layer="layer2")
    with pytest.raises(InputError, match="not a submodule"):
        explain(student, x, y, base=base, layer="nope", reference=(x[:6], y[:6]))


def test_a_users_own_explain_func_over_batch_mode_warns(setup):
    """Not only our explain: any batch-mode UniCAM called from inside a Quantus metric."""
    student, base, x, y, _ = setup
    unicam = UniCAM(student, student.layer2, base, base.layer2)

    def own(model, inputs, targets, **kwargs):
        maps = unicam.attribute(torch.from_numpy(inputs), target=torch.from_numpy(targets))
        return LayerAttribution.interpolate(maps, (16, 16)).numpy()

    with pytest.warns(UniCAMWarning, match="called from quantus"):
        quantus.Sparseness(disable_warnings=True)(
            model=student, x_batch=x, y_batch=y, explain_func=own, device="cpu", batch_size=8
        )
