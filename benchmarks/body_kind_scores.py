"""Object recall, precision and IoU of label maps, split by the demo objects' body kind.

A diagnostic of issues 12 and 17 on the demo data: every demo object has a class-specific head
and a body that is ``plain`` (the texture shared with other classes and background distractors:
no class evidence), ``tinted`` (the class colour) or ``patterned`` (a faint class pattern)
(``objects.tsv`` of ``sance demo-data``). Scoring a label map per body kind separates what a method
recovers where the image holds class evidence from what it recovers where only the head does -
the part-body border of the paper's Fig. 1.

Objects are scored through their class's pixels of the mask, so an image counts for class ``c``
only when all its objects of class ``c`` share one body kind (their pixels are then that kind's).
For each body kind: recall (object pixels labelled ``c``), precision (pixels labelled ``c`` that
are object pixels of ``c``; labels ``c`` anywhere in the image count) and IoU, over the split,
void (255) ignored. Besides, the background pixels labelled as an object, in % of all background
pixels, split into those within ``--near`` pixels of an object (bleed) and farther ones (false
objects, flooded images). Sources are folders of PNG labels, of seed or pseudo-label shards, or a CAM
shard folder (``<run>/cam``) thresholded as ``eval/cam.json`` does it
(``cam_labels_at_thresholds``: arg-max of the present classes, background where none is above).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/body_kind_scores.py resources/demo \
        cam=results/demo/cam@0.1 seeds=results/demo/seeds irnet=results/demo/irnet/pseudo_labels/png \
        sance=results/demo/sance/pseudo_labels/png --parts-seed 0

``--parts-seed N`` (the generator seed of ``root``) also splits every object into its parts, which
the generator renders again (``sance_core.data.demo.demo_part_maps``, each mask checked against
``root``'s): the head (the class-specific part), a body that carries class evidence (tinted or
patterned) and a plain body. Per part it gives the recall of each source (pixels labelled with the
object's class): the plain body's recall, head excluded, is how far a map reaches across the
part-body border into a region with no class evidence of its own (the paper's Fig. 1). It adds the
source ``evidence``, a label map that is exactly the class evidence (heads and evidence bodies
labelled, everything else background), the mIoU of every source over the split (all classes of
the dataset, void ignored: a CAM that found all of the class evidence and nothing else scores the
``evidence`` row), of the background labelled object, the share on the distractor blobs (the
shared body texture without a class part) and elsewhere, and where each source's wrong pixels lie
(per object part; background within ``--near`` px of an object or farther; unsure 255 is not
wrong).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
from collections import defaultdict
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from sance_core.constants import IGNORE_INDEX
from sance_core.data.demo import (
    PART_DISTRACTOR,
    PART_EVIDENCE_BODY,
    PART_HEAD,
    PART_NAMES,
    DemoDataConfig,
    demo_part_maps,
)
from sance_core.eval.evaluation import cam_labels_at_thresholds
from sance_core.eval.metrics import ConfusionMatrix
from sance_core.io.images import read_id_list
from sance_core.io.palette import read_label_png
from sance_core.io.store import open_shards

BODY_KINDS = ("plain", "tinted", "patterned")


def read_objects(root: str) -> dict[str, dict[int, set[str]]]:
    """``{image id: {class index: {body kinds of its objects of that class}}}`` from ``objects.tsv``."""
    path = os.path.join(root, "objects.tsv")
    if not os.path.exists(path):
        raise SystemExit(f"{path}: not found; this diagnostic needs the demo generator's objects.tsv")
    out: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    with open(path, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["body"] not in BODY_KINDS:
                raise SystemExit(f"{path}: body {row['body']!r} of {row['id']} is not one of {BODY_KINDS}")
            out[row["id"]][int(row["class"])].add(row["body"])
    return out


def count(mask: np.ndarray, label: np.ndarray, kinds: dict[int, set[str]]) -> dict[str, np.ndarray]:
    """Per body kind ``[true positives, object pixels, labelled pixels]`` of one image.

    ``mask`` and ``label`` ``[H, W]`` uint8 (255 void in ``mask``); ``kinds`` maps each class of the
    image to the body kinds of its objects. Classes whose objects mix body kinds are left out.
    """
    valid = mask != IGNORE_INDEX
    out: dict[str, np.ndarray] = {}
    for cls, bodies in kinds.items():
        if len(bodies) != 1:
            continue
        (kind,) = bodies
        obj = (mask == cls) & valid
        lab = (label == cls) & valid
        out[kind] = out.get(kind, np.zeros(3, np.int64)) + [(obj & lab).sum(), obj.sum(), lab.sum()]
    return out


def object_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance ``[H, W]`` of every pixel to the nearest object pixel of ``mask`` (inf without objects)."""
    obj = (mask > 0) & (mask != IGNORE_INDEX)
    if not obj.any():
        return np.full(mask.shape, np.inf)
    return ndimage.distance_transform_edt(~obj)


def false_positives(mask: np.ndarray, label: np.ndarray, near: float, dist: np.ndarray | None = None) -> np.ndarray:
    """``[background px, labelled object within near px of an object, labelled object farther]`` of one image.

    Background pixels of ``mask`` (0) that ``label`` calls an object class, split by their Euclidean
    distance to the nearest object pixel of the mask (void counts as neither): the bleed of a map
    around its objects against false objects elsewhere (distractors, a flooded image). ``dist``:
    :func:`object_distance` of ``mask``, when the caller scores several labels of one mask.
    """
    if dist is None:
        dist = object_distance(mask)
    bg = mask == 0
    wrong = bg & (label > 0) & (label != IGNORE_INDEX)
    return np.array([bg.sum(), (wrong & (dist <= near)).sum(), (wrong & (dist > near)).sum()], np.int64)


def scores(totals: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Recall, precision and IoU per body kind from summed counts."""
    out = {}
    for kind in BODY_KINDS:
        if kind not in totals:
            continue
        tp, obj, lab = (int(v) for v in totals[kind])
        out[kind] = {
            "recall": tp / obj if obj else 0.0,
            "precision": tp / lab if lab else 0.0,
            "iou": tp / (obj + lab - tp) if obj + lab - tp else 0.0,
            "object_pixels": obj,
        }
    return out


def part_counts(mask: np.ndarray, label: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """``[len(PART_NAMES), 3]`` counts per part: ``[pixels labelled with the object's class, pixels
    labelled wrong, pixels]``.

    ``mask``, ``label``, ``parts`` ``[H, W]`` uint8; rows in the order of ``PART_NAMES``; void (255
    in ``mask`` or ``parts``) counts nowhere; an unsure label (255) is neither right nor wrong.
    """
    valid = mask != IGNORE_INDEX
    hit = (label == mask) & valid
    wrong = (label != mask) & (label != IGNORE_INDEX) & valid
    rows = []
    for code in PART_NAMES:
        part = (parts == code) & valid
        rows.append([(hit & part).sum(), (wrong & part).sum(), part.sum()])
    return np.array(rows, np.int64)


def distractor_counts(mask: np.ndarray, label: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """``[distractor px, of them labelled object, other background px, of them labelled object]``.

    Background pixels of ``mask`` (0) split by ``parts`` into the distractor blobs (the shared body
    texture, no class part) and the rest; a pixel is labelled object when ``label`` is neither 0
    nor void.
    """
    bg = mask == 0
    obj = (label != 0) & (label != IGNORE_INDEX)
    dis = bg & (parts == PART_DISTRACTOR)
    rest = bg & ~dis
    return np.array([dis.sum(), (dis & obj).sum(), rest.sum(), (rest & obj).sum()], np.int64)


ERROR_PLACES = ("head", "evidence body", "plain body", "background near", "background farther")
"""Where :func:`main` places a map's wrong pixels: the object parts (``part_counts``' wrong column),
then the background labelled object near an object and farther (``false_positives``)."""


def evidence_label(mask: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """The class evidence as a label map: ``mask``'s class on heads and evidence bodies, 0 elsewhere
    (void stays void)."""
    out = np.where((parts == PART_HEAD) | (parts == PART_EVIDENCE_BODY), mask, 0).astype(np.uint8)
    out[mask == IGNORE_INDEX] = IGNORE_INDEX
    return out


def read_part_maps(root: str, seed: int) -> dict[str, np.ndarray]:
    """Part maps of every image of ``root`` (a demo dataset of generator seed ``seed``), by id."""
    split_dir = os.path.join(root, "ImageSets", "Segmentation")
    n = {s: len(read_id_list(os.path.join(split_dir, f"{s}.txt"))) for s in ("train", "val")}
    try:
        return dict(demo_part_maps(DemoDataConfig(seed=seed, n_train=n["train"], n_val=n["val"]), root))
    except ValueError as err:
        raise SystemExit(f"--parts-seed {seed}: {err}") from None


def png_source(folder: str) -> Callable[[str], np.ndarray]:
    """Label map of an image id from a folder of PNGs."""

    def read(image_id: str) -> np.ndarray:
        path = os.path.join(folder, f"{image_id}.png")
        if not os.path.exists(path):
            raise SystemExit(f"{path}: not found (every image of the split needs a label map)")
        return read_label_png(path)

    return read


def cam_source(folder: str, threshold: float) -> Callable[[str], np.ndarray]:
    """Label map of an image id from the CAM shards of a run (``<run>/cam/*.h5``)."""
    where = open_shards(sorted(glob.glob(os.path.join(folder, "*.h5"))), expect_stage="cam")
    if not where:
        raise SystemExit(f"{folder}: no CAM shards (*.h5)")

    def read(image_id: str) -> np.ndarray:
        if image_id not in where:
            raise SystemExit(f"{folder}: no CAM of {image_id}")
        reader = where[image_id]
        cam = reader.read(image_id, "cam")
        keys = reader.image_attrs(image_id)["class_keys"]
        (label,) = cam_labels_at_thresholds(cam, keys, [threshold])
        return label

    return read


LABEL_DATASETS = {"seeds": "seed", "pseudo_labels": "label"}


def shard_source(folder: str) -> Callable[[str], np.ndarray]:
    """Label map of an image id from the seed or pseudo-label shards of a run (``<run>/seeds/*.h5``)."""
    where = open_shards(sorted(glob.glob(os.path.join(folder, "*.h5"))))
    stages = {r.attrs.get("stage") for r in where.values()}
    if len(stages) != 1 or next(iter(stages)) not in LABEL_DATASETS:
        found = sorted(map(str, stages))
        raise SystemExit(f"{folder}: expected the shards of one of the stages {sorted(LABEL_DATASETS)}, found {found}")
    dataset = LABEL_DATASETS[next(iter(stages))]

    def read(image_id: str) -> np.ndarray:
        if image_id not in where:
            raise SystemExit(f"{folder}: no label map of {image_id}")
        return where[image_id].read(image_id, dataset)

    return read


def parse_source(spec: str) -> tuple[str, Callable[[str], np.ndarray]]:
    """``name=folder``: PNG labels, or seed / pseudo-label shards; ``name=folder@threshold``: CAM shards."""
    name, sep, where = spec.partition("=")
    if not sep or not name or not where:
        raise SystemExit(f"source {spec!r}: expected NAME=FOLDER or NAME=CAM_FOLDER@THRESHOLD")
    if "@" in where:
        folder, thr = where.rsplit("@", 1)
        return name, cam_source(folder, float(thr))
    if glob.glob(os.path.join(where, "*.h5")):
        return name, shard_source(where)
    return name, png_source(where)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="demo dataset root (VOC layout + objects.tsv)")
    parser.add_argument("sources", nargs="+", help="NAME=PNG_FOLDER or NAME=CAM_FOLDER@THRESHOLD")
    parser.add_argument("--split", default="train")
    parser.add_argument("--mask-dir", default="SegmentationClass")
    parser.add_argument(
        "--near",
        type=float,
        default=6.0,
        help="background labelled object within this many pixels of an object is bleed (6: 1.5 grid cells)",
    )
    parser.add_argument(
        "--parts-seed",
        type=int,
        default=None,
        help="generator seed of root: adds recall per object part, the 'evidence' source and each source's mIoU",
    )
    args = parser.parse_args()
    objects = read_objects(args.root)
    ids = read_id_list(os.path.join(args.root, "ImageSets", "Segmentation", f"{args.split}.txt"))
    sources = dict(parse_source(s) for s in args.sources)
    parts = read_part_maps(args.root, args.parts_seed) if args.parts_seed is not None else None
    if parts is not None:
        if "evidence" in sources:
            raise SystemExit("source name 'evidence' is taken by --parts-seed; give the source another name")
        sources["evidence"] = None  # filled per image from the mask and its part map
    totals: dict[str, dict[str, np.ndarray]] = {name: {} for name in sources}
    fp = {name: np.zeros(3, np.int64) for name in sources}
    by_part = {name: np.zeros((len(PART_NAMES), 3), np.int64) for name in sources}
    on_distractors = {name: np.zeros(4, np.int64) for name in sources}
    confusion = {}
    if parts is not None:
        with open(os.path.join(args.root, "classes.txt")) as f:
            n_classes = len(f.read().split())
        confusion = {name: ConfusionMatrix(n_classes) for name in sources}
    for image_id in ids:  # each mask and its distance map once, for every source
        mask = read_label_png(os.path.join(args.root, args.mask_dir, f"{image_id}.png"))
        dist = object_distance(mask)
        for name, read in sources.items():
            label = evidence_label(mask, parts[image_id]) if read is None else read(image_id)
            for kind, c in count(mask, label, objects.get(image_id, {})).items():
                totals[name][kind] = totals[name].get(kind, np.zeros(3, np.int64)) + c
            fp[name] += false_positives(mask, label, args.near, dist)
            if parts is not None:
                by_part[name] += part_counts(mask, label, parts[image_id])
                on_distractors[name] += distractor_counts(mask, label, parts[image_id])
                confusion[name].update(label, mask)
    near_key = f"within_{args.near:g}px"
    result = {}
    for name in sources:
        bg, near, far = (int(v) for v in fp[name])
        result[name] = scores(totals[name])
        result[name]["background_labelled_object"] = {
            near_key: near / max(bg, 1),
            "farther": far / max(bg, 1),
            "background_pixels": bg,
        }
        if parts is not None:
            result[name]["part_recall"] = {
                part: int(hit) / int(n) if n else 0.0 for part, (hit, _, n) in zip(PART_NAMES.values(), by_part[name])
            }
            result[name]["miou"] = confusion[name].miou()
            dis, dis_obj, rest, rest_obj = (int(v) for v in on_distractors[name])
            result[name]["background_labelled_object"].update(
                {"on_distractors": dis_obj / max(dis, 1), "elsewhere": rest_obj / max(rest, 1),
                 "distractor_share_of_background": dis / max(dis + rest, 1)}
            )
            errors = [int(v) for v in (*by_part[name][:, 1], near, far)]
            n_wrong = max(sum(errors), 1)
            result[name]["error_share"] = {
                place.replace("near", near_key): v / n_wrong for place, v in zip(ERROR_PLACES, errors)
            }
    print(json.dumps({"split": args.split, "images": len(ids), "scores": result}, indent=1))
    for name, per_kind in result.items():
        cells = "  ".join(
            f"{k}: R {v['recall']:.3f} P {v['precision']:.3f} IoU {v['iou']:.3f}" for k, v in per_kind.items() if k in BODY_KINDS
        )
        bg = per_kind["background_labelled_object"]
        print(f"{name:12s} {cells}  | background as object: near {100 * bg[near_key]:.1f} %, farther {100 * bg['farther']:.1f} %")
    if parts is not None:
        print("recall per object part (" + ", ".join(PART_NAMES.values()) + ") and mIoU:")
        for name, r in result.items():
            bg = r["background_labelled_object"]
            print(
                f"{name:12s} " + "  ".join(f"{v:.3f}" for v in r["part_recall"].values()) + f"  | mIoU {100 * r['miou']:.1f}"
                f"  | background as object: on distractors {100 * bg['on_distractors']:.1f} %,"
                f" elsewhere {100 * bg['elsewhere']:.1f} %"
            )
        print("where the wrong pixels lie, % (" + ", ".join(ERROR_PLACES).replace("near", near_key) + "):")
        for name, r in result.items():
            print(f"{name:12s} " + " / ".join(f"{100 * v:.0f}" for v in r["error_share"].values()))


if __name__ == "__main__":
    main()
