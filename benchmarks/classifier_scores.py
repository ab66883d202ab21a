"""Image-level scores of trained CAM classifiers: mean average precision and per-label accuracy.

The classifier's own task is to tell which classes an image holds; its image tags are the ground
truth it learns from. This script scores that task on a split the classifier did not train on
(``val`` by default), for one or more runs, so that a classifier setting (the demo's learning rate,
docs/RESULTS.md "The demo's rates, calibrated on ground truth") can be chosen without looking at
any localisation result. Each image is scored whole, at its own size, with its horizontal flip
(logits averaged), as CAM extraction sees it at scale 1.0.

AP of class ``c``: the images ranked by logit, the mean over the images holding ``c`` of the
precision at their rank (``sance_core.eval.metrics.label_average_precision``, as the training log's);
mAP: the mean over the classes that occur in the split. Accuracy: labels called at logit 0.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/classifier_scores.py results/demo results/demo_c4 --split val
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from sance_core.data.dataset import DatasetSpec, load_split
from sance_core.data.transforms import normalize_image
from sance_core.eval.metrics import label_average_precision
from sance_core.io.images import read_image
from sance_core.stages.cam import load_classifier

log = logging.getLogger("classifier_scores")


def scores(logits: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """``logits, labels [N, C]`` -> mAP over the classes present, per-class AP and per-label accuracy."""
    if logits.shape != labels.shape:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} differ in shape")
    aps = [label_average_precision(logits[:, c], labels[:, c] > 0) for c in range(labels.shape[1])]
    present = [a for a in aps if not np.isnan(a)]
    return {
        "map": float(np.mean(present)) if present else float("nan"),
        "ap": [None if np.isnan(a) else a for a in aps],
        "accuracy": float(((logits > 0) == (labels > 0)).mean()),
        "n_images": int(labels.shape[0]),
    }


@torch.no_grad()
def image_logits(run: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Logits and tag vectors ``[N, C]`` of ``split`` for the classifier of ``run`` (``<run>/classifier``,
    ``<run>/manifest.json``), with the dataset the classifier was trained on (its ``config.json``)."""
    config_path = run / "classifier" / "config.json"
    if not config_path.exists():
        raise SystemExit(f"{config_path}: not found; expected a trained classifier in {run / 'classifier'}")
    config = json.loads(config_path.read_text())
    try:
        dataset = dict(config["train"]["dataset"])
    except KeyError as err:
        raise SystemExit(f"{config_path}: no train.dataset section ({err}); was it written by train_classifier?") from err
    dataset["classes"] = tuple(dataset["classes"])
    spec = DatasetSpec(**dataset)
    manifest, ids = load_split(run / "manifest.json", spec, split)
    model = load_classifier(run / "classifier" / "model.pt", spec.classes, config["backbone"])
    logits, labels = [], []
    for image_id in ids:
        x = normalize_image(read_image(spec.image_path(image_id)))[None]
        logits.append(model(torch.cat([x, x.flip(-1)])).mean(0).numpy())
        labels.append(manifest.label_vector(split, image_id))
    return np.stack(logits), np.stack(labels), list(spec.classes[1:])


def main(argv: list[str] | None = None) -> dict[str, dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="results folders, each holding classifier/ and manifest.json")
    parser.add_argument("--split", default="val", help="split to score (default: val, which the classifier did not train on)")
    parser.add_argument("--json", type=Path, help="also write the scores here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    out = {}
    for run in args.runs:
        logits, labels, classes = image_logits(run, args.split)
        result = scores(logits, labels)
        result["classes"] = classes
        out[str(run)] = result
        log.info("%s  %s: mAP %.1f  accuracy %.1f  (%d images)", run, args.split, 100 * result["map"],
                 100 * result["accuracy"], result["n_images"])
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
