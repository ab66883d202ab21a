"""Trained weights on disk: ``model.pt`` (a state dict) beside ``config.json``, loaded only with ``weights_only=True``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sance_core.io.files import write_bytes_atomic, write_text_atomic

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"


def torch_save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to memory, then the bytes through :func:`write_bytes_atomic`, after removing what
    a killed writer left: a full disk is reported as such (torch's own file writer says only
    'unexpected pos ...') and no partial file stays behind."""
    import io

    from sance_core.io.store import remove_stale_temp_files

    remove_stale_temp_files(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def save_model(model: nn.Module, config: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``model.pt`` (state dict only) and ``config.json`` side by side, each atomically.

    Refuses weights holding NaN or infinity (:class:`sance_core.engine.guards.NonFiniteLossError`).
    """
    from sance_core.engine.guards import NonFiniteLossError, non_finite_tensors

    out_dir = Path(out_dir)
    bad = non_finite_tensors(model.state_dict())
    if bad:
        raise NonFiniteLossError(f"refusing to save a model with non-finite weights ({', '.join(bad[:5])}) to {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch_save_atomic(model.state_dict(), out_dir / MODEL_FILE)
    write_text_atomic(out_dir / CONFIG_FILE, json.dumps(config, indent=2, default=str))
    return out_dir / MODEL_FILE


def load_model(model_dir: str | Path, expected: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a saved state dict and its config; refuse when ``expected`` keys disagree with the config.

    Loading goes through ``weights_only=True``: a model file can never run code.
    """
    model_dir = Path(model_dir)
    model_path, config_path = model_dir / MODEL_FILE, model_dir / CONFIG_FILE
    if not model_path.is_file() or not config_path.is_file():
        raise FileNotFoundError(f"{model_dir}: expected {MODEL_FILE} and {CONFIG_FILE} (a model saved by sance)")
    config = json.loads(config_path.read_text())
    for key, value in (expected or {}).items():
        saved = config.get(key)
        if json.loads(json.dumps(saved, default=str)) != json.loads(json.dumps(value, default=str)):
            raise ValueError(f"{config_path}: model was trained with {key}={saved!r}, but {key}={value!r} was expected")
    state = torch.load(model_path, map_location="cpu", weights_only=True)
    return state, config


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state`` strictly; weights that do not fit become a ValueError naming ``source``.

    Never falls back to a partial (non-strict) load, which would silently run half-random weights.
    """
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise ValueError(f"{source}: the weights do not fit the model its config.json describes "
                         f"(another backbone or class list?): {detail[:400]}") from None
