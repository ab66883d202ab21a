"""Where stage 6 loses what a trained mode's maps hold (issue 17's seed-oracle diagnostic).

Reads the stage-6 maps of one mode (``<run>/<mode>/maps/*.h5``: TTA contour ``[h4, w4]`` and the
segmentation planes of the present classes) - or, for ``--map cam``, the stride-4 CAMs - and scores
against the masks (train split, void ignored, one confusion matrix each):

- ``pipeline``: ``synthesize_label`` with the stage-6 settings (reproduces ``pseudo_labels.json``);
- ``seg_argmax``: the segmentation map alone - arg-max of background + present-class planes,
  bilinear x4 (no propagation, no ``tau_b``): what the segmentation branch learned;
- ``exp_times=<t>``: the synthesis with ``2**t`` propagation steps instead;
- ``no_normalize``: ``tau_b`` on the raw propagated scores (no global max-normalisation);
- ``gt_contour``: the mode's score map propagated along the ground-truth boundary cells
  (object-background and class-class) instead of its own contour - separates the contour map
  from the score map;
- ``zero_contour``: no contour at all;
- ``tau_b=<b>`` (``--tau-b-variants``): another background constant.

and the contour map's profile on the grid cells of the mask (4x4 cells): ``object_border``
(cells holding an object and background or void, next to no second object class), ``class_border``
(boundary cells with two object classes in their 3x3 neighbourhood: touching objects),
``interior`` (cells of one object class only) and ``background``; per zone the mean contour and
the share above 0.5; and ``sance_core.eval.contour_profile`` (boundary / interior / background of
the nearest-sampled mask, band 1) for comparison.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/oracle_diagnosis.py resources/demo results/demo/manifest.json \
        results/demo/oracle_core1_leak0_false0_unk4 sance --radius 2
"""

from __future__ import annotations

import argparse
import glob
import json

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from sance_core.constants import MAP_STRIDE
from sance_core.data.dataset import DatasetSpec, Manifest, load_sample
from sance_core.eval.contour_profile import contour_profile, grid_cells, mask_on_grid, mixed_cells, pad_to_grid
from sance_core.eval.metrics import ConfusionMatrix
from sance_core.io.store import open_shards
from sance_core.stages.pseudo_labels import read_seg, synthesize_label

ZONES = ("object_border", "class_border", "interior", "background")


def cell_zones(mask: np.ndarray, h4: int, w4: int) -> dict[str, np.ndarray]:
    """Zones ``[h4, w4]`` bool of the 4x4 cells of ``mask [H, W]`` (255 void; padding counts as void).

    A cell is a boundary cell when one of its pixels has a 4-neighbour of another label (void
    included); a boundary cell is a class border when its 3x3 cell neighbourhood holds two object
    classes, else an object border. The other cells are interior (one object class) or background.
    """
    pad = pad_to_grid(mask, (h4, w4))
    change = np.zeros(pad.shape, bool)
    dy = pad[1:] != pad[:-1]
    dx = pad[:, 1:] != pad[:, :-1]
    change[1:] |= dy
    change[:-1] |= dy
    change[:, 1:] |= dx
    change[:, :-1] |= dx
    cells = grid_cells(pad)
    boundary = grid_cells(change).any(axis=2)
    classes = [int(c) for c in np.unique(mask) if c not in (0, 255)]
    has = {c: (cells == c).any(axis=2) for c in classes}
    near = sum((ndimage.binary_dilation(v, np.ones((3, 3), bool)).astype(np.int64) for v in has.values()),
               np.zeros((h4, w4), np.int64))
    n_obj = sum((v.astype(np.int64) for v in has.values()), np.zeros((h4, w4), np.int64))
    only_void = (cells == 255).all(axis=2)
    class_border = boundary & (near >= 2)
    return {
        "object_border": boundary & ~class_border & ~only_void,
        "class_border": class_border & ~only_void,
        "interior": ~boundary & (n_obj == 1),
        "background": ~boundary & (cells == 0).all(axis=2),
    }


def gt_boundary(mask: np.ndarray, h4: int, w4: int) -> np.ndarray:
    """Cells holding two labels (object-background, class-class or void): the synthesis ceiling's contour."""
    return mixed_cells(mask, (h4, w4)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("manifest")
    parser.add_argument("run", help="results folder of the seed run (results/<name> or .../oracle_<tag>)")
    parser.add_argument("mode")
    parser.add_argument("--map", choices=("seg", "cam"), default="seg")
    parser.add_argument("--cams", default=None, help="CAM shard folder for --map cam (results/<name>/cam)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--exp-times", type=int, default=8)
    parser.add_argument("--variants", type=int, nargs="*", default=[4, 6], help="other exp_times to score")
    parser.add_argument("--tau-b", type=float, default=0.25)
    parser.add_argument("--tau-b-variants", type=float, nargs="*", default=[], help="other tau_b to score")
    parser.add_argument("--max-images", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    manifest = Manifest.load(args.manifest)
    spec = DatasetSpec(root=args.root, classes=tuple(manifest.classes))
    maps = open_shards(sorted(glob.glob(f"{args.run}/{args.mode}/maps/*.h5")), expect_stage="maps")
    cams = open_shards(sorted(glob.glob(f"{args.cams}/*.h5")), expect_stage="cam") if args.map == "cam" else None
    n = len(manifest.classes)
    names = ["pipeline", "no_normalize", "gt_contour", "zero_contour",
             *[f"exp_times={t}" for t in args.variants],
             *[f"tau_b={b:g}" for b in args.tau_b_variants]] + (["seg_argmax"] if args.map == "seg" else [])
    cms = {k: ConfusionMatrix(n) for k in names}
    zsum = {z: 0.0 for z in ZONES}
    zabove = {z: 0 for z in ZONES}
    zcount = {z: 0 for z in ZONES}
    profile_pairs = []
    items = list(manifest.labels(args.split).items())
    if args.max_images:
        items = items[: args.max_images]
    normalize = True  # the stage-6 default for both maps (pseudo_labels.normalize_seg; CAMs always)
    for image_id, keys in items:
        _, mask = load_sample(spec, image_id)
        h, w = mask.shape
        reader = maps[image_id]
        contour = reader.read(image_id, "contour").astype(np.float32)
        h4, w4 = contour.shape
        keys = [int(k) for k in keys]
        if args.map == "cam":
            scores = cams[image_id].read(image_id, "cam_stride4")
            keys = [int(k) for k in np.atleast_1d(cams[image_id].image_attrs(image_id).get("class_keys", []))]
        else:
            scores = read_seg(reader, image_id, keys)
        scores = scores.reshape(len(keys), h4, w4).astype(np.float32)

        def synth(c: np.ndarray, t: int = args.exp_times, norm: bool = normalize, tau_b: float = args.tau_b) -> np.ndarray:
            return synthesize_label(scores, keys, c, (h, w), args.radius, 10.0, t, tau_b, normalize=norm)

        cms["pipeline"].update(synth(contour), mask)
        cms["no_normalize"].update(synth(contour, norm=False), mask)
        cms["gt_contour"].update(synth(gt_boundary(mask, h4, w4)), mask)
        cms["zero_contour"].update(synth(np.zeros_like(contour)), mask)
        for t in args.variants:
            cms[f"exp_times={t}"].update(synth(contour, t=t), mask)
        for b in args.tau_b_variants:
            cms[f"tau_b={b:g}"].update(synth(contour, tau_b=b), mask)
        if args.map == "seg":
            full = read_seg(reader, image_id, [0, *keys]).reshape(len(keys) + 1, h4, w4)
            up = F.interpolate(torch.from_numpy(full.astype(np.float32))[None], scale_factor=MAP_STRIDE, mode="bilinear",
                               align_corners=False)[0, :, :h, :w]
            table = np.asarray([0, *keys])
            cms["seg_argmax"].update(table[up.argmax(dim=0).numpy()], mask)
        profile_pairs.append((contour, mask_on_grid(mask, contour.shape)))
        for z, sel in cell_zones(mask, h4, w4).items():
            vals = contour[sel]
            zsum[z] += float(vals.sum())
            zabove[z] += int((vals > 0.5).sum())
            zcount[z] += int(vals.size)
    out = {
        "run": args.run, "mode": args.mode, "map": args.map, "images": len(items), "radius": args.radius,
        "exp_times": args.exp_times, "tau_b": args.tau_b,
        "miou": {k: round(100 * cm.miou(), 1) for k, cm in cms.items()},
        "per_class_pipeline": [round(100 * v, 1) for v in cms["pipeline"].iou()],
        "contour_zones": {z: {"mean": round(zsum[z] / max(zcount[z], 1), 3),
                              "above_0.5": round(zabove[z] / max(zcount[z], 1), 3),
                              "cells": zcount[z]} for z in ZONES},
        "contour_profile": {z: {k: round(v, 3) for k, v in d.items()} for z, d in contour_profile(profile_pairs).items()},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
