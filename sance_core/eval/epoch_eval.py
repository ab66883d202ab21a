"""Pseudo-label mIoU of a SANCE model while it trains (paper Fig. 5): an end-of-epoch hook.

After each epoch the model makes pseudo labels of a fixed set of training images exactly as
stage 6 does (``predict_maps`` at one scale, then ``synthesize_label``: Eq. 6 propagation of the
mode's map - its segmentation map or the CAMs - ×4 upsampling, ``tau_b``, arg-max) and they are
scored against the ground-truth masks (one confusion matrix, void ignored). The paper's
observation: the baseline peaks after epoch 1 and degrades, SANCE keeps rising.

The hook is a callable ``(epoch, model) -> {"pseudo_miou": float}``; the training loop calls it
at every epoch end and leaves the model in training mode afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sance_core.data.dataset import DatasetSpec, load_sample
from sance_core.eval.metrics import ConfusionMatrix
from sance_core.io.store import open_shards
from sance_core.stages.pseudo_labels import MAP_SOURCES, SEG_BACKGROUNDS, predict_maps, synthesize_label

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochEvalConfig:
    """``sance.epoch_eval``: how many training images (the first ids of the split; 0 = off) and
    the synthesis settings of the mode (``pseudo_labels``; one scale, no flip)."""

    images: int = 0
    map: str = "seg"
    scale: float = 1.0
    radius: int = 5
    beta: float = 10.0
    exp_times: int = 8
    tau_b: float = 0.25
    normalize_seg: bool = True
    seg_background: str = "tau_b"

    def __post_init__(self) -> None:
        if self.images < 0:
            raise ValueError(f"sance.epoch_eval.images must be >= 0, got {self.images}")
        if self.map not in MAP_SOURCES:
            raise ValueError(f"sance.epoch_eval.map must be one of {', '.join(MAP_SOURCES)}; got {self.map!r}")
        if self.seg_background not in SEG_BACKGROUNDS:
            raise ValueError(f"sance.epoch_eval.seg_background must be one of {', '.join(SEG_BACKGROUNDS)}; "
                             f"got {self.seg_background!r}")
        if self.scale <= 0:
            raise ValueError(f"sance.epoch_eval.scale must be > 0, got {self.scale}")


class EpochEvaluator:
    """Pseudo-label mIoU of the first ``cfg.images`` ids on the current model.

    ``tags`` maps id -> present class ids; ``cam_paths`` are the CAM shards (needed for ``map: cam``).
    Images, masks and CAMs are read once, at construction.
    """

    def __init__(self, cfg: EpochEvalConfig, dataset: DatasetSpec, ids: Sequence[str],
                 tags: Mapping[str, Sequence[int]], cam_paths: Sequence[str | Path] = ()) -> None:
        self.cfg = cfg
        self.num_classes = len(dataset.classes)
        self.samples = []
        cams = open_shards(list(cam_paths), expect_stage="cam") if cfg.map == "cam" else {}
        if cfg.map == "cam" and not cams:
            raise ValueError("sance.epoch_eval with map 'cam' needs the CAM shards (input 'cam')")
        for image_id in list(ids)[: cfg.images]:
            image, mask = load_sample(dataset, image_id)
            if mask is None:
                raise ValueError(f"{dataset.mask_path(image_id)}: the per-epoch evaluation needs the masks")
            if cfg.map == "cam":
                reader = cams[image_id]
                scores = reader.read(image_id, "cam_stride4")
                keys = [int(k) for k in np.atleast_1d(reader.image_attrs(image_id).get("class_keys", []))]
            else:
                scores, keys = None, [int(k) for k in tags[image_id]]
            self.samples.append((image, mask, scores, keys))

    def __call__(self, epoch: int, model: torch.nn.Module) -> dict[str, float]:
        cfg = self.cfg
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        cm = ConfusionMatrix(self.num_classes)
        try:
            for image, mask, scores, keys in self.samples:
                contour, seg = predict_maps(model, image, (cfg.scale,), flip=False, device=device)
                background = None
                if scores is None:
                    if seg is None:
                        raise ValueError("map 'seg' needs a model with a segmentation branch")
                    scores = seg[keys]
                    background = seg[0] if cfg.seg_background == "map" else None
                label = synthesize_label(scores.reshape(len(keys), *contour.shape), keys, contour, mask.shape,
                                         cfg.radius, cfg.beta, cfg.exp_times, cfg.tau_b,
                                         normalize=cfg.map == "cam" or cfg.normalize_seg, background=background)
                cm.update(label, mask)
        finally:
            model.train(was_training)
        miou = float(cm.miou())
        log.info("epoch %d: pseudo-label mIoU %.4f on %d images (map %s)", epoch, miou, len(self.samples), cfg.map)
        return {"pseudo_miou": miou}
