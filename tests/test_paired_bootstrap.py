"""benchmarks/paired_bootstrap.py: paired image bootstrap of two modes' pseudo-label mIoU and contour ODS."""

import json
import sys

import numpy as np
import pytest

from conftest import load_benchmark
from sance_core.data.dataset import Manifest
from sance_core.eval.edge_eval import BoundaryCounts, ods_from_counts, summarize
from sance_core.eval.metrics import ConfusionMatrix
from sance_core.io.palette import save_label_png
from sance_core.io.store import ArtifactWriter

CLASSES = ["background", "a", "b"]


def _naive_miou(preds, gts):
    """mIoU by a loop over pixels: per class intersection and union, void (255) skipped."""
    inter, union = np.zeros(3), np.zeros(3)
    for pred, gt in zip(preds, gts):
        for p, g in zip(pred.ravel(), gt.ravel()):
            if g == 255:
                continue
            for c in range(3):
                inter[c] += (p == c) and (g == c)
                union[c] += (p == c) or (g == c)
    present = union > 0
    return float(np.mean(inter[present] / union[present]))


def test_miou_of_summed_matrices_matches_a_pixel_loop_on_a_resample():
    pb = load_benchmark("paired_bootstrap")
    rng = np.random.default_rng(3)
    gts = [rng.integers(0, 3, (5, 6)).astype(np.uint8) for _ in range(4)]
    gts[1][0, :] = 255
    preds = [rng.integers(0, 3, (5, 6)).astype(np.uint8) for _ in range(4)]
    mats = []
    for p, g in zip(preds, gts):
        cm = ConfusionMatrix(3)
        cm.update(p, g)
        mats.append(cm.matrix.copy())
    mats = np.stack(mats)
    draw = np.array([2, 2, 0, 1])  # an image drawn twice, one left out
    assert pb.miou_of(mats[draw]) == pytest.approx(_naive_miou([preds[i] for i in draw], [gts[i] for i in draw]))


def test_ods_of_stacked_counts_is_summarize_ods():
    rng = np.random.default_rng(1)
    thresholds = np.linspace(0.1, 0.9, 5)
    counts = []
    for k in range(6):
        sum_r = np.full(5, 40.0 + k)
        sum_p = np.sort(rng.integers(5, 60, 5).astype(float))[::-1]
        counts.append(BoundaryCounts(np.minimum(sum_r, rng.integers(0, 40, 5)), sum_r,
                                     np.minimum(sum_p, rng.integers(0, 50, 5)), sum_p, f"i{k}"))
    stack = np.stack([[c.count_r, c.sum_r, c.count_p, c.sum_p] for c in counts])
    assert ods_from_counts(stack, thresholds) == pytest.approx(summarize(counts, thresholds).ods)
    draw = [4, 4, 1, 0, 5, 5]
    assert ods_from_counts(stack[draw], thresholds) == pytest.approx(summarize([counts[i] for i in draw], thresholds).ods)


def test_bootstrap_differences_are_paired_and_seeded():
    pb = load_benchmark("paired_bootstrap")
    values = np.arange(10, dtype=float)[:, None]
    full, diffs = pb.bootstrap_differences(lambda x: float(x.mean()), values, values, 200, seed=5)
    assert full == 0 and np.all(diffs == 0)  # the same draw for both modes: identical modes never differ
    full, diffs = pb.bootstrap_differences(lambda x: float(x.mean()), values, values + 2.0, 200, seed=5)
    assert full == 2.0 and np.allclose(diffs, 2.0)
    _, again = pb.bootstrap_differences(lambda x: float(x.mean()), values, values * 2, 200, seed=5)
    _, same = pb.bootstrap_differences(lambda x: float(x.mean()), values, values * 2, 200, seed=5)
    assert np.array_equal(again, same) and again.std() > 0
    with pytest.raises(ValueError, match="paired items"):
        pb.bootstrap_differences(lambda x: 0.0, values, values[:3], 10)


def _write_mask(path, label):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_label_png(label, path)


def test_script_on_a_small_run(tmp_path, monkeypatch, capsys):
    """Two modes of a fake run: B's labels are the masks, A's all background; B's contours are the
    mask boundaries, A's empty. B leads on both scores in every draw."""
    pb = load_benchmark("paired_bootstrap")
    root, run = tmp_path / "data", tmp_path / "run"
    ids = {"train": ["t0", "t1", "t2"], "val": ["v0", "v1"]}
    masks = {}
    for names in ids.values():
        for k, image_id in enumerate(names):
            label = np.zeros((16, 20), dtype=np.uint8)
            label[3 + k:11, 4:12 + k] = 1 + k % 2
            masks[image_id] = label
            _write_mask(root / "SegmentationClass" / f"{image_id}.png", label)
    Manifest("fake", str(root), CLASSES, {s: [{"id": i, "labels": [1]} for i in n] for s, n in ids.items()}).save(
        run / "manifest.json")
    for mode, good in (("irnet", False), ("sance", True)):
        with ArtifactWriter(run / mode / "pseudo_labels" / "1-of-1.h5", stage="pseudo_labels") as w:
            for image_id in ids["train"]:
                w.add(image_id, {"label": masks[image_id] if good else np.zeros_like(masks[image_id])})
        with ArtifactWriter(run / mode / "contours" / "eval.h5", stage="contours") as w:
            for image_id in ids["val"]:
                edge = np.zeros((16, 20), dtype=np.float32)
                if good:
                    m = masks[image_id] > 0
                    edge[m & ~np.roll(m, 1, 0) | m & ~np.roll(m, 1, 1) | m & ~np.roll(m, -1, 0) | m & ~np.roll(m, -1, 1)] = 0.9
                w.add(image_id, {"contour": edge}, attrs={"stride": 1})
    out = tmp_path / "boot.json"
    monkeypatch.setattr(sys, "argv", ["paired_bootstrap.py", str(run), "--resamples", "50", "--contour-thresholds",
                                      "9", "--json", str(out)])
    pb.main()
    printed = capsys.readouterr().out
    assert "pseudo labels (3 train images): sance - irnet" in printed and "contour ODS (2 val images" in printed
    report = json.loads(out.read_text())
    assert report["pseudo_labels"]["difference"] > 0.3 and report["pseudo_labels"]["interval"][0] > 0
    assert report["contour_ods"]["difference"] > 0.3 and report["contour_ods"]["share_above_zero"] == 1.0


def test_missing_inputs_are_named_before_any_scoring(tmp_path, monkeypatch):
    pb = load_benchmark("paired_bootstrap")
    run = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["paired_bootstrap.py", str(run)])
    with pytest.raises(SystemExit, match="manifest.json: not found"):
        pb.main()
    Manifest("fake", str(tmp_path), CLASSES, {"train": [{"id": "t0", "labels": [1]}]}).save(run / "manifest.json")
    (run / "sance" / "contours").mkdir(parents=True)
    (run / "sance" / "contours" / "eval.h5").write_bytes(b"")
    with pytest.raises(SystemExit) as err:
        pb.main()
    text = str(err.value)
    assert "no pseudo-label shards of mode 'irnet'" in text and "no raw contour maps of mode 'irnet'" in text
    assert "no pseudo-label shards of mode 'sance'" in text and "mode 'sance' (rule infer_contours)" not in text
