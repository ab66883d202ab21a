"""benchmarks/stage_throughput.py: the networks at one scale or at the preset's test-time scales."""

from __future__ import annotations

import pytest
import torch

from conftest import load_benchmark


def _script():
    return load_benchmark("stage_throughput")


class _Seen(Exception):
    pass


@pytest.mark.parametrize("preset", [False, True])
def test_cam_stage_runs_at_the_requested_scales(monkeypatch, preset):
    st = _script()
    import sance_core.models.classifier as classifier
    import sance_core.stages.cam as cam

    seen = []

    def fake_cams(model, images, scales, flip):
        seen.append((tuple(scales), flip, images[0].shape))
        raise _Seen

    monkeypatch.setattr(classifier, "CAMClassifier", lambda *a, **k: torch.nn.Identity())
    monkeypatch.setattr(cam, "multiscale_cams", fake_cams)
    run = st._stage_fn("cam", "cpu", preset=preset)
    with pytest.raises(_Seen):
        run(0)
    assert seen == [((1.0, 0.5, 1.5, 2.0) if preset else (1.0,), True, (st.H, st.W, 3))]


def test_projection_only_for_one_scale_rows():
    st = _script()
    row = {"stage": "maps", "cpu_s_per_image": 2.0, "scales": [1.0]}
    assert st.projected(row) == pytest.approx(2.0 * (1 + 0.25 + 2.25 + 4))
    assert st.projected(row | {"scales": [1.0, 0.5, 1.5, 2.0]}) is None  # measured at the preset scales
    assert st.projected({"stage": "seeds", "cpu_s_per_image": 1.0}) is None
