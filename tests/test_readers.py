"""Real-format readers: VOC XML tags, SBD .mat masks/boundaries, a tags CSV; and their use in validation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from sance_core.data.dataset import DatasetSpec
from sance_core.io.images import DataError
from sance_core.io.palette import read_label_png, save_label_png
from sance_core.data.readers import (
    convert_sbd_masks,
    read_sbd_cls,
    read_sbd_inst,
    read_tags_csv,
    read_voc_objects,
    read_voc_xml_labels,
    split_tags,
)
from sance_core.data.validate import ValidationConfig, validate_dataset

from conftest import shared_data

VOC = tuple(("background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse "
             "motorbike person pottedplant sheep sofa train tvmonitor").split())
SBD_IDS = ("2008_000051", "2008_000195")


def voc_xml(objects: list[tuple[str, int]], owner: str = "person") -> str:
    """A VOC 2012 annotation in the official layout (owner name, parts, difficult flags)."""
    body = "".join(
        f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated><difficult>{diff}</difficult>"
        f"<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox>"
        f"<part><name>head</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></part>"
        f"</object>"
        for name, diff in objects
    )
    return (f"<annotation><folder>VOC2012</folder><filename>x.jpg</filename>"
            f"<source><database>The VOC2007 Database</database></source>"
            f"<owner><flickrid>someone</flickrid><name>{owner}</name></owner>"
            f"<size><width>500</width><height>375</height><depth>3</depth></size><segmented>1</segmented>"
            f"{body}</annotation>")


def cls_labels_tsv() -> dict[str, list[int]]:
    text = (shared_data("voc-mini") / "cls_labels.tsv").read_text()
    return {line.split("\t")[0]: [int(v) for v in line.split("\t")[1].split()] for line in text.splitlines() if line}


# ---------------------------------------------------------------- VOC XML


def test_voc_xml_labels_difficult_counts_parts_and_owner_ignored(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(voc_xml([("dog", 0), ("chair", 1), ("dog", 0)], owner="cat"))
    objs = read_voc_objects(path)
    assert [o.name for o in objs] == ["dog", "chair", "dog"] and objs[1].difficult and objs[0].bbox == (1, 2, 30, 40)
    # difficult 'chair' counts (IRNet's cls_labels); the owner's name 'cat' and the part 'head' do not
    assert read_voc_xml_labels(path, VOC) == [9, 12]
    assert read_voc_xml_labels(path, VOC, include_difficult=False) == [12]


def test_voc_xml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text(voc_xml([("unicorn", 0)]))
    with pytest.raises(DataError, match=r"bad.xml: object class 'unicorn' is not in data.classes"):
        read_voc_xml_labels(bad, VOC)
    broken = tmp_path / "broken.xml"
    broken.write_text("<annotation><object>")
    with pytest.raises(DataError, match="broken.xml: not a readable XML"):
        read_voc_xml_labels(broken, VOC)
    with pytest.raises(DataError, match="annotation file not found"):
        read_voc_xml_labels(tmp_path / "none.xml", VOC)


def test_validate_with_xml_labels_on_real_fixture(tmp_path):
    """voc-mini read in place; XML files written from its reference labels must give the mask labels."""
    root = shared_data("voc-mini")
    reference = cls_labels_tsv()
    ann = tmp_path / "Annotations"
    ann.mkdir()
    for image_id, ids in reference.items():
        (ann / f"{image_id}.xml").write_text(voc_xml([(VOC[c], int(k == 0)) for k, c in enumerate(ids)]))
    spec = DatasetSpec(root=str(root), classes=VOC, mask_dir="SegmentationClassAug", labels="xml",
                       annotation_dir=str(ann))  # absolute: read beside the fixture, not copied into it
    m = validate_dataset(ValidationConfig("voc-mini", spec, ("train", "val")), tmp_path / "m.json")
    from_masks = {**m.labels("train"), **m.labels("val")}
    assert from_masks == reference
    (ann / "2009_000573.xml").unlink()
    with pytest.raises(DataError, match=r"2009_000573.xml: annotation file not found"):
        validate_dataset(ValidationConfig("voc-mini", spec, ("train", "val")), tmp_path / "m2.json")


# ---------------------------------------------------------------- SBD


@pytest.mark.parametrize("image_id", SBD_IDS)
def test_sbd_cls_mask_equals_segmentation_class_aug(image_id):
    cls = read_sbd_cls(shared_data("edge-bench", "SBD_bench", "datadir", "cls", f"{image_id}.mat"))
    aug = read_label_png(shared_data("voc-mini", "SegmentationClassAug", f"{image_id}.png"))
    assert cls.segmentation.dtype == np.uint8 and cls.segmentation.shape == aug.shape
    np.testing.assert_array_equal(cls.segmentation, aug)
    assert cls.categories == cls_labels_tsv()[image_id] == [int(v) for v in np.unique(aug) if v]
    # boundaries: one sparse map per VOC class; present classes have some, absent ones none
    assert len(cls.class_boundaries) == 20
    for c in range(1, 21):
        assert cls.boundary(c).any() == (c in cls.categories)
    edge = cls.boundary_map()
    assert edge.dtype == bool and edge.shape == aug.shape and edge.any()
    # the class-agnostic map is the union of the class maps and lies on label changes (within 1 px)
    np.testing.assert_array_equal(edge, np.logical_or.reduce([cls.boundary(c) for c in cls.categories]))
    seg = cls.segmentation.astype(int)
    change = np.zeros(seg.shape, bool)
    change[:-1] |= seg[:-1] != seg[1:]
    change[:, :-1] |= seg[:, :-1] != seg[:, 1:]
    near = ndimage.binary_dilation(change, iterations=2)
    inner = np.zeros_like(edge)
    inner[2:-2, 2:-2] = True  # SBD also marks object boundaries at the image border
    assert (edge & near)[inner].sum() / edge[inner].sum() > 0.95


@pytest.mark.parametrize("image_id", SBD_IDS)
def test_sbd_inst_class_mask_matches_cls(image_id):
    inst = read_sbd_inst(shared_data("edge-bench", "SBD_bench", "datadir", "inst", f"{image_id}.mat"))
    cls = read_sbd_cls(shared_data("edge-bench", "SBD_bench", "datadir", "cls", f"{image_id}.mat"))
    assert inst.segmentation.max() == len(inst.categories) >= len(cls.categories)
    np.testing.assert_array_equal(inst.class_mask(), cls.segmentation)
    assert inst.boundary_map().any()


def test_convert_sbd_masks_writes_voc_pngs(tmp_path):
    cls_dir = shared_data("edge-bench", "SBD_bench", "datadir", "cls")
    written = convert_sbd_masks(cls_dir, tmp_path / "SegmentationClassAug", SBD_IDS)
    for path, image_id in zip(written, SBD_IDS):
        with Image.open(path) as img:
            assert img.mode == "P"
        np.testing.assert_array_equal(read_label_png(path),
                                      read_label_png(shared_data("voc-mini", "SegmentationClassAug", f"{image_id}.png")))
    with pytest.raises(DataError, match="SBD annotation file not found"):
        convert_sbd_masks(cls_dir, tmp_path / "x", ["2000_000000"])


# ---------------------------------------------------------------- tags CSV


@pytest.mark.parametrize("cell, tags", [
    ("cat dog", ["cat", "dog"]),
    ("cat;dog", ["cat", "dog"]),
    ("potted plant, person", ["potted plant", "person"]),
    ("  ", []),
])
def test_split_tags(cell, tags):
    assert split_tags(cell) == tags


def test_tags_csv_parsing_variants(tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text('image,tags,split\na.jpg,"cat,dog",train\nb,Person;cat,train\nc.jpg,,val\nd.jpg,8 12,val\n')
    table = read_tags_csv(path, VOC, ".jpg", "train", "val")
    assert table.splits == {"train": ["a", "b"], "val": ["c", "d"]}
    assert table.labels == {"a": [8, 12], "b": [8, 15], "c": [], "d": [8, 12]}
    tsv = tmp_path / "tags.tsv"
    tsv.write_text("image\ttags\nx.jpg\tcow sheep\ny.jpg\tcow\n")
    table = read_tags_csv(tsv, VOC, ".jpg", "train", "val")
    assert table.splits == {"train": ["x", "y"], "val": ["x", "y"]} and not table.has_split_column
    assert table.labels["x"] == [10, 17]


def test_tags_csv_problems_are_all_named(tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text("image,tags\na.jpg,cat\nb.png,dog\nc.jpg,unicorn\na.jpg,dog\n../e.jpg,cat\nf.jpg,background\n")
    with pytest.raises(DataError) as err:
        read_tags_csv(path, VOC, ".jpg", "train", "val")
    msg = str(err.value)
    assert "5 problem(s)" in msg
    for expected in ("tags.csv:3: image 'b.png' has extension .png", "tags.csv:4: unknown class 'unicorn'",
                     "tags.csv:5: image 'a' listed twice", "unsafe image id '../e'",
                     "tags.csv:7: class 'background' is not a foreground class"):
        assert expected in msg
    (tmp_path / "h.csv").write_text("file,labels\na.jpg,cat\n")
    with pytest.raises(DataError, match="lacks the column 'image'"):
        read_tags_csv(tmp_path / "h.csv", VOC, ".jpg", "train", "val")
    with pytest.raises(DataError, match="tags file not found"):
        read_tags_csv(tmp_path / "none.csv", VOC, ".jpg", "train", "val")


def test_validate_tags_csv_on_real_images_with_and_without_masks(tmp_path):
    """voc-mini's images in place, tags from a CSV with class names: labels equal the mask labels."""
    root = shared_data("voc-mini")
    reference = cls_labels_tsv()
    val = set((root / "ImageSets/Segmentation/val.txt").read_text().split())
    rows = [f'{i}.jpg,"{",".join(VOC[c] for c in ids)}",{"val" if i in val else "train"}' for i, ids in reference.items()]
    csv_path = tmp_path / "tags.csv"
    csv_path.write_text("image,tags,split\n" + "\n".join(rows) + "\n")
    spec = DatasetSpec(root=str(root), classes=VOC, format="tags_csv", tags_file=str(csv_path), mask_dir=None)
    m = validate_dataset(ValidationConfig("tags", spec, ("train", "val")), tmp_path / "m.json")
    assert set(m.ids("val")) == val and len(m.ids("train")) == 14
    assert {**m.labels("train"), **m.labels("val")} == reference
    assert not any(e["has_mask"] for e in m.entries("train"))
    with_masks = DatasetSpec(root=str(root), classes=VOC, format="tags_csv", tags_file=str(csv_path),
                             mask_dir="SegmentationClassAug")
    m2 = validate_dataset(ValidationConfig("tags", with_masks, ("train", "val")), tmp_path / "m2.json")
    assert all(e["has_mask"] for e in m2.entries("train"))


def test_validate_tags_csv_images_folder_partial_masks(tmp_path):
    root = tmp_path / "photos"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for name in ("p1", "p2", "p3"):
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
    save_label_png(np.ones((12, 16), np.uint8), root / "masks" / "p1.png")
    (root / "tags.csv").write_text("image,tags\np1.png,a\np2.png,a b\np3.png,\n")
    spec = DatasetSpec(root=str(root), classes=("background", "a", "b"), format="tags_csv", tags_file="tags.csv",
                       image_dir="images", image_ext=".png", mask_dir="masks")
    m = validate_dataset(ValidationConfig("photos", spec, ("train", "val")), tmp_path / "m.json")
    assert m.ids("train") == m.ids("val") == ["p1", "p2", "p3"]
    assert m.labels("train") == {"p1": [1], "p2": [1, 2], "p3": []}
    assert [e["has_mask"] for e in m.entries("train")] == [True, False, False]
    with pytest.raises(ValueError, match="tags_file is not set"):
        DatasetSpec(root=str(root), classes=("background", "a"), format="tags_csv")
    with pytest.raises(ValueError, match="data.format must be one of"):
        DatasetSpec(root=str(root), classes=("background", "a"), format="coco")
