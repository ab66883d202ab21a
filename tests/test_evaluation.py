"""Evaluation stages: CAM threshold sweep (IRNet's eval_cam labels), seed metrics, outputs and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sance_core.data.dataset import DatasetSpec
from sance_core.io.images import DataError
from sance_core.io.palette import save_label_png
from sance_core.data.validate import ValidationConfig, validate_dataset
from sance_core.eval.evaluation import cam_labels_at_thresholds
from sance_core.stages import run_stage
from sance_core.io.store import ArtifactWriter

CLASSES = ("background", "a", "b")


def square_dataset(root: Path, n: int = 2, masks: bool = True) -> list[str]:
    """10x10 images; class 1 fills [3:7, 3:7], the rest is background."""
    rng = np.random.default_rng(0)
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    ids = [f"s{i}" for i in range(n)]
    for image_id in ids:
        Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.png")
        gt = np.zeros((10, 10), np.uint8)
        gt[3:7, 3:7] = 1
        if masks:
            save_label_png(gt, root / "SegmentationClass" / f"{image_id}.png")
    for split in ("train", "val"):
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return ids


def square_cam() -> np.ndarray:
    cam = np.full((1, 10, 10), 0.02, np.float32)
    cam[0, 2:8, 2:8] = 0.25  # a 1-px ring of weak activation around the object
    cam[0, 3:7, 3:7] = 0.8
    return cam


def manifest_for(root: Path, tmp: Path, **spec_kw) -> tuple[dict, Path]:
    spec = {"root": str(root), "classes": list(CLASSES), "image_ext": ".png", **spec_kw}
    path = tmp / "manifest.json"
    validate_dataset(ValidationConfig("t", DatasetSpec(**{**spec, "classes": tuple(CLASSES)}), ("train", "val")), path)
    return spec, path


def write_shards(paths, arrays: dict, name: str, stage: str, keys=(1,), attrs=None):
    ids = list(arrays)
    for path, chunk in zip(paths, np.array_split(np.arange(len(ids)), len(paths))):
        with ArtifactWriter(path, stage=stage, config={}, attrs=attrs) as w:
            for k in chunk:
                w.add(ids[k], {name: arrays[ids[k]]}, {"class_keys": np.asarray(keys, np.int64)})


def test_cam_labels_equal_irnet_eval_cam():
    rng = np.random.default_rng(2)
    cams = rng.choice(np.float32([0.0, 0.1, 0.15, 0.4, 0.7]), size=(2, 7, 9))
    keys = [3, 5]
    lut = np.pad(np.asarray(keys), (1, 0))
    ts = (0.1, 0.15, 0.5)
    for t, ours in zip(ts, cam_labels_at_thresholds(cams, keys, ts)):
        expected = lut[np.argmax(np.pad(cams, ((1, 0), (0, 0), (0, 0)), constant_values=t), axis=0)]
        np.testing.assert_array_equal(ours, expected)


def test_cam_sweep_finds_the_best_threshold(tmp_path):
    root = tmp_path / "data"
    ids = square_dataset(root, n=3)
    spec, manifest = manifest_for(root, tmp_path)
    shards = [tmp_path / "cam" / f"{k}-of-2.h5" for k in (1, 2)]
    write_shards(shards, {i: square_cam() for i in ids}, "cam", "cam")
    outputs = {"json": str(tmp_path / "eval/cam.json"), "tsv": str(tmp_path / "eval/cam.tsv"),
               "curve": str(tmp_path / "eval/cam_curve.png")}
    params = {"dataset": spec, "split": "train", "thresholds": [0.05, 0.2, 0.3, 0.5, 0.9]}
    run_stage("evaluate_cams", params, {"manifest": str(manifest), "cams": [str(p) for p in shards]}, outputs)
    result = json.loads(Path(outputs["json"]).read_text())
    # by hand: below 0.25 the ring (20 px) is foreground: IoU_a 16/36, IoU_bg 64/84; 0.3/0.5 are exact;
    # at 0.9 all is background: IoU_bg 84/100, IoU_a 0. Class 'b' is absent everywhere -> excluded.
    low = (16 / 36 + 64 / 84) / 2
    curve = {p["threshold"]: p["miou"] for p in result["threshold_curve"]}
    assert curve[0.05] == pytest.approx(low) and curve[0.2] == pytest.approx(low)
    assert curve[0.3] == pytest.approx(1.0) and curve[0.5] == pytest.approx(1.0)
    assert curve[0.9] == pytest.approx(0.42)
    assert result["best_threshold"] == 0.3 and result["miou"] == pytest.approx(1.0)
    assert result["n_images"] == 3 and result["iou"] == {"background": 1.0, "a": 1.0, "b": None}
    assert "note" not in result  # the best threshold lies inside the sweep
    rows = Path(outputs["tsv"]).read_text().splitlines()
    assert rows[0].split("\t")[:3] == ["class_id", "class", "iou"] and len(rows) == 4
    assert rows[3].split("\t")[2] == "NA"
    assert Path(outputs["curve"]).stat().st_size > 1000
    params["thresholds"] = [0.3, 0.9]  # the best (0.3) is the lowest threshold tried: say so
    run_stage("evaluate_cams", params, {"manifest": str(manifest), "cams": [str(p) for p in shards]}, outputs)
    assert "edge of the sweep" in json.loads(Path(outputs["json"]).read_text())["note"]


def test_cam_eval_errors_and_no_masks(tmp_path):
    root = tmp_path / "data"
    ids = square_dataset(root, n=2)
    spec, manifest = manifest_for(root, tmp_path)
    shard = tmp_path / "cam.h5"
    write_shards([shard], {ids[0]: square_cam()}, "cam", "cam")  # s1 missing
    out = {"json": str(tmp_path / "c.json"), "tsv": str(tmp_path / "c.tsv")}
    with pytest.raises(DataError, match=r"1 id\(s\) missing \['s1'\]"):
        run_stage("evaluate_cams", {"dataset": spec}, {"manifest": str(manifest), "cams": [str(shard)]}, out)
    assert not Path(out["json"]).exists()
    write_shards([shard], {i: square_cam()[:, :5] for i in ids}, "cam", "cam")
    with pytest.raises(DataError, match="has size"):
        run_stage("evaluate_cams", {"dataset": spec}, {"manifest": str(manifest), "cams": [str(shard)]}, out)

    # tags-only data (no masks): evaluation is skipped with a note
    bare = tmp_path / "bare"
    ids = square_dataset(bare, n=2, masks=False)
    (bare / "tags.csv").write_text("image,tags\n" + "".join(f"{i}.png,a\n" for i in ids))
    spec, manifest = manifest_for(bare, tmp_path, format="tags_csv", tags_file="tags.csv", mask_dir=None)
    write_shards([shard], {i: square_cam() for i in ids}, "cam", "cam")
    run_stage("evaluate_cams", {"dataset": spec}, {"manifest": str(manifest), "cams": [str(shard)]}, out)
    result = json.loads(Path(out["json"]).read_text())
    assert result["n_images"] == 0 and result["miou"] is None and "no ground-truth masks" in result["note"]


def test_seed_evaluation_by_hand(tmp_path):
    root = tmp_path / "data"
    ids = square_dataset(root, n=2)
    spec, manifest = manifest_for(root, tmp_path)
    seed = np.full((10, 10), 255, np.uint8)
    seed[3:7, 3:7] = 1  # 16 correct foreground pixels
    seed[0:2, :] = 0  # 20 correct background pixels
    seed[9, :] = 2  # 10 wrong pixels (gt background)
    shard = tmp_path / "seeds.h5"
    write_shards([shard], {i: seed for i in ids}, "seed", "seeds",
                 attrs={"fg_threshold": 0.3, "bg_threshold": 0.05, "crf": {"enabled": True}})
    out = {"json": str(tmp_path / "s.json"), "tsv": str(tmp_path / "s.tsv")}
    run_stage("evaluate_seeds", {"dataset": spec}, {"manifest": str(manifest), "seeds": [str(shard)]}, out)
    r = json.loads(Path(out["json"]).read_text())
    assert r["n_images"] == 2
    assert r["precision"] == pytest.approx(36 / 46) and r["coverage"] == pytest.approx(46 / 100)
    # confident-pixel IoU: bg TP 20, gt 30, pred 20 -> 2/3; a 1.0; b TP 0, pred 10 -> 0
    assert r["iou"] == pytest.approx({"background": 20 / 30, "a": 1.0, "b": 0.0})
    assert r["miou"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert r["recall_per_class"]["background"] == pytest.approx(20 / 84) and r["recall_per_class"]["a"] == 1.0
    assert r["seed_settings"] == {"fg_threshold": 0.3, "bg_threshold": 0.05, "crf": {"enabled": True}}
    header = Path(out["tsv"]).read_text().splitlines()[0].split("\t")
    assert "coverage" not in header and "confident_gt_pixels" in header
