"""Stages of workflow/rules/evaluate.smk and the segmenter's evaluation: ``evaluate_classifier``,
``evaluate_cams``, ``evaluate_seeds`` and ``evaluate_segmenter`` (the computation is in
:mod:`sance_core.eval.evaluation`, and in :mod:`sance_core.eval.classification` for the classifier,
which imports torch only when it runs, so the other three stay torch-free)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sance_core.data.dataset import Manifest, load_manifest
from sance_core.eval.classification import TABLE_COLUMNS as CLASSIFIER_TABLE_COLUMNS
from sance_core.eval.classification import ClassifierEvalConfig, evaluate_classifier
from sance_core.eval.evaluation import (
    SEED_TABLE_COLUMNS,
    TABLE_COLUMNS,
    CAMEvalConfig,
    SeedEvalConfig,
    SegmentationEvalConfig,
    evaluate_cams,
    evaluate_seeds,
    evaluate_segmentation,
    plot_threshold_curve,
    write_json,
    write_tsv,
)
from sance_core.io.files import as_paths

__all__ = ["CAMEvalConfig", "ClassifierEvalConfig", "SeedEvalConfig", "SegmentationEvalConfig",
           "run_cam_evaluation", "run_classifier_evaluation", "run_seed_evaluation", "run_segmentation_evaluation"]


def run_classifier_evaluation(cfg: ClassifierEvalConfig, inputs: Mapping[str, Any],
                              outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs ``manifest``, ``model`` (the classifier's model.pt beside its config.json); outputs ``json``, ``tsv``."""
    manifest = load_manifest(inputs["manifest"], cfg.dataset)
    result, rows = evaluate_classifier(cfg, manifest, inputs["model"])
    write_json(result, outputs["json"])
    write_tsv(rows, outputs["tsv"], CLASSIFIER_TABLE_COLUMNS)
    return result


def run_cam_evaluation(cfg: CAMEvalConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs ``manifest``, ``cams`` (all CAM shards); outputs ``json``, ``tsv`` and optionally ``curve`` (PNG)."""
    manifest = Manifest.load(inputs["manifest"])
    result, rows = evaluate_cams(cfg, manifest, as_paths(inputs["cams"]))
    write_json(result, outputs["json"])
    write_tsv(rows, outputs["tsv"], TABLE_COLUMNS)
    if "curve" in outputs:
        plot_threshold_curve(result["threshold_curve"], result["best_threshold"], outputs["curve"])
    return result


def run_seed_evaluation(cfg: SeedEvalConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs ``manifest``, ``seeds`` (all seed shards); outputs ``json`` and ``tsv``."""
    manifest = Manifest.load(inputs["manifest"])
    result, rows = evaluate_seeds(cfg, manifest, as_paths(inputs["seeds"]))
    write_json(result, outputs["json"])
    write_tsv(rows, outputs["tsv"], SEED_TABLE_COLUMNS)
    return result


def run_segmentation_evaluation(cfg: SegmentationEvalConfig, inputs: Mapping[str, Any],
                                outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs ``manifest``, ``predictions`` (all shards of the split); outputs ``json`` and ``tsv``."""
    manifest = Manifest.load(inputs["manifest"])
    result, rows = evaluate_segmentation(cfg, manifest, as_paths(inputs["predictions"]))
    write_json(result, outputs["json"])
    write_tsv(rows, outputs["tsv"], TABLE_COLUMNS)
    return result
