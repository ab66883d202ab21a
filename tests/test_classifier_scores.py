"""benchmarks/classifier_scores.py and the label AP it shares with the training log, against a naive reference."""

import json

import numpy as np
import pytest

from conftest import load_benchmark
from sance_core.eval.metrics import label_average_precision


def naive_ap(scores, positives):
    """AP by its definition: for each positive image, the precision among the images ranked at or above it."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    total = 0.0
    for rank, i in enumerate(ranked, start=1):
        if positives[i]:
            total += sum(positives[j] for j in ranked[:rank]) / rank
    return total / sum(positives)


def test_average_precision_against_its_definition():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(2, 15))
        scores = np.round(rng.normal(size=n), 1)  # rounded: ties occur
        positives = rng.random(n) < 0.4
        if not positives.any():
            positives[0] = True
        assert label_average_precision(scores, positives) == pytest.approx(naive_ap(scores, positives))


def test_scores_perfect_and_absent_classes():
    cs = load_benchmark("classifier_scores")
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.float32)
    logits = np.where(labels > 0, 2.0, -2.0)
    out = cs.scores(logits, labels)
    assert out["map"] == 1.0 and out["accuracy"] == 1.0 and out["ap"][2] is None
    worst = cs.scores(-logits, labels)
    assert worst["accuracy"] == 0.0 and worst["map"] < 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        cs.scores(logits[:2], labels)


def test_on_a_trained_tiny_classifier(tiny_all_run, monkeypatch, tmp_path):
    cs = load_benchmark("classifier_scores")
    monkeypatch.chdir(tiny_all_run)  # the classifier's config names its dataset relative to the run
    out_json = tmp_path / "scores.json"
    out = cs.main(["results/tiny", "--split", "val", "--json", str(out_json)])
    result = out["results/tiny"]
    manifest = json.loads((tiny_all_run / "results/tiny/manifest.json").read_text())
    assert result["n_images"] == len(manifest["splits"]["val"]) > 0
    assert 0.0 <= result["map"] <= 1.0 and 0.0 <= result["accuracy"] <= 1.0
    assert json.loads(out_json.read_text())["results/tiny"]["map"] == result["map"]


def test_missing_classifier_is_named(tmp_path):
    cs = load_benchmark("classifier_scores")
    with pytest.raises(SystemExit, match="classifier/config.json: not found"):
        cs.main([str(tmp_path)])
