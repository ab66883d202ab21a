"""SANCE training: online labels and refine on hand-made maps, where the online losses act
(pasted rectangle only), the data pipeline, one optimisation step, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sance_core.config import ConfigError, from_dict
from sance_core.io.store import ArtifactWriter
from sance_core.stages.sance import (
    SanceConfig,
    SanceData,
    compute_losses,
    crop_regions,
    online_targets,
    train,
    training_step,
)

DS = {"root": "unused", "classes": ["background", "a", "b"]}


def _cfg(**kw) -> SanceConfig:
    base = {"dataset": DS, "backbone": "resnet18", "weights": None, "frozen_bn": False, "scale_range": [0.9, 1.1],
            "output_stride": 16, "aspp_rates": [1, 2], "crop_size": 32, "batch_size": 2, "device": "cpu"}
    return from_dict(SanceConfig, base | kw)


def _two_regions(h=8, w=12):
    """Seg map: class 1 on the left (cols < 6), background on the right; a contour column at 6."""
    probs = torch.zeros(1, 3, h, w)
    probs[0, 1, :, :6] = 0.9
    probs[0, 0, :, :6] = 0.1
    probs[0, 0, :, 6:] = 1.0
    contour = torch.zeros(1, h, w)
    contour[0, :, 6] = 1.0
    return probs, contour


def test_online_label_follows_the_seg_map_inside_contours():
    probs, contour = _two_regions()
    t = online_targets(_cfg(mode="sance_naive"), probs, contour, torch.tensor([[True, False]]))
    yb = t["yb"][0]
    assert (yb[:, :6] == 1).all() and (yb[:, 7:] == 0).all()
    assert torch.equal(t["yr"], t["yb"]) and torch.equal(t["contour"], t["yb"])


def test_absent_classes_never_appear_in_online_labels():
    probs, contour = _two_regions()
    t = online_targets(_cfg(mode="sance_naive"), probs, contour, torch.tensor([[False, True]]))
    assert (t["yb"] == 0).all()  # class 1 is not in the image tags


def test_refine_takes_background_from_the_crf_label_for_the_contour_branch_only():
    # the seg map says class 1 everywhere but its background is strong on a dark right half:
    # Y^b (propagation + tau_b) keeps class 1 there, the CRF label of M turns it to background
    h, w = 8, 12
    probs = torch.zeros(1, 3, h, w)
    probs[0, 1] = 0.9
    probs[0, 0] = 0.1
    probs[0, 1, :, 6:] = 0.3
    probs[0, 0, :, 6:] = 0.7
    contour = torch.zeros(1, h, w)
    small = torch.zeros(1, h, w, 3, dtype=torch.uint8)
    small[0, :, :6] = 220
    tags = torch.tensor([[True, False]])
    cfg = _cfg(mode="sance")
    t = online_targets(cfg, probs, contour, tags, small=small)
    assert (t["yb"] == 1).all()  # 0.3 / 0.9 > tau_b after propagation and max-normalisation
    assert (t["yr"][0, :, 8:] == 0).all() and (t["yr"][0, :, :5] == 1).all()
    assert torch.equal(t["contour"], t["yr"]) and torch.equal(t["seg"], t["yb"])  # Table 4's best
    both = online_targets(_cfg(mode="sance", online={"refine_seg": True}), probs, contour, tags, small=small)
    assert torch.equal(both["seg"], both["yr"])
    naive = online_targets(_cfg(mode="sance_naive"), probs, contour, tags, small=small)
    assert torch.equal(naive["contour"], naive["yb"])


def test_normalize_compares_tau_b_with_max_normalised_scores():
    probs = torch.zeros(1, 3, 6, 6)
    probs[0, 1] = 0.2  # an unconfident map: below tau_b as a probability, at the max after normalising
    probs[0, 0] = 0.8
    contour = torch.zeros(1, 6, 6)
    tags = torch.tensor([[True, False]])
    raw = _cfg(mode="sance_naive", online={"normalize": False})
    assert (online_targets(raw, probs, contour, tags)["yb"] == 0).all()
    assert (online_targets(_cfg(mode="sance_naive"), probs, contour, tags)["yb"] == 1).all()  # the default


def test_saliency_refine_and_valid_mask():
    probs, contour = _two_regions()
    sal = torch.ones(1, 8, 12, dtype=torch.long)
    sal[0, :, :3] = 0
    valid = torch.ones(1, 8, 12, dtype=torch.bool)
    valid[0, 0] = False
    cfg = _cfg(mode="sance", online={"refine": "saliency", "saliency_dir": "sal"})
    t = online_targets(cfg, probs, contour, torch.tensor([[True, False]]), saliency=sal, valid=valid)
    assert (t["yr"][0, 1:, :3] == 0).all() and (t["yr"][0, 1:, 3:6] == 1).all()
    assert (t["yr"][0, 0] == 255).all() and (t["yb"][0, 0] == 255).all()


def test_seed_background_keeps_online_background_only_where_the_seeds_say_background():
    probs, contour = _two_regions()  # Y^b: class 1 on cols < 6, background from col 7
    seeds = torch.full((1, 8, 12), 255, dtype=torch.long)
    seeds[0, :, 10:] = 0  # seeded background on the far right only
    seeds[0, 0, :3] = 1
    tags = torch.tensor([[True, False]])
    cfg = _cfg(mode="sance_naive", online={"seed_background": ["contour"]})
    t = online_targets(cfg, probs, contour, tags, seeds=seeds)
    yb = t["yb"][0]
    expect = torch.where((yb == 0) & (seeds[0] != 0), torch.full_like(yb, 255), yb)
    assert torch.equal(t["contour"][0], expect)
    assert (t["contour"][0, :, 10:] == 0).all() and (t["contour"][0, :, 7:10] == 255).all()
    assert (t["contour"][0, :, :6] == 1).all()  # foreground of Y^b stays, over unsure seeds too
    assert torch.equal(t["seg"], t["yb"])  # the branch not listed keeps Eq. (7)
    both = online_targets(_cfg(mode="sance_naive", online={"seed_background": ["contour", "seg"]}),
                          probs, contour, tags, seeds=seeds)
    assert torch.equal(both["seg"], both["contour"])
    with pytest.raises(ValueError, match="seed_background"):
        online_targets(cfg, probs, contour, tags)  # the seeds of the region are needed


def test_crop_regions_slices_per_sample_and_keeps_gradients():
    x = torch.arange(2 * 6 * 6, dtype=torch.float32).reshape(2, 6, 6).requires_grad_()
    rects = torch.tensor([[0, 1, 2, 3], [4, 3, 2, 3]])
    out = crop_regions(x, rects)
    assert torch.equal(out[0], x[0, 0:2, 1:4]) and torch.equal(out[1], x[1, 4:6, 3:6])
    out.sum().backward()
    assert x.grad.sum() == 12
    with pytest.raises(ValueError, match="same size"):
        crop_regions(x, torch.tensor([[0, 0, 2, 2], [0, 0, 3, 2]]))


def _batch(b=2, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    s4 = s // 4
    seeds = torch.full((b, s4, s4), 255, dtype=torch.long)
    seeds[:, 1:3, 1:3] = 1
    seeds[:, 5:7, 5:7] = 0
    return {
        "image": torch.randn(b, 3, s, s, generator=g),
        "seed": seeds,
        "valid": torch.ones(b, s4, s4, dtype=torch.bool),
        "rect": torch.tensor([[0, 0, 4, 4], [4, 4, 4, 4]])[:b],
        "tags": torch.tensor([[True, False]] * b),
        "small": torch.randint(0, 255, (b, s4, s4, 3), dtype=torch.uint8, generator=g),
    }


def test_online_losses_act_only_inside_the_pasted_rectangle():
    batch = _batch()
    cfg = _cfg(mode="sance_naive", loss_weights={"cam_contour": 0, "cam_seg": 0})
    out = {"contour": torch.randn(2, 1, 8, 8, requires_grad=True), "seg": torch.randn(2, 3, 8, 8, requires_grad=True)}
    loss, terms, logs = compute_losses(cfg, out, batch, online_on=True)
    assert set(terms) == {"cam_contour", "cam_seg", "online_contour", "online_seg"}
    assert 0 <= logs["online_fg"] <= 1
    loss.backward()
    inside = torch.zeros(2, 8, 8, dtype=torch.bool)
    inside[0, 0:4, 0:4] = True
    inside[1, 4:8, 4:8] = True
    for g in (out["contour"].grad[:, 0], out["seg"].grad.abs().sum(1)):
        assert g[inside].abs().sum() > 0 and (g[~inside] == 0).all()
    # before the warm-up ends, or for irnet, there are no online terms
    _, terms, _ = compute_losses(cfg, out, batch, online_on=False)
    assert set(terms) == {"cam_contour", "cam_seg"}
    _, terms, _ = compute_losses(_cfg(mode="irnet"), {"contour": out["contour"]}, batch, online_on=True)
    assert set(terms) == {"cam_contour"}


def test_seed_background_takes_the_seeds_of_the_pasted_rectangle():
    from sance_core.ops.losses import contour_loss
    batch = _batch()
    online_seed = torch.full((2, 8, 8), 255, dtype=torch.long)
    online_seed[0, 0:2, 0:4] = 0
    online_seed[1, 4:8, 4:6] = 0
    batch["online_seed"] = online_seed
    g = torch.Generator().manual_seed(1)
    out = {"contour": torch.randn(2, 1, 8, 8, generator=g), "seg": torch.randn(2, 3, 8, 8, generator=g) * 3}
    cfg = _cfg(mode="sance_naive", online={"seed_background": ["contour"]})
    _, terms, _ = compute_losses(cfg, out, batch, online_on=True)
    rects = batch["rect"]
    c_r = crop_regions(torch.sigmoid(out["contour"][:, 0]), rects)
    probs = torch.softmax(crop_regions(out["seg"], rects), dim=1)
    want = online_targets(cfg, probs, c_r, batch["tags"], seeds=crop_regions(online_seed, rects))
    assert (want["contour"] == 255).any() and not torch.equal(want["contour"], want["yb"])
    assert torch.allclose(terms["online_contour"], contour_loss(c_r, want["contour"], cfg.contour_radius))
    _, paper, _ = compute_losses(_cfg(mode="sance_naive"), out, batch, online_on=True)
    assert not torch.allclose(paper["online_contour"], terms["online_contour"])
    assert torch.allclose(paper["online_seg"], terms["online_seg"])  # seg not listed: Eq. (7) as before


@pytest.mark.parametrize("mode", ["irnet", "sance"])
def test_one_training_step_decreases_the_loss_on_a_fixed_batch(mode):
    torch.manual_seed(0)
    cfg = _cfg(mode=mode, lr=1e-4)  # small enough for a descent step from a random init
    from sance_core.stages.sance import build_model

    model = build_model(cfg)
    opt = torch.optim.SGD(model.param_groups(cfg.lr, cfg.new_lr_mult, 0.0), lr=cfg.lr, momentum=0.0)
    batch = _batch()
    model.train()
    loss0, _, _ = training_step(cfg, model, batch, online_on=True)
    opt.zero_grad()
    loss0.backward()
    opt.step()
    loss1, _, _ = training_step(cfg, model, batch, online_on=True)
    assert float(loss1.detach()) < float(loss0.detach())


# ------------------------------------------------------------------ data and a short run


def _tiny_set(tmp: Path, n=4):
    root = tmp / "data"
    (root / "JPEGImages").mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = [f"im{i}" for i in range(n)]
    seeds = tmp / "seeds.h5"
    with ArtifactWriter(seeds, stage="seeds") as w:
        for i, image_id in enumerate(ids):
            h, w_ = 36 + 4 * i, 44
            Image.fromarray(rng.integers(0, 255, (h, w_, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
            seed = np.full((h, w_), 255, np.uint8)
            seed[:10] = 0
            seed[20:30, 10:30] = 1 + i % 2
            w.add(image_id, {"seed": seed})
    tags = np.array([[i % 2 == 0, i % 2 == 1] for i in range(n)])
    return {"root": str(root), "classes": ["background", "a", "b"]}, ids, tags, seeds


def test_dataset_pastes_a_grid_aligned_rectangle_with_ignored_seeds(tmp_path):
    ds, ids, tags, seeds = _tiny_set(tmp_path)
    cfg = _cfg(dataset=ds, crop_size=32, mode="sance")
    data = SanceData(cfg, ids, tags, [str(seeds)])
    sample = data[(0, 123, 16, 12)]
    y, x, h, w = sample["rect"].tolist()
    assert (h, w) == (4, 3) and y + h <= 8 and x + w <= 8
    assert sample["image"].shape == (3, 32, 32) and sample["seed"].shape == (8, 8)
    assert (sample["seed"][y:y + h, x:x + w] == 255).all()
    assert sample["valid"][y:y + h, x:x + w].all()
    assert sample["small"].shape == (8, 8, 3) and sample["small"].dtype == torch.uint8
    plain = data[(0, 123, 0, 0)]
    assert plain["rect"].tolist() == [0, 0, 8, 8]
    again = data[(0, 123, 16, 12)]
    assert torch.equal(again["image"], sample["image"])  # the key fixes the augmentation
    assert "online_seed" not in sample
    cfg_sb = _cfg(dataset=ds, mode="sance_naive", online={"seed_background": ["contour"]})
    with_seeds = SanceData(cfg_sb, ids, tags, [str(seeds)])[(0, 123, 16, 12)]
    assert torch.equal(with_seeds["image"], sample["image"])  # same augmentation with the extra map
    inside = with_seeds["online_seed"][y:y + h, x:x + w]
    assert (inside != 255).any()  # the raw seeds pasted into the rectangle, not the ignored ones
    out = with_seeds["online_seed"].clone()
    out[y:y + h, x:x + w] = with_seeds["seed"][y:y + h, x:x + w]
    assert torch.equal(out, with_seeds["seed"])  # outside the rectangle: the crop's seeds
    plain_sb = SanceData(cfg_sb, ids, tags, [str(seeds)])[(0, 123, 0, 0)]
    assert torch.equal(plain_sb["online_seed"], plain_sb["seed"])


def test_training_resumes_to_the_same_weights(tmp_path):
    ds, ids, tags, seeds = _tiny_set(tmp_path)
    common = {"dataset": ds, "mode": "sance", "crop_size": 32, "batch_size": 2, "epochs": 1}
    data = SanceData(_cfg(**common), ids, tags, [str(seeds)])
    full, _ = train(_cfg(**common), data)
    resume = str(tmp_path / "resume")
    train(_cfg(**common, resume_dir=resume), data, stop_after_step=1)
    resumed, metrics = train(_cfg(**common, resume_dir=resume), data)
    assert metrics["step"] == 2
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k


@pytest.mark.parametrize("override, key", [
    ({"mode": "deeplab"}, "mode"),
    ({"crop_size": 30}, "crop_size"),
    ({"weights": "x.pth", "init_from_classifier": True}, "init_from_classifier"),
    ({"online": {"refine": "saliency"}}, "saliency_dir"),
    ({"online": {"warmup": 1.5}}, "warmup"),
    ({"paste": {"seeds": "drop"}}, "seeds"),
    ({"grad_clip": -1.0}, "grad_clip"),
    ({"lr_warmup": 1.0}, "lr_warmup"),
    ({"online": {"seed_background": ["edges"]}}, "seed_background"),
    ({"online": {"seed_background": ["seg", "seg"]}}, "seed_background"),
])
def test_config_errors_name_the_key(override, key):
    with pytest.raises((ConfigError, ValueError), match=key):
        _cfg(**override)


def test_end_of_epoch_hook_runs_once_per_epoch_and_leaves_training_unchanged(tmp_path):
    ds, ids, tags, seeds = _tiny_set(tmp_path)
    common = {"dataset": ds, "mode": "sance", "crop_size": 32, "batch_size": 2, "epochs": 2}
    data = SanceData(_cfg(**common), ids, tags, [str(seeds)])
    plain, _ = train(_cfg(**common), data)
    calls = []

    def hook(event):  # the engine calls it in eval mode, after the epoch's last step
        epoch = event.epoch + 1
        calls.append((epoch, event.model.training))
        return {"pseudo_miou": 0.1 * epoch}

    from sance_core.engine import History
    history = History(tmp_path / "h.csv")
    hooked, metrics = train(_cfg(**common), data, history=history, epoch_end=hook)
    assert calls == [(1, False), (2, False)]
    assert metrics["pseudo_miou"] == pytest.approx(0.2)
    marked = [(r["epoch"], r["pseudo_miou"]) for r in history.rows if "pseudo_miou" in r]
    assert marked == [(1.0, pytest.approx(0.1)), (2.0, pytest.approx(0.2))]
    for (k, a), b in zip(plain.state_dict().items(), hooked.state_dict().values()):
        assert torch.equal(a, b), k


def test_epoch_evaluator_scores_the_stage_6_pseudo_labels(tmp_path):
    from sance_core.data.dataset import DatasetSpec
    from sance_core.eval.epoch_eval import EpochEvalConfig, EpochEvaluator
    from sance_core.eval.metrics import ConfusionMatrix
    from sance_core.io.palette import save_label_png
    from sance_core.stages.pseudo_labels import predict_maps, synthesize_label

    ds, ids, tags, seeds = _tiny_set(tmp_path)
    (Path(ds["root"]) / "SegmentationClass").mkdir()
    masks = {}
    for i, image_id in enumerate(ids):
        mask = np.zeros((36 + 4 * i, 44), np.uint8)
        mask[18:32, 8:32] = 1 + i % 2
        save_label_png(mask, Path(ds["root"]) / "SegmentationClass" / f"{image_id}.png")
        masks[image_id] = mask
    cfg = _cfg(dataset=ds, mode="sance", crop_size=32, batch_size=2, epochs=1)
    model, _ = train(cfg, SanceData(cfg, ids, tags, [str(seeds)]))
    tag_lists = {i: [1 + k % 2] for k, i in enumerate(ids)}
    ecfg = EpochEvalConfig(images=3, map="seg", scale=1.0, radius=5, beta=10, exp_times=2, tau_b=0.25)
    evaluator = EpochEvaluator(ecfg, from_dict(DatasetSpec, ds), ids, tag_lists)
    got = evaluator(1, model.train())
    assert model.training
    model.eval()
    maps = {}  # the maps of the evaluated images, inferred once for both references below
    for image_id in ids[:3]:
        image = np.asarray(Image.open(Path(ds["root"]) / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
        maps[image_id] = predict_maps(model, image, (1.0,), flip=False)

    def reference_miou(own_background: bool) -> float:
        cm = ConfusionMatrix(3)
        for image_id, (contour, seg) in maps.items():
            keys = tag_lists[image_id]
            cm.update(synthesize_label(seg[keys], keys, contour, masks[image_id].shape, 5, 10, 2, 0.25, normalize=True,
                                       background=seg[0] if own_background else None), masks[image_id])
        return cm.miou()

    assert got["pseudo_miou"] == pytest.approx(reference_miou(False))
    # with the map's own background plane (pseudo_labels.seg_background: map), as stage 6 has it
    own_cfg = EpochEvalConfig(images=3, map="seg", scale=1.0, radius=5, beta=10, exp_times=2, tau_b=0.25,
                              seg_background="map")
    own = EpochEvaluator(own_cfg, from_dict(DatasetSpec, ds), ids, tag_lists)(1, model)
    assert own["pseudo_miou"] == pytest.approx(reference_miou(True))
    with pytest.raises(ValueError, match="epoch_eval.map"):
        EpochEvalConfig(map="crf")
    with pytest.raises(ValueError, match="epoch_eval.seg_background"):
        EpochEvalConfig(seg_background="crf")
