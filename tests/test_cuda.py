"""The CUDA code paths: float32 propagation on the GPU, mixed-precision training, a tiny `all`.

Every test here needs a CUDA device and is skipped, with that reason, without one;
``benchmarks/cuda_checks.py`` runs them on a GPU machine and records their timings in
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import math

import pytest
import torch

from sance_core.ops.propagation import propagate

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible)"),
]


def test_propagation_float32_on_cuda_matches_float64_on_cpu():
    """The GPU path (float32, four partial sums) against the exact CPU float64 path, at 96 x 128."""
    g = torch.Generator().manual_seed(0)
    contour = torch.rand(2, 96, 128, generator=g) ** 3
    scores = torch.rand(2, 3, 96, 128, generator=g)
    exact = propagate(scores.double(), contour.double())
    gpu = propagate(scores.cuda(), contour.cuda())
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    assert float((gpu.cpu().double() - exact).abs().max() / exact.abs().max()) < 1e-4


def test_amp_training_steps_are_finite_and_resume(tmp_path):
    """Mixed-precision SANCE steps on the GPU: finite losses, and a stopped run resumes to the end."""
    from test_sance_training import _cfg, _tiny_set

    from sance_core.stages.sance import SanceData, train

    ds, ids, tags, seeds = _tiny_set(tmp_path)
    common = {"dataset": ds, "mode": "sance", "crop_size": 32, "batch_size": 2, "epochs": 1,
              "device": "cuda", "amp": True, "resume_dir": str(tmp_path / "resume")}
    data = SanceData(_cfg(**common), ids, tags, [str(seeds)])
    _, first = train(_cfg(**common), data, stop_after_step=1)
    assert first["step"] == 1 and all(math.isfinite(v) for v in first.values())
    model, metrics = train(_cfg(**common), data)
    assert metrics["step"] == 2 and all(math.isfinite(v) for v in metrics.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.workflow
def test_tiny_all_on_cuda(workdir, tiny_config):
    """The whole tiny pipeline with `device: cuda`: every stage's GPU path, end to end."""
    from conftest import run_snakemake

    run_snakemake(workdir, "all", "--cores", "2", "--configfile", str(tiny_config), "--config", "device=cuda",
                  timeout=540)
    assert (workdir / "results").is_dir() and any((workdir / "results").rglob("summary.json"))
