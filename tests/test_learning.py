"""Learning smoke tests: the trainings of the pipeline must still learn on a small demo set.

Unit tests check each formula; these check that the pieces, wired as the stages wire them,
end clearly better than a prediction that needs no learning. On a generated demo set
(``generate_demo_dataset``, validated into a manifest by ``validate_dataset`` as the
``demo_data`` / ``validate_dataset`` rules do):

1. the CAM classifier (``stages.classifier.train``, resnet10_w32 from random init with
   ``zero_init_residual`` as config.yaml's demo) gives train CAMs (``stages.cam.extract``)
   whose mIoU (``eval.evaluation.cam_labels_at_thresholds`` at the best background threshold,
   as ``evaluate_cams`` scores them) beats the best prediction that uses the image labels but
   no localisation, and an image-level mAP above the label prior;
2. the fully supervised DeepLab-v2 (``stages.segmenter.train`` on GT masks, resnet10_w32)
   ends with a train mIoU well above the all-background prediction;
3. stages 3-6 on that classifier, each through its stage function (CAMs, CRF seeds, the SANCE
   training from the classifier's backbone, pseudo labels of every train image from the trained
   segmentation and contour maps by the stage-6 synthesis) give pseudo labels well above those
   of the same SANCE model before its first step.

Each margin sits well below the worst value measured over data / init seeds 0, 1, 2 and
well above what a training that does not learn reaches (values in the comments).

Learning broken on purpose: ``lr: 0`` is refused by the configs (``ConfigError:
ClassifierConfig: need lr > 0, ...``, the same for SegmenterConfig and SanceConfig), so the
tests fail before training. With ``lr: 1e-9`` in CLASSIFIER, SEGMENTER and SANCE (trains,
learns nothing) each fails on its margin, naming the metric, the value, the baseline and the
margin::

    AssertionError: the training no longer learns:
      train CAM mIoU 0.2002 is not above the baseline 0.1736 by the margin 0.07 (needs >= 0.2436)
      train image-level mAP 0.3700 is not above the baseline 0.3063 by the margin 0.35 (needs >= 0.6563)
    AssertionError: the training no longer learns:
      train segmenter mIoU 0.0524 is not above the baseline 0.1133 by the margin 0.25 (needs >= 0.3633)
    AssertionError: the training no longer learns:
      train SANCE pseudo-label mIoU 0.1722 is not above the baseline 0.1731 by the margin 0.03 (needs >= 0.2031)

Not met (issue 17, docs/RESULTS.md): SANCE pseudo labels above the trivial labelling of the
seeds they are trained from (every unsure pixel background). Measured over seeds 0, 1, 2:
pseudo labels 0.271 / 0.298 / 0.201 against the seeds' 0.307 / 0.311 / 0.296; the segmentation
branch's own arg-max is below the seeds as well (0.288 / - / 0.214), so on 32 images and 40 steps
the branch does not yet reproduce its seeds and the propagation has little to add.
``test_sance_pseudo_labels_beat_their_seeds`` states the claim as a strict expected failure:
the day it holds, the test turns red and the xfail comes off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import training_outputs
from sance_core.config import from_dict
from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.data.demo import DEMO_CLASSES, DemoDataConfig, generate_demo_dataset
from sance_core.data.validate import ValidationConfig, validate_dataset
from sance_core.eval.epoch_eval import EpochEvalConfig, EpochEvaluator
from sance_core.eval.evaluation import DEFAULT_THRESHOLDS, cam_labels_at_thresholds
from sance_core.eval.metrics import ConfusionMatrix
from sance_core.io.images import read_image
from sance_core.io.palette import read_label_png
from sance_core.io.store import ArtifactReader
from sance_core.ops.inference import predict_label
from sance_core.runtime import seed_everything
from sance_core.stages import cam, classifier, sance, seeds, segmenter
from sance_core.stages.cam import CAMConfig, extract, load_classifier
from sance_core.stages.pseudo_labels import load_sance_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

SEED = 0  # data and init seed of the test; the margins below were measured over seeds 0, 1, 2

# config.yaml's demo classifier and segmenter, smaller (CPU budget of a test). The segmenter has no
# classifier backbone to start from here, so all its layers are new: head_lr_mult 1 as the demo
# classifier's (at the default 10, seed 1 stayed near all-background after 100 iterations: mIoU 0.155)
CLASSIFIER = {"backbone": "resnet10_w32", "weights": None, "zero_init_residual": True, "epochs": 50,
              "batch_size": 8, "crop_size": 80, "head_lr_mult": 1.0, "device": "cpu"}
SEGMENTER = {"mode": "learning", "label_source": "ground_truth", "backbone": "resnet10_w32", "weights": None,
             "frozen_bn": False, "rates": [2, 3, 5, 6], "iterations": 100, "batch_size": 8, "crop_size": 80,
             "lr": 0.01, "head_lr_mult": 1.0, "device": "cpu"}

# Margins over the baseline, measured (value - baseline) on data / init seeds 0, 1, 2 with the
# settings above, and with learning broken (lr 1e-9: the config refuses lr 0, see the docstring):
# train CAM mIoU - label-only mIoU: 0.120, 0.148, 0.117 (CAM mIoU 0.293, 0.296, 0.274);
#   lr 1e-9: 0.027, 0.016, 0.047
CAM_MARGIN = 0.07
# train image-level mAP - label prior: 0.692, 0.667, 0.679 (mAP 0.998, 0.998, 0.991);
#   lr 1e-9: 0.064, 0.028, 0.083
MAP_MARGIN = 0.35
# train segmenter mIoU - all-background mIoU: 0.519, 0.578, 0.512 (mIoU 0.632, 0.699, 0.636);
#   lr 1e-9: -0.061, -0.070, -0.054
SEGMENTER_MARGIN = 0.25
# train SANCE pseudo-label mIoU - the same from the SANCE model before training: 0.097, 0.175, 0.053
# (pseudo labels 0.271, 0.298, 0.201); lr 1e-9: -0.001, +0.001, +0.001
SANCE_MARGIN = 0.03


def make_demo(root: Path, seed: int, n_train: int = 32, n_val: int = 8) -> tuple[DatasetSpec, Manifest]:
    """A generated demo set under ``root`` and its validated manifest (``root/manifest.json``)."""
    generate_demo_dataset(DemoDataConfig(seed=seed, n_train=n_train, n_val=n_val), root)
    spec = DatasetSpec(str(root), DEMO_CLASSES)
    manifest = validate_dataset(ValidationConfig("learning", spec, ("train", "val")), root / "manifest.json")
    return spec, manifest


def _config(cls: type, spec: DatasetSpec, base: dict[str, Any], seed: int, **overrides: Any) -> Any:
    dataset = {"root": spec.root, "classes": list(spec.classes)}
    return from_dict(cls, {**base, "dataset": dataset, "seed": seed, **overrides})


# --------------------------------------------------------------------------- CAM classifier


def train_classifier(spec: DatasetSpec, seed: int, out: Path, **overrides: Any) -> Path:
    """Train the CAM classifier as the ``train_classifier`` rule does; returns its ``model.pt``."""
    cfg = _config(classifier.ClassifierConfig, spec, CLASSIFIER, seed, **overrides)
    out.mkdir(parents=True, exist_ok=True)
    classifier.run_stage(cfg, {"manifest": str(Path(spec.root) / "manifest.json")}, training_outputs(out))
    return out / "model.pt"


def load_trained_classifier(model_file: Path, spec: DatasetSpec) -> classifier.CAMClassifier:
    return load_classifier(model_file, spec.classes, CLASSIFIER["backbone"]).eval()


def cam_scores(model: classifier.CAMClassifier, spec: DatasetSpec, manifest: Manifest,
               split: str = "train") -> dict[str, float]:
    """CAM mIoU at the best threshold, its label-only baseline, image-level mAP and its label prior.

    The label-only baseline is the best mIoU of a constant CAM of the present classes (every
    pixel the first present class, or background), scored like the CAMs over the same thresholds.
    """
    n = spec.num_classes
    cams_cm = [ConfusionMatrix(n) for _ in DEFAULT_THRESHOLDS]
    flat_cm = [ConfusionMatrix(n) for _ in DEFAULT_THRESHOLDS]
    background = ConfusionMatrix(n)
    ids = manifest.ids(split)
    cfg = CAMConfig(spec, split, CLASSIFIER["backbone"], scales=(1.0,), flip=False, device="cpu")
    for image_id, maps, attrs in extract(model, cfg, ids, manifest):
        gt = read_label_png(spec.mask_path(image_id))
        keys = attrs["class_keys"]
        for cm, pred in zip(cams_cm, cam_labels_at_thresholds(maps["cam"], keys, DEFAULT_THRESHOLDS)):
            cm.update(pred, gt)
        flat = np.ones_like(maps["cam"])
        for cm, pred in zip(flat_cm, cam_labels_at_thresholds(flat, keys, DEFAULT_THRESHOLDS)):
            cm.update(pred, gt)
        background.update(np.zeros_like(gt), gt)
    with torch.no_grad():
        logits = torch.stack([model(classifier.normalize_image(read_image(spec.image_path(i)))[None])[0] for i in ids])
    labels = torch.from_numpy(np.stack([manifest.label_vector(split, i) for i in ids])).float()
    return {"cam_miou": max(cm.miou() for cm in cams_cm),
            "label_only_miou": max(max(cm.miou() for cm in flat_cm), background.miou()),
            "map": classifier.batch_metrics(logits, labels)["map"],
            "label_prior": float(labels.mean(0)[labels.sum(0) > 0].mean())}


# --------------------------------------------------------------------------- segmenter


def train_segmenter(spec: DatasetSpec, seed: int, **overrides: Any) -> segmenter.DeepLabV2:
    cfg = _config(segmenter.SegmenterConfig, spec, SEGMENTER, seed, **overrides)
    model, _ = segmenter.train(cfg, segmenter.load_training_set(cfg, Path(spec.root) / "manifest.json", None))
    return model.eval()


def segmentation_scores(model: segmenter.DeepLabV2, spec: DatasetSpec, manifest: Manifest,
                        split: str = "train") -> dict[str, float]:
    """mIoU of the single-scale predictions (no CRF) and of the all-background prediction."""
    predicted, background = ConfusionMatrix(spec.num_classes), ConfusionMatrix(spec.num_classes)
    for image_id in manifest.ids(split):
        gt = read_label_png(spec.mask_path(image_id))
        label, _ = predict_label(model, read_image(spec.image_path(image_id)))
        predicted.update(label, gt)
        background.update(np.zeros_like(gt), gt)
    return {"miou": predicted.miou(), "background_miou": background.miou()}


# --------------------------------------------------------------------------- SANCE pseudo labels

# config.yaml's demo SANCE model (smaller crops, as the classifier above) and its stage-6 radius
SANCE = {"mode": "sance", "backbone": "resnet10_w32", "weights": None, "init_from_classifier": True,
         "frozen_bn": False, "aspp_rates": [2, 3, 5, 6], "epochs": 10, "batch_size": 8, "crop_size": 80, "lr": 0.01,
         "contour_radius": 3, "online": {"radius": 2, "warmup": 0.5, "crf": {"bilateral_sxy": 3}}, "device": "cpu"}
SEED_CRF = {"gauss_sxy": 1, "bilateral_sxy": 13}  # config.yaml's demo seed CRF
PSEUDO_LABELS = {"radius": 2}  # config.yaml's demo; beta, exp_times and tau_b the paper's


def sance_pseudo_label_scores(spec: DatasetSpec, manifest: Manifest, classifier_model: Path, out: Path, seed: int,
                              **overrides: Any) -> dict[str, float]:
    """Stages 3-6 on the train split, each through its stage function: CAMs of the trained
    classifier, CRF seeds, the SANCE training (backbone from the classifier), then pseudo labels of
    every train image from its segmentation and contour maps (one scale, the synthesis of stage 6,
    as the per-epoch evaluation makes them). Returns their mIoU, that of the same pseudo labels from
    the SANCE model before its first step (``untrained_miou``), of the seeds' trivial labelling
    (every unsure pixel background) and of the all-background prediction."""
    dataset = {"root": spec.root, "classes": list(spec.classes)}
    manifest_file = str(Path(spec.root) / "manifest.json")
    ids = manifest.ids("train")
    shard = out / "shard.txt"
    shard.write_text("\n".join(ids) + "\n")
    cam_cfg = from_dict(CAMConfig, {"dataset": dataset, "backbone": CLASSIFIER["backbone"], "device": "cpu"})
    cam.run_stage(cam_cfg, {"shard": str(shard), "model": str(classifier_model), "manifest": manifest_file},
                  {"cam": str(out / "cam.h5")})
    seed_cfg = from_dict(seeds.SeedConfig, {"dataset": dataset, "crf": SEED_CRF})
    seeds.run_stage(seed_cfg, {"cam": str(out / "cam.h5")}, {"seeds": str(out / "seeds.h5")})
    sance_cfg = from_dict(sance.SanceConfig, {**SANCE, "dataset": dataset, "seed": seed, **overrides})
    model_dir = out / "sance_model"
    sance.run_stage(sance_cfg, {"manifest": manifest_file, "seeds": [str(out / "seeds.h5")],
                                "classifier": str(classifier_model)},
                    training_outputs(model_dir))
    model = load_sance_model(model_dir / "model.pt", spec.classes, "sance", torch.device("cpu"))
    seed_everything(sance_cfg.seed)  # the model as the training starts it: classifier backbone, new heads
    untrained = sance.build_model(sance_cfg, classifier_model.parent)
    tags = {i: [int(c) for c in manifest.labels("train")[i]] for i in ids}
    evaluate = EpochEvaluator(EpochEvalConfig(images=len(ids), **PSEUDO_LABELS), spec, ids, tags)
    trivial, background = ConfusionMatrix(spec.num_classes), ConfusionMatrix(spec.num_classes)
    with ArtifactReader(str(out / "seeds.h5"), expect_stage="seeds") as reader:
        for image_id in ids:
            seed_map = reader.read(image_id, "seed")
            gt = read_label_png(spec.mask_path(image_id))
            trivial.update(np.where(seed_map == seeds.UNSURE, 0, seed_map), gt)
            background.update(np.zeros_like(gt), gt)
    return {"pseudo_miou": evaluate(0, model)["pseudo_miou"], "untrained_miou": evaluate(0, untrained)["pseudo_miou"],
            "trivial_miou": trivial.miou(), "background_miou": background.miou()}


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[DatasetSpec, Manifest]:
    return make_demo(tmp_path_factory.mktemp("learning") / "demo", SEED)


@pytest.fixture(scope="module")
def classifier_model(demo, tmp_path_factory) -> Path:
    spec, _ = demo
    return train_classifier(spec, SEED, tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="module")
def sance_scores(demo, classifier_model, tmp_path_factory) -> dict[str, float]:
    spec, manifest = demo
    return sance_pseudo_label_scores(spec, manifest, classifier_model, tmp_path_factory.mktemp("sance"), SEED)


def shortfalls(*checks: tuple[str, float, float, float]) -> list[str]:
    """The checks ``(metric, value, baseline, margin)`` whose value is below ``baseline + margin``."""
    return [f"{metric} {value:.4f} is not above the baseline {baseline:.4f} by the margin {margin:.2f} "
            f"(needs >= {baseline + margin:.4f})"
            for metric, value, baseline, margin in checks if not value >= baseline + margin]


def assert_learns(*checks: tuple[str, float, float, float]) -> None:
    failed = shortfalls(*checks)
    assert not failed, "the training no longer learns:\n" + "\n".join(failed)


def test_cam_classifier_learns(demo, classifier_model):
    spec, manifest = demo
    scores = cam_scores(load_trained_classifier(classifier_model, spec), spec, manifest)
    assert_learns(("train CAM mIoU", scores["cam_miou"], scores["label_only_miou"], CAM_MARGIN),
                  ("train image-level mAP", scores["map"], scores["label_prior"], MAP_MARGIN))


def test_supervised_segmenter_learns(demo):
    spec, manifest = demo
    scores = segmentation_scores(train_segmenter(spec, SEED), spec, manifest)
    assert_learns(("train segmenter mIoU", scores["miou"], scores["background_miou"], SEGMENTER_MARGIN))


def test_sance_pseudo_labels_learn(sance_scores):
    assert_learns(("train SANCE pseudo-label mIoU", sance_scores["pseudo_miou"], sance_scores["untrained_miou"],
                   SANCE_MARGIN))


@pytest.mark.xfail(strict=True, reason="issue 17: on the demo data the pseudo labels stay below the seeds they "
                                       "are trained from (docs/RESULTS.md); strict, so a fix shows up here")
def test_sance_pseudo_labels_beat_their_seeds(sance_scores):
    assert_learns(("train SANCE pseudo-label mIoU", sance_scores["pseudo_miou"], sance_scores["trivial_miou"], 0.0))
