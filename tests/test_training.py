"""Training plumbing: poly schedule, checkpoints and resume, NaN guard, model files, transforms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from sance_core.data.transforms import MEAN_COLOUR, normalize_image, random_scale_flip_crop
from sance_core.engine import CheckpointManager, History, NonFiniteLossError, check_finite, poly_lr, set_poly_lr
from sance_core.io.weights import load_model, save_model


def test_poly_lr_matches_formula_and_groups_keep_their_base():
    assert poly_lr(0.1, 0, 100) == pytest.approx(0.1)
    assert poly_lr(0.1, 50, 100) == pytest.approx(0.1 * 0.5 ** 0.9)
    assert poly_lr(0.1, 100, 100) == 0.0
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": [model.weight], "lr": 1.0}, {"params": [model.bias], "lr": 10.0}])
    set_poly_lr(opt, 30, 60)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5 ** 0.9, 10 * 0.5 ** 0.9])


def test_check_finite_names_iteration_and_terms():
    check_finite(3, loss=1.0, other=torch.tensor(2.0))
    with pytest.raises(NonFiniteLossError, match=r"iteration 7: contour .*contour=nan, seg=0\.5"):
        check_finite(7, contour=float("nan"), seg=0.5)


def _train(steps: int, manager: CheckpointManager | None, start_model=None):
    torch.manual_seed(0)
    model = nn.Linear(4, 1) if start_model is None else start_model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    start = 0
    if manager is not None:
        state = manager.load_latest(model, opt)
        start = state["step"] if state else 0
    x = torch.arange(32.0).view(8, 4) / 32
    for step in range(start, steps):
        loss = (model(x) - 1).pow(2).mean() + 0.01 * torch.randn(()).abs()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if manager is not None and step + 1 == 5:
            manager.save(step + 1, 0, model, opt)
            return model, step + 1
    return model, steps


def test_resume_equals_uninterrupted_run(tmp_path):
    reference, _ = _train(10, None)
    manager = CheckpointManager(tmp_path / "resume", fingerprint={"lr": 0.1})
    _, stopped_at = _train(10, manager)  # "crashes" after saving at step 5
    assert stopped_at == 5
    resumed, _ = _train(10, CheckpointManager(tmp_path / "resume", fingerprint={"lr": 0.1}))
    for a, b in zip(reference.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="different config .*lr"):
        CheckpointManager(tmp_path / "resume", fingerprint={"lr": 0.2}).load_latest(nn.Linear(4, 1))


def test_save_and_load_model_refuses_other_config(tmp_path):
    model = nn.Linear(3, 2)
    save_model(model, {"backbone": "resnet18", "classes": ["background", "a"]}, tmp_path / "m")
    state, cfg = load_model(tmp_path / "m", {"backbone": "resnet18"})
    assert cfg["classes"] == ["background", "a"]
    fresh = nn.Linear(3, 2)
    fresh.load_state_dict(state, strict=True)
    with pytest.raises(ValueError, match="classes"):
        load_model(tmp_path / "m", {"classes": ["background", "b"]})
    with pytest.raises(FileNotFoundError, match="model.pt and config.json"):
        load_model(tmp_path / "nothing")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["backbone"] == "resnet18"


def test_training_outputs_record_the_environment_beside_the_config(tmp_path):
    from sance_core.engine import write_training_outputs
    from sance_core.runtime import runtime_environment

    history = History(tmp_path / "m" / "history.csv")
    history.append(step=1, epoch=0, loss=0.5)
    outputs = {k: tmp_path / "m" / f for k, f in (("model", "model.pt"), ("config", "config.json"),
                                                  ("history", "history.csv"), ("curve", "curve.png"))}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        write_training_outputs(nn.Linear(3, 2), {"backbone": "resnet18"}, history, outputs, ["loss"], "t", None)
        env_now = runtime_environment("cpu")
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    env = saved["environment"]
    assert saved["backbone"] == "resnet18"
    assert env["torch"] == torch.__version__ and env["threads"] == 1 and env["device"] == "cpu"
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["cuda_device"] is None
    assert env == env_now
    # no loader compares it: a model trained elsewhere loads the same
    state, cfg = load_model(tmp_path / "m", {"backbone": "resnet18"})
    assert set(state) == {"weight", "bias"} and cfg["environment"] == env


def test_history_csv_and_plot(tmp_path):
    h = History(tmp_path / "h.csv")
    for step in range(5):
        h.append(step=step, loss=1.0 / (step + 1), lr=0.1)
    h.save()
    again = History(tmp_path / "h.csv")
    again.load(tmp_path / "h.csv")
    assert again.rows == h.rows
    png = h.plot(tmp_path / "h.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_random_scale_flip_crop_keeps_image_and_labels_aligned():
    rng = np.random.default_rng(0)
    h, w = 30, 50
    label = (np.arange(h * w).reshape(h, w) % 7).astype(np.uint8)
    image = np.repeat(label[:, :, None] * 30, 3, axis=2).astype(np.uint8)
    for crop in (16, 64):
        img, (lbl,), valid = random_scale_flip_crop(image, [label], rng, crop, scale_range=(1.0, 1.0))
        assert img.shape == (crop, crop, 3) and lbl.shape == (crop, crop)
        np.testing.assert_array_equal(img[valid][:, 0], lbl[valid] * 30)
        assert (lbl[~valid] == 255).all()
        assert (img[~valid] == np.array(MEAN_COLOUR)).all()
    assert valid.sum() == h * w  # crop 64 holds the whole 30x50 image


def test_normalize_image_is_zero_for_the_mean_colour():
    img = np.empty((2, 3, 3), np.uint8)
    img[:] = MEAN_COLOUR
    assert normalize_image(img).abs().max() < 0.01


def test_normalize_image_takes_read_only_and_strided_arrays_without_warning():
    """PIL-backed arrays are read-only and flips are strided; neither warns nor changes the values."""
    import warnings

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expected = (torch.tensor(img, dtype=torch.float32).permute(2, 0, 1) / 255.0
                - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    read_only = img.copy()
    read_only.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(normalize_image(read_only), expected)
        torch.testing.assert_close(normalize_image(img[:, ::-1]), expected.flip(-1))
