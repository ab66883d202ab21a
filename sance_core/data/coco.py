"""MS COCO instance annotations → a PASCAL-VOC-layout dataset of class masks (``sance coco-masks``).

The workflow reads one layout for every dataset (images, palette class masks, split lists),
so COCO is converted once, before the workflow runs, like a download step:

    sance coco-masks /data/coco resources/coco14 --year 2014 --workers 16

reads ``/data/coco/annotations/instances_{train,val}2014.json`` with pycocotools and writes

    resources/coco14/JPEGImages/<id>.jpg             symbolic links to the COCO images (or copies)
    resources/coco14/SegmentationClass/<id>.png      palette PNG: 0 background, 1..80 classes, 255 crowd
    resources/coco14/ImageSets/Segmentation/<split>.txt
    resources/coco14/cls_labels.tsv                  image-level labels (class ids, crowd included)
    resources/coco14/classes.txt, conversion.json    class order; counts of the conversion

where ``<id>`` is the image file's stem (``COCO_train2014_000000000009``). Label ids follow the
category ids in ascending order (COCO's 80 categories have ids 1..90 with gaps; they become
1..80), so ``data.classes`` of workflow/presets/coco14.yaml is ``background`` + :data:`COCO_CLASSES`.

Masks: crowd regions first (255 by default: unknown, ignored by training and evaluation), then
the other instances from the largest to the smallest area, so a small object lying on a large
one stays visible and a real instance always wins over a crowd region. Images without any
annotation are left out of the split lists (nothing to learn from tags; ~1 % of COCO train).
Every file is written under a temporary name and renamed, and existing masks are kept, so
an interrupted conversion resumes where it stopped. Workers get one image's annotations at a
time: only the parent holds the annotation file in memory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from sance_core.io.files import atomic_path, write_text_atomic
from sance_core.io.images import DataError, check_image_id
from sance_core.constants import IGNORE_INDEX
from sance_core.io.palette import save_label_png

log = logging.getLogger(__name__)

#: The 80 COCO 2014/2017 categories in ascending category id (label ids 1..80).
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

CROWD_POLICIES = ("ignore", "class", "background")
IMAGE_MODES = ("symlink", "copy", "hardlink")


@dataclass(frozen=True)
class CocoConversionConfig:
    """How instance annotations become class masks."""

    crowd: str = "ignore"          # crowd regions: 255 (ignore), their class, or background
    images: str = "symlink"        # how JPEGImages/ gets the images: symlink, copy or hardlink
    skip_unlabeled: bool = True    # leave images without annotations out of the split lists
    overwrite: bool = False        # rewrite masks that exist (default: resume)
    workers: int = 1

    def __post_init__(self) -> None:
        if self.crowd not in CROWD_POLICIES:
            raise ValueError(f"crowd must be one of {CROWD_POLICIES}, got {self.crowd!r}")
        if self.images not in IMAGE_MODES:
            raise ValueError(f"images must be one of {IMAGE_MODES}, got {self.images!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


@dataclass
class SplitSource:
    """One COCO split: its instances_*.json and the folder of its images."""

    name: str
    annotations: Path
    image_dir: Path


@dataclass
class ConversionSummary:
    classes: list[str]
    splits: dict[str, dict[str, int]] = field(default_factory=dict)


def category_labels(categories: Sequence[Mapping[str, Any]]) -> tuple[list[str], dict[int, int]]:
    """Class names in ascending category id and the map category id → label id (1..C)."""
    cats = sorted(categories, key=lambda c: int(c["id"]))
    ids = [int(c["id"]) for c in cats]
    if len(set(ids)) != len(ids):
        raise DataError(f"duplicate category ids in the annotations: {ids}")
    if len(cats) > 254:
        raise DataError(f"{len(cats)} categories do not fit uint8 labels (at most 254)")
    return [str(c["name"]) for c in cats], {cid: i + 1 for i, cid in enumerate(ids)}


def _instance_mask(segmentation: Any, height: int, width: int) -> np.ndarray | None:
    """Binary ``[H, W]`` mask of one annotation's polygons or RLE (None when it has none)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict):  # compressed RLE
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode()
    else:
        raise DataError(f"unknown segmentation format {type(segmentation).__name__}")
    mask = mask_utils.decode(rle)
    if mask.shape != (height, width):
        raise DataError(f"segmentation of size {mask.shape} in an image of size {(height, width)}")
    return mask.astype(bool)


def class_mask(height: int, width: int, annotations: Iterable[Mapping[str, Any]], cat_to_label: Mapping[int, int],
               crowd: str = "ignore") -> np.ndarray:
    """The ``[H, W]`` uint8 class mask of one image (0 background, label ids, 255 crowd when ignored).

    Crowd regions are painted first, then instances by decreasing area, so smaller objects
    on top of larger ones survive and instances override crowd regions.
    """
    if crowd not in CROWD_POLICIES:
        raise ValueError(f"crowd must be one of {CROWD_POLICIES}, got {crowd!r}")
    label = np.zeros((height, width), dtype=np.uint8)
    anns = list(annotations)
    crowds = [a for a in anns if a.get("iscrowd", 0)]
    instances = sorted((a for a in anns if not a.get("iscrowd", 0)), key=lambda a: -float(a.get("area", 0.0)))
    for ann in crowds + instances:
        cid = int(ann["category_id"])
        if cid not in cat_to_label:
            raise DataError(f"annotation {ann.get('id')} has unknown category id {cid}")
        is_crowd = bool(ann.get("iscrowd", 0))
        if is_crowd and crowd == "background":
            continue
        mask = _instance_mask(ann["segmentation"], height, width)
        if mask is not None:
            label[mask] = IGNORE_INDEX if (is_crowd and crowd == "ignore") else cat_to_label[cid]
    return label


def image_labels(annotations: Iterable[Mapping[str, Any]], cat_to_label: Mapping[int, int]) -> list[int]:
    """Image-level label ids: every annotated category, crowd included (as IRNet's COCO labels)."""
    return sorted({cat_to_label[int(a["category_id"])] for a in annotations})


def _atomic_copy(src: Path, dst: Path, mode: str) -> None:
    with atomic_path(dst) as tmp:
        if mode == "symlink":
            tmp.symlink_to(src.resolve())
        elif mode == "hardlink":
            os.link(src, tmp)
        else:
            shutil.copyfile(src, tmp)


# a task is everything one worker needs for one image: no shared annotation index
_Task = tuple[str, Path, int, int, list[dict[str, Any]]]


def _convert_one(task: _Task, out_root: Path, cat_to_label: Mapping[int, int], cfg: CocoConversionConfig) -> str:
    image_id, src, height, width, anns = task
    image_dst = out_root / "JPEGImages" / f"{image_id}{src.suffix.lower()}"
    mask_dst = out_root / "SegmentationClass" / f"{image_id}.png"
    if cfg.overwrite or not (image_dst.exists() or image_dst.is_symlink()):
        if not src.is_file():
            raise DataError(f"{src}: image listed in the annotations is missing")
        _atomic_copy(src, image_dst, cfg.images)
    if cfg.overwrite or not mask_dst.exists():
        with atomic_path(mask_dst) as tmp:
            save_label_png(class_mask(height, width, anns, cat_to_label, cfg.crowd), tmp)
        return "written"
    return "kept"


class _Worker:
    """Picklable callable for the process pool."""

    def __init__(self, out_root: Path, cat_to_label: Mapping[int, int], cfg: CocoConversionConfig) -> None:
        self.out_root, self.cat_to_label, self.cfg = out_root, dict(cat_to_label), cfg

    def __call__(self, task: _Task) -> str:
        try:
            return _convert_one(task, self.out_root, self.cat_to_label, self.cfg)
        except Exception as err:  # noqa: BLE001 - name the image, then let the parent fail
            raise DataError(f"{task[1]}: {err}") from None


def _tasks(coco: Any, image_dir: Path, skip_unlabeled: bool, labels: dict[str, list[int]],
           cat_to_label: Mapping[int, int], split: str) -> tuple[list[str], Iterator[_Task], int]:
    """Ids of a split and a lazy stream of per-image tasks (annotations copied one image at a time)."""
    ids: list[str] = []
    chosen: list[tuple[str, dict[str, Any]]] = []
    skipped = 0
    for img_id in sorted(coco.imgs):
        info = coco.imgs[img_id]
        name = Path(info["file_name"]).name
        image_id = Path(name).stem
        check_image_id(image_id, f"{split}: {info['file_name']}")
        anns = coco.imgToAnns.get(img_id, [])
        if not anns and skip_unlabeled:
            skipped += 1
            continue
        if image_id in labels:
            raise DataError(f"image id {image_id!r} appears twice (in two splits or twice in {split})")
        labels[image_id] = image_labels(anns, cat_to_label)
        ids.append(image_id)
        chosen.append((image_id, info))

    def stream() -> Iterator[_Task]:
        for image_id, info in chosen:
            anns = [{k: a[k] for k in ("id", "category_id", "iscrowd", "area", "segmentation") if k in a}
                    for a in coco.imgToAnns.get(info["id"], [])]
            yield image_id, image_dir / Path(info["file_name"]).name, int(info["height"]), int(info["width"]), anns

    return ids, stream(), skipped


def _load_coco(path: Path) -> Any:
    from pycocotools.coco import COCO

    if not path.is_file():
        raise DataError(f"{path}: COCO annotation file not found")
    try:
        return COCO(str(path))
    except (ValueError, KeyError, TypeError, AssertionError) as err:
        raise DataError(f"{path}: not a COCO instances file ({err})") from err


def convert_coco(sources: Sequence[SplitSource], out_root: str | Path,
                 cfg: CocoConversionConfig = CocoConversionConfig()) -> ConversionSummary:
    """Convert every split; all splits must share one category list."""
    from tqdm import tqdm

    out_root = Path(out_root)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (out_root / sub).mkdir(parents=True, exist_ok=True)
    classes: list[str] | None = None
    labels: dict[str, list[int]] = {}
    summary = ConversionSummary(classes=[])
    for source in sources:
        if not source.image_dir.is_dir():
            raise DataError(f"{source.image_dir}: image folder of split {source.name!r} not found")
        coco = _load_coco(source.annotations)
        names, cat_to_label = category_labels(coco.dataset.get("categories", []))
        if classes is None:
            classes = names
        elif names != classes:
            raise DataError(f"{source.annotations}: categories differ from those of the first split")
        ids, tasks, skipped = _tasks(coco, source.image_dir, cfg.skip_unlabeled, labels, cat_to_label, source.name)
        counts = {"images": len(ids), "skipped_unlabeled": skipped, "written": 0, "kept": 0}
        worker = _Worker(out_root, cat_to_label, cfg)
        bar = tqdm(total=len(ids), desc=f"coco {source.name}", unit="img", mininterval=5)
        if cfg.workers > 1:
            with get_context("spawn").Pool(cfg.workers) as pool:
                for result in pool.imap_unordered(worker, tasks, chunksize=16):
                    counts[result] += 1
                    bar.update()
        else:
            for task in tasks:
                counts[worker(task)] += 1
                bar.update()
        bar.close()
        write_text_atomic(out_root / "ImageSets/Segmentation" / f"{source.name}.txt", "".join(f"{i}\n" for i in ids))
        summary.splits[source.name] = counts
        log.info("split %s: %d images (%d without annotations left out), %d masks written, %d kept",
                 source.name, len(ids), skipped, counts["written"], counts["kept"])
        del coco
    summary.classes = ["background", *(classes or [])]
    write_text_atomic(out_root / "classes.txt", "".join(f"{c}\n" for c in summary.classes))
    write_text_atomic(out_root / "cls_labels.tsv",
                       "".join(f"{i}\t{' '.join(map(str, ls))}\n" for i, ls in labels.items()))
    write_text_atomic(out_root / "conversion.json",
                       json.dumps({"config": asdict(cfg), **asdict(summary),
                                   "sources": {s.name: {"annotations": str(s.annotations), "images": str(s.image_dir)}
                                               for s in sources}}, indent=1))
    return summary


def standard_sources(coco_root: str | Path, year: str = "2014", splits: Sequence[str] = ("train", "val")) -> list[SplitSource]:
    """COCO's own layout: ``annotations/instances_<split><year>.json`` and ``<split><year>/``."""
    root = Path(coco_root)
    return [SplitSource(s, root / "annotations" / f"instances_{s}{year}.json", root / f"{s}{year}") for s in splits]
