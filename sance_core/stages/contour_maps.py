"""Stage ``infer_contours``: the raw contour maps the paper's contour benchmark scores (Table 2).

The paper tests "the raw contour maps" of the trained model on SBD *val* (2,857 images,
class-agnostic boundaries): one forward pass per image at its own size, no flip, no
multi-scale averaging - unlike the pseudo-label maps (``infer_maps``), which are
test-time-augmented maps of the *train* split. SBD's val images are not in VOC's train_aug,
so their maps are inferred here, for the ids of ``evaluation.contour.id_list`` (read from
``data.image_dir``); without an id list the ids are the manifest's ``split`` (the demo's val
split). One HDF5 file per mode (stage ``contours``, dataset ``contour`` ``[ceil(H/4), ceil(W/4)]``
float in [0, 1], attributes ``size`` and ``stride``), kept apart from the ``maps`` artifacts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.data.transforms import normalize_image
from sance_core.io.images import DataError, read_id_list, read_image
from sance_core.io.store import ArtifactWriter
from sance_core.runtime import resolve_device

log = logging.getLogger(__name__)

STAGE = "contours"
STRIDE = 4  # the contour branch's output stride (paper: h/4 x w/4)


@dataclass(frozen=True)
class ContourMapsConfig:
    """Which images get raw contour maps: ``id_list`` (e.g. SBD's val.txt) or else the manifest's ``split``."""

    dataset: DatasetSpec
    mode: str = "sance"
    split: str = "val"
    id_list: str | None = None
    device: str = "auto"
    compression: str = "gzip"


def evaluation_ids(cfg: ContourMapsConfig, manifest: Manifest) -> list[str]:
    """The ids of the contour benchmark: the id list in its order, or the split's ids."""
    if cfg.id_list:
        ids = read_id_list(cfg.id_list)
        if not ids:
            raise DataError(f"evaluation.contour.id_list {cfg.id_list}: no ids")
        return ids
    ids = manifest.ids(cfg.split)
    if not ids:
        raise DataError(f"split {cfg.split!r} has no images for the contour evaluation")
    return ids


@torch.inference_mode()
def raw_contour(model: torch.nn.Module, image: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """One forward pass, no augmentation: sigmoid of the contour logits ``[ceil(H/4), ceil(W/4)]``.

    ``image`` is ``[H, W, 3]`` uint8 RGB; the map is resized bilinearly to the stride-4 grid of the
    image (a no-op when the model's output already has that size).
    """
    h, w = image.shape[:2]
    size4 = (math.ceil(h / STRIDE), math.ceil(w / STRIDE))
    out = model(normalize_image(image)[None].to(device))
    contour = torch.sigmoid(out["contour"].float())
    if contour.shape[-2:] != size4:
        contour = F.interpolate(contour, size=size4, mode="bilinear", align_corners=False)
    return contour[0, 0].clamp(0, 1).cpu().numpy()


def run_stage(cfg: ContourMapsConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> int:
    """Inputs ``model`` (the mode's model.pt), ``manifest``; output ``contours`` (HDF5)."""
    from sance_core.stages.pseudo_labels import load_sance_model

    manifest = Manifest.load(inputs["manifest"])
    if list(manifest.classes) != list(cfg.dataset.classes):
        raise DataError(f"{inputs['manifest']}: manifest classes {manifest.classes} differ from data.classes "
                        f"{list(cfg.dataset.classes)}")
    ids = evaluation_ids(cfg, manifest)
    missing = [i for i in ids if not cfg.dataset.image_path(i).is_file()]
    if missing:
        raise DataError(f"{len(missing)} image(s) of the contour evaluation are missing, e.g. "
                        f"{cfg.dataset.image_path(missing[0])} ({', '.join(missing[:5])})")
    device = resolve_device(cfg.device)
    model = load_sance_model(inputs["model"], cfg.dataset.classes, cfg.mode, device)
    log.info("raw contour maps of %d images (mode %s, single scale, no flip) on %s", len(ids), cfg.mode, device)
    attrs = {"mode": cfg.mode, "scales": [1.0], "flip": False, "source": cfg.id_list or f"split {cfg.split}"}
    with ArtifactWriter(outputs["contours"], stage=STAGE, config=cfg, compression=cfg.compression,
                        attrs=attrs) as writer:
        for image_id in tqdm(ids, desc=f"contours[{cfg.mode}]", unit="img", mininterval=5):
            image = read_image(cfg.dataset.image_path(image_id))
            writer.add(image_id, {"contour": raw_contour(model, image, device)},
                       {"size": list(image.shape[:2]), "stride": STRIDE})
    return len(ids)

