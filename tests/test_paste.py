"""The paste augmentation: rectangle sampling on the map grid, patch windows, what labels do."""

from __future__ import annotations

import numpy as np
import pytest

from sance_core.ops.paste import PasteConfig, Rect, paste_patch, sample_patch, sample_rect, sample_rect_size


def test_rect_sizes_are_grid_aligned_and_inside_the_crop():
    cfg = PasteConfig(rect_scale=(0.3, 0.9), max_aspect=2.0, align=4)
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = sample_rect_size(rng, 64, cfg)
        assert h % 4 == 0 and w % 4 == 0 and 4 <= h <= 64 and 4 <= w <= 64
        rect = sample_rect(rng, 64, (h, w), 4)
        assert rect.y % 4 == 0 and rect.x % 4 == 0
        assert rect.y + rect.h <= 64 and rect.x + rect.w <= 64
        assert rect.scaled(4) == Rect(rect.y // 4, rect.x // 4, h // 4, w // 4)


def test_patch_keeps_the_rectangle_aspect_and_stays_in_the_image():
    rng = np.random.default_rng(1)
    for _ in range(100):
        p = sample_patch(rng, (90, 120), (24, 48), (0.5, 1.0))
        assert 0 <= p.y and p.y + p.h <= 90 and 0 <= p.x and p.x + p.w <= 120
        if p.w < 120:  # not clipped: aspect of the rectangle (2:1)
            assert abs(p.w / p.h - 2.0) < 0.1
    whole = sample_patch(rng, (40, 80), (8, 16), (1.0, 1.0))
    assert whole == Rect(0, 0, 40, 80)


def test_paste_puts_the_resized_patch_in_the_rectangle_and_handles_labels():
    crop = np.zeros((16, 16, 3), np.uint8)
    seeds = np.full((16, 16), 3, np.uint8)
    raw = np.zeros((8, 8, 3), np.uint8)
    raw[:, :4] = 200  # left half bright
    raw_seeds = np.zeros((8, 8), np.uint8)
    raw_seeds[:, 4:] = 1
    rect = Rect(4, 8, 8, 8)
    out, (ignored, pasted) = paste_patch(crop, [seeds, seeds], raw, [raw_seeds, raw_seeds], Rect(0, 0, 8, 8),
                                         rect, ["ignore", "paste"])
    # the image: patch copied (same size here) into the rectangle only
    assert (out[4:12, 8:12] == 200).all() and (out[4:12, 12:16] == 0).all()
    outside = np.ones((16, 16), bool)
    outside[4:12, 8:16] = False
    assert (out[outside] == 0).all() and (crop == 0).all()  # input untouched
    # 'ignore': 255 inside, untouched outside; 'paste': the raw seeds inside
    assert (ignored[4:12, 8:16] == 255).all() and (ignored[outside] == 3).all()
    assert (pasted[4:12, 8:12] == 0).all() and (pasted[4:12, 12:16] == 1).all() and (pasted[outside] == 3).all()


def test_paste_resizes_labels_with_nearest_neighbour():
    raw = np.zeros((20, 20, 3), np.uint8)
    lbl = np.zeros((20, 20), np.uint8)
    lbl[10:, :] = 7
    _, (out,) = paste_patch(np.zeros((12, 12, 3), np.uint8), [np.zeros((12, 12), np.uint8)], raw, [lbl],
                            Rect(0, 0, 20, 20), Rect(0, 0, 8, 8), ["paste"])
    assert set(np.unique(out[:8, :8])) == {0, 7}  # no blended values
    assert (out[:4, :8] == 0).all() and (out[4:8, :8] == 7).all()


@pytest.mark.parametrize("kwargs, key", [
    ({"rect_scale": (0.5, 1.2)}, "rect_scale"),
    ({"patch_scale": (0.0, 1.0)}, "patch_scale"),
    ({"seeds": "keep"}, "seeds"),
    ({"max_aspect": 0.5}, "max_aspect"),
])
def test_bad_config_names_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        PasteConfig(**kwargs)


def test_rectangle_outside_the_crop_is_refused():
    with pytest.raises(ValueError, match="outside the crop"):
        paste_patch(np.zeros((8, 8, 3), np.uint8), [], np.zeros((8, 8, 3), np.uint8), [], Rect(0, 0, 8, 8),
                    Rect(4, 4, 8, 8), [])
