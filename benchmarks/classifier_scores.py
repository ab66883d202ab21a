"""Image-level scores of trained CAM classifiers: mean average precision and per-label accuracy.

The classifier's own task is to tell which classes an image holds; its image tags are the ground
truth it learns from. This script scores that task on a split the classifier did not train on
(``val`` by default), for one or more runs, so that a classifier setting (the demo's learning rate,
docs/RESULTS.md "The demo's rates, calibrated on ground truth") can be chosen without looking at
any localisation result. Each image is scored whole, at its own size, with its horizontal flip
(logits averaged), as CAM extraction sees it at scale 1.0.

The scores are those of the pipeline's ``evaluate_classifier`` stage
(``sance_core.eval.classification``, written to ``results/<name>/eval/classifier.json``); this
script puts several runs side by side, and scores any split.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/classifier_scores.py results/demo results/demo_c4 --split val
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from sance_core.data.dataset import DatasetSpec, load_split
from sance_core.eval.classification import classifier_logits, label_scores
from sance_core.stages.cam import load_classifier

log = logging.getLogger("classifier_scores")


def image_scores(run: Path, split: str) -> dict[str, object]:
    """The scores of the classifier of ``run`` (``<run>/classifier``, ``<run>/manifest.json``) on
    ``split``, with the dataset the classifier was trained on (its ``config.json``)."""
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
    manifest, _ = load_split(run / "manifest.json", spec, split)
    model = load_classifier(run / "classifier" / "model.pt", spec.classes, config["backbone"])
    logits, labels = classifier_logits(model, spec, manifest, split)
    result, _ = label_scores(logits, labels, spec.classes[1:])
    return result


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
        result = image_scores(run, args.split)
        out[str(run)] = result
        log.info("%s  %s: mAP %.1f  accuracy %.1f  (%d images)", run, args.split, 100 * result["map"],
                 100 * result["accuracy"], result["n_images"])
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
