"""Contour profile: zones of a mask on the map grid and the contour statistics per zone."""

from __future__ import annotations

import numpy as np
import pytest

from sance_core.eval.contour_profile import contour_profile, grid_cells, mask_on_grid, pad_to_grid, zones


def square_mask(n=12):
    mask = np.zeros((n, n), np.uint8)
    mask[3:9, 3:9] = 1
    return mask


def naive_zones(mask, band):
    h, w = mask.shape
    out = {k: np.zeros((h, w), bool) for k in ("boundary", "interior", "background")}
    change = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                v, u = y + dy, x + dx
                if 0 <= v < h and 0 <= u < w and mask[v, u] != mask[y, x]:
                    change[y, x] = True
    for y in range(h):
        for x in range(w):
            if mask[y, x] == 255:
                continue
            near = any(change[v, u] for v in range(h) for u in range(w) if abs(v - y) + abs(u - x) <= band)
            key = "boundary" if near else ("interior" if mask[y, x] > 0 else "background")
            out[key][y, x] = True
    return out


@pytest.mark.parametrize("band", [0, 1, 2])
def test_zones_match_the_naive_reference(band):
    mask = square_mask()
    mask[5, 5] = 2
    mask[0, 0] = 255
    got = zones(mask, band)
    ref = naive_zones(mask, band)
    for key in ref:
        assert np.array_equal(got[key], ref[key]), key


def test_profile_tells_an_outline_from_an_interior_edge():
    mask = square_mask()
    outline = np.zeros((12, 12))
    z = zones(mask, 1)
    outline[z["boundary"]] = 1.0
    inside = outline.copy()
    inside[5:7, 3:9] = 1.0  # a part-body border across the object
    good = contour_profile([(outline, mask)])
    bad = contour_profile([(inside, mask)])
    assert good["boundary"]["above"] == 1.0 and good["interior"]["above"] == 0.0
    assert bad["interior"]["above"] > 0.0 and bad["background"]["above"] == 0.0
    assert good["interior"]["pixels"] == bad["interior"]["pixels"] == z["interior"].sum()


def test_mask_on_grid_takes_the_top_left_sample():
    mask = np.arange(64).reshape(8, 8)
    assert np.array_equal(mask_on_grid(mask, (2, 2)), [[0, 4], [32, 36]])
    with pytest.raises(ValueError, match="does not cover"):
        mask_on_grid(mask, (3, 3))


def test_pad_to_grid_and_grid_cells_match_a_per_cell_reference():
    mask = np.random.default_rng(0).integers(0, 4, size=(10, 7)).astype(np.uint8)
    pad = pad_to_grid(mask, (3, 2))
    assert pad.shape == (12, 8) and (pad[:10, :7] == mask).all() and (pad[10:] == 255).all() and (pad[:, 7] == 255).all()
    cells = grid_cells(pad)
    for cy in range(3):
        for cx in range(2):
            assert (cells[cy, cx] == pad[cy * 4:cy * 4 + 4, cx * 4:cx * 4 + 4].ravel()).all()
    with pytest.raises(ValueError, match="larger than a grid"):
        pad_to_grid(mask, (2, 2))
