"""Sparse propagation (Eq. 6) against IRNet's dense matrix power, plus hand-made cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sance_core.ops.affinity import symmetric_offsets
from sance_core.ops.propagation import (
    apply_transition,
    propagate,
    propagate_batch,
    transition_weights,
)

# ---------------------------------------------------------------- dense reference


def _path(dy: int, dx: int) -> list[tuple[int, int]]:
    return [
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if (dy * x - dx * y) ** 2 / (dy * dy + dx * dx) < 1
    ]


def dense_affinity(contour: np.ndarray, r: int) -> np.ndarray:
    """IRNet's dense A (power 1): symmetric, a_ii = 1, 0 beyond the radius (float64)."""
    h, w = contour.shape
    a = np.eye(h * w)
    offs = [(dy, dx) for dy in range(r) for dx in range(-r, r + 1)
            if (dy > 0 or dx > 0) and dy * dy + dx * dx < r * r]
    for dy, dx in offs:
        path = _path(dy, dx)
        for y, x in itertools.product(range(h), range(w)):
            ty, tx = y + dy, x + dx
            if 0 <= ty < h and 0 <= tx < w:
                v = 1.0 - max(contour[y + py, x + px] for py, px in path)
                a[y * w + x, ty * w + tx] = a[ty * w + tx, y * w + x] = v
    return a


def dense_transition(contour: np.ndarray, r: int, beta: float) -> np.ndarray:
    """IRNet's to_transition_matrix before squaring: A^beta, divided by its column sums."""
    a = dense_affinity(contour, r) ** beta
    return a / a.sum(axis=0, keepdims=True)


def dense_propagate(scores: np.ndarray, contour: np.ndarray, r: int, beta: float, t: int) -> np.ndarray:
    c, h, w = scores.shape
    tm = dense_transition(contour, r, beta)
    for _ in range(t):  # t squarings, exactly as IRNet: T^(2^t)
        tm = tm @ tm
    x = (scores * (1.0 - contour)).reshape(c, h * w)
    return (x @ tm).reshape(c, h, w)


def _dense_from_weights(wts: torch.Tensor, r: int) -> np.ndarray:
    """T[i, j] from the stencil weights W[d, j] = T[j + o_d, j]."""
    d, h, w = wts.shape
    tm = np.zeros((h * w, h * w))
    for k, (dy, dx) in enumerate(symmetric_offsets(r).tolist()):
        for y, x in itertools.product(range(h), range(w)):
            sy, sx = y + dy, x + dx
            if 0 <= sy < h and 0 <= sx < w:
                tm[sy * w + sx, y * w + x] = float(wts[k, y, x])
            else:
                assert float(wts[k, y, x]) == 0.0
    return tm


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("r,beta,t", [(5, 10, 8), (3, 2, 3), (2, 1, 0), (5, 10, 4)])
def test_matches_dense_matrix_power(r: int, beta: float, t: int) -> None:
    rng = np.random.default_rng(r * 10 + t)
    contour = rng.random((6, 7)) ** 3  # mostly low contour, some high
    scores = rng.random((3, 6, 7))
    ref = dense_propagate(scores, contour, r, beta, t)
    out = propagate(torch.from_numpy(scores), torch.from_numpy(contour), r, beta, t)
    assert out.dtype == torch.float64 and out.shape == (3, 6, 7)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-9, atol=1e-12 * ref.max())


def test_float32_matches_dense_and_keeps_dtype() -> None:
    rng = np.random.default_rng(7)
    contour = (rng.random((8, 9)) ** 4).astype(np.float32)
    scores = rng.random((2, 8, 9)).astype(np.float32)
    ref = dense_propagate(scores.astype(np.float64), contour.astype(np.float64), 5, 10, 8)
    for cdt in (None, torch.float32, torch.float64):
        out = propagate(torch.from_numpy(scores), torch.from_numpy(contour), compute_dtype=cdt)
        assert out.dtype == torch.float32
        err = np.abs(out.numpy() - ref).max() / ref.max()
        assert err < 1e-5, (cdt, err)


@settings(max_examples=15, deadline=None)
@given(
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    r=st.integers(0, 7),
    t=st.integers(0, 5),
    beta=st.sampled_from([1.0, 3.0, 10.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_dense_property(h: int, w: int, r: int, t: int, beta: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    contour = rng.random((h, w))
    contour[rng.random((h, w)) < 0.15] = 1.0
    contour[rng.random((h, w)) < 0.15] = 0.0
    scores = rng.random((2, h, w))
    ref = dense_propagate(scores, contour, r, beta, t)
    out = propagate(torch.from_numpy(scores), torch.from_numpy(contour), r, beta, t)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("r", [1, 3, 5])
def test_weights_are_the_column_normalised_matrix(r: int) -> None:
    rng = np.random.default_rng(r)
    contour = rng.random((5, 6))
    wts = transition_weights(torch.from_numpy(contour), r, 4.0)
    tm = _dense_from_weights(wts, r)
    np.testing.assert_allclose(tm.sum(axis=0), 1.0, atol=1e-12)  # column sums
    np.testing.assert_allclose(tm, dense_transition(contour, r, 4.0), atol=1e-12)
    # the underlying A^beta is symmetric: T * colsum is symmetric
    a = tm * (dense_affinity(contour, r) ** 4.0).sum(axis=0, keepdims=True)
    np.testing.assert_allclose(a, a.T, atol=1e-12)


def test_batched_equals_per_image() -> None:
    g = torch.Generator().manual_seed(3)
    contour = torch.rand(3, 9, 11, generator=g)
    scores = torch.rand(3, 4, 9, 11, generator=g)
    out = propagate(scores, contour, exp_times=5)
    assert out.shape == scores.shape
    torch.testing.assert_close(out, propagate_batch(scores, contour, exp_times=5))
    for b in range(3):
        torch.testing.assert_close(out[b], propagate(scores[b], contour[b], exp_times=5))


# ---------------------------------------------------------------- behaviour


def test_contour_line_blocks_propagation() -> None:
    h, w = 8, 9
    contour = torch.zeros(h, w, dtype=torch.float64)
    contour[:, 4] = 1.0
    scores = torch.zeros(1, h, w, dtype=torch.float64)
    scores[0, 3, 1] = 1.0
    out = propagate(scores, contour)[0]
    assert (out[:, 4:] == 0).all()  # the line and everything beyond stays exactly 0
    assert (out[:, :4] > 0).all()  # the left side is reached everywhere
    left = out[:, :4]
    assert float(left.max() - left.min()) < 1e-3 * float(left.max())  # and is nearly flat


def test_no_contour_spreads_uniformly() -> None:
    h, w = 6, 7
    contour = torch.zeros(h, w, dtype=torch.float64)
    scores = torch.zeros(2, h, w, dtype=torch.float64)
    scores[0, 0, 0] = 1.0
    scores[1, 5, 6] = 3.0
    out = propagate(scores, contour, radius=5, beta=10, exp_times=8)
    # T^inf projects onto constants: x T^inf = (x . s) / sum(s), s = degree (column sums of A)
    s = torch.from_numpy(dense_affinity(np.zeros((h, w)), 5).sum(axis=0)).view(h, w)
    expected = (scores * s).flatten(1).sum(1) / s.sum()
    torch.testing.assert_close(out, expected.view(2, 1, 1).expand(2, h, w), rtol=1e-9, atol=0)


def test_transition_preserves_constants() -> None:
    contour = torch.rand(2, 7, 8, dtype=torch.float64)
    wts = transition_weights(contour, 5, 10)
    ones = torch.ones(2, 3, 7, 8, dtype=torch.float64)
    torch.testing.assert_close(apply_transition(ones, wts, 5, 16), ones)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_constant_contours(value: float) -> None:
    scores = torch.rand(2, 5, 6, dtype=torch.float64)
    contour = torch.full((5, 6), value, dtype=torch.float64)
    out = propagate(scores, contour)
    if value == 1.0:
        assert (out == 0).all()  # everything is contour: masked, and T is the identity
    else:
        assert float(out.std(dim=(1, 2)).max()) < 1e-9  # fully mixed


def test_tiny_and_degenerate_maps() -> None:
    one = propagate(torch.tensor([[[0.8]]]), torch.tensor([[0.25]]))
    torch.testing.assert_close(one, torch.tensor([[[0.6]]]))
    # radius 1 has no offsets: T is the identity
    s = torch.rand(2, 4, 5)
    c = torch.rand(4, 5)
    torch.testing.assert_close(propagate(s, c, radius=1), s * (1 - c))
    # radius larger than the map
    out = propagate(torch.rand(1, 2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64), radius=20)
    assert out.shape == (1, 2, 3) and torch.isfinite(out).all()
    # zero channels
    assert propagate(torch.zeros(0, 4, 4), torch.zeros(4, 4)).shape == (0, 4, 4)


def test_no_grad_and_input_untouched() -> None:
    scores = torch.rand(2, 5, 5, requires_grad=True)
    contour = torch.rand(5, 5, requires_grad=True)
    before = scores.detach().clone()
    out = propagate(scores, contour, exp_times=3)
    assert not out.requires_grad
    torch.testing.assert_close(scores.detach(), before)


def test_bad_shapes() -> None:
    with pytest.raises(ValueError):
        propagate(torch.rand(2, 4, 4), torch.rand(1, 4, 4))
    with pytest.raises(ValueError):
        propagate(torch.rand(2, 2, 4, 4), torch.rand(3, 4, 4))
    with pytest.raises(ValueError):
        propagate(torch.rand(2, 4, 4), torch.rand(4, 4), exp_times=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    contour = torch.rand(2, 24, 32, generator=g)
    scores = torch.rand(2, 3, 24, 32, generator=g)
    cpu = propagate(scores, contour)
    gpu = propagate(scores.cuda(), contour.cuda())
    assert gpu.device.type == "cuda"
    assert float((gpu.cpu() - cpu).abs().max() / cpu.max()) < 1e-4
