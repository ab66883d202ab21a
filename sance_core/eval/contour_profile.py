"""Where a contour map fires, measured against the ground-truth mask (a diagnostic of stage 5).

A contour map that the propagation (Eq. 6) can use is high on object boundaries and low inside
objects and in the background. ``contour_profile`` splits the pixels of one image's stride-4
grid into three zones of the (nearest-downsampled) mask - ``boundary`` (within ``band`` cells
of a label change), ``interior`` (object pixels farther than that) and ``background`` (the
same for background) - and reports the mean contour value of each and the share of each zone
above ``threshold``. An interior share near the boundary share is the failure the propagation
cannot recover from: edges drawn inside the objects (e.g. a part-body border).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from sance_core.constants import IGNORE_INDEX, MAP_STRIDE

UNSURE = IGNORE_INDEX
ZONES = ("boundary", "interior", "background")


def mask_on_grid(mask: np.ndarray, shape: tuple[int, int], stride: int = MAP_STRIDE) -> np.ndarray:
    """The mask ``[H, W]`` at the stride-``stride`` grid ``shape`` (top-left sample of each cell)."""
    h, w = shape
    grid = np.asarray(mask)[::stride, ::stride][:h, :w]
    if grid.shape != (h, w):
        raise ValueError(f"mask {mask.shape} does not cover a grid of {shape} at stride {stride}")
    return grid


def pad_to_grid(mask: np.ndarray, shape: tuple[int, int], stride: int = MAP_STRIDE) -> np.ndarray:
    """The mask ``[H, W]`` padded with void (255) to cover the grid ``shape``: ``[h * stride, w * stride]``."""
    h, w = shape
    mask = np.asarray(mask)
    if mask.shape[0] > h * stride or mask.shape[1] > w * stride:
        raise ValueError(f"mask {mask.shape} is larger than a grid of {shape} at stride {stride}")
    pad = np.full((h * stride, w * stride), UNSURE, mask.dtype)
    pad[: mask.shape[0], : mask.shape[1]] = mask
    return pad


def grid_cells(pixels: np.ndarray, stride: int = MAP_STRIDE) -> np.ndarray:
    """The ``stride x stride`` cells of ``pixels [h * stride, w * stride]`` side by side: ``[h, w, stride**2]``."""
    h, w = pixels.shape[0] // stride, pixels.shape[1] // stride
    return pixels.reshape(h, stride, w, stride).transpose(0, 2, 1, 3).reshape(h, w, stride * stride)


def mixed_cells(mask: np.ndarray, shape: tuple[int, int], stride: int = MAP_STRIDE) -> np.ndarray:
    """Bool ``[h, w]``: the grid cells of ``mask`` (padded with void) that hold two labels -
    object-background, class-class or void borders: the ground-truth boundary on the grid."""
    cells = grid_cells(pad_to_grid(mask, shape, stride), stride)
    return cells.min(axis=2) != cells.max(axis=2)


def zones(mask: np.ndarray, band: int = 1) -> dict[str, np.ndarray]:
    """Boolean ``[h, w]`` zones of a label map on the grid: boundary / interior / background (void excluded)."""
    mask = np.asarray(mask)
    valid = mask != UNSURE
    change = np.zeros(mask.shape, dtype=bool)
    for axis in (0, 1):
        diff = np.diff(mask.astype(np.int64), axis=axis) != 0
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        change[tuple(lo)] |= diff
        change[tuple(hi)] |= diff
    near = ndimage.binary_dilation(change, iterations=band) if band > 0 else change
    boundary = near & valid
    return {
        "boundary": boundary,
        "interior": valid & ~near & (mask > 0),
        "background": valid & ~near & (mask == 0),
    }


def contour_profile(pairs: Iterable[tuple[np.ndarray, np.ndarray]], band: int = 1,
                    threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """Over ``(contour [h, w], mask on the grid [h, w])`` pairs: per zone ``mean``, ``above`` (share of
    pixels with contour > threshold) and ``pixels``."""
    sums = {z: 0.0 for z in ZONES}
    above = {z: 0 for z in ZONES}
    count = {z: 0 for z in ZONES}
    for contour, mask in pairs:
        contour = np.asarray(contour, dtype=np.float64)
        if contour.shape != np.asarray(mask).shape:
            raise ValueError(f"contour {contour.shape} and mask {np.asarray(mask).shape} differ")
        for name, zone in zones(mask, band).items():
            values = contour[zone]
            sums[name] += float(values.sum())
            above[name] += int((values > threshold).sum())
            count[name] += int(values.size)
    return {z: {"mean": sums[z] / count[z] if count[z] else float("nan"),
                "above": above[z] / count[z] if count[z] else float("nan"),
                "pixels": float(count[z])} for z in ZONES}
