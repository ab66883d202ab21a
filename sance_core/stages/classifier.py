"""Stage ``train_classifier``: the multi-label ResNet classifier whose CAMs seed the pipeline.

The network is :class:`sance_core.models.classifier.CAMClassifier` (IRNet's ``resnet50_cam``).

Training: multi-label soft-margin loss, SGD with momentum and a poly learning rate, the new
head at ``head_lr_mult`` times the backbone's rate (IRNet: 10x), random scale / flip / crop.
Data order and augmentation are functions of (seed, epoch, position), so a run resumed from a
checkpoint (kept in ``resume_dir``, outside the declared outputs) ends with the same weights
as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sance_core.models.backbones import BACKBONES
from sance_core.models.classifier import MODEL_KIND, CAMClassifier
from sance_core.config import to_dict
from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.io.images import DataError, read_image
from sance_core.data.transforms import normalize_image, random_scale_flip_crop
from sance_core.runtime import resolve_device, seed_everything
from sance_core.engine.training import CheckpointManager, History, check_finite, save_model, set_poly_lr

log = logging.getLogger(__name__)

# keys of config.json that must match when a trained classifier is loaded for CAMs
@dataclass(frozen=True)
class ClassifierConfig:
    """Hyper-parameters of the classifier (paper / IRNet values in the comments)."""

    dataset: DatasetSpec
    split: str = "train"
    backbone: str = "resnet18"  # paper: resnet101 (VOC), resnet50 (COCO)
    weights: str | None = None  # local ImageNet state dict; paper: ImageNet-pretrained
    output_stride: int = 16
    zero_init_residual: bool = True  # random init only: each residual branch starts as identity
    epochs: int = 5  # paper: 5
    batch_size: int = 16  # paper: 16
    crop_size: int = 128  # paper: 512
    scale_range: tuple[float, float] = (0.7, 1.3)  # random rescale before the crop
    lr: float = 0.1  # paper: 0.1, poly decay (power 0.9)
    head_lr_mult: float = 10.0  # IRNet: the new 1x1 head learns 10x faster
    weight_decay: float = 1e-4  # paper: 1e-4
    momentum: float = 0.9  # paper: 0.9
    poly_power: float = 0.9
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
        for key in ("epochs", "batch_size", "crop_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {list(self.scale_range)}")
        if self.lr <= 0 or self.head_lr_mult <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("need lr > 0, head_lr_mult > 0, weight_decay >= 0 and 0 <= momentum < 1")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
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


class EpochBatches:
    """Batches of ``(index, sample_seed)`` for one epoch: a seeded permutation, last partial batch dropped."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start_batch: int = 0) -> None:
        self.batch_size = min(batch_size, n)
        self.n_batches = n // self.batch_size
        self.order = np.random.default_rng([seed, epoch]).permutation(n)
        self.seed, self.epoch, self.start_batch = seed, epoch, start_batch

    def __len__(self) -> int:
        return self.n_batches - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for b in range(self.start_batch, self.n_batches):
            positions = range(b * self.batch_size, (b + 1) * self.batch_size)
            yield [(int(self.order[p]), _sample_seed(self.seed, self.epoch, p)) for p in positions]


def _sample_seed(seed: int, epoch: int, position: int) -> int:
    return int(np.random.default_rng([seed, epoch, position, 7]).integers(2**31))


def load_training_set(cfg: ClassifierConfig, manifest_path: str | Path) -> ClassificationData:
    """Ids and label vectors of ``cfg.split`` from the manifest; refuses a class list that differs."""
    manifest = Manifest.load(manifest_path)
    if list(manifest.classes) != list(cfg.dataset.classes):
        raise DataError(
            f"{manifest_path}: manifest classes {manifest.classes} differ from data.classes {list(cfg.dataset.classes)}"
        )
    ids = manifest.ids(cfg.split)
    if not ids:
        raise DataError(f"{manifest_path}: split {cfg.split!r} has no images")
    labels = np.stack([manifest.label_vector(cfg.split, i) for i in ids])
    if not labels.any():
        raise DataError(f"{manifest_path}: no image of split {cfg.split!r} has a foreground label")
    return ClassificationData(cfg.dataset, ids, labels, cfg.crop_size, cfg.scale_range)


# --------------------------------------------------------------------------- metrics


def batch_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Per-label accuracy at logit 0 and the mean average precision over classes present in the batch."""
    logits, labels = logits.detach().float().cpu(), labels.detach().float().cpu()
    accuracy = ((logits > 0).float() == labels).float().mean().item()
    aps = []
    for c in range(labels.shape[1]):
        positives = labels[:, c]
        if positives.sum() == 0:
            continue
        order = torch.argsort(logits[:, c], descending=True)
        hits = positives[order]
        precision = torch.cumsum(hits, 0) / torch.arange(1, len(hits) + 1)
        aps.append(float((precision * hits).sum() / hits.sum()))
    return {"accuracy": accuracy, "map": float(np.mean(aps)) if aps else float("nan")}


# --------------------------------------------------------------------------- training


def train(cfg: ClassifierConfig, data: ClassificationData, history: History | None = None,
          stop_after_step: int | None = None) -> tuple[CAMClassifier, dict[str, float]]:
    """Train (resuming from ``cfg.resume_dir`` when it holds a checkpoint); returns the model and last metrics.

    ``stop_after_step`` ends the run early after a checkpoint at that global step, as a crash
    right after a checkpoint would (tests use it to check that resuming repeats the run).
    """
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model = CAMClassifier(len(cfg.dataset.classes) - 1, cfg.backbone, cfg.weights, cfg.output_stride,
                          cfg.zero_init_residual).to(device)
    optimizer = torch.optim.SGD(
        model.param_groups(cfg.lr, cfg.head_lr_mult, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum
    )
    steps_per_epoch = len(EpochBatches(len(data), cfg.batch_size, cfg.seed, 0))
    total_steps = steps_per_epoch * cfg.epochs
    checkpoints = CheckpointManager(cfg.resume_dir, _fingerprint(cfg)) if cfg.resume_dir else None
    resume_history = Path(cfg.resume_dir) / "history.csv" if cfg.resume_dir else None
    step = 0
    if checkpoints is not None:
        state = checkpoints.load_latest(model, optimizer)
        if state is not None:
            step = int(state["step"])
            if history is not None and resume_history is not None:
                history.load(resume_history)
                history.rows = [r for r in history.rows if r.get("step", 0) <= step]
    log.info("training %s on %d images: %d epochs x %d steps, batch %d, crop %d, device %s",
             cfg.backbone, len(data), cfg.epochs, steps_per_epoch, min(cfg.batch_size, len(data)),
             cfg.crop_size, device)
    metrics: dict[str, float] = {}
    last_save = time.monotonic()
    model.train()
    progress = tqdm(total=total_steps, initial=step, desc="classifier", unit="step", mininterval=5)
    while step < total_steps:
        epoch, start_batch = divmod(step, steps_per_epoch)
        batches = EpochBatches(len(data), cfg.batch_size, cfg.seed, epoch, start_batch)
        loader = DataLoader(data, batch_sampler=batches, num_workers=cfg.workers,
                            pin_memory=device.type == "cuda", persistent_workers=False)
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            lr = set_poly_lr(optimizer, step, total_steps, cfg.poly_power)
            logits = model(images)
            loss = F.multilabel_soft_margin_loss(logits, labels)
            check_finite(step, loss=loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            metrics = {"step": step, "epoch": epoch + 1, "loss": float(loss.item()),
                       "lr": float(lr), **batch_metrics(logits, labels)}
            if history is not None:
                history.append(**metrics)
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.2f}", refresh=False)
            end_of_epoch = step % steps_per_epoch == 0
            due = time.monotonic() - last_save >= cfg.checkpoint_interval
            if checkpoints is not None and ((end_of_epoch and due) or step == stop_after_step):
                # history first: a crash between the two leaves an older checkpoint, and a resume keeps
                # only the history rows up to its step, so both stay consistent
                if history is not None and resume_history is not None:
                    history.save(resume_history)
                checkpoints.save(step, epoch, model, optimizer, {"metrics": metrics})
                last_save = time.monotonic()
            if step == stop_after_step:
                progress.close()
                return model, metrics
        log.info("epoch %d/%d: loss %.4f, accuracy %.3f", epoch + 1, cfg.epochs,
                 metrics.get("loss", float("nan")), metrics.get("accuracy", float("nan")))
    progress.close()
    return model, metrics


def _fingerprint(cfg: ClassifierConfig) -> dict[str, Any]:
    """The settings a checkpoint must share to be resumed (not where or how fast it runs)."""
    return {k: v for k, v in to_dict(cfg).items()
            if k not in ("device", "workers", "resume_dir", "checkpoint_interval")}


def run_stage(cfg: ClassifierConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, float]:
    """Input ``manifest``; outputs ``model`` (model.pt), ``config`` (config.json), ``history``, ``curve``."""
    data = load_training_set(cfg, inputs["manifest"])
    out_dir = Path(outputs["model"]).parent
    for key in ("config", "history", "curve"):
        if Path(outputs[key]).parent != out_dir:
            raise ValueError(f"outputs model and {key} must share one folder ({outputs['model']}, {outputs[key]})")
    out_dir.mkdir(parents=True, exist_ok=True)
    history = History(outputs["history"])
    model, metrics = train(cfg, data, history)
    history.save(outputs["history"])
    history.plot(outputs["curve"], ["loss", "lr", "accuracy", "map"], title=f"classifier ({cfg.backbone})")
    save_model(model.cpu(), model_config(cfg), out_dir)
    if cfg.resume_dir:  # the model is saved: a later run with other settings must start afresh
        CheckpointManager(cfg.resume_dir).clear()
        (Path(cfg.resume_dir) / "history.csv").unlink(missing_ok=True)
    log.info("classifier done: final loss %.4f, batch accuracy %.3f, batch mAP %.3f",
             metrics.get("loss", float("nan")), metrics.get("accuracy", float("nan")), metrics.get("map", float("nan")))
    return metrics
