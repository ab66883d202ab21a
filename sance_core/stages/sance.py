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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from sance_core.config import to_dict
from sance_core.constants import IGNORE_INDEX, MAP_STRIDE
from sance_core.data.dataset import DatasetSpec, load_split
from sance_core.data.transforms import normalize_image, random_scale_flip_crop, resize_label
from sance_core.engine import (
    CheckpointPolicy,
    History,
    LoopConfig,
    Resume,
    StepContext,
    StepResult,
    fingerprint,
    fit,
    input_fingerprint,
    sampler,
    training_outputs_dir,
    warmup_steps_of,
    write_training_outputs,
)
from sance_core.engine.loop import EpochEndFn
from sance_core.engine.settings import check_training_config
from sance_core.eval.epoch_eval import EpochEvalConfig, EpochEvaluator
from sance_core.io.files import as_paths
from sance_core.io.images import DataError, read_image
from sance_core.io.palette import read_label_png
from sance_core.io.store import ArtifactError, open_shards
from sance_core.models.backbones import BACKBONES
from sance_core.models.sance import (
    MODEL_KIND,
    SanceModel,
    build_sance_model,
    load_backbone_from_classifier,
)
from sance_core.ops.crf import CRFConfig, crf_refine_probs
from sance_core.ops.losses import contour_loss, segmentation_loss
from sance_core.ops.online_labels import make_online_label
from sance_core.ops.paste import PasteConfig, Rect, paste_patch, sample_patch, sample_rect, sample_rect_size
from sance_core.runtime import resolve_device, seed_everything

log = logging.getLogger(__name__)

__all__ = ["MODES", "ModeSpec", "SanceConfig", "OnlineConfig", "LossWeights", "train", "run_stage",
           "model_config", "online_targets", "crop_regions"]

REFINE_SOURCES = ("crf", "saliency")
ONLINE_BRANCHES = ("contour", "seg")  # the branches an online label supervises


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
    # branches whose online label keeps background only where the CAM seed is background (elsewhere
    # unsure, 255); () = the paper's Eq. (7), background wherever M^b stays below tau_b
    seed_background: tuple[str, ...] = ()
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
        unknown = [b for b in self.seed_background if b not in ONLINE_BRANCHES]
        if unknown or len(set(self.seed_background)) != len(self.seed_background):
            raise ValueError(f"online.seed_background lists branches, each once, out of {ONLINE_BRANCHES}; "
                             f"got {list(self.seed_background)}")
        if self.refine == "saliency" and not self.saliency_dir:
            raise ValueError("online.refine is 'saliency' but online.saliency_dir is not set")


@dataclass(frozen=True)
class SanceConfig:
    """Hyper-parameters of SANCE training (paper §4.2 values in the comments)."""

    dataset: DatasetSpec
    mode: str = "sance"
    split: str = "train"
    backbone: str = "resnet101"  # paper: resnet101 (VOC), resnet50 (COCO)
    weights: str | None = "imagenet"  # paper: ImageNet-pretrained ('imagenet', a local .pth, or None)
    init_from_classifier: bool = False  # start the backbone from the CAM classifier (no ImageNet file)
    output_stride: int = 8  # paper: 8 (IRNet baseline in Table 1: 16)
    frozen_bn: bool = True  # pretrained BatchNorm statistics with batches of 10 (IRNet, DeepLab)
    contour_channels: int = 32  # IRNet: 32 per stage
    aspp_rates: tuple[int, ...] = (6, 12, 18, 24)  # DeepLab-v2
    epochs: int = 16  # paper: 16
    batch_size: int = 10  # paper: 10
    crop_size: int = 512  # paper: 512
    scale_range: tuple[float, float] = (0.5, 1.5)  # paper: random scaling; IRNet's IRN: 0.5-1.5
    lr: float = 2.5e-4  # paper: 2.5e-4 for the backbone, poly decay
    new_lr_mult: float = 10.0  # paper: new layers x10
    weight_decay: float = 5e-4  # paper: 5e-4
    momentum: float = 0.9  # paper: 0.9
    poly_power: float = 0.9
    grad_clip: float = 0.0  # max global gradient norm; 0 = no clipping (paper: none)
    lr_warmup: float = 0.0  # fraction of the iterations of a linear rate warm-up (paper: none)
    contour_radius: int = 10  # paper: delta = delta-hat = 10 for Eq. (4)
    contour_power: float = 1.0  # paper: n = 1 for Eq. (4)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    paste: PasteConfig = field(default_factory=PasteConfig)
    amp: bool = False  # mixed precision (CUDA only)
    epoch_eval: EpochEvalConfig = field(default_factory=EpochEvalConfig)  # Fig. 5; images 0 = off
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
        check_training_config(self, ("epochs", "batch_size", "crop_size"), "new_lr_mult")
        if self.crop_size % MAP_STRIDE:
            raise ValueError(f"crop_size must be a multiple of {MAP_STRIDE} (the maps' stride), got {self.crop_size}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if not 0 <= self.lr_warmup < 1:
            raise ValueError(f"lr_warmup must be in [0, 1) (a fraction of the iterations; 0 = off), got {self.lr_warmup}")
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
        seed_bg = bool(cfg.online.seed_background) and cfg.spec.online
        if seed_bg and rect_h > 0:
            maps.append(seed)  # the raw seeds pasted into the rectangle: the online region's seeds
        rng = np.random.default_rng(sample_seed)
        crop, crops, valid = random_scale_flip_crop(image, maps, rng, cfg.crop_size, tuple(cfg.scale_range))
        s = cfg.crop_size
        if rect_h > 0:
            rect = sample_rect(rng, s, (rect_h, rect_w), cfg.paste.align)
            patch = sample_patch(rng, image.shape[:2], (rect_h, rect_w), tuple(cfg.paste.patch_scale))
            modes = [cfg.paste.seeds] + ["paste"] * (len(maps) - 1)  # saliency, online-region seeds
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
        if seed_bg:  # seeds of the online region, on the maps' grid (the crop's own seeds without paste)
            sample["online_seed"] = (torch.from_numpy(resize_label(crops[-1], (s4, s4)).astype(np.int64))
                                     if rect_h > 0 else sample["seed"])
        return sample


class EpochBatches(sampler.EpochBatches):
    """Keys ``(index, sample_seed, rect_h, rect_w)`` of one epoch; one paste-rectangle size per batch."""

    def __init__(self, n: int, cfg: SanceConfig, epoch: int, start_batch: int = 0, paste: bool = True) -> None:
        super().__init__(n, cfg.batch_size, cfg.seed, epoch, start_batch, stream=5)
        self.cfg, self.paste = cfg, paste

    def batch_keys(self, batch: int, positions: range) -> list[tuple[int, int, int, int]]:
        rng = np.random.default_rng([self.cfg.seed, self.epoch, batch, 11])
        rh, rw = sample_rect_size(rng, self.cfg.crop_size, self.cfg.paste) if self.paste else (0, 0)
        return [(index, seed, rh, rw) for index, seed in super().batch_keys(batch, positions)]


def load_training_set(cfg: SanceConfig, manifest_path: str | Path, seed_paths: Sequence[str]) -> SanceData:
    """Ids, tags and seed shards of ``cfg.split``; refuses missing seeds or a different class list."""
    manifest, ids = load_split(manifest_path, cfg.dataset, cfg.split)
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
    seeds: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Online labels of one batch region (no gradients): ``Y^b`` and, with refine, ``Y^r``.

    Returns ``{"contour": labels for the contour loss, "seg": labels for the segmentation
    loss, "yb": Y^b, "yr": Y^r or Y^b}``; pixels outside ``valid`` are 255.  For the branches
    in ``online.seed_background``, background of the label is kept only where ``seeds``
    (the CAM seeds of the region, ``[B, h, w]``) is background; elsewhere it becomes 255.
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
        out = {"contour": yr if on.refine_contour else yb, "seg": yr if on.refine_seg else yb}
        if on.seed_background:
            if seeds is None:
                raise ValueError("online.seed_background needs the CAM seeds of the online region")
            seeds = seeds.to(yb.device).reshape(yb.shape)
            unsure = seeds != 0
            for branch in on.seed_background:
                t = out[branch]
                out[branch] = torch.where((t == 0) & unsure, torch.full_like(t, IGNORE_INDEX), t)
        return {**out, "yb": yb, "yr": yr}


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
            seeds = crop_regions(batch["online_seed"], rects) if "online_seed" in batch else None
            valid = None
        else:
            c_r, s_r, small, sal, valid = contour, seg, batch["small"], batch.get("saliency"), batch["valid"]
            seeds = batch.get("online_seed")
        probs = torch.softmax(s_r.detach(), dim=1)
        targets = online_targets(cfg, probs, c_r.detach(), batch["tags"], small.cpu(), sal, valid, seeds)
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


def train(cfg: SanceConfig, data: SanceData, classifier_dir: str | Path | None = None,
          history: History | None = None, stop_after_step: int | None = None,
          fingerprint_extra: Mapping[str, Any] | None = None,
          epoch_end: EpochEndFn | None = None, data_key: Mapping[str, str] | None = None) -> tuple[SanceModel, dict[str, float]]:
    """Train (resuming from ``cfg.resume_dir`` when it holds a checkpoint); returns the model and last terms.

    ``data_key`` (:func:`~sance_core.engine.input_fingerprint` of the inputs): a checkpoint of other
    data is not resumed, the training starts over. ``fingerprint_extra`` joins the resume fingerprint; ``epoch_end``
    runs after every epoch, e.g. to evaluate pseudo labels (see :func:`sance_core.engine.fit`).
    """
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model = build_model(cfg, classifier_dir).to(device)
    optimizer = torch.optim.SGD(model.param_groups(cfg.lr, cfg.new_lr_mult, cfg.weight_decay),
                                lr=cfg.lr, momentum=cfg.momentum)
    paste = cfg.paste.enabled and cfg.spec.online

    def batches(epoch: int, start_batch: int) -> EpochBatches:
        return EpochBatches(len(data), cfg, epoch, start_batch, paste=paste)

    steps_per_epoch = len(batches(0, 0))
    total_steps = steps_per_epoch * cfg.epochs
    online_start = int(round(cfg.online.warmup * total_steps))

    def step(model: SanceModel, batch: dict[str, torch.Tensor], ctx: StepContext) -> StepResult:
        batch = {k: (v.to(ctx.device, non_blocking=True) if k != "small" else v) for k, v in batch.items()}
        loss, terms, logs = training_step(cfg, model, batch, ctx.step >= online_start, ctx.autocast)
        return StepResult(loss, {"loss": loss, **terms}, logs)

    loop = LoopConfig(f"sance[{cfg.mode}]", total_steps, steps_per_epoch, cfg.seed, cfg.poly_power,
                      warmup_steps=warmup_steps_of(cfg.lr_warmup, total_steps), amp=cfg.amp,
                      grad_clip=cfg.grad_clip, workers=cfg.workers)
    resume = Resume(cfg.resume_dir, fingerprint(cfg, fingerprint_extra),
                    CheckpointPolicy(every_epochs=1), data_key) if cfg.resume_dir else None
    log.info("training SANCE (%s, %s, stride %d) on %d images: %d epochs x %d steps, batch %d, crop %d, "
             "online labels from step %d, paste %s, device %s", cfg.mode, cfg.backbone, cfg.output_stride,
             len(data), cfg.epochs, steps_per_epoch, min(cfg.batch_size, len(data)), cfg.crop_size,
             online_start if cfg.spec.online else -1, paste, device)
    metrics = fit(model, optimizer, data, batches, step, loop, device, resume=resume, history=history,
                  epoch_end=epoch_end, stop_after_step=stop_after_step)
    return model, metrics


LOSS_COLUMNS = ["loss", "cam_contour", "cam_seg", "online_contour", "online_seg", "online_fg", "refine_changed", "lr"]


def run_stage(cfg: SanceConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, float]:
    """Inputs ``manifest``, ``seeds`` (shard list), optional ``classifier`` (its model.pt);
    outputs ``model`` (model.pt), ``config`` (config.json), ``history`` (CSV), ``curve`` (PNG)."""
    classifier = inputs.get("classifier")
    classifier_dir = Path(classifier).parent if classifier else None
    data = load_training_set(cfg, inputs["manifest"], as_paths(inputs["seeds"]))
    training_outputs_dir(outputs)
    history = History(outputs["history"])
    epoch_end = None
    if cfg.epoch_eval.images > 0:  # paper Fig. 5: pseudo-label mIoU after each epoch
        tags = {i: [int(c) + 1 for c in np.flatnonzero(t)] for i, t in zip(data.ids, data.tags)}
        evaluator = EpochEvaluator(cfg.epoch_eval, cfg.dataset, data.ids, tags, as_paths(inputs.get("cam") or []))

        def epoch_end(event):
            return evaluator(event.epoch + 1, event.model)
    model, metrics = train(cfg, data, classifier_dir, history, epoch_end=epoch_end,
                           data_key=input_fingerprint(inputs))
    write_training_outputs(model, model_config(cfg), history, outputs, LOSS_COLUMNS,
                           f"SANCE ({cfg.mode}, {cfg.backbone})", cfg.resume_dir)
    log.info("SANCE %s done: %s", cfg.mode,
             ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("step", "epoch")))
    return metrics
