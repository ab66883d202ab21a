"""Stage of workflow/rules/contours.smk: ``evaluate_contours`` (the benchmark is :mod:`sance_core.eval.edge_eval`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sance_core.data.dataset import Manifest
from sance_core.eval.edge_eval import ContourEvalConfig, evaluate_contour_maps, job_processes
from sance_core.eval.evaluation import write_json, write_tsv
from sance_core.io.files import as_paths

__all__ = ["ContourEvalConfig", "run_evaluate_contours"]


def run_evaluate_contours(cfg: ContourEvalConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs ``manifest``, ``maps`` (all shards of a mode); outputs ``json`` and ``curve`` (PR curve TSV)."""
    result = evaluate_contour_maps(cfg, Manifest.load(inputs["manifest"]), as_paths(inputs["maps"]), job_processes())
    write_json(result, outputs["json"])
    write_tsv(result["curve"], outputs["curve"], ("threshold", "recall", "precision", "f"))
    return result
