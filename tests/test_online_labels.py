"""Online labels (Eq. 7) and background refinement (Eq. 8)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sance_core.ops.online_labels import (
    DEFAULT_BG_THRESHOLD,
    make_online_label,
    online_label,
    refine_with_background,
    scores_to_label,
)


def naive_online_label(fg: np.ndarray, present: np.ndarray, tau: float) -> np.ndarray:
    """Per pixel: zero absent classes, divide by the global max, bg = tau, first arg-max."""
    c, h, w = fg.shape
    s = fg * present[:, None, None]
    peak = s.max() if c else 0.0
    if peak > 0:
        s = s / peak
    out = np.zeros((h, w), dtype=np.int64)
    for y, x in itertools.product(range(h), range(w)):
        best, arg = tau, 0
        for k in range(c):
            if s[k, y, x] > best:
                best, arg = s[k, y, x], k + 1
        out[y, x] = arg
    return out


@settings(max_examples=30, deadline=None)
@given(
    c=st.integers(1, 5),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    tau=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_online_label_matches_naive(c: int, h: int, w: int, tau: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    fg = rng.random((c, h, w)) * rng.choice([0.0, 0.01, 1.0, 7.0])
    present = rng.random(c) < 0.6
    lab = online_label(torch.from_numpy(fg), torch.from_numpy(present), tau)
    assert lab.dtype == torch.long and lab.shape == (h, w)
    np.testing.assert_array_equal(lab.numpy(), naive_online_label(fg, present, tau))
    allowed = {0} | {k + 1 for k in range(c) if present[k]}
    assert set(np.unique(lab.numpy()).tolist()) <= allowed


def test_online_label_by_hand() -> None:
    fg = torch.tensor(
        [
            [[0.9, 0.1], [0.3, 0.0]],  # class 1 (present)
            [[5.0, 5.0], [5.0, 5.0]],  # class 2 (absent: must never win)
            [[0.0, 0.2], [0.6, 0.1]],  # class 3 (present)
        ]
    )
    labels = torch.tensor([1, 0, 1])
    # global max of the present classes is 0.9 -> normalised 1, .11, .33, 0 / 0, .22, .67, .11
    lab = online_label(fg, labels, 0.25)
    torch.testing.assert_close(lab, torch.tensor([[1, 0], [3, 0]]))
    assert DEFAULT_BG_THRESHOLD == 0.25


def test_no_present_class_or_zero_scores_is_background() -> None:
    fg = torch.rand(3, 4, 4)
    assert (online_label(fg, torch.zeros(3, dtype=torch.bool)) == 0).all()
    assert (online_label(torch.zeros(3, 4, 4), torch.ones(3)) == 0).all()
    assert (online_label(torch.zeros(3, 4, 4), torch.ones(3), bg_threshold=0.0) == 0).all()


def test_batched_equals_per_image() -> None:
    g = torch.Generator().manual_seed(0)
    fg = torch.rand(3, 4, 5, 6, generator=g)
    labels = torch.rand(3, 4, generator=g) < 0.5
    lab = online_label(fg, labels)
    assert lab.shape == (3, 5, 6)
    for b in range(3):
        torch.testing.assert_close(lab[b], online_label(fg[b], labels[b]))
    # normalisation is per image: scaling one image changes nothing
    fg2 = fg.clone()
    fg2[1] *= 10
    torch.testing.assert_close(online_label(fg2, labels), lab)


def test_scores_to_label_with_keys() -> None:
    scores = torch.tensor([[[0.1, 0.8]], [[0.9, 0.2]]])  # two present classes, ids 7 and 3
    lab = scores_to_label(scores, 0.5, keys=torch.tensor([7, 3]))
    torch.testing.assert_close(lab, torch.tensor([[3, 7]]))
    lab_b = scores_to_label(scores[None], 0.95, keys=torch.tensor([[7, 3]]))
    torch.testing.assert_close(lab_b, torch.tensor([[[3, 0]]]))  # 0.8/0.9 < 0.95
    assert (scores_to_label(torch.zeros(0, 2, 3)) == 0).all()
    # without normalisation the raw values meet tau_b
    torch.testing.assert_close(scores_to_label(scores, 0.85, normalize=False), torch.tensor([[2, 0]]))


def test_refine_with_background() -> None:
    online = torch.tensor([[1, 2, 0], [3, 3, 1]])
    ref = torch.tensor([[0, 5, 2], [0, 1, 255]])
    torch.testing.assert_close(refine_with_background(online, ref), torch.tensor([[0, 2, 0], [0, 3, 1]]))
    batched = refine_with_background(online[None].repeat(2, 1, 1), ref[None].repeat(2, 1, 1))
    assert batched.shape == (2, 2, 3)
    with pytest.raises(ValueError):
        refine_with_background(online, ref[:1])


def test_make_online_label_follows_contours() -> None:
    h, w = 8, 10
    contour = torch.zeros(1, h, w)
    contour[0, :, 5] = 1.0  # a wall down the middle
    probs = torch.zeros(1, 4, h, w)  # bg + 3 classes
    probs[0, 0] = 1.0
    probs[0, 0, 2, 1] = 0.0
    probs[0, 2, 2, 1] = 1.0  # one confident pixel of class 2 on the left
    probs[0, 3, 6, 8] = 0.5  # class 3 is absent from the image: ignored
    labels = torch.tensor([[0, 1, 0]])
    lab = make_online_label(probs, contour, labels)
    assert lab.shape == (1, h, w)
    assert (lab[0, :, :5] == 2).all()  # spread over the whole left side
    assert (lab[0, :, 5:] == 0).all()  # blocked by the wall
    ref = torch.ones(1, h, w, dtype=torch.long)
    ref[0, :4] = 0
    refined = make_online_label(probs, contour, labels, reference=ref)
    assert (refined[0, :4] == 0).all() and (refined[0, 4:, :5] == 2).all()
