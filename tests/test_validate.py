"""Dataset validation: a clean dataset passes; each kind of bad input is named with its file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.io.images import DataError, read_image
from sance_core.io.palette import save_label_png
from sance_core.data.validate import ValidationConfig, validate_dataset

from conftest import shared_data

CLASSES = ("background", "a", "b", "c")


def make_voc(root: Path, n_train: int = 3, n_val: int = 2) -> Path:
    rng = np.random.default_rng(1)
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    splits = {"train": [f"t{i}" for i in range(n_train)], "val": [f"v{i}" for i in range(n_val)]}
    for split, ids in splits.items():
        for k, image_id in enumerate(ids):
            h, w = 20 + k, 30
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
            mask = np.zeros((h, w), np.uint8)
            mask[5:10, 5:15] = 1 + k % 3
            mask[4, 4:16] = 255
            save_label_png(mask, root / "SegmentationClass" / f"{image_id}.png")
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def cfg(root: Path, **kw) -> ValidationConfig:
    spec = DatasetSpec(root=str(root), classes=CLASSES, **kw.pop("spec", {}))
    return ValidationConfig(name="t", dataset=spec, splits=("train", "val"), **kw)


def test_clean_dataset_writes_manifest(tmp_path):
    root = make_voc(tmp_path / "voc")
    m = validate_dataset(cfg(root), tmp_path / "m.json")
    loaded = Manifest.load(tmp_path / "m.json")
    assert loaded.ids("train") == ["t0", "t1", "t2"] and loaded.ids("val") == ["v0", "v1"]
    assert loaded.entries("train")[1] == {"id": "t1", "height": 21, "width": 30, "labels": [2], "has_mask": True}
    np.testing.assert_array_equal(loaded.label_vector("train", "t2"), [0, 0, 1])
    assert m.skipped == []


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda r: (r / "JPEGImages/t1.jpg").unlink(), "t1.jpg: missing image file"),
        (lambda r: (r / "JPEGImages/t1.jpg").write_bytes((r / "JPEGImages/t1.jpg").read_bytes()[:200]), "t1.jpg: unreadable or truncated"),
        (lambda r: (r / "SegmentationClass/t0.png").unlink(), "t0.png: missing mask file"),
        (lambda r: save_label_png(np.zeros((5, 5), np.uint8), r / "SegmentationClass/t0.png"), "mask size 5x5 differs from image size 30x20"),
        (lambda r: save_label_png(np.full((20, 30), 7, np.uint8), r / "SegmentationClass/t0.png"), "class id(s) [7] outside 0..3"),
        (lambda r: (r / "ImageSets/Segmentation/train.txt").write_text("t0\n../x\n"), "unsafe image id '../x'"),
        (lambda r: (r / "ImageSets/Segmentation/train.txt").write_text("t0\nt1\nt0\n"), "id 't0' listed twice"),
        (lambda r: (r / "ImageSets/Segmentation/val.txt").write_text("\n"), "split 'val' lists no image"),
        (lambda r: (r / "ImageSets/Segmentation/val.txt").unlink(), "val.txt: split list not found"),
    ],
)
def test_each_problem_is_named(tmp_path, breakage, expected):
    root = make_voc(tmp_path / "voc")
    breakage(root)
    with pytest.raises(DataError) as err:
        validate_dataset(cfg(root), tmp_path / "m.json")
    assert expected in str(err.value)
    assert not (tmp_path / "m.json").exists()


def test_all_problems_in_one_message_and_skip_mode(tmp_path):
    root = make_voc(tmp_path / "voc")
    (root / "JPEGImages/t1.jpg").unlink()
    save_label_png(np.full((22, 30), 9, np.uint8), root / "SegmentationClass/t2.png")
    with pytest.raises(DataError) as err:
        validate_dataset(cfg(root), tmp_path / "m.json")
    msg = str(err.value)
    assert "2 problem(s)" in msg and "t1.jpg" in msg and "t2.png" in msg and "on_bad_image: skip" in msg
    m = validate_dataset(cfg(root, on_bad_image="skip"), tmp_path / "m.json")
    assert m.ids("train") == ["t0"]
    assert {s["image_id"] for s in json.loads((tmp_path / "m.json").read_text())["skipped"]} == {"t1", "t2"}


def test_missing_root_and_bad_spec(tmp_path):
    with pytest.raises(DataError, match="data root does not exist"):
        validate_dataset(cfg(tmp_path / "nowhere"), tmp_path / "m.json")
    with pytest.raises(ValueError, match="start with 'background'"):
        DatasetSpec(root=".", classes=("cat", "dog"))
    with pytest.raises(ValueError, match="label_file"):
        DatasetSpec(root=".", classes=CLASSES, labels="file")


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_unusual_image_modes_are_read_as_rgb(tmp_path, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (6, 7), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 255, (6, 7, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / "x.png"
    img.save(path)
    arr = read_image(path)
    assert arr.shape == (6, 7, 3) and arr.dtype == np.uint8
    if mode == "I;16":
        expected = (np.asarray(img, np.float64) / 65535 * 255 + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(arr[:, :, 0], expected)


def test_real_voc_fixture_with_masks_and_label_file(tmp_path):
    root = shared_data("voc-mini")
    voc = ("background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse "
           "motorbike person pottedplant sheep sofa train tvmonitor").split()
    spec = DatasetSpec(root=str(root), classes=tuple(voc), mask_dir="SegmentationClassAug")
    m = validate_dataset(ValidationConfig("voc-mini", spec, ("train", "val")), tmp_path / "m.json")
    assert len(m.ids("train")) == 14 and len(m.ids("val")) == 5
    from_masks = {**m.labels("train"), **m.labels("val")}
    assert from_masks["2011_000006"] == [9, 15, 18]
    spec_file = DatasetSpec(root=str(root), classes=tuple(voc), mask_dir="SegmentationClassAug",
                            labels="file", label_file="cls_labels.tsv")
    m2 = validate_dataset(ValidationConfig("voc-mini", spec_file, ("train", "val")), tmp_path / "m2.json")
    assert {**m2.labels("train"), **m2.labels("val")} == from_masks
