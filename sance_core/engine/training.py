"""Training plumbing shared by the classifier, SANCE and DeepLab: schedules, checkpoints, curves.

Checkpoints live in a resume folder outside a rule's declared outputs, so Snakemake never
deletes them when a job fails; a rerun resumes from the last one instead of starting over.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sance_core.io.files import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the iteration and every term."""


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """Polynomial decay used by DeepLab, IRNet and the paper: base * (1 - step/total)^power."""
    if total_steps <= 0:
        return base_lr
    return base_lr * (1.0 - min(step, total_steps) / total_steps) ** power


def set_poly_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int, power: float = 0.9) -> float:
    """Apply the poly schedule to every param group from its own ``initial_lr``; return group 0's lr."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = poly_lr(group["initial_lr"], step, total_steps, power)
    return optimizer.param_groups[0]["lr"]


def check_finite(step: int, **terms: float | torch.Tensor) -> None:
    """Stop training with a clear message instead of silently training on NaNs."""
    values = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in terms.items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        shown = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
        raise NonFiniteLossError(
            f"non-finite loss at iteration {step}: {', '.join(bad)} ({shown}); "
            "the last good checkpoint is kept — lower the learning rate or check the inputs"
        )


def _non_finite_tensors(state: dict[str, Any]) -> list[str]:
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


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


class CheckpointManager:
    """Keep the latest training state (model, optimizer, step, RNG) in ``resume_dir``."""

    def __init__(self, resume_dir: str | Path | None, fingerprint: dict[str, Any] | None = None) -> None:
        self.dir = Path(resume_dir) if resume_dir else None
        self.fingerprint = json.loads(json.dumps(fingerprint or {}, default=str))

    @property
    def path(self) -> Path | None:
        return None if self.dir is None else self.dir / CHECKPOINT_FILE

    def save(self, step: int, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
             extra: dict[str, Any] | None = None) -> None:
        if self.dir is None:
            return
        bad = _non_finite_tensors(model.state_dict())
        if bad:  # the loss was finite but the step that followed it was not: keep the last good checkpoint
            raise NonFiniteLossError(
                f"non-finite weights after iteration {step} ({', '.join(bad[:5])}); {self.path} is not "
                "overwritten, so the last good checkpoint is kept — lower the learning rate or check the inputs"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {
            "step": step,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
            "extra": json.dumps(extra or {}, default=str),
        }
        _torch_save_atomic(state, self.path)  # type: ignore[arg-type]
        log.debug("checkpoint at step %d saved to %s", step, self.path)

    def load_latest(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any] | None:
        """Restore the last checkpoint into ``model``/``optimizer``; None when there is none.

        A checkpoint written under a different config is refused rather than silently mixed in.
        """
        if self.path is None or not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        saved = json.loads(state["fingerprint"])
        if saved != self.fingerprint:
            diff = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
            raise ValueError(
                f"{self.path}: checkpoint was written with a different config (differs in {', '.join(diff)}); "
                "delete the folder to start over"
            )
        model.load_state_dict(state["model"], strict=True)
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed from %s at step %d (epoch %d)", self.path, state["step"], state["epoch"])
        return {"step": int(state["step"]), "epoch": int(state["epoch"]), "extra": json.loads(state["extra"])}

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class History:
    """Per-iteration (or per-epoch) training records as CSV, and a curve plot from them."""

    def __init__(self, csv_path: str | Path) -> None:
        self.path = Path(csv_path)
        self.rows: list[dict[str, float]] = []

    def append(self, **row: float | int | torch.Tensor) -> None:
        self.rows.append({k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in row.items()})

    def load(self, path: str | Path) -> None:
        """Continue a history after a resume."""
        path = Path(path)
        if path.is_file():
            with path.open() as f:
                self.rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]

    def save(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path else self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        return path

    def plot(self, png_path: str | Path, columns: list[str] | None = None, x: str = "step",
             title: str = "training") -> Path:
        """One panel per column against ``x`` (loss terms, learning rate, accuracy...)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if columns is None:
            columns = [k for k in (self.rows[0] if self.rows else {}) if k not in (x, "epoch")]
        n = max(1, len(columns))
        fig = Figure(figsize=(3.6 * min(n, 4), 2.8 * math.ceil(n / 4)))
        FigureCanvasAgg(fig)
        for i, col in enumerate(columns):
            ax = fig.add_subplot(math.ceil(n / 4), min(n, 4), i + 1)
            pts = [(r[x], r[col]) for r in self.rows if col in r and x in r]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, lw=1)
            ax.set_title(col, fontsize=9)
            ax.set_xlabel(x, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        png_path = Path(png_path)
        png_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png_path, dpi=100)
        return png_path


def save_model(model: nn.Module, config: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``model.pt`` (state dict only) and ``config.json`` side by side, each atomically."""
    out_dir = Path(out_dir)
    bad = _non_finite_tensors(model.state_dict())
    if bad:
        raise NonFiniteLossError(f"refusing to save a model with non-finite weights ({', '.join(bad[:5])}) to {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    _torch_save_atomic(model.state_dict(), out_dir / MODEL_FILE)
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


def _torch_save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`atomic_path`, after removing what a killed writer left."""
    from sance_core.io.store import remove_stale_temp_files

    remove_stale_temp_files(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
