"""Stages: orchestration only (read inputs, call the library, write outputs), and their registry.

A Snakemake rule's name is its stage's name; :data:`STAGES` says which module of this package
holds the stage (``stages/<x>.py`` sits next to ``workflow/rules/<x>.smk`` where the step has
one rule file). Each stage is one typed config and one entry function ``(cfg, inputs, outputs)``.

Snakemake rules and the ``sance run`` CLI both go through :func:`run_stage`, so a stage
behaves the same with or without the workflow. Modules are imported only when their
stage runs, which keeps ``sance --help`` fast and torch-free.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sance_core.config import from_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageEntry:
    module: str
    config: str
    function: str = "run_stage"
    help: str = ""


# name -> where its config dataclass and ``run_stage(cfg, inputs, outputs)`` live
STAGES: dict[str, StageEntry] = {
    "demo_data": StageEntry("sance_core.stages.data", "DemoStageConfig", "run_demo_data",
                            help="generate the embedded demo dataset in PASCAL VOC layout"),
    "validate_dataset": StageEntry("sance_core.stages.data", "ValidationConfig", "run_validate_dataset",
                                   help="read every listed image and mask once and write the manifest"),
    "shard_ids": StageEntry("sance_core.stages.data", "ShardConfig", "run_shard_ids",
                            help="split one split's ids into the shard lists of the per-image jobs"),
    "make_seeds": StageEntry("sance_core.stages.seeds", "SeedConfig",
                             help="CAM seeds of one shard: Eq. (1) at 0.30 / 0.05, each CRF-refined; 255 = unsure"),
    "evaluate_classifier": StageEntry("sance_core.stages.evaluate", "ClassifierEvalConfig", "run_classifier_evaluation",
                                      help="image-level mAP and per-class AP of the classifier on the val split (tags only)"),
    "evaluate_cams": StageEntry("sance_core.stages.evaluate", "CAMEvalConfig", "run_cam_evaluation",
                                help="CAM mIoU of a split over a background-threshold sweep (best + curve)"),
    "train_classifier": StageEntry("sance_core.stages.classifier", "ClassifierConfig",
                                   help="train the multi-label ResNet classifier whose CAMs seed the pipeline"),
    "extract_cams": StageEntry("sance_core.stages.cam", "CAMConfig",
                               help="multi-scale (+flip) CAMs of the present classes of one shard"),
    "evaluate_seeds": StageEntry("sance_core.stages.evaluate", "SeedEvalConfig", "run_seed_evaluation",
                                 help="seed precision, coverage and mIoU of the confident pixels"),
    "train_sance": StageEntry("sance_core.stages.sance", "SanceConfig",
                              help="train the SANCE model of a mode (irnet, sance_naive, sance) on the CAM seeds"),
    "infer_maps": StageEntry("sance_core.stages.pseudo_labels", "MapsConfig", "run_infer_maps",
                             help="multi-scale (+flip) averaged contour and segmentation maps of one shard"),
    "make_pseudo_labels": StageEntry("sance_core.stages.pseudo_labels", "PseudoLabelConfig", "run_make_pseudo_labels",
                                     help="propagate the seg map (or CAM) along the contours, tau_b, argmax"),
    "export_pseudo_label_pngs": StageEntry("sance_core.stages.pseudo_labels", "ExportConfig", "run_export_pngs",
                                           help="VOC palette PNGs of all pseudo-label shards"),
    "evaluate_pseudo_labels": StageEntry("sance_core.stages.pseudo_labels", "EvalConfig", "run_eval",
                                         help="train-split mIoU of a mode's pseudo labels against the GT masks"),
    "train_segmenter": StageEntry("sance_core.stages.segmenter", "SegmenterConfig", "run_train",
                                  help="train DeepLab-v2 on a mode's pseudo labels (or the GT masks)"),
    "predict_segmenter": StageEntry("sance_core.stages.segmenter", "PredictConfig", "run_predict",
                                    help="multi-scale (+flip, +CRF) DeepLab inference on one shard of a split"),
    "evaluate_segmenter": StageEntry("sance_core.stages.evaluate", "SegmentationEvalConfig",
                                     "run_segmentation_evaluation",
                                     help="mIoU of the DeepLab predictions of a split against the GT masks"),
    "infer_contours": StageEntry("sance_core.stages.contour_maps", "ContourMapsConfig",
                                 help="raw single-scale contour maps of a mode's model for the contour benchmark"),
    "evaluate_contours": StageEntry("sance_core.stages.contours", "ContourEvalConfig", "run_evaluate_contours",
                                    help="ODS/OIS/AP and PR curve of a mode's contour maps (BSDS/SBD matching)"),
    "summarize": StageEntry("sance_core.stages.summary", "SummaryConfig", "run_summary",
                            help="one mode's summary.json/tsv from the evaluation JSONs"),
    "ablation_table": StageEntry("sance_core.stages.summary", "AblationConfig", "run_ablation",
                                 help="the ablation table (TSV + Markdown) across modes from their summaries"),
    "figure_qualitative": StageEntry("sance_core.stages.figures", "QualitativeConfig", "run_qualitative",
                                     help="report grid of fixed ids: image, GT, CAM, seeds, maps, pseudo labels, predictions"),
    "figure_iou_bars": StageEntry("sance_core.stages.figures", "IoUBarsConfig", "run_iou_bars",
                                  help="report figure: per-class IoU of CAMs, seeds, pseudo labels and DeepLab per mode"),
    "figure_pr_curves": StageEntry("sance_core.stages.figures", "PRCurvesConfig", "run_pr_curves",
                                   help="report figure: contour precision-recall curves of the modes (ODS marked)"),
    "figure_epoch_miou": StageEntry("sance_core.stages.figures", "EpochMIoUConfig", "run_epoch_miou",
                                    help="report figure (paper Fig. 5): pseudo-label mIoU after each SANCE epoch per mode"),
    "figure_training_curves": StageEntry("sance_core.stages.figures", "TrainingCurvesConfig", "run_training_curves",
                                         help="report figure: loss terms of every training stage from history.csv"),
}


def register(name: str, entry: StageEntry) -> None:
    """Add a stage (used by stage modules of later pipeline steps and by plugins)."""
    STAGES[name] = entry


def get_stage(name: str) -> tuple[type, Callable[..., Any]]:
    """The config class and entry function of a stage; unknown names list the known ones."""
    try:
        entry = STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known stages: {', '.join(sorted(STAGES))}") from None
    module = importlib.import_module(entry.module)
    return getattr(module, entry.config), getattr(module, entry.function)


def run_stage(name: str, params: Mapping[str, Any], inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
    """Validate ``params`` into the stage's frozen config, then run it."""
    config_cls, function = get_stage(name)
    cfg = from_dict(config_cls, dict(params))
    log.info("stage %s: %s", name, cfg)
    start = time.perf_counter()
    result = function(cfg, dict(inputs), dict(outputs))
    log.info("stage %s finished in %.1f s", name, time.perf_counter() - start)
    return result
