"""UniCAM composes with Captum: interpolate, visualization, infidelity, sensitivity_max,
and the LayerGradCam call pattern."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from captum.attr import GradientAttribution, LayerAttribution, LayerGradCam  # noqa: E402
from captum.attr import visualization as viz  # noqa: E402
from captum.metrics import infidelity, sensitivity_max  # noqa: E402
from test_unicam_common import (  # noqa: E402
    SmallResNet,
    all_hooks,
    batch,
    make,
)

from captum_unicam.attr import UniCAM  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    student, base = make(SmallResNet, 1), make(SmallResNet, 2)
    x, y = batch(8, seed=11)
    unicam = UniCAM(student, student.layer2, base, base.layer2)
    return student, base, unicam, x, y


def test_interpolate(setup):
    _, _, unicam, x, y = setup
    attr = unicam.attribute(x, target=y)
    up = LayerAttribution.interpolate(attr, x.shape[-2:], "bilinear")
    assert up.shape == (8, 1, 16, 16)
    assert torch.equal(up, F.interpolate(attr, size=(16, 16), mode="bilinear"))
    assert float(up.min()) >= 0  # ReLU'd map, bilinear keeps it non-negative


def test_visualize_image_attr_shows_the_map(setup):
    _, _, unicam, x, y = setup
    attr = LayerAttribution.interpolate(unicam.attribute(x, target=y), (16, 16), "bilinear")
    i = int(attr.flatten(1).amax(1).argmax())
    heat = attr[i].permute(1, 2, 0).numpy()
    image = (x[i] - x[i].min()) / (x[i].max() - x[i].min())
    image = image.permute(1, 2, 0).numpy()
    fig, ax = viz.visualize_image_attr(
        heat, image, method="heat_map", sign="positive", use_pyplot=False
    )
    shown = np.asarray(ax.images[-1].get_array())
    # Captum shows map / s clipped to 1, s = the value at which the sorted map's
    # cumulative sum reaches 98 % of the total (outlier_perc=2)
    values = np.sort(heat.flatten())
    s = values[np.searchsorted(np.cumsum(values), 0.98 * values.sum())]
    np.testing.assert_allclose(shown, np.clip(heat[..., 0] / s, 0, 1), rtol=1e-6, atol=1e-9)
    assert shown.max() == 1.0  # the top 2 % of the mass saturate
    plt.close(fig)
    fig, axes = viz.visualize_image_attr_multiple(
        heat, image, ["original_image", "blended_heat_map"], ["all", "positive"], use_pyplot=False
    )
    assert len(axes) == 2
    # the original image is shown as 8-bit colours
    np.testing.assert_allclose(
        np.asarray(axes[0].images[0].get_array()) / 255, image, atol=1 / 255 + 1e-9
    )
    assert len(axes[1].images) == 2  # image and heat map, blended
    plt.close(fig)


def test_infidelity_of_unicam_equals_hand_computation(setup):
    student, _, unicam, x, y = setup
    attr = LayerAttribution.interpolate(unicam.attribute(x, target=y), (16, 16), "bilinear")
    attr = attr.expand(-1, 3, -1, -1)
    g = torch.Generator().manual_seed(2)
    noise = 0.1 * torch.randn(x.shape, generator=g, dtype=x.dtype)

    def perturb(inputs):
        return noise, inputs - noise

    got = infidelity(student, perturb, x, attr, target=y, n_perturb_samples=1, normalize=False)
    with torch.no_grad():
        picked = lambda out: out.gather(1, y[:, None])[:, 0]  # noqa: E731
        change = picked(student(x)) - picked(student(x - noise))
    expected = ((noise * attr).flatten(1).sum(1) - change) ** 2
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    assert float(expected.min()) > 0


def test_sensitivity_max_with_unicam_attribute(setup):
    student, base, unicam, x, y = setup
    g = torch.Generator().manual_seed(3)
    delta = 0.05 * torch.randn(x.shape, generator=g, dtype=x.dtype)

    def perturb(inputs, radius):
        return inputs + delta

    got = sensitivity_max(unicam.attribute, x, perturb_func=perturb, n_perturb_samples=1, target=y)
    a = unicam.attribute(x, target=y)
    a_perturbed = unicam.attribute(x + delta, target=y)
    expected = relative_change(a, a_perturbed)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    assert float(expected.max()) > 0
    # keyword arguments of UniCAM.attribute pass through, e.g. residual maps with a context
    got_r = sensitivity_max(
        unicam.attribute,
        x[:2],
        perturb_func=perturb_first_two(delta),
        n_perturb_samples=1,
        target=y[:2],
        features="residual",
        context=(x[2:], y[2:]),
    )
    r = unicam.attribute(x[:2], target=y[:2], features="residual", context=(x[2:], y[2:]))
    r_perturbed = unicam.attribute(
        x[:2] + delta[:2], target=y[:2], features="residual", context=(x[2:], y[2:])
    )
    expected_r = relative_change(r, r_perturbed)
    torch.testing.assert_close(got_r, expected_r, rtol=1e-9, atol=1e-12)
    assert all_hooks(student, base) == 0


def relative_change(a, a_perturbed):
    """|a - a'| / |a| per example; Captum divides by 1 where |a| = 0 (an all-zero map)."""
    norm = a.flatten(1).norm(dim=1)
    return (a - a_perturbed).flatten(1).norm(dim=1) / torch.where(
        norm == 0, torch.ones_like(norm), norm
    )


def perturb_first_two(delta):
    def perturb(inputs, radius):
        return inputs + delta[: inputs.shape[0]]

    return perturb


def test_swap_in_for_layer_grad_cam(setup):
    student, base, _, x, y = setup
    explainers = [
        LayerGradCam(student, student.layer2),
        UniCAM(student, student.layer2, base, base.layer2),
    ]
    for explainer in explainers:
        assert isinstance(explainer, LayerAttribution) and isinstance(
            explainer, GradientAttribution
        )
    # the same calls, positional and keyword, give tensors of the same shapes
    calls = [
        dict(args=(x, y), kwargs=dict(relu_attributions=True)),
        dict(args=(x,), kwargs=dict(target=y, attribute_to_layer_input=True)),
        dict(
            args=(x, y, None, False, False, False), kwargs=dict(grad_kwargs={"retain_graph": True})
        ),
    ]
    for call in calls:
        grad_cam, unicam = (e.attribute(*call["args"], **call["kwargs"]) for e in explainers)
        assert isinstance(unicam, torch.Tensor) and grad_cam.shape == unicam.shape
        assert unicam.dtype == grad_cam.dtype
    # (with tuple inputs UniCAM returns a 1-tuple, as Captum's primary attributions do,
    # which is what captum.metrics.sensitivity_max expects; LayerGradCam returns a tensor)
    (unicam_tuple,) = explainers[1].attribute((x,), target=y)
    assert unicam_tuple.shape == explainers[0].attribute((x,), target=y).shape
    # the same convention for relu_attributions: the ReLU of the signed map
    for explainer in explainers:
        signed = explainer.attribute(x, target=y, relu_attributions=False)
        assert torch.equal(F.relu(signed), explainer.attribute(x, target=y, relu_attributions=True))
    assert all_hooks(student, base) == 0
