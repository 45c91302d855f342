"""Localisation at the map's own resolution: grid masks, grid pointing game, best and relative
mask energy, against hand-computed values on small explicit tensors.

Hand computation of bilinear upsampling (align_corners=False) from 4 to 32 pixels: the one-hot
profile of an interior cell k along one axis is 1 - |i + 0.5 - 8(k + 0.5)| / 8 for the 16
pixels i with a positive weight, summing to 8, of which 6 lie in the cell's own 8 pixels; a
border cell's profile is 1 on the 4 outer pixels (clamping), summing to 8, 7 in its own cell.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_unicam.errors import InputError
from captum_unicam.metrics.localisation import (
    best_mask_energy,
    grid_masks,
    grid_pointing_game,
    localisation,
    mask_energy,
    relative_mask_energy,
)


def _one_hot(r: int, c: int, h: int = 4, w: int = 4) -> torch.Tensor:
    m = torch.zeros(1, 1, h, w)
    m[0, 0, r, c] = 1.0
    return m


def _mask(rows: slice, cols: slice, size: int = 32) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    m[0, 0, rows, cols] = 1.0
    return m


def test_interior_cell_mask_one_hot_map_reaches_the_best_energy_nine_sixteenths():
    mask = _mask(slice(8, 16), slice(16, 24))  # exactly cell (1, 2) of a 4 x 4 grid
    m = _one_hot(1, 2)
    assert float(mask_energy(m, mask)) == pytest.approx(float(Fraction(6, 8) ** 2), abs=1e-12)
    assert float(best_mask_energy(mask, (4, 4))) == pytest.approx(9 / 16, abs=1e-12)
    assert float(relative_mask_energy(m, mask)) == pytest.approx(1.0, abs=1e-12)
    assert float(grid_pointing_game(m, mask)) == 1.0
    g = grid_masks(mask, (4, 4))[0]
    want = torch.zeros(4, 4, dtype=torch.float64)
    want[1, 2] = 1.0
    assert torch.equal(g, want)


def test_corner_cell_best_energy_is_forty_nine_sixty_fourths_and_a_far_cell_gets_nothing():
    mask = _mask(slice(0, 8), slice(0, 8))
    assert float(best_mask_energy(mask, (4, 4))) == pytest.approx(49 / 64, abs=1e-12)
    assert float(mask_energy(_one_hot(0, 0), mask)) == pytest.approx(49 / 64, abs=1e-12)
    far = _one_hot(1, 2)  # its profile covers rows 4..19, columns 12..27: none of the mask
    assert float(mask_energy(far, mask)) == 0.0
    assert float(relative_mask_energy(far, mask)) == 0.0
    assert float(grid_pointing_game(far, mask)) == 0.0


def test_small_marker_inside_one_cell_best_energy_and_uniform_map():
    # a 4 x 4 px marker at rows/cols 8..11: a quarter of cell (1, 1)
    mask = _mask(slice(8, 12), slice(8, 12))
    g = grid_masks(mask, (4, 4))[0]
    assert float(g[1, 1]) == 0.25 and float(g.sum()) == 0.25
    # cell 1's profile on pixels 8..11 is (4.5 + 5.5 + 6.5 + 7.5) / 8 = 3 of 8; cell 0's is
    # (3.5 + 2.5 + 1.5 + 0.5) / 8 = 1 of 8; so the best map is one-hot at (1, 1): (3/8)^2
    assert float(best_mask_energy(mask, (4, 4))) == pytest.approx(9 / 64, abs=1e-12)
    assert float(mask_energy(_one_hot(1, 1), mask)) == pytest.approx(9 / 64, abs=1e-12)
    assert float(mask_energy(_one_hot(0, 1), mask)) == pytest.approx(3 / 64, abs=1e-12)
    uniform = torch.ones(1, 1, 4, 4)
    assert float(mask_energy(uniform, mask)) == pytest.approx(16 / 1024, abs=1e-12)
    assert float(relative_mask_energy(uniform, mask)) == pytest.approx(1 / 9, abs=1e-12)
    # a tie goes to the first cell, (0, 0), which does not overlap the marker
    assert float(grid_pointing_game(uniform, mask)) == 0.0


def test_marker_straddling_four_cells_counts_as_hit_from_each_of_them():
    mask = _mask(slice(6, 10), slice(6, 10))
    g = grid_masks(mask, (4, 4))[0]
    for r, c in ((0, 0), (0, 1), (1, 0), (1, 1)):
        assert float(g[r, c]) == pytest.approx(4 / 64, abs=1e-15)
        assert float(grid_pointing_game(_one_hot(r, c), mask)) == 1.0
    assert float(grid_pointing_game(_one_hot(2, 2), mask)) == 0.0
    # pixel-level pointing of the upsampled one-hot (1, 1) peaks at pixels 11/12: off the marker
    loc = localisation({"m": _one_hot(1, 1)}, mask, n_bootstrap=0)["kinds"]["m"]
    assert loc["pointing"]["mean"] == 0.0 and loc["pointing_grid"]["mean"] == 1.0


def test_one_cell_grid_is_the_area_and_a_pixel_grid_is_exact():
    mask = _mask(slice(0, 3), slice(0, 5), size=8)
    assert float(best_mask_energy(mask, (1, 1))) == pytest.approx(15 / 64, abs=1e-12)
    # at the mask's own resolution a map can put all its mass on the mask
    assert float(best_mask_energy(mask, (8, 8))) == pytest.approx(1.0, abs=1e-12)
    m = torch.zeros(1, 1, 8, 8)
    m[0, 0, 0, 0], m[0, 0, 7, 7] = 3.0, 1.0
    assert float(mask_energy(m, mask)) == pytest.approx(0.75, abs=1e-12)
    assert float(relative_mask_energy(m, mask)) == pytest.approx(0.75, abs=1e-12)


def test_empty_and_negative_maps_give_nan_and_nan_values_are_zero():
    mask = _mask(slice(8, 16), slice(16, 24))
    maps = torch.stack([torch.zeros(1, 4, 4), -torch.ones(1, 4, 4), _one_hot(1, 2)[0]])
    masks = mask.expand(3, 1, 32, 32)
    for f in (mask_energy, relative_mask_energy, grid_pointing_game):
        v = f(maps, masks)
        assert math.isnan(float(v[0])) and math.isnan(float(v[1])) and float(v[2]) > 0
    m = _one_hot(1, 2)
    m[0, 0, 0, 0] = float("nan")
    assert float(mask_energy(m, mask)) == pytest.approx(9 / 16, abs=1e-12)
    # an empty mask: no best map, relative energy undefined
    assert float(best_mask_energy(torch.zeros(1, 32, 32), (4, 4))) == 0.0
    assert math.isnan(float(relative_mask_energy(_one_hot(1, 2), torch.zeros(1, 32, 32))))


def test_localisation_reports_the_grid_measures_and_leaves_empty_maps_out():
    masks = torch.cat(
        [
            _mask(slice(8, 16), slice(16, 24)),
            _mask(slice(0, 8), slice(0, 8)),
            _mask(slice(0, 8), slice(0, 8)),
        ]
    )
    maps = torch.cat([_one_hot(1, 2), _one_hot(1, 2), torch.zeros(1, 1, 4, 4)])
    k = localisation({"m": maps}, masks, n_bootstrap=20)["kinds"]["m"]
    assert k["n_empty"] == 1 and k["relative_energy"]["n"] == 2
    assert k["relative_energy"]["mean"] == pytest.approx(0.5, abs=1e-12)  # 1 and 0
    assert k["pointing_grid"]["mean"] == pytest.approx(0.5, abs=1e-12)
    assert k["energy"]["mean"] == pytest.approx(9 / 32, abs=1e-12)  # 9/16 and 0


def test_bad_shapes_are_refused_with_the_cause():
    with pytest.raises(InputError, match="grid_size"):
        best_mask_energy(torch.zeros(1, 8, 8), (16, 16))
    with pytest.raises(InputError, match="maps for"):
        mask_energy(torch.ones(2, 1, 4, 4), torch.zeros(3, 32, 32))
    with pytest.raises(InputError, match="masks must have shape"):
        grid_masks(torch.zeros(1, 2, 8, 8), (4, 4))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16), h=st.integers(1, 6), side=st.integers(1, 10), pos=st.integers(0, 14)
)
def test_no_non_negative_map_beats_the_best_energy(seed, h, side, pos):
    g = torch.Generator().manual_seed(seed)
    mask = _mask(slice(pos, pos + side), slice(14 - pos, 14 - pos + side), size=24)
    best = float(best_mask_energy(mask, (h, h)))
    maps = torch.rand(16, 1, h, h, generator=g) ** 4  # peaked random maps
    e = mask_energy(maps, mask.expand(16, 1, 24, 24))
    assert float(e.max()) <= best + 1e-12
    rel = relative_mask_energy(maps, mask.expand(16, 1, 24, 24))
    assert float(rel.max()) <= 1 + 1e-12 and float(rel.min()) >= 0
