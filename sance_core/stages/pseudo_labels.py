"""Pseudo-label synthesis (paper §3.3) and its evaluation: stages ``infer_maps``,
``make_pseudo_labels``, ``export_pseudo_label_pngs`` and ``eval_pseudo_labels``.

1. ``infer_maps`` runs the trained SANCE model on every image of a shard at several scales
   (and mirrored), brings every contour probability map and segmentation softmax back to the
   image's stride-4 grid (``ceil(H/4) x ceil(W/4)``) and averages them (TTA; paper: "SANCE+TTA").
2. ``make_pseudo_labels`` propagates a score map along the averaged contour
   (Eq. 6 with delta = 5, n = 10, t = 8), upsamples x4, divides by the global maximum, puts a
   background channel of constant ``tau_b`` in front and takes the arg-max — IRNet's recipe.
   The score map is the segmentation map's present classes (``map: seg``, SANCE) or the
   stride-4 CAMs of the present classes (``map: cam``, the IRNet baseline).
3. ``export_pseudo_label_pngs`` writes VOC palette PNGs that any segmentation framework reads.
4. ``eval_pseudo_labels`` scores the labels against the ground-truth masks (one confusion
   matrix over the split, 255 ignored) and records ``tau_b`` with the result.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from sance_core.constants import MAP_STRIDE
from sance_core.data.dataset import DatasetSpec, Manifest, load_manifest
from sance_core.data.shards import read_shard
from sance_core.eval.metrics import ConfusionMatrix
from sance_core.io.files import as_paths, atomic_path
from sance_core.io.images import DataError, read_image
from sance_core.io.palette import save_label_png
from sance_core.io.store import ArtifactError, ArtifactReader, ArtifactWriter
from sance_core.runtime import map_on_devices, visible_devices

if TYPE_CHECKING:
    import torch

    from sance_core.models.sance import SanceModel

# torch and the networks are imported inside the functions that use them: exporting and scoring
# pseudo labels (export_pseudo_label_pngs, evaluate_pseudo_labels) never touch torch, and its
# import costs each of those jobs a few CPU seconds

log = logging.getLogger(__name__)

__all__ = [
    "MAP_SOURCES", "SEG_BACKGROUNDS", "MapsConfig", "PseudoLabelConfig", "ExportConfig", "EvalConfig",
    "predict_maps", "present_planes", "read_seg", "synthesize_label", "run_infer_maps", "run_make_pseudo_labels",
    "run_export_pngs", "run_eval",
]

MAP_SOURCES = ("seg", "cam")
# background of a segmentation map in stage 6: the constant tau_b (Eq. 7) or the map's own propagated plane
SEG_BACKGROUNDS = ("tau_b", "map")


# --------------------------------------------------------------------------- stage: infer_maps


@dataclass(frozen=True)
class MapsConfig:
    """Test-time augmentation of the SANCE maps (paper: multi-scale for SANCE+TTA)."""

    dataset: DatasetSpec
    mode: str = "sance"
    split: str = "train"
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)  # SANCE+TTA (Table 1); the CAM scales (range not given)
    flip: bool = True
    device: str = "auto"
    compression: str = "gzip"

    def __post_init__(self) -> None:
        if not self.scales or any(not math.isfinite(s) or s <= 0 for s in self.scales):
            raise ValueError(f"scales must be a non-empty list of positive numbers, got {list(self.scales)}")


def load_sance_model(model_file: str | Path, classes: Sequence[str], mode: str, device: torch.device) -> SanceModel:
    """The trained model of ``mode``; refuses a model of another dataset or mode."""
    from sance_core.io.weights import load_model, load_state_strict
    from sance_core.models.sance import ARCH_KEYS, build_from_config

    state, config = load_model(Path(model_file).parent, {"kind": "sance", "classes": list(classes), "mode": mode})
    missing = [k for k in ARCH_KEYS if k not in config]
    if missing:
        raise ValueError(f"{Path(model_file).parent}/config.json lacks {missing}")
    model = build_from_config(config)
    load_state_strict(model, state, model_file)
    return model.to(device).eval()


def predict_maps(model: SanceModel, image: np.ndarray, scales: Sequence[float] = (1.0,), flip: bool = True,
                 device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray | None]:
    """Averaged contour ``[h4, w4]`` and segmentation softmax ``[C+1, h4, w4]`` (None without seg branch).

    ``h4, w4 = ceil(H / 4), ceil(W / 4)``; each scale's maps are resized bilinearly to that grid.
    """
    import torch
    import torch.nn.functional as F

    from sance_core.data.transforms import normalize_image

    h, w = image.shape[:2]
    size4 = (math.ceil(h / MAP_STRIDE), math.ceil(w / MAP_STRIDE))
    contour_sum: torch.Tensor | None = None
    seg_sum: torch.Tensor | None = None
    count = 0
    with torch.inference_mode():
        x0 = normalize_image(image)[None].to(device)
        for s in scales:
            size = (max(1, round(h * s)), max(1, round(w * s)))
            x = x0 if size == (h, w) else F.interpolate(x0, size=size, mode="bilinear", align_corners=False)
            if flip:
                x = torch.cat([x, x.flip(-1)], dim=0)
            out = model(x)
            maps = [torch.sigmoid(out["contour"].float())]
            if "seg" in out:
                maps.append(torch.softmax(out["seg"].float(), dim=1))
            maps = [F.interpolate(m, size=size4, mode="bilinear", align_corners=False) for m in maps]
            if flip:
                maps = [torch.cat([m[:1], m[1:].flip(-1)], dim=0) for m in maps]
            c = maps[0].sum(dim=0)[0]
            contour_sum = c if contour_sum is None else contour_sum + c
            if len(maps) > 1:
                sg = maps[1].sum(dim=0)
                seg_sum = sg if seg_sum is None else seg_sum + sg
            count += x.shape[0]
        assert contour_sum is not None
        contour = (contour_sum / count).clamp(0, 1).cpu().numpy()
        seg = None if seg_sum is None else (seg_sum / count).cpu().numpy()
    return contour, seg


def present_planes(seg: np.ndarray, keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The background plane and the planes of the present classes of a full softmax ``[C+1, h, w]``.

    Returns ``([1 + K, h, w], class_keys [1 + K])`` with ``class_keys = [0, *keys]``: what
    ``infer_maps`` stores (an image of COCO holds ~3 of 80 classes; the absent planes are never read).
    """
    stored = np.asarray([0, *sorted({int(k) for k in keys if int(k) != 0})], dtype=np.int64)
    if stored[-1] >= seg.shape[0]:
        raise ValueError(f"class key {int(stored[-1])} outside a map of {seg.shape[0]} classes")
    return seg[stored], stored


def read_seg(reader: ArtifactReader, image_id: str, keys: Sequence[int]) -> np.ndarray:
    """Segmentation planes ``[len(keys), h, w]`` of the class ids ``keys`` from a maps artifact.

    Maps store the background and the present classes with their ids in the image attribute
    ``class_keys``; maps written before that (no ``class_keys``) hold all C + 1 planes, indexed
    by class id.  A key that was not stored is an error naming the image.
    """
    seg = reader.read(image_id, "seg")
    stored = reader.image_attrs(image_id).get("class_keys")
    if stored is None:
        return seg[[int(k) for k in keys]]
    where = {int(k): i for i, k in enumerate(np.atleast_1d(stored))}
    absent = [int(k) for k in keys if int(k) not in where]
    if absent:
        raise ArtifactError(f"{reader.path}: {image_id} stores seg planes of classes {sorted(where)}, "
                            f"not {absent} (the manifest's labels changed since infer_maps ran?)")
    return seg[[where[int(k)] for k in keys]]


def _maps_worker(cfg: MapsConfig, model_file: str, present: Mapping[str, Sequence[int]], device: torch.device):
    """Per-device worker of ``infer_maps``: builds the model once, then maps one image id to its entry."""
    model = load_sance_model(model_file, cfg.dataset.classes, cfg.mode, device)

    def work(image_id: str) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
        image = read_image(cfg.dataset.image_path(image_id))
        contour, seg = predict_maps(model, image, cfg.scales, cfg.flip, device)
        attrs: dict[str, Any] = {"size": list(image.shape[:2]), "stride": MAP_STRIDE}
        if seg is None:
            return image_id, {"contour": contour}, attrs
        planes, keys = present_planes(seg, present[image_id])
        return image_id, {"contour": contour, "seg": planes}, {**attrs, "class_keys": keys}
    return work


def run_infer_maps(cfg: MapsConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> int:
    """Inputs ``model`` (model.pt), ``shard`` (id list), ``manifest``; output ``maps`` (HDF5).

    The segmentation map keeps the background and the image's classes (manifest labels of
    ``split``), ``class_keys`` naming them.  Images are spread over every visible device
    (``sance_core.runtime.map_on_devices``); the single writer takes them in shard order.
    """
    ids = read_shard(inputs["shard"])
    tags = load_manifest(inputs["manifest"], cfg.dataset).labels(cfg.split)
    unlabelled = [i for i in ids if i not in tags]
    if unlabelled:
        raise DataError(f"{inputs['manifest']}: {len(unlabelled)} shard id(s) have no labels in split "
                        f"{cfg.split!r}, e.g. {unlabelled[:3]}")
    present = {i: [int(k) for k in tags[i]] for i in ids}
    devices = visible_devices(cfg.device)
    log.info("maps of %d images (mode %s, scales %s, flip %s) on %s", len(ids), cfg.mode, list(cfg.scales),
             cfg.flip, ", ".join(map(str, devices)))
    attrs = {"mode": cfg.mode, "scales": list(cfg.scales), "flip": cfg.flip}
    make_worker = functools.partial(_maps_worker, cfg, str(inputs["model"]), present)
    with ArtifactWriter(outputs["maps"], stage="maps", config=cfg, compression=cfg.compression,
                        attrs=attrs) as writer:
        for image_id, arrays, image_attrs in tqdm(map_on_devices(make_worker, ids, devices), total=len(ids),
                                                  desc=f"maps[{cfg.mode}]", unit="img", mininterval=5):
            writer.add(image_id, arrays, image_attrs)
    return len(ids)


# --------------------------------------------------------------------------- stage: make_pseudo_labels


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Eq. (6) + IRNet's labelling; paper: radius (delta) 5, beta (n) 10, exp_times (t) 8."""

    dataset: DatasetSpec
    mode: str = "sance"
    split: str = "train"
    map: str = "seg"  # "seg" (SANCE) or "cam" (IRNet baseline)
    radius: int = 5
    beta: float = 10.0
    exp_times: int = 8
    tau_b: float = 0.25  # background constant; the paper gives no value (IRNet: 0.25)
    normalize_seg: bool = True  # divide propagated seg scores by their global max (CAMs always are, as IRNet)
    seg_background: str = "tau_b"  # "tau_b" (Eq. 7) or "map": the seg map's own background plane, propagated
    compression: str = "gzip"

    def __post_init__(self) -> None:
        if self.map not in MAP_SOURCES:
            raise ValueError(f"map must be one of {MAP_SOURCES}, got {self.map!r}")
        if self.seg_background not in SEG_BACKGROUNDS:
            raise ValueError(f"seg_background must be one of {SEG_BACKGROUNDS}, got {self.seg_background!r}")
        if self.radius < 2 or self.exp_times < 0 or self.beta < 0:
            raise ValueError("need radius >= 2, exp_times >= 0 and beta >= 0")
        if not 0 < self.tau_b < 1:
            raise ValueError(f"tau_b must lie in (0, 1), got {self.tau_b}")


def synthesize_label(scores: np.ndarray, keys: Sequence[int], contour: np.ndarray, size: tuple[int, int],
                     radius: int = 5, beta: float = 10.0, exp_times: int = 8, tau_b: float = 0.25,
                     normalize: bool = True, background: np.ndarray | None = None) -> np.ndarray:
    """Pseudo label ``[H, W]`` uint8 from present-class scores ``[K, h4, w4]`` and a contour ``[h4, w4]``.

    Propagate, upsample x4 (bilinear, cropped to ``size``), divide by the global maximum
    (``normalize``; IRNet's recipe for CAMs, whose scale is arbitrary — softmax maps are
    probabilities already), put the constant ``tau_b`` in front as background, arg-max, map
    channel k to ``keys[k]``.

    ``background`` (``[h4, w4]``, a segmentation map's background plane) replaces Eq. (7)'s
    constant: it is propagated with the class planes and the arg-max runs over all of them,
    without ``tau_b`` and without normalisation (``pseudo_labels.seg_background: map``).
    """
    scores = np.asarray(scores, dtype=np.float32)
    contour = np.asarray(contour, dtype=np.float32)
    if scores.ndim != 3 or contour.ndim != 2 or scores.shape[1:] != contour.shape:
        raise ValueError(f"scores [K, h, w] and contour [h, w] disagree: {scores.shape} vs {contour.shape}")
    if len(keys) != scores.shape[0]:
        raise ValueError(f"{len(keys)} class keys for {scores.shape[0]} score channels")
    h, w = size
    if contour.shape[0] * MAP_STRIDE < h or contour.shape[1] * MAP_STRIDE < w:
        raise ValueError(f"maps {contour.shape} do not cover an image of {size} at stride {MAP_STRIDE}")
    if background is not None:
        background = np.asarray(background, dtype=np.float32)
        if background.shape != contour.shape:
            raise ValueError(f"background plane {background.shape} and contour {contour.shape} disagree")
    if scores.shape[0] == 0:
        return np.zeros((h, w), dtype=np.uint8)
    import torch
    import torch.nn.functional as F

    from sance_core.ops.online_labels import scores_to_label
    from sance_core.ops.propagation import propagate

    planes = scores if background is None else np.concatenate([background[None], scores])
    prop = propagate(torch.from_numpy(planes), torch.from_numpy(contour).clamp(0, 1), radius, beta, exp_times)
    up = F.interpolate(prop[None], scale_factor=MAP_STRIDE, mode="bilinear", align_corners=False)[0, :, :h, :w]
    if background is not None:
        table = np.asarray([0, *keys], dtype=np.uint8)
        return table[up.argmax(dim=0).numpy()]
    label = scores_to_label(up, tau_b, keys=torch.as_tensor(list(keys), dtype=torch.long), normalize=normalize)
    return label.numpy().astype(np.uint8)


def run_make_pseudo_labels(cfg: PseudoLabelConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> int:
    """Inputs ``maps``, ``shard``, ``manifest`` and, for ``map: cam``, ``cam``; output ``labels`` (HDF5)."""
    ids = read_shard(inputs["shard"])
    manifest = load_manifest(inputs["manifest"], cfg.dataset)
    tags = manifest.labels(cfg.split)
    maps = ArtifactReader(inputs["maps"], expect_stage="maps")
    cams = None
    if cfg.map == "cam":
        if not inputs.get("cam"):
            raise ValueError("map is 'cam' but no CAM shard was given (input 'cam')")
        cams = ArtifactReader(inputs["cam"], expect_stage="cam")
    missing = [i for i in ids if i not in maps or (cams is not None and i not in cams)]
    if missing:
        raise ArtifactError(f"maps/CAM shards lack {len(missing)} image(s) of this shard, e.g. {missing[:3]}")
    log.info("pseudo labels of %d images from the %s map (mode %s, radius %d, beta %g, t %d, tau_b %g)",
             len(ids), cfg.map, cfg.mode, cfg.radius, cfg.beta, cfg.exp_times, cfg.tau_b)
    normalize = cfg.map == "cam" or cfg.normalize_seg  # CAMs have no scale of their own: always normalised
    own_background = cfg.map == "seg" and cfg.seg_background == "map"  # CAMs have no background plane
    attrs = {"mode": cfg.mode, "map": cfg.map, "tau_b": cfg.tau_b, "normalize": normalize,
             "seg_background": "map" if own_background else "tau_b"}
    with ArtifactWriter(outputs["labels"], stage="pseudo_labels", config=cfg, compression=cfg.compression,
                        attrs=attrs) as writer:
        for image_id in tqdm(ids, desc=f"pseudo[{cfg.mode}]", unit="img", mininterval=5):
            size = tuple(int(v) for v in maps.image_attrs(image_id)["size"])
            contour = maps.read(image_id, "contour")
            background = None
            if cams is not None:
                scores = cams.read(image_id, "cam_stride4")
                keys = [int(k) for k in np.atleast_1d(cams.image_attrs(image_id).get("class_keys", []))]
            else:
                if "seg" not in maps.keys(image_id):
                    raise ArtifactError(f"{inputs['maps']}: {image_id} has no 'seg' map (a model without "
                                        "segmentation branch needs map: cam)")
                keys = [int(k) for k in tags[image_id]]
                if own_background:  # one read for the background plane and the class planes
                    planes = read_seg(maps, image_id, [0, *keys])
                    background, scores = planes[0], planes[1:]
                else:
                    scores = read_seg(maps, image_id, keys)
            if scores.shape[1:] != contour.shape:
                raise ArtifactError(f"{image_id}: score map {scores.shape[1:]} and contour {contour.shape} differ")
            label = synthesize_label(scores.reshape(len(keys), *contour.shape), keys, contour, size,
                                     cfg.radius, cfg.beta, cfg.exp_times, cfg.tau_b,
                                     normalize=normalize, background=background)
            writer.add(image_id, {"label": label}, {"size": list(size), "tau_b": cfg.tau_b})
    maps.close()
    if cams is not None:
        cams.close()
    return len(ids)


# --------------------------------------------------------------------------- stage: export_pseudo_label_pngs


@dataclass(frozen=True)
class ExportConfig:
    mode: str = "sance"


def run_export_pngs(cfg: ExportConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> int:
    """Input ``labels`` (all pseudo-label shards); output ``png`` (a folder of ``<id>.png``, VOC palette).

    Written into a temporary sibling folder and renamed into place, so a failure never leaves
    a partial folder.
    """
    out = Path(outputs["png"])
    n = 0
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for path in as_paths(inputs["labels"]):
            with ArtifactReader(path, expect_stage="pseudo_labels") as reader:
                for image_id in reader.ids():
                    save_label_png(reader.read(image_id, "label"), tmp / f"{image_id}.png")
                    n += 1
    log.info("wrote %d pseudo-label PNGs to %s", n, out)
    return n


# --------------------------------------------------------------------------- stage: eval_pseudo_labels


@dataclass(frozen=True)
class EvalConfig:
    dataset: DatasetSpec
    mode: str = "sance"
    split: str = "train"
    tau_b: float = 0.25  # recorded with the result (the value the labels were made with)
    map: str = "seg"


def evaluate_pseudo_labels(cfg: EvalConfig, manifest: Manifest,
                           label_paths: Sequence[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train-split mIoU of the pseudo labels (one confusion matrix, 255 ignored); JSON summary and table."""
    from sance_core.eval.evaluation import NO_MASKS, iter_with_masks

    for path in label_paths:
        with ArtifactReader(path, expect_stage="pseudo_labels") as reader:
            stored = reader.attrs.get("tau_b")
        if stored != cfg.tau_b:
            raise ArtifactError(f"{path}: pseudo labels were made with tau_b {stored}, "
                                f"but the evaluation records {cfg.tau_b}")
    cm = ConfusionMatrix(cfg.dataset.num_classes)
    n = 0
    for _, label, _, gt in iter_with_masks(cfg.dataset, manifest, cfg.split, label_paths, "pseudo_labels", "label"):
        cm.update(label, gt)
        n += 1
    result: dict[str, Any] = {"split": cfg.split, "mode": cfg.mode, "map": cfg.map, "tau_b": cfg.tau_b,
                              "n_images": n}
    if n == 0:
        log.warning("pseudo-label evaluation: %s", NO_MASKS)
        result.update({"miou": None, "iou": {}, "note": NO_MASKS})
        return result, []
    result.update(cm.as_dict(list(cfg.dataset.classes)))
    log.info("pseudo labels (%s): mIoU %.4f over %d images (tau_b %g)", cfg.mode, result["miou"], n, cfg.tau_b)
    return result, cm.table(list(cfg.dataset.classes))


def run_eval(cfg: EvalConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs ``labels`` (all shards), ``manifest``; outputs ``json`` (``miou``, ``iou``, ``n_images``,
    ``tau_b``, ...) and ``tsv`` (per-class table)."""
    from sance_core.eval.evaluation import TABLE_COLUMNS, write_json, write_tsv

    manifest = load_manifest(inputs["manifest"], cfg.dataset)
    result, rows = evaluate_pseudo_labels(cfg, manifest, as_paths(inputs["labels"]))
    write_json(result, outputs["json"])
    if "tsv" in outputs:
        write_tsv(rows, outputs["tsv"], TABLE_COLUMNS)
    return result
