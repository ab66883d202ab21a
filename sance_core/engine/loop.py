"""The one training loop of the classifier, SANCE and DeepLab.

A model's stage supplies the network, the optimizer (its own parameter groups), the dataset,
the sampler of one epoch and the step function that turns a batch into a loss; the engine
does everything around it, the same way for the three trainings:

* the poly learning rate of every parameter group (:func:`set_poly_lr`),
* mixed precision on CUDA (``amp``) with a gradient scaler, optional gradient clipping,
* the finite-loss guard before the optimizer step and the finite-weight guard before a
  checkpoint or model file is written (:mod:`sance_core.engine.guards`),
* history rows (CSV and curve, :class:`History`),
* checkpoints when a :class:`CheckpointPolicy` says so, into a resume folder outside the
  declared outputs, refused when written under another :func:`fingerprint`,
* deterministic resume: data order and augmentation are functions of (seed, epoch, position)
  (:class:`EpochBatches`), so a run resumed at a checkpoint ends bit-identical to an
  uninterrupted one on the same device,
* an end-of-epoch hook (evaluation of the model so far) that cannot change the training.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sance_core.engine.checkpoint import CheckpointManager, CheckpointPolicy
from sance_core.engine.guards import check_finite
from sance_core.engine.history import History
from sance_core.engine.schedule import set_poly_lr

log = logging.getLogger(__name__)

RESUME_HISTORY = "history.csv"


@dataclass(frozen=True)
class StepContext:
    """What a step function may use besides the batch: where it runs and where the run is."""

    step: int  # global iteration, 0-based (the one being computed)
    epoch: int  # 0-based
    total_steps: int
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager[Any]]  # wrap the forward pass in it


@dataclass
class StepResult:
    """One batch's weighted ``loss`` (scalar tensor), the terms the finite guard checks and names
    (e.g. ``{"loss": loss}``), and the floats a history row records besides step, epoch, lr, loss."""

    loss: torch.Tensor
    checked: Mapping[str, torch.Tensor | float]
    logs: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EpochEnd:
    """Passed to the end-of-epoch hook after the last step of epoch ``epoch`` (0-based)."""

    epoch: int
    step: int
    model: nn.Module
    metrics: Mapping[str, float]


StepFn = Callable[[nn.Module, Any, StepContext], StepResult]
EpochEndFn = Callable[[EpochEnd], Mapping[str, float] | None]


@dataclass(frozen=True)
class LoopConfig:
    """How the loop runs; everything the stage's config decides about the schedule and safety."""

    name: str  # progress-bar and log label
    total_steps: int
    steps_per_epoch: int
    seed: int = 0  # the run's seed; the data loader's generator derives from (seed, epoch)
    poly_power: float = 0.9
    warmup_steps: int = 0  # linear rate warm-up over the first steps (schedule.poly_lr); 0 = none
    amp: bool = False  # float16 autocast + gradient scaler, on CUDA only
    grad_clip: float = 0.0  # max gradient norm; 0 = off (the norm is logged as grad_norm when on)
    workers: int = 0
    time_column: bool = False  # record elapsed_s (wall time, continued across resumes) in the history


@dataclass(frozen=True)
class Resume:
    """Where checkpoints live, what they must match, and when they are written."""

    dir: str | Path
    fingerprint: Mapping[str, Any]
    policy: CheckpointPolicy
    data: Mapping[str, str] | None = None  # input hashes (input_fingerprint): other data restarts the training


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Dataset,
    batches: Callable[[int, int], Iterable[list[Any]]],
    step_fn: StepFn,
    loop: LoopConfig,
    device: torch.device,
    *,
    resume: Resume | None = None,
    history: History | None = None,
    epoch_end: EpochEndFn | None = None,
    stop_after_step: int | None = None,
) -> dict[str, float]:
    """Train ``model`` in place for ``loop.total_steps`` iterations; return the last history row.

    ``batches(epoch, start_batch)`` is the batch sampler of one epoch from batch ``start_batch``
    on (an :class:`EpochBatches`). With ``resume`` the run continues from the checkpoint in
    ``resume.dir`` (model, optimizer, step, RNG, history rows up to that step). ``epoch_end``
    runs after every complete epoch, in eval mode and with the RNG state saved and restored, so
    whatever it does the training goes on identically; the floats it returns join the epoch's
    last history row. ``stop_after_step`` ends the run right after a checkpoint at that step, as a
    crash there would (tests use it).
    """
    use_amp = loop.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    def autocast() -> contextlib.AbstractContextManager[Any]:
        return torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()

    checkpoints = CheckpointManager(resume.dir, dict(resume.fingerprint), resume.data) if resume is not None else None
    resume_history = Path(resume.dir) / RESUME_HISTORY if resume is not None else None
    step, elapsed = 0, 0.0
    if checkpoints is not None:
        state = checkpoints.load_latest(model, optimizer)
        if state is not None:
            step = int(state["step"])
            elapsed = float(state["extra"].get("elapsed_s", 0.0))
            if history is not None and resume_history is not None:
                history.load(resume_history)
                history.rows = [r for r in history.rows if r.get("step", 0) <= step]
    total, per_epoch = loop.total_steps, loop.steps_per_epoch
    metrics: dict[str, float] = {}
    model.train()
    progress = tqdm(total=total, initial=step, desc=loop.name, unit="step", mininterval=5)
    start = time.perf_counter() - elapsed
    last_save = time.monotonic()
    while step < total:
        epoch, start_batch = divmod(step, per_epoch)
        # the loader's own generator: creating it must not draw from the training's RNG (a run resumed
        # mid-epoch would otherwise be one draw off), and worker seeds follow from (seed, epoch)
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([loop.seed, epoch]).generate_state(1)[0]))
        loader = DataLoader(data, batch_sampler=batches(epoch, start_batch), num_workers=loop.workers,
                            pin_memory=device.type == "cuda", persistent_workers=False, generator=generator)
        for batch in loader:
            lr = set_poly_lr(optimizer, step, total, loop.poly_power, loop.warmup_steps)
            out = step_fn(model, batch, StepContext(step, epoch, total, device, autocast))
            check_finite(step, **out.checked)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out.loss).backward()
            logs = dict(out.logs)
            if loop.grad_clip > 0:
                scaler.unscale_(optimizer)
                logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip))
            scaler.step(optimizer)
            scaler.update()
            step += 1
            metrics = {"step": step, "epoch": epoch + 1, "loss": float(out.loss.detach()), "lr": float(lr), **logs}
            if loop.time_column:
                metrics["elapsed_s"] = time.perf_counter() - start
            if history is not None:
                history.append(**metrics)
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['loss']:.3f}", refresh=False)
            end_of_epoch = step % per_epoch == 0
            if end_of_epoch and epoch_end is not None:
                metrics.update(_run_epoch_end(epoch_end, EpochEnd(epoch, step, model, dict(metrics)), device))
                if history is not None:
                    history.rows[-1] = {k: float(v) for k, v in metrics.items()}
            if checkpoints is not None and resume is not None and (
                    step == stop_after_step
                    or resume.policy.due(step, end_of_epoch, epoch + 1, time.monotonic() - last_save)):
                # history first: a crash between the two leaves an older checkpoint, and a resume keeps
                # only the history rows up to its step, so both stay consistent
                if history is not None and resume_history is not None:
                    history.save(resume_history)
                checkpoints.save(step, epoch, model, optimizer, {"metrics": metrics,
                                                                 "elapsed_s": time.perf_counter() - start})
                last_save = time.monotonic()
            if step == stop_after_step or step >= total:
                break
        if step == stop_after_step:
            break
        log.info("%s epoch %d: %s", loop.name, epoch + 1,
                 ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("step", "epoch")))
    progress.close()
    return metrics


def _run_epoch_end(hook: EpochEndFn, event: EpochEnd, device: torch.device) -> dict[str, float]:
    """The hook in eval mode under a forked RNG; the model is back in train mode afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        event.model.eval()
        try:
            with torch.no_grad():
                extra = hook(event) or {}
        finally:
            event.model.train()
    return {k: float(v) for k, v in extra.items()}


def clear_resume(resume_dir: str | Path | None) -> None:
    """Remove the checkpoint and resume history once the model is saved (a later run starts afresh)."""
    if resume_dir:
        CheckpointManager(resume_dir).clear()
        (Path(resume_dir) / RESUME_HISTORY).unlink(missing_ok=True)


def training_outputs_dir(outputs: Mapping[str, Any]) -> Path:
    """The one folder that holds a training's outputs ``model``, ``config``, ``history`` and ``curve``."""
    out_dir = Path(outputs["model"]).parent
    for key in ("config", "history", "curve"):
        if Path(outputs[key]).parent != out_dir:
            raise ValueError(f"outputs model and {key} must share one folder ({outputs['model']}, {outputs[key]})")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def write_training_outputs(model: nn.Module, config: dict[str, Any], history: History, outputs: Mapping[str, Any],
                           curve_columns: list[str], title: str, resume_dir: str | Path | None) -> None:
    """History CSV, curve PNG, then ``model.pt`` + ``config.json``; then the resume state is dropped,
    so a later run with other settings starts afresh.

    ``config.json`` gets an ``environment`` entry (:func:`sance_core.runtime.runtime_environment`:
    versions, CPU kernels, threads, device), which no loader compares: it explains a difference, it
    never refuses a model.
    """
    from sance_core.io.weights import save_model
    from sance_core.runtime import runtime_environment

    history.save(outputs["history"])
    history.plot(outputs["curve"], history.columns(curve_columns), title=title)
    device = next(iter(model.parameters()), torch.empty(0)).device
    config = {**config, "environment": runtime_environment(device)}
    save_model(model.cpu(), config, training_outputs_dir(outputs))
    clear_resume(resume_dir)
