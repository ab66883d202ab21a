"""Tests of the embedded demo dataset generator (layout, determinism, atomicity, content)."""

from __future__ import annotations

import collections
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sance_core.constants import IGNORE_INDEX
from sance_core.data import demo
from sance_core.data.demo import DEMO_CLASSES, DemoDataConfig, generate_demo_dataset, render_preview
from sance_core.io.palette import read_label_png, voc_palette

SMALL = DemoDataConfig(seed=3, n_train=6, n_val=3)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _ids(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "ds"
    generate_demo_dataset(SMALL, root)
    return root


def test_deterministic_and_seed_dependent(small_root: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_demo_dataset(SMALL, again)
    a, b = _files(small_root), _files(again)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]

    other = tmp_path / "other"
    generate_demo_dataset(replace(SMALL, seed=4), other)
    c = _files(other)
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != c[k] for k in jpgs)


def test_voc_layout_and_masks(small_root: Path) -> None:
    train, val = _ids(small_root, "train"), _ids(small_root, "val")
    assert len(train) == SMALL.n_train and len(val) == SMALL.n_val
    assert not set(train) & set(val)
    assert all(i.startswith("demo_") and len(i) == len("demo_000001") for i in train + val)
    assert (small_root / "classes.txt").read_text().splitlines() == list(DEMO_CLASSES)
    assert len(DEMO_CLASSES) == 6 and DEMO_CLASSES[0] == "background"

    tsv = {}
    for line in (small_root / "cls_labels.tsv").read_text().splitlines():
        img_id, _, labels = line.partition("\t")
        tsv[img_id] = [int(x) for x in labels.split()]
    assert set(tsv) == set(train + val)

    sizes = set()
    pal = voc_palette().reshape(-1).tolist()
    for img_id in train + val:
        with Image.open(small_root / "JPEGImages" / f"{img_id}.jpg") as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            size = im.size
        with Image.open(small_root / "SegmentationClass" / f"{img_id}.png") as m:
            assert m.mode == "P" and m.size == size
            assert m.getpalette() == pal
        w, h = size
        assert w != h and SMALL.min_side <= min(w, h) and max(w, h) <= SMALL.max_side
        sizes.add(size)

        label = read_label_png(small_root / "SegmentationClass" / f"{img_id}.png")
        values = set(np.unique(label).tolist())
        assert values <= set(range(6)) | {IGNORE_INDEX}
        present = sorted(values - {0, IGNORE_INDEX})
        assert tsv[img_id] == present and 1 <= len(present) <= SMALL.max_objects
        # void band: every object is outlined by 255, so no two different non-void labels touch
        assert IGNORE_INDEX in values
        for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
            touch = (a != b) & (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
            assert not touch.any(), img_id
    assert len(sizes) > 1


def test_void_width_changes_only_the_band(tmp_path: Path) -> None:
    cfg = DemoDataConfig(seed=1, n_train=3, n_val=1)
    narrow, wide, none = tmp_path / "n", tmp_path / "w", tmp_path / "z"
    generate_demo_dataset(replace(cfg, void_width=2), narrow)
    generate_demo_dataset(replace(cfg, void_width=6), wide)
    generate_demo_dataset(replace(cfg, void_width=0), none)
    for img_id in _ids(narrow, "train"):
        ln = read_label_png(narrow / "SegmentationClass" / f"{img_id}.png")
        lw = read_label_png(wide / "SegmentationClass" / f"{img_id}.png")
        lz = read_label_png(none / "SegmentationClass" / f"{img_id}.png")
        assert IGNORE_INDEX not in lz
        assert (lw == IGNORE_INDEX).sum() > (ln == IGNORE_INDEX).sum() > 0
        keep = ln != IGNORE_INDEX
        assert np.array_equal(ln[keep], lz[keep])
        keep = lw != IGNORE_INDEX
        assert np.array_equal(lw[keep], lz[keep])
        # band sits on the outline: each void pixel is within void_width of a label change
        ys, xs = np.nonzero(ln == IGNORE_INDEX)
        pad = np.pad(lz, 2, mode="edge")
        for y, x in zip(ys[::7], xs[::7]):
            assert len(np.unique(pad[y : y + 5, x : x + 5])) > 1


def test_atomic_write_on_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = demo.save_label_png

    def flaky(label: np.ndarray, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected crash")
        real(label, path)

    monkeypatch.setattr(demo, "save_label_png", flaky)
    root = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="injected"):
        generate_demo_dataset(SMALL, root)
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []


def test_refuses_foreign_folder_and_replaces_old_demo(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError):
        generate_demo_dataset(SMALL, foreign)
    assert (foreign / "thesis.tex").read_text() == "precious"

    root = tmp_path / "ds"
    generate_demo_dataset(replace(SMALL, n_train=2, n_val=1), root)
    generate_demo_dataset(SMALL, root)
    assert len(_ids(root, "train")) == SMALL.n_train
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "mine"]


def test_preview(small_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "preview.png"
    render_preview(small_root, out, n=4)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > im.height > 100


def test_plan_balance_and_pairs() -> None:
    """The default config balances classes and has same- and different-class pairs."""
    plans = demo._plan_images(DemoDataConfig())
    per_class = collections.Counter(c for p in plans for c in set(p.classes))
    assert set(per_class) == {1, 2, 3, 4, 5}
    assert max(per_class.values()) <= 1.3 * min(per_class.values())
    assert all(1 <= len(p.classes) <= 3 for p in plans)
    assert sum(len(set(p.classes)) < len(p.classes) for p in plans) >= 10  # same-class pairs
    assert sum(len(set(p.classes)) >= 2 for p in plans) >= 30  # different classes together
    assert len({(p.height, p.width) for p in plans}) > 50


def test_discriminative_part_is_small() -> None:
    """Every class has a head much smaller than its shared-texture body."""
    rng = np.random.Generator(np.random.PCG64(0))
    for cls in range(1, len(DEMO_CLASSES)):
        patch = demo._render_patch(rng, cls, 90.0)
        frac = patch.head.sum() / patch.mask.sum()
        assert 0.05 < frac < 0.3, (DEMO_CLASSES[cls], frac)
        assert not (patch.head & patch.body).any()


@pytest.mark.parametrize(
    "bad",
    [dict(min_side=100, max_side=100), dict(n_train=0), dict(void_width=-1), dict(max_objects=0), dict(seed=-1)],
)
def test_config_validation(bad: dict) -> None:
    with pytest.raises(ValueError):
        DemoDataConfig(**bad)


def test_statistics_in_the_stated_ranges(tmp_path: Path) -> None:
    """VOC's statistics (module docstring) hold on a small set: 20-35 % foreground (a wider
    15-40 % for 40 images), 1-3 objects, objects a quarter to about the whole shorter side,
    a head of 5-35 % of the object, every body kind, co-occurring partners together."""
    root = tmp_path / "ds"
    generate_demo_dataset(DemoDataConfig(seed=5, n_train=32, n_val=8), root)
    stats = demo.demo_statistics(root)
    assert stats["images"] == 40 and stats["objects"] >= 40
    assert 0.15 <= stats["foreground_fraction"] <= 0.40
    assert 1.3 <= stats["objects_per_image"] <= 2.5
    assert set(stats["objects_per_image_histogram"]) <= {"1", "2", "3"}
    p10, p50, p90 = stats["extent_side"]
    assert 0.25 <= p10 and 0.5 <= p50 <= 0.85 and p90 <= 1.0
    assert stats["extent_cells"] == pytest.approx([v / 4 for v in stats["extent_px"]], abs=1e-3)
    assert 0.05 <= stats["part_fraction"][0] and stats["part_fraction"][2] <= 0.35
    assert all(v > 0 for v in stats["body_kinds"].values()) and len(stats["body_kinds"]) == 3
    assert stats["evidence_fraction"][2] == 1.0 and stats["evidence_fraction"][0] < 0.35
    cooc = np.array(stats["cooccurrence"])
    assert (cooc == cooc.T).all() and cooc.shape == (5, 5)
    # partners (lamp-robot; bird, snail, cactus) co-occur more often than the other pairs
    off = cooc - np.diag(np.diag(cooc))
    partners = off[1, 2] + off[0, 3] + off[0, 4] + off[3, 4]
    others = off.sum() / 2 - partners
    assert partners > others
    # the split statistics partition the images; the text report names every class
    tr, va = demo.demo_statistics(root, "train"), demo.demo_statistics(root, "val")
    assert tr["images"] + va["images"] == 40 and tr["objects"] + va["objects"] == stats["objects"]
    text = demo.format_statistics(stats)
    assert all(name in text for name in DEMO_CLASSES[1:]) and "stride-4 cells" in text


def test_objects_tsv_matches_masks(small_root: Path) -> None:
    """objects.tsv's visible pixels per class add up to the mask's pixels plus its void band."""
    rows = [r.split("\t") for r in (small_root / "objects.tsv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    assert header[:3] == ["id", "class", "pixels"]
    for img_id in _ids(small_root, "train"):
        label = read_label_png(small_root / "SegmentationClass" / f"{img_id}.png")
        for cls in range(1, len(DEMO_CLASSES)):
            rec = sum(int(r[2]) for r in rows if r[0] == img_id and int(r[1]) == cls)
            inside = int((label == cls).sum())
            assert inside <= rec <= inside + int((label == IGNORE_INDEX).sum())
            assert (rec > 0) == (inside > 0)


def test_cli_stats(small_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sance_core.cli import main

    assert main(["demo-data", str(small_root), "--stats", "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert f"images {SMALL.n_val}," in out and "co-occurrence" in out


def test_part_maps_match_masks_and_objects(small_root: Path) -> None:
    """Every object pixel is one part, background and void are where the mask has them, and the
    parts agree with objects.tsv (head pixels, body kind) up to the void band."""
    rows = [r.split("\t") for r in (small_root / "objects.tsv").read_text().splitlines()]
    cols, rows = rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]
    assert "body" in cols
    parts = dict(demo.demo_part_maps(SMALL, small_root))
    assert list(parts) == _ids(small_root, "train") + _ids(small_root, "val")
    codes = set(demo.PART_NAMES)
    for img_id, part in parts.items():
        label = read_label_png(small_root / "SegmentationClass" / f"{img_id}.png")
        assert part.shape == label.shape and part.dtype == np.uint8
        assert np.array_equal(part == IGNORE_INDEX, label == IGNORE_INDEX)
        assert np.array_equal(np.isin(part, [demo.PART_BACKGROUND, demo.PART_DISTRACTOR]), label == 0)
        obj = (label != 0) & (label != IGNORE_INDEX)
        assert set(np.unique(part[obj]).tolist()) <= codes
        mine = [r for r in rows if r["id"] == img_id]
        head = sum(int(r["head_pixels"]) for r in mine)
        void = int((label == IGNORE_INDEX).sum())
        assert head - void <= int((part == demo.PART_HEAD).sum()) <= head
        if all(r["body"] != "plain" for r in mine):
            assert not (part == demo.PART_PLAIN_BODY).any()
        if all(r["body"] == "plain" for r in mine):
            assert not (part == demo.PART_EVIDENCE_BODY).any()


def test_distractors_are_marked_on_the_background() -> None:
    """Some images hold distractor blobs; each is marked on the background it covers (not on objects)."""
    found = 0
    for _img_id, part in demo.demo_part_maps(replace(SMALL, n_train=12, n_val=0)):
        found += int((part == demo.PART_DISTRACTOR).sum())
    assert found > 0


def test_part_maps_refuse_other_data(small_root: Path) -> None:
    with pytest.raises(ValueError, match=r"SegmentationClass/demo_000001\.png: differs from the mask"):
        next(demo.demo_part_maps(replace(SMALL, seed=4), small_root))
    with pytest.raises(ValueError, match="demo_000010.png: not found"):
        list(demo.demo_part_maps(replace(SMALL, n_val=4), small_root))
