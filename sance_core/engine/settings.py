"""Checks that every training config shares (classifier, SANCE, DeepLab); errors name the key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_training_config(cfg: Any, counts: Sequence[str], lr_mult: str) -> None:
    """``counts`` >= 1, ``scale_range`` = [low, high] with 0 < low <= high, SGD settings
    (``lr`` > 0, ``<lr_mult>`` > 0, ``weight_decay`` >= 0, 0 <= ``momentum`` < 1), ``workers`` >= 0."""
    for key in counts:
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if len(cfg.scale_range) != 2 or not 0 < cfg.scale_range[0] <= cfg.scale_range[1]:
        raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {list(cfg.scale_range)}")
    if cfg.lr <= 0 or getattr(cfg, lr_mult) <= 0 or cfg.weight_decay < 0 or not 0 <= cfg.momentum < 1:
        raise ValueError(f"need lr > 0, {lr_mult} > 0, weight_decay >= 0 and 0 <= momentum < 1")
    if cfg.workers < 0:
        raise ValueError(f"workers must be >= 0, got {cfg.workers}")
