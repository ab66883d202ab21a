"""Stage 3, CAM extraction: against a per-scale numpy reference, the artifact contract, the workflow."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_snakemake
from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.data.transforms import normalize_image, resize_image
from sance_core.io.images import DataError, read_image
from sance_core.io.store import ArtifactReader
from sance_core.io.weights import save_model
from sance_core.models.classifier import CAMClassifier
from sance_core.stages.cam import CAMConfig, extract, load_classifier, run_stage, strided_size
from sance_core.stages.classifier import ClassifierConfig, model_config

CLASSES = ("background", "a", "b", "c")
# id -> (height, width, labels); two images share a size so that they form one batch
IMAGES = {"p": (37, 45, [1, 3]), "q": (37, 45, [2]), "r": (50, 29, [3]), "s": (33, 40, [])}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("cam_data")
    (root / "JPEGImages").mkdir()
    rng = np.random.default_rng(0)
    entries = []
    for image_id, (h, w, labels) in IMAGES.items():
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        entries.append({"id": image_id, "height": h, "width": w, "labels": labels, "has_mask": False})
    Manifest("toy", str(root), list(CLASSES), {"train": entries}).save(root / "manifest.json")
    spec = DatasetSpec(root=str(root), classes=CLASSES)
    torch.manual_seed(0)
    model = CAMClassifier(len(CLASSES) - 1, "resnet18").eval()
    save_model(model, model_config(ClassifierConfig(dataset=spec, backbone="resnet18", weights=None)), root / "classifier")
    return spec, root, model


def bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Naive bilinear resize of [C, h, w] to size (half-pixel centres, edge clamp: align_corners=False)."""
    def coords(n_in: int, n_out: int):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, ly = coords(x.shape[1], size[0])
    x0, x1, lx = coords(x.shape[2], size[1])
    out = np.zeros((x.shape[0], *size))
    for i in range(size[0]):
        for j in range(size[1]):
            out[:, i, j] = ((1 - ly[i]) * ((1 - lx[j]) * x[:, y0[i], x0[j]] + lx[j] * x[:, y0[i], x1[j]])
                            + ly[i] * ((1 - lx[j]) * x[:, y1[i], x0[j]] + lx[j] * x[:, y1[i], x1[j]]))
    return out


def reference_cam(model: CAMClassifier, image: np.ndarray, labels: list[int], scales, flip=True):
    """IRNet's make_cam, one scale and one flip at a time, in numpy after the network."""
    h, w = image.shape[:2]
    low_size = ((h + 3) // 4, (w + 3) // 4)
    up_size = (-(-h // 16) * 16, -(-w // 16) * 16)
    low = np.zeros((len(labels), *low_size))
    high = np.zeros((len(labels), h, w))
    for s in scales:
        img = resize_image(image, s)
        views = [img, img[:, ::-1]] if flip else [img]
        total = 0
        for k, view in enumerate(views):
            with torch.no_grad():
                cam = model.cam(normalize_image(np.ascontiguousarray(view))[None])[0].numpy().astype(np.float64)
            cam = np.maximum(cam, 0)
            total = total + (cam[:, :, ::-1] if k == 1 else cam)
        present = total[[c - 1 for c in labels]]
        low += bilinear(present, low_size)
        high += bilinear(present, up_size)[:, :h, :w]
    if labels:
        low /= low.max(axis=(1, 2), keepdims=True) + 1e-5
        high /= high.max(axis=(1, 2), keepdims=True) + 1e-5
    return high, low


@pytest.mark.parametrize("scales, flip, batch_size", [((1.0, 0.5, 1.5, 2.0), True, 2), ((1.0, 0.7), False, 1)])
def test_extract_matches_the_per_scale_reference(toy, scales, flip, batch_size):
    spec, root, model = toy
    manifest = Manifest.load(root / "manifest.json")
    cfg = CAMConfig(dataset=spec, scales=scales, flip=flip, batch_size=batch_size, device="cpu")
    results = {i: (arrays, attrs) for i, arrays, attrs in extract(model, cfg, list(IMAGES), manifest)}
    assert set(results) == set(IMAGES)
    for image_id, (h, w, labels) in IMAGES.items():
        arrays, attrs = results[image_id]
        high, low = reference_cam(model, read_image(root / "JPEGImages" / f"{image_id}.jpg"), labels, scales, flip)
        assert arrays["cam"].shape == (len(labels), h, w)
        assert arrays["cam_stride4"].shape == (len(labels), *strided_size((h, w)))
        np.testing.assert_allclose(arrays["cam"], high, atol=2e-5)
        np.testing.assert_allclose(arrays["cam_stride4"], low, atol=2e-5)
        assert list(attrs["class_keys"]) == labels and list(attrs["size"]) == [h, w] and attrs["stride"] == 4


def test_run_stage_writes_the_cam_artifact(toy, tmp_path):
    spec, root, _ = toy
    shard = tmp_path / "1-of-1.txt"
    shard.write_text("".join(f"{i}\n" for i in IMAGES))
    out = tmp_path / "cam" / "1-of-1.h5"
    cfg = CAMConfig(dataset=spec, backbone="resnet18", scales=(1.0, 0.5), device="cpu")
    n = run_stage(cfg, {"shard": str(shard), "model": str(root / "classifier/model.pt"),
                        "manifest": str(root / "manifest.json")}, {"cam": str(out)})
    assert n == len(IMAGES)
    reader = ArtifactReader(out, expect_stage="cam")
    assert reader.attrs["complete"] and sorted(reader.ids()) == sorted(IMAGES)
    for image_id, (h, w, labels) in IMAGES.items():
        attrs = reader.image_attrs(image_id)
        assert attrs["class_keys"] == labels and attrs["size"] == [h, w] and attrs["stride"] == 4
        cam, low = reader.read(image_id, "cam"), reader.read(image_id, "cam_stride4")
        assert cam.shape == (len(labels), h, w) and low.shape == (len(labels), (h + 3) // 4, (w + 3) // 4)
        for m in (cam, low) if labels else ():
            assert m.min() >= 0
            np.testing.assert_allclose(m.max(axis=(1, 2)), 1.0, atol=1e-3)  # per-class max normalised
    with h5py.File(out) as f:
        assert f["p/cam"].dtype == np.float16 and f["p/cam_stride4"].dtype == np.float16
    reader.close()
    assert not list(out.parent.glob(".*tmp*"))


def test_cams_on_two_devices_equal_one_device(toy, tmp_path, monkeypatch):
    """Two worker processes (both on the CPU here) take the batches round-robin: same artifact."""
    import sance_core.stages.cam as cam_module

    spec, root, _ = toy
    shard = tmp_path / "1-of-1.txt"
    shard.write_text("".join(f"{i}\n" for i in IMAGES))
    cfg = CAMConfig(dataset=spec, backbone="resnet18", scales=(1.0, 0.5), batch_size=1, device="cpu")
    inputs = {"shard": str(shard), "model": str(root / "classifier/model.pt"), "manifest": str(root / "manifest.json")}
    run_stage(cfg, inputs, {"cam": str(tmp_path / "one.h5")})
    monkeypatch.setattr(cam_module, "visible_devices", lambda name: [torch.device("cpu")] * 2)
    run_stage(cfg, inputs, {"cam": str(tmp_path / "two.h5")})
    with ArtifactReader(tmp_path / "one.h5") as one, ArtifactReader(tmp_path / "two.h5") as two:
        assert one.ids() == two.ids() and len(one.ids()) == len(IMAGES)
        for image_id in one.ids():
            assert one.image_attrs(image_id) == two.image_attrs(image_id)
            for name in ("cam", "cam_stride4"):
                assert np.array_equal(one.read(image_id, name), two.read(image_id, name))


def test_an_empty_shard_gives_an_empty_complete_file(toy, tmp_path):
    spec, root, _ = toy
    shard = tmp_path / "3-of-3.txt"
    shard.write_text("")
    out = tmp_path / "empty.h5"
    run_stage(CAMConfig(dataset=spec, backbone="resnet18", device="cpu"),
              {"shard": str(shard), "model": str(root / "classifier/model.pt"),
                                                      "manifest": str(root / "manifest.json")}, {"cam": str(out)})
    with ArtifactReader(out, expect_stage="cam") as reader:
        assert len(reader) == 0


def test_model_of_other_classes_or_backbone_is_refused(toy):
    spec, root, _ = toy
    with pytest.raises(ValueError, match="classes"):
        load_classifier(root / "classifier/model.pt", ("background", "a", "b", "x"), "resnet18")
    with pytest.raises(ValueError, match="backbone"):
        load_classifier(root / "classifier/model.pt", CLASSES, "resnet34")


def test_ids_missing_from_the_manifest_fail_before_any_work(toy, tmp_path):
    spec, root, model = toy
    manifest = Manifest.load(root / "manifest.json")
    with pytest.raises(DataError, match="nope"):
        next(extract(model, CAMConfig(dataset=spec, device="cpu"), ["p", "nope"], manifest))


def test_config_rejects_bad_scales(toy):
    spec = toy[0]
    with pytest.raises(ValueError, match="scales"):
        CAMConfig(dataset=spec, scales=())
    with pytest.raises(ValueError, match="scales"):
        CAMConfig(dataset=spec, scales=(1.0, -0.5))


# --------------------------------------------------------------------------- workflow


@pytest.mark.workflow
def test_set_scatter_gives_one_cam_job_per_shard(workdir):
    proc = run_snakemake(workdir, "-n", "all", "--set-scatter", "shard=3")
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, flags=re.M))
    assert counts.get("extract_cams") == "3", proc.stdout[-3000:]
    assert counts.get("train_classifier") == "1"


@pytest.mark.slow
@pytest.mark.workflow
def test_tiny_workflow_trains_the_classifier_and_writes_cam_shards(workdir, tiny_config):
    """The real rules on the tiny demo (about a minute on a busy 2-core machine: marked slow)."""
    targets = [f"results/tiny/cam/{k}-of-2.h5" for k in (1, 2)]
    run_snakemake(workdir, *targets, "--cores", "2", "--configfile", str(tiny_config))
    manifest = Manifest.load(workdir / "results/tiny/manifest.json")
    labels = manifest.labels("train")
    seen = []
    for target in targets:
        with ArtifactReader(workdir / target, expect_stage="cam") as reader:
            for image_id in reader.ids():
                attrs = reader.image_attrs(image_id)
                h, w = attrs["size"]
                assert attrs["class_keys"] == labels[image_id]
                assert reader.read(image_id, "cam").shape == (len(labels[image_id]), h, w)
                assert reader.read(image_id, "cam_stride4").shape[1:] == ((h + 3) // 4, (w + 3) // 4)
            seen += reader.ids()
    assert sorted(seen) == sorted(manifest.ids("train"))
    for name in ("model.pt", "config.json", "history.csv", "curve.png"):
        assert (workdir / "results/tiny/classifier" / name).stat().st_size > 0
    for name in ("train_classifier", "extract_cams_1-of-2", "extract_cams_2-of-2"):
        assert (workdir / f"logs/tiny/{name}.log").exists()
        assert (workdir / f"benchmarks/tiny/{name}.tsv").exists()
    assert not (workdir / "results/tiny/.resume/classifier/checkpoint.pt").exists()
    proc = run_snakemake(workdir, *targets, "-n", "--configfile", str(tiny_config))
    assert "Nothing to be done" in proc.stdout + proc.stderr
