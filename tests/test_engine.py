"""The training engine on a tiny regression: resume, checkpoint policy, fingerprint, end-of-epoch hook."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from sance_core.engine import (
    CHECKPOINT_FILE,
    CheckpointPolicy,
    EpochBatches,
    History,
    LoopConfig,
    NonFiniteLossError,
    Resume,
    StepResult,
    fingerprint,
    fit,
    poly_lr,
    warmup_steps_of,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Points(Dataset):
    """Sample ``(index, seed)`` -> a noisy point of y = 2x + 1 whose noise comes from the seed."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, key):
        index, seed = key
        g = torch.Generator().manual_seed(seed)
        x = torch.tensor([index / 6.0])
        return x, 2 * x + 1 + 0.1 * torch.randn(1, generator=g)


def _step(model, batch, ctx):
    x, y = (t.to(ctx.device) for t in batch)
    loss = (model(x) - y).pow(2).mean() + 0.01 * torch.rand(()).abs()  # the RNG state matters on resume
    return StepResult(loss, {"loss": loss}, {"bias": float(model.bias.detach())})


def _run(tmp_path, name, *, resume_dir=None, policy=CheckpointPolicy(every_epochs=1), stop=None, epoch_end=None,
         step=_step, epochs=3, warmup_steps=0):
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = _Points()

    def batches(epoch, start_batch):
        return EpochBatches(len(data), 2, seed=4, epoch=epoch, start_batch=start_batch)

    loop = LoopConfig("test", 3 * epochs, 3, seed=4, poly_power=0.9, warmup_steps=warmup_steps)
    resume = Resume(resume_dir, {"lr": 0.1}, policy) if resume_dir else None
    history = History(tmp_path / f"{name}.csv")
    metrics = fit(model, optimizer, data, batches, step, loop, torch.device("cpu"), resume=resume, history=history,
                  epoch_end=epoch_end, stop_after_step=stop)
    return model, history, metrics


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_resumed_run_ends_bit_identical_with_the_same_history(tmp_path):
    reference, ref_history, _ = _run(tmp_path, "ref")
    _, _, stopped = _run(tmp_path, "a", resume_dir=tmp_path / "r", stop=4)  # a crash after step 4's checkpoint
    assert stopped["step"] == 4
    resumed, history, _ = _run(tmp_path, "b", resume_dir=tmp_path / "r")
    assert _same(reference, resumed)
    assert history.rows == ref_history.rows
    assert [r["step"] for r in history.rows] == list(range(1, 10))


@pytest.mark.parametrize("policy, saved_at", [
    (CheckpointPolicy(every_iterations=2), [2, 4, 6, 8]),
    (CheckpointPolicy(every_epochs=1), [3, 6, 9]),
    (CheckpointPolicy(every_epochs=2), [6]),
    (CheckpointPolicy(every_epochs=1, min_seconds=3600), []),
])
def test_the_checkpoint_policy_decides_when_a_checkpoint_is_written(tmp_path, monkeypatch, policy, saved_at):
    from sance_core.engine.checkpoint import CheckpointManager

    saved: list[int] = []
    original = CheckpointManager.save

    def save(self, step, *args, **kwargs):
        saved.append(step)
        return original(self, step, *args, **kwargs)
    monkeypatch.setattr(CheckpointManager, "save", save)
    _run(tmp_path, "p", resume_dir=tmp_path / "r", policy=policy)
    assert saved == saved_at


def test_policy_values_are_checked():
    with pytest.raises(ValueError, match=">= 0"):
        CheckpointPolicy(every_iterations=-1)


@dataclass(frozen=True)
class _Cfg:
    lr: float = 0.1
    device: str = "cpu"
    workers: int = 0
    checkpoint_every: int = 100
    checkpoint_interval: float = 0.0
    resume_dir: str | None = None


def test_the_fingerprint_ignores_runtime_settings_and_takes_the_stage_entries():
    base = fingerprint(_Cfg())
    assert base == {"lr": 0.1}
    assert fingerprint(_Cfg(device="cuda", workers=8, checkpoint_every=7, checkpoint_interval=60,
                            resume_dir="/x")) == base
    assert fingerprint(_Cfg(lr=0.2)) != base
    assert fingerprint(_Cfg(), {"manifest_sha256": "ab12"}) == {"lr": 0.1, "manifest_sha256": "ab12"}
    with pytest.raises(ValueError, match="lr"):
        fingerprint(_Cfg(), {"lr": 1.0})


def test_a_checkpoint_of_another_fingerprint_is_refused(tmp_path):
    _run(tmp_path, "a", resume_dir=tmp_path / "r", stop=3)
    assert (tmp_path / "r" / CHECKPOINT_FILE).is_file()
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    with pytest.raises(ValueError, match="different config .*lr"):
        fit(model, optimizer, _Points(), lambda e, s: EpochBatches(6, 2, 4, e, s), _step, LoopConfig("t", 9, 3),
            torch.device("cpu"), resume=Resume(tmp_path / "r", {"lr": 0.2}, CheckpointPolicy(every_epochs=1)))


def test_the_end_of_epoch_hook_sees_each_epoch_and_cannot_change_the_training(tmp_path):
    reference, _, _ = _run(tmp_path, "ref")
    seen = []

    def evaluate(event):
        seen.append((event.epoch, event.step, event.model.training))
        torch.rand(100)  # draws from the training's RNG: must not shift what follows
        return {"val_score": float(event.epoch) + 0.5}

    model, history, _ = _run(tmp_path, "hooked", epoch_end=evaluate)
    assert seen == [(0, 3, False), (1, 6, False), (2, 9, False)]
    assert model.training
    assert _same(reference, model)
    assert [r.get("val_score") for r in history.rows] == [None, None, 0.5, None, None, 1.5, None, None, 2.5]


def test_a_non_finite_loss_stops_before_the_optimizer_step(tmp_path):
    def nan_at_5(model, batch, ctx):
        out = _step(model, batch, ctx)
        if ctx.step == 5:
            loss = out.loss * float("nan")
            return StepResult(loss, {"mse": loss}, out.logs)
        return out

    with pytest.raises(NonFiniteLossError, match="iteration 5: mse"):
        _run(tmp_path, "nan", resume_dir=tmp_path / "r", step=nan_at_5)
    state = torch.load(tmp_path / "r" / CHECKPOINT_FILE, weights_only=True)
    assert state["step"] == 3


@pytest.mark.parametrize("warmup", [0, 1, 4, 12])
def test_the_poly_rate_with_a_linear_warm_up_matches_a_naive_reference(warmup):
    base, total, power = 0.1, 12, 0.9
    for step in range(total + 2):
        expected = base * (1 - min(step, total) / total) ** power
        if step < warmup:
            expected *= (step + 1) / (warmup + 1)
        assert poly_lr(base, step, total, power, warmup) == pytest.approx(expected, rel=1e-12)
    ramp = [poly_lr(base, s, total, power, warmup) / poly_lr(base, s, total, power) for s in range(warmup)]
    assert all(0 < a < b for a, b in zip(ramp, ramp[1:] + [1.0]))  # rises, never zero, meets the schedule


def test_warm_up_fractions_round_to_iterations_and_bad_values_are_refused():
    assert warmup_steps_of(0.0, 200) == 0
    assert warmup_steps_of(0.05, 200) == 10
    assert warmup_steps_of(0.05, 30) == 2  # 1.5 rounds to even
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError, match="warm-up fraction"):
            warmup_steps_of(bad, 200)
    with pytest.raises(ValueError, match="warmup_steps"):
        poly_lr(0.1, 0, 10, 0.9, -1)


def test_the_loop_applies_the_warm_up_and_a_resumed_run_keeps_it(tmp_path):
    _, history, _ = _run(tmp_path, "warm", warmup_steps=4)
    lrs = [row["lr"] for row in history.rows]
    assert lrs == pytest.approx([poly_lr(0.1, s, 9, 0.9, 4) for s in range(9)])
    assert lrs[0] == pytest.approx(0.1 / 5)
    full, _, _ = _run(tmp_path, "warm_full", warmup_steps=4)
    resumed_dir = tmp_path / "resume"
    _run(tmp_path, "warm_part", resume_dir=resumed_dir, stop=2, warmup_steps=4)
    resumed, history2, _ = _run(tmp_path, "warm_rest", resume_dir=resumed_dir, warmup_steps=4)
    assert _same(full, resumed)
    assert [row["lr"] for row in history2.rows] == pytest.approx(lrs)
