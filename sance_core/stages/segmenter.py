"""Stages ``train_segmenter`` and ``predict_segmenter``: DeepLab-v2 on pseudo labels, inference on val.

The last step of the method: a standard segmentation network is trained on the pseudo
labels of one mode (``irnet``, ``sance_naive``, ``sance``) or, as the upper bound, on the
ground-truth masks (``fully_supervised``), and evaluated on the val split with multi-scale
(+ flip) inference and optional dense-CRF post-processing (on for VOC, off for COCO).

Training follows DeepLab-v2: pixel-wise cross-entropy ignoring 255, SGD with momentum, poly
learning rate, the ASPP classifier at ``head_lr_mult`` times the backbone rate, random scale /
flip / crop. Data order and augmentation are functions of (seed, epoch, position), so a run
resumed from the checkpoint in ``resume_dir`` (outside the declared outputs) ends with the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from sance_core.config import to_dict
from sance_core.constants import IGNORE_INDEX
from sance_core.data.dataset import DatasetSpec, load_split
from sance_core.data.shards import read_shard
from sance_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_image, random_scale_flip_crop
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
from sance_core.io.files import atomic_path
from sance_core.io.images import DataError, read_image
from sance_core.io.palette import read_label_png
from sance_core.io.store import ArtifactWriter
from sance_core.io.weights import MODEL_FILE, load_model
from sance_core.models.backbones import BACKBONES
from sance_core.models.deeplab import DEFAULT_RATES, DeepLabV2, arch_config, build_from_config
from sance_core.ops.crf import CRFConfig, deeplab_crf
from sance_core.ops.inference import FUSIONS, _check_scales, predict_label
from sance_core.runtime import map_on_devices, resolve_device, seed_everything, visible_devices

log = logging.getLogger(__name__)

LABEL_SOURCES = ("pseudo_labels", "ground_truth")
PREDICTION_STAGE = "predictions"


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class SegmenterConfig:
    """DeepLab-v2 training (paper / DeepLab VOC values in the comments)."""

    dataset: DatasetSpec
    mode: str
    label_source: str = "pseudo_labels"  # 'ground_truth' for the fully supervised upper bound
    split: str = "train"  # paper: train_aug
    backbone: str = "resnet101"  # paper: resnet101 (VOC), resnet50 (COCO)
    weights: str | None = "imagenet"  # paper: ImageNet-pretrained ('imagenet', a local .pth, or None)
    init_from_classifier: bool = False  # demo (no ImageNet file): start the backbone from the CAM classifier
    output_stride: int = 8  # paper: 8
    rates: tuple[int, ...] = DEFAULT_RATES  # paper: 6, 12, 18, 24
    frozen_bn: bool = True  # DeepLab: pretrained statistics, batch 10
    iterations: int = 20000  # paper: 20000
    batch_size: int = 10  # paper: 10
    crop_size: int = 321  # paper: 321
    scale_range: tuple[float, float] = (0.5, 1.5)  # DeepLab: random scale 0.5-1.5
    lr: float = 2.5e-4  # paper: 2.5e-4 (pretrained backbone)
    head_lr_mult: float = 10.0  # paper: 10
    weight_decay: float = 5e-4  # paper: 5e-4
    momentum: float = 0.9  # paper: 0.9
    poly_power: float = 0.9  # paper: 0.9
    checkpoint_every: int = 100  # iterations between resume checkpoints
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    resume_dir: str | None = None  # checkpoints for resuming; outside the declared outputs

    def __post_init__(self) -> None:
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {self.label_source!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone: unknown {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        if self.weights and self.init_from_classifier:
            raise ValueError("set either weights (an ImageNet file) or init_from_classifier, not both")
        if not self.rates or any(r < 1 for r in self.rates):
            raise ValueError(f"rates must be a non-empty list of integers >= 1, got {list(self.rates)}")
        check_training_config(self, ("iterations", "batch_size", "crop_size", "checkpoint_every"), "head_lr_mult")


@dataclass(frozen=True)
class PredictConfig:
    """Inference on a split: multi-scale (+ flip) merging, optional dense CRF (VOC: on, COCO: off)."""

    dataset: DatasetSpec
    mode: str
    backbone: str  # must match the trained model's config.json
    test_scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)  # paper (DeepLab MSC)
    flip: bool = True  # paper: true
    fusion: str = "max"  # how the scales' softmax maps merge: mean or max (DeepLab's MSC: max)
    crf: bool = True  # paper: true on VOC, false on COCO
    crf_params: CRFConfig = field(default_factory=deeplab_crf)
    device: str = "auto"
    compression: str = "gzip"

    def __post_init__(self) -> None:
        _check_scales(self.test_scales)
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")


# --------------------------------------------------------------------------- model files


def model_config(cfg: SegmenterConfig, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``config.json``: the architecture keys checked at load time, normalisation, the full training config."""
    return {
        **arch_config(cfg.dataset.classes, cfg.backbone, cfg.output_stride, cfg.rates, cfg.frozen_bn),
        "mode": cfg.mode,
        "label_source": cfg.label_source,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input": "RGB / 255"},
        "train": to_dict(cfg),
        **dict(extra or {}),
    }


def load_segmenter(model_dir: str | Path, expected: Mapping[str, Any] | None = None,
                   device: torch.device | str = "cpu") -> tuple[DeepLabV2, dict[str, Any]]:
    """A trained segmenter in eval mode and its config; refuses a config or weights that do not match.

    ``expected`` (e.g. ``{"classes": [...], "backbone": "resnet101"}``) is compared with the
    saved ``config.json``; the state dict is loaded strictly and with ``weights_only=True``.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist (give the folder holding model.pt and config.json)")
    state, config = load_model(model_dir, dict(expected or {}))
    try:
        model = build_from_config(config)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{model_dir / 'config.json'}: {err}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = str(err).splitlines()
        raise ValueError(
            f"{model_dir / MODEL_FILE} does not match its config.json (backbone {config['backbone']}, "
            f"{len(config['classes'])} classes, rates {config['rates']}): {' '.join(d.strip() for d in detail[:3])[:400]}"
        ) from None
    return model.to(device).eval(), config


# --------------------------------------------------------------------------- data


def label_path(spec: DatasetSpec, label_dir: str | Path | None, image_id: str) -> Path:
    """Where the training label of an image is: ``<label_dir>/<id>.png`` or the dataset's GT mask."""
    if label_dir is not None:
        return Path(label_dir) / f"{image_id}.png"
    path = spec.mask_path(image_id)
    if path is None:
        raise DataError("label_source is 'ground_truth' but data.mask_dir is not set (the dataset has no masks)")
    return path


def read_train_label(path: Path, image_shape: tuple[int, int], num_classes: int) -> np.ndarray:
    """A label PNG checked against its image size and the class count (values 0..K-1 or 255)."""
    try:
        label = read_label_png(path)
    except FileNotFoundError:
        raise DataError(f"{path}: label file not found") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable label PNG ({err})") from None
    if label.shape != tuple(image_shape):
        raise DataError(f"{path}: label size {label.shape[1]}x{label.shape[0]} differs from the image's "
                        f"{image_shape[1]}x{image_shape[0]}")
    bad = np.unique(label[(label >= num_classes) & (label != IGNORE_INDEX)])
    if bad.size:
        raise DataError(f"{path}: label values {bad.tolist()} outside 0..{num_classes - 1} (and 255 = ignore)")
    return label


class SegmentationData(Dataset):
    """Augmented (image, label) crops; a sample is addressed by ``(index, sample_seed)``."""

    def __init__(self, spec: DatasetSpec, ids: Sequence[str], label_dir: str | Path | None, crop_size: int,
                 scale_range: tuple[float, float]) -> None:
        self.spec = spec
        self.ids = list(ids)
        self.label_dir = label_dir
        self.crop_size = crop_size
        self.scale_range = scale_range

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, sample_seed = key
        image_id = self.ids[index]
        image = read_image(self.spec.image_path(image_id))
        label = read_train_label(label_path(self.spec, self.label_dir, image_id), image.shape[:2],
                                 self.spec.num_classes)
        rng = np.random.default_rng(sample_seed)
        crop, (label_crop,), _ = random_scale_flip_crop(image, [label], rng, self.crop_size, tuple(self.scale_range))
        return normalize_image(crop), torch.from_numpy(label_crop.astype(np.int64))


def load_training_set(cfg: SegmenterConfig, manifest_path: str | Path, label_dir: str | Path | None) -> SegmentationData:
    """Ids of ``cfg.split`` from the manifest; every label file must exist before training starts."""
    _, ids = load_split(manifest_path, cfg.dataset, cfg.split)
    if cfg.label_source == "pseudo_labels":
        if label_dir is None:
            raise ValueError("label_source is 'pseudo_labels' but no 'labels' input (pseudo-label PNG folder) was given")
        if not Path(label_dir).is_dir():
            raise DataError(f"{label_dir}: pseudo-label folder not found")
    else:
        label_dir = None
    missing = [str(label_path(cfg.dataset, label_dir, i)) for i in ids if not label_path(cfg.dataset, label_dir, i).is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(ids)} training label files are missing, e.g. {', '.join(missing[:3])}")
    return SegmentationData(cfg.dataset, ids, label_dir, cfg.crop_size, cfg.scale_range)


# --------------------------------------------------------------------------- training


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pixel-wise cross-entropy ignoring 255; zero (with a gradient path) when no pixel is labelled."""
    if not bool((labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def _pixel_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    valid = labels != IGNORE_INDEX
    if not bool(valid.any()):
        return float("nan")
    return float((logits.argmax(1)[valid] == labels[valid]).float().mean())


def build_model(cfg: SegmenterConfig, classifier_dir: str | Path | None = None) -> DeepLabV2:
    """A fresh DeepLab-v2; its backbone from ``cfg.weights``, the CAM classifier, or random init."""
    model = DeepLabV2(cfg.dataset.num_classes, cfg.backbone, cfg.weights, cfg.output_stride, cfg.rates,
                      cfg.frozen_bn)
    if cfg.init_from_classifier:
        if classifier_dir is None:
            raise ValueError("init_from_classifier is set but no classifier model was given (input 'classifier')")
        from sance_core.models.sance import load_backbone_from_classifier

        load_backbone_from_classifier(model, classifier_dir)  # only uses model.backbone
    return model


def deeplab_step(model: DeepLabV2, batch: tuple[torch.Tensor, torch.Tensor], ctx: StepContext) -> StepResult:
    """Pixel-wise cross-entropy of one batch ``(images [B,3,H,W], labels [B,H,W])``; the pixel accuracy."""
    images, labels = (t.to(ctx.device, non_blocking=True) for t in batch)
    logits = model(images)
    loss = segmentation_loss(logits, labels)
    return StepResult(loss, {"cross_entropy": loss}, {"pixel_accuracy": _pixel_accuracy(logits.detach(), labels)})


def train(cfg: SegmenterConfig, data: SegmentationData, history: History | None = None,
          stop_after_step: int | None = None, classifier_dir: str | Path | None = None,
          fingerprint_extra: Mapping[str, Any] | None = None,
          epoch_end: EpochEndFn | None = None, data_key: Mapping[str, str] | None = None) -> tuple[DeepLabV2, dict[str, float]]:
    """Train for ``cfg.iterations`` SGD steps (resuming from ``cfg.resume_dir``); returns the model and last metrics.

    ``stop_after_step`` ends the run after a checkpoint at that step, as a crash would;
    ``fingerprint_extra`` and ``epoch_end`` as in :func:`sance_core.engine.fit`.
    """
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model = build_model(cfg, classifier_dir).to(device)
    optimizer = torch.optim.SGD(model.param_groups(cfg.lr, cfg.head_lr_mult, cfg.weight_decay),
                                lr=cfg.lr, momentum=cfg.momentum)

    def batches(epoch: int, start_batch: int) -> EpochBatches:
        return EpochBatches(len(data), cfg.batch_size, cfg.seed, epoch, start_batch, stream=11)

    steps_per_epoch = len(batches(0, 0))
    loop = LoopConfig(f"deeplab {cfg.mode}", cfg.iterations, steps_per_epoch, cfg.seed, cfg.poly_power, workers=cfg.workers,
                      time_column=True)
    resume = Resume(cfg.resume_dir, fingerprint(cfg, fingerprint_extra),
                    CheckpointPolicy(every_iterations=cfg.checkpoint_every), data_key) if cfg.resume_dir else None
    log.info("training DeepLab-v2 (%s, %s labels of mode %s) on %d images: %d iterations, batch %d, crop %d, "
             "%.1f epochs, device %s", cfg.backbone, cfg.label_source, cfg.mode, len(data), cfg.iterations,
             min(cfg.batch_size, len(data)), cfg.crop_size, cfg.iterations / steps_per_epoch, device)
    metrics = fit(model, optimizer, data, batches, deeplab_step, loop, device, resume=resume, history=history,
                  epoch_end=epoch_end, stop_after_step=stop_after_step)
    return model, metrics


def run_train(cfg: SegmenterConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, float]:
    """Inputs ``manifest`` (+ ``labels``: pseudo-label PNG folder, + ``classifier``: its model.pt);
    outputs ``model``, ``config``, ``history``, ``curve`` (one folder)."""
    label_dir = inputs.get("labels")
    classifier_dir = Path(inputs["classifier"]).parent if inputs.get("classifier") else None
    data = load_training_set(cfg, inputs["manifest"], label_dir)
    training_outputs_dir(outputs)
    history = History(outputs["history"])
    model, metrics = train(cfg, data, history, classifier_dir=classifier_dir, data_key=input_fingerprint(inputs))
    extra = {"train_seconds": round(metrics.get("elapsed_s", 0.0), 2), "final_loss": metrics.get("loss")}
    write_training_outputs(model, model_config(cfg, extra), history, outputs, ["loss", "lr", "pixel_accuracy"],
                           f"DeepLab-v2 ({cfg.mode}, {cfg.backbone})", cfg.resume_dir)
    log.info("segmenter %s done in %.1f s: final loss %.4f, pixel accuracy %.3f", cfg.mode,
             metrics.get("elapsed_s", float("nan")), metrics.get("loss", float("nan")),
             metrics.get("pixel_accuracy", float("nan")))
    return metrics


# --------------------------------------------------------------------------- inference


def _predict_worker(cfg: PredictConfig, model_dir: str, device: torch.device):
    """Per-device worker of ``predict_segmenter``: loads the model once, then maps an id to its entry."""
    expected = {"classes": list(cfg.dataset.classes), "backbone": cfg.backbone}
    model, _ = load_segmenter(model_dir, expected, device)
    crf = cfg.crf_params if cfg.crf else None

    def work(image_id: str) -> tuple[str, np.ndarray]:
        image = read_image(cfg.dataset.image_path(image_id))
        label, _ = predict_label(model, image, cfg.test_scales, cfg.flip, crf, device, cfg.fusion)
        return image_id, label
    return work


def run_predict(cfg: PredictConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> int:
    """Inputs ``model`` (model.pt beside config.json), ``ids`` (a shard list); output ``predictions`` (HDF5).

    Images are spread over every visible device (``sance_core.runtime.map_on_devices``); the
    single writer takes them in shard order, so the artifact does not depend on the device count.
    """
    ids = read_shard(inputs["ids"])
    devices = visible_devices(cfg.device)
    attrs = {"mode": cfg.mode, "test_scales": list(cfg.test_scales), "flip": cfg.flip, "fusion": cfg.fusion,
             "crf": cfg.crf, "classes": list(cfg.dataset.classes)}
    make_worker = functools.partial(_predict_worker, cfg, str(Path(inputs["model"]).parent))
    log.info("predictions of %d images on %s", len(ids), ", ".join(map(str, devices)))
    with ArtifactWriter(outputs["predictions"], PREDICTION_STAGE, cfg, cfg.compression, attrs=attrs) as writer:
        for image_id, label in tqdm(map_on_devices(make_worker, ids, devices), total=len(ids),
                                    desc=f"predict {cfg.mode}", unit="img", mininterval=5):
            writer.add(image_id, {"label": label}, {"size": list(label.shape)})
    return len(ids)





# --------------------------------------------------------------------------- predicting user images

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files from files and folders (a folder's images, sorted, not recursive), checked up front.

    Every file must exist and have a readable image header, and no two may share a stem (the
    outputs are named after it); errors name the file.
    """
    from PIL import Image, UnidentifiedImageError

    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such image file or folder")
    if not files:
        raise DataError("no input images given")
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise DataError(f"{path} and {seen[path.stem]} would both write {path.stem}.png; rename one")
        seen[path.stem] = path
        try:
            with Image.open(path) as img:
                img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise DataError(f"{path}: not a readable image ({err})") from None
    return files


def render_overlay(image: np.ndarray, label: np.ndarray, classes: Sequence[str], alpha: float = 0.5) -> np.ndarray:
    """The image with predicted classes tinted in VOC colours (background untouched) and a legend strip."""
    from PIL import Image, ImageDraw

    from sance_core.io.palette import colorize

    colours = colorize(label).astype(np.float32)
    fg = (label != 0) & (label != IGNORE_INDEX)
    out = image.astype(np.float32)
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[fg]
    present = [int(c) for c in np.unique(label) if c != IGNORE_INDEX]
    row = 14
    canvas = Image.new("RGB", (image.shape[1], image.shape[0] + row * len(present)), (255, 255, 255))
    canvas.paste(Image.fromarray(out.round().astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    palette = colorize(np.arange(256, dtype=np.uint8)[None])[0]
    for i, c in enumerate(present):
        y = image.shape[0] + i * row
        draw.rectangle([2, y + 2, 12, y + row - 2], fill=tuple(int(v) for v in palette[c]))
        name = classes[c] if c < len(classes) else f"class {c}"
        draw.text((16, y + 1), f"{name} {float((label == c).mean()):.0%}", fill=(0, 0, 0))
    return np.asarray(canvas)


def predict_files(model_dir: str | Path, paths: Sequence[str | Path], out_dir: str | Path,
                  scales: Sequence[float] = (1.0,), flip: bool = False, crf: bool = False,
                  device: str = "auto", fusion: str = "mean") -> list[dict[str, Any]]:
    """Segment image files with a trained segmenter: ``<stem>.png`` (palette) and ``<stem>_overlay.jpg`` each.

    Returns one record per image (path, outputs, fraction of each predicted class by name).
    """
    from PIL import Image

    from sance_core.io.palette import save_label_png

    scales = _check_scales(scales)
    files = collect_images(paths)
    torch_device = resolve_device(device)
    model, config = load_segmenter(model_dir, None, torch_device)
    classes = list(config["classes"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for path in tqdm(files, desc="predict", unit="img", mininterval=5):
        image = read_image(path)
        label, _ = predict_label(model, image, scales, flip, deeplab_crf() if crf else None, torch_device, fusion)
        png, overlay = out_dir / f"{path.stem}.png", out_dir / f"{path.stem}_overlay.jpg"
        with atomic_path(png) as tmp:
            save_label_png(label, tmp)
        picture = render_overlay(image, label, classes)
        with atomic_path(overlay) as tmp:
            Image.fromarray(picture).save(tmp, format="JPEG", quality=90)
        counts = np.bincount(label.ravel(), minlength=len(classes))
        fractions = {classes[c]: round(float(counts[c]) / label.size, 4) for c in np.flatnonzero(counts)}
        log.info("%s: %s", path.name, ", ".join(f"{k} {v:.0%}" for k, v in fractions.items()))
        records.append({"image": str(path), "label_png": str(png), "overlay": str(overlay), "classes": fractions})
    return records
