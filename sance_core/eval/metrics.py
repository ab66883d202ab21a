"""Segmentation metrics accumulated over a whole split: one confusion matrix, never per-image means.

Conventions (the same for CAMs, seeds, pseudo labels and predictions):

* Ground-truth pixels equal to 255 (void) are ignored; any other ground-truth value outside
  ``0..num_classes-1`` is an error (the dataset check should have caught it).
* A prediction outside ``0..num_classes-1`` (e.g. 255 "unsure", or a class id from another
  label space) is counted as **wrong**: it is a miss for the ground-truth class and a false
  positive of no class. It is never wrapped into the class range. The matrix keeps such
  pixels in an extra last column.
* IoU of class c = TP / (GT_c + P_c - TP). ``miou`` is the mean over the classes whose union
  is non-zero (present in the ground truth or predicted); a class absent from both has IoU
  NaN (``None`` in JSON) and is left out of the mean. PASCAL VOC's official score averages
  over all C + 1 classes; on a full VOC split every class is present so the two agree. This
  is also what IRNet (chainercv's ``calc_semantic_segmentation_iou`` + ``nanmean``) reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sance_core.constants import IGNORE_INDEX


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in values]


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def label_average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Non-interpolated average precision of one label's ranking: ``scores [N]``, ``positives [N]``.

    The items ranked by descending score (ties in input order); the mean, over the positive
    items, of the precision among the items ranked at or above each. NaN when no item is positive.
    """
    positives = np.asarray(positives).astype(bool)
    if not positives.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = positives[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


class ConfusionMatrix:
    """Streaming confusion matrix over ``num_classes`` labels (rows: ground truth, columns: prediction).

    ``matrix`` is ``[num_classes, num_classes + 1]``; the last column counts predictions
    outside the class range (wrong for every ground-truth class).
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.matrix = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add one image (or any batch of pixels). ``mask`` (optional, bool) selects the pixels to count."""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
        valid = gt != IGNORE_INDEX
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != gt.shape:
                raise ValueError(f"mask shape {mask.shape} differs from ground-truth shape {gt.shape}")
            valid &= mask
        g = gt[valid].astype(np.int64)
        p = pred[valid].astype(np.int64)
        if g.size and (g.min() < 0 or g.max() >= self.num_classes):
            bad = np.unique(g[(g < 0) | (g >= self.num_classes)])
            raise ValueError(f"ground-truth label(s) {bad.tolist()} outside 0..{self.num_classes - 1} (255 = ignore)")
        n = self.num_classes
        p = np.where((p < 0) | (p >= n), n, p)  # out of range -> the 'wrong' column, never wrapped
        self.matrix += np.bincount(g * (n + 1) + p, minlength=n * (n + 1)).reshape(n, n + 1)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge matrices of {other.num_classes} and {self.num_classes} classes")
        self.matrix += other.matrix
        return self

    @property
    def true_positives(self) -> np.ndarray:
        return np.diag(self.matrix[:, : self.num_classes]).astype(np.int64)

    @property
    def gt_pixels(self) -> np.ndarray:
        """Valid ground-truth pixels per class (all predictions, including out-of-range ones)."""
        return self.matrix.sum(axis=1)

    @property
    def pred_pixels(self) -> np.ndarray:
        """Pixels predicted as each class (over valid ground truth)."""
        return self.matrix[:, : self.num_classes].sum(axis=0)

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from both ground truth and prediction."""
        tp = self.true_positives
        return _safe_div(tp, self.gt_pixels + self.pred_pixels - tp)

    def miou(self) -> float:
        """Mean IoU over the classes with non-zero union (NaN when nothing was counted)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def precision(self) -> np.ndarray:
        return _safe_div(self.true_positives, self.pred_pixels)

    def recall(self) -> np.ndarray:
        return _safe_div(self.true_positives, self.gt_pixels)

    def pixel_accuracy(self) -> float:
        return float(_safe_div(self.true_positives.sum(), self.total))

    def as_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        """JSON-ready summary: ``miou``, per-class ``iou``/``precision``/``recall`` (None when undefined)."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for a {self.num_classes}-class matrix")
        names = list(class_names)
        miou = self.miou()
        return {
            "miou": None if not np.isfinite(miou) else miou,
            "iou": dict(zip(names, _nan_to_none(self.iou()))),
            "precision_per_class": dict(zip(names, _nan_to_none(self.precision()))),
            "recall_per_class": dict(zip(names, _nan_to_none(self.recall()))),
            "pixel_accuracy": None if self.total == 0 else self.pixel_accuracy(),
            "n_pixels": self.total,
            "miou_convention": "mean IoU over classes present in ground truth or prediction (non-zero union)",
        }

    def table(self, class_names: Sequence[str]) -> list[dict[str, Any]]:
        """One row per class: IoU, precision, recall and pixel counts (for the TSV files)."""
        iou, prec, rec = self.iou(), self.precision(), self.recall()
        return [
            {"class_id": c, "class": name, "iou": _nan_to_none(iou[c:c + 1])[0],
             "precision": _nan_to_none(prec[c:c + 1])[0], "recall": _nan_to_none(rec[c:c + 1])[0],
             "gt_pixels": int(self.gt_pixels[c]), "pred_pixels": int(self.pred_pixels[c]),
             "true_positives": int(self.true_positives[c])}
            for c, name in enumerate(class_names)
        ]


class SeedMetrics:
    """Quality of a partial label map (seeds: 255 = unsure) against ground truth.

    * ``precision``: fraction of the confident (non-255) seed pixels that carry the right
      class, over pixels with valid ground truth.
    * ``coverage``: fraction of the valid (non-void) ground-truth pixels that get a confident seed.
    * per-class recall: fraction of the ground-truth pixels of class c that get the seed c.
    * ``miou``: the confusion matrix of the confident pixels only (what the seeds say where they speak).
    * ``composition``: where the object pixels (ground truth 1..C) and the background pixels go -
      own class / another class / background / unsure, and background / an object class / unsure;
      shares of each group's valid pixels. The share of object pixels seeded as *background* is what
      teaches the contour branch an edge inside the objects (issue 17's diagnostic).
    """

    def __init__(self, num_classes: int, unsure: int = IGNORE_INDEX) -> None:
        self.confident = ConfusionMatrix(num_classes)
        self.gt_count = np.zeros(num_classes, dtype=np.int64)
        self.unsure = unsure

    @property
    def num_classes(self) -> int:
        return self.confident.num_classes

    def update(self, seed: np.ndarray, gt: np.ndarray) -> None:
        seed = np.asarray(seed)
        gt = np.asarray(gt)
        if seed.shape != gt.shape:
            raise ValueError(f"seed shape {seed.shape} differs from ground-truth shape {gt.shape}")
        self.confident.update(seed, gt, mask=seed != self.unsure)
        g = gt[gt != IGNORE_INDEX].astype(np.int64)  # range already checked by the matrix update
        self.gt_count += np.bincount(g, minlength=self.num_classes)[: self.num_classes]

    def precision(self) -> float:
        return float(_safe_div(self.confident.true_positives.sum(), self.confident.total))

    def coverage(self) -> float:
        return float(_safe_div(self.confident.total, self.gt_count.sum()))

    def recall_per_class(self) -> np.ndarray:
        return _safe_div(self.confident.true_positives, self.gt_count)

    def composition(self) -> dict[str, dict[str, float | None]]:
        """Shares of the object and the background pixels of the ground truth by what the seeds say."""
        m = self.confident.matrix  # [gt, pred]; the last column: seeds outside the class range
        obj, bg = m[1:], m[0]
        n_obj, n_bg = int(self.gt_count[1:].sum()), int(self.gt_count[0])
        own = int(np.trace(m[1:, 1:self.num_classes]))
        to_bg = int(obj[:, 0].sum())
        objects = {"own_class": own, "other_class": int(obj.sum()) - own - to_bg, "background": to_bg,
                   "unsure": n_obj - int(obj.sum())}
        background = {"background": int(bg[0]), "object": int(bg.sum() - bg[0]), "unsure": n_bg - int(bg.sum())}

        def shares(counts: dict[str, int], total: int) -> dict[str, float | None]:
            return {k: (v / total if total else None) for k, v in counts.items()}

        return {"object_pixels": shares(objects, n_obj), "background_pixels": shares(background, n_bg)}

    def as_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        out = self.confident.as_dict(class_names)
        p, c = self.precision(), self.coverage()
        out.update({
            "precision": None if not np.isfinite(p) else p,
            "coverage": None if not np.isfinite(c) else c,
            # per-class recall over *all* valid gt pixels (unsure seeds count as misses)
            "recall_per_class": dict(zip(class_names, _nan_to_none(self.recall_per_class()))),
            "n_gt_pixels": int(self.gt_count.sum()),
            "n_confident_pixels": self.confident.total,
            "composition": self.composition(),
        })
        return out

    def table(self, class_names: Sequence[str]) -> list[dict[str, Any]]:
        rows = self.confident.table(class_names)
        recall = _nan_to_none(self.recall_per_class())
        for row, r, n in zip(rows, recall, self.gt_count):
            row["confident_gt_pixels"] = row["gt_pixels"]
            row["gt_pixels"] = int(n)
            row["recall"] = r
        return rows
