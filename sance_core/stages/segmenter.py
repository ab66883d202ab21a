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

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sance_core.io.files import atomic_path
from sance_core.models.backbones import BACKBONES
from sance_core.config import to_dict
from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.io.images import DataError, read_image
from sance_core.constants import IGNORE_INDEX
from sance_core.io.palette import read_label_png
from sance_core.data.shards import read_shard
from sance_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_image, random_scale_flip_crop
from sance_core.ops.crf import CRFConfig, deeplab_crf
from sance_core.ops.inference import FUSIONS, _check_scales, predict_label
from sance_core.models.deeplab import DEFAULT_RATES, DeepLabV2, arch_config, build_from_config
from sance_core.runtime import resolve_device, seed_everything
from sance_core.io.store import ArtifactWriter
from sance_core.engine.training import MODEL_FILE, CheckpointManager, History, check_finite, load_model, save_model, set_poly_lr

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
    backbone: str = "resnet18"  # paper: resnet101
    weights: str | None = None  # local ImageNet state dict; paper: ImageNet-pretrained
    init_from_classifier: bool = False  # demo (no ImageNet file): start the backbone from the CAM classifier
    output_stride: int = 8  # paper: 8
    rates: tuple[int, ...] = DEFAULT_RATES  # paper: 6, 12, 18, 24
    frozen_bn: bool = False  # DeepLab: true (pretrained statistics, batch 10)
    iterations: int = 300  # paper: 20000
    batch_size: int = 8  # paper: 10
    crop_size: int = 96  # paper: 321
    scale_range: tuple[float, float] = (0.5, 1.5)  # DeepLab: random scale 0.5-1.5
    lr: float = 0.01  # paper: 2.5e-4 (pretrained backbone)
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
        for key in ("iterations", "batch_size", "crop_size", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {list(self.scale_range)}")
        if self.lr <= 0 or self.head_lr_mult <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("need lr > 0, head_lr_mult > 0, weight_decay >= 0 and 0 <= momentum < 1")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


@dataclass(frozen=True)
class PredictConfig:
    """Inference on a split: multi-scale (+ flip) merging, optional dense CRF (VOC: on, COCO: off)."""

    dataset: DatasetSpec
    mode: str
    backbone: str  # must match the trained model's config.json
    test_scales: tuple[float, ...] = (1.0,)  # paper (DeepLab MSC): 0.5, 0.75, 1.0, 1.25, 1.5
    flip: bool = False  # paper: true
    fusion: str = "mean"  # how the scales' softmax maps merge: mean or max
    crf: bool = False  # paper: true on VOC, false on COCO
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
            yield [(int(self.order[p]), int(np.random.default_rng([self.seed, self.epoch, p, 11]).integers(2**31)))
                   for p in positions]


def load_training_set(cfg: SegmenterConfig, manifest_path: str | Path, label_dir: str | Path | None) -> SegmentationData:
    """Ids of ``cfg.split`` from the manifest; every label file must exist before training starts."""
    manifest = Manifest.load(manifest_path)
    if list(manifest.classes) != list(cfg.dataset.classes):
        raise DataError(
            f"{manifest_path}: manifest classes {manifest.classes} differ from data.classes {list(cfg.dataset.classes)}"
        )
    ids = manifest.ids(cfg.split)
    if not ids:
        raise DataError(f"{manifest_path}: split {cfg.split!r} has no images")
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


def _fingerprint(cfg: SegmenterConfig) -> dict[str, Any]:
    """The settings a checkpoint must share to be resumed (not where or how fast it runs)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in ("device", "workers", "resume_dir", "checkpoint_every")}


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


def train(cfg: SegmenterConfig, data: SegmentationData, history: History | None = None,
          stop_after_step: int | None = None, classifier_dir: str | Path | None = None) -> tuple[DeepLabV2, dict[str, float]]:
    """Train for ``cfg.iterations`` SGD steps (resuming from ``cfg.resume_dir``); returns the model and last metrics.

    ``stop_after_step`` ends the run after a checkpoint at that step, as a crash would.
    """
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model = build_model(cfg, classifier_dir).to(device)
    optimizer = torch.optim.SGD(model.param_groups(cfg.lr, cfg.head_lr_mult, cfg.weight_decay),
                                lr=cfg.lr, momentum=cfg.momentum)
    steps_per_epoch = len(EpochBatches(len(data), cfg.batch_size, cfg.seed, 0))
    checkpoints = CheckpointManager(cfg.resume_dir, _fingerprint(cfg)) if cfg.resume_dir else None
    resume_history = Path(cfg.resume_dir) / "history.csv" if cfg.resume_dir else None
    step, elapsed = 0, 0.0
    if checkpoints is not None:
        state = checkpoints.load_latest(model, optimizer)
        if state is not None:
            step = int(state["step"])
            elapsed = float(state["extra"].get("elapsed_s", 0.0))
            if history is not None and resume_history is not None:
                history.load(resume_history)
                history.rows = [r for r in history.rows if r.get("step", 0) <= step]
    log.info("training DeepLab-v2 (%s, %s labels of mode %s) on %d images: %d iterations, batch %d, crop %d, "
             "%.1f epochs, device %s", cfg.backbone, cfg.label_source, cfg.mode, len(data), cfg.iterations,
             min(cfg.batch_size, len(data)), cfg.crop_size, cfg.iterations / steps_per_epoch, device)
    metrics: dict[str, float] = {}
    model.train()
    progress = tqdm(total=cfg.iterations, initial=step, desc=f"deeplab {cfg.mode}", unit="step", mininterval=5)
    start = time.perf_counter() - elapsed
    while step < cfg.iterations:
        epoch, start_batch = divmod(step, steps_per_epoch)
        batches = EpochBatches(len(data), cfg.batch_size, cfg.seed, epoch, start_batch)
        loader = DataLoader(data, batch_sampler=batches, num_workers=cfg.workers,
                            pin_memory=device.type == "cuda", persistent_workers=False)
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            lr = set_poly_lr(optimizer, step, cfg.iterations, cfg.poly_power)
            logits = model(images)
            loss = segmentation_loss(logits, labels)
            check_finite(step, cross_entropy=loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            metrics = {"step": step, "epoch": epoch + 1, "loss": float(loss.item()), "lr": float(lr),
                       "pixel_accuracy": _pixel_accuracy(logits.detach(), labels),
                       "elapsed_s": time.perf_counter() - start}
            if history is not None:
                history.append(**metrics)
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['loss']:.3f}")
            if checkpoints is not None and (step % cfg.checkpoint_every == 0 or step == stop_after_step):
                # history first: a crash between the two leaves an older checkpoint, and a resume keeps
                # only the history rows up to its step, so both stay consistent
                if history is not None and resume_history is not None:
                    history.save(resume_history)
                checkpoints.save(step, epoch, model, optimizer, {"elapsed_s": metrics["elapsed_s"]})
            if step == stop_after_step or step >= cfg.iterations:
                break
        if step == stop_after_step:
            break
        log.info("epoch %d: loss %.4f, pixel accuracy %.3f", epoch + 1, metrics.get("loss", float("nan")),
                 metrics.get("pixel_accuracy", float("nan")))
    progress.close()
    return model, metrics


def run_train(cfg: SegmenterConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, float]:
    """Inputs ``manifest`` (+ ``labels``: pseudo-label PNG folder, + ``classifier``: its model.pt);
    outputs ``model``, ``config``, ``history``, ``curve`` (one folder)."""
    label_dir = inputs.get("labels")
    classifier_dir = Path(inputs["classifier"]).parent if inputs.get("classifier") else None
    data = load_training_set(cfg, inputs["manifest"], label_dir)
    out_dir = Path(outputs["model"]).parent
    for key in ("config", "history", "curve"):
        if Path(outputs[key]).parent != out_dir:
            raise ValueError(f"outputs model and {key} must share one folder ({outputs['model']}, {outputs[key]})")
    out_dir.mkdir(parents=True, exist_ok=True)
    history = History(outputs["history"])
    model, metrics = train(cfg, data, history, classifier_dir=classifier_dir)
    history.save(outputs["history"])
    history.plot(outputs["curve"], ["loss", "lr", "pixel_accuracy"], title=f"DeepLab-v2 ({cfg.mode}, {cfg.backbone})")
    extra = {"train_seconds": round(metrics.get("elapsed_s", 0.0), 2), "final_loss": metrics.get("loss")}
    save_model(model.cpu(), model_config(cfg, extra), out_dir)
    if cfg.resume_dir:  # the model is saved: a later run with other settings must start afresh
        CheckpointManager(cfg.resume_dir).clear()
        (Path(cfg.resume_dir) / "history.csv").unlink(missing_ok=True)
    log.info("segmenter %s done in %.1f s: final loss %.4f, pixel accuracy %.3f", cfg.mode,
             metrics.get("elapsed_s", float("nan")), metrics.get("loss", float("nan")),
             metrics.get("pixel_accuracy", float("nan")))
    return metrics


# --------------------------------------------------------------------------- inference


def run_predict(cfg: PredictConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> int:
    """Inputs ``model`` (model.pt beside config.json), ``ids`` (a shard list); output ``predictions`` (HDF5)."""
    ids = read_shard(inputs["ids"])
    device = resolve_device(cfg.device)
    expected = {"classes": list(cfg.dataset.classes), "backbone": cfg.backbone}
    model, _ = load_segmenter(Path(inputs["model"]).parent, expected, device)
    crf = cfg.crf_params if cfg.crf else None
    attrs = {"mode": cfg.mode, "test_scales": list(cfg.test_scales), "flip": cfg.flip, "fusion": cfg.fusion,
             "crf": cfg.crf, "classes": list(cfg.dataset.classes)}
    with ArtifactWriter(outputs["predictions"], PREDICTION_STAGE, cfg, cfg.compression, attrs=attrs) as writer:
        for image_id in tqdm(ids, desc=f"predict {cfg.mode}", unit="img", mininterval=5):
            image = read_image(cfg.dataset.image_path(image_id))
            label, _ = predict_label(model, image, cfg.test_scales, cfg.flip, crf, device, cfg.fusion)
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
