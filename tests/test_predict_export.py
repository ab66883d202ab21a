"""The deployable product: `sance predict` on real VOC images and `sance export` to ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_data
from sance_core.cli import main
from sance_core.io.palette import voc_palette
from sance_core.models.export import ExportCheckError, check_onnx, export_onnx
from sance_core.models.deeplab import DeepLabV2, arch_config
from sance_core.engine.training import save_model

CLASSES = ["background", "bird", "lamp", "robot", "snail", "cactus"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised segmenter saved the way train_segmenter saves one."""
    torch.manual_seed(0)
    model = DeepLabV2(len(CLASSES), "resnet18", None, output_stride=8, rates=(2, 4))
    with torch.no_grad():  # random BN statistics so that the outputs are not trivially uniform
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.normal_(0, 0.1)
        for conv in model.aspp.branches:
            conv.weight.normal_(0, 0.05)
    out = tmp_path_factory.mktemp("predict") / "segmenter"
    save_model(model.eval(), {**arch_config(CLASSES, "resnet18", 8, (2, 4)), "mode": "test",
                              "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}, out)
    return out


@pytest.fixture(scope="module")
def voc_images(tmp_path_factory) -> list[Path]:
    """Two real VOC JPEGs, downsized copies (the model is random; size only costs time)."""
    folder = shared_data("voc-mini", "JPEGImages")
    out = tmp_path_factory.mktemp("voc")
    paths = []
    for src in sorted(folder.glob("*.jpg"))[:2]:
        with Image.open(src) as img:
            img.thumbnail((160, 160))
            img.save(out / src.name, quality=92)
        paths.append(out / src.name)
    return paths


def test_predict_writes_palette_pngs_and_overlays(model_dir, voc_images, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["predict", "--model", str(model_dir), *map(str, voc_images), "--out", str(out), "--scales", "0.75", "1.0",
            "--flip", "--device", "cpu"]
    assert main(args) == 0
    assert "wrote 2 label PNGs" in capsys.readouterr().out
    for src in voc_images:
        with Image.open(src) as img:
            width, height = img.size
        with Image.open(out / f"{src.stem}.png") as png:
            assert png.mode == "P" and png.size == (width, height)
            assert np.array_equal(np.asarray(png.getpalette()[:3 * 6]).reshape(6, 3), voc_palette()[:6])
            assert np.asarray(png).max() < len(CLASSES)
        with Image.open(out / f"{src.stem}_overlay.jpg") as overlay:
            assert overlay.format == "JPEG" and overlay.size[0] == width and overlay.size[1] > height  # + legend
    # a folder works too and gives the same labels for the same image and settings
    again = tmp_path / "again"
    assert main(["predict", "--model", str(model_dir), str(voc_images[0].parent), "--out", str(again),
                 "--scales", "0.75", "1.0", "--flip", "--device", "cpu"]) == 0
    stem = voc_images[0].stem
    assert np.array_equal(np.asarray(Image.open(again / f"{stem}.png")), np.asarray(Image.open(out / f"{stem}.png")))


def test_predict_refuses_bad_inputs_before_writing(model_dir, voc_images, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model_dir), str(voc_images[0]), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err  # main() installs its own log handlers (stderr)
    assert "broken.jpg" in err and "not a readable image" in err
    assert not out.exists()  # nothing was half written
    assert main(["predict", "--model", str(tmp_path / "no_model"), str(voc_images[0]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no_model" in err and "does not exist" in err
    assert main(["predict", "--model", str(model_dir), str(tmp_path / "missing.jpg"), "--out", str(out)]) == 2
    assert "missing.jpg: no such image" in capsys.readouterr().err


def test_predict_refuses_a_config_json_that_does_not_fit_the_weights(model_dir, voc_images, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.pt").write_bytes((model_dir / "model.pt").read_bytes())
    config = json.loads((model_dir / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "backbone": "resnet34"}))
    assert main(["predict", "--model", str(other), str(voc_images[0]), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not match its config.json" in err and "resnet34" in err


def test_export_matches_pytorch_in_onnxruntime_at_other_sizes(model_dir, voc_images, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    onnx_path = tmp_path / "deploy" / "model.onnx"
    assert main(["export", "--model", str(model_dir), "--out", str(onnx_path), "--height", "64", "--width", "80",
                 "--image", str(voc_images[0])]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dynamic"] is True and report["max_abs_diff"] <= 1e-3 and report["opset"] == 17
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(meta["classes"]) == CLASSES and meta["backbone"] == "resnet18"
    # an independent check at a size never seen during export
    from sance_core.stages.segmenter import load_segmenter

    model, _ = load_segmenter(model_dir)
    x = torch.randn(1, 3, 71, 93)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": x.numpy()})[0]
    with torch.inference_mode():
        ref = model(x).numpy()
    assert out.shape == (1, len(CLASSES), 71, 93)
    np.testing.assert_allclose(out, ref, atol=1e-3)


def test_export_check_fails_when_the_runtime_disagrees(model_dir, tmp_path):
    from sance_core.stages.segmenter import load_segmenter

    model, config = load_segmenter(model_dir)
    path = export_onnx(model, config, tmp_path / "m.onnx", 48, 48)
    different = DeepLabV2(len(CLASSES), "resnet18", None, output_stride=8, rates=(2, 4)).eval()
    image = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    with pytest.raises(ExportCheckError, match="differ from PyTorch"):
        check_onnx(different, path, [image], tolerance=1e-3)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, config, tmp_path / "old.onnx", 48, 48, opset=11)
