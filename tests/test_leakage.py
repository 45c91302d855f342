"""The leakage baseline of masked RS: what a mask alone tells about the label.

On identical images the masked images differ only through the maps (computed for the true
label), so a masked RS measures the mask; the baseline (the batch's mean image masked by the
same maps) then equals it, and every masked RS is flagged as not above its baseline."""

import warnings

import dcor
import numpy as np
import pytest
import torch
from captum.attr import LayerGradCam
from tiny_models import TinyNet

from captum_unicam.attr.unicam import UniCAMWarning
from captum_unicam.metrics import evaluate_kd
from captum_unicam.metrics._features import layer_features
from captum_unicam.metrics.summary import RS_METRICS
from captum_unicam.perturb import mask_multiply


def models():
    torch.manual_seed(0)
    return TinyNet(4).eval(), TinyNet(5).eval()


def test_identical_images_every_masked_rs_equals_its_leakage_and_is_flagged():
    s, b = models()
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = image.repeat(30, 1, 1, 1)
    y = torch.arange(30) % 3
    batches = [(x[i : i + 10], y[i : i + 10]) for i in (0, 10, 20)]
    with pytest.warns(UniCAMWarning, match="same for every sample"):  # raw features: constant
        res = evaluate_kd(
            s,
            {"L2": (s.layer2, b.layer2)},
            batches,
            base_forward_func=b,
            maps=("none", "gradcam"),
            progress=False,
            n_bootstrap=100,
            n_permutations=100,
        )
    summ = res.summary()["by_layer"]["L2"]
    for m in RS_METRICS:
        assert summ["none"][m] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    masked, leak = summ["gradcam"], summ["gradcam"]["leakage"]
    assert masked["rs_student"]["mean"] > 0.5  # the mask alone "explains" the label
    for m in RS_METRICS:
        assert masked[m]["mean"] == pytest.approx(leak[m]["mean"], abs=1e-12), m
        assert masked["above_leakage"][m] is False
    for agg in ("dataset", "batch_mean"):
        e = res.summary(aggregation=agg)["by_layer"]["L2"]["gradcam"]
        assert not any(e["above_leakage"].values())
    # flagged on the table
    row = [line for line in res.to_markdown(headline=False).splitlines() if "| Grad-CAM |" in line][
        0
    ]
    assert row.count("†") == 4


def test_leakage_products_by_hand():
    s, b = models()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(12, 3, 8, 8, generator=g), torch.arange(12) % 3
    res = evaluate_kd(
        s,
        {"L1": (s.layer1, b.layer1)},
        [(x, y)],
        base_forward_func=b,
        maps=("gradcam",),
        progress=False,
        n_bootstrap=10,
        n_permutations=10,
    )
    cam_s = LayerGradCam(s, s.layer1).attribute(x, target=y, relu_attributions=True)
    cam_b = LayerGradCam(b, b.layer1).attribute(x, target=y, relu_attributions=True)
    blank = x.double().mean(0, keepdim=True).float().expand_as(x)  # the mean image, in float64
    fs = layer_features(s, s.layer1, mask_multiply(blank, cam_s)).numpy()
    fb = layer_features(b, b.layer1, mask_multiply(blank, cam_b)).numpy()
    lab = torch.nn.functional.one_hot(y).double().numpy()
    leak = res.leakage["L1"]["gradcam"]
    assert leak["sy"][0] == pytest.approx(dcor.u_distance_covariance_sqr(fs, lab), abs=1e-10)
    assert leak["sb"][0] == pytest.approx(dcor.u_distance_covariance_sqr(fs, fb), abs=1e-10)
    e = res.summary()["by_layer"]["L1"]["gradcam"]["leakage"]
    assert e["rs_base"]["mean"] == pytest.approx(
        dcor.u_distance_correlation_sqr(fb, lab), abs=1e-10
    )
    # the raw row has no baseline; leakage=False measures none
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        off = evaluate_kd(
            s,
            {"L1": (s.layer1, b.layer1)},
            [(x, y)],
            base_forward_func=b,
            progress=False,
            maps=("none", "gradcam"),
            leakage=False,
            n_bootstrap=10,
            n_permutations=10,
        )
    assert off.leakage == {"L1": {}} and "leakage" not in off.summary()["by_layer"]["L1"]["gradcam"]
    assert np.isclose(
        off.values["L1"]["gradcam"]["rs_base"][0], res.values["L1"]["gradcam"]["rs_base"][0]
    )
