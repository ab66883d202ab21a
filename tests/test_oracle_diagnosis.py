"""benchmarks/oracle_diagnosis.py: the contour zones of the mask's 4x4 cells against a naive per-cell reference."""

import numpy as np

from conftest import load_benchmark


def _module():
    return load_benchmark("oracle_diagnosis")


def _naive_zones(mask, h4, w4):
    pad = np.full((h4 * 4, w4 * 4), 255, np.uint8)
    pad[: mask.shape[0], : mask.shape[1]] = mask
    H, W = pad.shape
    change = np.zeros((H, W), bool)
    for y in range(H):
        for x in range(W):
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < H and 0 <= xx < W and pad[yy, xx] != pad[y, x]:
                    change[y, x] = True
    out = {z: np.zeros((h4, w4), bool) for z in ("object_border", "class_border", "interior", "background")}
    for cy in range(h4):
        for cx in range(w4):
            cell = pad[cy * 4:cy * 4 + 4, cx * 4:cx * 4 + 4]
            boundary = change[cy * 4:cy * 4 + 4, cx * 4:cx * 4 + 4].any()
            near = set()
            for ny in range(max(cy - 1, 0), min(cy + 2, h4)):
                for nx in range(max(cx - 1, 0), min(cx + 2, w4)):
                    near |= {int(v) for v in np.unique(pad[ny * 4:ny * 4 + 4, nx * 4:nx * 4 + 4])} - {0, 255}
            objects = {int(v) for v in np.unique(cell)} - {0, 255}
            only_void = bool((cell == 255).all())
            if boundary and not only_void:
                out["class_border" if len(near) >= 2 else "object_border"][cy, cx] = True
            elif not boundary and len(objects) == 1:
                out["interior"][cy, cx] = True
            elif not boundary and (cell == 0).all():
                out["background"][cy, cx] = True
    return out


def test_cell_zones_match_naive_reference():
    rng = np.random.default_rng(0)
    mask = np.zeros((37, 45), np.uint8)
    mask[5:30, 4:20] = 1
    mask[8:33, 20:38] = 2  # touches class 1
    mask[15:19, 10:14] = 255  # void inside an object
    mask[rng.random(mask.shape) < 0.01] = 255
    h4, w4 = 10, 12
    got = _module().cell_zones(mask, h4, w4)
    ref = _naive_zones(mask, h4, w4)
    for zone in ref:
        np.testing.assert_array_equal(got[zone], ref[zone], err_msg=zone)
    assert got["class_border"].any() and got["interior"].any() and got["object_border"].any()


def test_gt_boundary_marks_cells_with_two_labels():
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 5:] = 3
    b = _module().gt_boundary(mask, 2, 2)
    np.testing.assert_array_equal(b, np.array([[0, 1], [0, 1]], np.float32))
