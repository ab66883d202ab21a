"""Dense CRF (Krähenbühl & Koltun) refinement of label maps and probability maps, via pydensecrf2.

``crf_refine_labels`` is IRNet's ``crf_inference_label``: a unary from the hard labels
(``gt_prob`` on the given label, the rest spread evenly over the others), a Gaussian
smoothness kernel and an appearance (bilateral) kernel on the RGB image, mean-field
inference, argmax. Used for the CAM seeds (Eq. 1), for the online-label refine (Eq. 8) and
optionally for DeepLab's predictions.

pydensecrf wants C-contiguous ``float32`` unaries ``[K, H*W]`` and a C-contiguous ``uint8``
``[H, W, 3]`` image; both are enforced here so callers may pass views (flips, crops).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CRFConfig:
    """Kernel settings; the defaults are IRNet's (and the paper's) for seeds and online labels."""

    gt_prob: float = 0.7  # confidence of the given label in the unary (labels mode only)
    gauss_sxy: float = 3.0
    gauss_compat: float = 3.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 10.0
    iterations: int = 10

    def __post_init__(self) -> None:
        if not 0.0 < self.gt_prob < 1.0:
            raise ValueError(f"crf.gt_prob must lie in (0, 1), got {self.gt_prob}")
        if self.iterations < 1:
            raise ValueError(f"crf.iterations must be >= 1, got {self.iterations}")
        for name in ("gauss_sxy", "bilateral_sxy", "bilateral_srgb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"crf.{name} must be > 0, got {getattr(self, name)}")
        for name in ("gauss_compat", "bilateral_compat"):
            if getattr(self, name) < 0:
                raise ValueError(f"crf.{name} must be >= 0, got {getattr(self, name)}")


def deeplab_crf() -> CRFConfig:
    """deeplab-pytorch's VOC post-processing of DeepLab's probabilities (the segmenter's test-time CRF)."""
    return CRFConfig(gauss_sxy=1.0, gauss_compat=3.0, bilateral_sxy=67.0, bilateral_srgb=3.0,
                     bilateral_compat=4.0, iterations=10)


def _check_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"CRF image must be [H, W, 3] RGB, got shape {image.shape}")
    if image.shape[:2] != tuple(shape):
        raise ValueError(f"CRF image size {image.shape[:2]} differs from the map size {tuple(shape)}")
    if image.dtype != np.uint8:
        raise ValueError(f"CRF image must be uint8 (0..255 RGB), got {image.dtype}")
    return np.ascontiguousarray(image)


def _inference(image: np.ndarray, unary: np.ndarray, cfg: CRFConfig) -> np.ndarray:
    """Mean-field inference; returns the marginals ``[K, H, W]`` float32."""
    import pydensecrf.densecrf as dcrf

    n_labels = unary.shape[0]
    h, w = image.shape[:2]
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=cfg.gauss_sxy, compat=cfg.gauss_compat)
    crf.addPairwiseBilateral(sxy=cfg.bilateral_sxy, srgb=cfg.bilateral_srgb, rgbim=image,
                             compat=cfg.bilateral_compat)
    q = crf.inference(cfg.iterations)
    return np.asarray(q, dtype=np.float32).reshape(n_labels, h, w)


def crf_refine_labels(image: np.ndarray, labels: np.ndarray, n_labels: int, cfg: CRFConfig = CRFConfig()) -> np.ndarray:
    """Refine a hard label map ``[H, W]`` with values in ``0..n_labels-1``; returns ``[H, W]`` int64.

    Every value is a real label (IRNet's ``zero_unsure=False``): remap class ids to a compact
    ``0..K-1`` range first (e.g. background + the image's present classes).
    """
    from pydensecrf.utils import unary_from_labels

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if n_labels < 1:
        raise ValueError(f"n_labels must be >= 1, got {n_labels}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"labels must lie in 0..{n_labels - 1}, got {int(labels.min())}..{int(labels.max())}")
    image = _check_image(image, labels.shape)
    if n_labels == 1:  # nothing to decide (the unary would divide by n_labels - 1 = 0)
        return np.zeros(labels.shape, dtype=np.int64)
    unary = unary_from_labels(np.ascontiguousarray(labels, dtype=np.int64), n_labels,
                              gt_prob=cfg.gt_prob, zero_unsure=False)
    return _inference(image, unary, cfg).argmax(axis=0)


def crf_refine_probs(image: np.ndarray, probs: np.ndarray, cfg: CRFConfig = CRFConfig()) -> np.ndarray:
    """Refine class probabilities ``[K, H, W]`` (each pixel summing to ~1); returns marginals ``[K, H, W]`` float32.

    The unary is ``-log(clip(p, 1e-5))`` (pydensecrf's ``unary_from_softmax``); ``gt_prob``
    is not used.
    """
    from pydensecrf.utils import unary_from_softmax

    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise ValueError(f"probs must be [K, H, W] with K >= 1, got shape {probs.shape}")
    if not np.isfinite(probs).all() or probs.min() < 0:
        raise ValueError("probs must be finite and non-negative")
    image = _check_image(image, probs.shape[1:])
    if probs.shape[0] == 1:
        return np.ones_like(probs)
    unary = unary_from_softmax(np.ascontiguousarray(probs))
    return _inference(image, unary, cfg)
