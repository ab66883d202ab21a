"""Stage ``demo_data``: generate the demo dataset into the configured data root."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sance_core.data.demo import DemoDataConfig, generate_demo_dataset, render_preview


@dataclass(frozen=True)
class DemoStageConfig:
    generator: DemoDataConfig = field(default_factory=DemoDataConfig)
    preview_samples: int = 8


def run_stage(cfg: DemoStageConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
    """Outputs: ``root`` (the dataset folder) and ``preview`` (a PNG of samples)."""
    root = Path(outputs["root"])
    generate_demo_dataset(cfg.generator, root)
    render_preview(root, Path(outputs["preview"]), n=cfg.preview_samples)
