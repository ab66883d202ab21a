"""Readers of the annotation formats real datasets come in, shared by the demo and real runs.

* PASCAL VOC XML (``Annotations/<id>.xml``): image-level labels from the object names.
* SBD (``cls/<id>.mat``, ``inst/<id>.mat``): class masks, per-class boundaries, instances.
* A folder of images plus a CSV/TSV of tags (``image,tags`` header, optional ``split``
  column): the format most users have. ``data.format: tags_csv`` reads it in place; see
  :func:`read_tags_csv`.

Every reader raises :class:`~sance_core.io.images.DataError` naming the file (and row) at fault.
"""

from __future__ import annotations

import csv
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sance_core.io.files import atomic_path
from sance_core.io.images import DataError, check_image_id

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- VOC XML


@dataclass(frozen=True)
class VocObject:
    name: str
    difficult: bool
    truncated: bool
    bbox: tuple[int, int, int, int] | None  # xmin, ymin, xmax, ymax (VOC's 1-based pixels)


def read_voc_objects(path: str | Path) -> list[VocObject]:
    """The ``<object>`` entries of a VOC annotation file (parts such as 'head' are not objects)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(f"{path}: not a readable XML annotation ({err})") from err
    objects = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"{path}: an <object> has no <name>")
        box = obj.find("bndbox")
        bbox = None
        if box is not None:
            try:
                bbox = tuple(int(float(box.findtext(k) or "nan")) for k in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError:
                bbox = None
        objects.append(VocObject(
            name=name,
            difficult=(obj.findtext("difficult") or "0").strip() == "1",
            truncated=(obj.findtext("truncated") or "0").strip() == "1",
            bbox=bbox,  # type: ignore[arg-type]
        ))
    return objects


def read_voc_xml_labels(path: str | Path, classes: Sequence[str], include_difficult: bool = True) -> list[int]:
    """Sorted class ids (1..C) of the objects in a VOC XML file.

    ``difficult`` objects count as present by default, as in IRNet's ``cls_labels.npy``
    (``load_image_label_from_xml`` takes every ``<name>`` of a listed class, without looking
    at ``difficult``). Unlike IRNet, an object name that is not in ``classes`` is an error
    instead of being dropped silently (a typo must never change the labels), and only
    ``<object>/<name>`` is read (never ``<owner>/<name>`` or part names).
    """
    name_to_id = {name: i for i, name in enumerate(classes)}
    ids = set()
    for obj in read_voc_objects(path):
        if obj.difficult and not include_difficult:
            continue
        if obj.name not in name_to_id or name_to_id[obj.name] == 0:
            raise DataError(f"{path}: object class {obj.name!r} is not in data.classes ({', '.join(classes[1:])})")
        ids.add(name_to_id[obj.name])
    return sorted(ids)


# --------------------------------------------------------------------------- SBD


def _loadmat(path: str | Path, key: str) -> np.void:
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: SBD annotation file not found")
    try:
        mat = scipy.io.loadmat(path)
    except (ValueError, OSError, NotImplementedError) as err:
        raise DataError(f"{path}: not a readable MATLAB file ({err})") from err
    if key not in mat:
        raise DataError(f"{path}: no {key!r} struct (has {sorted(k for k in mat if not k.startswith('__'))})")
    return mat[key][0, 0]


def _dense(sparse_or_dense) -> np.ndarray:
    arr = sparse_or_dense.toarray() if hasattr(sparse_or_dense, "toarray") else np.asarray(sparse_or_dense)
    return arr.astype(bool)


@dataclass
class SBDClassAnnotation:
    """``GTcls`` of SBD: class mask ``[H, W]`` (0..20, no void band) and one boundary map per class."""

    segmentation: np.ndarray
    class_boundaries: list  # sparse [H, W] per class 1..C (index c - 1)
    categories: list[int] = field(default_factory=list)

    def boundary(self, class_id: int) -> np.ndarray:
        """Dense boolean boundary map of one class (1..C)."""
        if not 1 <= class_id <= len(self.class_boundaries):
            raise ValueError(f"class id {class_id} outside 1..{len(self.class_boundaries)}")
        return _dense(self.class_boundaries[class_id - 1])

    def boundary_map(self) -> np.ndarray:
        """Class-agnostic boundary map ``[H, W]`` bool: a pixel on the boundary of any class."""
        out = np.zeros(self.segmentation.shape, dtype=bool)
        for b in self.class_boundaries:
            out |= _dense(b)
        return out


def read_sbd_cls(path: str | Path) -> SBDClassAnnotation:
    """Read ``cls/<id>.mat``: ``GTcls.Segmentation``, ``GTcls.Boundaries``, ``GTcls.CategoriesPresent``."""
    gt = _loadmat(path, "GTcls")
    seg = np.asarray(gt["Segmentation"])
    if seg.ndim != 2:
        raise DataError(f"{path}: GTcls.Segmentation must be 2-D, got shape {seg.shape}")
    if seg.size and seg.max() > 255:
        raise DataError(f"{path}: GTcls.Segmentation has values above 255")
    boundaries = [b for b in np.asarray(gt["Boundaries"]).ravel()]
    for c, b in enumerate(boundaries, start=1):
        if tuple(b.shape) != seg.shape:
            raise DataError(f"{path}: boundary map of class {c} has shape {tuple(b.shape)}, mask {seg.shape}")
    cats = [int(v) for v in np.asarray(gt["CategoriesPresent"]).ravel()] if "CategoriesPresent" in gt.dtype.names else []
    return SBDClassAnnotation(seg.astype(np.uint8), boundaries, cats)


@dataclass
class SBDInstanceAnnotation:
    """``GTinst`` of SBD: instance ids ``[H, W]`` (0 = none, k = instance k) and each instance's class."""

    segmentation: np.ndarray
    categories: list[int]
    instance_boundaries: list

    def class_mask(self) -> np.ndarray:
        """Class ids ``[H, W]`` uint8 from the instance map."""
        lut = np.zeros(int(self.segmentation.max(initial=0)) + 1, dtype=np.uint8)
        lut[1:len(self.categories) + 1] = self.categories[: len(lut) - 1]
        return lut[self.segmentation]

    def boundary_map(self) -> np.ndarray:
        out = np.zeros(self.segmentation.shape, dtype=bool)
        for b in self.instance_boundaries:
            out |= _dense(b)
        return out


def read_sbd_inst(path: str | Path) -> SBDInstanceAnnotation:
    """Read ``inst/<id>.mat``: ``GTinst.Segmentation``, ``GTinst.Categories``, ``GTinst.Boundaries``."""
    gt = _loadmat(path, "GTinst")
    seg = np.asarray(gt["Segmentation"])
    cats = [int(v) for v in np.asarray(gt["Categories"]).ravel()]
    if seg.size and seg.max() > len(cats):
        raise DataError(f"{path}: instance id {int(seg.max())} but only {len(cats)} categories")
    return SBDInstanceAnnotation(seg.astype(np.int32), cats, list(np.asarray(gt["Boundaries"]).ravel()))


def convert_sbd_masks(cls_dir: str | Path, out_dir: str | Path, ids: Sequence[str]) -> list[Path]:
    """Write SBD class masks as VOC palette PNGs (how ``SegmentationClassAug`` is built from SBD)."""
    from sance_core.io.palette import save_label_png

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for image_id in ids:
        check_image_id(image_id, cls_dir)
        ann = read_sbd_cls(Path(cls_dir) / f"{image_id}.mat")
        target = out_dir / f"{image_id}.png"
        with atomic_path(target) as tmp:
            save_label_png(ann.segmentation, tmp)
        written.append(target)
    return written


# --------------------------------------------------------------------------- tags CSV


@dataclass
class TagsTable:
    """What a tags CSV says: the ids of each split and the image-level labels (class ids 1..C) of each id."""

    splits: dict[str, list[str]]
    labels: dict[str, list[int]]
    has_split_column: bool


_TAG_SEP = re.compile(r"[;,]")


def split_tags(cell: str) -> list[str]:
    """Tags separated by ';' or ',' (then a name may contain spaces), else by whitespace."""
    cell = cell.strip()
    if not cell:
        return []
    parts = _TAG_SEP.split(cell) if _TAG_SEP.search(cell) else cell.split()
    return [p.strip() for p in parts if p.strip()]


def _class_id(tag: str, classes: Sequence[str], where: str) -> int:
    if tag in classes:
        value = classes.index(tag)
    elif tag.isdigit():
        value = int(tag)
    else:
        folded = [i for i, name in enumerate(classes) if name.lower() == tag.lower()]
        if len(folded) != 1:
            raise DataError(f"{where}: unknown class {tag!r} (known: {', '.join(classes[1:])})")
        value = folded[0]
    if not 1 <= value < len(classes):
        raise DataError(f"{where}: class {tag!r} is not a foreground class 1..{len(classes) - 1}")
    return value


def read_tags_csv(path: str | Path, classes: Sequence[str], image_ext: str, train_split: str,
                  val_split: str) -> TagsTable:
    """Read a tags table: header ``image,tags`` (comma-separated, or tab-separated when the header has a tab).

    * ``image``: the image's file name in the image folder (``cat_01.jpg``) or its id (``cat_01``);
      the id is the name without extension, and a given extension must equal ``data.image_ext``.
    * ``tags``: class names (or ids) separated by spaces, ';' or ','; quote a cell that holds the
      CSV delimiter (``"cat,dog"``). An empty cell means background only.
    * optional ``split``: the split of each row (``train_split``/``val_split`` or any other name).
      Without it every image is in the train split and also serves as the val split (there is
      no held-out set; the segmenter then predicts the training images).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: tags file not found (data.tags_file)")
    text = path.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    if not lines:
        raise DataError(f"{path}: tags file is empty (expected a header 'image,tags')")
    delimiter = "\t" if "\t" in lines[0] else ","
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader)]
    for column in ("image", "tags"):
        if column not in header:
            raise DataError(f"{path}: header {header} lacks the column {column!r} (expected 'image,tags[,split]')")
    col_image, col_tags = header.index("image"), header.index("tags")
    col_split = header.index("split") if "split" in header else None
    labels: dict[str, list[int]] = {}
    splits: dict[str, list[str]] = {}
    problems: list[str] = []
    for lineno, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{lineno}"
        if len(row) < len(header):
            problems.append(f"{where}: {len(row)} column(s), the header has {len(header)}")
            continue
        name = row[col_image].strip()
        stem, dot, ext = name.rpartition(".")
        if dot and f".{ext}".lower() == image_ext.lower():
            image_id = stem
        elif dot and f".{ext}".lower() in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"):
            problems.append(f"{where}: image {name!r} has extension .{ext}, data.image_ext is {image_ext!r} "
                            "(all images of a dataset share one extension)")
            continue
        else:
            image_id = name
        try:
            check_image_id(image_id, where)
            ids = sorted({_class_id(tag, classes, where) for tag in split_tags(row[col_tags])})
        except DataError as err:
            problems.append(str(err))
            continue
        if image_id in labels:
            problems.append(f"{where}: image {image_id!r} listed twice")
            continue
        labels[image_id] = ids
        split = row[col_split].strip() if col_split is not None else train_split
        if not split:
            problems.append(f"{where}: empty split")
            continue
        splits.setdefault(split, []).append(image_id)
    if problems:
        raise DataError(f"{path} has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    if not labels:
        raise DataError(f"{path}: no image rows after the header")
    if col_split is None:
        splits[val_split] = list(splits[train_split])
        log.warning("%s has no 'split' column: all %d images form the train split and are reused as the "
                    "val split %r (no held-out evaluation)", path, len(labels), val_split)
    return TagsTable(splits=splits, labels=labels, has_split_column=col_split is not None)
