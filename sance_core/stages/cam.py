"""Stage ``extract_cams``: multi-scale class activation maps of one shard of images.

IRNet's ``make_cam``: for every scale the image is resized, run with its horizontal flip
through the classifier's CAM head, ReLU'd, and the flipped map is flipped back and added.
The per-scale maps are resized (bilinear) to the stride-4 grid ``ceil(H/4) x ceil(W/4)`` and
to full resolution and summed over the scales. Only the classes present in the image's
tags are kept, each divided by its maximum (+1e-5), so every stored plane lies in [0, 1].

Images of equal size are batched together (the common case on VOC and COCO); classes are
selected before upsampling, so memory per image does not grow with the number of classes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sance_core.constants import MAP_STRIDE
from sance_core.models.classifier import CAMClassifier, build_from_config
from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.io.images import DataError, read_image
from sance_core.data.shards import read_shard
from sance_core.data.transforms import normalize_image, resize_image
from sance_core.runtime import resolve_device
from sance_core.io.store import ArtifactWriter
from sance_core.engine.training import load_model, load_state_strict

log = logging.getLogger(__name__)

STRIDE = MAP_STRIDE  # the low-resolution grid that seeds and SANCE work on
_EPS = 1e-5  # IRNet's guard in the max normalisation


@dataclass(frozen=True)
class CAMConfig:
    """How CAMs are extracted; ``backbone`` is checked against the trained model's config.json."""

    dataset: DatasetSpec
    split: str = "train"
    backbone: str = "resnet18"
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)  # paper / IRNet: (1.0, 0.5, 1.5, 2.0)
    flip: bool = True  # IRNet: each scale with its horizontal flip
    batch_size: int = 8  # images of equal size per forward pass
    device: str = "auto"
    workers: int = 0
    compression: str = "gzip"  # of the HDF5 maps: gzip, lzf or none

    def __post_init__(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be a non-empty list of positive numbers, got {list(self.scales)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


def strided_size(size: Sequence[int], stride: int = STRIDE) -> tuple[int, int]:
    """``ceil(H / stride), ceil(W / stride)``: the grid of a stride-``stride`` map of an ``H x W`` image."""
    return (int(size[0]) - 1) // stride + 1, (int(size[1]) - 1) // stride + 1


def load_classifier(model_path: str | Path, classes: Sequence[str], backbone: str,
                    device: torch.device | str = "cpu") -> CAMClassifier:
    """The trained classifier, strictly and with ``weights_only``; refuses other classes or backbone."""
    state, config = load_model(Path(model_path).parent, {"classes": list(classes), "backbone": backbone})
    model = build_from_config(config)
    load_state_strict(model, state, model_path)
    return model.to(device).eval()


@torch.no_grad()
def multiscale_cams(model: CAMClassifier, images: Sequence[np.ndarray], scales: Sequence[float],
                    flip: bool = True) -> list[list[torch.Tensor]]:
    """Per image and scale, the ReLU'd CAM ``[C, h_s, w_s]`` (flip added back), for images of one size.

    All images of ``images`` must share their size so that each scale is one forward pass.
    """
    sizes = {im.shape[:2] for im in images}
    if len(sizes) != 1:
        raise ValueError(f"multiscale_cams needs images of one size, got {sorted(sizes)}")
    device = next(model.parameters()).device
    n = len(images)
    per_image: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for scale in scales:
        batch = torch.stack([normalize_image(resize_image(im, scale)) for im in images]).to(device)
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
        cams = F.relu(model.cam(batch)).float()
        if flip:
            cams = cams[:n] + cams[n:].flip(-1)
        for i in range(n):
            per_image[i].append(cams[i])
    return per_image


def combine_scales(per_scale: Sequence[torch.Tensor], size: Sequence[int], keys: Sequence[int],
                   output_stride: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the per-scale maps of the present classes at full and stride-4 resolution, max-normalised.

    ``keys`` are class ids 1..C; the full-resolution map is resized to the output-stride-aligned
    size and cropped, as IRNet's ``make_cam`` does.
    """
    h, w = int(size[0]), int(size[1])
    index = torch.as_tensor([k - 1 for k in keys], dtype=torch.long, device=per_scale[0].device)
    low_size = strided_size((h, w), STRIDE)
    up = strided_size((h, w), output_stride)
    up_size = (up[0] * output_stride, up[1] * output_stride)
    if len(keys) == 0:
        return per_scale[0].new_zeros((0, h, w)), per_scale[0].new_zeros((0, *low_size))
    low = 0
    high = 0
    for cam in per_scale:
        selected = cam.index_select(0, index)[None]
        low = low + F.interpolate(selected, low_size, mode="bilinear", align_corners=False)[0]
        high = high + F.interpolate(selected, up_size, mode="bilinear", align_corners=False)[0, :, :h, :w]
    low = low / (low.amax(dim=(1, 2), keepdim=True) + _EPS)
    high = high / (high.amax(dim=(1, 2), keepdim=True) + _EPS)
    return high, low


class _Images(Dataset):
    def __init__(self, spec: DatasetSpec, ids: Sequence[str]) -> None:
        self.spec, self.ids = spec, list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[str, np.ndarray]:
        return self.ids[index], read_image(self.spec.image_path(self.ids[index]))


def _as_list(items: list[Any]) -> list[Any]:
    return items


def _size_batches(ids: Sequence[str], sizes: Mapping[str, tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices grouped by image size (in first-seen order), chunked to ``batch_size``."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, image_id in enumerate(ids):
        groups[sizes[image_id]].append(i)
    return [g[s:s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]


def extract(model: CAMClassifier, cfg: CAMConfig, ids: Sequence[str], manifest: Manifest
            ) -> Iterator[tuple[str, dict[str, np.ndarray], dict[str, Any]]]:
    """Yield ``(id, {"cam", "cam_stride4"}, attrs)`` for every id, in batches of equal-size images."""
    entries = {e["id"]: e for e in manifest.entries(cfg.split)}
    missing = [i for i in ids if i not in entries]
    if missing:
        raise DataError(f"{len(missing)} shard id(s) are not in split {cfg.split!r} of the manifest: {missing[:5]}")
    sizes = {i: (int(entries[i]["height"]), int(entries[i]["width"])) for i in ids}
    batches = _size_batches(ids, sizes, cfg.batch_size)
    loader = DataLoader(_Images(cfg.dataset, ids), batch_sampler=batches, num_workers=cfg.workers,
                        collate_fn=_as_list)
    for items in loader:
        images = [im for _, im in items]
        for image_id, im in items:
            if im.shape[:2] != sizes[image_id]:
                raise DataError(f"{cfg.dataset.image_path(image_id)}: size {im.shape[:2]} differs from the "
                                f"manifest's {sizes[image_id]} (rerun validation)")
        per_image = multiscale_cams(model, images, cfg.scales, cfg.flip)
        for (image_id, im), per_scale in zip(items, per_image):
            keys = [int(k) for k in entries[image_id]["labels"]]
            high, low = combine_scales(per_scale, im.shape[:2], keys, model.backbone.output_stride)
            yield image_id, {"cam": high.cpu().numpy(), "cam_stride4": low.cpu().numpy()}, {
                "class_keys": np.asarray(keys, dtype=np.int64),
                "size": np.asarray(im.shape[:2], dtype=np.int64),
                "stride": STRIDE,
            }


def run_stage(cfg: CAMConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> int:
    """Inputs ``shard`` (id list), ``model`` (model.pt), ``manifest``; output ``cam`` (HDF5). Returns the image count."""
    ids = read_shard(inputs["shard"])
    manifest = Manifest.load(inputs["manifest"])
    if list(manifest.classes) != list(cfg.dataset.classes):
        raise DataError(f"{inputs['manifest']}: manifest classes {manifest.classes} differ from "
                        f"data.classes {list(cfg.dataset.classes)}")
    device = resolve_device(cfg.device)
    model = load_classifier(inputs["model"], cfg.dataset.classes, cfg.backbone, device)
    log.info("CAMs of %d images (scales %s, flip %s) on %s", len(ids), list(cfg.scales), cfg.flip, device)
    with ArtifactWriter(outputs["cam"], stage="cam", config=cfg, compression=cfg.compression) as writer:
        for image_id, arrays, attrs in tqdm(extract(model, cfg, ids, manifest), total=len(ids),
                                            desc="cams", unit="img", mininterval=5):
            writer.add(image_id, arrays, attrs)
    return len(ids)
