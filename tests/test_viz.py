"""Figures: Captum's visualiser on real maps, empty panels on all-zero maps, interval bars."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution
from captum.attr import visualization as captum_viz

from captum_unicam import viz


def _images(n=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def test_captum_refuses_all_zero_maps_so_we_need_the_guard():
    # the oracle for the guard: Captum's own visualiser cannot draw an all-zero map
    img = np.random.default_rng(0).random((8, 8, 3))
    with pytest.raises(AssertionError):
        captum_viz.visualize_image_attr(
            np.zeros((8, 8, 1)), img, method="blended_heat_map", sign="positive", use_pyplot=False
        )


@pytest.mark.parametrize(
    "attr,empty",
    [
        (torch.zeros(1, 4, 4), True),
        (-torch.ones(1, 4, 4), True),
        (torch.full((1, 4, 4), float("nan")), True),
        (torch.tensor([[[0.0, 1e-12], [0.0, 0.0]]]), False),
        (torch.rand(1, 4, 4) + 0.1, False),
    ],
)
def test_is_empty_map(attr, empty):
    assert viz.is_empty_map(attr) is empty
    assert viz.is_empty_map(attr.numpy()) is empty


def test_upsample_equals_captum_interpolate():
    maps = torch.rand(2, 1, 4, 4)
    ref = LayerAttribution.interpolate(maps, (16, 16), "bilinear")
    assert torch.equal(viz.upsample_maps(maps, (16, 16)), ref)
    assert torch.equal(viz.upsample_maps(maps[:, 0], (4, 4)), maps)  # (N,h,w) accepted, no-op size
    with pytest.raises(ValueError, match=r"\(N,1,h,w\)"):
        viz.upsample_maps(torch.rand(2, 3, 4, 4), (16, 16))


def test_draw_attribution_uses_captum_and_empty_panel_has_note():
    img = _images(1)[0]
    fig = viz._new_figure((4, 2))
    ax1, ax2 = fig.subplots(1, 2)
    assert viz.draw_attribution(ax1, img, torch.rand(16, 16) * 1e-9, title="tiny") is True
    # Captum's blended heat map puts two images on the axis: the grey image and the heat map
    assert len(ax1.images) == 2
    assert viz.draw_attribution(ax2, img, torch.zeros(16, 16), title="zero") is False
    texts = [t.get_text().replace("\n", " ") for t in ax2.texts]
    assert viz.EMPTY_MAP_NOTE in texts
    with pytest.raises(ValueError, match="upsample"):
        viz.draw_attribution(ax1, img, torch.rand(4, 4))


def test_attribution_grid_all_zero_columns(tmp_path):
    imgs = _images(3)
    maps = {
        "Grad-CAM student": torch.relu(torch.randn(3, 1, 4, 4)) + 0.01,
        "UniCAM distilled": torch.zeros(3, 1, 4, 4),
        "UniCAM residual": torch.zeros(3, 1, 2, 2),
    }
    fig = viz.attribution_grid(imgs, maps, title="L4", row_labels=["a", "b", "c"])
    notes = [
        t
        for ax in fig.axes
        for t in ax.texts
        if t.get_text().replace("\n", " ") == viz.EMPTY_MAP_NOTE
    ]
    assert len(notes) == 6  # 2 empty columns x 3 rows
    path = viz.save_figure(fig, tmp_path / "sub" / "grid.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="maps for 3 images"):
        viz.attribution_grid(imgs, {"x": torch.rand(2, 1, 4, 4)})


def test_scores_per_layer_bars_and_error_bars_match_intervals():
    panels = {
        "(a) FSS": {
            "Grad-CAM": {"L1": (0.4, 0.3, 0.55), "L2": {"mean": 0.6, "low": 0.5, "high": 0.7}}
        },
        "(b) RS": {
            "Base": {"L1": 0.1, "L2": None},
            "Student": {"L1": (0.2, 0.1, 0.3), "L2": (0.3, 0.25, 0.4)},
        },
    }
    fig = viz.scores_per_layer(panels, title="t")
    ax_a, ax_b = fig.axes
    heights = [p.get_height() for p in ax_a.patches]
    assert heights == pytest.approx([0.4, 0.6])
    # error bar segments: (x, mean - (mean - low)) .. (x, mean + (high - mean))
    segs = ax_a.collections[0].get_segments()
    ys = sorted((round(s[0][1], 6), round(s[1][1], 6)) for s in segs)
    assert ys == [(0.3, 0.55), (0.5, 0.7)]
    assert [t.get_text() for t in ax_b.get_xticklabels()] == ["L1", "L2"]
    # a missing value (None) is drawn as a gap, not a crash
    assert np.isnan([p.get_height() for p in ax_b.patches]).sum() == 1


def test_localisation_plot_has_chance_line():
    loc = {
        "L4": {
            "distilled": {
                "energy": {"mean": 0.5, "low": 0.4, "high": 0.6},
                "pointing": {"mean": 0.7, "low": 0.5, "high": 0.9},
            }
        }
    }
    fig = viz.localisation_plot(loc, chance={"energy": 0.2, "pointing": 0.2})
    for ax in fig.axes:
        assert any(np.allclose(line.get_ydata(), 0.2) for line in ax.get_lines())
