"""Affinity targets (Eq. 3), contour loss (Eq. 4) and segmentation loss (Eq. 5)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sance_core.ops.affinity import path_affinity, path_offsets
from sance_core.ops.losses import (
    AffinityTargets,
    affinity_loss_terms,
    affinity_targets,
    contour_loss,
    pair_partner,
    segmentation_loss,
)

EPS = 1e-5

# ---------------------------------------------------------------- naive references


def naive_pairs(seeds: np.ndarray, r: int, region: np.ndarray | None = None):
    """Yield (k, y, x, kind) for every supervised pair; kind in {'bg', 'fg', 'neg'}."""
    h, w = seeds.shape
    for k, (dy, dx) in enumerate(path_offsets(r).tolist()):
        for y, x in itertools.product(range(h), range(w)):
            ty, tx = y + dy, x + dx
            if not (0 <= ty < h and 0 <= tx < w):
                continue
            a, b = int(seeds[y, x]), int(seeds[ty, tx])
            if a == 255 or b == 255:
                continue
            if region is not None and not (region[y, x] and region[ty, tx]):
                continue
            yield k, y, x, ("neg" if a != b else ("bg" if a == 0 else "fg"))


def naive_contour_loss(contour: np.ndarray, seeds: np.ndarray, r: int, power: float,
                       region: np.ndarray | None = None) -> float:
    aff = path_affinity(torch.from_numpy(contour), r, power).numpy()
    sums = {"bg": 0.0, "fg": 0.0, "neg": 0.0}
    counts = {"bg": 0, "fg": 0, "neg": 0}
    for k, y, x, kind in naive_pairs(seeds, r, region):
        a = aff[k, y, x]
        sums[kind] += -math.log(1 + EPS - a) if kind == "neg" else -math.log(a + EPS)
        counts[kind] += 1
    mean = {kk: (sums[kk] / counts[kk] if counts[kk] else 0.0) for kk in sums}
    return mean["bg"] / 2 + mean["fg"] / 2 + mean["neg"]


def random_seeds(rng: np.random.Generator, h: int, w: int, n_cls: int = 3, p_ignore: float = 0.3) -> np.ndarray:
    s = rng.integers(0, n_cls + 1, size=(h, w))
    s[rng.random((h, w)) < p_ignore] = 255
    return s


# ---------------------------------------------------------------- targets


def test_pair_partner() -> None:
    x = torch.arange(12).view(1, 3, 4)
    p = pair_partner(x, 3, fill=-1)
    for k, (dy, dx) in enumerate(path_offsets(3).tolist()):
        for y, xx in itertools.product(range(3), range(4)):
            inside = 0 <= y + dy < 3 and 0 <= xx + dx < 4
            assert int(p[0, k, y, xx]) == (int(x[0, y + dy, xx + dx]) if inside else -1)


@pytest.mark.parametrize("use_region", [False, True])
@pytest.mark.parametrize("r", [2, 4, 10])
def test_targets_match_naive(r: int, use_region: bool) -> None:
    rng = np.random.default_rng(r)
    seeds = random_seeds(rng, 6, 7)
    region = rng.random((6, 7)) < 0.7 if use_region else None
    tgt = affinity_targets(
        torch.from_numpy(seeds)[None], r, None if region is None else torch.from_numpy(region)[None]
    )
    k = path_offsets(r).shape[0]
    expect = {n: np.zeros((k, 6, 7), dtype=bool) for n in ("bg", "fg", "neg")}
    for kk, y, x, kind in naive_pairs(seeds, r, region):
        expect[kind][kk, y, x] = True
    np.testing.assert_array_equal(tgt.bg_pos[0].numpy(), expect["bg"])
    np.testing.assert_array_equal(tgt.fg_pos[0].numpy(), expect["fg"])
    np.testing.assert_array_equal(tgt.neg[0].numpy(), expect["neg"])
    assert not (tgt.bg_pos & tgt.fg_pos).any() and not (tgt.neg & (tgt.bg_pos | tgt.fg_pos)).any()


def test_targets_unbatched_and_all_ignore() -> None:
    seeds = torch.full((5, 5), 255)
    tgt = affinity_targets(seeds, 5)
    assert tgt.bg_pos.shape == (1, 34, 5, 5)
    assert not (tgt.bg_pos.any() or tgt.fg_pos.any() or tgt.neg.any())


# ---------------------------------------------------------------- contour loss


@pytest.mark.parametrize("r,power", [(10, 1.0), (4, 2.0), (3, 1.0)])
def test_contour_loss_matches_naive(r: int, power: float) -> None:
    rng = np.random.default_rng(r)
    contour = rng.random((2, 6, 7))
    seeds = np.stack([random_seeds(rng, 6, 7) for _ in range(2)])
    loss = contour_loss(torch.from_numpy(contour), torch.from_numpy(seeds), r, power)
    # the batch is pooled: counts run over all images together, as in IRNet
    aff = path_affinity(torch.from_numpy(contour), r, power).numpy()
    sums = {"bg": 0.0, "fg": 0.0, "neg": 0.0}
    counts = {"bg": 0, "fg": 0, "neg": 0}
    for b in range(2):
        for k, y, x, kind in naive_pairs(seeds[b], r):
            a = aff[b, k, y, x]
            sums[kind] += -math.log(1 + EPS - a) if kind == "neg" else -math.log(a + EPS)
            counts[kind] += 1
    expect = sums["bg"] / counts["bg"] / 2 + sums["fg"] / counts["fg"] / 2 + sums["neg"] / counts["neg"]
    assert float(loss) == pytest.approx(expect, rel=1e-10)


@settings(max_examples=20, deadline=None)
@given(
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    r=st.integers(1, 6),
    p_ignore=st.sampled_from([0.0, 0.5, 1.0]),
    n_cls=st.integers(0, 2),
    use_region=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_contour_loss_property(h, w, r, p_ignore, n_cls, use_region, seed) -> None:
    rng = np.random.default_rng(seed)
    contour = rng.random((h, w))
    seeds = random_seeds(rng, h, w, n_cls, p_ignore)
    region = rng.random((h, w)) < 0.6 if use_region else None
    c = torch.from_numpy(contour).requires_grad_()
    loss = contour_loss(c, torch.from_numpy(seeds), r, 1.0,
                        None if region is None else torch.from_numpy(region)[None])
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(naive_contour_loss(contour, seeds, r, 1.0, region), rel=1e-9, abs=1e-12)
    loss.backward()
    assert torch.isfinite(c.grad).all()


def test_contour_loss_gradcheck() -> None:
    rng = np.random.default_rng(0)
    contour = torch.from_numpy(0.1 + 0.8 * rng.random((1, 5, 6))).requires_grad_()
    seeds = torch.from_numpy(random_seeds(rng, 5, 6, 2, 0.2))[None]
    region = torch.ones(1, 5, 6, dtype=torch.bool)
    region[:, :, 0] = False
    assert torch.autograd.gradcheck(lambda c: contour_loss(c, seeds, 4, 1.0), (contour,))
    assert torch.autograd.gradcheck(lambda c: contour_loss(c, seeds, 3, 2.0, region), (contour,))


def test_contour_loss_empty_groups_are_zero_not_nan() -> None:
    contour = torch.rand(1, 6, 6, dtype=torch.float64, requires_grad=True)
    for seeds in (
        torch.full((1, 6, 6), 255),  # nothing supervised
        torch.zeros(1, 6, 6, dtype=torch.long),  # background only: no fg / neg pairs
        torch.ones(1, 6, 6, dtype=torch.long),  # one class only
    ):
        loss = contour_loss(contour, seeds, 10)
        assert torch.isfinite(loss)
        loss.backward()
        assert torch.isfinite(contour.grad).all()
        contour.grad = None
    zero = contour_loss(contour, torch.full((1, 6, 6), 255), 10)
    assert zero.item() == 0.0 and zero.requires_grad
    # a 1x1 map has no pairs at all
    assert float(contour_loss(torch.rand(1, 1, 1), torch.zeros(1, 1, 1), 10)) == 0.0


def test_contour_loss_saturated_contours_are_finite() -> None:
    seeds = torch.tensor([[[0, 0, 255, 1, 1]]])
    for value in (0.0, 1.0):
        c = torch.full((1, 1, 5), value, requires_grad=True)
        loss = contour_loss(c, seeds, 3)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(c.grad).all()
    # perfect contour between the two regions gives a small loss, none gives a large one
    good = torch.tensor([[[0.0, 0.0, 1.0, 0.0, 0.0]]])
    bad = torch.zeros(1, 1, 5)
    assert float(contour_loss(good, seeds, 3)) < 1e-3 < float(contour_loss(bad, seeds, 3))


def test_region_mask_restricts_pairs() -> None:
    rng = np.random.default_rng(5)
    contour = torch.from_numpy(rng.random((1, 6, 7)))
    seeds = torch.from_numpy(random_seeds(rng, 6, 7, 2, 0.0))[None]
    full = torch.ones(1, 6, 7, dtype=torch.bool)
    torch.testing.assert_close(contour_loss(contour, seeds, 4, region_mask=full), contour_loss(contour, seeds, 4))
    empty = torch.zeros(1, 6, 7, dtype=torch.bool)
    assert float(contour_loss(contour, seeds, 4, region_mask=empty)) == 0.0


def test_loss_terms_by_hand() -> None:
    aff = torch.tensor([[[[0.5, 0.25]]]], dtype=torch.float64)  # [1, 1, 1, 2]
    t = torch.tensor([[[[True, False]]]])
    f = torch.zeros_like(t)
    terms = affinity_loss_terms(aff, AffinityTargets(t, f, ~t))
    assert float(terms["bg_pos"]) == pytest.approx(-math.log(0.5 + EPS))
    assert float(terms["fg_pos"]) == 0.0
    assert float(terms["neg"]) == pytest.approx(-math.log(1 + EPS - 0.25))


# ---------------------------------------------------------------- segmentation loss


def test_segmentation_loss_matches_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    seeds = torch.randint(0, 4, (2, 5, 6), generator=g)
    seeds[torch.rand(2, 5, 6, generator=g) < 0.3] = 255
    loss = segmentation_loss(logits, seeds)
    ref = F.cross_entropy(logits, seeds, ignore_index=255)
    torch.testing.assert_close(loss, ref)
    assert torch.autograd.gradcheck(lambda z: segmentation_loss(z, seeds), (logits,), fast_mode=True)


def test_segmentation_loss_all_ignored_is_zero_with_grad() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((2, 4, 4), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and (logits.grad == 0).all()


def test_segmentation_loss_region_mask() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 4, 5, generator=g, dtype=torch.float64)
    seeds = torch.randint(0, 3, (1, 4, 5), generator=g)
    region = torch.zeros(1, 4, 5, dtype=torch.bool)
    region[:, 1:3, 1:4] = True
    masked = seeds.clone()
    masked[~region] = 255
    torch.testing.assert_close(segmentation_loss(logits, seeds, region), F.cross_entropy(logits, masked, ignore_index=255))
    assert float(segmentation_loss(logits, seeds, torch.zeros_like(region))) == 0.0


def test_segmentation_loss_rejects_bad_labels() -> None:
    with pytest.raises(ValueError):
        segmentation_loss(torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), 7))
