"""The polynomial learning-rate decay of DeepLab, IRNet and the paper, with an optional linear warm-up.

The warm-up is the gradual warm-up of Goyal et al. (2017, "Accurate, large minibatch SGD", section
2.2): when a rate is scaled up for a schedule its model was not tuned for, the first iterations at
the full rate can overshoot; over ``warmup_steps`` iterations the rate rises linearly to the poly
schedule's value. The paper has none (``warmup_steps = 0``).
"""

from __future__ import annotations

import torch


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9, warmup_steps: int = 0) -> float:
    """``base_lr * (1 - step / total_steps) ** power`` (``base_lr`` when there are no steps).

    With ``warmup_steps`` > 0 the value of the first ``warmup_steps`` steps (0-based ``step``) is
    scaled by ``(step + 1) / (warmup_steps + 1)``: a linear ramp that reaches the poly value at step
    ``warmup_steps`` and never a zero rate.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps <= 0:
        return base_lr
    lr = base_lr * (1.0 - min(step, total_steps) / total_steps) ** power
    if step < warmup_steps:
        lr *= (step + 1) / (warmup_steps + 1)
    return lr


def warmup_steps_of(fraction: float, total_steps: int) -> int:
    """Iterations of a warm-up given as a ``fraction`` of ``total_steps`` (rounded; 0 = none)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"a warm-up fraction must be in [0, 1), got {fraction}")
    return int(round(fraction * total_steps))


def set_poly_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int, power: float = 0.9,
                warmup_steps: int = 0) -> float:
    """Apply the poly schedule to every param group from its own ``initial_lr``; return group 0's lr."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = poly_lr(group["initial_lr"], step, total_steps, power, warmup_steps)
    return optimizer.param_groups[0]["lr"]
