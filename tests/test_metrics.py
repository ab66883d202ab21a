"""Metrics against naive per-pixel loops and hand-computed cases (absent classes, out-of-range predictions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sance_core.eval.metrics import ConfusionMatrix, SeedMetrics


def naive_iou(preds, gts, n):
    """Python loops over every pixel: the reference the vectorised code must match."""
    tp = [0] * n
    gt_count = [0] * n
    pred_count = [0] * n
    for pred, gt in zip(preds, gts):
        for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
            if g == 255:
                continue
            gt_count[g] += 1
            if 0 <= p < n:
                pred_count[p] += 1
                if p == g:
                    tp[g] += 1
    ious = []
    for c in range(n):
        union = gt_count[c] + pred_count[c] - tp[c]
        ious.append(tp[c] / union if union else math.nan)
    present = [v for v in ious if not math.isnan(v)]
    return ious, (sum(present) / len(present) if present else math.nan)


def test_hand_computed_with_absent_class_and_void():
    # 3 classes; class 2 appears nowhere -> excluded from the mean
    gt = np.array([[0, 0, 1, 1], [0, 255, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 1]], np.uint8)
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    # class 0: gt {(0,0),(0,1),(1,0)} = 3 px; pred 0 at (0,0),(1,0),(1,2) (void (1,1) ignored) -> TP 2, union 3+3-2=4
    # class 1: gt 4 px; pred 1 at (0,1),(0,2),(0,3),(1,3) -> TP 3, union 4+4-3=5
    iou = cm.iou()
    assert iou[0] == pytest.approx(2 / 4) and iou[1] == pytest.approx(3 / 5) and math.isnan(iou[2])
    assert cm.miou() == pytest.approx((0.5 + 0.6) / 2)
    d = cm.as_dict(["bg", "a", "b"])
    assert d["iou"]["b"] is None and d["n_pixels"] == 7
    assert d["pixel_accuracy"] == pytest.approx(5 / 7)
    assert d["precision_per_class"]["a"] == pytest.approx(3 / 4) and d["recall_per_class"]["bg"] == pytest.approx(2 / 3)


def test_predicted_but_absent_class_counts_with_zero_iou():
    gt = np.zeros((2, 2), np.uint8)
    pred = np.array([[0, 2], [0, 0]], np.uint8)
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    iou = cm.iou()
    assert iou[0] == pytest.approx(3 / 4) and iou[2] == 0.0 and math.isnan(iou[1])
    assert cm.miou() == pytest.approx(3 / 8)


def test_out_of_range_predictions_are_wrong_not_wrapped():
    gt = np.array([[1, 1, 0]], np.uint8)
    pred = np.array([[255, 4, 0]], np.uint8)  # 255 and 4 are outside 0..2; 4 % 3 == 1 would be "right" if wrapped
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    assert cm.iou()[1] == 0.0 and cm.iou()[0] == 1.0
    assert cm.gt_pixels.tolist() == [1, 2, 0] and cm.pred_pixels.tolist() == [1, 0, 0]
    neg = ConfusionMatrix(2)
    neg.update(np.array([-1, 0]), np.array([0, 0]))
    assert neg.true_positives.tolist() == [1, 0] and neg.iou()[0] == 0.5


def test_bad_ground_truth_and_shapes_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"ground-truth label\(s\) \[7\]"):
        cm.update(np.zeros((2, 2)), np.full((2, 2), 7))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    empty = ConfusionMatrix(2)
    assert math.isnan(empty.miou()) and empty.as_dict(["a", "b"])["miou"] is None


def test_matches_naive_reference_over_several_images():
    rng = np.random.default_rng(3)
    n = 5
    preds, gts = [], []
    cm = ConfusionMatrix(n)
    for _ in range(4):
        gt = rng.integers(0, n - 1, (7, 9)).astype(np.uint8)  # class 4 never in gt
        gt[rng.random((7, 9)) < 0.1] = 255
        pred = rng.integers(0, n + 2, (7, 9)).astype(np.uint8)  # some out-of-range predictions
        cm.update(pred, gt)
        preds.append(pred)
        gts.append(gt)
    ious, miou = naive_iou(preds, gts, n)
    np.testing.assert_allclose(cm.iou(), ious, equal_nan=True)
    assert cm.miou() == pytest.approx(miou)


@settings(max_examples=60, deadline=None)
@given(
    gt=arrays(np.uint8, (6, 5), elements=st.sampled_from([0, 1, 2, 3, 255])),
    pred=arrays(np.uint8, (6, 5), elements=st.sampled_from([0, 1, 2, 3, 9, 255])),
)
def test_property_matches_naive_and_is_bounded(gt, pred):
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    ious, miou = naive_iou([pred], [gt], 4)
    np.testing.assert_allclose(cm.iou(), ious, equal_nan=True)
    if not math.isnan(miou):
        assert 0.0 <= cm.miou() <= 1.0 and cm.miou() == pytest.approx(miou)
    assert cm.total == int((gt != 255).sum())
    # a perfect prediction scores 1 on every present class
    perfect = ConfusionMatrix(4)
    perfect.update(gt, gt)
    if (gt != 255).any():
        assert perfect.miou() == pytest.approx(1.0)


@settings(max_examples=30, deadline=None)
@given(arrays(np.uint8, (4, 6), elements=st.sampled_from([0, 1, 2, 255])),
       arrays(np.uint8, (4, 6), elements=st.sampled_from([0, 1, 2, 255])))
def test_property_merge_equals_joint_update(a, b):
    joint, left, right = ConfusionMatrix(3), ConfusionMatrix(3), ConfusionMatrix(3)
    joint.update(np.stack([a, b]), np.stack([b, a]))
    left.update(a, b)
    right.update(b, a)
    np.testing.assert_array_equal(left.merge(right).matrix, joint.matrix)


def naive_seed_metrics(seeds, gts, n):
    correct = confident = valid = 0
    per_class_hit = [0] * n
    per_class_total = [0] * n
    for seed, gt in zip(seeds, gts):
        for s, g in zip(seed.ravel().tolist(), gt.ravel().tolist()):
            if g == 255:
                continue
            valid += 1
            per_class_total[g] += 1
            if s != 255:
                confident += 1
                if s == g:
                    correct += 1
                    per_class_hit[g] += 1
    recall = [h / t if t else math.nan for h, t in zip(per_class_hit, per_class_total)]
    return correct / confident, confident / valid, recall


def test_seed_metrics_hand_computed():
    gt = np.array([[0, 0, 1, 1, 255]], np.uint8)
    seed = np.array([[0, 255, 1, 0, 1]], np.uint8)
    m = SeedMetrics(3)
    m.update(seed, gt)
    # valid gt: 4 px; confident among them: 3 (0, 1, 0); correct: 2
    assert m.precision() == pytest.approx(2 / 3) and m.coverage() == pytest.approx(3 / 4)
    rec = m.recall_per_class()
    assert rec[0] == pytest.approx(1 / 2) and rec[1] == pytest.approx(1 / 2) and math.isnan(rec[2])
    d = m.as_dict(["bg", "a", "b"])
    assert d["precision"] == pytest.approx(2 / 3) and d["coverage"] == pytest.approx(0.75)
    # mIoU of the confident pixels: bg TP1 union 2 ; a TP1 union 2
    assert d["miou"] == pytest.approx(0.5) and d["iou"]["b"] is None
    rows = m.table(["bg", "a", "b"])
    assert rows[0]["gt_pixels"] == 2 and rows[0]["confident_gt_pixels"] == 1 and rows[1]["confident_gt_pixels"] == 2


def test_seed_metrics_match_naive_reference():
    rng = np.random.default_rng(5)
    seeds, gts = [], []
    m = SeedMetrics(4)
    for _ in range(3):
        gt = rng.integers(0, 4, (8, 8)).astype(np.uint8)
        gt[rng.random((8, 8)) < 0.1] = 255
        seed = np.where(rng.random((8, 8)) < 0.6, gt, rng.integers(0, 4, (8, 8))).astype(np.uint8)
        seed[rng.random((8, 8)) < 0.3] = 255
        m.update(seed, gt)
        seeds.append(seed)
        gts.append(gt)
    precision, coverage, recall = naive_seed_metrics(seeds, gts, 4)
    assert m.precision() == pytest.approx(precision) and m.coverage() == pytest.approx(coverage)
    np.testing.assert_allclose(m.recall_per_class(), recall, equal_nan=True)


def test_seed_composition_matches_a_pixel_count():
    """Object / background pixels by what the seeds say, against a count pixel by pixel."""
    rng = np.random.default_rng(11)
    m = SeedMetrics(4)
    counts = {"own_class": 0, "other_class": 0, "background": 0, "unsure": 0}
    bg_counts = {"background": 0, "object": 0, "unsure": 0}
    for _ in range(3):
        gt = rng.integers(0, 4, (9, 7)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.1] = 255
        seed = np.where(rng.random(gt.shape) < 0.5, gt, rng.integers(0, 4, gt.shape)).astype(np.uint8)
        seed[rng.random(gt.shape) < 0.3] = 255
        m.update(seed, gt)
        for g, s in zip(gt.ravel().tolist(), seed.ravel().tolist()):
            if g == 255:
                continue
            if g == 0:
                bg_counts["unsure" if s == 255 else "background" if s == 0 else "object"] += 1
            else:
                counts["unsure" if s == 255 else "background" if s == 0 else "own_class" if s == g else "other_class"] += 1
    comp = m.as_dict(["bg", "a", "b", "c"])["composition"]
    n_obj, n_bg = sum(counts.values()), sum(bg_counts.values())
    assert comp["object_pixels"] == pytest.approx({k: v / n_obj for k, v in counts.items()})
    assert comp["background_pixels"] == pytest.approx({k: v / n_bg for k, v in bg_counts.items()})


def test_seed_composition_of_seeds_that_label_a_body_as_background():
    # an object of 4 pixels: its part seeded right (1), its body seeded as background (2), one unsure
    gt = np.array([[0, 0, 1, 1, 1, 1]], np.uint8)
    seed = np.array([[0, 255, 1, 0, 0, 255]], np.uint8)
    m = SeedMetrics(2)
    m.update(seed, gt)
    comp = m.composition()
    assert comp["object_pixels"] == {"own_class": 0.25, "other_class": 0.0, "background": 0.5, "unsure": 0.25}
    assert comp["background_pixels"] == {"background": 0.5, "object": 0.0, "unsure": 0.5}
    assert SeedMetrics(3).composition()["object_pixels"]["background"] is None  # nothing seen yet
