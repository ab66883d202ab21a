"""The polynomial learning-rate decay of DeepLab, IRNet and the paper."""

from __future__ import annotations

import torch


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """``base_lr * (1 - step / total_steps) ** power`` (``base_lr`` when there are no steps)."""
    if total_steps <= 0:
        return base_lr
    return base_lr * (1.0 - min(step, total_steps) / total_steps) ** power


def set_poly_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int, power: float = 0.9) -> float:
    """Apply the poly schedule to every param group from its own ``initial_lr``; return group 0's lr."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = poly_lr(group["initial_lr"], step, total_steps, power)
    return optimizer.param_groups[0]["lr"]
