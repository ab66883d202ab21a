"""Stage 6 on a perfect segmentation map: how much of the ground truth survives the synthesis.

The score map is the one-hot ground truth averaged over each 4x4 cell (a perfect segmentation map
on the stride-4 grid); the contour is either none or the thin ground-truth boundary (the cells the
boundary passes through). ``synthesize_label`` (Eq. 6 propagation with radius ``--radius`` (5), beta 10,
2**exp_times steps; x4 upsampling; max-normalisation; tau_b 0.25; arg-max) makes the labels, which
are scored against the masks. With the boundary as contour the result bounds what stages 5-6 can
give with a perfect segmentation branch; without it, it shows how far the propagation alone blurs.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/synthesis_ceiling.py resources/demo results/demo/manifest.json
"""

import argparse
import json
import math

import numpy as np
from scipy import ndimage

from sance_core.constants import MAP_STRIDE
from sance_core.data.dataset import DatasetSpec, Manifest, load_sample
from sance_core.eval.contour_profile import mixed_cells, pad_to_grid
from sance_core.eval.metrics import ConfusionMatrix
from sance_core.stages.pseudo_labels import synthesize_label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("manifest")
    parser.add_argument("--split", default="train")
    parser.add_argument("--exp-times", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--radius", type=int, default=5, help="propagation radius (pseudo_labels.radius)")
    parser.add_argument("--boundary-width", type=int, default=0,
                        help="dilate the boundary cells this many times (8-neighbour): closes diagonal gaps")
    parser.add_argument("--class-borders", action="store_true",
                        help="the boundary also between touching objects of different classes")
    parser.add_argument("--no-normalize", action="store_true", help="tau_b on the raw propagated scores")
    args = parser.parse_args()
    manifest = Manifest.load(args.manifest)
    spec = DatasetSpec(root=args.root, classes=tuple(manifest.classes))
    settings = [(t, c) for t in args.exp_times for c in ("none", "thin_boundary")]
    cms = {s: ConfusionMatrix(len(manifest.classes)) for s in settings}
    for image_id, keys in manifest.labels(args.split).items():
        _, mask = load_sample(spec, image_id)
        h, w = mask.shape
        h4, w4 = math.ceil(h / MAP_STRIDE), math.ceil(w / MAP_STRIDE)
        cells = pad_to_grid(mask, (h4, w4)).reshape(h4, MAP_STRIDE, w4, MAP_STRIDE)
        scores = np.stack([(cells == k).mean(axis=(1, 3)) for k in keys]).astype(np.float32)
        if args.class_borders:  # every cell holding two labels (object-background, class-class, void)
            thin = mixed_cells(mask, (h4, w4))
        else:  # object-background cells only (void counts as object border)
            fg = (cells != 0).mean(axis=(1, 3))
            thin = (fg > 0) & (fg < 1)
        if args.boundary_width > 0:
            thin = ndimage.binary_dilation(thin, np.ones((3, 3), bool), iterations=args.boundary_width)
        thin = thin.astype(np.float32)
        for t, c in settings:
            contour = thin if c == "thin_boundary" else np.zeros((h4, w4), np.float32)
            cms[(t, c)].update(synthesize_label(scores, keys, contour, (h, w), args.radius, 10, t, 0.25,
                                                        normalize=not args.no_normalize), mask)
    print(json.dumps({f"radius={args.radius} width={args.boundary_width} normalize={not args.no_normalize} "
                      f"class_borders={args.class_borders} "
                      f"exp_times={t} contour={c}": round(cm.miou(), 4) for (t, c), cm in cms.items()}))


if __name__ == "__main__":
    main()
