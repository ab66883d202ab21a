"""Pseudo-label synthesis: propagation + background constant on hand-made maps, TTA maps, the
four stages on a tiny on-disk dataset (maps, labels, PNGs, evaluation)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sance_core.config import from_dict
from sance_core.data.dataset import Manifest
from sance_core.io.palette import read_label_png, save_label_png
from sance_core.io.store import ArtifactReader, ArtifactWriter
from sance_core.io.weights import save_model
from sance_core.models import build_sance_model
from sance_core.stages.pseudo_labels import (
    EvalConfig,
    ExportConfig,
    MapsConfig,
    PseudoLabelConfig,
    predict_maps,
    present_planes,
    read_seg,
    run_eval,
    run_export_pngs,
    run_infer_maps,
    run_make_pseudo_labels,
    synthesize_label,
)
from sance_core.stages.sance import SanceConfig, model_config

CLASSES = ["background", "a", "b"]


def test_contour_stops_propagation_and_background_takes_the_rest():
    # class 1 fires in a small spot of the left block; a closed contour column separates the halves
    h4, w4 = 8, 12
    contour = np.zeros((h4, w4), np.float32)
    contour[:, 6] = 1.0
    scores = np.zeros((1, h4, w4), np.float32)
    scores[0, 3:5, 1:3] = 1.0
    label = synthesize_label(scores, [1], contour, (32, 48), radius=5, beta=10, exp_times=4, tau_b=0.25)
    assert label.shape == (32, 48) and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1}
    assert (label[:, 28:] == 0).all()  # nothing crosses the contour
    assert label[:, :20].mean() > 0.5  # the spot spread over its block


def test_keys_map_channels_to_class_ids_and_global_max_keeps_weak_classes_weak():
    h4, w4 = 4, 8
    contour = np.zeros((h4, w4), np.float32)
    contour[:, 4] = 1.0
    scores = np.zeros((2, h4, w4), np.float32)
    scores[0, :, :4] = 1.0  # strong class on the left
    scores[1, :, 5:] = 0.1  # weak class on the right: 0.1 of the global max < tau_b
    label = synthesize_label(scores, [2, 5], contour, (16, 32), exp_times=0, tau_b=0.25)
    assert (label[:, :14] == 2).all()
    assert (label[:, 22:] == 0).all()
    label = synthesize_label(scores, [2, 5], contour, (16, 32), exp_times=0, tau_b=0.05)
    assert (label[:, 22:] == 5).all()


def test_seg_probabilities_are_compared_with_tau_b_unless_normalised():
    scores = np.full((1, 4, 4), 0.2, np.float32)  # a weak but uniform class
    contour = np.zeros((4, 4), np.float32)
    assert (synthesize_label(scores, [3], contour, (16, 16), exp_times=0, normalize=False) == 0).all()
    assert (synthesize_label(scores, [3], contour, (16, 16), exp_times=0, normalize=True) == 3).all()


def test_own_background_plane_replaces_tau_b():
    # a weak class: above tau_b after max-normalisation, below the map's own background plane
    scores = np.full((1, 4, 6), 0.3, np.float32)
    scores[0, :, :2] = 0.9
    background = 1.0 - scores[0]
    contour = np.zeros((4, 6), np.float32)
    assert (synthesize_label(scores, [4], contour, (16, 24), exp_times=0) == 4).all()  # Eq. (7)
    own = synthesize_label(scores, [4], contour, (16, 24), exp_times=0, background=background)
    naive = np.zeros((16, 24), np.uint8)
    for y in range(16):  # x4 upsampling of a map constant per 4x4 cell column block, arg-max per pixel
        for x in range(24):
            naive[y, x] = 4 if scores[0, y // 4, x // 4] > background[y // 4, x // 4] else 0
    assert np.array_equal(own[:, :6], naive[:, :6]) and np.array_equal(own[:, 10:], naive[:, 10:])
    assert (own[:, :6] == 4).all() and (own[:, 10:] == 0).all()
    with pytest.raises(ValueError, match="background plane"):
        synthesize_label(scores, [4], contour, (16, 24), background=np.zeros((4, 5), np.float32))


def test_own_background_plane_is_propagated_with_the_classes():
    # background strong on the right half, class 2 strong on the left; a closed contour column between:
    # the propagation keeps each side its own, and the keys map channel k to its class id
    h4, w4 = 6, 10
    contour = np.zeros((h4, w4), np.float32)
    contour[:, 5] = 1.0
    bg = np.zeros((h4, w4), np.float32)
    bg[:, 6:] = 0.8
    scores = np.zeros((2, h4, w4), np.float32)
    scores[0, 2:4, 1:3] = 0.9  # class 2: a spot on the left only
    scores[1, :, 6:] = 0.2  # class 7: weak everywhere on the right
    label = synthesize_label(scores, [2, 7], contour, (24, 40), radius=3, exp_times=4, background=bg)
    assert (label[:, 24:] == 0).all()  # the right's own background wins over class 7
    assert (label[:, :16] == 2).mean() > 0.9  # the spot spread over its side


def test_no_present_class_gives_background_and_bad_shapes_fail():
    assert (synthesize_label(np.zeros((0, 3, 3)), [], np.zeros((3, 3)), (10, 12)) == 0).all()
    with pytest.raises(ValueError, match="disagree"):
        synthesize_label(np.zeros((1, 3, 3)), [1], np.zeros((3, 4)), (10, 12))
    with pytest.raises(ValueError, match="do not cover"):
        synthesize_label(np.zeros((1, 3, 3)), [1], np.zeros((3, 3)), (20, 12))


def test_tta_maps_are_on_the_stride4_grid_and_flip_equivariant():
    torch.manual_seed(0)
    model = build_sance_model(3, "resnet18", 16, aspp_rates=(1,)).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (30, 41, 3), dtype=np.uint8)
    contour, seg = predict_maps(model, image, scales=(1.0, 0.5), flip=True)
    assert contour.shape == (math.ceil(30 / 4), math.ceil(41 / 4)) and seg.shape == (3, *contour.shape)
    assert np.allclose(seg.sum(axis=0), 1.0, atol=1e-4) and 0 <= contour.min() and contour.max() <= 1
    contour_f, seg_f = predict_maps(model, image[:, ::-1].copy(), scales=(1.0, 0.5), flip=True)
    assert np.allclose(contour_f, contour[:, ::-1], atol=1e-4)
    assert np.allclose(seg_f, seg[:, :, ::-1], atol=1e-4)


# ------------------------------------------------------------------ the stages on disk


def _dataset(root: Path) -> tuple[dict, list[str], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    ids, masks = ["im1", "im2"], {}
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    entries = []
    for i, image_id in enumerate(ids):
        h, w = 24 + 4 * i, 30
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        mask = np.zeros((h, w), np.uint8)
        mask[4:12, 5:15] = i + 1
        mask[0, 0] = 255
        save_label_png(mask, root / "SegmentationClass" / f"{image_id}.png")
        masks[image_id] = mask
        entries.append({"id": image_id, "height": h, "width": w, "labels": [i + 1]})
    Manifest("t", str(root), CLASSES, {"train": entries}).save(root / "manifest.json")
    (root / "shard.txt").write_text("".join(f"{i}\n" for i in ids))
    return {"root": str(root), "classes": CLASSES}, ids, masks


@pytest.fixture
def trained(tmp_path):
    ds, ids, masks = _dataset(tmp_path / "data")
    paths = {}
    for mode, seg in (("sance", True), ("irnet", False)):
        cfg = from_dict(SanceConfig, {"dataset": ds, "mode": mode, "backbone": "resnet18", "output_stride": 16,
                                      "aspp_rates": [1, 2]})
        torch.manual_seed(0)
        model = build_sance_model(3, "resnet18", 16, seg_branch=seg, aspp_rates=(1, 2))
        save_model(model, model_config(cfg), tmp_path / mode)
        paths[mode] = tmp_path / mode / "model.pt"
    return tmp_path, ds, ids, masks, paths


def test_stages_write_maps_labels_pngs_and_evaluation(trained):
    tmp, ds, ids, masks, models = trained
    data = Path(ds["root"])
    common = {"shard": str(data / "shard.txt"), "manifest": str(data / "manifest.json")}
    maps = tmp / "maps.h5"
    run_infer_maps(from_dict(MapsConfig, {"dataset": ds, "mode": "sance", "scales": [1.0]}),
                   {"model": str(models["sance"]), **common}, {"maps": str(maps)})
    with ArtifactReader(maps, expect_stage="maps") as r:
        assert r.ids() == ids
        # background + the image's one class (label 2), named in class_keys
        assert r.read("im2", "seg").shape == (2, 7, 8) and r.read("im2", "contour").shape == (7, 8)
        assert r.image_attrs("im2")["size"] == [28, 30]
        assert list(r.image_attrs("im2")["class_keys"]) == [0, 2]
        assert list(r.image_attrs("im1")["class_keys"]) == [0, 1]
        assert np.array_equal(read_seg(r, "im2", [2]), r.read("im2", "seg")[1:])
    labels = tmp / "labels.h5"
    run_make_pseudo_labels(from_dict(PseudoLabelConfig, {"dataset": ds, "mode": "sance", "tau_b": 0.3}),
                           {"maps": str(maps), **common}, {"labels": str(labels)})
    with ArtifactReader(labels, expect_stage="pseudo_labels") as r:
        assert r.attrs["tau_b"] == 0.3
        for i, image_id in enumerate(ids):
            label = r.read(image_id, "label")
            assert label.shape == masks[image_id].shape
            assert set(np.unique(label)) <= {0, i + 1}  # only the image's own class
    png = tmp / "png"
    assert run_export_pngs(ExportConfig(), {"labels": [str(labels)]}, {"png": str(png)}) == 2
    with ArtifactReader(labels) as r:
        assert np.array_equal(read_label_png(png / "im1.png"), r.read("im1", "label"))
    assert Image.open(png / "im1.png").mode == "P"
    out = {"json": str(tmp / "eval.json"), "tsv": str(tmp / "eval.tsv")}
    result = run_eval(from_dict(EvalConfig, {"dataset": ds, "tau_b": 0.3}), {"labels": [str(labels)], **common}, out)
    saved = json.loads(Path(out["json"]).read_text())
    assert saved["n_images"] == 2 and saved["tau_b"] == 0.3 and 0 <= saved["miou"] <= 1
    assert set(saved["iou"]) == set(CLASSES) and saved["miou"] == pytest.approx(result["miou"])
    with pytest.raises(Exception, match="tau_b"):
        run_eval(from_dict(EvalConfig, {"dataset": ds, "tau_b": 0.25}), {"labels": [str(labels)], **common}, out)
    own = tmp / "labels_own.h5"
    run_make_pseudo_labels(from_dict(PseudoLabelConfig, {"dataset": ds, "mode": "sance", "seg_background": "map"}),
                           {"maps": str(maps), **common}, {"labels": str(own)})
    with ArtifactReader(own, expect_stage="pseudo_labels") as r, ArtifactReader(maps) as m:
        assert r.attrs["seg_background"] == "map"
        for image_id in ids:
            keys = [int(k) for k in m.image_attrs(image_id)["class_keys"][1:]]
            want = synthesize_label(read_seg(m, image_id, keys), keys, m.read(image_id, "contour"),
                                    masks[image_id].shape, background=read_seg(m, image_id, [0])[0])
            assert np.array_equal(r.read(image_id, "label"), want)
    with pytest.raises(ValueError, match="seg_background"):
        from_dict(PseudoLabelConfig, {"dataset": ds, "seg_background": "crf"})


def test_present_planes_and_reading_old_all_class_maps(tmp_path):
    rng = np.random.default_rng(1)
    full = rng.random((5, 3, 4)).astype(np.float32)
    planes, keys = present_planes(full, [3, 1, 3])
    assert keys.tolist() == [0, 1, 3] and np.array_equal(planes, full[[0, 1, 3]])
    with pytest.raises(ValueError, match="class key 7"):
        present_planes(full, [7])
    path = tmp_path / "maps.h5"
    with ArtifactWriter(path, stage="maps") as w:
        w.add("new", {"seg": planes}, {"class_keys": keys})
        w.add("old", {"seg": full}, {})  # written before maps kept only the present classes
    with ArtifactReader(path) as r:
        for image_id in ("new", "old"):
            assert np.array_equal(read_seg(r, image_id, [3, 1]), full[[3, 1]].astype(np.float16).astype(np.float32))
        with pytest.raises(Exception, match=r"new stores seg planes of classes \[0, 1, 3\], not \[2\]"):
            read_seg(r, "new", [2])


def test_maps_on_two_devices_equal_one_device(trained, monkeypatch):
    """Two worker processes (both on the CPU here) write the same artifact as one device."""
    import sance_core.stages.pseudo_labels as pl

    tmp, ds, ids, masks, models = trained
    data = Path(ds["root"])
    common = {"model": str(models["sance"]), "shard": str(data / "shard.txt"), "manifest": str(data / "manifest.json")}
    cfg = from_dict(MapsConfig, {"dataset": ds, "mode": "sance", "scales": [1.0, 0.5], "device": "cpu"})
    run_infer_maps(cfg, common, {"maps": str(tmp / "one.h5")})
    monkeypatch.setattr(pl, "visible_devices", lambda name: [torch.device("cpu")] * 2)
    run_infer_maps(cfg, common, {"maps": str(tmp / "two.h5")})
    with ArtifactReader(tmp / "one.h5") as one, ArtifactReader(tmp / "two.h5") as two:
        assert one.ids() == two.ids() == ids
        for image_id in ids:
            assert one.image_attrs(image_id) == two.image_attrs(image_id)
            for name in ("contour", "seg"):
                assert np.array_equal(one.read(image_id, name), two.read(image_id, name))


def test_irnet_labels_come_from_the_cams(trained):
    tmp, ds, ids, masks, models = trained
    data = Path(ds["root"])
    common = {"shard": str(data / "shard.txt"), "manifest": str(data / "manifest.json")}
    maps = tmp / "maps_irnet.h5"
    run_infer_maps(from_dict(MapsConfig, {"dataset": ds, "mode": "irnet", "scales": [1.0], "flip": False}),
                   {"model": str(models["irnet"]), **common}, {"maps": str(maps)})
    with ArtifactReader(maps) as r:
        assert r.keys("im1") == ["contour"]
    # CAMs equal to the masks' objects: the pseudo labels recover the objects
    cam = tmp / "cam.h5"
    with ArtifactWriter(cam, stage="cam") as w:
        for i, image_id in enumerate(ids):
            m = masks[image_id] == i + 1
            h4, w4 = math.ceil(m.shape[0] / 4), math.ceil(m.shape[1] / 4)
            small = np.zeros((h4 * 4, w4 * 4), np.float32)
            small[: m.shape[0], : m.shape[1]] = m
            w.add(image_id, {"cam_stride4": small.reshape(h4, 4, w4, 4).mean(axis=(1, 3))[None]},
                  {"class_keys": [i + 1], "size": list(m.shape), "stride": 4})
    labels = tmp / "labels_irnet.h5"
    cfg = from_dict(PseudoLabelConfig, {"dataset": ds, "mode": "irnet", "map": "cam", "exp_times": 0})
    with pytest.raises(ValueError, match="CAM shard"):
        run_make_pseudo_labels(cfg, {"maps": str(maps), **common}, {"labels": str(labels)})
    run_make_pseudo_labels(cfg, {"maps": str(maps), "cam": str(cam), **common}, {"labels": str(labels)})
    out = {"json": str(tmp / "e.json"), "tsv": str(tmp / "e.tsv")}
    result = run_eval(from_dict(EvalConfig, {"dataset": ds, "mode": "irnet", "map": "cam"}),
                      {"labels": [str(labels)], **common}, out)
    assert result["miou"] > 0.6


def test_seg_map_is_required_for_map_seg(trained):
    tmp, ds, ids, masks, models = trained
    data = Path(ds["root"])
    common = {"shard": str(data / "shard.txt"), "manifest": str(data / "manifest.json")}
    maps = tmp / "m.h5"
    run_infer_maps(from_dict(MapsConfig, {"dataset": ds, "mode": "irnet", "scales": [1.0], "flip": False}),
                   {"model": str(models["irnet"]), **common}, {"maps": str(maps)})
    with pytest.raises(Exception, match="no 'seg' map"):
        run_make_pseudo_labels(from_dict(PseudoLabelConfig, {"dataset": ds, "mode": "irnet"}),
                               {"maps": str(maps), **common}, {"labels": str(tmp / "l.h5")})
    assert not (tmp / "l.h5").exists()


def test_a_model_of_another_mode_is_refused(trained):
    tmp, ds, ids, masks, models = trained
    data = Path(ds["root"])
    with pytest.raises(ValueError, match="mode"):
        run_infer_maps(from_dict(MapsConfig, {"dataset": ds, "mode": "sance"}),
                       {"model": str(models["irnet"]), "shard": str(data / "shard.txt"),
                        "manifest": str(data / "manifest.json")}, {"maps": str(tmp / "x.h5")})


# ------------------------------------------------------------------ through Snakemake


def _jobs(stdout: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    lines = stdout.split("Job stats:")[1].splitlines()[3:]
    out = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        out[parts[0]] = int(parts[1])
    return out


def test_dry_run_schedules_every_mode_per_shard(workdir, tiny_config):
    from conftest import run_snakemake

    targets = [f"results/tiny/{m}/eval/pseudo_labels.json" for m in ("irnet", "sance_naive", "sance")]
    proc = run_snakemake(workdir, "-n", *targets, "--configfile", str(tiny_config))
    jobs = _jobs(proc.stdout)
    assert jobs["train_sance"] == 3 and jobs["infer_maps"] == 6 and jobs["make_pseudo_labels"] == 6
    assert jobs["evaluate_pseudo_labels"] == 3
    assert "results/tiny/cam/1-of-2.h5" in proc.stdout  # the irnet labels propagate the CAMs


@pytest.mark.slow
def test_tiny_run_of_the_three_modes_and_param_isolation(tiny_all_run, tiny_config, tmp_path):
    """All three modes end to end on the tiny config (the session's whole tiny run); then a
    refine-only change reruns 'sance' alone."""
    import yaml

    from conftest import run_snakemake

    workdir = tiny_all_run
    modes = ("irnet", "sance_naive", "sance")
    targets = [t for m in modes for t in (f"results/tiny/{m}/eval/pseudo_labels.json",
                                          f"results/tiny/{m}/pseudo_labels/png")]
    for mode in modes:
        result = json.loads((workdir / f"results/tiny/{mode}/eval/pseudo_labels.json").read_text())
        assert result["n_images"] == 12 and result["tau_b"] == 0.25 and result["mode"] == mode
        assert result["map"] == ("cam" if mode == "irnet" else "seg")
        pngs = sorted((workdir / f"results/tiny/{mode}/pseudo_labels/png").glob("*.png"))
        assert len(pngs) == 12 and Image.open(pngs[0]).mode == "P"
        model_dir = workdir / f"results/tiny/{mode}/sance_model"
        model_config = json.loads((model_dir / "config.json").read_text())
        assert model_config["seg_branch"] == (mode != "irnet")
        assert model_config["output_stride"] == (16 if mode == "irnet" else 8)  # Table 1: the baseline at 16
        history = (model_dir / "history.csv").read_text().splitlines()
        assert "pseudo_miou" in history[0].split(",")  # Fig. 5: the end-of-epoch evaluation (tiny: 1 epoch)
        assert (model_dir / "curve.png").stat().st_size > 0
        assert (workdir / f"benchmarks/tiny/train_sance_{mode}.tsv").exists()
        assert (workdir / f"logs/tiny/make_pseudo_labels_{mode}_1-of-2.log").exists()
    assert not list((workdir / "results/tiny/.resume").rglob("checkpoint.pt"))  # cleared after success
    override = tmp_path / "refine.yaml"
    override.write_text(yaml.safe_dump({"sance": {"online": {"crf": {"iterations": 3}}}}))
    proc = run_snakemake(workdir, "-n", *targets, "--configfile", str(tiny_config), "--configfile", str(override))
    jobs = _jobs(proc.stdout)
    assert jobs.get("train_sance") == 1 and jobs.get("infer_maps") == 2
    assert "results/tiny/sance/sance_model/model.pt" in proc.stdout
    assert "results/tiny/irnet/sance_model" not in proc.stdout.split("Job stats:")[1]


def test_export_and_evaluation_jobs_run_without_importing_torch(trained):
    """export_pseudo_label_pngs and evaluate_pseudo_labels read HDF5 and write PNGs/JSON only: a job
    of theirs must not pay for importing torch (a few CPU seconds per job). Run in a fresh process."""
    import subprocess
    import sys

    tmp, ds, ids, masks, models = trained
    data = Path(ds["root"])
    common = {"shard": str(data / "shard.txt"), "manifest": str(data / "manifest.json")}
    maps, labels = tmp / "maps.h5", tmp / "labels.h5"
    run_infer_maps(from_dict(MapsConfig, {"dataset": ds, "mode": "sance", "scales": [1.0]}),
                   {"model": str(models["sance"]), **common}, {"maps": str(maps)})
    run_make_pseudo_labels(from_dict(PseudoLabelConfig, {"dataset": ds, "mode": "sance"}),
                           {"maps": str(maps), **common}, {"labels": str(labels)})
    jobs = [
        ("export_pseudo_label_pngs", {}, {"labels": [str(labels)]}, {"png": str(tmp / "png")}),
        ("evaluate_pseudo_labels", {"dataset": ds}, {"labels": [str(labels)], **common},
         {"json": str(tmp / "eval.json"), "tsv": str(tmp / "eval.tsv")}),
    ]
    code = (
        "import json, sys\n"
        "from sance_core.stages import run_stage\n"
        f"for name, params, inputs, outputs in json.loads({json.dumps(json.dumps(jobs))}):\n"
        "    run_stage(name, params, inputs, outputs)\n"
        "print(json.dumps(sorted(m for m in ('torch', 'torchvision') if m in sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert sorted(p.name for p in (tmp / "png").iterdir()) == ["im1.png", "im2.png"]
    assert json.loads((tmp / "eval.json").read_text())["n_images"] == 2
