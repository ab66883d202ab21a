"""Stage ``train_sance``: train the SANCE model (paper §3.2) in one of three modes.

Modes (paper Table 1):

* ``irnet`` — the baseline: contour branch only, supervised by the CAM seeds (Eq. 4).
* ``sance_naive`` — contour + segmentation branch, supervised by CAM seeds (Eqs. 4, 5) and by
  online labels ``Y^b`` (Eqs. 6, 7) generated every iteration from the current maps.
* ``sance`` — as ``sance_naive`` plus the label refine module (Eq. 8): the online label of the
  branches named in ``online.refine_contour`` / ``online.refine_seg`` takes its background
  from the dense-CRF label of the segmentation map (or from a saliency map).

One iteration: forward the augmented batch; CAM-seed losses on the stride-4 seeds; then,
without gradients, propagate the segmentation map along the contour map inside the online
region (the pasted rectangle, :mod:`sance_core.ops.paste`, or the whole crop without paste),
label it, refine it, and add the online-label losses on that region only.

The dense CRF of the refine module runs per sample on the CPU at the maps' stride-4
resolution: the crop is area-downsampled by 4 and IRNet's CRF widths are divided by 4
(``online.crf``), which keeps the module cheap (a few hundred pixels per region).

Data order, augmentation and rectangles are functions of (seed, epoch, position), so a run
resumed from its checkpoint (``resume_dir``, outside the declared outputs) repeats an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sance_core.models.backbones import BACKBONES
from sance_core.config import to_dict
from sance_core.ops.crf import CRFConfig, crf_refine_probs
from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.io.images import DataError, read_image
from sance_core.constants import IGNORE_INDEX, MAP_STRIDE
from sance_core.io.palette import read_label_png
from sance_core.data.transforms import normalize_image, random_scale_flip_crop, resize_label
from sance_core.ops.losses import contour_loss, segmentation_loss
from sance_core.models.sance import (
    MODEL_KIND,
    SanceModel,
    build_sance_model,
    load_backbone_from_classifier,
)
from sance_core.ops.online_labels import make_online_label
from sance_core.ops.paste import PasteConfig, Rect, paste_patch, sample_patch, sample_rect, sample_rect_size
from sance_core.runtime import resolve_device, seed_everything
from sance_core.io.store import ArtifactError, open_shards
from sance_core.engine.training import CheckpointManager, History, check_finite, save_model, set_poly_lr

log = logging.getLogger(__name__)

__all__ = ["MODES", "ModeSpec", "SanceConfig", "OnlineConfig", "LossWeights", "train", "run_stage",
           "model_config", "online_targets", "crop_regions"]

REFINE_SOURCES = ("crf", "saliency")


@dataclass(frozen=True)
class ModeSpec:
    """What a mode trains: the segmentation branch, online labels, the label refine module."""

    seg_branch: bool
    online: bool
    refine: bool


MODES: dict[str, ModeSpec] = {
    "irnet": ModeSpec(seg_branch=False, online=False, refine=False),
    "sance_naive": ModeSpec(seg_branch=True, online=True, refine=False),
    "sance": ModeSpec(seg_branch=True, online=True, refine=True),
}


def mode_spec(mode: str) -> ModeSpec:
    try:
        return MODES[mode]
    except KeyError:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}") from None


@dataclass(frozen=True)
class LossWeights:
    """Weights of the four loss terms (the paper sums them with weight 1)."""

    cam_contour: float = 1.0
    cam_seg: float = 1.0
    online_contour: float = 1.0
    online_seg: float = 1.0

    def __post_init__(self) -> None:
        for k, v in to_dict(self).items():
            if v < 0:
                raise ValueError(f"loss_weights.{k} must be >= 0, got {v}")


def _refine_crf_default() -> CRFConfig:
    # IRNet's seed CRF (sxy 3 / 50, srgb 5, compat 3 / 10) with the widths divided by the stride 4
    return CRFConfig(gauss_sxy=1.0, gauss_compat=3.0, bilateral_sxy=12.5, bilateral_srgb=5.0,
                     bilateral_compat=10.0, iterations=10)


@dataclass(frozen=True)
class OnlineConfig:
    """Online labels (Eqs. 6-8); paper values: radius (delta) 3, beta (n) 10, exp_times (t) 8."""

    radius: int = 3
    beta: float = 10.0
    exp_times: int = 8
    tau_b: float = 0.25  # background constant of Eq. (7); the paper gives no value
    normalize: bool = True  # divide M^b by its global max before tau_b (DESIGN.md; IRNet's recipe; Eq. 7 is silent)
    warmup: float = 0.0  # fraction of the iterations before the online losses start (paper: 0)
    refine: str = "crf"  # Eq. (8) reference: "crf" (dense CRF of M) or "saliency"
    refine_contour: bool = True  # Table 4's best: refine the contour branch's online label only
    refine_seg: bool = False
    saliency_dir: str | None = None  # <root-relative or absolute folder>/<id>.png, 0 = background
    saliency_threshold: int = 128  # saliency >= threshold is foreground
    crf: CRFConfig = field(default_factory=_refine_crf_default)

    def __post_init__(self) -> None:
        if self.radius < 2:
            raise ValueError(f"online.radius must be >= 2, got {self.radius}")
        if self.exp_times < 0 or self.beta < 0:
            raise ValueError("online.exp_times and online.beta must be >= 0")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"online.warmup is a fraction of the iterations in [0, 1), got {self.warmup}")
        if self.refine not in REFINE_SOURCES:
            raise ValueError(f"online.refine must be one of {REFINE_SOURCES}, got {self.refine!r}")
        if self.refine == "saliency" and not self.saliency_dir:
            raise ValueError("online.refine is 'saliency' but online.saliency_dir is not set")


@dataclass(frozen=True)
class SanceConfig:
    """Hyper-parameters of SANCE training (paper §4.2 values in the comments)."""

    dataset: DatasetSpec
    mode: str = "sance"
    split: str = "train"
    backbone: str = "resnet50"  # paper: resnet101 (VOC), resnet50 (COCO)
    weights: str | None = None  # local ImageNet state dict; paper: ImageNet-pretrained
    init_from_classifier: bool = False  # start the backbone from the CAM classifier (no ImageNet file)
    output_stride: int = 8  # paper: 8 (IRNet baseline in Table 1: 16)
    frozen_bn: bool = False
    contour_channels: int = 32  # IRNet: 32 per stage
    aspp_rates: tuple[int, ...] = (6, 12, 18, 24)  # DeepLab-v2
    epochs: int = 16  # paper: 16
    batch_size: int = 10  # paper: 10
    crop_size: int = 512  # paper: 512
    scale_range: tuple[float, float] = (0.9, 1.1)  # paper: random scaling (range not given)
    lr: float = 2.5e-4  # paper: 2.5e-4 for the backbone, poly decay
    new_lr_mult: float = 10.0  # paper: new layers x10
    weight_decay: float = 5e-4  # paper: 5e-4
    momentum: float = 0.9  # paper: 0.9
    poly_power: float = 0.9
    grad_clip: float = 0.0  # max global gradient norm; 0 = no clipping (paper: none)
    contour_radius: int = 10  # paper: delta = delta-hat = 10 for Eq. (4)
    contour_power: float = 1.0  # paper: n = 1 for Eq. (4)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    paste: PasteConfig = field(default_factory=PasteConfig)
    amp: bool = False  # mixed precision (CUDA only)
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    resume_dir: str | None = None

    def __post_init__(self) -> None:
        mode_spec(self.mode)
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone: unknown {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {self.output_stride}")
        if self.weights and self.init_from_classifier:
            raise ValueError("set either weights (an ImageNet file) or init_from_classifier, not both")
        for key in ("epochs", "batch_size", "crop_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.crop_size % MAP_STRIDE:
            raise ValueError(f"crop_size must be a multiple of {MAP_STRIDE} (the maps' stride), got {self.crop_size}")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {list(self.scale_range)}")
        if self.lr <= 0 or self.new_lr_mult <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("need lr > 0, new_lr_mult > 0, weight_decay >= 0 and 0 <= momentum < 1")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if self.contour_radius < 2:
            raise ValueError(f"contour_radius must be >= 2, got {self.contour_radius}")
        if self.paste.enabled and self.paste.align % MAP_STRIDE:
            raise ValueError(f"paste.align must be a multiple of {MAP_STRIDE}, got {self.paste.align}")

    @property
    def spec(self) -> ModeSpec:
        return mode_spec(self.mode)


# --------------------------------------------------------------------------- data


class SanceData(Dataset):
    """Augmented crops with their stride-4 CAM seeds, online region and (optional) saliency.

    A sample is addressed by ``(index, sample_seed, rect_h, rect_w)``; ``rect_h == 0`` means
    no paste (the online region is the whole crop).
    """

    def __init__(self, cfg: SanceConfig, ids: Sequence[str], tags: np.ndarray, seed_paths: Sequence[str]) -> None:
        self.cfg = cfg
        self.ids = list(ids)
        self.tags = tags
        self.seed_paths = list(seed_paths)
        self._seeds: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def seeds(self) -> dict[str, Any]:
        if self._seeds is None:  # opened lazily: never across a fork
            self._seeds = open_shards(self.seed_paths, expect_stage="seeds")
        return self._seeds

    def _saliency(self, image_id: str, shape: tuple[int, int]) -> np.ndarray:
        folder = Path(self.cfg.online.saliency_dir or "")
        if not folder.is_absolute():
            folder = Path(self.cfg.dataset.root) / folder
        path = folder / f"{image_id}.png"
        if not path.is_file():
            raise DataError(f"{path}: saliency map not found (online.saliency_dir)")
        sal = read_label_png(path)
        if sal.shape != shape:
            raise DataError(f"{path}: saliency size {sal.shape} differs from the image size {shape}")
        return (sal >= self.cfg.online.saliency_threshold).astype(np.uint8)

    def __getitem__(self, key: tuple[int, int, int, int]) -> dict[str, torch.Tensor]:
        index, sample_seed, rect_h, rect_w = key
        cfg = self.cfg
        image_id = self.ids[index]
        image = read_image(cfg.dataset.image_path(image_id))
        seed = self.seeds()[image_id].read(image_id, "seed")
        if seed.shape != image.shape[:2]:
            raise DataError(f"seeds of {image_id}: size {seed.shape} differs from the image {image.shape[:2]}")
        maps = [seed]
        use_sal = cfg.spec.refine and cfg.online.refine == "saliency"
        if use_sal:
            maps.append(self._saliency(image_id, image.shape[:2]))
        rng = np.random.default_rng(sample_seed)
        crop, crops, valid = random_scale_flip_crop(image, maps, rng, cfg.crop_size, tuple(cfg.scale_range))
        s = cfg.crop_size
        if rect_h > 0:
            rect = sample_rect(rng, s, (rect_h, rect_w), cfg.paste.align)
            patch = sample_patch(rng, image.shape[:2], (rect_h, rect_w), tuple(cfg.paste.patch_scale))
            modes = [cfg.paste.seeds] + ["paste"] * (len(maps) - 1)
            crop, crops = paste_patch(crop, crops, image, maps, patch, rect, modes)
            valid = valid.copy()
            valid[rect.slices()] = True
        else:
            rect = Rect(0, 0, s, s)
        s4 = s // MAP_STRIDE
        sample = {
            "image": normalize_image(crop),
            "seed": torch.from_numpy(resize_label(crops[0], (s4, s4)).astype(np.int64)),
            "valid": torch.from_numpy(resize_label(valid.astype(np.uint8), (s4, s4)) > 0),
            "rect": torch.tensor(rect.scaled(MAP_STRIDE), dtype=torch.long),
            "tags": torch.from_numpy(self.tags[index]),
            # the crop on the maps' grid, for the dense CRF of the refine module
            "small": torch.from_numpy(cv2.resize(crop, (s4, s4), interpolation=cv2.INTER_AREA)),
        }
        if use_sal:
            sal4 = resize_label(crops[1], (s4, s4)).astype(np.int64)
            sample["saliency"] = torch.from_numpy(sal4)  # 255 outside the image
        return sample


class EpochBatches:
    """Keys ``(index, sample_seed, rect_h, rect_w)`` of one epoch; one rectangle size per batch."""

    def __init__(self, n: int, cfg: SanceConfig, epoch: int, start_batch: int = 0, paste: bool = True) -> None:
        self.batch_size = min(cfg.batch_size, n)
        self.n_batches = n // self.batch_size
        self.order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
        self.cfg, self.epoch, self.start_batch, self.paste = cfg, epoch, start_batch, paste

    def __len__(self) -> int:
        return self.n_batches - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        for b in range(self.start_batch, self.n_batches):
            rng = np.random.default_rng([self.cfg.seed, self.epoch, b, 11])
            rh, rw = sample_rect_size(rng, self.cfg.crop_size, self.cfg.paste) if self.paste else (0, 0)
            positions = range(b * self.batch_size, (b + 1) * self.batch_size)
            yield [(int(self.order[p]), _sample_seed(self.cfg.seed, self.epoch, p), rh, rw) for p in positions]


def _sample_seed(seed: int, epoch: int, position: int) -> int:
    return int(np.random.default_rng([seed, epoch, position, 5]).integers(2**31))


def load_training_set(cfg: SanceConfig, manifest_path: str | Path, seed_paths: Sequence[str]) -> SanceData:
    """Ids, tags and seed shards of ``cfg.split``; refuses missing seeds or a different class list."""
    manifest = Manifest.load(manifest_path)
    if list(manifest.classes) != list(cfg.dataset.classes):
        raise DataError(f"{manifest_path}: manifest classes {manifest.classes} differ from "
                        f"data.classes {list(cfg.dataset.classes)}")
    ids = manifest.ids(cfg.split)
    if not ids:
        raise DataError(f"{manifest_path}: split {cfg.split!r} has no images")
    tags = np.stack([manifest.label_vector(cfg.split, i) for i in ids]).astype(bool)
    index = open_shards(list(seed_paths), expect_stage="seeds")
    missing = [i for i in ids if i not in index]
    for reader in set(index.values()):
        reader.close()
    if missing:
        raise ArtifactError(f"seed shards {list(seed_paths)} lack {len(missing)} image(s) of split "
                            f"{cfg.split!r}, e.g. {missing[:3]}")
    return SanceData(cfg, ids, tags, seed_paths)


# --------------------------------------------------------------------------- online labels


def crop_regions(x: torch.Tensor, rects: torch.Tensor) -> torch.Tensor:
    """Stack ``x[b, ..., y:y+h, x:x+w]`` for per-sample rectangles of one common size (keeps grad)."""
    h, w = int(rects[0, 2]), int(rects[0, 3])
    if bool(((rects[:, 2] != h) | (rects[:, 3] != w)).any()):
        raise ValueError("all rectangles of a batch must have the same size")
    return torch.stack([x[b, ..., int(r[0]):int(r[0]) + h, int(r[1]):int(r[1]) + w] for b, r in enumerate(rects)])


def crf_labels(small: torch.Tensor, probs: torch.Tensor, tags: torch.Tensor, cfg: CRFConfig) -> torch.Tensor:
    """``Y^crf``: per-sample dense CRF of the softmax map restricted to background + present classes.

    ``small``: uint8 ``[B, h, w, 3]`` image on the maps' grid; ``probs``: ``[B, C+1, h, w]``;
    ``tags``: ``[B, C]``.  Returns long ``[B, h, w]`` class ids (0 = background).
    """
    out = torch.zeros(probs.shape[0], *probs.shape[-2:], dtype=torch.long)
    p_all = probs.detach().float().cpu().numpy()
    for b in range(probs.shape[0]):
        keys = np.concatenate([[0], np.flatnonzero(tags[b].cpu().numpy()) + 1])
        p = p_all[b, keys]
        p = p / np.maximum(p.sum(axis=0, keepdims=True), 1e-8)
        q = crf_refine_probs(np.ascontiguousarray(small[b].cpu().numpy()), p, cfg)
        out[b] = torch.from_numpy(keys[q.argmax(axis=0)])
    return out.to(probs.device)


def online_targets(
    cfg: SanceConfig,
    seg_probs: torch.Tensor,
    contour: torch.Tensor,
    tags: torch.Tensor,
    small: torch.Tensor | None = None,
    saliency: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Online labels of one batch region (no gradients): ``Y^b`` and, with refine, ``Y^r``.

    Returns ``{"contour": labels for the contour loss, "seg": labels for the segmentation
    loss, "yb": Y^b, "yr": Y^r or Y^b}``; pixels outside ``valid`` are 255.
    """
    on = cfg.online
    with torch.no_grad():
        yb = make_online_label(seg_probs.float(), contour.float(), tags, on.tau_b, on.radius, on.beta, on.exp_times,
                               normalize=on.normalize)
        yr = yb
        if cfg.spec.refine and (on.refine_contour or on.refine_seg):
            if on.refine == "crf":
                if small is None:
                    raise ValueError("the CRF refine needs the image on the maps' grid")
                ref = crf_labels(small, seg_probs, tags, on.crf)
            else:
                if saliency is None:
                    raise ValueError("the saliency refine needs saliency maps")
                ref = saliency.to(yb.device)
            # Eq. (8): background of the reference wins; 255 (outside the image) keeps Y^b
            yr = torch.where(ref == 0, torch.zeros_like(yb), yb)
        if valid is not None:
            fill = torch.full_like(yb, IGNORE_INDEX)
            yb = torch.where(valid, yb, fill)
            yr = torch.where(valid, yr, fill)
        return {
            "contour": yr if on.refine_contour else yb,
            "seg": yr if on.refine_seg else yb,
            "yb": yb,
            "yr": yr,
        }


# --------------------------------------------------------------------------- training


def model_config(cfg: SanceConfig) -> dict[str, Any]:
    """``config.json``: the architecture keys checked at load time, plus the full training config."""
    return {
        "kind": MODEL_KIND,
        "mode": cfg.mode,
        "backbone": cfg.backbone,
        "output_stride": cfg.output_stride,
        "classes": list(cfg.dataset.classes),
        "seg_branch": cfg.spec.seg_branch,
        "contour_channels": cfg.contour_channels,
        "aspp_rates": list(cfg.aspp_rates),
        "train": to_dict(cfg),
    }


def build_model(cfg: SanceConfig, classifier_dir: str | Path | None = None) -> SanceModel:
    model = build_sance_model(
        num_classes=len(cfg.dataset.classes),
        backbone=cfg.backbone,
        output_stride=cfg.output_stride,
        seg_branch=cfg.spec.seg_branch,
        weights=cfg.weights,
        contour_channels=cfg.contour_channels,
        aspp_rates=cfg.aspp_rates,
        frozen_bn=cfg.frozen_bn,
    )
    if cfg.init_from_classifier:
        if classifier_dir is None:
            raise ValueError("init_from_classifier is set but no classifier model was given (input 'classifier')")
        load_backbone_from_classifier(model, classifier_dir)
    return model


def training_step(
    cfg: SanceConfig, model: SanceModel, batch: dict[str, torch.Tensor], online_on: bool,
    autocast: Any = contextlib.nullcontext,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
    """Forward one batch; returns the weighted loss, its terms (tensors) and what to log (floats)."""
    with autocast():
        out = model(batch["image"])
    return compute_losses(cfg, out, batch, online_on)


def compute_losses(
    cfg: SanceConfig, out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor], online_on: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
    """The loss of one batch from the model's logits ``out`` (``contour`` [B,1,h,w], ``seg`` [B,C+1,h,w]).

    CAM-seed terms on the whole crop; online terms (when ``online_on`` and the mode has them)
    on the pasted rectangles, or on the valid part of the crop without paste.
    """
    spec, w = cfg.spec, cfg.loss_weights
    contour = torch.sigmoid(out["contour"][:, 0].float())
    seg = out["seg"].float() if "seg" in out else None
    seed = batch["seed"]
    terms: dict[str, torch.Tensor] = {"cam_contour": contour_loss(contour, seed, cfg.contour_radius, cfg.contour_power)}
    if seg is not None:
        terms["cam_seg"] = segmentation_loss(seg, seed)
    logs: dict[str, float] = {}
    if spec.online and online_on and seg is not None:
        if cfg.paste.enabled:
            rects = batch["rect"]
            c_r, s_r = crop_regions(contour, rects), crop_regions(seg, rects)
            small = crop_regions(batch["small"].permute(0, 3, 1, 2), rects).permute(0, 2, 3, 1).contiguous()
            sal = crop_regions(batch["saliency"], rects) if "saliency" in batch else None
            valid = None
        else:
            c_r, s_r, small, sal, valid = contour, seg, batch["small"], batch.get("saliency"), batch["valid"]
        probs = torch.softmax(s_r.detach(), dim=1)
        targets = online_targets(cfg, probs, c_r.detach(), batch["tags"], small.cpu(), sal, valid)
        terms["online_contour"] = contour_loss(c_r, targets["contour"], cfg.contour_radius, cfg.contour_power)
        terms["online_seg"] = segmentation_loss(s_r, targets["seg"])
        yb, yr = targets["yb"], targets["yr"]
        counted = yb != IGNORE_INDEX
        n = counted.sum().clamp(min=1)
        logs["online_fg"] = float(((yb > 0) & counted).sum() / n)
        logs["refine_changed"] = float(((yb != yr) & counted).sum() / n)
    weights = {"cam_contour": w.cam_contour, "cam_seg": w.cam_seg,
               "online_contour": w.online_contour, "online_seg": w.online_seg}
    loss = sum(weights[k] * v for k, v in terms.items())
    logs.update({k: float(v.detach()) for k, v in terms.items()})
    return loss, terms, logs


def _fingerprint(cfg: SanceConfig) -> dict[str, Any]:
    return {k: v for k, v in to_dict(cfg).items() if k not in ("device", "workers", "resume_dir")}


def train(cfg: SanceConfig, data: SanceData, classifier_dir: str | Path | None = None,
          history: History | None = None, stop_after_step: int | None = None) -> tuple[SanceModel, dict[str, float]]:
    """Train (resuming from ``cfg.resume_dir`` when it holds a checkpoint); returns the model and last terms."""
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model = build_model(cfg, classifier_dir).to(device)
    optimizer = torch.optim.SGD(model.param_groups(cfg.lr, cfg.new_lr_mult, cfg.weight_decay),
                                lr=cfg.lr, momentum=cfg.momentum)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    def autocast() -> Any:
        return torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()

    paste = cfg.paste.enabled and cfg.spec.online
    steps_per_epoch = len(EpochBatches(len(data), cfg, 0, paste=paste))
    total_steps = steps_per_epoch * cfg.epochs
    online_start = int(round(cfg.online.warmup * total_steps))
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
    log.info("training SANCE (%s, %s, stride %d) on %d images: %d epochs x %d steps, batch %d, crop %d, "
             "online labels from step %d, paste %s, device %s", cfg.mode, cfg.backbone, cfg.output_stride,
             len(data), cfg.epochs, steps_per_epoch, min(cfg.batch_size, len(data)), cfg.crop_size,
             online_start if cfg.spec.online else -1, paste, device)
    model.train()
    metrics: dict[str, float] = {}
    progress = tqdm(total=total_steps, initial=step, desc=f"sance[{cfg.mode}]", unit="step", mininterval=5)
    while step < total_steps:
        epoch, start_batch = divmod(step, steps_per_epoch)
        batches = EpochBatches(len(data), cfg, epoch, start_batch, paste=paste)
        loader = DataLoader(data, batch_sampler=batches, num_workers=cfg.workers,
                            pin_memory=device.type == "cuda", persistent_workers=False)
        for batch in loader:
            batch = {k: (v.to(device, non_blocking=True) if k != "small" else v) for k, v in batch.items()}
            lr = set_poly_lr(optimizer, step, total_steps, cfg.poly_power)
            loss, terms, logs = training_step(cfg, model, batch, step >= online_start, autocast)
            check_finite(step, loss=loss, **terms)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                logs["grad_norm"] = float(grad_norm)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            metrics = {"step": step, "epoch": epoch + 1, "lr": float(lr), "loss": float(loss.detach()), **logs}
            if history is not None:
                history.append(**metrics)
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['loss']:.3f}")
            end_of_epoch = step % steps_per_epoch == 0
            if checkpoints is not None and (end_of_epoch or step == stop_after_step):
                # history first: a crash between the two leaves an older checkpoint, and a resume keeps
                # only the history rows up to its step, so both stay consistent
                if history is not None and resume_history is not None:
                    history.save(resume_history)
                checkpoints.save(step, epoch, model, optimizer, {"metrics": metrics})
            if step == stop_after_step:
                progress.close()
                return model, metrics
        log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs,
                 ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("step", "epoch")))
    progress.close()
    return model, metrics


LOSS_COLUMNS = ["loss", "cam_contour", "cam_seg", "online_contour", "online_seg", "online_fg", "refine_changed", "lr"]


def run_stage(cfg: SanceConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, float]:
    """Inputs ``manifest``, ``seeds`` (shard list), optional ``classifier`` (its model.pt);
    outputs ``model`` (model.pt), ``config`` (config.json), ``history`` (CSV), ``curve`` (PNG)."""
    seeds = inputs["seeds"]
    seeds = [seeds] if isinstance(seeds, (str, Path)) else list(seeds)
    classifier = inputs.get("classifier")
    classifier_dir = Path(classifier).parent if classifier else None
    data = load_training_set(cfg, inputs["manifest"], seeds)
    out_dir = Path(outputs["model"]).parent
    for key in ("config", "history", "curve"):
        if Path(outputs[key]).parent != out_dir:
            raise ValueError(f"outputs model and {key} must share one folder ({outputs['model']}, {outputs[key]})")
    out_dir.mkdir(parents=True, exist_ok=True)
    history = History(outputs["history"])
    model, metrics = train(cfg, data, classifier_dir, history)
    history.save(outputs["history"])
    columns = [c for c in LOSS_COLUMNS if any(c in r for r in history.rows)]
    history.plot(outputs["curve"], columns, title=f"SANCE ({cfg.mode}, {cfg.backbone})")
    save_model(model.cpu(), model_config(cfg), out_dir)
    if cfg.resume_dir:
        CheckpointManager(cfg.resume_dir).clear()
        (Path(cfg.resume_dir) / "history.csv").unlink(missing_ok=True)
    log.info("SANCE %s done: %s", cfg.mode,
             ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("step", "epoch")))
    return metrics
