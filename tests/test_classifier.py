"""Stage 2, the CAM classifier: shapes, the CAM/logit identity, learning, resuming, stage outputs."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from conftest import training_outputs
from sance_core.config import ConfigError, from_dict
from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.engine import CHECKPOINT_FILE
from sance_core.io.weights import load_model
from sance_core.models.classifier import CAMClassifier, build_from_config
from sance_core.stages.classifier import (
    ClassifierConfig,
    EpochBatches,
    batch_metrics,
    load_training_set,
    make_optimizer,
    model_config,
    run_stage,
    sgd_momentum,
    train,
)

CLASSES = ("background", "a", "b", "c")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_dataset(root: Path, n: int = 6, seed: int = 0) -> tuple[DatasetSpec, Path]:
    """A tiny VOC-layout folder (images only) and its manifest; sizes differ per image."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    entries = []
    for i in range(n):
        h, w = 30 + 3 * i, 40 - 2 * i
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "JPEGImages" / f"img{i}.jpg")
        labels = [] if i == n - 1 else sorted({1 + i % 3, 1 + (i * 2) % 3})
        entries.append({"id": f"img{i}", "height": h, "width": w, "labels": labels, "has_mask": False})
    manifest = Manifest("toy", str(root), list(CLASSES), {"train": entries})
    manifest.save(root / "manifest.json")
    spec = DatasetSpec(root=str(root), classes=CLASSES)
    return spec, root / "manifest.json"


def small_config(spec: DatasetSpec, **kw) -> ClassifierConfig:
    base = dict(dataset=spec, backbone="resnet18", weights=None, zero_init_residual=True,
                scale_range=(0.7, 1.3), epochs=2, batch_size=2, crop_size=32, lr=0.01, device="cpu", seed=3)
    base.update(kw)
    return ClassifierConfig(**base)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_forward_and_cam_shapes(backbone):
    torch.manual_seed(0)
    model = CAMClassifier(5, backbone).eval()
    x = torch.randn(2, 3, 70, 50)
    with torch.no_grad():
        logits, cams = model(x), model.cam(x)
    assert logits.shape == (2, 5)
    assert cams.shape == (2, 5, 5, 4)  # output stride 16: ceil(70/16), ceil(50/16)
    assert model.classifier.bias is None


def test_logits_are_the_spatial_mean_of_the_cams():
    # the head is linear and bias-free, so pooling commutes with it: CAMs explain the logits exactly
    torch.manual_seed(1)
    model = CAMClassifier(3, "resnet18").eval()
    x = torch.randn(3, 3, 64, 48)
    with torch.no_grad():
        assert torch.allclose(model(x), model.cam(x).mean(dim=(2, 3)), atol=1e-5)


def test_param_groups_give_the_head_its_own_rate():
    model = CAMClassifier(3, "resnet18")
    groups = model.param_groups(0.1, 10.0, 1e-4)
    assert [g["initial_lr"] for g in groups] == [0.1, 1.0]
    n_params = sum(1 for _ in model.parameters())
    assert sum(len(g["params"]) for g in groups) == n_params
    assert groups[1]["params"] == [model.classifier.weight]


def test_a_few_steps_on_a_fixed_batch_reduce_the_loss():
    torch.manual_seed(0)
    model = CAMClassifier(4, "resnet18")
    optimizer = torch.optim.SGD(model.param_groups(0.01, 10.0, 1e-4), lr=0.01, momentum=0.9)
    x = torch.randn(4, 3, 48, 48)
    y = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0]], dtype=torch.float32)
    losses = []
    for _ in range(8):
        loss = F.multilabel_soft_margin_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_batch_metrics_against_hand_computed_values():
    logits = torch.tensor([[2.0, -1.0], [1.0, 3.0], [-2.0, 0.5]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    m = batch_metrics(logits, labels)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # class 0 ranking 2, 1, -2 -> hits 1, 0, 1: AP = (1 + 2/3) / 2; class 1 ranking 3, 0.5, -1 -> hits 1, 1, 0: AP 1
    assert m["map"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_epoch_batches_are_seeded_complete_and_drop_the_remainder():
    a = list(EpochBatches(7, 3, seed=1, epoch=0))
    assert len(a) == 2 and all(len(b) == 3 for b in a)
    assert len({i for b in a for i, _ in b}) == 6
    assert a == list(EpochBatches(7, 3, seed=1, epoch=0))
    assert a != list(EpochBatches(7, 3, seed=1, epoch=1))
    assert list(EpochBatches(7, 3, seed=1, epoch=0, start_batch=1)) == a[1:]
    assert len(EpochBatches(2, 16, seed=0, epoch=0)) == 1  # fewer images than a batch: one smaller batch


def test_resumed_training_matches_an_uninterrupted_run(tmp_path):
    spec, manifest = make_dataset(tmp_path / "data", n=6)
    cfg = small_config(spec)
    data = load_training_set(cfg, manifest)  # 6 images, batch 2 -> 3 steps per epoch, 6 in all
    full, full_metrics = train(cfg, data)

    resume = tmp_path / "resume"
    cfg_r = replace(cfg, resume_dir=str(resume))
    _, stopped = train(cfg_r, data, stop_after_step=4)  # a "crash" in the middle of epoch 2
    assert stopped["step"] == 4 and (resume / CHECKPOINT_FILE).is_file()
    resumed, metrics = train(cfg_r, data)
    assert metrics["step"] == full_metrics["step"] == 6
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    assert metrics["loss"] == pytest.approx(full_metrics["loss"], rel=1e-5)


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    spec, manifest = make_dataset(tmp_path / "data", n=4)
    cfg = small_config(spec, resume_dir=str(tmp_path / "resume"))
    data = load_training_set(cfg, manifest)
    train(cfg, data, stop_after_step=1)
    with pytest.raises(ValueError, match="lr"):
        train(replace(cfg, lr=0.02), data)


def test_run_stage_writes_model_config_history_and_curve(tmp_path):
    spec, manifest = make_dataset(tmp_path / "data", n=4)
    out = tmp_path / "classifier"
    resume = tmp_path / "resume"
    cfg = small_config(spec, epochs=2, resume_dir=str(resume))
    outputs = training_outputs(out)
    metrics = run_stage(cfg, {"manifest": str(manifest)}, outputs)
    assert metrics["step"] == 4
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [int(float(r["step"])) for r in rows] == [1, 2, 3, 4]
    assert {"loss", "lr", "accuracy", "map", "epoch"} <= set(rows[0])
    assert (out / "curve.png").stat().st_size > 1000
    state, config = load_model(out, {"classes": list(CLASSES), "backbone": "resnet18"})
    model = build_from_config(config)
    model.load_state_dict(state, strict=True)
    environment = config.pop("environment")  # beside the settings: versions, CPU kernels, threads, device
    assert config == json.loads(json.dumps(model_config(cfg)))
    assert environment["device"] == "cpu" and environment["torch"]
    assert not (resume / CHECKPOINT_FILE).exists()  # done: a later run with other settings starts afresh


def test_config_errors_name_the_key(tmp_path):
    spec = {"root": str(tmp_path), "classes": list(CLASSES)}
    with pytest.raises(ConfigError, match="backbone"):
        from_dict(ClassifierConfig, {"dataset": spec, "backbone": "resnet7"})
    with pytest.raises(ConfigError, match="scale_range"):
        from_dict(ClassifierConfig, {"dataset": spec, "scale_range": [1.2, 0.8]})
    with pytest.raises(ConfigError, match="epoch"):
        from_dict(ClassifierConfig, {"dataset": spec, "epoch": 3})


def test_training_set_refuses_a_manifest_of_other_classes(tmp_path):
    spec, manifest = make_dataset(tmp_path / "data", n=3)
    other = replace(spec, classes=("background", "x", "y", "z"))
    with pytest.raises(ValueError, match="classes"):
        load_training_set(small_config(other), manifest)


def test_zero_init_residual_applies_to_random_init_only(tmp_path):
    model = CAMClassifier(3, "resnet18", zero_init_residual=True)
    blocks = [b for layer in (model.backbone.layer1, model.backbone.layer4) for b in layer]
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)
    assert torch.count_nonzero(model.backbone.stem[1].weight) > 0  # the stem keeps its BatchNorm
    weights = tmp_path / "imagenet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    pretrained = CAMClassifier(3, "resnet18", weights=str(weights), zero_init_residual=True)
    assert all(torch.count_nonzero(b.bn2.weight) > 0 for b in pretrained.backbone.layer1)


# --------------------------------------------------------------------------- recipes


def test_irnet_recipe_puts_weight_decay_in_the_momentum_slot_as_irnets_polyoptimizer_does():
    """IRNet's misc/torchutils.PolyOptimizer: ``super().__init__(params, lr, weight_decay)`` on torch.optim.SGD."""
    torch.manual_seed(0)
    spec = DatasetSpec(root=".", classes=CLASSES)
    for recipe, momentum in (("paper", 0.9), ("irnet", 1e-4)):
        cfg = small_config(spec, recipe=recipe, lr=0.1, weight_decay=1e-4, momentum=0.9)
        model = CAMClassifier(len(CLASSES) - 1, "resnet18", recipe=recipe)
        ours = make_optimizer(model, cfg)
        # the naive reference: IRNet's call, with its per-group lr and weight decay
        groups = [{"params": g["params"], "lr": g["lr"], "weight_decay": 1e-4} for g in model.param_groups(0.1, 1.0, 1e-4)]
        irnet = torch.optim.SGD(groups, 0.1, 1e-4)
        assert sgd_momentum(cfg) == momentum
        for g_ours, g_ref in zip(ours.param_groups, irnet.param_groups):
            assert g_ours["weight_decay"] == g_ref["weight_decay"] == 1e-4
            if recipe == "irnet":
                assert g_ours["momentum"] == g_ref["momentum"] == 1e-4
            else:
                assert g_ours["momentum"] == 0.9


def test_irnet_recipe_trains_layer3_layer4_and_the_head_only_with_fixed_batchnorm():
    """IRNet's resnet50_cam: features detached after layer2 (conv1..layer2 never change), FixedBatchNorm."""
    torch.manual_seed(0)
    cfg = small_config(DatasetSpec(root=".", classes=CLASSES), recipe="irnet", lr=0.5)
    model = CAMClassifier(len(CLASSES) - 1, "resnet18", recipe="irnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = make_optimizer(model, cfg)
    model.train()
    x, y = torch.randn(4, 3, 40, 40), torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    for _ in range(2):
        loss = F.multilabel_soft_margin_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    frozen = [k for k in before if k.startswith(("backbone.stem", "backbone.layer1", "backbone.layer2"))]
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)  # BatchNorm statistics fixed
    assert not torch.equal(before["backbone.layer3.0.conv1.weight"], after["backbone.layer3.0.conv1.weight"])
    assert not torch.equal(before["backbone.layer4.1.bn2.weight"], after["backbone.layer4.1.bn2.weight"])  # affine learns
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert all(not m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_paper_recipe_trains_every_layer_and_updates_batchnorm_statistics():
    torch.manual_seed(0)
    cfg = small_config(DatasetSpec(root=".", classes=CLASSES), recipe="paper", lr=0.5)
    model = CAMClassifier(len(CLASSES) - 1, "resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = make_optimizer(model, cfg)
    model.train()
    loss = F.multilabel_soft_margin_loss(model(torch.randn(4, 3, 40, 40)), torch.eye(3)[[0, 1, 2, 0]])
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    assert not torch.equal(before["backbone.stem.0.weight"], after["backbone.stem.0.weight"])
    assert not torch.equal(before["backbone.layer1.0.bn1.running_mean"], after["backbone.layer1.0.bn1.running_mean"])


def test_recipe_is_checked():
    with pytest.raises(ValueError, match="recipe: unknown 'caffe'; choose one of paper, irnet"):
        small_config(DatasetSpec(root=".", classes=CLASSES), recipe="caffe")
