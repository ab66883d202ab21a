"""benchmarks/body_kind_scores.py: label maps scored per demo body kind."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import load_benchmark


def random_mask_and_label(rng, n_classes, shape, void):
    """A random mask with a share ``void`` of 255 pixels and a random label map of the same classes."""
    mask = rng.integers(0, n_classes, shape).astype(np.uint8)
    mask[rng.random(shape) < void] = 255
    return mask, rng.integers(0, n_classes, shape).astype(np.uint8)


def naive_counts(mask, label, kinds):
    out = {}
    for cls, bodies in kinds.items():
        if len(bodies) != 1:
            continue
        kind = next(iter(bodies))
        tp = obj = lab = 0
        for y in range(mask.shape[0]):
            for x in range(mask.shape[1]):
                if mask[y, x] == 255:
                    continue
                o, p = mask[y, x] == cls, label[y, x] == cls
                tp += o and p
                obj += o
                lab += p
        prev = out.get(kind, [0, 0, 0])
        out[kind] = [prev[0] + tp, prev[1] + obj, prev[2] + lab]
    return out


def test_counts_against_a_pixel_loop():
    bk = load_benchmark("body_kind_scores")
    rng = np.random.default_rng(5)
    for _ in range(5):
        mask, label = random_mask_and_label(rng, 4, (9, 11), void=0.15)
        kinds = {1: {"plain"}, 2: {"tinted"}, 3: {"plain", "patterned"}}
        got = {k: list(map(int, v)) for k, v in bk.count(mask, label, kinds).items()}
        assert got == naive_counts(mask, label, kinds)
        assert "patterned" not in got  # class 3 mixes two body kinds: left out


def test_scores_of_known_counts():
    bk = load_benchmark("body_kind_scores")
    s = bk.scores({"plain": np.array([30, 100, 60]), "tinted": np.array([0, 10, 0])})
    assert s["plain"] == pytest.approx({"recall": 0.3, "precision": 0.5, "iou": 30 / 130, "object_pixels": 100})
    assert s["tinted"]["precision"] == 0.0 and s["tinted"]["iou"] == 0.0
    assert "patterned" not in s


def write_root(root, ids, masks, rows):
    (root / "SegmentationClass").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    for i, m in zip(ids, masks):
        Image.fromarray(m).save(root / "SegmentationClass" / f"{i}.png")
    header = "id\tclass\tpixels\textent\thead_pixels\tbody\thead_strength\tbody_strength\tseam\tsplit\n"
    (root / "objects.tsv").write_text(header + "".join(f"{i}\t{c}\t1\t1\t1\t{b}\t0.5\t0\t0\t0\n" for i, c, b in rows))


def test_main_scores_png_labels(tmp_path, monkeypatch, capsys):
    bk = load_benchmark("body_kind_scores")
    m1 = np.zeros((8, 8), np.uint8)
    m1[2:6, 2:6] = 1  # 16 px of a plain-bodied class 1
    m2 = np.zeros((8, 8), np.uint8)
    m2[0:4, 0:8] = 2  # 32 px of a tinted class 2
    write_root(tmp_path / "root", ["a", "b"], [m1, m2], [("a", 1, "plain"), ("b", 2, "tinted")])
    labels = tmp_path / "labels"
    labels.mkdir()
    l1 = np.zeros((8, 8), np.uint8)
    l1[2:4, 2:6] = 1  # 8 of 16 object px, no false positives
    l2 = np.full((8, 8), 2, np.uint8)  # all 32 object px and 32 background px
    Image.fromarray(l1).save(labels / "a.png")
    Image.fromarray(l2).save(labels / "b.png")
    monkeypatch.setattr(sys, "argv", ["body_kind_scores", str(tmp_path / "root"), f"m={labels}"])
    bk.main()
    out = capsys.readouterr().out
    result = json.loads(out[: out.rindex("}") + 1])
    s = result["scores"]["m"]
    assert s["plain"]["recall"] == 0.5 and s["plain"]["precision"] == 1.0
    assert s["tinted"]["recall"] == 1.0 and s["tinted"]["precision"] == 0.5
    assert result["images"] == 2
    fp = s["background_labelled_object"]
    assert fp == {"within_6px": 32 / 80, "farther": 0.0, "background_pixels": 80}


def test_missing_objects_table_and_bad_source_are_named(tmp_path, monkeypatch):
    bk = load_benchmark("body_kind_scores")
    with pytest.raises(SystemExit, match="objects.tsv: not found"):
        bk.read_objects(str(tmp_path))
    with pytest.raises(SystemExit, match="expected NAME=FOLDER"):
        bk.parse_source("no_equals_sign")


def test_false_positives_split_by_distance():
    bk = load_benchmark("body_kind_scores")
    mask = np.zeros((1, 20), np.uint8)
    mask[0, :3] = 1  # object at x = 0..2
    mask[0, 19] = 255
    label = np.ones((1, 20), np.uint8)  # everything labelled as class 1
    label[0, 10] = 0
    bg, near, far = bk.false_positives(mask, label, near=4)
    assert bg == 16  # x = 3..18
    assert near == 4  # x = 3..6: distance 1..4
    assert far == 16 - 4 - 1  # x = 7..18 but not x = 10
    assert list(bk.false_positives(np.zeros((3, 3), np.uint8), np.ones((3, 3), np.uint8), 4)) == [9, 0, 9]


def test_part_counts_against_a_pixel_loop():
    bk = load_benchmark("body_kind_scores")
    rng = np.random.default_rng(7)
    for _ in range(5):
        mask, label = random_mask_and_label(rng, 3, (7, 9), void=0.2)
        parts = np.where(mask == 0, 0, rng.integers(1, 4, mask.shape)).astype(np.uint8)
        parts[mask == 255] = 255
        label[rng.random(mask.shape) < 0.1] = 255  # unsure: neither right nor wrong
        want = np.zeros((3, 3), np.int64)
        for y in range(mask.shape[0]):
            for x in range(mask.shape[1]):
                if mask[y, x] == 255 or parts[y, x] == 0:
                    continue
                want[parts[y, x] - 1] += [label[y, x] == mask[y, x], label[y, x] not in (mask[y, x], 255), 1]
        assert bk.part_counts(mask, label, parts).tolist() == want.tolist()


def test_evidence_label_keeps_heads_and_evidence_bodies():
    bk = load_benchmark("body_kind_scores")
    mask = np.array([[0, 2, 2, 2, 255]], np.uint8)
    parts = np.array([[0, 1, 2, 3, 255]], np.uint8)
    assert bk.evidence_label(mask, parts).tolist() == [[0, 2, 2, 0, 255]]


def test_main_with_parts_on_a_generated_demo(tmp_path, monkeypatch, capsys):
    from sance_core.data.demo import DemoDataConfig, generate_demo_dataset

    bk = load_benchmark("body_kind_scores")
    root = tmp_path / "ds"
    generate_demo_dataset(DemoDataConfig(seed=3, n_train=4, n_val=1), root)
    masks = f"gt={root / 'SegmentationClass'}"
    monkeypatch.setattr(sys, "argv", ["body_kind_scores", str(root), masks, "--parts-seed", "3"])
    bk.main()
    out = capsys.readouterr().out
    s = json.loads(out[: out.rindex("}") + 1])["scores"]
    assert s["gt"]["miou"] == 1.0 and set(s["gt"]["part_recall"].values()) <= {0.0, 1.0}
    assert s["gt"]["part_recall"]["head"] == 1.0
    ev = s["evidence"]
    assert ev["part_recall"]["head"] == 1.0 and ev["part_recall"]["plain body"] == 0.0
    assert ev["miou"] <= 1.0 and ev["background_labelled_object"]["farther"] == 0.0
    monkeypatch.setattr(sys, "argv", ["body_kind_scores", str(root), masks, "--parts-seed", "4"])
    with pytest.raises(SystemExit, match="--parts-seed 4: .*differs from the mask"):
        bk.main()
    monkeypatch.setattr(sys, "argv", ["body_kind_scores", str(root), f"evidence={root / 'SegmentationClass'}",
                                      "--parts-seed", "3"])
    with pytest.raises(SystemExit, match="'evidence' is taken"):
        bk.main()


def test_distractor_counts():
    bk = load_benchmark("body_kind_scores")
    mask = np.array([[0, 0, 0, 0, 1, 255]], np.uint8)
    parts = np.array([[4, 4, 0, 0, 1, 255]], np.uint8)
    label = np.array([[1, 0, 2, 0, 1, 1]], np.uint8)
    assert bk.distractor_counts(mask, label, parts).tolist() == [2, 1, 2, 1]


def test_error_places_of_parts_and_background_against_a_pixel_loop():
    """The five places of ERROR_PLACES, as main assembles them: part_counts' wrong column, then
    false_positives' near and far counts."""
    bk = load_benchmark("body_kind_scores")
    rng = np.random.default_rng(11)
    mask = np.zeros((9, 12), np.uint8)
    mask[2:6, 3:8] = 2
    mask[0, 0] = 255
    parts = np.where(mask == 2, rng.integers(1, 4, mask.shape), 0).astype(np.uint8)
    parts[mask == 255] = 255
    label = rng.integers(0, 3, mask.shape).astype(np.uint8)
    label[rng.random(mask.shape) < 0.2] = 255
    dist = bk.object_distance(mask)
    want = np.zeros(5, np.int64)
    for y in range(mask.shape[0]):
        for x in range(mask.shape[1]):
            if mask[y, x] == 255 or label[y, x] == 255 or label[y, x] == mask[y, x]:
                continue
            want[parts[y, x] - 1 if mask[y, x] else (3 if dist[y, x] <= 2 else 4)] += 1
    got = [*bk.part_counts(mask, label, parts)[:, 1], *bk.false_positives(mask, label, 2, dist)[1:]]
    assert [int(v) for v in got] == want.tolist()
    assert len(got) == len(bk.ERROR_PLACES)
    assert want[:3].sum() > 0 and want[3:].sum() > 0
