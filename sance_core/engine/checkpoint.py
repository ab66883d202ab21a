"""Checkpoints of a training run: when to write one, what it must match, how it is kept.

Checkpoints live in a resume folder outside a rule's declared outputs, so Snakemake never
deletes them when a job fails; a rerun resumes from the last one instead of starting over.
A checkpoint is refused when it was written under another :func:`fingerprint`: the config
minus the settings that cannot change the result (device, workers, checkpoint timing...),
plus what the stage adds (e.g. a hash of its inputs).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sance_core.config import to_dict
from sance_core.engine.guards import NonFiniteLossError, non_finite_tensors
from sance_core.io.weights import torch_save_atomic

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"

RUNTIME_KEYS = frozenset({"device", "workers", "resume_dir", "checkpoint_interval", "checkpoint_every"})
"""Config keys that decide where and how fast a training runs, never its result: a checkpoint
written with other values is resumed (and a change of them reruns no Snakemake job)."""


def fingerprint(cfg: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint must share to be resumed: ``cfg`` (a config dataclass) without
    :data:`RUNTIME_KEYS`, and the stage's ``extra`` entries (e.g. ``{"manifest_sha256": ...}``)."""
    entries = {k: v for k, v in to_dict(cfg).items() if k not in RUNTIME_KEYS}
    clash = sorted(set(entries) & set(extra or {}))
    if clash:
        raise ValueError(f"fingerprint entries {clash} would hide config keys of the same name")
    entries.update(extra or {})
    return entries


@dataclass(frozen=True)
class CheckpointPolicy:
    """When the loop writes a checkpoint (any rule that applies suffices).

    * ``every_iterations``: after every n-th iteration (DeepLab: ``checkpoint_every``);
    * ``every_epochs``: at the end of every n-th epoch (SANCE: 1), and only when at least
      ``min_seconds`` passed since the last checkpoint (the classifier: ``checkpoint_interval``).
    """

    every_iterations: int = 0
    every_epochs: int = 0
    min_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.every_iterations < 0 or self.every_epochs < 0 or self.min_seconds < 0:
            raise ValueError(f"checkpoint policy values must be >= 0, got {self}")

    def due(self, step: int, end_of_epoch: bool, epochs_done: int, seconds_since_save: float) -> bool:
        if self.every_iterations and step % self.every_iterations == 0:
            return True
        return (bool(self.every_epochs) and end_of_epoch and epochs_done % self.every_epochs == 0
                and seconds_since_save >= self.min_seconds)


def _sha256_of(path: Path) -> str:
    """sha256 of a file, or of a folder's relative file names and contents (sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        with file.open("rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def input_fingerprint(inputs: Mapping[str, Any]) -> dict[str, str]:
    """What a training job learns from, as content hashes, one entry per named input.

    ``manifest``: its content hash (ids, sizes, labels and the hashes of the image, mask and
    annotation files, see :meth:`Manifest.content_hash`); every other input (seeds, pseudo-label
    PNGs, the classifier a backbone starts from): sha256 of the file or folder. A training
    stage passes this as ``data`` to :class:`Resume`, so a checkpoint is resumed only on the very
    data it was trained on.
    """
    from sance_core.data.dataset import Manifest

    key: dict[str, str] = {}
    for name in sorted(inputs):
        paths = inputs[name] if isinstance(inputs[name], (list, tuple)) else [inputs[name]]
        if name == "manifest":
            key[name] = Manifest.load(paths[0]).content_hash()
        else:
            key[name] = hashlib.sha256("".join(_sha256_of(Path(p)) for p in paths).encode()).hexdigest()
    return key


class CheckpointManager:
    """Keep the latest training state (model, optimizer, step, RNG) in ``resume_dir``.

    ``fingerprint``: the settings a checkpoint must share to be resumed (another one is refused,
    naming the keys). ``data``: what the training learns from (:func:`input_fingerprint`); a
    checkpoint of other data is not resumed: the training starts over and the log says which
    input changed.
    """

    def __init__(self, resume_dir: str | Path | None, fingerprint: dict[str, Any] | None = None,
                 data: Mapping[str, str] | None = None) -> None:
        self.dir = Path(resume_dir) if resume_dir else None
        self.fingerprint = json.loads(json.dumps(fingerprint or {}, default=str))
        self.data = dict(data) if data is not None else None

    @property
    def path(self) -> Path | None:
        return None if self.dir is None else self.dir / CHECKPOINT_FILE

    def save(self, step: int, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
             extra: dict[str, Any] | None = None) -> None:
        if self.dir is None:
            return
        bad = non_finite_tensors(model.state_dict())
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
            "data": json.dumps(self.data or {}, sort_keys=True),
            "extra": json.dumps(extra or {}, default=str),
        }
        torch_save_atomic(state, self.path)  # type: ignore[arg-type]
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
        if self.data is not None:
            saved_data = json.loads(state["data"]) if "data" in state else {}
            if saved_data != self.data:
                changed = sorted(k for k in set(saved_data) | set(self.data) if saved_data.get(k) != self.data.get(k))
                log.warning("%s was trained on other data (changed input(s): %s); not resuming it, training "
                            "starts over from step 0", self.path, ", ".join(changed))
                self.clear()
                return None
        model.load_state_dict(state["model"], strict=True)
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed from %s at step %d (epoch %d)", self.path, state["step"], state["epoch"])
        return {"step": int(state["step"]), "epoch": int(state["epoch"]), "extra": json.loads(state["extra"])}

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
