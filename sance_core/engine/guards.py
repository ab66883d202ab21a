"""Stop a training instead of letting NaN or infinite numbers reach a checkpoint or a model file."""

from __future__ import annotations

import math
from typing import Any

import torch


class NonFiniteLossError(FloatingPointError):
    """A loss or the weights became NaN or infinite; the message names the iteration and the terms."""


def check_finite(step: int, **terms: float | torch.Tensor) -> None:
    """Raise :class:`NonFiniteLossError` naming every term when one of them is not finite."""
    values = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in terms.items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        shown = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
        raise NonFiniteLossError(
            f"non-finite loss at iteration {step}: {', '.join(bad)} ({shown}); "
            "the last good checkpoint is kept — lower the learning rate or check the inputs"
        )


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold a NaN or an infinity."""
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
