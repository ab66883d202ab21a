"""Oracle seeds from the GT masks: core growing, leak band, distractor, unknown band, the stage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sance_core.data.dataset import Manifest
from sance_core.io.palette import save_label_png
from sance_core.io.store import ArtifactReader
from sance_core.ops.oracle_seeds import (
    OracleConfig,
    distractor_disk,
    image_rng,
    leak_band,
    object_core,
    oracle_seed,
)
from sance_core.stages import run_stage


def two_object_mask(h=30, w=40):
    """Class 1: an ellipse; class 2: an L-shaped object touching the right image border; void rim on 1."""
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), np.uint8)
    ellipse = ((yy - 12) / 8.0) ** 2 + ((xx - 11) / 7.0) ** 2
    mask[ellipse <= 1.0] = 1
    mask[(ellipse > 1.0) & (ellipse <= 1.3)] = 255
    mask[18:28, 26:40] = 2
    mask[10:18, 34:40] = 2
    return mask


def naive_core(mask, core):
    """Per object (8-connected, one class), pixels sorted by brute-force distance to the nearest
    pixel outside the object's class (the frame outside the image counts), then raster order."""
    h, w = mask.shape
    padded = np.pad(mask.astype(np.int64), 1, constant_values=0)
    out = np.zeros((h, w), bool)
    seen = np.zeros((h, w), bool)
    for y0 in range(h):
        for x0 in range(w):
            c = int(mask[y0, x0])
            if c in (0, 255) or seen[y0, x0]:
                continue
            stack, pixels = [(y0, x0)], []
            seen[y0, x0] = True
            while stack:  # flood fill, 8-connected
                y, x = stack.pop()
                pixels.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        v, u = y + dy, x + dx
                        if 0 <= v < h and 0 <= u < w and not seen[v, u] and mask[v, u] == c:
                            seen[v, u] = True
                            stack.append((v, u))
            oy, ox = np.nonzero(padded != c)
            keyed = []
            for y, x in pixels:
                d2 = ((oy - (y + 1)) ** 2 + (ox - (x + 1)) ** 2).min()
                keyed.append((-math.sqrt(d2), y * w + x, y, x))
            keyed.sort()
            for _, _, y, x in keyed[: math.ceil(core * len(pixels) - 1e-9)]:
                out[y, x] = True
    return out


@pytest.mark.parametrize("core", [1.0, 0.7, 0.3, 0.05])
def test_core_matches_the_naive_reference(core):
    mask = two_object_mask()
    got = object_core(mask, core)
    assert np.array_equal(got, naive_core(mask, core))
    if core == 1.0:
        assert np.array_equal(got, (mask != 0) & (mask != 255))


def test_core_is_grown_from_the_interior():
    mask = np.zeros((21, 21), np.uint8)
    mask[3:18, 3:18] = 1
    core = object_core(mask, 0.1)
    ys, xs = np.nonzero(core)
    assert core.sum() == math.ceil(0.1 * 225)
    assert abs(ys.mean() - 10) < 1 and abs(xs.mean() - 10) < 1  # centred on the square's middle
    assert not core[3].any() and not core[:, 3].any()


def naive_leak(mask, leak):
    """Per background/void pixel: the classes of the object pixels at the smallest distance, if <= leak."""
    h, w = mask.shape
    oy, ox = np.nonzero((mask != 0) & (mask != 255))
    allowed = {}
    for y in range(h):
        for x in range(w):
            if mask[y, x] not in (0, 255):
                continue
            d2 = (oy - y) ** 2 + (ox - x) ** 2
            if math.sqrt(d2.min()) <= leak:
                allowed[(y, x)] = set(mask[oy[d2 == d2.min()], ox[d2 == d2.min()]].tolist())
    return allowed


@pytest.mark.parametrize("leak", [0, 1, 3])
def test_leak_band_matches_the_naive_reference(leak):
    mask = two_object_mask()
    got = leak_band(mask, leak)
    allowed = naive_leak(mask, leak)
    band = {(int(y), int(x)) for y, x in zip(*np.nonzero(got))}
    assert band == set(allowed)
    for (y, x), classes in allowed.items():
        assert got[y, x] in classes
    assert not got[(mask != 0) & (mask != 255)].any()


def test_distractor_is_background_far_from_the_objects():
    mask = two_object_mask()
    disk = distractor_disk(mask)
    assert disk.any() and (mask[disk] == 0).all()
    largest = max(int((mask == 1).sum()), int((mask == 2).sum()))
    assert disk.sum() <= math.pi * (math.sqrt(largest) / 2 + 1) ** 2
    assert not distractor_disk(np.zeros((8, 8), np.uint8)).any()


def test_clean_oracle_without_unknown_band_is_the_mask():
    mask = two_object_mask()
    seed = oracle_seed(mask, [1, 2], OracleConfig(core=1.0, leak=0, false_rate=0.0, unknown=0), image_rng(0, "a"))
    assert np.array_equal(seed, mask)


def test_unknown_band_separates_foreground_and_background():
    mask = two_object_mask()
    seed = oracle_seed(mask, [1, 2], OracleConfig(core=0.5, leak=0, false_rate=0.0, unknown=2), image_rng(0, "a"))
    fg = np.isin(seed, [1, 2])
    assert np.array_equal(fg, object_core(mask, 0.5))
    assert np.array_equal(seed[fg], mask[fg])
    ys, xs = np.nonzero(fg)
    for y, x in zip(*np.nonzero(seed == 0)):  # every background seed is more than 2 px from the foreground
        assert ((ys - y) ** 2 + (xs - x) ** 2).min() > 4
    assert ((seed == 0) & (mask == 1)).any()  # the partial core leaves object pixels as background


def test_false_rate_is_deterministic_and_labels_background():
    mask = two_object_mask()
    cfg = OracleConfig(core=1.0, leak=0, false_rate=1.0, unknown=0)
    a = oracle_seed(mask, [1, 2], cfg, image_rng(3, "img"))
    b = oracle_seed(mask, [1, 2], cfg, image_rng(3, "img"))
    assert np.array_equal(a, b)
    wrong = (a != mask) & (mask != 255)
    assert wrong.any() and (mask[wrong] == 0).all() and np.isin(a[wrong], [1, 2]).all()
    none = oracle_seed(mask, [1, 2], OracleConfig(false_rate=0.0, unknown=0), image_rng(3, "img"))
    assert np.array_equal(none, mask)
    hit = [(oracle_seed(mask, [1, 2], OracleConfig(false_rate=0.3, unknown=0), image_rng(0, f"i{k}")) != mask).any()
           for k in range(200)]
    assert 0.2 < np.mean(hit) < 0.4  # the fraction of images with a distractor follows false_rate


@pytest.mark.parametrize("bad", [{"core": 0.0}, {"core": 1.5}, {"leak": -1}, {"false_rate": 2.0}, {"unknown": -3}])
def test_bad_values_name_the_key(bad):
    with pytest.raises(ValueError, match=f"seeds.oracle.{next(iter(bad))}"):
        OracleConfig(**bad)


def test_stage_writes_seeds_every_later_stage_reads(tmp_path):
    classes = ["background", "a", "b"]
    root = tmp_path / "data"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    from PIL import Image
    ids = ["x1", "x2"]
    for k, image_id in enumerate(ids):
        mask = two_object_mask() if k == 0 else np.where(two_object_mask() == 2, 0, two_object_mask()).astype(np.uint8)
        Image.fromarray(np.full(mask.shape + (3,), 100, np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        save_label_png(mask, root / "SegmentationClass" / f"{image_id}.png")
    manifest = Manifest("t", str(root), classes, {"train": [
        {"id": "x1", "labels": [1, 2], "size": [30, 40]}, {"id": "x2", "labels": [1], "size": [30, 40]}]})
    manifest.save(tmp_path / "manifest.json")
    (tmp_path / "shard.txt").write_text("\n".join(ids) + "\n")
    params = {"dataset": {"root": str(root), "classes": classes}, "source": "oracle",
              "oracle": {"core": 0.5, "leak": 1, "false_rate": 0.0, "unknown": 2}, "split": "train", "seed": 0}
    out = tmp_path / "seeds.h5"
    n = run_stage("make_seeds", params, {"shard": str(tmp_path / "shard.txt"),
                                         "manifest": str(tmp_path / "manifest.json")}, {"seeds": str(out)})
    assert n == 2
    reader = ArtifactReader(out, expect_stage="seeds")
    assert reader.ids() == ids
    seed = reader.read("x1", "seed")
    expect = oracle_seed(two_object_mask(), [1, 2], OracleConfig(0.5, 1, 0.0, 2), image_rng(0, "x1"))
    assert np.array_equal(seed, expect)
    assert list(reader.image_attrs("x2")["class_keys"]) == [1]
    with pytest.raises(ValueError, match="seeds.source"):
        run_stage("make_seeds", {**params, "source": "gt"}, {}, {"seeds": str(tmp_path / "no.h5")})
