"""Sanity checks (Adebayo et al. 2018): similarities against scipy / skimage, cascading and
label randomisation against hand computation."""

from __future__ import annotations

import copy
import csv
import io
import math
import warnings

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch
from captum.attr import LayerGradCam
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_unicam.attr.unicam import UniCAM
from captum_unicam.errors import InputError
from captum_unicam.sanity import (
    attribute_maps,
    cascading_randomisation,
    label_randomisation,
    randomisation_blocks,
    spearman,
    ssim,
)


class _Net(torch.nn.Module):
    def __init__(self, k: int = 3):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.layer1 = torch.nn.Sequential(torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU())
        self.layer2 = torch.nn.Sequential(
            torch.nn.Conv2d(8, 8, 3, padding=1, stride=2), torch.nn.ReLU()
        )
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, k)

    def forward(self, x):
        return self.fc(self.pool(self.layer2(self.layer1(torch.relu(self.conv1(x))))).flatten(1))


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return _Net().eval()


def _data(n: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g), torch.arange(n) % 3


# ---- similarities ----------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), ties=st.booleans())
def test_spearman_matches_scipy_on_absolute_values(seed, ties):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 1, 6, 7, generator=g, dtype=torch.float64)
    b = torch.randn(3, 1, 6, 7, generator=g, dtype=torch.float64)
    if ties:
        a, b = a.round(), (b * 2).round()
    got = spearman(a, b)
    for i in range(3):
        want = scipy.stats.spearmanr(a[i].abs().flatten().numpy(), b[i].abs().flatten().numpy())[0]
        if np.isnan(want):
            assert math.isnan(float(got[i]))
        else:
            assert float(got[i]) == pytest.approx(want, abs=1e-12)


def test_spearman_of_a_constant_map_is_nan():
    a = torch.zeros(2, 1, 5, 5)
    b = torch.rand(2, 1, 5, 5)
    assert torch.isnan(spearman(a, b)).all()
    assert spearman(b, b).tolist() == pytest.approx([1.0, 1.0])


def _ssim_oracle(a: np.ndarray, b: np.ndarray) -> float:
    # the definition with scipy's Gaussian filter (truncate 3.5, as skimage), cropped 5 px
    a = np.abs(a) / max(np.abs(a).max(), 1e-300)
    b = np.abs(b) / max(np.abs(b).max(), 1e-300)

    def f(x):
        return scipy.ndimage.gaussian_filter(x, sigma=1.5, truncate=3.5)

    ux, uy = f(a), f(b)
    vx, vy, vxy = f(a * a) - ux * ux, f(b * b) - uy * uy, f(a * b) - ux * uy
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return float(s[5:-5, 5:-5].mean())


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), h=st.integers(11, 20), w=st.integers(11, 20))
def test_ssim_matches_the_gaussian_window_definition(seed, h, w):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, 1, h, w, generator=g, dtype=torch.float64)
    b = a + 0.3 * torch.randn(2, 1, h, w, generator=g, dtype=torch.float64)
    got = ssim(a, b)
    for i in range(2):
        assert float(got[i]) == pytest.approx(
            _ssim_oracle(a[i, 0].numpy(), b[i, 0].numpy()), abs=1e-10
        )


def test_ssim_matches_skimage_when_installed():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(3)
    a = torch.rand(1, 1, 24, 24, generator=g, dtype=torch.float64)
    b = torch.rand(1, 1, 24, 24, generator=g, dtype=torch.float64)
    want = metrics.structural_similarity(
        (a / a.max())[0, 0].numpy(),
        (b / b.max())[0, 0].numpy(),
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert float(ssim(a, b)[0]) == pytest.approx(want, abs=1e-10)


def test_ssim_identical_is_one_and_small_maps_are_refused():
    a = torch.rand(3, 1, 12, 12)
    assert ssim(a, a).tolist() == pytest.approx([1.0] * 3)
    with pytest.raises(InputError, match="at least 11"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(InputError, match="same shape"):
        spearman(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))
    with pytest.raises(InputError, match="NaN"):
        spearman(torch.full((1, 1, 4, 4), math.nan), torch.rand(1, 1, 4, 4))


# ---- cascading randomisation -------------------------------------------------------------


def test_blocks_are_the_parameterised_children_top_first():
    assert [n for n, _ in randomisation_blocks(_net(0))] == ["fc", "layer2", "layer1", "conv1"]


def _hand_cascade(model, layer_name, blocks, x, y, seed):
    ref = LayerGradCam(model, model.get_submodule(layer_name)).attribute(
        x, target=y, relu_attributions=True
    )
    m = copy.deepcopy(model)
    out = []
    for i, block in enumerate(blocks, start=1):
        torch.manual_seed(seed + i)
        for mod in m.get_submodule(block).modules():
            if hasattr(mod, "reset_parameters"):
                mod.reset_parameters()
        a = LayerGradCam(m, m.get_submodule(layer_name)).attribute(
            x, target=y, relu_attributions=True
        )
        up = torch.nn.functional.interpolate
        ra = up(ref.detach(), size=(16, 16), mode="bilinear", align_corners=False).double()
        aa = up(a.detach(), size=(16, 16), mode="bilinear", align_corners=False).double()
        s = [
            scipy.stats.spearmanr(ra[j].abs().flatten(), aa[j].abs().flatten())[0]
            for j in range(len(x))
        ]
        out.append(np.nanmean(s))
    return out


def test_cascading_randomisation_matches_hand_computation_and_leaves_the_model_alone():
    model = _net(1)
    x, y = _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gc = LayerGradCam(model, model.layer2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some randomised maps are all zero: counted, tested below
        res = cascading_randomisation(
            model,
            {"grad-cam": (gc, {"relu_attributions": True})},
            x,
            y,
            seed=5,
            batch_size=5,
            n_bootstrap=50,
            check="net",
        )
    blocks = ["fc", "layer2", "layer1", "conv1"]
    assert [r["randomised"] for r in res.rows] == ["none"] + blocks
    assert res.value("net", "none", "grad-cam") == pytest.approx(1.0)
    assert res.value("net", "none", "grad-cam", "ssim") == pytest.approx(1.0)
    want = _hand_cascade(model, "layer2", blocks, x, y, seed=5)
    got = [res.value("net", b, "grad-cam") for b in blocks]
    assert got == pytest.approx(want, abs=1e-9)
    for r in res.rows:  # intervals bracket the mean
        assert r["spearman"]["low"] <= r["spearman"]["mean"] <= r["spearman"]["high"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training
    assert gc.forward_func is model


def test_cascading_randomisation_of_unicam_changes_only_through_the_randomised_model():
    student, base = _net(2), _net(3)
    x, y = _data(16)
    uc = UniCAM(student, student.layer2, base, base.layer2)
    methods = {
        "distilled": (uc, {"features": "distilled"}),
        "residual": (uc, {"features": "residual"}),
    }
    res = cascading_randomisation(
        base, methods, x, y, blocks=["layer1"], batch_size=8, n_bootstrap=20, check="base"
    )
    # hand computation: a copy of the Base with layer1 re-initialised with seed 0 + 1
    b2 = copy.deepcopy(base)
    torch.manual_seed(1)
    for m in b2.layer1.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    uc2 = UniCAM(student, student.layer2, b2, b2.layer2)
    ref = attribute_maps(methods, x, y, batch_size=8)
    new = attribute_maps(
        {
            "distilled": (uc2, {"features": "distilled"}),
            "residual": (uc2, {"features": "residual"}),
        },
        x,
        y,
        batch_size=8,
    )
    for kind in ("distilled", "residual"):
        want = float(np.nanmean(spearman(ref[kind], new[kind]).numpy()))
        assert res.value("base", "layer1", kind) == pytest.approx(want, abs=1e-9)
        want_ssim = float(ssim(ref[kind], new[kind]).mean())
        assert res.value("base", "layer1", kind, "ssim") == pytest.approx(want_ssim, abs=1e-9)


def test_a_method_that_does_not_call_the_model_is_refused():
    model = _net(0)
    x, y = _data()
    gc = LayerGradCam(lambda t: model(t), model.layer2)
    with pytest.raises(InputError, match="does not call `model` directly"):
        cascading_randomisation(model, {"gc": gc}, x, y)
    with pytest.raises(InputError, match="Captum Attribution"):
        cascading_randomisation(model, {"gc": "grad-cam"}, x, y)
    with pytest.raises(InputError, match="not submodules"):
        cascading_randomisation(
            model, {"gc": LayerGradCam(model, model.layer2)}, x, y, blocks=["nope"]
        )
    with pytest.raises(InputError, match="at least 5"):
        cascading_randomisation(model, {"gc": LayerGradCam(model, model.layer2)}, x[:3], y[:3])


def test_constant_maps_warn_and_are_counted():
    model = _net(0)
    x, y = _data(8)
    with torch.no_grad():
        model.fc.weight.zero_()  # zero gradients: every Grad-CAM map is 0
    with pytest.warns(UserWarning, match="undefined"):
        res = cascading_randomisation(
            model,
            {"gc": (LayerGradCam(model, model.layer2), {"relu_attributions": True})},
            x,
            y,
            blocks=["layer1"],
            n_bootstrap=10,
        )
    assert res.rows[0]["spearman_undefined"] == 8
    assert res.rows[0]["spearman"]["mean"] is None


# ---- label randomisation and the result ------------------------------------------------


def test_label_randomisation_against_hand_computation():
    trained, shuffled = _net(4), _net(5)
    x, y = _data()
    m1 = {"gc": LayerGradCam(trained, trained.layer1)}
    m2 = {"gc": LayerGradCam(shuffled, shuffled.layer1)}
    res = label_randomisation(m1, m2, x, y, n_bootstrap=30)
    a, b = attribute_maps(m1, x, y)["gc"], attribute_maps(m2, x, y)["gc"]
    assert res.value("random labels", "labels", "gc") == pytest.approx(
        float(np.nanmean(spearman(a, b))), abs=1e-12
    )
    same = label_randomisation(m1, m1, x, y, n_bootstrap=30)
    assert same.value("random labels", "labels", "gc") == pytest.approx(1.0)
    with pytest.raises(InputError, match="same names"):
        label_randomisation(m1, {"other": m2["gc"]}, x, y)


def test_result_tables_and_figure():
    model = _net(0)
    x, y = _data(8)
    res = cascading_randomisation(
        model,
        {"gc": LayerGradCam(model, model.layer2)},  # no ReLU: no empty map
        x,
        y,
        blocks=["fc", "layer2"],
        n_bootstrap=10,
        check="m",
    )
    both = res + label_randomisation(
        {"gc": LayerGradCam(model, model.layer2)},
        {"gc": LayerGradCam(model, model.layer2)},
        x,
        y,
        n_bootstrap=10,
    )
    assert len(both) == 5
    rows = list(csv.DictReader(io.StringIO(both.to_csv())))
    assert [r["randomised"] for r in rows] == ["none", "fc", "layer2", "none", "labels"]
    for r, row in zip(rows, both.rows, strict=True):
        assert float(r["spearman"]) == pytest.approx(row["spearman"]["mean"])
        assert float(r["ssim_high"]) == pytest.approx(row["ssim"]["high"])
    md = both.to_markdown()
    assert md.count("\n") == 2 + 5 and "| m | 1 | fc | gc |" in md
    fig = both.figure()
    assert len(fig.axes) == 4
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_first_step_matches_quantus_mprt_when_installed():
    quantus = pytest.importorskip("quantus")
    from captum.attr import LayerAttribution

    model = _net(6)
    x, y = _data(8)

    def explain(model, inputs, targets, **kwargs):
        model.eval()
        a = LayerGradCam(model, model.get_submodule("layer2")).attribute(
            torch.as_tensor(inputs), target=torch.as_tensor(targets)
        )
        return LayerAttribution.interpolate(a, (16, 16), "bilinear").detach().numpy()

    mprt = quantus.MPRT(
        layer_order="top_down",
        similarity_func=quantus.similarity_func.correlation_spearman,
        seed=7,
        disable_warnings=True,
        display_progressbar=False,
    )
    scores = mprt(
        model=model,
        x_batch=x.numpy(),
        y_batch=y.numpy(),
        a_batch=None,
        explain_func=explain,
        device="cpu",
        batch_size=8,
    )
    # Quantus re-seeds with seed + 1 before each module; our block i uses seed + i: the
    # first step (the classifier) is the same re-initialisation
    res = cascading_randomisation(
        model,
        {"gc": LayerGradCam(model, model.layer2)},
        x,
        y,
        blocks=["fc"],
        seed=7,
        n_bootstrap=10,
        check="q",
    )
    assert res.value("q", "fc", "gc") == pytest.approx(float(np.mean(scores["fc"])), abs=1e-9)
