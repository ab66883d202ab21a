"""Image-level evaluation of the CAM classifier (stage 2) on a split it did not train on.

A weakly supervised user has image tags for every split and masks for none, so the classifier's
own task, telling which classes an image holds, is the one stage whose quality can always be
measured. Its scores say whether every class was learned before any CAM is looked at (a class
the classifier cannot rank has no CAM to seed from; one it ranks well may still have CAMs that
cover only its discriminative part), and they let a classifier setting be chosen
without a localisation result (docs/RESULTS.md, "The classifier's rate, and the classifier's two
roles").

Each image is scored whole, at its own size, and with its horizontal flip (logits averaged), as
CAM extraction sees it at scale 1.0. Per class: the non-interpolated average precision of the
images ranked by logit (:func:`sance_core.eval.metrics.label_average_precision`, the one the
training log uses), and precision / recall of the labels called at logit 0 (probability 0.5).
mAP is the mean AP over the classes that occur in the split; accuracy is over all image-class
labels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.eval.metrics import label_average_precision

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("class_id", "class", "ap", "precision", "recall", "images", "called")
NO_IMAGES = "the split has no images: nothing evaluated"


@dataclass(frozen=True)
class ClassifierEvalConfig:
    """What the classifier is scored on; ``backbone`` is checked against the model's config.json."""

    dataset: DatasetSpec
    split: str = "val"
    backbone: str = "resnet101"  # the classifier's (paper: resnet101 on VOC)
    flip: bool = True  # each image with its horizontal flip, as CAM extraction
    device: str = "auto"


def label_scores(logits: np.ndarray, labels: np.ndarray,
                 classes: Sequence[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Scores of image-level predictions: ``logits, labels [N, C]`` over the ``C`` foreground ``classes``.

    Returns the summary (``map``, ``ap`` per class, ``accuracy``, ``n_images``) and one table row per
    class. A class no image of the split holds has AP ``None`` and is left out of the mAP.
    """
    logits = np.asarray(logits, dtype=np.float64)
    truth = np.asarray(labels) > 0
    if logits.shape != truth.shape or logits.ndim != 2 or logits.shape[1] != len(classes):
        raise ValueError(f"logits {logits.shape} and labels {truth.shape} must both be [N, {len(classes)}] "
                         f"(one column per foreground class {list(classes)})")
    called = logits > 0
    rows, aps = [], {}
    for c, name in enumerate(classes):
        ap = label_average_precision(logits[:, c], truth[:, c])
        tp = int((called[:, c] & truth[:, c]).sum())
        n_called, n_true = int(called[:, c].sum()), int(truth[:, c].sum())
        aps[name] = None if np.isnan(ap) else ap
        rows.append({"class_id": c + 1, "class": name, "ap": aps[name],
                     "precision": tp / n_called if n_called else None,
                     "recall": tp / n_true if n_true else None,
                     "images": n_true, "called": n_called})
    present = [a for a in aps.values() if a is not None]
    result = {
        "map": float(np.mean(present)) if present else None,
        "ap": aps,
        "accuracy": float((called == truth).mean()) if truth.size else None,
        "n_images": int(truth.shape[0]),
    }
    return result, rows


def classifier_logits(model: Any, spec: DatasetSpec, manifest: Manifest, split: str,
                      flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Logits and tag vectors ``[N, C]`` of every image of ``split``, in manifest order.

    One forward pass per image (images differ in size), with its flip in the same batch.
    """
    import torch
    from tqdm import tqdm

    from sance_core.data.transforms import normalize_image
    from sance_core.io.images import read_image

    device = next(model.parameters()).device
    logits, labels = [], []
    with torch.no_grad():
        for image_id in tqdm(manifest.ids(split), desc="classify", unit="img", mininterval=5):
            x = normalize_image(read_image(spec.image_path(image_id)))[None].to(device)
            batch = torch.cat([x, x.flip(-1)]) if flip else x
            logits.append(model(batch).float().mean(0).cpu().numpy())
            labels.append(manifest.label_vector(split, image_id))
    n = len(spec.classes) - 1
    if not logits:
        return np.zeros((0, n)), np.zeros((0, n))
    return np.stack(logits), np.stack(labels)


def evaluate_classifier(cfg: ClassifierEvalConfig, manifest: Manifest,
                        model_path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Scores of the classifier at ``model_path`` (beside its config.json) on ``cfg.split`` of ``manifest``
    (loaded with :func:`sance_core.data.dataset.load_manifest`, which refuses other classes)."""
    from sance_core.runtime import resolve_device
    from sance_core.stages.cam import load_classifier

    model = load_classifier(model_path, cfg.dataset.classes, cfg.backbone, resolve_device(cfg.device))
    logits, labels = classifier_logits(model, cfg.dataset, manifest, cfg.split, cfg.flip)
    result, rows = label_scores(logits, labels, cfg.dataset.classes[1:])
    result.update({"split": cfg.split, "flip": cfg.flip})
    missing = [r["class"] for r in rows if r["ap"] is None]
    if result["n_images"] == 0:
        result["note"] = NO_IMAGES
        log.warning("classifier evaluation: %s", NO_IMAGES)
    elif missing:
        result["note"] = f"no image of split {cfg.split!r} holds {missing}: left out of the mAP"
        log.warning("classifier evaluation: %s", result["note"])
    if result["map"] is not None:
        log.info("classifier mAP %.4f, label accuracy %.4f on %s (%d images)", result["map"], result["accuracy"],
                 cfg.split, result["n_images"])
    return result, rows
