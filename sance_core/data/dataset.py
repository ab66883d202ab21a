"""A PASCAL-VOC-layout dataset description and the manifest that validation writes.

The same description serves the generated demo data, VOC 2012 (+SBD ``SegmentationClassAug``)
and any user dataset laid out the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sance_core.io.files import write_text_atomic
from sance_core.io.images import DataError, read_image
from sance_core.io.palette import read_label_png

LABEL_SOURCES = ("masks", "file", "xml")
FORMATS = ("voc", "tags_csv")


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's files are, relative to ``root``; built from the ``data:`` config section."""

    root: str
    classes: tuple[str, ...]
    image_dir: str = "JPEGImages"
    image_ext: str = ".jpg"
    mask_dir: str | None = "SegmentationClass"
    split_dir: str = "ImageSets/Segmentation"
    labels: str = "masks"
    label_file: str | None = None
    annotation_dir: str = "Annotations"  # VOC XML, read when labels is 'xml'
    format: str = "voc"  # 'tags_csv': ids, splits and labels from tags_file (sance_core.data.readers)
    tags_file: str | None = None

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise ValueError(f"data.classes must list background and at least one class, got {list(self.classes)}")
        if self.classes[0] != "background":
            raise ValueError(f"data.classes must start with 'background', got {self.classes[0]!r}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"data.classes has duplicates: {list(self.classes)}")
        if len(self.classes) > 255:
            raise ValueError("at most 254 foreground classes fit uint8 labels with 255 = ignore")
        if self.format not in FORMATS:
            raise ValueError(f"data.format must be one of {FORMATS}, got {self.format!r}")
        if self.format == "tags_csv":  # labels come from the tags file; masks are optional
            if not self.tags_file:
                raise ValueError("data.format is 'tags_csv' but data.tags_file is not set")
            return
        if self.labels not in LABEL_SOURCES:
            raise ValueError(f"data.labels must be one of {LABEL_SOURCES}, got {self.labels!r}")
        if self.labels == "file" and not self.label_file:
            raise ValueError("data.labels is 'file' but data.label_file is not set")
        if self.labels == "masks" and not self.mask_dir:
            raise ValueError("data.labels is 'masks' but data.mask_dir is not set")

    @property
    def num_classes(self) -> int:
        """Number of classes including background (C + 1)."""
        return len(self.classes)

    def split_path(self, split: str) -> Path:
        return Path(self.root) / self.split_dir / f"{split}.txt"

    def image_path(self, image_id: str) -> Path:
        return Path(self.root) / self.image_dir / f"{image_id}{self.image_ext}"

    def mask_path(self, image_id: str) -> Path | None:
        return None if not self.mask_dir else Path(self.root) / self.mask_dir / f"{image_id}.png"

    def annotation_path(self, image_id: str) -> Path:
        return Path(self.root) / self.annotation_dir / f"{image_id}.xml"

    def tags_path(self) -> Path:
        return Path(self.root) / str(self.tags_file)


def read_label_file(path: str | Path, classes: tuple[str, ...]) -> dict[str, list[int]]:
    """Read image-level labels: ``id<TAB>labels`` per line, labels as class ids or class names."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label file not found")
    name_to_id = {name: i for i, name in enumerate(classes)}
    labels: dict[str, list[int]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t") if "\t" in line else line.split(maxsplit=1)
        image_id, tags = parts[0].strip(), (parts[1] if len(parts) > 1 else "")
        ids = []
        for tag in tags.replace(",", " ").split():
            if tag.isdigit():
                value = int(tag)
            elif tag in name_to_id:
                value = name_to_id[tag]
            else:
                raise DataError(f"{path}:{lineno}: unknown class {tag!r} (known: {', '.join(classes[1:])})")
            if not 1 <= value < len(classes):
                raise DataError(f"{path}:{lineno}: class id {value} outside 1..{len(classes) - 1}")
            ids.append(value)
        labels[image_id] = sorted(set(ids))
    return labels


@dataclass
class Manifest:
    """What validation found: per split the ids, sizes and image-level labels; and what it skipped."""

    dataset: str
    root: str
    classes: list[str]
    splits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def ids(self, split: str) -> list[str]:
        return [entry["id"] for entry in self.entries(split)]

    def entries(self, split: str) -> list[dict[str, Any]]:
        try:
            return self.splits[split]
        except KeyError:
            raise KeyError(f"manifest has no split {split!r} (has {sorted(self.splits)})") from None

    def labels(self, split: str) -> dict[str, list[int]]:
        return {e["id"]: e["labels"] for e in self.entries(split)}

    def label_vector(self, split: str, image_id: str) -> np.ndarray:
        """Multi-hot vector over the C foreground classes (background excluded)."""
        vec = np.zeros(len(self.classes) - 1, dtype=np.float32)
        for c in self.labels(split)[image_id]:
            vec[c - 1] = 1.0
        return vec

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.__dict__, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: manifest not found (run the validate_dataset rule first)")
        return cls(**json.loads(path.read_text()))


def load_sample(spec: DatasetSpec, image_id: str, with_mask: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Image ``[H, W, 3]`` uint8 and, when available, its mask ``[H, W]`` uint8."""
    image = read_image(spec.image_path(image_id))
    mask_path = spec.mask_path(image_id)
    mask = read_label_png(mask_path) if (with_mask and mask_path is not None and mask_path.is_file()) else None
    return image, mask
