"""Dense CRF: noise along a strong colour edge is cleaned, outputs are well-formed and repeatable."""

from __future__ import annotations

import numpy as np
import pytest

from sance_core.ops.crf import CRFConfig, crf_refine_labels, crf_refine_probs


def two_region_image(h: int = 40, w: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Left half dark blue, right half bright yellow: the true labels follow the colour edge."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (20, 30, 120)
    image[:, w // 2:] = (230, 220, 40)
    truth = np.zeros((h, w), np.int64)
    truth[:, w // 2:] = 1
    return image, truth


def test_noisy_labels_along_colour_edge_are_cleaned():
    image, truth = two_region_image()
    rng = np.random.default_rng(0)
    noisy = truth.copy()
    flip = rng.random(truth.shape) < 0.2
    noisy[flip] = 1 - noisy[flip]
    # a blob of the wrong label bleeding over the edge, as CAMs do
    noisy[10:20, 18:30] = 1
    refined = crf_refine_labels(image, noisy, n_labels=2)
    err_before = (noisy != truth).mean()
    err_after = (refined != truth).mean()
    assert err_before > 0.2
    assert err_after < 0.01, f"CRF left {err_after:.3f} of the pixels wrong"


def test_three_labels_and_flipped_view_inputs():
    image, truth = two_region_image()
    labels = truth.copy()
    labels[:5] = 2  # a third label on top, on both colours
    out = crf_refine_labels(image[:, ::-1], labels[:, ::-1].astype(np.uint8), n_labels=3)  # non-contiguous views
    assert out.shape == truth.shape and out.dtype == np.int64
    assert out.min() >= 0 and out.max() <= 2


def test_output_shape_range_and_determinism():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (17, 23, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, (17, 23))
    a = crf_refine_labels(image, labels, 4)
    b = crf_refine_labels(image, labels, 4)
    assert a.shape == (17, 23) and set(np.unique(a)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(a, b)
    probs = rng.random((3, 17, 23)).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    q1 = crf_refine_probs(image, probs)
    q2 = crf_refine_probs(image, probs)
    assert q1.shape == (3, 17, 23) and q1.dtype == np.float32
    assert np.all(q1 >= 0) and np.allclose(q1.sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(q1, q2)


def test_probs_follow_the_edge():
    image, truth = two_region_image()
    probs = np.empty((2, *truth.shape), np.float32)
    probs[1] = np.where(truth == 1, 0.6, 0.45)  # weak, edge-blind evidence
    probs[1, :, 16:24] = 0.55  # wrong on a band left of the edge
    probs[0] = 1 - probs[1]
    q = crf_refine_probs(image, probs)
    assert (q.argmax(0) == truth).mean() > 0.99


def test_single_label_and_bad_inputs():
    image, truth = two_region_image(8, 8)
    np.testing.assert_array_equal(crf_refine_labels(image, np.zeros((8, 8), int), 1), 0)
    with pytest.raises(ValueError, match=r"labels must lie in 0..1"):
        crf_refine_labels(image, np.full((8, 8), 2), 2)
    with pytest.raises(ValueError, match="differs from the map size"):
        crf_refine_labels(image[:4], truth, 2)
    with pytest.raises(ValueError, match="uint8"):
        crf_refine_labels(image.astype(np.float32), truth, 2)
    with pytest.raises(ValueError, match="gt_prob"):
        CRFConfig(gt_prob=1.0)
