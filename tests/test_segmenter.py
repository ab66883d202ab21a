"""DeepLab training, resume, multi-scale inference, the predict stage and its evaluation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import torch.nn.functional as F
from PIL import Image

from sance_core.config import from_dict
from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.io.images import DataError
from sance_core.io.palette import read_label_png, save_label_png
from sance_core.stages.evaluate import SegmentationEvalConfig, run_segmentation_evaluation
from sance_core.ops.inference import multiscale_predict
from sance_core.models.deeplab import DeepLabV2
from sance_core.stages.segmenter import (
    PredictConfig,
    SegmenterConfig,
    load_segmenter,
    load_training_set,
    run_predict,
    run_train,
    segmentation_loss,
    train,
)
from sance_core.io.store import ArtifactReader, ArtifactWriter

CLASSES = ("background", "square", "disc")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """Six small VOC-layout images (a square and/or a disc), masks with a void band, pseudo labels."""
    root = tmp_path_factory.mktemp("seg") / "data"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation", "pseudo"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    splits: dict[str, list] = {"train": [], "val": []}
    for k in range(6):
        h, w = 40 + 4 * k, 48 - 2 * k
        image = rng.integers(0, 60, size=(h, w, 3)).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        yy, xx = np.mgrid[:h, :w]
        mask[5:20, 5:20] = 1
        image[5:20, 5:20] = (220, 40, 40)
        if k % 2:
            disc = (yy - h + 14) ** 2 + (xx - w + 14) ** 2 < 81
            mask[disc] = 2
            image[disc] = (40, 200, 60)
        mask[20, 5:20] = 255
        image_id = f"img{k}"
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        save_label_png(mask, root / "SegmentationClass" / f"{image_id}.png")
        pseudo = mask.copy()
        pseudo[pseudo == 255] = 0
        save_label_png(pseudo, root / "pseudo" / f"{image_id}.png")
        split = "train" if k < 4 else "val"
        splits[split].append({"id": image_id, "labels": sorted(int(c) for c in np.unique(mask) if 0 < c < 255),
                              "size": [h, w]})
    manifest = root / "manifest.json"
    Manifest("t", str(root), list(CLASSES), splits).save(manifest)
    return {"root": root, "manifest": manifest, "spec": DatasetSpec(str(root), CLASSES)}


def make_cfg(dataset, **kw) -> SegmenterConfig:
    base = {"dataset": {"root": str(dataset["root"]), "classes": list(CLASSES)}, "mode": "test",
            "backbone": "resnet18", "iterations": 4, "batch_size": 2, "crop_size": 32, "lr": 0.01,
            "checkpoint_every": 2, "device": "cpu", "rates": [1, 2]}
    return from_dict(SegmenterConfig, {**base, **kw})


def outputs_in(folder: Path) -> dict[str, str]:
    return {k: str(folder / f) for k, f in
            (("model", "model.pt"), ("config", "config.json"), ("history", "history.csv"), ("curve", "curve.png"))}


# --------------------------------------------------------------------------- training


def test_one_sgd_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = DeepLabV2(3, "resnet18", None, output_stride=8, rates=(1, 2)).train()
    optimizer = torch.optim.SGD(model.param_groups(1e-4, 10.0, 5e-4), lr=1e-4, momentum=0.9)
    x = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 3, (2, 32, 32))
    labels[:, :4] = 255
    before = segmentation_loss(model(x), labels)  # BN on batch statistics: a function of the batch only
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    after = segmentation_loss(model(x), labels)
    assert after.item() < before.item() - 1e-3


def test_loss_ignores_255_and_is_zero_without_labels():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.full((1, 4, 4), 255)
    loss = segmentation_loss(logits, labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()
    labels[0, 0, 0] = 2
    torch.testing.assert_close(segmentation_loss(logits, labels), F.cross_entropy(logits[..., :1, :1], labels[..., :1, :1]))


def test_train_stage_writes_model_files_and_loads_back(dataset, tmp_path):
    out = tmp_path / "segmenter"
    cfg = make_cfg(dataset, resume_dir=str(tmp_path / "resume"))
    run_train(cfg, {"manifest": dataset["manifest"], "labels": str(dataset["root"] / "pseudo")}, outputs_in(out))
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "deeplab_v2" and config["classes"] == list(CLASSES) and config["rates"] == [1, 2]
    assert config["train"]["iterations"] == 4 and config["label_source"] == "pseudo_labels"
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,loss,lr") and len(rows) == 5
    assert (out / "curve.png").stat().st_size > 0
    assert not (tmp_path / "resume" / "checkpoint.pt").exists()  # cleared once the model is saved
    model, _ = load_segmenter(out, {"classes": list(CLASSES), "backbone": "resnet18"})
    assert not model.training


def test_resumed_training_ends_with_the_same_weights(dataset, tmp_path):
    data = load_training_set(make_cfg(dataset, label_source="ground_truth"), dataset["manifest"], None)  # GT: 255 band
    straight, _ = train(make_cfg(dataset, label_source="ground_truth"), data)
    cfg = make_cfg(dataset, label_source="ground_truth", resume_dir=str(tmp_path / "resume"))
    train(cfg, data, stop_after_step=3)
    resumed, metrics = train(cfg, data)
    assert metrics["step"] == 4
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_bad_training_labels_fail_before_training_naming_the_file(dataset, tmp_path):
    labels = tmp_path / "pseudo"
    labels.mkdir()
    for path in (dataset["root"] / "pseudo").iterdir():
        (labels / path.name).write_bytes(path.read_bytes())
    (labels / "img2.png").unlink()
    cfg = make_cfg(dataset)
    with pytest.raises(DataError, match="img2.png"):
        load_training_set(cfg, dataset["manifest"], labels)
    save_label_png(np.full((48, 44), 7, np.uint8), labels / "img2.png")  # right size, class 7 of 3
    data = load_training_set(cfg, dataset["manifest"], labels)
    with pytest.raises(DataError, match=r"img2.png: label values \[7\]"):
        data[(2, 0)]
    save_label_png(np.zeros((10, 10), np.uint8), labels / "img2.png")
    with pytest.raises(DataError, match="img2.png: label size 10x10 differs"):
        data[(2, 0)]
    with pytest.raises(ValueError, match="init_from_classifier"):
        make_cfg(dataset, weights="x.pth", init_from_classifier=True)


# --------------------------------------------------------------------------- multi-scale inference


def _conv_model(k: int = 4, stride: int = 1):
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, k, 3, padding=1, stride=stride)
    return lambda x: conv(x)


def _naive_multiscale(model_fn, image, scales, flip, fusion):
    """Reference: one image, one scale and one orientation per call; merged with numpy."""
    h, w = image.shape[-2:]
    maps = []
    for s in scales:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        x = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
        for flipped in ([False, True] if flip else [False]):
            xi = torch.flip(x, dims=[3]) if flipped else x
            logits = F.interpolate(model_fn(xi), size=(h, w), mode="bilinear", align_corners=False)
            if flipped:
                logits = torch.flip(logits, dims=[3])
            maps.append(torch.softmax(logits, dim=1)[0].detach().numpy())
    return np.mean(maps, axis=0) if fusion == "mean" else np.max(maps, axis=0)


@pytest.mark.parametrize("scales, flip, fusion, stride", [
    ((1.0,), False, "mean", 1),
    ((0.5, 0.75, 1.0, 1.25, 1.5), True, "mean", 1),
    ((0.7, 1.3), True, "max", 2),
    ((1.0, 0.5), False, "mean", 4),  # coarse output maps are upsampled to the image
])
def test_multiscale_matches_the_naive_per_scale_reference(scales, flip, fusion, stride):
    model_fn = _conv_model(stride=stride)
    image = torch.randn(3, 23, 30)
    probs = multiscale_predict(model_fn, image, scales, flip, fusion)
    assert probs.shape == (4, 23, 30)
    np.testing.assert_allclose(probs.numpy(), _naive_multiscale(model_fn, image, scales, flip, fusion),
                               rtol=1e-5, atol=1e-6)
    if fusion == "mean":
        np.testing.assert_allclose(probs.sum(0).numpy(), 1.0, atol=1e-5)


def test_flip_averaging_of_a_mirror_symmetric_model_changes_nothing():
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)  # mirror-symmetric kernels
    image = torch.randn(3, 17, 21)
    torch.testing.assert_close(multiscale_predict(conv, image, (1.0, 0.6), True),
                               multiscale_predict(conv, image, (1.0, 0.6), False))


def test_multiscale_rejects_bad_arguments():
    fn = _conv_model()
    with pytest.raises(ValueError, match="at least one scale"):
        multiscale_predict(fn, torch.randn(3, 8, 8), ())
    with pytest.raises(ValueError, match="positive"):
        multiscale_predict(fn, torch.randn(3, 8, 8), (1.0, -0.5))
    with pytest.raises(ValueError, match="one image"):
        multiscale_predict(fn, torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="fusion"):
        multiscale_predict(fn, torch.randn(3, 8, 8), fusion="median")


# --------------------------------------------------------------------------- predict + evaluate stages


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "segmenter"
    cfg = make_cfg(dataset, label_source="ground_truth", iterations=2)
    run_train(cfg, {"manifest": dataset["manifest"]}, outputs_in(out))
    return out


def test_predict_stage_writes_label_maps_of_every_shard_image(dataset, trained, tmp_path):
    ids = tmp_path / "1-of-1.txt"
    ids.write_text("img4\nimg5\n")
    cfg = from_dict(PredictConfig, {"dataset": {"root": str(dataset["root"]), "classes": list(CLASSES)},
                                    "mode": "test", "backbone": "resnet18", "test_scales": [0.75, 1.0],
                                    "flip": True, "device": "cpu"})
    out = tmp_path / "pred.h5"
    assert run_predict(cfg, {"model": str(trained / "model.pt"), "ids": str(ids)}, {"predictions": str(out)}) == 2
    with ArtifactReader(out, "predictions") as reader:
        assert reader.ids() == ["img4", "img5"]
        assert reader.attrs["test_scales"] == [0.75, 1.0] and reader.attrs["flip"] is True
        for image_id in ("img4", "img5"):
            label = reader.read(image_id, "label")
            gt = read_label_png(dataset["root"] / "SegmentationClass" / f"{image_id}.png")
            assert label.dtype == np.uint8 and label.shape == gt.shape and label.max() < 3
    wrong = replace(cfg, backbone="resnet34")
    with pytest.raises(ValueError, match="backbone='resnet18'"):
        run_predict(wrong, {"model": str(trained / "model.pt"), "ids": str(ids)}, {"predictions": str(tmp_path / "x.h5")})
    assert not (tmp_path / "x.h5").exists()


def _write_predictions(path: Path, labels: dict[str, np.ndarray]) -> None:
    with ArtifactWriter(path, "predictions", attrs={"test_scales": [1.0], "flip": False, "crf": False}) as w:
        for image_id, label in labels.items():
            w.add(image_id, {"label": label})


def test_evaluation_is_exact_on_known_predictions(dataset, tmp_path):
    gts = {i: read_label_png(dataset["root"] / "SegmentationClass" / f"{i}.png") for i in ("img4", "img5")}
    cfg = SegmentationEvalConfig(dataset["spec"], "test", "val")
    perfect = [tmp_path / "1-of-2.h5", tmp_path / "2-of-2.h5"]
    _write_predictions(perfect[0], {"img4": np.where(gts["img4"] == 255, 0, gts["img4"]).astype(np.uint8)})
    _write_predictions(perfect[1], {"img5": np.where(gts["img5"] == 255, 1, gts["img5"]).astype(np.uint8)})
    outputs = {"json": str(tmp_path / "eval.json"), "tsv": str(tmp_path / "eval.tsv")}
    result = run_segmentation_evaluation(cfg, {"manifest": dataset["manifest"], "predictions": perfect}, outputs)
    assert result["miou"] == pytest.approx(1.0) and result["n_images"] == 2
    saved = json.loads(Path(outputs["json"]).read_text())
    assert saved["iou"] == {"background": 1.0, "square": 1.0, "disc": 1.0} and saved["inference"]["flip"] is False
    # everything predicted as background: IoU(bg) = bg pixels / valid pixels, the others 0
    all_bg = tmp_path / "bg.h5"
    _write_predictions(all_bg, {i: np.zeros_like(g) for i, g in gts.items()})
    result = run_segmentation_evaluation(cfg, {"manifest": dataset["manifest"], "predictions": [all_bg]}, outputs)
    valid = np.concatenate([g[g != 255] for g in gts.values()])
    assert result["iou"]["background"] == pytest.approx(np.mean(valid == 0))
    assert result["miou"] == pytest.approx(np.mean(valid == 0) / 3)
    assert Path(outputs["tsv"]).read_text().splitlines()[0].startswith("class_id\tclass\tiou")
    with pytest.raises(DataError, match="img5"):
        run_segmentation_evaluation(cfg, {"manifest": dataset["manifest"], "predictions": [perfect[0]]}, outputs)


def test_load_segmenter_refuses_mismatches_clearly(trained, tmp_path):
    with pytest.raises(ValueError, match=r"classes=.*was expected"):
        load_segmenter(trained, {"classes": ["background", "cat"]})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_segmenter(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.pt").write_bytes((trained / "model.pt").read_bytes())
    config = json.loads((trained / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "classes": config["classes"] + ["extra"]}))
    with pytest.raises(ValueError, match="does not match its config.json"):
        load_segmenter(broken)
    (broken / "config.json").write_text(json.dumps({**config, "kind": "cam_classifier"}))
    with pytest.raises(ValueError, match="not a 'deeplab_v2'"):
        load_segmenter(broken)


# --------------------------------------------------------------------------- workflow


@pytest.mark.workflow
def test_dag_trains_one_segmenter_per_mode_on_its_pseudo_labels(workdir):
    from conftest import run_snakemake

    proc = run_snakemake(workdir, "-n", "all", "--quiet", "rules")
    out = proc.stdout + proc.stderr
    assert "train_segmenter" in out and "predict_segmenter" in out and "evaluate_segmenter" in out
    dag = run_snakemake(workdir, "-n", "results/demo/sance/eval/segmentation.json", "results/demo/fully_supervised/"
                        "eval/segmentation.json").stdout
    assert "results/demo/sance/pseudo_labels/png" in dag
    assert "results/demo/fully_supervised/pseudo_labels" not in dag


@pytest.mark.workflow
@pytest.mark.slow
def test_tiny_segmenter_rules_run_and_rerun_only_what_changed(workdir, tiny_config, tmp_path):
    from conftest import run_snakemake

    target = "results/tiny/fully_supervised/eval/segmentation.json"
    run_snakemake(workdir, target, "--cores", "2", "--configfile", str(tiny_config))
    result = json.loads((workdir / target).read_text())
    assert 0.0 <= result["miou"] <= 1.0 and result["n_images"] == 6 and result["mode"] == "fully_supervised"
    seg = workdir / "results/tiny/fully_supervised/segmenter"
    assert {p.name for p in seg.iterdir()} >= {"model.pt", "config.json", "history.csv", "curve.png"}
    assert sorted(p.name for p in (workdir / "results/tiny/fully_supervised/predictions").glob("*.h5")) == [
        "1-of-2.h5", "2-of-2.h5"]
    for name in ("train_segmenter_fully_supervised", "predict_segmenter_fully_supervised_1-of-2",
                 "evaluate_segmenter_fully_supervised"):
        assert (workdir / f"logs/tiny/{name}.log").exists() and (workdir / f"benchmarks/tiny/{name}.tsv").exists()
    # the trained model is what `sance predict` deploys
    from sance_core.cli import main

    image = sorted((workdir / "resources/tiny/JPEGImages").iterdir())[0]
    assert main(["predict", "--model", str(seg), str(image), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    # inference settings rerun inference and evaluation only; training settings rerun training too
    def changed(name: str, **segmentation) -> str:
        overlay = yaml.safe_load(tiny_config.read_text())
        overlay["segmentation"] = {**overlay.get("segmentation", {}), **segmentation}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(overlay))
        return str(path)

    dry = run_snakemake(workdir, target, "-n", "--configfile", changed("scales", test_scales=[0.5, 1.0])).stdout
    assert "predict_segmenter" in dry and "evaluate_segmenter" in dry and "train_segmenter" not in dry
    dry = run_snakemake(workdir, target, "-n", "--configfile", changed("iters", iterations=3)).stdout
    assert "train_segmenter" in dry and "validate_dataset" not in dry
