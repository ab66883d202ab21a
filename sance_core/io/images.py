"""Image and id-list readers that every stage shares (demo data and real datasets alike)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class DataError(ValueError):
    """Input data is missing or malformed; the message names the file and the problem."""


def check_image_id(image_id: str, source: str | Path) -> None:
    """Ids become file names and HDF5 group names: refuse anything that could escape a folder."""
    if not _SAFE_ID.match(image_id) or ".." in image_id:
        raise DataError(
            f"{source}: unsafe image id {image_id!r} (allowed: letters, digits, '_', '-', '.', "
            "not starting with '.' and without '..' or '/')"
        )


def read_id_list(path: str | Path) -> list[str]:
    """Read a VOC ``ImageSets`` list: one id per line (extra columns, as in VOC's per-class lists, are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split list not found")
    ids = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            ids.append(line.split()[0])
    return ids


def to_rgb_uint8(img: Image.Image, path: str | Path = "<image>") -> np.ndarray:
    """Convert any PIL image (grey, RGBA, palette, 16-bit, CMYK) into an ``[H, W, 3]`` uint8 array."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.max() > 1.0 else 1.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # composite onto white, as viewers show it, instead of dropping alpha blindly
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file fully (so truncated files fail here, not later) as ``[H, W, 3]`` uint8 RGB."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb_uint8(img, path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: unreadable or truncated image ({err})") from err


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the header only."""
    with Image.open(path) as img:
        return img.height, img.width
