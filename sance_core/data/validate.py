"""Dataset validation: read every listed image and mask once, before any training starts.

All problems are collected and reported together (file and reason each), so a user fixes
a broken dataset in one round instead of one error per run.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sance_core.data.dataset import DatasetSpec, Manifest, read_label_file
from sance_core.io.images import DataError, check_image_id, read_id_list, read_image
from sance_core.constants import IGNORE_INDEX
from sance_core.io.palette import read_label_png
from sance_core.data.readers import read_tags_csv, read_voc_xml_labels

log = logging.getLogger(__name__)

ON_BAD_IMAGE = ("fail", "skip")


@dataclass(frozen=True)
class ValidationConfig:
    name: str
    dataset: DatasetSpec
    splits: tuple[str, ...]
    on_bad_image: str = "fail"
    threads: int = 2

    def __post_init__(self) -> None:
        if self.on_bad_image not in ON_BAD_IMAGE:
            raise ValueError(f"data.on_bad_image must be one of {ON_BAD_IMAGE}, got {self.on_bad_image!r}")
        if not self.splits:
            raise ValueError("no split to validate")


@dataclass(frozen=True)
class Problem:
    split: str
    image_id: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"  [{self.split}] {self.path}: {self.reason}"


def _label_source(spec: DatasetSpec) -> str:
    """'masks', 'file' or 'xml'; a tags table acts as a label file."""
    return "file" if spec.format == "tags_csv" else spec.labels


def _check_one(spec: DatasetSpec, split: str, image_id: str, file_labels: dict[str, list[int]] | None):
    """Return (entry, problems) for one id; never raises for data problems."""
    problems: list[Problem] = []
    source = _label_source(spec)
    image_path = spec.image_path(image_id)
    try:
        image = read_image(image_path)
    except DataError as err:
        reason = "missing image file" if not image_path.is_file() else str(err).split(": ", 1)[-1]
        return None, [Problem(split, image_id, str(image_path), reason)]
    height, width = image.shape[:2]

    mask_path = spec.mask_path(image_id)
    mask = None
    if mask_path is not None:
        if mask_path.is_file():
            try:
                mask = read_label_png(mask_path)
            except (OSError, ValueError) as err:
                problems.append(Problem(split, image_id, str(mask_path), f"unreadable mask ({err})"))
        elif source == "masks":
            problems.append(Problem(split, image_id, str(mask_path), "missing mask file"))
    if mask is not None:
        if mask.shape != (height, width):
            problems.append(Problem(
                split, image_id, str(mask_path),
                f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size {width}x{height}",
            ))
        values = np.unique(mask)
        bad = values[(values >= spec.num_classes) & (values != IGNORE_INDEX)]
        if bad.size:
            problems.append(Problem(
                split, image_id, str(mask_path),
                f"class id(s) {bad.tolist()} outside 0..{spec.num_classes - 1} (and 255 = ignore)",
            ))
    if problems:
        return None, problems

    if source == "masks":
        assert mask is not None
        labels = [int(v) for v in np.unique(mask) if 0 < v < spec.num_classes]
    elif source == "xml":
        try:
            labels = read_voc_xml_labels(spec.annotation_path(image_id), spec.classes)
        except DataError as err:
            path, _, reason = str(err).partition(": ")
            return None, [Problem(split, image_id, path, reason)]
    else:
        assert file_labels is not None
        if image_id not in file_labels:
            return None, [Problem(split, image_id, str(spec.label_file), "id has no entry in the label file")]
        labels = file_labels[image_id]
    entry = {"id": image_id, "height": int(height), "width": int(width), "labels": labels,
             "has_mask": mask is not None}
    return entry, []


def validate_dataset(cfg: ValidationConfig, manifest_path: str | Path) -> Manifest:
    """Check every listed file; write the manifest, or raise one DataError listing every problem."""
    spec = cfg.dataset
    root = Path(spec.root)
    if not root.is_dir():
        raise DataError(f"{root}: data root does not exist (data.root in the config)")
    file_labels = None
    tags = None
    if spec.format == "tags_csv":
        tags = read_tags_csv(spec.tags_path(), spec.classes, spec.image_ext, cfg.splits[0], cfg.splits[-1])
        file_labels = tags.labels
    elif spec.labels == "file":
        label_path = Path(spec.label_file)  # type: ignore[arg-type]
        if not label_path.is_absolute():
            label_path = root / label_path
        file_labels = read_label_file(label_path, spec.classes)

    fatal: list[str] = []
    problems: list[Problem] = []
    manifest = Manifest(dataset=cfg.name, root=str(root), classes=list(spec.classes))
    for split in cfg.splits:
        split_path = spec.split_path(split) if tags is None else spec.tags_path()
        try:
            ids = read_id_list(split_path) if tags is None else list(tags.splits.get(split, []))
        except DataError as err:
            fatal.append(f"  {err}")
            continue
        if not ids:
            fatal.append(f"  {split_path}: split {split!r} lists no image")
            continue
        seen: set[str] = set()
        todo: list[str] = []
        for image_id in ids:
            try:
                check_image_id(image_id, split_path)
            except DataError as err:
                problems.append(Problem(split, image_id, str(split_path), str(err).split(": ", 1)[-1]))
                continue
            if image_id in seen:
                problems.append(Problem(split, image_id, str(split_path), f"id {image_id!r} listed twice"))
                continue
            seen.add(image_id)
            todo.append(image_id)
        with ThreadPoolExecutor(max_workers=max(1, cfg.threads)) as pool:
            results = list(tqdm(
                pool.map(lambda i: _check_one(spec, split, i, file_labels), todo),
                total=len(todo), desc=f"validate {split}", unit="img", disable=None,
            ))
        entries: list[dict[str, Any]] = []
        for entry, found in results:
            problems.extend(found)
            if entry is not None:
                entries.append(entry)
        if not entries:
            fatal.append(f"  {split_path}: no usable image left in split {split!r}")
        manifest.splits[split] = entries

    if problems and cfg.on_bad_image == "fail":
        fatal = [str(p) for p in problems] + fatal
    elif problems:
        for p in problems:
            log.warning("skipping bad input: %s: %s", p.path, p.reason)
        manifest.skipped = [p.__dict__ for p in problems]
    if fatal:
        hint = "" if cfg.on_bad_image == "skip" else "\n(set data.on_bad_image: skip to drop bad images instead)"
        raise DataError(f"dataset {cfg.name!r} at {root} has {len(fatal)} problem(s):\n" + "\n".join(fatal) + hint)

    Path(manifest_path).parent.mkdir(parents=True, exist_ok=True)
    manifest.save(manifest_path)
    counts = ", ".join(f"{s}: {len(e)}" for s, e in manifest.splits.items())
    log.info("dataset %s is valid (%s); manifest %s", cfg.name, counts, manifest_path)
    return manifest


