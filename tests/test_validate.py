"""Dataset validation: a clean dataset passes; each kind of bad input is named with its file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_data
from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.data.validate import ValidationConfig, validate_dataset
from sance_core.io.images import DataError, read_image
from sance_core.io.palette import save_label_png

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
    entry = dict(loaded.entries("train")[1])
    assert len(entry.pop("files_hash")) == 32  # content hash of the image and mask files
    assert entry == {"id": "t1", "height": 21, "width": 30, "labels": [2], "has_mask": True}
    np.testing.assert_array_equal(loaded.label_vector("train", "t2"), [0, 0, 1])
    assert m.skipped == []


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda r: (r / "JPEGImages/t1.jpg").unlink(), "t1.jpg: missing image file"),
        (lambda r: (r / "JPEGImages/t1.jpg").write_bytes((r / "JPEGImages/t1.jpg").read_bytes()[:200]),
         "t1.jpg: unreadable or truncated"),
        (lambda r: (r / "SegmentationClass/t0.png").unlink(), "t0.png: missing mask file"),
        (lambda r: save_label_png(np.zeros((5, 5), np.uint8), r / "SegmentationClass/t0.png"),
         "mask size 5x5 differs from image size 30x20"),
        (lambda r: save_label_png(np.full((20, 30), 7, np.uint8), r / "SegmentationClass/t0.png"),
         "class id(s) [7] outside 0..3"),
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


# ----------------------------------------------------------------- issue: scores inflated or corrupted


def test_overlap_duplicate_and_contradictory_tags_are_named_in_one_message(tmp_path):
    root = make_voc(tmp_path / "voc")
    (root / "ImageSets/Segmentation/val.txt").write_text("v0\nv1\nt2\n")  # t2 is also a training image
    # t0's mask holds class 1 (a); the file says b; t1 listed twice with different tags
    (root / "labels.tsv").write_text("t0\tb\nt1\tb\nt1\ta\nt2\tc\nv0\ta\nv1\tb\n")
    with pytest.raises(DataError) as err:
        validate_dataset(cfg(root, spec={"labels": "file", "label_file": "labels.tsv"}), tmp_path / "m.json")
    msg = str(err.value)
    assert "labels.tsv:3: id 't1' listed again (first on line 2)" in msg
    assert "tags [b] contradict the mask" in msg and "t0.png, which holds [a]" in msg
    assert "1 id(s) in both split 'train' and split 'val'" in msg and "'t2'" in msg
    assert not (tmp_path / "m.json").exists()


def test_duplicate_tags_alone_are_refused_when_read(tmp_path):
    from sance_core.data.dataset import read_label_file

    path = tmp_path / "labels.tsv"
    path.write_text("x\ta\nx\tb\n")
    with pytest.raises(DataError, match=r"labels.tsv:2: id 'x' listed again \(first on line 1\)"):
        read_label_file(path, CLASSES)


def test_a_tags_table_without_split_column_may_reuse_train_as_val(tmp_path):
    root = make_voc(tmp_path / "voc", n_train=3, n_val=0)
    (root / "tags.csv").write_text("image,tags\nt0,a\nt1,b\nt2,c\n")
    m = validate_dataset(cfg(root, spec={"format": "tags_csv", "tags_file": "tags.csv", "mask_dir": None}),
                         tmp_path / "m.json")
    assert m.ids("train") == m.ids("val") == ["t0", "t1", "t2"]


def test_classes_absent_from_the_data_are_a_manifest_warning(tmp_path, caplog):
    root = make_voc(tmp_path / "voc", n_train=2, n_val=1)  # classes a, b in train; a in val; c nowhere
    m = validate_dataset(cfg(root), tmp_path / "m.json")
    saved = Manifest.load(tmp_path / "m.json").warnings
    assert saved == m.warnings and len(saved) == 2
    assert saved[0].startswith("split 'train': class(es) c of data.classes occur in no image")
    assert saved[1].startswith("split 'val': class(es) b, c of data.classes")
    assert "occur in no image" in caplog.text


def _exif_rotated_jpeg(path: Path, stored_hw: tuple[int, int], orientation: int = 6) -> np.ndarray:
    """A JPEG stored as ``stored_hw`` with an EXIF orientation tag; returns the stored pixels."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (*stored_hw, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif, quality=95)
    return pixels


def test_exif_orientation_is_applied_when_reading_and_checked_against_the_mask(tmp_path):
    from sance_core.io.images import image_size

    root = make_voc(tmp_path / "voc")
    _exif_rotated_jpeg(root / "JPEGImages/t0.jpg", (30, 20))  # stored 20 wide, 30 high; shown 30 wide, 20 high
    assert read_image(root / "JPEGImages/t0.jpg").shape == (20, 30, 3) and image_size(root / "JPEGImages/t0.jpg") == (20, 30)
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 2:8] = 1
    save_label_png(mask, root / "SegmentationClass/t0.png")  # drawn on the image as shown: accepted
    m = validate_dataset(cfg(root), tmp_path / "m.json")
    assert (m.entries("train")[0]["height"], m.entries("train")[0]["width"]) == (20, 30)
    save_label_png(mask.T.copy(), root / "SegmentationClass/t0.png")  # drawn on the stored pixels: refused, with why
    with pytest.raises(DataError, match=r"t0.png: mask size 20x30 differs from image size 30x20 \(width and height "
                                        r"swapped: images are read turned by their EXIF orientation tag"):
        validate_dataset(cfg(root), tmp_path / "m.json")
