"""Multi-scale (+ flip) test-time inference for any dense predictor.

DeepLab's evaluation protocol: run the network on the image at several scales (and their
mirror images), bring every score map back to the input size and merge them. The merge here
works on softmax probabilities, so maps of different scales are comparable; ``fusion="mean"``
averages them, ``fusion="max"`` keeps the per-pixel maximum (DeepLab's MSC max-fusion).

``model_fn`` is anything mapping a normalised batch ``[N, 3, h, w]`` to logits
``[N, K, h', w']`` at any resolution (DeepLab's own output, a stride-8 map, an ONNX session
wrapped in a function...), so the SANCE stages and the exported model can reuse it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sance_core.data.transforms import normalize_image
from sance_core.ops.crf import CRFConfig

FUSIONS = ("mean", "max")


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    scales = tuple(float(s) for s in scales)
    if not scales:
        raise ValueError("test scales must list at least one scale (e.g. [1.0])")
    if any(not np.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"test scales must be positive numbers, got {list(scales)}")
    return scales


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The image size at ``scale``, rounded, never below one pixel."""
    return max(1, round(height * scale)), max(1, round(width * scale))


@torch.inference_mode()
def multiscale_predict(
    model_fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    fusion: str = "mean",
) -> torch.Tensor:
    """Merged class probabilities ``[K, H, W]`` of a normalised image ``[3, H, W]`` (or ``[1, 3, H, W]``).

    Each scale is one call of ``model_fn``; with ``flip`` the mirrored image goes in the same
    batch and its output is mirrored back before merging.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    scales = _check_scales(scales)
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"multiscale_predict takes one image, got a batch of {image.shape[0]}")
        image = image[0]
    if image.dim() != 3:
        raise ValueError(f"image must be [3, H, W], got shape {tuple(image.shape)}")
    height, width = image.shape[-2:]
    merged: torch.Tensor | None = None
    count = 0
    for scale in scales:
        size = scaled_size(height, width, scale)
        x = image[None]
        if size != (height, width):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        logits = model_fn(x)
        if logits.dim() != 4 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"model_fn must return logits [N, K, h, w] for N={x.shape[0]}, got {tuple(logits.shape)}")
        logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
        probs = torch.softmax(logits, dim=1)
        maps = [probs[0]] + ([probs[1].flip(-1)] if flip else [])
        for p in maps:
            if merged is None:
                merged = p.clone()
            elif fusion == "mean":
                merged += p
            else:
                merged = torch.maximum(merged, p)
            count += 1
    assert merged is not None
    return merged / count if fusion == "mean" else merged


def refine_with_crf(image: np.ndarray, probs: np.ndarray, params: CRFConfig) -> np.ndarray:
    """Dense-CRF refined probabilities ``[K, H, W]`` (unary from the network's probabilities)."""
    from sance_core.ops.crf import crf_refine_probs

    return crf_refine_probs(image, probs.astype(np.float32), params)


def predict_label(
    model: torch.nn.Module,
    image: np.ndarray,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crf: CRFConfig | None = None,
    device: torch.device | str = "cpu",
    fusion: str = "mean",
) -> tuple[np.ndarray, np.ndarray]:
    """Label map ``[H, W]`` uint8 and probabilities ``[K, H, W]`` float32 of one uint8 RGB image."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be [H, W, 3] uint8 RGB, got {image.shape} {image.dtype}")
    x = normalize_image(image).to(device)
    probs = multiscale_predict(model, x, scales, flip, fusion).cpu().numpy().astype(np.float32)
    if crf is not None:
        probs = refine_with_crf(image, probs, crf)
    if probs.shape[0] > 255:
        raise ValueError(f"{probs.shape[0]} classes do not fit a uint8 label map")
    return probs.argmax(axis=0).astype(np.uint8), probs
