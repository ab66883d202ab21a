"""Stage ``train_classifier``: the multi-label ResNet classifier whose CAMs seed the pipeline.

The network is :class:`sance_core.models.classifier.CAMClassifier` (IRNet's ``resnet50_cam``).

Training: multi-label soft-margin loss, SGD with momentum and a poly learning rate, the new
head at ``head_lr_mult`` times the backbone's rate (IRNet: 10x), random scale / flip / crop.
Two recipes (``recipe``):

- ``paper``: what IRNet's and SANCE's papers say - SGD with momentum 0.9 and weight decay 1e-4,
  every layer trained, BatchNorm in training mode.
- ``irnet``: what IRNet's code (``step/train_cam.py``, ``misc/torchutils.PolyOptimizer``,
  ``net/resnet50_cam.py``), which produced the CAMs the SANCE paper starts from, does:
  ``PolyOptimizer`` calls ``SGD(params, lr, weight_decay)``, so the weight decay lands in SGD's
  *momentum* slot (effective momentum 1e-4; the per-group weight decay 1e-4 still applies);
  every BatchNorm uses its ImageNet statistics (``FixedBatchNorm``); conv1, layer1 and layer2 get
  no gradient (the features are detached after layer2), so only layer3, layer4 and the head learn.

Data order and augmentation are functions of (seed, epoch, position), so a run resumed from a
checkpoint (kept in ``resume_dir``, outside the declared outputs) ends with the same weights
as an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sance_core.config import to_dict
from sance_core.data.dataset import DatasetSpec, load_split
from sance_core.data.transforms import normalize_image, random_scale_flip_crop
from sance_core.engine import (
    CheckpointPolicy,
    EpochBatches,
    History,
    LoopConfig,
    Resume,
    StepContext,
    StepResult,
    fingerprint,
    fit,
    input_fingerprint,
    training_outputs_dir,
    write_training_outputs,
)
from sance_core.engine.loop import EpochEndFn
from sance_core.engine.settings import check_training_config
from sance_core.eval.metrics import label_average_precision
from sance_core.io.images import DataError, read_image
from sance_core.models.backbones import BACKBONES
from sance_core.models.classifier import MODEL_KIND, RECIPES, CAMClassifier
from sance_core.runtime import resolve_device, seed_everything

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ClassifierConfig:
    """Hyper-parameters of the classifier (paper / IRNet values in the comments)."""

    dataset: DatasetSpec
    split: str = "train"
    backbone: str = "resnet101"  # paper: resnet101 (VOC), resnet50 (COCO)
    weights: str | None = "imagenet"  # paper: ImageNet-pretrained ('imagenet', a local .pth, or None)
    output_stride: int = 16  # IRNet: 16
    zero_init_residual: bool = False  # random init only: each residual branch starts as identity
    epochs: int = 5  # paper: 5
    batch_size: int = 16  # paper: 16
    crop_size: int = 512  # paper: 512
    scale_range: tuple[float, float] = (0.64, 1.28)  # IRNet: long side resized to 320..640 (VOC: 500 px)
    lr: float = 0.1  # paper: 0.1, poly decay (power 0.9)
    head_lr_mult: float = 10.0  # IRNet: the new 1x1 head learns 10x faster
    weight_decay: float = 1e-4  # paper: 1e-4
    momentum: float = 0.9  # paper: 0.9
    poly_power: float = 0.9
    recipe: str = "paper"  # 'paper' (the papers' text) or 'irnet' (IRNet's code); module docstring
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    resume_dir: str | None = None  # checkpoints for resuming; outside the declared outputs
    checkpoint_interval: float = 60.0  # seconds: checkpoint at an epoch end at most this often (0 = every epoch)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone: unknown {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        check_training_config(self, ("epochs", "batch_size", "crop_size"), "head_lr_mult")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe: unknown {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        if self.checkpoint_interval < 0:
            raise ValueError(f"checkpoint_interval must be >= 0 seconds, got {self.checkpoint_interval}")


def model_config(cfg: ClassifierConfig) -> dict[str, Any]:
    """What ``config.json`` holds: the architecture keys checked at load time, plus the full config."""
    return {
        "kind": MODEL_KIND,
        "backbone": cfg.backbone,
        "output_stride": cfg.output_stride,
        "classes": list(cfg.dataset.classes),
        "train": to_dict(cfg),
    }


# --------------------------------------------------------------------------- data


class ClassificationData(Dataset):
    """Augmented crops and multi-hot labels; a sample is addressed by ``(index, sample_seed)``.

    Passing the seed with the index makes the augmentation independent of worker processes
    and of where a resumed run starts.
    """

    def __init__(self, spec: DatasetSpec, ids: Sequence[str], labels: np.ndarray, crop_size: int,
                 scale_range: tuple[float, float]) -> None:
        self.spec = spec
        self.ids = list(ids)
        self.labels = labels
        self.crop_size = crop_size
        self.scale_range = scale_range

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, sample_seed = key
        image = read_image(self.spec.image_path(self.ids[index]))
        rng = np.random.default_rng(sample_seed)
        crop, _, _ = random_scale_flip_crop(image, [], rng, self.crop_size, tuple(self.scale_range))
        return normalize_image(crop), torch.from_numpy(self.labels[index])


def load_training_set(cfg: ClassifierConfig, manifest_path: str | Path) -> ClassificationData:
    """Ids and label vectors of ``cfg.split`` from the manifest; refuses a class list that differs."""
    manifest, ids = load_split(manifest_path, cfg.dataset, cfg.split)
    labels = np.stack([manifest.label_vector(cfg.split, i) for i in ids])
    if not labels.any():
        raise DataError(f"{manifest_path}: no image of split {cfg.split!r} has a foreground label")
    return ClassificationData(cfg.dataset, ids, labels, cfg.crop_size, cfg.scale_range)


# --------------------------------------------------------------------------- metrics


def batch_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Per-label accuracy at logit 0 and the mean average precision over classes present in the batch."""
    logits, labels = logits.detach().float().cpu(), labels.detach().float().cpu()
    accuracy = ((logits > 0).float() == labels).float().mean().item()
    scores, positives = logits.numpy(), labels.numpy() > 0
    aps = [label_average_precision(scores[:, c], positives[:, c]) for c in range(labels.shape[1]) if positives[:, c].any()]
    return {"accuracy": accuracy, "map": float(np.mean(aps)) if aps else float("nan")}


# --------------------------------------------------------------------------- training


def sgd_momentum(cfg: ClassifierConfig) -> float:
    """SGD's momentum: ``momentum`` (recipe 'paper'), or the weight decay (recipe 'irnet': IRNet's
    ``PolyOptimizer.__init__`` passes ``weight_decay`` as ``SGD``'s third positional argument, momentum)."""
    return cfg.weight_decay if cfg.recipe == "irnet" else cfg.momentum


def make_optimizer(model: CAMClassifier, cfg: ClassifierConfig) -> torch.optim.SGD:
    """SGD over the trainable backbone parameters (``lr``) and the head (``lr * head_lr_mult``), both with ``weight_decay``."""
    return torch.optim.SGD(model.param_groups(cfg.lr, cfg.head_lr_mult, cfg.weight_decay), lr=cfg.lr,
                           momentum=sgd_momentum(cfg))


def classifier_step(model: CAMClassifier, batch: tuple[torch.Tensor, torch.Tensor], ctx: StepContext) -> StepResult:
    """Multi-label soft-margin loss of one batch ``(images [B,3,H,W], labels [B,C])``; batch accuracy and mAP."""
    images, labels = (t.to(ctx.device, non_blocking=True) for t in batch)
    logits = model(images)
    loss = F.multilabel_soft_margin_loss(logits, labels)
    return StepResult(loss, {"loss": loss}, batch_metrics(logits, labels))


def train(cfg: ClassifierConfig, data: ClassificationData, history: History | None = None,
          stop_after_step: int | None = None, fingerprint_extra: Mapping[str, Any] | None = None,
          epoch_end: EpochEndFn | None = None,
          data_key: Mapping[str, str] | None = None) -> tuple[CAMClassifier, dict[str, float]]:
    """Train (resuming from ``cfg.resume_dir`` when it holds a checkpoint); returns the model and last metrics.

    ``data_key`` (:func:`~sance_core.engine.input_fingerprint` of the inputs): a checkpoint of other
    data is not resumed, the training starts over. ``fingerprint_extra`` joins the resume fingerprint; ``epoch_end``
    runs after every epoch (see :func:`sance_core.engine.fit`). ``stop_after_step`` ends the run
    early after a checkpoint at that global step, as a crash right after a checkpoint would.
    """
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model = CAMClassifier(len(cfg.dataset.classes) - 1, cfg.backbone, cfg.weights, cfg.output_stride,
                          cfg.zero_init_residual, cfg.recipe).to(device)
    optimizer = make_optimizer(model, cfg)

    def batches(epoch: int, start_batch: int) -> EpochBatches:
        return EpochBatches(len(data), cfg.batch_size, cfg.seed, epoch, start_batch, stream=7)

    steps_per_epoch = len(batches(0, 0))
    loop = LoopConfig("classifier", steps_per_epoch * cfg.epochs, steps_per_epoch, cfg.seed, cfg.poly_power,
                      workers=cfg.workers)
    resume = Resume(cfg.resume_dir, fingerprint(cfg, fingerprint_extra),
                    CheckpointPolicy(every_epochs=1, min_seconds=cfg.checkpoint_interval), data_key) if cfg.resume_dir else None
    log.info("training %s on %d images: %d epochs x %d steps, batch %d, crop %d, device %s",
             cfg.backbone, len(data), cfg.epochs, steps_per_epoch, min(cfg.batch_size, len(data)),
             cfg.crop_size, device)
    metrics = fit(model, optimizer, data, batches, classifier_step, loop, device, resume=resume, history=history,
                  epoch_end=epoch_end, stop_after_step=stop_after_step)
    return model, metrics


def run_stage(cfg: ClassifierConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, float]:
    """Input ``manifest``; outputs ``model`` (model.pt), ``config`` (config.json), ``history``, ``curve``."""
    data = load_training_set(cfg, inputs["manifest"])
    training_outputs_dir(outputs)
    history = History(outputs["history"])
    model, metrics = train(cfg, data, history, data_key=input_fingerprint(inputs))
    write_training_outputs(model, model_config(cfg), history, outputs, ["loss", "lr", "accuracy", "map"],
                           f"classifier ({cfg.backbone})", cfg.resume_dir)
    log.info("classifier done: final loss %.4f, batch accuracy %.3f, batch mAP %.3f",
             metrics.get("loss", float("nan")), metrics.get("accuracy", float("nan")), metrics.get("map", float("nan")))
    return metrics
