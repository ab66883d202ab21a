"""How much two modes of one run differ beyond the images that happen to be scored.

A paired bootstrap over images: the images of the split are drawn with replacement (the same draw
for both modes), and for each draw the difference of the dataset-level score is computed — the
pseudo-label mIoU (one confusion matrix over the drawn train images, as ``evaluate_pseudo_labels``
counts it) and the contour ODS (boundary counts summed over the drawn val images, the
benchmark's interpolated best F, as ``evaluate_contours`` scores it). Printed per score: the
difference on all images, its 2.5 / 97.5 percentiles over the draws, and the share of draws in
which it is at least ``--margin`` (pseudo labels; issue 17's goal is +5 points) or above 0 (ODS).

The interval holds the trained models fixed: the spread between trainings (another seed, another
machine) comes on top. On the demo's 48 val images an ODS difference of about 3 points is needed
before the images alone cannot explain it (docs/RESULTS.md, "The contour protocol").

    PYTHONPATH=$PWD .venv/bin/python benchmarks/paired_bootstrap.py results/demo --modes irnet sance
    # VOC: --mask-dir SegmentationClassAug --contour-thresholds 99 (contours as the run scored them:
    #      the val split; an evaluation.contour.id_list run needs its own --contour-split)
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sance_core.config import from_dict
from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.eval.edge_eval import ContourEvalConfig, contour_counts, ods_from_counts, stack_counts
from sance_core.eval.metrics import ConfusionMatrix
from sance_core.io.palette import read_label_png
from sance_core.io.store import open_shards


def per_image_confusions(shards: Sequence[str], spec: DatasetSpec, ids: Sequence[str]) -> np.ndarray:
    """``[N, C, C + 1]`` confusion matrices of the label maps in ``shards`` against the masks, one per id."""
    index = open_shards(list(shards), expect_stage="pseudo_labels")
    missing = [i for i in ids if i not in index]
    if missing:
        raise SystemExit(f"pseudo-label shards {list(shards)} lack {len(missing)} id(s): {missing[:5]}")
    out = np.zeros((len(ids), spec.num_classes, spec.num_classes + 1), dtype=np.int64)
    try:
        for k, image_id in enumerate(ids):
            cm = ConfusionMatrix(spec.num_classes)
            cm.update(index[image_id].read(image_id, "label"), read_label_png(spec.mask_path(image_id)))
            out[k] = cm.matrix
    finally:
        for reader in set(index.values()):
            reader.close()
    return out


def miou_of(matrices: np.ndarray) -> float:
    """mIoU of the summed per-image matrices ``[N, C, C + 1]`` (``ConfusionMatrix.miou``'s convention)."""
    cm = ConfusionMatrix(matrices.shape[1])
    cm.matrix = matrices.sum(axis=0)
    return cm.miou()


def bootstrap_differences(score: Callable[[np.ndarray], float], a: np.ndarray, b: np.ndarray, resamples: int,
                          seed: int = 0) -> tuple[float, np.ndarray]:
    """``score(b) - score(a)`` on all items, and on ``resamples`` paired draws of the items with replacement."""
    if a.shape[0] != b.shape[0] or a.shape[0] == 0:
        raise ValueError(f"paired items needed: {a.shape[0]} and {b.shape[0]}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, a.shape[0], size=(resamples, a.shape[0]))
    return score(b) - score(a), np.array([score(b[d]) - score(a[d]) for d in draws])


def check_inputs(run: Path, modes: Sequence[str]) -> list[str]:
    """What the two modes lack, each named with the file or folder expected (checked before any scoring)."""
    missing = []
    for mode in modes:
        shards = run / mode / "pseudo_labels"
        if not glob.glob(str(shards / "*.h5")):
            missing.append(f"{shards}/*.h5: no pseudo-label shards of mode {mode!r} (rule make_pseudo_labels)")
        contours = run / mode / "contours" / "eval.h5"
        if not contours.is_file():
            missing.append(f"{contours}: no raw contour maps of mode {mode!r} (rule infer_contours)")
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run's results folder (results/<name>), holding manifest.json and <mode>/")
    parser.add_argument("--modes", nargs=2, default=["irnet", "sance"], metavar=("A", "B"),
                        help="the difference is B - A (default: sance - irnet)")
    parser.add_argument("--mask-dir", default="SegmentationClass", help="mask folder under the data root")
    parser.add_argument("--pseudo-split", default="train")
    parser.add_argument("--contour-split", default="val")
    parser.add_argument("--contour-thresholds", type=int, default=99, help="the benchmark's 99")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--margin", type=float, default=5.0, help="pseudo-label margin in points (issue 17: 5)")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    run = Path(args.run)
    if not (run / "manifest.json").is_file():
        raise SystemExit(f"{run / 'manifest.json'}: not found; give a run's results folder (results/<name>)")
    missing = check_inputs(run, args.modes)
    if missing:
        raise SystemExit("missing inputs (run the pipeline's targets for these modes first):\n  " + "\n  ".join(missing))
    manifest = Manifest.load(run / "manifest.json")
    spec = DatasetSpec(root=manifest.root, classes=tuple(manifest.classes), mask_dir=args.mask_dir)
    a, b = args.modes
    report: dict[str, object] = {"run": str(run), "modes": [a, b], "resamples": args.resamples, "seed": args.seed}

    ids = manifest.ids(args.pseudo_split)
    mats = [per_image_confusions(sorted(glob.glob(str(run / m / "pseudo_labels" / "*.h5"))), spec, ids) for m in (a, b)]
    full, diffs = bootstrap_differences(miou_of, mats[0], mats[1], args.resamples, args.seed)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    share = float(np.mean(diffs >= args.margin / 100))
    print(f"pseudo labels ({len(ids)} {args.pseudo_split} images): {b} - {a} {100 * full:+.1f} points, "
          f"95 % interval [{100 * lo:+.1f}, {100 * hi:+.1f}], share >= {args.margin:+g}: {share:.2f}")
    report["pseudo_labels"] = {"images": len(ids), "difference": full, "interval": [lo, hi],
                               "margin": args.margin / 100, "share_at_margin": share}

    cfg = from_dict(ContourEvalConfig, {"dataset": {"root": manifest.root, "classes": manifest.classes,
                                                    "mask_dir": args.mask_dir},
                                        "split": args.contour_split, "thresholds": args.contour_thresholds})
    matched = [contour_counts(cfg, manifest, [str(run / m / "contours" / "eval.h5")], 2, "contours") for m in (a, b)]
    if matched[0].ids != matched[1].ids:
        raise SystemExit(f"the two modes' contour maps cover other images: {len(matched[0].ids)} / {len(matched[1].ids)}")
    stacks = [stack_counts(m.counts) for m in matched]
    full, diffs = bootstrap_differences(lambda s: ods_from_counts(s, matched[0].thresholds), stacks[0], stacks[1],
                                        args.resamples, args.seed)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    share = float(np.mean(diffs > 0))
    print(f"contour ODS ({len(matched[0].ids)} {args.contour_split} images, {args.contour_thresholds} thresholds): "
          f"{b} - {a} {100 * full:+.1f} points, 95 % interval [{100 * lo:+.1f}, {100 * hi:+.1f}], share > 0: {share:.2f}")
    report["contour_ods"] = {"images": len(matched[0].ids), "thresholds": args.contour_thresholds,
                             "difference": full, "interval": [lo, hi], "share_above_zero": share}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
