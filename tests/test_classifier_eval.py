"""The classifier's image-level evaluation (stage ``evaluate_classifier``, sance_core.eval.classification):
AP and the called labels against naive references, the stage on the tiny pipeline's classifier, and
benchmarks/classifier_scores.py, which puts several runs side by side with the same scores."""

import json

import numpy as np
import pytest

from conftest import load_benchmark
from sance_core.data.dataset import Manifest
from sance_core.eval.classification import label_scores
from sance_core.eval.metrics import label_average_precision
from sance_core.io.images import DataError
from sance_core.stages import run_stage


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


def test_label_scores_against_naive_counts():
    rng = np.random.default_rng(5)
    logits = np.round(rng.normal(size=(30, 4)), 1)
    labels = (rng.random((30, 4)) < 0.35).astype(np.float32)
    labels[:, 3] = 0  # a class no image holds
    result, rows = label_scores(logits, labels, ["a", "b", "c", "d"])
    for c, row in enumerate(rows[:3]):
        called = [i for i in range(30) if logits[i, c] > 0]
        held = [i for i in range(30) if labels[i, c] > 0]
        hits = len(set(called) & set(held))
        assert row["class_id"] == c + 1 and row["images"] == len(held) and row["called"] == len(called)
        assert row["precision"] == pytest.approx(hits / len(called))
        assert row["recall"] == pytest.approx(hits / len(held))
        assert row["ap"] == pytest.approx(naive_ap(list(logits[:, c]), list(labels[:, c] > 0)))
    assert rows[3]["ap"] is None and rows[3]["recall"] is None and result["ap"]["d"] is None
    assert result["map"] == pytest.approx(np.mean([r["ap"] for r in rows[:3]]))
    right = sum((logits[i, c] > 0) == (labels[i, c] > 0) for i in range(30) for c in range(4))
    assert result["accuracy"] == pytest.approx(right / 120) and result["n_images"] == 30


def test_label_scores_perfect_inverted_and_bad_shapes():
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.float32)
    logits = np.where(labels > 0, 2.0, -2.0)
    perfect, _ = label_scores(logits, labels, ["a", "b", "c"])
    assert perfect["map"] == 1.0 and perfect["accuracy"] == 1.0 and perfect["ap"]["c"] is None
    worst, _ = label_scores(-logits, labels, ["a", "b", "c"])
    assert worst["accuracy"] == 0.0 and worst["map"] < 1.0
    with pytest.raises(ValueError, match=r"must both be \[N, 3\]"):
        label_scores(logits[:2], labels, ["a", "b", "c"])
    with pytest.raises(ValueError, match="one column per foreground class"):
        label_scores(logits, labels, ["a", "b"])
    empty, rows = label_scores(np.zeros((0, 2)), np.zeros((0, 2)), ["a", "b"])
    assert empty["map"] is None and empty["n_images"] == 0 and all(r["ap"] is None for r in rows)


def _tiny_params(run):
    config = json.loads((run / "results/tiny/classifier/config.json").read_text())
    return {"dataset": config["train"]["dataset"], "split": "val", "backbone": config["backbone"], "device": "cpu"}


def test_stage_on_the_tiny_pipeline(tiny_all_run, monkeypatch, tmp_path):
    """`snakemake all` wrote eval/classifier.json; the stage run again gives the same scores, and the
    benchmark script the same mAP; the summaries carry it into the ablation table."""
    monkeypatch.chdir(tiny_all_run)  # the classifier's config names its dataset relative to the run
    written = json.loads((tiny_all_run / "results/tiny/eval/classifier.json").read_text())
    manifest = Manifest.load("results/tiny/manifest.json")
    assert written["split"] == "val" and written["n_images"] == len(manifest.ids("val")) > 0
    assert 0.0 <= written["map"] <= 1.0 and 0.0 <= written["accuracy"] <= 1.0
    assert set(written["ap"]) == set(manifest.classes[1:])
    header, *rows = (tiny_all_run / "results/tiny/eval/classifier.tsv").read_text().splitlines()
    assert header.split("\t")[:3] == ["class_id", "class", "ap"] and len(rows) == len(manifest.classes) - 1

    outputs = {"json": str(tmp_path / "c.json"), "tsv": str(tmp_path / "c.tsv")}
    inputs = {"manifest": "results/tiny/manifest.json", "model": "results/tiny/classifier/model.pt"}
    again = run_stage("evaluate_classifier", _tiny_params(tiny_all_run), inputs, outputs)
    assert again["map"] == pytest.approx(written["map"], abs=1e-6)

    bench = load_benchmark("classifier_scores").main(["results/tiny", "--split", "val"])
    assert bench["results/tiny"]["map"] == pytest.approx(written["map"], abs=1e-6)

    summary = json.loads((tiny_all_run / "results/tiny/irnet/summary.json").read_text())
    assert summary["classifier_map"] == pytest.approx(written["map"])
    assert "Classifier mAP (val)" in (tiny_all_run / "results/tiny/ablation.md").read_text()


def test_stage_errors_and_empty_split(tiny_all_run, monkeypatch, tmp_path):
    monkeypatch.chdir(tiny_all_run)
    params = _tiny_params(tiny_all_run)
    outputs = {"json": str(tmp_path / "c.json"), "tsv": str(tmp_path / "c.tsv")}
    model = "results/tiny/classifier/model.pt"
    with pytest.raises(KeyError, match="manifest has no split 'test'"):
        run_stage("evaluate_classifier", {**params, "split": "test"},
                  {"manifest": "results/tiny/manifest.json", "model": model}, outputs)
    with pytest.raises(ValueError, match="backbone"):
        run_stage("evaluate_classifier", {**params, "backbone": "resnet50"},
                  {"manifest": "results/tiny/manifest.json", "model": model}, outputs)
    data = json.loads((tiny_all_run / "results/tiny/manifest.json").read_text())
    (tmp_path / "other.json").write_text(json.dumps({**data, "classes": [*data["classes"][:-1], "other"]}))
    with pytest.raises(DataError, match="other.json: manifest classes .* differ from data.classes"):
        run_stage("evaluate_classifier", params, {"manifest": str(tmp_path / "other.json"), "model": model}, outputs)
    data["splits"]["val"] = []
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    result = run_stage("evaluate_classifier", params, {"manifest": str(tmp_path / "manifest.json"), "model": model},
                       outputs)
    assert result["map"] is None and result["n_images"] == 0 and "no images" in result["note"]
    assert json.loads((tmp_path / "c.json").read_text())["map"] is None


def test_benchmark_names_a_missing_classifier(tmp_path):
    with pytest.raises(SystemExit, match="classifier/config.json: not found"):
        load_benchmark("classifier_scores").main([str(tmp_path)])
