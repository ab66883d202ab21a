"""COCO → VOC-layout conversion: exact masks from a tiny hand-made instances file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sance_core.cli import main as sance_main
from sance_core.data.coco import (
    COCO_CLASSES, CocoConversionConfig, SplitSource, category_labels, class_mask, convert_coco,
)
from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.io.images import DataError
from sance_core.io.palette import read_label_png
from sance_core.data.validate import ValidationConfig, validate_dataset

# pycocotools (pinned) decodes masks through a NumPy API that numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 8, 10
# category ids with gaps, listed out of order: labels follow ascending ids -> cat 1: 1, cat 3: 2, cat 90: 3
CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]


def rle_of(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major run lengths starting with zeros)."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def rect(x0, y0, x1, y1):
    """Polygon of the pixel box rows y0..y1-1, columns x0..x1-1 (pycocotools' rasterisation)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def expected_masks():
    """Hand-made annotations and the class masks they must give (crowd policy 'ignore')."""
    diag = np.zeros((H, W), bool)
    diag[np.arange(H), np.arange(H)] = True  # an RLE-only shape no polygon could give
    anns_a = [
        # a large person, a small car on top of it (drawn after: smaller area)
        {"id": 1, "image_id": 11, "category_id": 1, "iscrowd": 0, "area": 30.0, "segmentation": rect(0, 0, 6, 5)},
        {"id": 2, "image_id": 11, "category_id": 3, "iscrowd": 0, "area": 4.0, "segmentation": rect(2, 1, 4, 3)},
        # a crowd of people covering the bottom rows, partly under the person
        {"id": 3, "image_id": 11, "category_id": 1, "iscrowd": 1, "area": 40.0,
         "segmentation": rle_of(np.pad(np.ones((4, W), bool), ((4, 0), (0, 0))))},
    ]
    exp_a = np.zeros((H, W), np.uint8)
    exp_a[4:, :] = 255
    exp_a[0:5, 0:6] = 1
    exp_a[1:3, 2:4] = 2
    anns_b = [
        {"id": 4, "image_id": 12, "category_id": 90, "iscrowd": 0, "area": float(diag.sum()), "segmentation": rle_of(diag)},
        {"id": 5, "image_id": 12, "category_id": 3, "iscrowd": 0, "area": 6.0, "segmentation": rect(7, 5, 10, 7)},
    ]
    exp_b = np.zeros((H, W), np.uint8)
    exp_b[diag] = 3
    exp_b[5:7, 7:10] = 2
    return anns_a, exp_a, anns_b, exp_b


def write_coco(root: Path) -> Path:
    """A COCO-layout folder: annotations/instances_{train,val}2014.json and the image folders."""
    anns_a, _, anns_b, _ = expected_masks()
    rng = np.random.default_rng(0)
    splits = {
        "train": ([(11, "COCO_train2014_000000000011.jpg"), (13, "COCO_train2014_000000000013.jpg")], anns_a),
        "val": ([(12, "COCO_val2014_000000000012.jpg")], anns_b),
    }
    (root / "annotations").mkdir(parents=True)
    for split, (images, anns) in splits.items():
        folder = root / f"{split}2014"
        folder.mkdir()
        for _, name in images:
            Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(folder / name)
        data = {"images": [{"id": i, "file_name": n, "height": H, "width": W} for i, n in images],
                "annotations": anns, "categories": CATEGORIES}
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(data))
    return root


def test_category_order_follows_ids():
    names, cat_to_label = category_labels(CATEGORIES)
    assert names == ["person", "car", "toothbrush"]
    assert cat_to_label == {1: 1, 3: 2, 90: 3}


def test_class_mask_layers_crowd_and_instances():
    anns_a, exp_a, anns_b, exp_b = expected_masks()
    _, cat_to_label = category_labels(CATEGORIES)
    np.testing.assert_array_equal(class_mask(H, W, anns_a, cat_to_label), exp_a)
    np.testing.assert_array_equal(class_mask(H, W, anns_b, cat_to_label), exp_b)
    # the order of the annotation list does not matter (area decides)
    np.testing.assert_array_equal(class_mask(H, W, anns_a[::-1], cat_to_label), exp_a)
    as_class = class_mask(H, W, anns_a, cat_to_label, crowd="class")
    assert set(np.unique(as_class[5:])) == {1} and as_class[2, 2] == 2
    as_bg = class_mask(H, W, anns_a, cat_to_label, crowd="background")
    assert (as_bg[5:] == 0).all() and (as_bg[0:5, 0:6] != 0).all()


def test_class_mask_errors_name_the_problem():
    _, cat_to_label = category_labels(CATEGORIES)
    with pytest.raises(DataError, match="unknown category id 7"):
        class_mask(H, W, [{"id": 9, "category_id": 7, "segmentation": rect(0, 0, 2, 2)}], cat_to_label)
    with pytest.raises(DataError, match="size"):
        class_mask(H, W, [{"id": 9, "category_id": 1, "segmentation": rle_of(np.ones((3, 3), bool))}], cat_to_label)
    with pytest.raises(ValueError, match="crowd must be"):
        CocoConversionConfig(crowd="maybe")


def test_cli_converts_a_coco_tree_into_a_valid_voc_layout(tmp_path, capsys):
    coco = write_coco(tmp_path / "coco")
    out = tmp_path / "voc"
    assert sance_main(["coco-masks", str(coco), str(out), "--year", "2014"]) == 0
    _, exp_a, _, exp_b = expected_masks()
    np.testing.assert_array_equal(read_label_png(out / "SegmentationClass/COCO_train2014_000000000011.png"), exp_a)
    np.testing.assert_array_equal(read_label_png(out / "SegmentationClass/COCO_val2014_000000000012.png"), exp_b)
    # image 13 has no annotation: left out of the lists, no mask written
    assert (out / "ImageSets/Segmentation/train.txt").read_text() == "COCO_train2014_000000000011\n"
    assert (out / "ImageSets/Segmentation/val.txt").read_text() == "COCO_val2014_000000000012\n"
    assert not (out / "SegmentationClass/COCO_train2014_000000000013.png").exists()
    assert (out / "JPEGImages/COCO_val2014_000000000012.jpg").is_symlink()
    assert (out / "classes.txt").read_text().split("\n")[:4] == ["background", "person", "car", "toothbrush"]
    # image-level labels include crowd-only classes; masks keep crowd as 255
    assert (out / "cls_labels.tsv").read_text() == "COCO_train2014_000000000011\t1 2\nCOCO_val2014_000000000012\t2 3\n"
    summary = json.loads((out / "conversion.json").read_text())
    assert summary["splits"]["train"] == {"images": 1, "skipped_unlabeled": 1, "written": 1, "kept": 0}

    # the workflow's own validation accepts the result with labels read from the file
    spec = DatasetSpec(root=str(out), classes=("background", "person", "car", "toothbrush"), mask_dir="SegmentationClass",
                       split_dir="ImageSets/Segmentation", labels="file", label_file="cls_labels.tsv")
    validate_dataset(ValidationConfig(name="coco", dataset=spec, splits=("train", "val")), tmp_path / "m.json")
    manifest = Manifest.load(tmp_path / "m.json")
    assert manifest.labels("val") == {"COCO_val2014_000000000012": [2, 3]}

    # rerun resumes: existing masks are kept, not rewritten
    before = (out / "SegmentationClass/COCO_val2014_000000000012.png").stat().st_mtime_ns
    summary = convert_coco([SplitSource("val", coco / "annotations/instances_val2014.json", coco / "val2014")], out)
    assert summary.splits["val"]["kept"] == 1
    assert (out / "SegmentationClass/COCO_val2014_000000000012.png").stat().st_mtime_ns == before


def test_parallel_conversion_equals_serial(tmp_path):
    coco = write_coco(tmp_path / "coco")
    sources = [SplitSource("train", coco / "annotations/instances_train2014.json", coco / "train2014")]
    convert_coco(sources, tmp_path / "a", CocoConversionConfig(images="copy"))
    convert_coco(sources, tmp_path / "b", CocoConversionConfig(images="copy", workers=2))
    name = "SegmentationClass/COCO_train2014_000000000011.png"
    np.testing.assert_array_equal(read_label_png(tmp_path / "a" / name), read_label_png(tmp_path / "b" / name))
    assert not (tmp_path / "a/JPEGImages/COCO_train2014_000000000011.jpg").is_symlink()


def test_missing_inputs_fail_with_the_file_name(tmp_path):
    coco = write_coco(tmp_path / "coco")
    (coco / "val2014/COCO_val2014_000000000012.jpg").unlink()
    with pytest.raises(DataError, match="COCO_val2014_000000000012.jpg"):
        convert_coco([SplitSource("val", coco / "annotations/instances_val2014.json", coco / "val2014")], tmp_path / "o")
    assert sance_main(["coco-masks", str(tmp_path / "nowhere"), str(tmp_path / "o2")]) == 2


def test_coco_classes_are_the_80_categories():
    assert len(COCO_CLASSES) == 80 and len(set(COCO_CLASSES)) == 80
    assert COCO_CLASSES[0] == "person" and COCO_CLASSES[-1] == "toothbrush"
