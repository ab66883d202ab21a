"""Stage ``make_seeds``: CAM seeds of one shard by Eq. (1), each confidence level refined by a dense CRF.

IRNet's ``cam_to_ir_label`` semantics, which the paper follows:

1. ``fg``: pad the present-class CAMs with a constant background plane at ``fg_threshold``
   (0.30), argmax, CRF-refine the label map; map plane indices to class ids.
2. ``bg``: the same with ``bg_threshold`` (0.05).
3. combine: the ``fg`` class where it is a foreground class; 0 where both say background;
   255 (unsure) where ``fg`` says background but ``bg`` says foreground.

``source: oracle`` builds the seeds from the ground-truth masks instead (``sance_core.ops.oracle_seeds``,
a diagnostic of stages 5-6); the artifact is the same, so every later stage reads it unchanged.

The argmax over ``[threshold, cam_1, ..., cam_K]`` picks the first maximum, so a pixel is
foreground only when its best CAM is strictly above the threshold; it is computed here as a
``where`` on the per-pixel maximum (no padded copy of the maps).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from sance_core.config import to_dict
from sance_core.constants import IGNORE_INDEX
from sance_core.data.dataset import DatasetSpec, Manifest, load_sample
from sance_core.data.shards import read_shard
from sance_core.io.images import DataError, read_image
from sance_core.io.store import ArtifactReader, ArtifactWriter
from sance_core.ops.crf import CRFConfig, crf_refine_labels
from sance_core.ops.oracle_seeds import OracleConfig, image_rng, oracle_seed

log = logging.getLogger(__name__)

UNSURE = IGNORE_INDEX  # a seed pixel that is neither confident foreground nor background


@dataclass(frozen=True)
class SeedCRFConfig(CRFConfig):
    """The dense CRF of the seeds (IRNet's ``crf_inference_label`` settings); ``enabled: false`` skips it."""

    enabled: bool = True


@dataclass(frozen=True)
class SeedConfig:
    dataset: DatasetSpec
    fg_threshold: float = 0.30  # paper / IRNet conf_fg_thres
    bg_threshold: float = 0.05  # paper / IRNet conf_bg_thres
    crf: SeedCRFConfig = field(default_factory=SeedCRFConfig)
    compression: str = "gzip"  # artifacts.compression
    source: str = "cam"  # cam: Eq. (1) on the CAMs; oracle: from the GT masks (diagnostic)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    split: str = "train"  # oracle only: the manifest split of the shard ids
    seed: int = 0  # oracle only: seed of the per-image corruption draws

    def __post_init__(self) -> None:
        if self.source not in ("cam", "oracle"):
            raise ValueError(f"seeds.source must be one of cam, oracle; got {self.source!r}")
        if not 0.0 <= self.bg_threshold <= self.fg_threshold <= 1.0:
            raise ValueError(
                f"seeds thresholds must satisfy 0 <= bg_threshold <= fg_threshold <= 1, "
                f"got bg {self.bg_threshold}, fg {self.fg_threshold}"
            )


def threshold_labels(cams: np.ndarray, threshold: float) -> np.ndarray:
    """``argmax([threshold, cams...])`` per pixel: 0 = background, k = plane k-1 (+1); ``[H, W]`` int64."""
    cams = np.asarray(cams)
    if cams.ndim != 3:
        raise ValueError(f"cams must be [K, H, W], got shape {cams.shape}")
    if cams.shape[0] == 0:
        return np.zeros(cams.shape[1:], dtype=np.int64)
    best = cams.max(axis=0)
    return np.where(best > threshold, cams.argmax(axis=0) + 1, 0).astype(np.int64)


def combine_confidence(fg_conf: np.ndarray, bg_conf: np.ndarray) -> np.ndarray:
    """IRNet's combination of the two class-id maps into a seed ``[H, W]`` uint8 (255 = unsure)."""
    seed = np.where(fg_conf == 0, UNSURE, fg_conf)
    seed = np.where((fg_conf == 0) & (bg_conf == 0), 0, seed)
    return seed.astype(np.uint8)


def make_seed(image: np.ndarray | None, cams: np.ndarray, class_keys: Sequence[int],
              fg_threshold: float = 0.30, bg_threshold: float = 0.05,
              crf: CRFConfig | None = CRFConfig()) -> np.ndarray:
    """Seed label map ``[H, W]`` uint8 of one image: 0 background, class ids, 255 unsure.

    ``cams`` ``[K, H, W]`` are the present classes' maps in [0, 1], ``class_keys`` their class
    ids; ``crf=None`` gives the plain Eq. (1) thresholding (then ``image`` may be None).
    """
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 3 or cams.shape[0] != len(class_keys):
        raise ValueError(f"cams of shape {cams.shape} do not match {len(class_keys)} class keys")
    if not np.isfinite(cams).all():
        raise ValueError("cams contain NaN or inf")
    lut = np.asarray([0, *[int(k) for k in class_keys]], dtype=np.int64)
    levels = []
    for threshold in (fg_threshold, bg_threshold):
        labels = threshold_labels(cams, threshold)
        if crf is not None:
            if image is None:
                raise ValueError("the CRF needs the image")
            labels = crf_refine_labels(image, labels, n_labels=len(lut), cfg=crf)
        levels.append(lut[labels])
    return combine_confidence(*levels)


def _write_seeds(cfg: SeedConfig, path: str, attrs: Mapping[str, Any],
                 seeds: Iterable[tuple[str, np.ndarray, list[int]]], what: str) -> None:
    """Write ``(image_id, seed [H, W] uint8, class keys)`` items into one seeds artifact and log
    the share of unsure (255) pixels; CAM seeds and oracle seeds are stored the same way."""
    unsure = total = 0
    with ArtifactWriter(path, stage="seeds", config=cfg, compression=cfg.compression, attrs=attrs) as writer:
        for image_id, seed, keys in seeds:
            unsure += int((seed == UNSURE).sum())
            total += seed.size
            writer.add(image_id, {"seed": seed}, {"class_keys": np.asarray(keys, dtype=np.int64),
                                                 "size": np.asarray(seed.shape, dtype=np.int64)})
    log.info("%s: %.1f%% of the pixels unsure", what, 100.0 * unsure / max(total, 1))


def run_oracle_stage(cfg: SeedConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> int:
    """Inputs ``shard`` (id list) and ``manifest``; output ``seeds`` as :func:`run_stage` writes it,
    built from the GT masks by :func:`sance_core.ops.oracle_seeds.oracle_seed`. Returns the image count."""
    manifest = Manifest.load(inputs["manifest"])
    labels = manifest.labels(cfg.split)
    ids = read_shard(inputs["shard"])
    missing = [i for i in ids if i not in labels]
    if missing:
        raise DataError(f"{inputs['shard']}: {len(missing)} id(s) not in split {cfg.split!r} of "
                        f"{inputs['manifest']}: {missing[:5]}")
    log.info("oracle seeds of %d images (%s)", len(ids), cfg.oracle.tag())

    def seeds() -> Iterator[tuple[str, np.ndarray, list[int]]]:
        for image_id in tqdm(ids, desc="oracle seeds", unit="img", mininterval=5):
            _, mask = load_sample(cfg.dataset, image_id)
            if mask is None:
                raise DataError(f"{cfg.dataset.mask_path(image_id)}: oracle seeds need the ground-truth mask")
            keys = [int(k) for k in labels[image_id]]
            yield image_id, oracle_seed(mask, keys, cfg.oracle, image_rng(cfg.seed, image_id)), keys

    _write_seeds(cfg, outputs["seeds"], {"source": "oracle", "oracle": to_dict(cfg.oracle)}, seeds(), "oracle seeds")
    return len(ids)


def run_stage(cfg: SeedConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> int:
    """Input ``cam`` (one CAM shard); output ``seeds`` (HDF5, per image ``seed``). Returns the image count.

    ``source: oracle``: inputs ``shard`` and ``manifest`` instead (:func:`run_oracle_stage`).
    """
    if cfg.source == "oracle":
        return run_oracle_stage(cfg, inputs, outputs)
    reader = ArtifactReader(inputs["cam"], expect_stage="cam")
    ids = reader.ids()
    crf = cfg.crf if cfg.crf.enabled else None
    log.info("seeds of %d images (fg %.2f, bg %.2f, CRF %s)", len(ids), cfg.fg_threshold, cfg.bg_threshold,
             "on" if crf else "off")

    def seeds() -> Iterator[tuple[str, np.ndarray, list[int]]]:
        for image_id in tqdm(ids, desc="seeds", unit="img", mininterval=5):
            attrs = reader.image_attrs(image_id)
            cams = reader.read(image_id, "cam")
            keys = [int(k) for k in attrs.get("class_keys", [])]
            image = None
            if crf is not None:
                path = cfg.dataset.image_path(image_id)
                image = read_image(path)
                if image.shape[:2] != cams.shape[1:]:
                    raise DataError(f"{path}: image size {image.shape[:2]} differs from its CAM "
                                    f"{tuple(cams.shape[1:])} in {inputs['cam']}")
            yield image_id, make_seed(image, cams, keys, cfg.fg_threshold, cfg.bg_threshold, crf), keys

    attrs = {"fg_threshold": cfg.fg_threshold, "bg_threshold": cfg.bg_threshold, "crf": to_dict(cfg.crf)}
    _write_seeds(cfg, outputs["seeds"], attrs, seeds(), "seeds")
    return len(ids)
