"""Evaluation stages: CAM mIoU over a background-threshold sweep, and CAM-seed quality.

Both stream image by image into split-wide confusion matrices (memory does not grow with
the number of images) and write a JSON summary plus a per-class TSV table. Images without a
ground-truth mask (tags-only data) are skipped; with none at all the JSON says so and the
metrics are ``null``.

JSON keys: ``miou``, ``iou`` (per class), ``n_images`` for every stage; ``best_threshold`` and
``threshold_curve`` for CAMs; ``precision`` and ``coverage`` for seeds. mIoU convention:
:mod:`sance_core.eval.metrics`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sance_core.io.files import write_text_atomic
from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.io.images import DataError
from sance_core.io.palette import read_label_png
from sance_core.eval.metrics import ConfusionMatrix, SeedMetrics
from sance_core.io.store import ArtifactReader, open_shards

log = logging.getLogger(__name__)

# IRNet's eval_cam uses one fixed threshold (0.15 for ResNet-50 CAMs); we sweep and report the best.
DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95
NO_MASKS = "no ground-truth masks for this split: nothing evaluated"


# ------------------------------------------------------------------ output helpers


def _clean(value: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN), numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(result: Mapping[str, Any], path: str | Path) -> None:
    write_text_atomic(path, json.dumps(_clean(dict(result)), indent=1, allow_nan=False) + "\n")


def write_tsv(rows: Sequence[Mapping[str, Any]], path: str | Path, columns: Sequence[str] | None = None) -> None:
    """A tab-separated table; missing values (None/NaN) are written as ``NA``, fractions with 4 decimals."""
    columns = list(columns or (rows[0].keys() if rows else []))

    def fmt(v: Any) -> str:
        v = _clean(v)
        if v is None:
            return "NA"
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    lines = ["\t".join(columns)] + ["\t".join(fmt(row.get(c)) for c in columns) for row in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


def plot_threshold_curve(curve: Sequence[Mapping[str, Any]], best: float | None, path: str | Path) -> None:
    """mIoU against the background threshold, the chosen one marked (for the report)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.0), dpi=100)
    xs = [p["threshold"] for p in curve]
    ys = [np.nan if p["miou"] is None else 100 * p["miou"] for p in curve]
    ax.plot(xs, ys, marker="o", ms=3)
    if best is not None:
        ax.axvline(best, color="tab:red", ls="--", lw=1, label=f"best {best:.2f}")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("background threshold")
    ax.set_ylabel("CAM mIoU (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


# ------------------------------------------------------------------ iteration


def iter_with_masks(spec: DatasetSpec, manifest: Manifest, split: str, shard_paths: Sequence[str],
                    stage: str, dataset: str) -> Iterator[tuple[str, np.ndarray, dict[str, Any], np.ndarray]]:
    """Yield ``(id, array, image attrs, gt mask)`` for every image of ``split`` that has a mask, in manifest order.

    Checks first that the shards hold exactly the split's ids, so a stale or partial shard
    set fails before any work. Only one image's arrays are in memory at a time.
    """
    index = open_shards(list(shard_paths), expect_stage=stage)
    ids = manifest.ids(split)
    missing = [i for i in ids if i not in index]
    extra = sorted(set(index) - set(ids))
    if missing or extra:
        raise DataError(
            f"{stage} shards {list(shard_paths)} do not match split {split!r} of the manifest: "
            f"{len(missing)} id(s) missing {missing[:5]}, {len(extra)} unexpected {extra[:5]}"
        )
    has_mask = {e["id"]: bool(e.get("has_mask", True)) for e in manifest.entries(split)}
    try:
        for image_id in tqdm(ids, desc=f"evaluate {stage}", unit="img", mininterval=5):
            if not has_mask[image_id]:
                continue
            mask_path = spec.mask_path(image_id)
            if mask_path is None or not mask_path.is_file():
                continue
            gt = read_label_png(mask_path)
            array = index[image_id].read(image_id, dataset)
            if array.shape[-2:] != gt.shape:
                raise DataError(f"{index[image_id].path}: {image_id}/{dataset} has size {array.shape[-2:]}, "
                                f"its mask {mask_path} {gt.shape}")
            yield image_id, array, index[image_id].image_attrs(image_id), gt
    finally:
        for reader in set(index.values()):
            reader.close()


# ------------------------------------------------------------------ CAMs


@dataclass(frozen=True)
class CAMEvalConfig:
    dataset: DatasetSpec
    split: str = "train"
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS

    def __post_init__(self) -> None:
        if not self.thresholds or any(not 0.0 <= t <= 1.0 for t in self.thresholds):
            raise ValueError(f"evaluation.cam_thresholds must be a non-empty list in [0, 1], got {list(self.thresholds)}")


def cam_labels_at_thresholds(cams: np.ndarray, class_keys: Sequence[int], thresholds: Sequence[float]) -> Iterator[np.ndarray]:
    """IRNet's eval_cam labels (pad with a constant background ``t``, argmax, class keys) for each ``t``."""
    lut = np.asarray([0, *[int(k) for k in class_keys]], dtype=np.int64)
    if cams.shape[0] == 0:
        for _ in thresholds:
            yield np.zeros(cams.shape[1:], dtype=np.int64)
        return
    best = cams.max(axis=0)
    arg = lut[cams.argmax(axis=0) + 1]
    for t in thresholds:
        yield np.where(best > t, arg, 0)


def evaluate_cams(cfg: CAMEvalConfig, manifest: Manifest, cam_paths: Sequence[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """CAM mIoU at every threshold; the JSON summary (at the best threshold) and the per-class table."""
    n = cfg.dataset.num_classes
    matrices = [ConfusionMatrix(n) for _ in cfg.thresholds]
    n_images = 0
    for _, cams, attrs, gt in iter_with_masks(cfg.dataset, manifest, cfg.split, cam_paths, "cam", "cam"):
        keys = attrs.get("class_keys", [])
        for matrix, pred in zip(matrices, cam_labels_at_thresholds(cams, keys, cfg.thresholds)):
            matrix.update(pred, gt)
        n_images += 1
    curve = [{"threshold": float(t), "miou": m.miou() if n_images else None} for t, m in zip(cfg.thresholds, matrices)]
    result: dict[str, Any] = {"split": cfg.split, "n_images": n_images, "thresholds": list(cfg.thresholds)}
    if n_images == 0:
        log.warning("CAM evaluation: %s", NO_MASKS)
        result.update({"miou": None, "iou": {}, "best_threshold": None, "threshold_curve": curve, "note": NO_MASKS})
        return result, []
    best = int(np.nanargmax([np.nan if p["miou"] is None else p["miou"] for p in curve]))
    result.update(matrices[best].as_dict(cfg.dataset.classes))
    result.update({"best_threshold": float(cfg.thresholds[best]), "threshold_curve": curve})
    if len(cfg.thresholds) > 1 and cfg.thresholds[best] in (min(cfg.thresholds), max(cfg.thresholds)):
        result["note"] = "best threshold at the edge of the sweep: widen evaluation.cam_thresholds"
        log.warning("CAM evaluation: %s (best %.2f)", result["note"], cfg.thresholds[best])
    log.info("CAM mIoU %.4f at background threshold %.2f (%d images)", result["miou"], cfg.thresholds[best], n_images)
    return result, matrices[best].table(cfg.dataset.classes)


TABLE_COLUMNS = ("class_id", "class", "iou", "precision", "recall", "gt_pixels", "pred_pixels", "true_positives")


# ------------------------------------------------------------------ seeds


@dataclass(frozen=True)
class SeedEvalConfig:
    dataset: DatasetSpec
    split: str = "train"


def evaluate_seeds(cfg: SeedEvalConfig, manifest: Manifest, seed_paths: Sequence[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Seed precision/coverage/mIoU of the confident pixels; the JSON summary and the per-class table."""
    metrics = SeedMetrics(cfg.dataset.num_classes)
    n_images = 0
    for _, seed, _, gt in iter_with_masks(cfg.dataset, manifest, cfg.split, seed_paths, "seeds", "seed"):
        metrics.update(seed, gt)
        n_images += 1
    with ArtifactReader(seed_paths[0], expect_stage="seeds") as reader:  # the settings that made the seeds
        settings = {k: reader.attrs.get(k) for k in ("fg_threshold", "bg_threshold", "crf")}
    result: dict[str, Any] = {"split": cfg.split, "n_images": n_images, "seed_settings": settings}
    if n_images == 0:
        log.warning("seed evaluation: %s", NO_MASKS)
        result.update({"miou": None, "iou": {}, "precision": None, "coverage": None, "note": NO_MASKS})
        return result, []
    result.update(metrics.as_dict(cfg.dataset.classes))
    log.info("seeds: precision %.4f, coverage %.4f, mIoU of confident pixels %.4f (%d images)",
             result["precision"], result["coverage"], result["miou"] or float("nan"), n_images)
    return result, metrics.table(cfg.dataset.classes)


SEED_TABLE_COLUMNS = ("class_id", "class", "iou", "precision", "recall", "gt_pixels", "confident_gt_pixels",
                      "pred_pixels", "true_positives")


# ------------------------------------------------------------------ segmentation (DeepLab predictions)


@dataclass(frozen=True)
class SegmentationEvalConfig:
    """mIoU of a mode's segmenter predictions (stage 'predictions', dataset 'label') on a split."""

    dataset: DatasetSpec
    mode: str
    split: str = "val"


def evaluate_segmentation(cfg: SegmentationEvalConfig, manifest: Manifest,
                          prediction_paths: Sequence[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One confusion matrix over the split (255 in the GT ignored); the JSON summary and the per-class table."""
    matrix = ConfusionMatrix(cfg.dataset.num_classes)
    n_images = 0
    for _, pred, _, gt in iter_with_masks(cfg.dataset, manifest, cfg.split, prediction_paths, "predictions", "label"):
        matrix.update(pred, gt)
        n_images += 1
    with ArtifactReader(prediction_paths[0], expect_stage="predictions") as reader:  # how they were predicted
        settings = {k: reader.attrs.get(k) for k in ("test_scales", "flip", "fusion", "crf")}
    result: dict[str, Any] = {"mode": cfg.mode, "split": cfg.split, "n_images": n_images, "inference": settings}
    if n_images == 0:
        log.warning("segmentation evaluation: %s", NO_MASKS)
        result.update({"miou": None, "iou": {}, "note": NO_MASKS})
        return result, []
    result.update(matrix.as_dict(cfg.dataset.classes))
    log.info("DeepLab %s: mIoU %.4f on %s (%d images)", cfg.mode, result["miou"] or float("nan"), cfg.split, n_images)
    return result, matrix.table(cfg.dataset.classes)


