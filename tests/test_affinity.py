"""Path offsets, paths and Eq. (2) affinities against a naive pair loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sance_core.ops.affinity import (
    offset_valid_mask,
    path_affinity,
    path_offsets,
    path_points,
    symmetric_affinity,
    symmetric_offsets,
)

# ---------------------------------------------------------------- naive references


def naive_offsets(r: int) -> set[tuple[int, int]]:
    """The definition, by brute force over a generous box."""
    return {
        (dy, dx)
        for dy in range(-r - 1, r + 2)
        for dx in range(-r - 1, r + 2)
        if (dy > 0 or (dy == 0 and dx > 0)) and dy * dy + dx * dx < r * r
    }


def naive_path(dy: int, dx: int) -> set[tuple[int, int]]:
    """Lattice points of the box with (dy*x - dx*y)^2 / (dy^2 + dx^2) < 1 (float form)."""
    pts = set()
    for y in range(min(0, dy), max(0, dy) + 1):
        for x in range(min(0, dx), max(0, dx) + 1):
            if (dy * x - dx * y) ** 2 / (dy * dy + dx * dx) < 1:
                pts.add((y, x))
    return pts


def naive_affinity(contour: np.ndarray, r: int, power: float) -> np.ndarray:
    """[H, W] -> [K, H, W] by a dense loop over pixels and offsets (float64)."""
    h, w = contour.shape
    offs = path_offsets(r).tolist()
    out = np.zeros((len(offs), h, w))
    for k, (dy, dx) in enumerate(offs):
        path = naive_path(dy, dx)
        for y, x in itertools.product(range(h), range(w)):
            ty, tx = y + dy, x + dx
            if not (0 <= ty < h and 0 <= tx < w):
                continue
            m = max(contour[y + py, x + px] for py, px in path)
            out[k, y, x] = (1.0 - m) ** power
    return out


def naive_dense_affinity(contour: np.ndarray, r: int, power: float) -> np.ndarray:
    """Dense symmetric (HW)x(HW) matrix with a_ii = 1, straight from the definition."""
    h, w = contour.shape
    n = h * w
    a = np.zeros((n, n))
    for i in range(n):
        a[i, i] = 1.0
    for (dy, dx) in naive_offsets(r):
        path = naive_path(dy, dx)
        for y, x in itertools.product(range(h), range(w)):
            ty, tx = y + dy, x + dx
            if 0 <= ty < h and 0 <= tx < w:
                v = (1.0 - max(contour[y + py, x + px] for py, px in path)) ** power
                a[y * w + x, ty * w + tx] = v
                a[ty * w + tx, y * w + x] = v
    return a


# ---------------------------------------------------------------- offsets and paths


@pytest.mark.parametrize("r", range(0, 13))
def test_offsets_match_definition(r: int) -> None:
    offs = path_offsets(r)
    assert offs.dtype == torch.long and offs.shape[1] == 2
    as_list = [tuple(o) for o in offs.tolist()]
    assert len(set(as_list)) == len(as_list)
    assert set(as_list) == naive_offsets(r)


@pytest.mark.parametrize("r", range(0, 13))
def test_offset_count_is_half_the_open_disc(r: int) -> None:
    disc = sum(1 for y in range(-r, r + 1) for x in range(-r, r + 1) if y * y + x * x < r * r)
    assert 2 * path_offsets(r).shape[0] + 1 == max(disc, 1)


def test_known_counts() -> None:
    # radius 5: rows dy=0..4 give 4 + 9 + 9 + 7 + 5 offsets; 69 = 81 - 12 points of the
    # disc x^2 + y^2 <= 25 minus its 12 boundary points
    assert path_offsets(5).shape[0] == 34
    assert symmetric_offsets(5).shape[0] == 69
    assert path_offsets(10).shape[0] == 152
    assert path_offsets(1).shape[0] == 0


def test_irnet_order() -> None:
    offs = path_offsets(3).tolist()
    assert offs[:2] == [[0, 1], [0, 2]]
    assert offs[2:] == [[1, -2], [1, -1], [1, 0], [1, 1], [1, 2], [2, -2], [2, -1], [2, 0], [2, 1], [2, 2]]


@pytest.mark.parametrize("r", [2, 3, 5, 10])
def test_path_points_match_definition(r: int) -> None:
    points, mask = path_points(r)
    offs = path_offsets(r).tolist()
    assert points.shape[:2] == mask.shape and points.shape[0] == len(offs)
    for k, (dy, dx) in enumerate(offs):
        real = {tuple(p) for p in points[k][mask[k]].tolist()}
        assert real == naive_path(dy, dx)
        assert (0, 0) in real and (dy, dx) in real
        assert len(real) == int(mask[k].sum())
        # padding repeats the source point, so an unmasked max is still the path max
        assert (points[k][~mask[k]] == 0).all()


def test_straight_paths() -> None:
    points, mask = path_points(5)
    offs = path_offsets(5).tolist()
    k = offs.index([0, 4])
    assert {tuple(p) for p in points[k][mask[k]].tolist()} == {(0, x) for x in range(5)}
    # a diagonal path is thick: (3x - 3y)^2 / 18 < 1 <=> |x - y| <= 1
    k = offs.index([3, 3])
    diag = {(y, x) for y in range(4) for x in range(4) if abs(x - y) <= 1}
    assert {tuple(p) for p in points[k][mask[k]].tolist()} == diag


# ---------------------------------------------------------------- affinities


@pytest.mark.parametrize("power", [1.0, 2.0, 10.0])
@pytest.mark.parametrize("r", [2, 5])
def test_path_affinity_matches_naive(r: int, power: float) -> None:
    g = torch.Generator().manual_seed(r * 100 + int(power))
    contour = torch.rand(2, 6, 7, generator=g, dtype=torch.float64)
    aff = path_affinity(contour, r, power)
    assert aff.shape == (2, path_offsets(r).shape[0], 6, 7)
    for b in range(2):
        ref = naive_affinity(contour[b].numpy(), r, power)
        np.testing.assert_allclose(aff[b].numpy(), ref, rtol=0, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    r=st.integers(0, 6),
    power=st.sampled_from([1.0, 2.0, 0.5, 10.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_path_affinity_property(h: int, w: int, r: int, power: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    contour = rng.random((h, w))
    contour[rng.random((h, w)) < 0.2] = 1.0  # some saturated contour pixels
    aff = path_affinity(torch.from_numpy(contour), r, power)
    np.testing.assert_allclose(aff.numpy(), naive_affinity(contour, r, power), atol=1e-12)
    assert ((aff >= 0) & (aff <= 1)).all()


def test_unbatched_and_float32() -> None:
    contour = torch.rand(5, 6)
    a = path_affinity(contour, 4, 1.0)
    assert a.dtype == torch.float32 and a.shape == (path_offsets(4).shape[0], 5, 6)
    torch.testing.assert_close(a, path_affinity(contour[None], 4, 1.0)[0])
    torch.testing.assert_close(a.double(), path_affinity(contour.double(), 4, 1.0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("power", [0.0, 1.0, 3.0])
def test_out_of_map_targets_are_zero(power: float) -> None:
    contour = torch.zeros(1, 4, 5)
    aff = path_affinity(contour, 5, power)
    valid = offset_valid_mask(4, 5, 5)
    assert (aff[0][~valid] == 0).all()
    assert (aff[0][valid] == 1).all()  # no contour: every in-map pair is fully connected


def test_offset_valid_mask_definition() -> None:
    h, w, r = 4, 6, 4
    valid = offset_valid_mask(h, w, r)
    for k, (dy, dx) in enumerate(path_offsets(r).tolist()):
        for y, x in itertools.product(range(h), range(w)):
            assert bool(valid[k, y, x]) == (0 <= y + dy < h and 0 <= x + dx < w)


def test_contour_all_ones_and_tiny_maps() -> None:
    assert (path_affinity(torch.ones(3, 4), 5, 1.0) == 0).all()
    one = path_affinity(torch.rand(1, 1), 5, 1.0)
    assert one.shape == (34, 1, 1) and (one == 0).all()
    assert path_affinity(torch.rand(2, 3, 3), 1, 1.0).shape == (2, 0, 3, 3)
    # radius larger than the map: only in-map pairs are non-zero
    big = path_affinity(torch.zeros(2, 3), 12, 1.0)
    assert int(big.sum()) == 15  # all unordered pairs of a 2x3 map are within radius 12


def test_line_contour_cuts_pairs() -> None:
    contour = torch.zeros(6, 7)
    contour[:, 3] = 1.0
    aff = path_affinity(contour, 5, 1.0)
    for k, (dy, dx) in enumerate(path_offsets(5).tolist()):
        for y, x in itertools.product(range(6), range(7)):
            ty, tx = y + dy, x + dx
            if not (0 <= ty < 6 and 0 <= tx < 7):
                continue
            crosses = min(x, tx) <= 3 <= max(x, tx)
            assert float(aff[k, y, x]) == (0.0 if crosses else 1.0)


def test_gradcheck_path_affinity() -> None:
    g = torch.Generator().manual_seed(0)
    contour = (0.1 + 0.8 * torch.rand(2, 4, 5, generator=g, dtype=torch.float64)).requires_grad_()
    # full Jacobian on a tiny case, random projections (fast_mode) on larger ones
    tiny = contour[:1, :3, :3].detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda c: path_affinity(c, 3, 2.0), (tiny,))
    assert torch.autograd.gradcheck(lambda c: path_affinity(c, 4, 2.0), (contour,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda c: path_affinity(c, 10, 1.0), (contour,), fast_mode=True)


def test_gradient_flows_to_the_path_maximum_only() -> None:
    contour = torch.zeros(1, 1, 5, dtype=torch.float64)
    contour[0, 0, 2] = 0.5
    contour.requires_grad_()
    aff = path_affinity(contour, 5, 1.0)
    k = path_offsets(5).tolist().index([0, 4])
    aff[0, k, 0, 0].backward()
    expected = torch.zeros(1, 1, 5, dtype=torch.float64)
    expected[0, 0, 2] = -1.0
    torch.testing.assert_close(contour.grad, expected)


# ---------------------------------------------------------------- symmetric neighbourhood


def _dense_from_full(full: torch.Tensor, r: int) -> np.ndarray:
    d, h, w = full.shape
    offs = symmetric_offsets(r).tolist()
    a = np.zeros((h * w, h * w))
    for k, (dy, dx) in enumerate(offs):
        for y, x in itertools.product(range(h), range(w)):
            ty, tx = y + dy, x + dx
            if 0 <= ty < h and 0 <= tx < w:
                a[y * w + x, ty * w + tx] = float(full[k, y, x])
            else:
                assert float(full[k, y, x]) == 0.0
    return a


@pytest.mark.parametrize("r", [1, 2, 5])
def test_symmetric_affinity_is_the_dense_matrix(r: int) -> None:
    g = torch.Generator().manual_seed(r)
    contour = torch.rand(6, 7, generator=g, dtype=torch.float64)
    full = symmetric_affinity(path_affinity(contour, r, 3.0), r)
    assert full.shape == (2 * path_offsets(r).shape[0] + 1, 6, 7)
    a = _dense_from_full(full, r)
    np.testing.assert_allclose(a, a.T, atol=0)
    np.testing.assert_allclose(np.diag(a), 1.0)
    np.testing.assert_allclose(a, naive_dense_affinity(contour.numpy(), r, 3.0), atol=1e-12)


def test_symmetric_affinity_batched() -> None:
    contour = torch.rand(3, 5, 4, dtype=torch.float64)
    aff = path_affinity(contour, 3, 1.0)
    full = symmetric_affinity(aff, 3)
    for b in range(3):
        torch.testing.assert_close(full[b], symmetric_affinity(aff[b], 3))
    with pytest.raises(ValueError):
        symmetric_affinity(aff, 4)
