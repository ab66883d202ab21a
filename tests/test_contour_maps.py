"""infer_contours: the raw single-scale contour maps the paper's contour benchmark scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sance_core.config import from_dict
from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.data.transforms import normalize_image
from sance_core.io.images import DataError
from sance_core.io.store import ArtifactReader
from sance_core.io.weights import save_model
from sance_core.models import build_sance_model
from sance_core.stages.contour_maps import ContourMapsConfig, raw_contour, run_stage
from sance_core.stages.pseudo_labels import predict_maps
from sance_core.stages.sance import SanceConfig, model_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CLASSES = ("background", "a", "b")
SIZES = {"t0": (37, 50), "t1": (44, 29), "v0": (33, 41), "v1": (40, 40), "sbd0": (45, 31), "sbd1": (28, 52)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("contours")
    (root / "JPEGImages").mkdir()
    rng = np.random.default_rng(0)
    for image_id, (h, w) in SIZES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")

    def entries(ids):
        return [{"id": i, "height": SIZES[i][0], "width": SIZES[i][1], "labels": [1], "has_mask": False} for i in ids]
    # sbd0 / sbd1 are in no split: images that are only scored, as SBD val is for VOC
    Manifest("t", str(root), list(CLASSES), {"train": entries(["t0", "t1"]), "val": entries(["v0", "v1"])}).save(
        root / "manifest.json")
    spec = DatasetSpec(root=str(root), classes=CLASSES)
    cfg = from_dict(SanceConfig, {"dataset": spec, "mode": "sance", "backbone": "resnet18", "weights": None,
                                  "output_stride": 16, "aspp_rates": [1, 2]})
    torch.manual_seed(0)
    model = build_sance_model(len(CLASSES), "resnet18", 16, seg_branch=True, aspp_rates=(1, 2)).eval()
    save_model(model, model_config(cfg), root / "model")
    (root / "sbd_val.txt").write_text("sbd1\nsbd0\n")
    return root, spec, model


def test_raw_contour_is_one_plain_forward_pass(setup):
    root, spec, model = setup
    image = np.asarray(Image.open(root / "JPEGImages" / "v0.jpg").convert("RGB"))
    got = raw_contour(model, image)
    with torch.no_grad():
        logits = model(normalize_image(image)[None])["contour"]
    size4 = (math.ceil(33 / 4), math.ceil(41 / 4))
    expected = torch.sigmoid(F.interpolate(logits, size=size4, mode="bilinear", align_corners=False))[0, 0].numpy() \
        if logits.shape[-2:] != size4 else torch.sigmoid(logits)[0, 0].numpy()
    assert got.shape == size4
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # the pseudo-label maps average the mirrored image too: not what the benchmark scores
    tta, _ = predict_maps(model, image, scales=(1.0,), flip=True)
    single, _ = predict_maps(model, image, scales=(1.0,), flip=False)
    np.testing.assert_allclose(single, got, atol=1e-6)
    assert np.abs(tta - got).max() > 1e-4


def test_stage_infers_the_id_list_or_the_val_split(setup, tmp_path):
    root, spec, model = setup
    inputs = {"model": str(root / "model" / "model.pt"), "manifest": str(root / "manifest.json")}
    out = tmp_path / "listed.h5"
    assert run_stage(ContourMapsConfig(dataset=spec, id_list=str(root / "sbd_val.txt"), device="cpu"), inputs,
                     {"contours": str(out)}) == 2
    with ArtifactReader(out, expect_stage="contours") as reader:
        assert sorted(reader) == ["sbd0", "sbd1"]
        for image_id in ("sbd0", "sbd1"):
            h, w = SIZES[image_id]
            attrs = reader.image_attrs(image_id)
            assert list(attrs["size"]) == [h, w] and int(attrs["stride"]) == 4
            image = np.asarray(Image.open(root / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
            np.testing.assert_allclose(reader.read(image_id, "contour"), raw_contour(model, image), atol=2e-3)  # float16
    out = tmp_path / "val.h5"
    run_stage(ContourMapsConfig(dataset=spec, split="val", device="cpu"), inputs, {"contours": str(out)})
    with ArtifactReader(out, expect_stage="contours") as reader:
        assert sorted(reader) == ["v0", "v1"]


def test_a_missing_image_fails_before_the_model_runs(setup, tmp_path):
    root, spec, _ = setup
    (tmp_path / "ids.txt").write_text("sbd0\nnope\n")
    with pytest.raises(DataError, match="1 image.*nope.jpg"):
        run_stage(ContourMapsConfig(dataset=spec, id_list=str(tmp_path / "ids.txt"), device="cpu"),
                  {"model": "unused", "manifest": str(root / "manifest.json")}, {"contours": str(tmp_path / "x.h5")})
    assert not (tmp_path / "x.h5").exists()
