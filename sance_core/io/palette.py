"""PASCAL VOC palette and label-PNG I/O shared by every reader and writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sance_core.constants import IGNORE_INDEX  # noqa: F401 - the value label PNGs use for "ignore"


def voc_palette(n: int = 256) -> np.ndarray:
    """The standard bit-interleaved VOC colour map as an ``[n, 3]`` uint8 array."""
    idx = np.arange(n)
    cmap = np.zeros((n, 3), dtype=np.int64)
    c = idx.copy()
    for j in range(8):
        for ch in range(3):
            cmap[:, ch] |= ((c >> ch) & 1) << (7 - j)
        c >>= 3
    return cmap.astype(np.uint8)


def save_label_png(label: np.ndarray, path: str | Path) -> None:
    """Write an ``[H, W]`` uint8 label map as a 'P'-mode PNG with the VOC palette."""
    if label.ndim != 2:
        raise ValueError(f"label map for {path} must be 2-D, got shape {label.shape}")
    if label.dtype != np.uint8:
        if label.min() < 0 or label.max() > 255:
            raise ValueError(f"label values for {path} must lie in 0..255")
        label = label.astype(np.uint8)
    img = Image.fromarray(label, mode="P")
    img.putpalette(voc_palette().reshape(-1).tolist())
    img.save(path)


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a label PNG as ``[H, W]`` uint8 class indices (palette indices, not colours)."""
    with Image.open(path) as img:
        if img.mode == "P" or img.mode == "L":
            return np.asarray(img, dtype=np.uint8).copy()
        if img.mode in ("I", "I;16", "I;16B"):
            arr = np.asarray(img)
            if arr.max() > 255:
                raise ValueError(f"{path}: label ids above 255 in a {img.mode} PNG")
            return arr.astype(np.uint8)
        raise ValueError(
            f"{path}: label PNG must be palette ('P') or grey ('L') mode with class indices, got {img.mode}"
        )


def colorize(label: np.ndarray) -> np.ndarray:
    """Map an ``[H, W]`` label map to an ``[H, W, 3]`` RGB picture with the VOC palette."""
    return voc_palette()[label.astype(np.int64)]
