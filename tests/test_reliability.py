"""Reliability (issue 8): what a user sees when the input, the config, a job, the numbers or a file
goes wrong, and that nothing is lost. docs/RELIABILITY.md maps every case to its test here.

1 bad data, 2 bad config, 3 crashes and restarts, 4 numerical faults, 5 untrusted files,
6 disk and memory at scale. Faults are injected only from here (patched functions in a test
process, a ``sitecustomize`` on PYTHONPATH of a test's Snakemake run); production code has no
test hooks.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import jsonschema
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_validate import cfg as validation_config
from test_validate import make_voc

from conftest import BIN, REPO, run_snakemake
from sance_core.config_checks import relation_errors, schema_error_message
from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.data.validate import ValidationConfig, validate_dataset
from sance_core.engine import CHECKPOINT_FILE, CheckpointManager, NonFiniteLossError
from sance_core.io.images import DataError, read_image
from sance_core.io.palette import save_label_png
from sance_core.io.store import ArtifactError, ArtifactReader, ArtifactWriter, remove_stale_temp_files
from sance_core.io.weights import load_model, save_model

SANCE_CORE = REPO / "sance_core"
SCHEMAS = REPO / "workflow" / "schemas"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _classifier_checkpoints_every_epoch() -> dict:
    """Settings that make the classifier checkpoint at every epoch end (the crash tests count on
    it); a time limit between its checkpoints (``checkpoint_interval``), where the classifier has
    one, is turned off."""
    schema = yaml.safe_load((SCHEMAS / "classifier.schema.yaml").read_text())
    return {"checkpoint_interval": 0} if "checkpoint_interval" in schema["properties"] else {}


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call of a function or method called ``name`` in sance_core, with its file."""
    found = []
    for path in sorted(SANCE_CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called == name:
                    found.append((path.relative_to(REPO), node))
    return found


# =============================================================================== 1. bad data


def test_every_bad_input_is_reported_at_once_with_file_and_reason(tmp_path):
    root = make_voc(tmp_path / "voc", n_train=7, n_val=2)
    jpeg, masks, lists = root / "JPEGImages", root / "SegmentationClass", root / "ImageSets/Segmentation"
    (jpeg / "t0.jpg").write_bytes((jpeg / "t0.jpg").read_bytes()[:200])  # truncated JPEG
    save_label_png(np.zeros((5, 5), np.uint8), masks / "t1.png")  # image t1 is 30x21
    save_label_png(np.full((22, 30), 7, np.uint8), masks / "t2.png")  # classes are 0..3
    (jpeg / "t3.jpg").unlink()  # listed id without a file
    (masks / "t4.png").write_bytes(b"not a png")
    (lists / "train.txt").write_text("\n".join([f"t{i}" for i in range(7)] + ["t5", "../x"]) + "\n")
    (lists / "val.txt").write_text("\n")  # empty split
    with pytest.raises(DataError) as err:
        validate_dataset(validation_config(root), tmp_path / "m.json")
    msg = str(err.value)
    expected = [
        "t0.jpg: unreadable or truncated image",
        "t1.png: mask size 5x5 differs from image size 30x21",
        "t2.png: class id(s) [7] outside 0..3",
        "t3.jpg: missing image file",
        "t4.png: unreadable mask",
        "id 't5' listed twice",
        "unsafe image id '../x'",
        "split 'val' lists no image",
    ]
    for text in expected:
        assert text in msg, f"{text!r} not in:\n{msg}"
    assert "has 8 problem(s)" in msg and "data.on_bad_image: skip" in msg
    assert not (tmp_path / "m.json").exists()

    # skip mode: the bad entries are dropped and listed in the manifest; an empty split stays fatal
    with pytest.raises(DataError, match="split 'val' lists no image"):
        validate_dataset(validation_config(root, on_bad_image="skip"), tmp_path / "m.json")
    (lists / "val.txt").write_text("v0\nv1\n")
    manifest = validate_dataset(validation_config(root, on_bad_image="skip"), tmp_path / "m.json")
    assert manifest.ids("train") == ["t5", "t6"] and manifest.ids("val") == ["v0", "v1"]
    skipped = json.loads((tmp_path / "m.json").read_text())["skipped"]
    assert sorted(s["image_id"] for s in skipped) == ["../x", "t0", "t1", "t2", "t3", "t4", "t5"]
    assert all(s["path"] and s["reason"] for s in skipped)


def test_grey_rgba_16bit_and_palette_images_are_read_not_rejected(tmp_path):
    root = tmp_path / "voc"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (6, 7), dtype=np.uint8)
    deep = rng.integers(0, 65536, (6, 7), dtype=np.uint16)
    alpha = np.full((6, 7), 255, np.uint8)
    alpha[:, :3] = 0  # left part fully transparent
    images = {
        "grey": Image.fromarray(grey, "L"),
        "rgba": Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
        "deep": Image.fromarray(deep),  # 16-bit greyscale ('I;16')
        "pal": Image.fromarray(rgb).convert("P"),
        "plain": Image.fromarray(rgb),
    }
    for image_id, img in images.items():
        img.save(root / "JPEGImages" / f"{image_id}.png")
        mask = np.zeros((6, 7), np.uint8)
        mask[2:4, 2:5] = 1
        save_label_png(mask, root / "SegmentationClass" / f"{image_id}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("grey\nrgba\ndeep\npal\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("plain\n")
    spec = DatasetSpec(root=str(root), classes=("background", "a"), image_ext=".png")
    manifest = validate_dataset(ValidationConfig("t", spec, ("train", "val")), tmp_path / "m.json")
    assert manifest.ids("train") == ["grey", "rgba", "deep", "pal"] and manifest.skipped == []
    assert all(e["height"] == 6 and e["width"] == 7 and e["labels"] == [1] for e in manifest.entries("train"))

    def read(image_id: str) -> np.ndarray:
        arr = read_image(spec.image_path(image_id))
        assert arr.shape == (6, 7, 3) and arr.dtype == np.uint8
        return arr

    np.testing.assert_array_equal(read("grey"), np.repeat(grey[:, :, None], 3, axis=2))
    rgba = read("rgba")
    np.testing.assert_array_equal(rgba[:, 3:], rgb[:, 3:])  # opaque pixels keep their colour
    assert (rgba[:, :3] == 255).all()  # transparent ones show the white background, as viewers do
    np.testing.assert_array_equal(read("deep")[:, :, 1], (deep / 65535 * 255 + 0.5).astype(np.uint8))
    np.testing.assert_array_equal(read("pal"), np.asarray(images["pal"].convert("RGB")))
    # a greyscale and a CMYK JPEG (both occur in COCO) come back as RGB too
    Image.fromarray(grey, "L").save(tmp_path / "g.jpg")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg")
    g = read_image(tmp_path / "g.jpg")
    assert g.shape == (6, 7, 3) and (g[:, :, 0] == g[:, :, 2]).all()
    assert read_image(tmp_path / "c.jpg").shape == (6, 7, 3)


def test_only_the_validation_reads_split_lists_so_stages_see_manifest_ids_only():
    """Skipped images never reach CAMs or training: every later stage takes its ids from the
    manifest (or from shard lists cut from it); only validation reads ImageSets or a tags file.
    The contour benchmark (contour_maps, edge_eval) reads its own id list (SBD's val.txt): images
    that are only scored, never trained on; dataset.label_source_files only names the label files
    the workflow makes inputs of validation."""
    allowed = {"sance_core/data/validate.py", "sance_core/data/shards.py", "sance_core/eval/edge_eval.py",
               "sance_core/stages/contour_maps.py", "sance_core/data/dataset.py"}
    callers = {str(path) for name in ("read_id_list", "split_path", "read_tags_csv") for path, _ in _calls(name)}
    assert callers <= allowed, f"new readers of split lists outside validation: {sorted(callers - allowed)}"
    assert "sance_core/data/validate.py" in callers


def _demo_data(workdir: Path, tiny_config: Path) -> list[str]:
    run_snakemake(workdir, "resources/tiny", "--cores", "1", "--configfile", str(tiny_config))
    return (workdir / "resources/tiny/ImageSets/Segmentation/train.txt").read_text().split()


def _own_dataset(tmp: Path) -> tuple[Path, Path]:
    """A small VOC-layout dataset of our own (no demo generation) and the config that points at it."""
    root = make_voc(tmp / "voc", n_train=6, n_val=2)
    config = tmp / "own.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"name": "own", "root": str(root), "classes": ["background", "a", "b", "c"]},
        "demo": {"enabled": False}, "shards": 2,
    }))
    return root, config


def test_a_bad_image_stops_the_workflow_before_training_and_skip_drops_it(workdir, tmp_path):
    root, own = _own_dataset(tmp_path)
    (root / "JPEGImages/t3.jpg").write_bytes(b"not a jpeg")
    proc = run_snakemake(workdir, "results/own/classifier/model.pt", "--cores", "1", "--configfile", str(own),
                         check=False)
    assert proc.returncode != 0
    log = (workdir / "logs/own/validate_dataset.log").read_text()
    assert "t3.jpg: unreadable or truncated image" in log and "on_bad_image: skip" in log
    assert not (workdir / "results/own/manifest.json").exists()
    assert not (workdir / "logs/own/train_classifier.log").exists()  # no training job started
    assert not (workdir / "results/own/classifier").exists()

    skip = tmp_path / "skip.yaml"
    skip.write_text(yaml.safe_dump({"data": {"on_bad_image": "skip"}}))
    shards = [f"results/own/shards/train/{k}-of-2.txt" for k in (1, 2)]
    run_snakemake(workdir, *shards, "--cores", "1", "--configfile", str(own), "--configfile", str(skip))
    manifest = json.loads((workdir / "results/own/manifest.json").read_text())
    assert [(s["image_id"], s["reason"].split(" (")[0]) for s in manifest["skipped"]] == [
        ("t3", "unreadable or truncated image")]
    kept = [e["id"] for e in manifest["splits"]["train"]]
    assert kept == ["t0", "t1", "t2", "t4", "t5"]
    shard_ids = [i for s in shards for i in (workdir / s).read_text().split()]
    assert sorted(shard_ids) == kept  # later stages get their ids from these lists
    assert "skipping bad input" in (workdir / "logs/own/validate_dataset.log").read_text()


def test_editing_a_mask_or_the_tags_after_validation_reruns_it(workdir, tmp_path):
    """Label sources are inputs of validate_dataset: a changed mask or tags file gives a new manifest
    (not 'Nothing to be done' with the old labels)."""
    root, own = _own_dataset(tmp_path)
    run_snakemake(workdir, "results/own/manifest.json", "--cores", "1", "--configfile", str(own))
    assert Manifest.load(workdir / "results/own/manifest.json").labels("train")["t0"] == [1]
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:15] = 3
    time.sleep(1.1)  # a newer modification time than the manifest's on any file system
    save_label_png(mask, root / "SegmentationClass/t0.png")
    dry = run_snakemake(workdir, "results/own/manifest.json", "--cores", "1", "--configfile", str(own), "-n")
    assert "validate_dataset" in dry.stdout
    run_snakemake(workdir, "results/own/manifest.json", "--cores", "1", "--configfile", str(own))
    assert Manifest.load(workdir / "results/own/manifest.json").labels("train")["t0"] == [3]

    tags = tmp_path / "tags.yaml"  # the README's tags-only layout: a tags table, no masks
    (root / "tags.csv").write_text("image,tags,split\nt0,a,train\nt1,b,train\nv0,a,val\n")
    tags.write_text(yaml.safe_dump({"data": {"name": "own", "format": "tags_csv", "tags_file": "tags.csv",
                                             "mask_dir": None, "labels": "file"}}))
    run_snakemake(workdir, "results/own/manifest.json", "--cores", "1", "--configfile", str(own), "--configfile", str(tags))
    assert Manifest.load(workdir / "results/own/manifest.json").labels("train") == {"t0": [1], "t1": [2]}
    time.sleep(1.1)
    (root / "tags.csv").write_text("image,tags,split\nt0,c,train\nt1,b,train\nv0,a,val\n")
    run_snakemake(workdir, "results/own/manifest.json", "--cores", "1", "--configfile", str(own), "--configfile", str(tags))
    assert Manifest.load(workdir / "results/own/manifest.json").labels("train") == {"t0": [3], "t1": [2]}


@pytest.mark.slow
def test_skipped_images_never_reach_the_classifier_cams_or_seeds(workdir, tiny_config, tmp_path):
    ids = _demo_data(workdir, tiny_config)
    victim = ids[0]
    mask = workdir / f"resources/tiny/SegmentationClass/{victim}.png"
    save_label_png(np.full((8, 8), 9, np.uint8), mask)  # wrong size and an unknown class
    skip = tmp_path / "skip.yaml"
    skip.write_text(yaml.safe_dump({"data": {"on_bad_image": "skip"}}))
    targets = [f"results/tiny/seeds/{k}-of-2.h5" for k in (1, 2)]
    run_snakemake(workdir, *targets, "--cores", "2", "--configfile", str(tiny_config), "--configfile", str(skip))
    manifest = Manifest.load(workdir / "results/tiny/manifest.json")
    assert [s["image_id"] for s in manifest.skipped] == [victim, victim]  # size and class id
    kept = manifest.ids("train")
    assert victim not in kept
    for stage in ("cam", "seeds"):
        stored = []
        for k in (1, 2):
            with ArtifactReader(workdir / f"results/tiny/{stage}/{k}-of-2.h5", expect_stage=stage) as r:
                stored += r.ids()
        assert sorted(stored) == sorted(kept), stage
    log = (workdir / "logs/tiny/train_classifier.log").read_text()
    assert f"on {len(kept)} images" in log


# =============================================================================== 2. bad config


def _schema_error(section: str, instance: dict) -> str:
    schema = yaml.safe_load((SCHEMAS / f"{section}.schema.yaml").read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(instance))
    assert error is not None, f"{instance} passed the {section} schema"
    return schema_error_message(None if section == "config" else section, error)


@pytest.mark.parametrize("section, instance, expected", [
    ("classifier", {"lrr": 0.1}, ["unknown config key(s) classifier.lrr", "allowed keys here: backbone, weights"]),
    ("config", {"shrads": 3}, ["unknown config key(s) shrads", "shards"]),
    ("sance", {"epochs": "ten"}, ["config key sance.epochs: 'ten' is not of type 'integer'"]),
    ("segmentation", {"lr": -0.1}, ["config key segmentation.lr: -0.1 is less than or equal to the minimum of 0"]),
    ("classifier", {"lr": 0}, ["config key classifier.lr: 0 is less than or equal to the minimum of 0"]),
    ("seeds", {"fg_threshold": 1.5}, ["config key seeds.fg_threshold: 1.5 is greater than the maximum of 1"]),
    ("seeds", {"crf": {"gt_prob": 1.0}}, ["config key seeds.crf.gt_prob"]),
    ("evaluation", {"cam_thresholds": [0.1, 1.2]}, ["config key evaluation.cam_thresholds[1]: 1.2"]),
    ("sance", {"online": {"tau_b": -0.5}}, ["config key sance.online.tau_b"]),
    ("pseudo_labels", {"tau_b": 1.5}, ["config key pseudo_labels.tau_b"]),
    ("cam", {"scales": []}, ["config key cam.scales: [] should be non-empty"]),
    ("pseudo_labels", {"scales": [1.0, 0]}, ["config key pseudo_labels.scales[1]"]),
    ("sance", {"backbone": "resnet19"},
     ["config key sance.backbone: 'resnet19' is not allowed; allowed values: "
      "'resnet10_w32', 'resnet10', 'resnet18', 'resnet34', 'resnet50', 'resnet101'"]),
    # mode names are free (Table 1 rows); their base modes are checked by config_checks.relation_errors
    ("config", {"modes": ["sance", "no way"]}, ["config key modes[1]: 'no way' does not match"]),
    ("segmentation", {"modes": ["g t"]}, ["config key segmentation.modes[0]: 'g t' does not match"]),
    ("pseudo_labels", {"map": {"irnet": "seg"}}, ["config key pseudo_labels.map.irnet", "allowed values: 'cam'"]),
    ("data", {"train_split": "train aug"}, ["config key data.train_split"]),
])
def test_schema_errors_name_the_key_path_and_what_is_allowed(section, instance, expected):
    message = _schema_error(section, instance)
    for text in expected:
        assert text in message, message


# through the real Snakemake (one of each kind; the schema cases above cover the rest in-process)
@pytest.mark.parametrize("override, expected", [
    ({"classifier": {"lrr": 0.1}}, "unknown config key(s) classifier.lrr; allowed keys here: backbone"),
    ({"sance": {"lr": -0.01}}, "config key sance.lr: -0.01 is less than or equal to the minimum of 0"),
    ({"segmentation": {"backbone": "vgg16"}}, "config key segmentation.backbone: 'vgg16' is not allowed; "
                                              "allowed values: 'resnet10_w32', 'resnet10', 'resnet18', 'resnet34'"),
    ({"seeds": {"fg_threshold": 0.1, "bg_threshold": 0.2}},
     "config keys seeds.bg_threshold (0.2) and seeds.fg_threshold (0.1): need bg_threshold <= fg_threshold"),
])
def test_config_mistakes_stop_snakemake_before_any_job(workdir, tmp_path, override, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(override))
    proc = run_snakemake(workdir, "all", "--cores", "1", "--configfile", str(bad), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert expected in out, out[-3000:]
    assert not any((workdir / d).exists() for d in ("resources", "results", "logs"))  # no job ran


def test_relations_between_keys_are_checked_before_any_job():
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    assert relation_errors(base) == []
    bad = json.loads(json.dumps(base))
    bad.setdefault("seeds", {}).update(fg_threshold=0.1, bg_threshold=0.2)  # config.yaml sets only demo departures
    bad["classifier"]["scale_range"] = [1.3, 0.7]
    bad["sance"].setdefault("paste", {})["rect_scale"] = [0.9, 0.4]
    bad["segmentation"].update(weights="imagenet.pth", init_from_classifier=True)
    bad["demo"].update(min_side=160, max_side=96)
    bad["sance"]["online"].update(refine="saliency", saliency_dir=None)
    bad["sance"]["backbone"] = "resnet18"  # init_from_classifier: true in config.yaml, classifier resnet10_w32
    errors = "\n".join(relation_errors(bad))
    for text in ("seeds.bg_threshold (0.2) and seeds.fg_threshold (0.1)",
                 "classifier.scale_range: [low, high] needs low <= high, got [1.3, 0.7]",
                 "sance.paste.rect_scale", "segmentation.weights and segmentation.init_from_classifier",
                 "demo.min_side (160) and demo.max_side (96)", "sance.online.saliency_dir",
                 "sance.backbone (resnet18) and classifier.backbone (resnet10_w32)"):
        assert text in errors, errors
    assert len(relation_errors(bad)) == 7
    empty = json.loads(json.dumps(base))
    empty["modes"], empty["segmentation"]["modes"] = [], []
    assert "both empty" in relation_errors(empty)[0]


def _schema_properties(schema: dict, prefix: str = "") -> list[tuple[str, dict]]:
    out = []
    for key, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}.{key}" if prefix else key
        out.append((path, sub))
        if "properties" in sub:
            out += _schema_properties(sub, path)
    return out


# arrays that may be empty on purpose: "no ids" = the first n_ids; no modes of one kind; no branch
# whose online label takes its background from the seeds (the paper's Eq. 7)
MAY_BE_EMPTY = {"report.ids.train", "report.ids.val", "modes", "segmentation.modes", "sance.online.seed_background"}


def test_every_schema_key_has_a_default_a_description_and_bounds():
    """The audit of workflow/schemas as a guard: a new key without bounds fails here."""
    problems = []
    for path in sorted(SCHEMAS.glob("*.schema.yaml")):
        schema = yaml.safe_load(path.read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema" and schema["additionalProperties"] is False
        section = path.name.split(".")[0]
        for key, sub in _schema_properties(schema, "" if section == "config" else section):
            kind = sub.get("type")
            where = f"{path.name}: {key}"
            if "default" not in sub or "description" not in sub:
                problems.append(f"{where} lacks a default or a description")
            if "properties" in sub and sub.get("additionalProperties") is not False:
                problems.append(f"{where}: object without additionalProperties: false")
            if kind in ("number", "integer") and not {"minimum", "exclusiveMinimum"} & set(sub):
                problems.append(f"{where}: number without a lower bound")
            leaf = key.rsplit(".", 1)[-1]
            if kind == "number" and (leaf == "lr" or leaf.endswith("_lr")) and sub.get("exclusiveMinimum") != 0:
                problems.append(f"{where}: a learning rate must be > 0")
            if kind == "number" and ("threshold" in leaf or leaf in ("tau_b", "gt_prob")):
                low = sub.get("minimum", sub.get("exclusiveMinimum"))
                high = sub.get("maximum", sub.get("exclusiveMaximum"))
                if low is None or high is None or low < 0 or high > 1:
                    problems.append(f"{where}: a threshold/probability must lie in [0, 1]")
            if kind == "array" and key not in MAY_BE_EMPTY and not sub.get("minItems"):
                problems.append(f"{where}: list without minItems")
            if kind == "string" and not {"enum", "pattern", "minLength"} & set(sub):
                problems.append(f"{where}: free string (add minLength, a pattern or an enum)")
            if "enum" not in sub and leaf in ("backbone", "mode", "refine", "fusion", "format", "labels"):
                problems.append(f"{where}: a name without an enum of the allowed values")
    assert not problems, "\n".join(problems)


# =============================================================================== 3. crashes and restarts

# Runs `sance` in a child process; SANCE_TEST_KILL makes the child SIGKILL itself at a chosen
# point (the same signal `kill -9`, the OOM killer or a scheduler sends): "step:N" when iteration
# N starts (mid-epoch), "history:N" inside the N-th save of the resume history.
_KILLABLE_SANCE = textwrap.dedent("""
    import os, signal, sys
    spec = os.environ.get("SANCE_TEST_KILL", "")
    if spec:
        what, n = spec.split(":")
        n = int(n)
        from sance_core.engine import history, loop
        if what == "step":
            _poly = loop.set_poly_lr
            def set_poly_lr(optimizer, step, total, power=0.9, warmup_steps=0):
                if step == n:
                    os.kill(os.getpid(), signal.SIGKILL)
                return _poly(optimizer, step, total, power, warmup_steps)
            loop.set_poly_lr = set_poly_lr
        elif what == "history":
            _save, calls = history.History.save, []
            def save(self, path=None):
                if path is not None and ".resume" in str(path):
                    calls.append(path)
                    if len(calls) == n:
                        os.kill(os.getpid(), signal.SIGKILL)
                return _save(self, path)
            history.History.save = save
    from sance_core.cli import main
    sys.exit(main(sys.argv[1:]))
""")


CLASSIFIER_OUTPUTS = {"model": "model.pt", "config": "config.json", "history": "history.csv", "curve": "curve.png"}


def _classifier_params(tmp: Path, out: Path) -> dict:
    from test_classifier import make_dataset

    if not (tmp / "data").exists():
        make_dataset(tmp / "data", n=6)  # 6 images, batch 2: 3 steps per epoch, 9 in all
    return {
        "dataset": {"root": str(tmp / "data"), "classes": ["background", "a", "b", "c"]},
        "backbone": "resnet18", "weights": None, "zero_init_residual": True, "scale_range": [0.7, 1.3],
        "epochs": 3, "batch_size": 2, "crop_size": 32, "lr": 0.01, "seed": 3, "device": "cpu",
        "resume_dir": str(out / ".resume"), **_classifier_checkpoints_every_epoch(),
    }


def _train_classifier_process(tmp: Path, name: str, kill: str | None = None) -> tuple[subprocess.CompletedProcess, Path]:
    """``sance run train_classifier`` in a child process; outputs in ``tmp/name``, resume dir ``tmp/name/.resume``."""
    out = tmp / name
    out.mkdir(exist_ok=True)
    (out / "params.yaml").write_text(yaml.safe_dump(_classifier_params(tmp, out)))
    cmd = [sys.executable, "-c", _KILLABLE_SANCE, "--log", str(out / "train.log"), "run", "train_classifier",
           "--params", str(out / "params.yaml"), "-i", f"manifest={tmp / 'data/manifest.json'}",
           *[a for key, file in CLASSIFIER_OUTPUTS.items() for a in ("-o", f"{key}={out / file}")]]
    env = dict(os.environ, SANCE_TEST_KILL=kill or "", OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env), out


def _train_classifier_here(tmp: Path, name: str) -> Path:
    """The same run, uninterrupted, in this process (one thread, as the child): the reference."""
    from sance_core.stages import run_stage

    out = tmp / name
    run_stage("train_classifier", _classifier_params(tmp, out), {"manifest": str(tmp / "data/manifest.json")},
              {key: str(out / file) for key, file in CLASSIFIER_OUTPUTS.items()})
    return out


def _history(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _assert_same_model_and_history(out: Path, reference: Path) -> None:
    a = torch.load(reference / "model.pt", weights_only=True)
    b = torch.load(out / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # exactly equal, not only close
    assert _history(out / "history.csv") == _history(reference / "history.csv")  # same steps, same losses
    assert len(_history(out / "history.csv")) == 9


def test_a_killed_training_resumes_from_its_checkpoint_to_the_same_model(tmp_path):
    """kill -9 in the middle of epoch 2; the rerun resumes at the end of epoch 1 (step 3) and ends
    bit-identical to an uninterrupted run with the same seed (CPU, one thread)."""
    first, out = _train_classifier_process(tmp_path, "crashed", kill="step:4")
    assert first.returncode == -signal.SIGKILL
    assert (out / ".resume" / CHECKPOINT_FILE).is_file() and not (out / "model.pt").exists()
    assert torch.load(out / ".resume" / CHECKPOINT_FILE, weights_only=True)["step"] == 3  # steps 4.. are redone

    rerun, _ = _train_classifier_process(tmp_path, "crashed")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert "resumed from" in log and "at step 3 (epoch 0)" in log
    _assert_same_model_and_history(out, _train_classifier_here(tmp_path, "reference"))
    assert not (out / ".resume" / CHECKPOINT_FILE).exists()  # cleared once the model is saved


def test_a_checkpoint_of_other_data_is_not_resumed_and_the_log_says_why(tmp_path):
    """Killed mid-training; then the dataset changes (one image's tags): the rerun does not resume the
    old checkpoint but starts over, says which input changed, and ends with the model of an
    uninterrupted run on the new data."""
    first, out = _train_classifier_process(tmp_path, "crashed", kill="step:4")
    assert first.returncode == -signal.SIGKILL and (out / ".resume" / CHECKPOINT_FILE).is_file()
    manifest = Manifest.load(tmp_path / "data/manifest.json")
    entry = manifest.splits["train"][0]
    entry["labels"] = [1] if entry["labels"] != [1] else [2]
    manifest.save(tmp_path / "data/manifest.json")

    rerun, _ = _train_classifier_process(tmp_path, "crashed")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert "was trained on other data (changed input(s): manifest); not resuming it, training starts over" in log
    assert "resumed from" not in log
    _assert_same_model_and_history(out, _train_classifier_here(tmp_path, "reference"))


def test_checkpoint_data_keys_name_each_changed_input(tmp_path, caplog):
    from sance_core.engine import CheckpointManager, input_fingerprint

    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds/0-of-1.h5").write_bytes(b"seeds v1")
    _small_voc(tmp_path / "voc")
    inputs = {"manifest": str(tmp_path / "voc/manifest.json"), "seeds": [str(tmp_path / "seeds/0-of-1.h5")]}
    before = input_fingerprint(inputs)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    CheckpointManager(tmp_path / "r", {"lr": 0.1}, before).save(3, 0, model, opt)
    assert CheckpointManager(tmp_path / "r", {"lr": 0.1}, input_fingerprint(inputs)).load_latest(model, opt)["step"] == 3
    (tmp_path / "seeds/0-of-1.h5").write_bytes(b"seeds v2")
    after = input_fingerprint(inputs)
    assert after["manifest"] == before["manifest"] and after["seeds"] != before["seeds"]
    assert CheckpointManager(tmp_path / "r", {"lr": 0.1}, after).load_latest(model, opt) is None
    assert "changed input(s): seeds" in caplog.text and not (tmp_path / "r" / CHECKPOINT_FILE).exists()


@pytest.mark.slow
def test_a_kill_between_history_and_checkpoint_leaves_them_consistent(tmp_path):
    """Killed mid-epoch, then killed again while saving the resume history of epoch 2 (before its
    checkpoint): the checkpoint stays at step 3 and the history keeps only rows up to it, so the
    third run still ends with the uninterrupted run's model and all 9 history rows."""
    first, out = _train_classifier_process(tmp_path, "crashed", kill="step:4")
    assert first.returncode == -signal.SIGKILL
    second, _ = _train_classifier_process(tmp_path, "crashed", kill="history:1")  # at the step-6 save
    assert second.returncode == -signal.SIGKILL
    assert torch.load(out / ".resume" / CHECKPOINT_FILE, weights_only=True)["step"] == 3
    third, _ = _train_classifier_process(tmp_path, "crashed")
    assert third.returncode == 0, third.stderr[-3000:]
    assert (out / "train.log").read_text().count("at step 3 (epoch 0)") == 2
    _assert_same_model_and_history(out, _train_classifier_here(tmp_path, "reference"))


_FAIL_ONCE_SITECUSTOMIZE = textwrap.dedent('''
    """Test-only fault injection (tests/test_reliability.py): the first run of one stage fails."""
    import os
    _spec = os.environ.get("SANCE_TEST_FAIL_ONCE")
    if _spec:
        _stage, _marker = _spec.split(":", 1)
        import sance_core.stages as _stages
        _run_stage = _stages.run_stage

        def run_stage(name, *args, **kwargs):
            if name == _stage and not os.path.exists(_marker):
                open(_marker, "w").close()
                raise RuntimeError(f"injected transient fault in stage {name}")
            return _run_stage(name, *args, **kwargs)

        _stages.run_stage = run_stage
''')


def test_retries_rerun_a_job_that_failed_once(workdir, tiny_config, tmp_path, monkeypatch):
    """A transient failure (node trouble, a full /tmp...) with --retries 1: the second attempt
    succeeds; without retries the run stops with the job's error in its log."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(_FAIL_ONCE_SITECUSTOMIZE)
    # the fault injector first, then the checkout under test (not whatever copy is installed)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(inject), str(REPO)]))
    targets = [f"results/tiny/shards/{s}/{k}-of-2.txt" for s in ("train", "val") for k in (1, 2)]
    monkeypatch.setenv("SANCE_TEST_FAIL_ONCE", f"shard_ids:{tmp_path / 'failed-once-a'}")
    proc = run_snakemake(workdir, *targets, "--cores", "1", "--configfile", str(tiny_config), check=False)
    assert proc.returncode != 0 and (tmp_path / "failed-once-a").exists()
    logs = "".join(p.read_text() for p in (workdir / "logs/tiny").glob("shard_ids_*.log"))
    assert "injected transient fault in stage shard_ids" in logs

    monkeypatch.setenv("SANCE_TEST_FAIL_ONCE", f"shard_ids:{tmp_path / 'failed-once-b'}")
    proc = run_snakemake(workdir, *targets, "--cores", "1", "--retries", "1", "--configfile", str(tiny_config))
    assert (tmp_path / "failed-once-b").exists()  # the fault did happen in this run
    out = proc.stdout + proc.stderr
    assert "injected transient fault in stage shard_ids" in out and "Trying to restart job" in out, out[-3000:]
    assert all((workdir / t).is_file() for t in targets)


def _snakemake_popen(workdir: Path, log: Path, *args: str, configfiles: list[Path]) -> subprocess.Popen:
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args,
           "--configfile", str(REPO / "config.yaml"), *map(str, configfiles)]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 600, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {what}")
        if time.monotonic() > end:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _runs_rule(pid: int, rule: str) -> bool:
    """Whether process ``pid`` is the job of ``rule``: every rule runs the same script, so the job
    is told apart by the rule's log file (logs/<name>/<rule>.log) that it holds open."""
    if "run_stage.py" not in _cmdline(pid):
        return False
    try:
        return any(Path(fd.readlink()).name == f"{rule}.log" for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="walks /proc")
def test_a_training_job_killed_in_the_workflow_resumes_on_rerun(workdir, tiny_config, tmp_path):
    """kill -9 of the train_classifier job (not of Snakemake) after its first checkpoint: Snakemake
    reports the failure; the rerun resumes at that checkpoint and ends with the uninterrupted model."""
    longer = tmp_path / "longer.yaml"
    # 12 images, batch 4: 12 steps
    longer.write_text(yaml.safe_dump({"classifier": {"epochs": 4, **_classifier_checkpoints_every_epoch()}}))
    configs = [tiny_config, longer]
    reference = tmp_path / "reference"
    reference.mkdir()
    target = "results/tiny/classifier/model.pt"
    run_snakemake(reference, target, "--cores", "1", *[a for c in configs for a in ("--configfile", str(c))])

    _demo_data(workdir, tiny_config)
    checkpoint = workdir / "results/tiny/.resume/classifier" / CHECKPOINT_FILE
    proc = _snakemake_popen(workdir, tmp_path / "run1.log", target, "--cores", "1", configfiles=configs)
    jobs: list[int] = []

    def job_started() -> bool:
        jobs[:] = [p for p in _descendants(proc.pid) if _runs_rule(p, "train_classifier")]
        return bool(jobs)
    _wait_for(job_started, proc, what="the training job")
    _wait_for(checkpoint.exists, proc, what="the first checkpoint")
    for pid in jobs:
        os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=300) != 0
    assert not (workdir / target).exists()
    killed_at = torch.load(checkpoint, weights_only=True)["step"]
    assert 0 < killed_at < 12
    print(f"\ntrain_classifier killed with its checkpoint at step {killed_at} of 12")

    run_snakemake(workdir, target, "--cores", "1", *[a for c in configs for a in ("--configfile", str(c))])
    log = (workdir / "logs/tiny/train_classifier.log").read_text()
    assert f"at step {killed_at} " in log.split("resumed from")[-1]
    a = torch.load(reference / target, weights_only=True)
    b = torch.load(workdir / target, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(_history(workdir / "results/tiny/classifier/history.csv")) == 12


@pytest.mark.slow
def test_a_killed_cam_extraction_leaves_no_accepted_file_and_the_rerun_completes(workdir, tiny_config, tmp_path):
    """kill -9 of Snakemake and its jobs while CAM shards are written (a node crash): no shard a
    later stage would accept as complete; --unlock, then --rerun-incomplete fills them all."""
    config_args = ["--configfile", str(tiny_config)]
    run_snakemake(workdir, "results/tiny/classifier/model.pt", "--cores", "1", *config_args)
    cam_dir = workdir / "results/tiny/cam"
    shards = [f"results/tiny/cam/{k}-of-2.h5" for k in (1, 2)]
    proc = _snakemake_popen(workdir, tmp_path / "run1.log", *shards, "--cores", "1", configfiles=[tiny_config])
    _wait_for(lambda: cam_dir.is_dir() and any(p.name.startswith(".") for p in cam_dir.iterdir()), proc,
              what="a CAM shard being written")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    partial = [p for p in cam_dir.iterdir() if ".tmp" in p.name]
    assert partial, "the kill came after the shard was written"
    for path in cam_dir.iterdir():
        if ".tmp" in path.name:
            with pytest.raises(ArtifactError):
                ArtifactReader(path, expect_stage="cam").ids()  # incomplete: refused
        else:
            assert ArtifactReader(path, expect_stage="cam").attrs["complete"]  # only finished files

    locked = run_snakemake(workdir, *shards, "--cores", "1", *config_args, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr  # what the user is told
    run_snakemake(workdir, *shards, "--unlock", *config_args)
    run_snakemake(workdir, *shards, "--cores", "1", "--rerun-incomplete", *config_args)
    manifest = Manifest.load(workdir / "results/tiny/manifest.json")
    stored = []
    for shard in shards:
        with ArtifactReader(workdir / shard, expect_stage="cam") as reader:
            assert reader.attrs["complete"]
            stored += reader.ids()
        _assert_no_pickles(workdir / shard)
    assert sorted(stored) == sorted(manifest.ids("train"))
    assert not [p for p in cam_dir.iterdir() if ".tmp" in p.name]  # the partial files were removed


def test_stale_partial_files_are_removed_when_their_output_is_written_again(tmp_path):
    path = tmp_path / "1-of-2.h5"
    stale = [tmp_path / ".1-of-2.h5.tmp-4242", tmp_path / ".1-of-2.h5.tmp-99"]
    for p in stale:
        p.write_bytes(b"partial")
    (tmp_path / ".2-of-2.h5.tmp-4242").write_bytes(b"another output's")
    with ArtifactWriter(path, "cam") as w:
        w.add("a", {"x": np.zeros((2, 2), np.float32)})
    assert not any(p.exists() for p in stale) and (tmp_path / ".2-of-2.h5.tmp-4242").exists()
    assert remove_stale_temp_files(tmp_path / "nowhere" / "x.h5") == []
    # model files and checkpoints too (a killed save of a ResNet-101 checkpoint is ~0.5 GB)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / ".model.pt.tmp-77").write_bytes(b"partial")
    save_model(torch.nn.Linear(2, 1), {"kind": "x"}, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.pt"]


# =============================================================================== 4. numerical faults


def _count_optimizer_steps(monkeypatch) -> list[int]:
    """Patch SGD.step to record its calls; returns the (growing) list of calls."""
    calls: list[int] = []
    original = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.SGD, "step", step)
    return calls


def _nan_at(n: int, fn):
    """``fn`` whose n-th call (0-based) returns NaN; the training loops call their loss once per iteration."""
    calls = []

    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        calls.append(1)
        if len(calls) - 1 == n:
            if isinstance(out, tuple):  # training_step: (loss, terms, logs)
                loss, terms, logs = out
                terms = {**terms, "cam_seg": terms["cam_seg"] * float("nan")}
                return loss * float("nan"), terms, logs
            return out * float("nan")
        return out
    return wrapped


def _classifier_run(tmp: Path, monkeypatch):
    from test_classifier import make_dataset, small_config

    import sance_core.stages.classifier as clf

    spec, manifest = make_dataset(tmp / "data", n=6)
    cfg = small_config(spec, epochs=3, resume_dir=str(tmp / "resume"),  # 3 steps per epoch
                       **_classifier_checkpoints_every_epoch())
    monkeypatch.setattr(clf.F, "multilabel_soft_margin_loss", _nan_at(4, clf.F.multilabel_soft_margin_loss))
    return lambda: clf.train(cfg, clf.load_training_set(cfg, manifest)), 3, "loss=nan"


def _sance_run(tmp: Path, monkeypatch):
    from test_sance_training import _cfg, _tiny_set

    import sance_core.stages.sance as st

    ds, ids, tags, seeds = _tiny_set(tmp)
    cfg = _cfg(dataset=ds, mode="sance", epochs=3, resume_dir=str(tmp / "resume"))  # 4 images, batch 2
    monkeypatch.setattr(st, "training_step", _nan_at(3, st.training_step))
    return lambda: st.train(cfg, st.SanceData(cfg, ids, tags, [str(seeds)])), 2, "cam_seg=nan"


def _deeplab_run(tmp: Path, monkeypatch):
    import sance_core.stages.segmenter as seg

    root = tmp / "data"
    _small_voc(root)
    cfg = seg.SegmenterConfig(dataset=DatasetSpec(root=str(root), classes=("background", "a")), mode="fully_supervised",
                              label_source="ground_truth", weights=None, frozen_bn=False, iterations=6, batch_size=2,
                              crop_size=32, rates=(1, 2),
                              checkpoint_every=2, device="cpu", resume_dir=str(tmp / "resume"))
    monkeypatch.setattr(seg, "segmentation_loss", _nan_at(3, seg.segmentation_loss))
    return lambda: seg.train(cfg, seg.load_training_set(cfg, root / "manifest.json", None)), 2, "cross_entropy=nan"


def _small_voc(root: Path, n: int = 4, classes: tuple[str, ...] = ("background", "a")) -> None:
    """n images 40x48 with a square of class 1, masks, a manifest (train = all) and a shard list."""
    rng = np.random.default_rng(0)
    for d in ("JPEGImages", "SegmentationClass"):
        (root / d).mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        image = rng.integers(0, 60, (40, 48, 3), dtype=np.uint8)
        mask = np.zeros((40, 48), np.uint8)
        mask[8:24, 10:30] = 1
        image[8:24, 10:30] = (200, 50, 50)
        Image.fromarray(image).save(root / "JPEGImages" / f"im{i}.jpg")
        save_label_png(mask, root / "SegmentationClass" / f"im{i}.png")
        entries.append({"id": f"im{i}", "height": 40, "width": 48, "labels": [1], "has_mask": True})
    Manifest("t", str(root), list(classes), {"train": entries, "val": entries}).save(root / "manifest.json")
    (root / "shard.txt").write_text("".join(f"im{i}\n" for i in range(n)))


@pytest.mark.parametrize("make_run", [_classifier_run, _sance_run, _deeplab_run], ids=["classifier", "sance", "deeplab"])
def test_a_nan_loss_stops_training_before_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, make_run):
    run, checkpoint_step, term = make_run(tmp_path, monkeypatch)
    steps = _count_optimizer_steps(monkeypatch)
    nan_iteration = {3: 4, 2: 3}[checkpoint_step]
    with pytest.raises(NonFiniteLossError, match=rf"non-finite loss at iteration {nan_iteration}: .*{term}") as err:
        run()
    assert "last good checkpoint is kept" in str(err.value)
    assert len(steps) == nan_iteration  # iterations 0..n-1 stepped; the NaN one never reached the optimizer
    state = torch.load(tmp_path / "resume" / CHECKPOINT_FILE, weights_only=True)
    assert state["step"] == checkpoint_step  # nothing saved after the NaN
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_an_exploding_learning_rate_never_leaves_a_non_finite_checkpoint(tmp_path):
    """lr 1000: the weights overflow while the loss of the iteration is still finite (here: after
    iteration 6, at the end of epoch 2). Training stops; the checkpoint stays the finite one of
    epoch 1 and no model file is written (without the weight check it held inf/NaN weights)."""
    from test_classifier import make_dataset, small_config

    import sance_core.stages.classifier as clf

    spec, manifest = make_dataset(tmp_path / "data", n=6)
    cfg = small_config(spec, epochs=3, lr=1000.0, resume_dir=str(tmp_path / "resume"),
                       **_classifier_checkpoints_every_epoch())
    outputs = {k: str(tmp_path / "out" / f) for k, f in (
        ("model", "model.pt"), ("config", "config.json"), ("history", "history.csv"), ("curve", "curve.png"))}
    with pytest.raises(NonFiniteLossError, match="non-finite .*the last good checkpoint is kept"):
        clf.run_stage(cfg, {"manifest": str(manifest)}, outputs)
    assert not (tmp_path / "out" / "model.pt").exists()
    state = torch.load(tmp_path / "resume" / CHECKPOINT_FILE, weights_only=True)
    assert state["step"] in (3, 6)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_non_finite_weights_are_refused_by_checkpoint_and_model_saves(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    manager = CheckpointManager(tmp_path / "resume", {"a": 1})
    manager.save(5, 0, model, opt)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    expected = r"non-finite weights after iteration 6 \(weight\).*last good checkpoint is kept"
    with pytest.raises(NonFiniteLossError, match=expected):
        manager.save(6, 0, model, opt)
    assert torch.load(manager.path, weights_only=True)["step"] == 5
    with pytest.raises(NonFiniteLossError, match="refusing to save a model with non-finite weights"):
        save_model(model, {"kind": "x"}, tmp_path / "model")
    assert not (tmp_path / "model" / "model.pt").exists()


def test_empty_seeds_give_finite_losses_and_a_finite_training_step():
    """An image where no pixel is confident (seeds all 255) must not crash or NaN the losses."""
    from test_sance_training import _batch, _cfg

    from sance_core.ops.losses import contour_loss, segmentation_loss
    from sance_core.stages.sance import build_model, training_step

    contour = torch.rand(2, 8, 8, requires_grad=True)
    seeds = torch.full((2, 8, 8), 255, dtype=torch.long)
    for loss in (contour_loss(contour, seeds, 3, 1.0), segmentation_loss(torch.randn(2, 3, 8, 8, requires_grad=True), seeds)):
        assert torch.isfinite(loss) and loss.item() == 0.0
        loss.backward()
    assert torch.isfinite(contour.grad).all()

    for mode in ("irnet", "sance_naive", "sance"):
        torch.manual_seed(0)
        cfg = _cfg(mode=mode)
        model = build_model(cfg)
        batch = _batch()
        batch["seed"][:] = 255
        loss, terms, _ = training_step(cfg, model, batch, online_on=True)
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in terms.values()), (mode, terms)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), mode


def test_a_training_set_without_any_confident_seed_trains_without_nan(tmp_path):
    from test_sance_training import _cfg, _tiny_set

    from sance_core.stages.sance import SanceData, train

    ds, ids, tags, _ = _tiny_set(tmp_path)
    empty = tmp_path / "empty_seeds.h5"
    with ArtifactReader(tmp_path / "seeds.h5") as src, ArtifactWriter(empty, stage="seeds") as w:
        for image_id in src.ids():
            w.add(image_id, {"seed": np.full_like(src.read(image_id, "seed"), 255)})
    cfg = _cfg(dataset=ds, mode="sance", epochs=1)
    model, metrics = train(cfg, SanceData(cfg, ids, tags, [str(empty)]))
    assert metrics["step"] == 2 and np.isfinite(metrics["loss"])
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())


# =============================================================================== 5. untrusted files


def test_every_torch_load_in_sance_core_is_weights_only():
    calls = [(path, node) for path, node in _calls("load")
             if isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", None) == "torch"]
    assert calls, "no torch.load found: the scan is broken"
    for path, node in calls:
        kw = {k.arg: k.value for k in node.keywords}
        assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
            f"{path}:{node.lineno}: torch.load without weights_only=True"


def test_every_non_strict_state_dict_load_checks_missing_and_unexpected_keys():
    """strict=False is only allowed where the caller unpacks (missing, unexpected) and raises on them."""
    found = 0
    for path in sorted(SANCE_CORE.rglob("*.py")):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                    and getattr(node.value.func, "attr", None) == "load_state_dict"):
                continue
            strict = {k.arg: k.value for k in node.value.keywords}.get("strict")
            if not (isinstance(strict, ast.Constant) and strict.value is False):
                continue
            found += 1
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            assert isinstance(node.targets[0], ast.Tuple), f"{where}: the missing/unexpected keys are dropped"
            names = [t.id for t in node.targets[0].elts]
            after = "\n".join(source.splitlines()[node.lineno:node.lineno + 8])
            assert "raise" in after and all(n in after for n in names), f"{where}: key mismatches are not an error"
    unchecked = [(p, n.lineno) for p, n in _calls("load_state_dict")
                 if any(k.arg == "strict" and isinstance(k.value, ast.Constant) and k.value.value is False
                        for k in n.keywords)]
    assert len(unchecked) == found, f"strict=False loads whose result is not unpacked: {unchecked}"


class _Payload:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_bearing_model_or_checkpoint_is_refused_without_running_it(tmp_path):
    import pickle

    from sance_core.models.backbones import ResNetBackbone

    marker = tmp_path / "code-ran"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    torch.save({"weight": torch.zeros(2), "x": _Payload(marker)}, model_dir / "model.pt")
    (model_dir / "config.json").write_text("{}")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_model(model_dir)
    resume = tmp_path / "resume"
    resume.mkdir()
    torch.save({"step": 1, "model": _Payload(marker)}, resume / CHECKPOINT_FILE)
    with pytest.raises(pickle.UnpicklingError):
        CheckpointManager(resume).load_latest(torch.nn.Linear(1, 1))
    torch.save({"conv1.weight": _Payload(marker)}, tmp_path / "imagenet.pth")
    with pytest.raises(pickle.UnpicklingError):
        ResNetBackbone("resnet18", str(tmp_path / "imagenet.pth"))
    assert not marker.exists()


def _assert_no_pickles(path: Path) -> None:
    """Every dataset is a plain numeric array; every attribute a number, bool, string or numeric
    array (lists and dicts as JSON text): nothing HDF5 would store as opaque bytes or objects."""
    def check_attrs(obj, where):
        for key in obj.attrs:
            dtype = obj.attrs.get_id(key).dtype
            is_text = h5py.check_string_dtype(dtype) is not None
            assert is_text or dtype.kind in "biuf", f"{path}:{where}@{key} has dtype {dtype}"
            value = obj.attrs[key]
            if isinstance(value, bytes):
                assert not value.startswith(b"\x80"), f"{path}:{where}@{key} looks like a pickle"

    with h5py.File(path, "r") as f:
        check_attrs(f, "/")

        def visit(name, obj):
            check_attrs(obj, name)
            if isinstance(obj, h5py.Dataset):
                assert obj.dtype.kind in "biuf" and obj.dtype.kind != "O", f"{path}:{name} has dtype {obj.dtype}"
        f.visititems(visit)


def test_artifacts_hold_no_pickles_whatever_the_attribute_types(tmp_path):
    path = tmp_path / "a.h5"
    odd = {"size": [3, 4], "class_keys": [1, 5], "stride": 4, "tau_b": 0.25, "flip": True, "name": "x",
           "nested": {"a": [1, {"b": None}]}, "names": ["a", "b"], "none": None, "path": tmp_path,
           "scales": (1.0, 0.5), "np": np.float32(2.5), "arr": np.arange(3)}
    with ArtifactWriter(path, "cam", {"cfg": 1}, attrs=odd) as w:
        w.add("img", {"cam": np.random.rand(2, 3, 4), "label": np.zeros((3, 4), np.int64), "mask": np.ones((3, 4), bool)},
              attrs=odd)
    _assert_no_pickles(path)
    reader = ArtifactReader(path, "cam")
    back = reader.image_attrs("img")
    assert back["nested"] == {"a": [1, {"b": None}]} and back["names"] == ["a", "b"] and back["none"] is None
    assert back["path"] == str(tmp_path)  # an object becomes its text, never a pickle
    reader.close()
    with pytest.raises(TypeError):  # object arrays have no HDF5 type: refused, not pickled
        with ArtifactWriter(tmp_path / "b.h5", "cam") as w:
            w.add("img", {"x": np.array([object()], dtype=object)})
    assert not list(tmp_path.glob("*b.h5*"))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """A classifier, a SANCE model and a DeepLab, each saved by its stage's own functions (random init)."""
    from sance_core.models import build_sance_model
    from sance_core.models.classifier import CAMClassifier
    from sance_core.models.deeplab import DeepLabV2
    from sance_core.stages.classifier import ClassifierConfig
    from sance_core.stages.classifier import model_config as classifier_config
    from sance_core.stages.sance import SanceConfig
    from sance_core.stages.sance import model_config as sance_config
    from sance_core.stages.segmenter import SegmenterConfig
    from sance_core.stages.segmenter import model_config as deeplab_config

    tmp = tmp_path_factory.mktemp("models")
    _small_voc(tmp / "data", n=2, classes=("background", "a", "b"))
    spec = DatasetSpec(root=str(tmp / "data"), classes=("background", "a", "b"))
    torch.manual_seed(0)
    config = classifier_config(ClassifierConfig(dataset=spec, backbone="resnet18", weights=None))
    save_model(CAMClassifier(2, "resnet18"), config, tmp / "classifier")
    save_model(build_sance_model(3, "resnet18", 16, seg_branch=True, aspp_rates=(1, 2)),
               sance_config(SanceConfig(dataset=spec, mode="sance", backbone="resnet18", output_stride=16,
                                        aspp_rates=(1, 2))), tmp / "sance")
    save_model(DeepLabV2(3, "resnet18", None, 16, (1, 2)),
               deeplab_config(SegmenterConfig(dataset=spec, mode="sance", backbone="resnet18", weights=None, frozen_bn=False,
                                              output_stride=16,
                                              rates=(1, 2))), tmp / "deeplab")
    return tmp


def _swap_config(models: Path, name: str, tmp: Path, **changes) -> Path:
    """A copy of a saved model whose config.json claims other settings than its weights have."""
    out = tmp / f"{name}-swapped"
    out.mkdir()
    (out / "model.pt").write_bytes((models / name / "model.pt").read_bytes())
    config = json.loads((models / name / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, **changes}))
    return out


OTHER_CLASSES = ["background", "a", "x"]


@pytest.mark.parametrize("case", ["classes", "backbone", "weights"])
def test_a_classifier_of_another_config_is_refused_by_the_cam_stage(models_dir, tmp_path, case):
    from sance_core.stages.cam import CAMConfig, run_stage

    data = models_dir / "data"
    classes, backbone, model = ["background", "a", "b"], "resnet18", models_dir / "classifier"
    if case == "classes":
        classes = OTHER_CLASSES
    elif case == "backbone":
        backbone = "resnet34"
    else:  # the weights of a resnet18 under a config.json that says resnet34
        model = _swap_config(models_dir, "classifier", tmp_path, backbone="resnet34")
        backbone = "resnet34"
    cfg = CAMConfig(dataset=DatasetSpec(root=str(data), classes=tuple(classes)), backbone=backbone, device="cpu")
    expected = {"classes": r"classes=\['background', 'a', 'b'\].*was expected", "backbone": "backbone='resnet18'",
                "weights": "the weights do not fit the model its config.json describes"}[case]
    with pytest.raises(ValueError, match=expected):
        manifest = data / "manifest.json"
        if case == "classes":  # the manifest of the other class list
            Manifest("t", str(data), OTHER_CLASSES, Manifest.load(manifest).splits).save(tmp_path / "m.json")
            manifest = tmp_path / "m.json"
        run_stage(cfg, {"shard": str(data / "shard.txt"), "model": str(model / "model.pt"), "manifest": str(manifest)},
                  {"cam": str(tmp_path / "cam.h5")})
    assert not list(tmp_path.glob("*cam.h5*"))


@pytest.mark.parametrize("case", ["classes", "mode", "weights"])
def test_a_sance_model_of_another_config_is_refused_by_the_pseudo_label_maps(models_dir, tmp_path, case):
    from sance_core.stages.pseudo_labels import MapsConfig, run_infer_maps

    data = models_dir / "data"
    classes, mode, model = ("background", "a", "b"), "sance", models_dir / "sance"
    manifest = data / "manifest.json"
    if case == "classes":
        classes = tuple(OTHER_CLASSES)
        Manifest("t", str(data), OTHER_CLASSES, Manifest.load(manifest).splits).save(tmp_path / "m.json")
        manifest = tmp_path / "m.json"
    elif case == "mode":
        mode = "sance_naive"
    else:
        model = _swap_config(models_dir, "sance", tmp_path, backbone="resnet34")
    expected = {"classes": "classes=", "mode": "mode='sance'.*mode='sance_naive' was expected",
                "weights": "the weights do not fit the model its config.json describes"}[case]
    cfg = MapsConfig(dataset=DatasetSpec(root=str(data), classes=classes), mode=mode, scales=(1.0,), flip=False)
    with pytest.raises(ValueError, match=expected):
        run_infer_maps(cfg, {"model": str(model / "model.pt"), "shard": str(data / "shard.txt"),
                             "manifest": str(manifest)}, {"maps": str(tmp_path / "maps.h5")})
    assert not list(tmp_path.glob("*maps.h5*"))


@pytest.mark.parametrize("case", ["classes", "backbone", "weights"])
def test_a_deeplab_of_another_config_is_refused_by_predict(models_dir, tmp_path, case):
    from sance_core.stages.segmenter import PredictConfig, run_predict

    data = models_dir / "data"
    classes, backbone, model = ("background", "a", "b"), "resnet18", models_dir / "deeplab"
    if case == "classes":
        classes = tuple(OTHER_CLASSES)
    elif case == "backbone":
        backbone = "resnet50"
    else:
        model = _swap_config(models_dir, "deeplab", tmp_path, rates=[1, 2, 3])
    expected = {"classes": "classes=", "backbone": "backbone='resnet18'.*backbone='resnet50' was expected",
                "weights": "does not match its config.json"}[case]
    cfg = PredictConfig(dataset=DatasetSpec(root=str(data), classes=classes), mode="sance", backbone=backbone,
                        device="cpu")
    with pytest.raises(ValueError, match=expected):
        run_predict(cfg, {"model": str(model / "model.pt"), "ids": str(data / "shard.txt")},
                    {"predictions": str(tmp_path / "pred.h5")})
    assert not list(tmp_path.glob("*pred.h5*"))


# =============================================================================== 6. disk and memory

MAP_SIDE = 64  # 64x64 maps: one uint8 map is 4,096 bytes
N_SMALL, N_LARGE, SHARDS = 500, 2000, 4  # the same shard count in both runs: only the images grow
EVAL_STAGES = {"seeds": "seed", "cam": "cam", "pseudo_labels": "label", "predictions": "label"}

_MEASURE_EVALUATION = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    root, n, stage, leak = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
    from sance_core.eval import evaluation
    from sance_core.data.dataset import DatasetSpec, Manifest
    from sance_core.io.store import ArtifactReader
    if stage == "pseudo_labels":
        from sance_core.stages import pseudo_labels
    kept = []
    if leak:  # the fault the measurement must catch: every map read stays in memory
        _read = ArtifactReader.read
        def read(self, *args, **kwargs):
            out = _read(self, *args, **kwargs)
            kept.append(out)
            return out
        ArtifactReader.read = read
    spec = DatasetSpec(root=str(root), classes=("background", "a", "b", "c"))
    manifest = Manifest.load(root / f"manifest{n}.json")
    paths = [str(root / f"{stage}-{n}-{k}.h5") for k in range(1, %(shards)d + 1)]
    if stage == "seeds":
        result, _ = evaluation.evaluate_seeds(evaluation.SeedEvalConfig(spec), manifest, paths)
    elif stage == "cam":
        result, _ = evaluation.evaluate_cams(evaluation.CAMEvalConfig(spec), manifest, paths)
    elif stage == "predictions":
        cfg = evaluation.SegmentationEvalConfig(spec, "sance", split="train")
        result, _ = evaluation.evaluate_segmentation(cfg, manifest, paths)
    else:
        result, _ = pseudo_labels.evaluate_pseudo_labels(pseudo_labels.EvalConfig(spec), manifest, paths)
    # VmHWM: the peak RSS of this process's own address space. ru_maxrss (getrusage) would also do in
    # a process started from a shell, but a child of a big process inherits the parent's peak
    # across fork/exec (Linux keeps it in the signal struct), which would hide any growth here.
    status = Path("/proc/self/status").read_text().splitlines()
    peak_kb = int(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n_images": result["n_images"], "miou": result["miou"], "peak_kb": peak_kb,
                      "ru_maxrss_kb": maxrss_kb}))
""") % {"shards": SHARDS}


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    """2,000 masks; manifests of the first 500 and of all; per stage and size, four shards written
    by sance_core.io.store (stage files made on demand)."""
    root = tmp_path_factory.mktemp("scale")
    (root / "SegmentationClass").mkdir()
    ids = [f"img{i:05d}" for i in range(N_LARGE)]
    entries = []
    for k, image_id in enumerate(ids):
        mask = np.zeros((MAP_SIDE, MAP_SIDE), np.uint8)
        mask[8:40, 8:40] = 1 + k % 3
        mask[7, :] = 255
        save_label_png(mask, root / "SegmentationClass" / f"{image_id}.png")
        entries.append({"id": image_id, "height": MAP_SIDE, "width": MAP_SIDE, "labels": [1 + k % 3], "has_mask": True})
    for n in (N_SMALL, N_LARGE):
        Manifest("scale", str(root), ["background", "a", "b", "c"], {"train": entries[:n]}).save(root / f"manifest{n}.json")

    def make(stage: str) -> Path:
        if (root / f"{stage}-{N_LARGE}-1.h5").exists():
            return root
        rng = np.random.default_rng(1)
        attrs = {"tau_b": 0.25} if stage == "pseudo_labels" else {}
        for n, s in ((n, s) for n in (N_SMALL, N_LARGE) for s in range(SHARDS)):
            per_shard = n // SHARDS
            with ArtifactWriter(root / f"{stage}-{n}-{s + 1}.h5", stage, {"s": s}, compression="none", attrs=attrs) as w:
                for k in range(s * per_shard, (s + 1) * per_shard):
                    key = 1 + k % 3
                    if stage == "cam":
                        w.add(ids[k], {"cam": rng.random((1, MAP_SIDE, MAP_SIDE), dtype=np.float32)},
                              {"class_keys": [key], "size": [MAP_SIDE, MAP_SIDE], "stride": 4})
                    else:
                        label = np.zeros((MAP_SIDE, MAP_SIDE), np.uint8)
                        label[10:40, 10:40] = key
                        w.add(ids[k], {EVAL_STAGES[stage]: label}, {"size": [MAP_SIDE, MAP_SIDE]})
        return root
    return make


def _peak_kb(root: Path, n: int, stage: str, leak: bool = False) -> dict:
    proc = subprocess.run([sys.executable, "-c", _MEASURE_EVALUATION, str(root), str(n), stage, "1" if leak else "0"],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n_images"] == n
    return result


# A leak of one map per image would add (N_LARGE - N_SMALL) x 4,096 bytes = 6.1 MB between the two
# runs; half of that is the bound. What legitimately grows (the manifest's 1,500 extra entries and
# the id index of the shards) stays near 1 MB.
LEAK_BOUND_KB = (N_LARGE - N_SMALL) * MAP_SIDE * MAP_SIDE / 2 / 1024


def _growth(root: Path, stage: str, leak: bool = False) -> tuple[float, dict, dict]:
    small, large = _peak_kb(root, N_SMALL, stage, leak), _peak_kb(root, N_LARGE, stage, leak)
    growth = large["peak_kb"] - small["peak_kb"]
    print(f"\n{stage}{' (leak injected)' if leak else ''}: peak RSS {small['peak_kb'] / 1024:.1f} MB at {N_SMALL} "
          f"images, {large['peak_kb'] / 1024:.1f} MB at {N_LARGE}: +{growth / 1024:.2f} MB "
          f"(bound {LEAK_BOUND_KB / 1024:.2f} MB)")
    return growth, small, large


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_seed_evaluation_peak_memory_does_not_grow_with_the_number_of_images(eval_data):
    root = eval_data("seeds")
    growth, small, large = _growth(root, "seeds")
    assert growth < LEAK_BOUND_KB
    assert small["miou"] == pytest.approx(large["miou"], abs=1e-6)  # same data, repeated
    leaked, _, _ = _growth(root, "seeds", leak=True)  # the measurement does see a per-image leak
    assert leaked > 1.5 * LEAK_BOUND_KB


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("stage", ["cam", "pseudo_labels", "predictions"])
def test_every_evaluation_streams_image_by_image(eval_data, stage):
    growth, _, _ = _growth(eval_data(stage), stage)
    assert growth < LEAK_BOUND_KB


def test_runtime_settings_reach_the_jobs_outside_params():
    """device, workers and checkpoint timing come from the workflow config at job start (not params,
    whose change reruns a job), and only for the stages that have them."""
    from sance_core.stages.adapter import runtime_settings

    config = {"device": "cpu", "workers": 3, "classifier": {"checkpoint_interval": 60},
              "segmentation": {"checkpoint_every": 50}}
    assert runtime_settings(config, "train_classifier") == {"device": "cpu", "workers": 3, "checkpoint_interval": 60}
    assert runtime_settings(config, "train_segmenter") == {"device": "cpu", "workers": 3, "checkpoint_every": 50}
    assert runtime_settings(config, "make_seeds") == {}
    common = (REPO / "workflow/rules/common.smk").read_text()
    for key in ('"device"', '"workers"', '"checkpoint_interval"', '"checkpoint_every"'):
        assert f"{key}:" not in common, f"{key} is a param again: changing it would rerun jobs"


# ----------------------------------------------------------------- disk full


@pytest.fixture
def full_disk(tmp_path):
    """A 4 MiB tmpfs (needs root to mount; skipped elsewhere, where the monkeypatched test below holds)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        if os.environ.get("CI") and os.geteuid() == 0:
            raise RuntimeError("cannot mount a tmpfs as root")
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*"))


def test_a_full_disk_is_named_and_leaves_no_partial_file(full_disk):
    from sance_core.engine import History
    from sance_core.io.files import DiskFullError, write_text_atomic

    model = torch.nn.Linear(2048, 1024)  # 8 MB of weights: more than the file system holds
    with pytest.raises(DiskFullError) as err:
        save_model(model, {"arch": "linear"}, full_disk / "classifier")
    assert str(err.value).startswith(f"No space left on device while writing {full_disk / 'classifier/model.pt'}")
    assert _leftovers(full_disk) == ["classifier"]  # no .model.pt.tmp keeping the disk full

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(DiskFullError, match="No space left on device while writing .*checkpoint.pt"):
        CheckpointManager(full_disk / "resume", {}).save(1, 0, model, opt)
    assert _leftovers(full_disk / "resume") == []

    rng = np.random.default_rng(0)
    with pytest.raises(DiskFullError, match=r"No space left on device while writing .*1-of-1.h5"):
        with ArtifactWriter(full_disk / "cam/1-of-1.h5", "cam", compression="none") as writer:
            for i in range(40):  # 40 x 256 KB float16 maps
                writer.add(f"im{i}", {"cam": rng.random((1, 512, 256), dtype=np.float32)})
    assert _leftovers(full_disk / "cam") == []

    with open(full_disk / "filler", "wb") as f:  # fill what is left
        try:
            f.write(b"\0" * (8 << 20))
        except OSError:
            pass
    with pytest.raises(DiskFullError, match="No space left on device while writing .*manifest.json"):
        write_text_atomic(full_disk / "manifest.json", "x" * 100_000)
    history = History(full_disk / "history.csv")
    history.rows = [{"step": float(i), "loss": 0.5} for i in range(20_000)]
    with pytest.raises(DiskFullError, match="history.csv"):
        history.save()
    assert _leftovers(full_disk) == ["cam", "classifier", "filler", "resume"]


def test_disk_full_from_any_writer_is_reported_as_such_without_leftovers(tmp_path, monkeypatch):
    """The same without root: the write itself fails with ENOSPC, as the kernel reports it."""
    import errno

    from sance_core.io import files as storage

    class FullFile:
        """A file whose writes fail as on a full file system."""

        def __init__(self, f):
            self._f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    real_open = Path.open

    def full_open(self, mode="r", *args, **kwargs):
        f = real_open(self, mode, *args, **kwargs)
        return FullFile(f) if "w" in mode and ".tmp-" in self.name else f

    monkeypatch.setattr(Path, "open", full_open)
    with pytest.raises(storage.DiskFullError) as err:
        save_model(torch.nn.Linear(4, 2), {}, tmp_path / "m")
    assert str(err.value).startswith(f"No space left on device while writing {tmp_path / 'm/model.pt'}")
    with pytest.raises(storage.DiskFullError, match="x.json"):
        storage.write_text_atomic(tmp_path / "x.json", "{}")
    assert _leftovers(tmp_path) == ["m"]
    # HDF5 reports it only in its message text
    assert storage.is_disk_full(OSError("Can't write data (file write failed: ..., errno = 28, error message = "
                                        "'No space left on device', ...)"))
    assert not storage.is_disk_full(OSError(errno.EACCES, "Permission denied"))


# ----------------------------------------------------------------- damaged artifacts


def _seeds_shard(path: Path, n: int = 6) -> dict:
    """A seeds-like shard (uint8 labels with 255, per-image attributes) and what a reader returns for it."""
    rng = np.random.default_rng(0)
    with ArtifactWriter(path, "seeds", {"fg": 0.3}) as writer:
        for i in range(n):
            label = rng.integers(0, 4, (40, 48)).astype(np.uint8)
            label[:5] = 255
            writer.add(f"im{i}", {"seeds": label, "score": rng.random(3).astype(np.float32)},
                       {"size": [40, 48], "class_keys": [1, 3]})
    return _everything(path)


def _everything(path: Path) -> dict:
    with ArtifactReader(path, "seeds") as reader:
        return {"attrs": reader.attrs,
                "images": {i: (reader.image_attrs(i), {k: (v.dtype.str, v.shape, v.tobytes())
                                                       for k, v in reader.read(i).items()}) for i in reader.ids()}}


def test_every_dataset_carries_a_checksum(tmp_path):
    _seeds_shard(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5") as f:
        datasets = [f[i][k] for i in f for k in f[i]]
        assert len(datasets) == 12 and all(d.fletcher32 for d in datasets)
        assert all("_sance_crc" in f[i].attrs and "_sance_data_crc" in f[i].attrs for i in f)
        assert f.attrs["sance_format"] == 2 and "_sance_index_crc" in f.attrs


def test_single_byte_flips_never_change_what_a_reader_returns(tmp_path):
    """Each of 300 single-byte flips (positions drawn over the whole file) either leaves what a reader
    returns unchanged (unused bytes, padding) or makes the reader refuse the file, naming it; none
    changes the data silently (before the checksums: 1 in 200 did)."""
    reference = _seeds_shard(tmp_path / "s.h5")
    data = (tmp_path / "s.h5").read_bytes()
    positions = np.random.default_rng(1).choice(len(data), 300, replace=False)
    caught, unchanged = 0, 0
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        (tmp_path / "f.h5").write_bytes(bytes(flipped))
        try:
            got = _everything(tmp_path / "f.h5")
        except (ArtifactError, KeyError) as err:
            assert str(tmp_path / "f.h5") in str(err)
            caught += 1
            continue
        assert got == reference, f"byte {pos} changed the data silently"
        unchanged += 1
    assert caught > 30 and caught + unchanged == 300


def test_a_damaged_artifact_is_named_with_how_to_rebuild_it(tmp_path, capsys):
    from sance_core.cli import main
    from sance_core.io.store import ArtifactDamagedError, mark_damaged_artifacts

    run = tmp_path / "results/t"
    _seeds_shard(run / "seeds/1-of-2.h5")
    _seeds_shard(run / "seeds/2-of-2.h5")
    good = _everything(run / "seeds/2-of-2.h5")
    assert main(["verify", str(run)]) == 0
    assert "all 2 artifact(s) of" in capsys.readouterr().out

    shard = run / "seeds/1-of-2.h5"
    shard.write_bytes(shard.read_bytes()[:9000])  # truncated
    with pytest.raises(ArtifactDamagedError, match=rf"{shard}: damaged artifact \(not a readable HDF5 file.*\); "
                                                   rf"rebuild it: rm {shard} and run snakemake again"):
        ArtifactReader(shard).ids()
    assert main(["inspect", str(shard)]) == 2  # a message, not a traceback
    err = capsys.readouterr().err
    assert "damaged artifact" in err and "Traceback" not in err
    assert main(["verify", str(run)]) == 1
    out = capsys.readouterr().out
    assert f"{shard}: damaged artifact" in out and "1 of 2 artifact(s) damaged" in out and "2-of-2" not in out

    assert mark_damaged_artifacts(run) == [shard]  # what every snakemake run does first
    assert shard.stat().st_mtime == 0 and _everything(run / "seeds/2-of-2.h5") == good


@pytest.mark.slow
@pytest.mark.workflow
def test_the_workflow_rebuilds_a_damaged_artifact_and_keeps_its_good_neighbours(workdir, tiny_config):
    """A truncated seeds shard whose timestamp was kept: the next run removes and rebuilds just it
    (before: 'Nothing to be done'). A flipped byte in a CAM shard's data: the job reading it fails
    naming the file and removes it; the next run rebuilds it and completes."""
    target = "results/tiny/eval/seeds.json"
    run_snakemake(workdir, target, "--cores", "2", "--configfile", str(tiny_config))
    seeds, neighbour = (workdir / f"results/tiny/seeds/{k}-of-2.h5" for k in (1, 2))
    before = {p: p.stat().st_mtime_ns for p in (neighbour, workdir / "results/tiny/cam/2-of-2.h5")}
    stat = seeds.stat()
    seeds.write_bytes(seeds.read_bytes()[: stat.st_size // 2])
    os.utime(seeds, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    proc = run_snakemake(workdir, target, "--cores", "2", "--configfile", str(tiny_config))
    assert "damaged artifact results/tiny/seeds/1-of-2.h5 will be rebuilt" in proc.stderr
    assert "make_seeds" in proc.stderr and ArtifactReader(seeds).ids()
    assert {p: p.stat().st_mtime_ns for p in before} == before  # the good shards were left alone

    cam = workdir / "results/tiny/cam/1-of-2.h5"
    with h5py.File(cam) as f:
        first = next(iter(f))
        offset = f[first]["cam"].id.get_chunk_info(0).byte_offset
    data = bytearray(cam.read_bytes())
    data[offset + 3] ^= 0xFF
    cam.write_bytes(bytes(data))
    proc = run_snakemake(workdir, target, "--cores", "2", "--configfile", str(tiny_config),
                         "--forcerun", "make_seeds", check=False)
    assert proc.returncode != 0
    log = "".join(p.read_text() for p in (workdir / "logs/tiny").glob("make_seeds*1-of-2*.log"))
    assert f"{cam.relative_to(workdir)}: damaged artifact (image '{first}': data fails its checksum" in log
    assert "marked the damaged input" in log and cam.stat().st_mtime == 0
    proc = run_snakemake(workdir, target, "--cores", "2", "--configfile", str(tiny_config))
    assert "extract_cams" in proc.stderr and "make_seeds" in proc.stderr
    assert ArtifactReader(cam).read(first, "cam") is not None  # rebuilt, sound


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path, capsys):
    from sance_core.cli import main

    workdir = tmp_path / "run"
    workdir.mkdir()
    text = (REPO / "config.yaml").read_text()
    text = text.replace("  n_train: 160", "  n_train: 160\n   n_val: 48", 1)  # indented one more: a syntax error
    (workdir / "config.yaml").write_text(text)
    line = text.splitlines().index("   n_val: 48") + 1
    proc = subprocess.run([str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
                           "-n"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"config.yaml:{line}:9: not valid YAML: mapping values are not allowed here" in out, out[-2000:]
    assert not (workdir / "results").exists()
    # files given with --configfile are read by Snakemake before the workflow; `sance check-config` names the place
    assert main(["check-config", str(workdir / "config.yaml"), str(REPO / "config.yaml")]) == 1
    assert capsys.readouterr().out.startswith(f"{workdir / 'config.yaml'}:{line}:9: not valid YAML")


@pytest.mark.slow
@pytest.mark.workflow
def test_tags_only_data_runs_all_end_to_end(workdir, tiny_config, tmp_path):
    """The README's tags-only layout (mask_dir: null, labels: file): `all` completes; the fully
    supervised mode, which needs masks, is left out with a note; scores that need masks are absent."""
    run_snakemake(workdir, "resources/tiny", "--cores", "1", "--configfile", str(tiny_config))
    tags = tmp_path / "tags.yaml"
    tags.write_text(yaml.safe_dump({
        "data": {"name": "tagsonly", "root": str(workdir / "resources/tiny"), "mask_dir": None,
                 "labels": "file", "label_file": "cls_labels.tsv"},
        "demo": {"enabled": False},
    }))
    proc = run_snakemake(workdir, "all", "--cores", "2", "--configfile", str(tiny_config), "--configfile", str(tags),
                         timeout=2400)  # the whole tiny pipeline: 900 s were not enough on the loaded 2-core VM
    assert "'fully_supervised' is left out: it trains on ground-truth masks and data.mask_dir is null" in proc.stderr
    results = workdir / "results/tagsonly"
    assert (results / "ablation.tsv").is_file() and (results / "figures/training_curves.png").is_file()
    assert not (results / "fully_supervised").exists()
    for mode in ("irnet", "sance_naive", "sance"):
        assert (results / mode / "segmenter/model.pt").is_file() and (results / mode / "summary.json").is_file()
    manifest = Manifest.load(results / "manifest.json")
    assert not any(e["has_mask"] for e in manifest.entries("train"))


def test_sance_workflow_names_a_yaml_error_in_a_configfile_and_runs_nothing(tmp_path, monkeypatch, capfd):
    """`sance workflow ... --configfile bad.yaml`: file, line and column, exit 2, Snakemake never started;
    sound files reach Snakemake with the command line unchanged."""
    import os

    from sance_core.cli import main
    from sance_core.config_checks import configfile_args

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("seed: 1\n")
    bad.write_text("demo:\n  n_train: 16\n   n_val: 4\n")
    started: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda exe, argv: started.append(argv))
    assert main(["workflow", "--cores", "1", "--configfile", str(good), str(bad), "-n"]) == 2
    err = capfd.readouterr().err
    assert f"{bad}:3:9: not valid YAML: mapping values are not allowed here" in err
    assert str(good) + ":" not in err and started == []
    assert main(["workflow", "--cores", "1", f"--configfile={good}", "-n", "all"]) == 0
    assert started and started[0][1:] == ["--cores", "1", f"--configfile={good}", "-n", "all"]
    assert Path(started[0][0]).name == "snakemake"
    # what counts as a config file: values after either flag up to the next option, existing files only
    assert configfile_args(["--configfiles", str(good), "all", "--cores", "2", str(bad)]) == [str(good)]
    assert configfile_args(["--configfile", str(good), str(bad), "--configfile=" + str(good)]) == [
        str(good), str(bad), str(good)]
