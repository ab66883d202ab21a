"""The paste augmentation of SANCE (paper Fig. 2 and §3.2, "SANCE Model Training").

A patch of the *raw* (un-augmented) image is resized and placed into a rectangle of the
augmented training crop.  Online labels are generated and supervised only inside that
rectangle; the CAM-seed losses see the rest of the crop.  What we do, precisely:

1. **Rectangle** (one size per batch, so the online labels of a batch are computed in one
   batched propagation): side ``f * crop_size`` with ``f ~ U(rect_scale)`` and aspect ratio
   ``a ~ logU(1/max_aspect, max_aspect)``; height and width are floored to multiples of
   ``align`` (the model's stride-4 grid), so the rectangle maps exactly onto whole cells of the
   contour and segmentation maps.  Its top-left corner is drawn per sample, also on the grid.
2. **Patch**: a window of the raw image with the rectangle's aspect ratio and area
   ``s^2 * H * W``, ``s ~ U(patch_scale)``, clipped to the image and placed uniformly at random
   (``patch_scale = (1, 1)`` takes the largest window of that aspect ratio).  It is resized
   bilinearly into the rectangle; extra label maps (e.g. a saliency map) follow with
   nearest-neighbour resizing.
3. **Seeds inside the rectangle** (``seeds``): ``"ignore"`` (default) sets them to 255, so no
   CAM-seed pair has an end inside the rectangle and no affinity target straddles the
   artificial rectangle border (a strong image edge that is not an object contour); the
   rectangle is then supervised by online labels only, as the paper describes.  ``"paste"``
   resizes the raw seeds into the rectangle too (more seed pixels, but pairs across the
   border get targets from two unrelated image regions).

The online-label region is the rectangle divided by ``align``; without a paste the region is
the whole crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from sance_core.constants import IGNORE_INDEX
from sance_core.data.transforms import resize_image, resize_label

__all__ = ["PasteConfig", "Rect", "sample_rect_size", "sample_patch", "paste_patch", "SEED_MODES"]

SEED_MODES = ("ignore", "paste")


@dataclass(frozen=True)
class PasteConfig:
    """Knobs of the paste augmentation (the paper gives none of these values)."""

    enabled: bool = True
    rect_scale: tuple[float, float] = (0.4, 0.7)  # rectangle side / crop side
    max_aspect: float = 1.5  # rectangle aspect ratio drawn in [1/max_aspect, max_aspect]
    patch_scale: tuple[float, float] = (0.7, 1.0)  # patch side / raw image side
    seeds: str = "ignore"  # CAM seeds inside the rectangle: "ignore" (255) or "paste"
    align: int = 4  # rectangle corners on this grid (the maps' stride)

    def __post_init__(self) -> None:
        lo, hi = self.rect_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"paste.rect_scale must satisfy 0 < low <= high <= 1, got {list(self.rect_scale)}")
        lo, hi = self.patch_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"paste.patch_scale must satisfy 0 < low <= high <= 1, got {list(self.patch_scale)}")
        if self.max_aspect < 1:
            raise ValueError(f"paste.max_aspect must be >= 1, got {self.max_aspect}")
        if self.seeds not in SEED_MODES:
            raise ValueError(f"paste.seeds must be one of {SEED_MODES}, got {self.seeds!r}")
        if self.align < 1:
            raise ValueError(f"paste.align must be >= 1, got {self.align}")


class Rect(NamedTuple):
    """A rectangle in pixels: top, left, height, width."""

    y: int
    x: int
    h: int
    w: int

    def scaled(self, factor: int) -> "Rect":
        """The same rectangle on a grid ``factor`` times coarser (exact when aligned)."""
        return Rect(self.y // factor, self.x // factor, self.h // factor, self.w // factor)

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y, self.y + self.h), slice(self.x, self.x + self.w)


def sample_rect_size(rng: np.random.Generator, crop_size: int, cfg: PasteConfig) -> tuple[int, int]:
    """Height and width of the batch's rectangle: multiples of ``cfg.align``, at least one cell."""
    f = float(rng.uniform(*cfg.rect_scale))
    aspect = math.exp(float(rng.uniform(-math.log(cfg.max_aspect), math.log(cfg.max_aspect))))
    side = f * crop_size
    h = side / math.sqrt(aspect)
    w = side * math.sqrt(aspect)
    a = cfg.align
    cells = crop_size // a
    h_cells = int(min(max(1, h // a), cells))
    w_cells = int(min(max(1, w // a), cells))
    return h_cells * a, w_cells * a


def sample_rect(rng: np.random.Generator, crop_size: int, size: tuple[int, int], align: int) -> Rect:
    """A rectangle of ``size`` at a random grid-aligned position inside the crop."""
    h, w = size
    if h > crop_size or w > crop_size:
        raise ValueError(f"rectangle {size} does not fit a crop of {crop_size}")
    y = int(rng.integers(0, (crop_size - h) // align + 1)) * align
    x = int(rng.integers(0, (crop_size - w) // align + 1)) * align
    return Rect(y, x, h, w)


def sample_patch(rng: np.random.Generator, image_size: tuple[int, int], rect_size: tuple[int, int],
                 patch_scale: tuple[float, float]) -> Rect:
    """A window of the raw image with the rectangle's aspect ratio and side ``s * sqrt(H * W)``."""
    H, W = image_size
    rh, rw = rect_size
    s = float(rng.uniform(*patch_scale))
    aspect = rw / rh
    area = (s * s) * H * W
    ph = math.sqrt(area / aspect)
    pw = ph * aspect
    ph = int(min(H, max(1, round(ph))))
    pw = int(min(W, max(1, round(pw))))
    y = int(rng.integers(0, H - ph + 1))
    x = int(rng.integers(0, W - pw + 1))
    return Rect(y, x, ph, pw)


def paste_patch(
    crop: np.ndarray,
    crop_labels: list[np.ndarray],
    raw: np.ndarray,
    raw_labels: list[np.ndarray],
    patch: Rect,
    rect: Rect,
    label_modes: list[str],
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Paste ``raw[patch]`` resized into ``crop[rect]``; label maps follow ``label_modes``.

    ``label_modes[i]`` is ``"paste"`` (resize ``raw_labels[i][patch]`` into the rectangle,
    nearest neighbour) or ``"ignore"`` (255 inside the rectangle).  Inputs are not modified.
    """
    if len(crop_labels) != len(raw_labels) or len(crop_labels) != len(label_modes):
        raise ValueError("crop_labels, raw_labels and label_modes must have the same length")
    ch, cw = crop.shape[:2]
    if rect.y < 0 or rect.x < 0 or rect.y + rect.h > ch or rect.x + rect.w > cw or rect.h < 1 or rect.w < 1:
        raise ValueError(f"rectangle {tuple(rect)} outside the crop {ch}x{cw}")
    H, W = raw.shape[:2]
    if patch.y < 0 or patch.x < 0 or patch.y + patch.h > H or patch.x + patch.w > W or patch.h < 1 or patch.w < 1:
        raise ValueError(f"patch {tuple(patch)} outside the raw image {H}x{W}")
    ps = patch.slices()
    rs = rect.slices()
    out = crop.copy()
    out[rs] = resize_image(np.ascontiguousarray(raw[ps]), size=(rect.h, rect.w))
    out_labels = []
    for lbl, raw_lbl, mode in zip(crop_labels, raw_labels, label_modes):
        lbl = lbl.copy()
        if mode == "paste":
            lbl[rs] = resize_label(np.ascontiguousarray(raw_lbl[ps]), (rect.h, rect.w))
        elif mode == "ignore":
            lbl[rs] = IGNORE_INDEX
        else:
            raise ValueError(f"label mode must be 'paste' or 'ignore', got {mode!r}")
        out_labels.append(lbl)
    return out, out_labels
