"""Seeds with one kind of CAM error removed: object pixels seeded as background become unsure.

A diagnostic of issue 17 between the CAM seeds and the seed oracle: it keeps every CAM seed (the
discriminative parts, the background, the CAMs' false foreground) except the object pixels of the
ground truth that the seeds call background (``seeds.json`` -> ``composition.object_pixels.background``),
which become unsure (255), so stages 5-6 no longer learn "this part of the object is background".
The repaired seed shards go to ``DST`` with the source's settings; copy (or link) the run's
manifest, shard lists, classifier and CAMs next to them and run stages 5-6 there under their own
``data.name``:

    PYTHONPATH=$PWD .venv/bin/python benchmarks/repair_seeds.py resources/demo results/demo/seeds \
        results/demo_repaired/seeds
    # then, with data: {name: demo_repaired, root: resources/demo} in repaired.yaml:
    snakemake --rerun-triggers mtime --cores 2 --configfile config.yaml repaired.yaml -- \
        results/demo_repaired/sance/eval/pseudo_labels.json results/demo_repaired/irnet/eval/pseudo_labels.json
"""

from __future__ import annotations

import argparse
import glob
import logging
import os

import numpy as np

from sance_core.constants import IGNORE_INDEX
from sance_core.data.dataset import DatasetSpec, Manifest, load_sample
from sance_core.io.store import ArtifactReader, ArtifactWriter

log = logging.getLogger("repair_seeds")


def object_pixels(mask: np.ndarray) -> np.ndarray:
    """Bool: the pixels of an object class in ``mask`` (not background 0, not void)."""
    return (mask > 0) & (mask != IGNORE_INDEX)


def repair(seed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``seed`` with the object pixels of ``mask`` that it seeds background (0) set to unsure (255)."""
    out = seed.copy()
    out[object_pixels(mask) & (seed == 0)] = IGNORE_INDEX
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="dataset root (VOC layout) with the masks")
    parser.add_argument("seeds", help="folder of the seed shards (<run>/seeds), next to <run>/manifest.json")
    parser.add_argument("dst", help="folder for the repaired shards")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = Manifest.load(os.path.join(os.path.dirname(os.path.abspath(args.seeds)), "manifest.json"))
    spec = DatasetSpec(root=args.root, classes=tuple(manifest.classes))
    paths = sorted(glob.glob(os.path.join(args.seeds, "*.h5")))
    if not paths:
        raise SystemExit(f"no seed shards (*.h5) in {args.seeds}")
    os.makedirs(args.dst, exist_ok=True)
    changed = objects = 0
    for path in paths:
        with ArtifactReader(path, expect_stage="seeds") as reader:
            attrs = {k: reader.attrs[k] for k in ("fg_threshold", "bg_threshold", "crf")}
            with ArtifactWriter(os.path.join(args.dst, os.path.basename(path)), stage="seeds", attrs=attrs) as writer:
                for image_id in reader.ids():
                    seed = reader.read(image_id, "seed")
                    _, mask = load_sample(spec, image_id)
                    fixed = repair(seed, mask)
                    changed += int((fixed != seed).sum())
                    objects += int(object_pixels(mask).sum())
                    writer.add(image_id, {"seed": fixed}, dict(reader.image_attrs(image_id)))
    log.info("object pixels seeded background -> unsure: %d of %d (%.1f %%)", changed, objects,
             100.0 * changed / max(objects, 1))


if __name__ == "__main__":
    main()
