"""Image/label augmentation and normalisation shared by every training stage."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sance_core.constants import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN_COLOUR = tuple(round(255 * m) for m in IMAGENET_MEAN)


def resize_image(image: np.ndarray, scale: float | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Bilinear resize of an ``[H, W, 3]`` uint8 image by a factor or to ``size`` = (H, W)."""
    h, w = image.shape[:2]
    if size is None:
        assert scale is not None
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``[H, W]`` uint8 label map to (H, W): labels never blend."""
    if label.shape[:2] == tuple(size):
        return label
    return np.asarray(Image.fromarray(label).resize((size[1], size[0]), Image.NEAREST))


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` RGB → float ``[3, H, W]`` with ImageNet mean/std (what ResNets expect)."""
    # astype: a writable float copy (PIL-backed arrays are read-only, which torch warns about)
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def random_scale_flip_crop(
    image: np.ndarray,
    labels: list[np.ndarray],
    rng: np.random.Generator,
    crop_size: int,
    scale_range: tuple[float, float] = (0.9, 1.1),
    flip: bool = True,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Random rescale, horizontal flip and ``crop_size`` square crop of an image and its label maps.

    Smaller images are padded: the image with the ImageNet mean colour (zero after
    normalisation, like padding a normalised tensor with 0), labels with 255. Returns the
    image crop, the label crops and ``valid`` (True on real pixels).
    """
    h, w = image.shape[:2]
    scale = float(rng.uniform(*scale_range)) if scale_range[0] != scale_range[1] else float(scale_range[0])
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    image = resize_image(image, size=size)
    labels = [resize_label(lbl, size) for lbl in labels]
    if flip and rng.random() < 0.5:
        image = image[:, ::-1]
        labels = [lbl[:, ::-1] for lbl in labels]
    h, w = size
    out_img = np.empty((crop_size, crop_size, 3), dtype=np.uint8)
    out_img[:] = MEAN_COLOUR
    out_lbls = [np.full((crop_size, crop_size), IGNORE_INDEX, dtype=np.uint8) for _ in labels]
    valid = np.zeros((crop_size, crop_size), dtype=bool)
    # a window of crop_size over the (possibly smaller) image: offsets into source and target
    src_y = int(rng.integers(0, h - crop_size + 1)) if h > crop_size else 0
    src_x = int(rng.integers(0, w - crop_size + 1)) if w > crop_size else 0
    dst_y = int(rng.integers(0, crop_size - h + 1)) if h < crop_size else 0
    dst_x = int(rng.integers(0, crop_size - w + 1)) if w < crop_size else 0
    ch, cw = min(h, crop_size), min(w, crop_size)
    out_img[dst_y:dst_y + ch, dst_x:dst_x + cw] = image[src_y:src_y + ch, src_x:src_x + cw]
    for out, lbl in zip(out_lbls, labels):
        out[dst_y:dst_y + ch, dst_x:dst_x + cw] = lbl[src_y:src_y + ch, src_x:src_x + cw]
    valid[dst_y:dst_y + ch, dst_x:dst_x + cw] = True
    return out_img, out_lbls, valid
