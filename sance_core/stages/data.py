"""Stages of workflow/rules/data.smk: ``demo_data``, ``validate_dataset`` and ``shard_ids``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sance_core.data.dataset import Manifest
from sance_core.data.demo import DemoDataConfig, generate_demo_dataset, render_preview
from sance_core.data.shards import ShardConfig, shard_ids
from sance_core.data.validate import ValidationConfig, validate_dataset
from sance_core.io.files import as_paths, write_text_atomic

__all__ = ["DemoStageConfig", "ShardConfig", "ValidationConfig", "run_demo_data", "run_shard_ids",
           "run_validate_dataset"]


@dataclass(frozen=True)
class DemoStageConfig:
    generator: DemoDataConfig = field(default_factory=DemoDataConfig)
    preview_samples: int = 8


def run_demo_data(cfg: DemoStageConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
    """Outputs: ``root`` (the dataset folder) and ``preview`` (a PNG of samples)."""
    root = Path(outputs["root"])
    generate_demo_dataset(cfg.generator, root)
    render_preview(root, Path(outputs["preview"]), n=cfg.preview_samples)


def run_validate_dataset(cfg: ValidationConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
    """Output ``manifest``: ids, sizes and image-level labels per split."""
    validate_dataset(cfg, outputs["manifest"])


def run_shard_ids(cfg: ShardConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
    """Input ``manifest``; output ``shards``: the list of shard files, in order."""
    paths = as_paths(outputs["shards"])
    ids = Manifest.load(inputs["manifest"]).ids(cfg.split)
    for path, chunk in zip(paths, shard_ids(ids, len(paths))):
        write_text_atomic(path, "".join(f"{i}\n" for i in chunk))
