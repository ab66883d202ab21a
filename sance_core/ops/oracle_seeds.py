"""Oracle seeds: seed label maps built from the ground-truth masks, with controlled corruption.

A diagnostic for stages 5-6 (``seeds.source: oracle``): with clean oracle seeds the SANCE
model and the pseudo-label synthesis see what perfect CAMs would give them, so any loss of
mIoU after stage 4 is the propagation's; the corruption knobs mimic what CAM seeds (Eq. 1 +
CRF) get wrong, one at a time:

- ``core`` (0 < core <= 1): the fraction of each object's area kept as confident foreground,
  grown from its most interior pixels (largest Euclidean distance to the object's border) -
  CAMs are partial. The rest of the object is labelled background beyond the unknown band,
  as a partial CAM's body falls under the background threshold.
- ``leak`` (pixels): background (and void) pixels within this Euclidean distance of an object
  are labelled as the nearest object's class - CAMs bleed.
- ``false_rate``: the fraction of images in which a background disk (radius half the square
  root of the image's largest object area, centred on the background pixel farthest from any
  object) is labelled as one of the image's classes - a distractor the CAM fires on.
- ``unknown`` (pixels): pixels within this distance of the confident foreground that are not
  foreground themselves are unsure (255), the band between Eq. (1)'s two confidence levels.

``core 1, leak 0, false_rate 0`` is clean; with ``unknown 0`` as well the seed is the mask
itself (void stays 255). Everything is vectorised (distance transforms, one sort) and
deterministic: the per-image draws use a generator seeded by ``(seed, crc32(image_id))``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sance_core.constants import IGNORE_INDEX

UNSURE = IGNORE_INDEX
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class OracleConfig:
    """``seeds.oracle``: the corruption of oracle seeds (``core 1, leak 0, false_rate 0`` = clean)."""

    core: float = 1.0
    leak: int = 0
    false_rate: float = 0.0
    unknown: int = 4

    def __post_init__(self) -> None:
        if not 0.0 < self.core <= 1.0:
            raise ValueError(f"seeds.oracle.core must be in (0, 1], got {self.core}")
        if self.leak < 0 or int(self.leak) != self.leak:
            raise ValueError(f"seeds.oracle.leak must be an integer >= 0 (pixels), got {self.leak}")
        if not 0.0 <= self.false_rate <= 1.0:
            raise ValueError(f"seeds.oracle.false_rate must be in [0, 1], got {self.false_rate}")
        if self.unknown < 0 or int(self.unknown) != self.unknown:
            raise ValueError(f"seeds.oracle.unknown must be an integer >= 0 (pixels), got {self.unknown}")

    def tag(self) -> str:
        """A folder name that tells the corruption apart: ``core1_leak0_false0_unk4``."""
        return f"core{self.core:g}_leak{self.leak}_false{self.false_rate:g}_unk{self.unknown}"


def object_core(mask: np.ndarray, core: float) -> np.ndarray:
    """The confident core ``[H, W]`` bool: per object (8-connected region of one class), the
    ``ceil(core * area)`` pixels farthest from its border (ties: raster order).

    ``mask`` ``[H, W]`` uint8 (0 background, class ids, 255 void); the image frame counts as
    border (the mask is padded with background before the distance transform).
    """
    mask = np.asarray(mask)
    h, w = mask.shape
    classes = [int(c) for c in np.unique(mask) if c not in (0, UNSURE)]
    dist = np.zeros((h, w), dtype=np.float64)
    comp = np.zeros((h, w), dtype=np.int64)
    n_comp = 0
    for c in classes:  # one distance transform and one labelling per class
        region = mask == c
        dist[region] = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1][region]
        labels, n = ndimage.label(region, structure=_EIGHT)
        comp[region] = labels[region] + n_comp
        n_comp += n
    if n_comp == 0:
        return np.zeros((h, w), dtype=bool)
    flat_comp = comp.ravel()
    idx = np.flatnonzero(flat_comp)
    order = np.lexsort((idx, -dist.ravel()[idx], flat_comp[idx]))  # by object, farthest first, raster
    sorted_idx = idx[order]
    sorted_comp = flat_comp[sorted_idx]
    area = np.bincount(sorted_comp, minlength=n_comp + 1)
    start = np.concatenate([[0], np.cumsum(area)[:-1]])
    rank = np.arange(sorted_idx.size) - start[sorted_comp]
    keep = rank < np.ceil(core * area[sorted_comp] - 1e-9)
    out = np.zeros(h * w, dtype=bool)
    out[sorted_idx[keep]] = True
    return out.reshape(h, w)


def leak_band(mask: np.ndarray, leak: int) -> np.ndarray:
    """Class ids ``[H, W]`` int64 of the leak band: background/void pixels within ``leak`` px
    (Euclidean) of an object take the nearest object pixel's class; 0 elsewhere."""
    mask = np.asarray(mask)
    objects = (mask != 0) & (mask != UNSURE)
    out = np.zeros(mask.shape, dtype=np.int64)
    if leak <= 0 or not objects.any():
        return out
    dist, (iy, ix) = ndimage.distance_transform_edt(~objects, return_indices=True)
    band = ~objects & (dist <= leak)
    out[band] = mask[iy[band], ix[band]]
    return out


def distractor_disk(mask: np.ndarray) -> np.ndarray:
    """The false-positive region ``[H, W]`` bool: background pixels of a disk of radius
    ``max(1, sqrt(largest object area) / 2)`` centred on the background pixel farthest from any
    object (first in raster order on ties); empty when the image has no background or no object."""
    mask = np.asarray(mask)
    objects = (mask != 0) & (mask != UNSURE)
    background = mask == 0
    if not objects.any() or not background.any():
        return np.zeros(mask.shape, dtype=bool)
    dist = ndimage.distance_transform_edt(~objects)
    centre = np.unravel_index(int(np.argmax(np.where(background, dist, -1.0))), mask.shape)
    labels, _ = ndimage.label(objects, structure=_EIGHT)
    radius = max(1.0, np.sqrt(np.bincount(labels.ravel())[1:].max()) / 2.0)
    yy, xx = np.ogrid[:mask.shape[0], :mask.shape[1]]
    return background & ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2)


def image_rng(seed: int, image_id: str) -> np.random.Generator:
    """The generator of one image's draws: the same for the same ``(seed, image_id)`` in any shard."""
    return np.random.default_rng([int(seed), zlib.crc32(image_id.encode("utf-8"))])


def oracle_seed(mask: np.ndarray, class_keys: Sequence[int], cfg: OracleConfig,
                rng: np.random.Generator) -> np.ndarray:
    """Seed ``[H, W]`` uint8 of one image from its mask: 0 background, class ids, 255 unsure.

    ``mask`` ``[H, W]`` uint8 GT (255 void); ``class_keys`` the image's classes (the distractor's
    class is drawn from them); ``rng`` draws whether this image gets a distractor and its class.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
    seed = np.zeros(mask.shape, dtype=np.int64)
    core = object_core(mask, cfg.core)
    seed[core] = mask[core]
    leak = leak_band(mask, cfg.leak)
    seed = np.where((seed == 0) & (leak > 0), leak, seed)
    draw, pick = rng.random(), rng.random()  # always two draws: the stream does not depend on the outcome
    if len(class_keys) and draw < cfg.false_rate:
        disk = distractor_disk(mask) & (seed == 0)
        seed[disk] = int(class_keys[int(pick * len(class_keys))])
    foreground = seed > 0
    unsure = (mask == UNSURE) & ~foreground
    if cfg.unknown > 0 and foreground.any():
        unsure |= ~foreground & (ndimage.distance_transform_edt(~foreground) <= cfg.unknown)
    seed[unsure] = UNSURE
    return seed.astype(np.uint8)
