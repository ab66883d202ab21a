"""The VOC / COCO presets and the SLURM profile: consistent with the workflow, and the DAG they give.

A dry run of each preset, through workflow/profiles/slurm, against a fake dataset tree of the
real layout (a handful of tiny files with the real names and formats), must show the preset's
shard count, every stage, and the profile's per-rule resources (GPUs for training and network
inference, none for CRF seeds and evaluation; memory and time growing with the attempt).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import BIN, REPO
from sance_core.data.coco import COCO_CLASSES, CocoConversionConfig, convert_coco, standard_sources
from sance_core.data.dataset import DatasetSpec
from sance_core.data.validate import ValidationConfig, validate_dataset
from sance_core.io.palette import save_label_png
from sance_core.pretrained import IMAGENET_URLS

pytestmark = [pytest.mark.workflow, pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]

PROFILE = REPO / "workflow" / "profiles" / "slurm" / "config.yaml"
PRESETS = REPO / "workflow" / "presets"
ACTIONS = ("script:", "shell:", "run:", "notebook:", "wrapper:", "cwl:")
GPU_RULES = {"train_classifier", "evaluate_classifier", "train_sance", "train_segmenter", "extract_cams",
             "infer_maps", "predict_segmenter", "infer_contours"}
CPU_RULES = {"make_seeds", "make_pseudo_labels", "evaluate_cams", "evaluate_seeds", "evaluate_pseudo_labels",
             "evaluate_segmenter", "evaluate_contours", "validate_dataset", "shard_ids"}
# the 80 COCO category ids (1..90 with gaps), ascending
COCO_IDS = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83), *range(84, 91)]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def workflow_rules() -> dict[str, bool]:
    """Every rule of the workflow -> whether it runs anything (rules without an action are targets)."""
    rules: dict[str, bool] = {}
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        name = None
        for line in path.read_text().splitlines():
            m = re.match(r"^(?:rule|checkpoint) (\w+):", line)
            if m:
                name = m.group(1)
                rules[name] = False
            elif name and re.match(r"^\s+(" + "|".join(a[:-1] for a in ACTIONS) + r"):", line):
                rules[name] = True
            elif line and not line[0].isspace() and not line.startswith("#"):
                name = None
    return rules


def evaluate(expression, attempt: int) -> float:
    """A profile resource value as Snakemake evaluates it (a number or a Python expression)."""
    return eval(str(expression), {"attempt": attempt, "min": min, "max": max})  # noqa: S307 - our own profile


# -- the profile -----------------------------------------------------------------------------

def test_profile_covers_exactly_the_workflow_rules():
    profile = load(PROFILE)
    rules = workflow_rules()
    jobs = {name for name, acts in rules.items() if acts}
    assert jobs, "no rules found"
    resources, threads = profile["set-resources"], profile["set-threads"]
    assert set(resources) - set(rules) == set(), "profile names rules the workflow does not have"
    assert set(threads) - set(rules) == set()
    missing = sorted(jobs - set(resources)) + sorted(jobs - set(threads))
    assert not missing, f"add these rules to set-resources and set-threads of {PROFILE}: {missing}"


def test_profile_resources_gpu_split_and_attempt_scaling():
    profile = load(PROFILE)
    assert profile["executor"] == "slurm" and profile["retries"] >= 1
    # no site-specific values: partition and account are the user's (docs/CLUSTER.md)
    text = PROFILE.read_text()
    for key in ("slurm_partition", "slurm_account", "slurm-partition:", "slurm-account:"):
        assert not re.search(rf"^\s*{key}", text, re.MULTILINE), key
    assert "status-command" not in {k.split("slurm-", 1)[-1] for k in profile}, "keep sacct, the default, on real clusters"
    for rule, values in profile["set-resources"].items():
        gpu = int(values.get("gpu", 0))
        assert gpu == (1 if rule in GPU_RULES else 0), f"{rule}: gpu {gpu}"
        for key in ("mem_mb", "runtime"):
            first, second, third = (evaluate(values[key], a) for a in (1, 2, 3))
            assert 0 < first < second <= third, f"{rule}.{key} must grow with attempt: {first}, {second}, {third}"
        assert evaluate(values["runtime"], 3) <= 2880, f"{rule}: runtime above 48 h"
    assert GPU_RULES <= set(profile["set-resources"]) and CPU_RULES <= set(profile["set-resources"])


# -- fake dataset trees ----------------------------------------------------------------------

VOC_IDS = {"train_aug": ["2007_000032", "2008_000002", "2010_001234"], "val": ["2007_000033", "2011_003276"]}
VOC_OBJECTS = {"2007_000032": [("aeroplane", 0), ("person", 1)], "2008_000002": [("tvmonitor", 0)],
               "2010_001234": [("dog", 0), ("cat", 0)], "2007_000033": [("aeroplane", 0)],
               "2011_003276": [("pottedplant", 0), ("chair", 1)]}


def voc_tree(root: Path, classes: list[str]) -> Path:
    """VOCdevkit/VOC2012 with SBD's SegmentationClassAug: tiny JPEGs, palette masks, XML, lists."""
    voc = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClassAug", "Annotations", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, ids in VOC_IDS.items():
        for image_id in ids:
            h, w = 24, 32
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
            mask = np.zeros((h, w), np.uint8)
            for k, (name, _) in enumerate(VOC_OBJECTS[image_id]):
                mask[2 + 8 * k:8 + 8 * k, 4:20] = classes.index(name)
            mask[1, :] = 255
            save_label_png(mask, voc / "SegmentationClassAug" / f"{image_id}.png")
            objects = "".join(
                f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{d}</difficult>"
                f"<bndbox><xmin>5</xmin><ymin>3</ymin><xmax>20</xmax><ymax>9</ymax></bndbox></object>"
                for n, d in VOC_OBJECTS[image_id])
            (voc / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>"
                f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
                f"<segmented>1</segmented>{objects}</annotation>")
        (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return voc


def coco_tree(root: Path) -> Path:
    """A COCO 2014 folder (real file names, the 80 real categories) converted with sance coco-masks."""
    coco = root / "coco"
    (coco / "annotations").mkdir(parents=True)
    rng = np.random.default_rng(0)
    categories = [{"id": cid, "name": name, "supercategory": "x"} for cid, name in zip(COCO_IDS, COCO_CLASSES)]
    plan = {"train": [(9, [1, 90]), (25, [3]), (30, [84, 1])], "val": [(42, [18]), (73, [62, 67])]}
    for split, images in plan.items():
        (coco / f"{split}2014").mkdir()
        entries, anns = [], []
        for image_id, cats in images:
            name = f"COCO_{split}2014_{image_id:012d}.jpg"
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(coco / f"{split}2014" / name)
            entries.append({"id": image_id, "file_name": name, "height": 24, "width": 32})
            for k, cid in enumerate(cats):
                x0 = 2 + 12 * k
                anns.append({"id": len(anns) + 100 * image_id, "image_id": image_id, "category_id": cid, "iscrowd": 0,
                             "area": 80.0, "bbox": [x0, 4, 10, 8],
                             "segmentation": [[x0, 4, x0 + 10, 4, x0 + 10, 12, x0, 12]]})
        (coco / "annotations" / f"instances_{split}2014.json").write_text(
            json.dumps({"images": entries, "annotations": anns, "categories": categories}))
    out = root / "coco14"
    convert_coco(standard_sources(coco, "2014"), out, CocoConversionConfig())
    return out


def spec_from(preset: dict, root: Path) -> DatasetSpec:
    data = dict(preset["data"], root=str(root))
    keys = set(DatasetSpec.__dataclass_fields__)
    return DatasetSpec(**{k: (tuple(v) if k == "classes" else v) for k, v in data.items() if k in keys})


# -- dry runs ----------------------------------------------------------------------------------

def torch_home_with_imagenet(root: Path, *backbones: str) -> Path:
    """A TORCH_HOME whose hub cache holds (stand-in) ImageNet files of ``backbones`` under torchvision's names."""
    home = root / "torch"
    for name in backbones:
        target = home / "hub" / "checkpoints" / IMAGENET_URLS[name].rsplit("/", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"stand-in")
    return home


def dry_run(workdir: Path, preset: Path, root: Path, *extra: str, torch_home: Path | None = None,
            check: bool = True) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    paths = workdir / "paths.yaml"
    mine: dict = {"data": {"root": str(root)}}
    if load(preset)["evaluation"]["contour"].get("gt_source") == "sbd":  # SBD val: 2 ids outside train_aug
        sbd = workdir / "SBD" / "dataset"
        (sbd / "cls").mkdir(parents=True, exist_ok=True)
        (sbd / "val.txt").write_text("2008_000051\n2009_000012\n")
        mine["evaluation"] = {"contour": {"sbd_dir": str(sbd), "id_list": str(sbd / "val.txt")}}
    paths.write_text(yaml.safe_dump(mine))
    if torch_home is None:
        torch_home = torch_home_with_imagenet(workdir, "resnet50", "resnet101")
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           # a dry run executes locally and caps threads at --cores; a cluster run does not
           "--profile", str(PROFILE.parent), "--dry-run", "--cores", "64", *extra,
           "--configfile", str(REPO / "config.yaml"), str(preset), str(paths)]
    env = dict(os.environ, TORCH_HOME=str(torch_home), SANCE_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def parse_jobs(output: str) -> tuple[Counter, dict[str, dict[str, str]], dict[str, int]]:
    """Jobs per rule, the resources of each rule's first job and its threads, from a dry run's log."""
    counts: Counter = Counter()
    resources: dict[str, dict[str, str]] = {}
    threads: dict[str, int] = {}
    rule = None
    for line in output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
            counts[rule] += 1
            threads.setdefault(rule, 1)
        elif rule and line.strip().startswith("threads:"):
            threads[rule] = int(line.split(":")[1])
        elif rule and line.strip().startswith("resources:") and rule not in resources:
            resources[rule] = dict(item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", "))
    return counts, resources, threads


def check_dag(output: str, shards: int, n_modes: int, n_seg_modes: int) -> None:
    counts, resources, threads = parse_jobs(output)
    profile = load(PROFILE)
    # the per-image stages run once per shard (and mode)
    assert counts["extract_cams"] == counts["make_seeds"] == shards
    assert counts["infer_maps"] == counts["make_pseudo_labels"] == n_modes * shards
    assert counts["predict_segmenter"] == n_seg_modes * shards
    assert counts["train_classifier"] == 1 and counts["train_sance"] == n_modes
    assert counts["infer_contours"] == counts["evaluate_contours"] == n_modes  # one raw-contour job per mode
    assert counts["train_segmenter"] == n_seg_modes
    assert "demo_data" not in counts
    # the profile's resources (attempt 1) and threads reach the jobs
    for rule in counts:
        if rule not in profile["set-resources"]:
            continue
        wanted = profile["set-resources"][rule]
        got = resources[rule]
        assert int(got["mem_mb"]) == evaluate(wanted["mem_mb"], 1), rule
        assert int(got["runtime"]) == evaluate(wanted["runtime"], 1), rule
        assert int(got.get("gpu", 0)) == int(wanted.get("gpu", 0)), f"{rule}: {got}"
        assert threads[rule] == profile["set-threads"][rule], rule


def test_voc12_preset_reads_a_voc_tree_and_gives_the_paper_dag(tmp_path):
    preset = load(PRESETS / "voc12.yaml")
    classes = preset["data"]["classes"]
    assert len(classes) == 21 and classes[0] == "background"
    assert preset["classifier"]["backbone"] == preset["sance"]["backbone"] == preset["segmentation"]["backbone"] == "resnet101"
    voc = voc_tree(tmp_path, classes)

    # the preset's data section reads the real layout: labels from the XML, 'difficult' included
    validate_dataset(ValidationConfig(name="voc12", dataset=spec_from(preset, voc), splits=("train_aug", "val")),
                     tmp_path / "manifest.json")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    labels = {e["id"]: e["labels"] for e in manifest["splits"]["train_aug"]}
    assert labels["2007_000032"] == [classes.index("aeroplane"), classes.index("person")]

    output = dry_run(tmp_path / "run", PRESETS / "voc12.yaml", voc)
    check_dag(output, shards=16, n_modes=3, n_seg_modes=4)  # the default segmentation.modes: GT + 3 modes
    assert "results/voc12/cam/16-of-16.h5" in output and "results/voc12/shards/train_aug/1-of-16.txt" in output


def test_coco14_preset_matches_the_converter_and_gives_the_sharded_dag(tmp_path):
    preset = load(PRESETS / "coco14.yaml")
    assert preset["data"]["classes"] == ["background", *COCO_CLASSES]
    assert preset["classifier"]["backbone"] == preset["sance"]["backbone"] == preset["segmentation"]["backbone"] == "resnet50"
    assert preset["segmentation"]["crf"] is False
    root = coco_tree(tmp_path)
    # the converter's class order is the preset's, category ids with gaps included (90 -> 80)
    assert (root / "classes.txt").read_text().splitlines() == preset["data"]["classes"]
    validate_dataset(ValidationConfig(name="coco14", dataset=spec_from(preset, root), splits=("train", "val")),
                     tmp_path / "manifest.json")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    labels = {e["id"]: e["labels"] for e in manifest["splits"]["train"]}
    assert labels["COCO_train2014_000000000009"] == [1, 80] and labels["COCO_train2014_000000000030"] == [1, 74]
    assert preset["data"]["classes"][74] == "book" and preset["data"]["classes"][80] == "toothbrush"  # ids 84, 90

    # the preset's 128 shards, then a --set-scatter override (what the profile's docs say)
    output = dry_run(tmp_path / "run", PRESETS / "coco14.yaml", root)
    check_dag(output, shards=128, n_modes=3, n_seg_modes=len(preset["segmentation"]["modes"]))
    output = dry_run(tmp_path / "run8", PRESETS / "coco14.yaml", root, "--set-scatter", "shard=8")
    check_dag(output, shards=8, n_modes=3, n_seg_modes=len(preset["segmentation"]["modes"]))
    assert "results/coco14/cam/8-of-8.h5" in output


def test_example_partition_file_sends_gpu_rules_to_gpu_and_the_rest_to_cpu():
    """The plugin's own partition choice, fed the profile's resources (attempt 1)."""
    import logging
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    partitions = read_partition_file(PROFILE.parent / "partitions.example.yaml")
    profile = load(PROFILE)
    for rule, values in profile["set-resources"].items():
        resources = {k: (evaluate(v, 1) if k in ("mem_mb", "runtime") else v) for k, v in values.items()}
        job = SimpleNamespace(name=rule, threads=profile["set-threads"][rule], resources=resources)
        chosen = get_best_partition(partitions, job, logging.getLogger("test"))
        assert chosen == ("gpu" if rule in GPU_RULES else "cpu"), rule


def test_offline_without_cached_imagenet_weights_stops_before_any_job(tmp_path):
    """weights: imagenet, no network, empty cache: Snakemake's start-up names the file and where to put it."""
    voc = voc_tree(tmp_path, load(PRESETS / "voc12.yaml")["data"]["classes"])
    home = tmp_path / "empty_torch_home"
    output = dry_run(tmp_path / "run", PRESETS / "voc12.yaml", voc, torch_home=home, check=False)
    assert "backbone weights missing" in output
    expected = home / "hub" / "checkpoints" / "resnet101-63fe2227.pth"
    for section in ("classifier", "sance", "segmentation"):
        assert f"config key {section}.weights" in output
    assert str(expected) in output and IMAGENET_URLS["resnet101"] in output
    assert "rule " not in output  # no job was planned


# -- the presets are the paper -----------------------------------------------------------------

SECTIONS = ["data", "demo", "classifier", "cam", "seeds", "evaluation", "sance", "pseudo_labels", "segmentation", "report"]
RESNET = {"voc12": "resnet101", "coco14": "resnet50"}


def paper_values(dataset: str) -> dict:
    """Every hyper-parameter of a VOC / COCO run: §4.2, Table 1's SANCE row, IRNet's code where the paper follows it."""
    voc = dataset == "voc12"
    net = RESNET[dataset]
    return {
        "classifier": {  # §4.2 "Classification Network", following IRNet (step/train_cam.py)
            "backbone": net, "weights": "imagenet", "output_stride": 16, "zero_init_residual": False,
            "epochs": 5, "batch_size": 16, "crop_size": 512, "lr": 0.1, "head_lr_mult": 10,
            "weight_decay": 1e-4, "momentum": 0.9, "poly_power": 0.9,
            # IRNet resizes the long side to 320..640: VOC's 500 px, COCO's 640 px images
            "scale_range": [0.64, 1.28] if voc else [0.5, 1.0],
            "recipe": "irnet" if voc else "paper",
        },
        "cam": {"scales": [1.0, 0.5, 1.5, 2.0], "flip": True},
        "seeds": {"fg_threshold": 0.30, "bg_threshold": 0.05,  # Eq. (1); IRNet's crf_inference_label
                  "crf": {"enabled": True, "gt_prob": 0.7, "gauss_sxy": 3, "gauss_compat": 3, "bilateral_sxy": 50,
                          "bilateral_srgb": 5, "bilateral_compat": 10, "iterations": 10}},
        "sance": {  # §4.2 "SANCE Network", "Hyper-Parameter", "Data Augmentation"; Table 1's SANCE row
            "backbone": net, "weights": "imagenet", "init_from_classifier": False, "output_stride": 8,
            "frozen_bn": True, "aspp_rates": [6, 12, 18, 24], "epochs": 16, "batch_size": 10, "crop_size": 512,
            "scale_range": [0.5, 1.5], "lr": 2.5e-4, "new_lr_mult": 10, "weight_decay": 5e-4, "momentum": 0.9,
            "poly_power": 0.9, "grad_clip": 0, "lr_warmup": 0, "contour_radius": 10, "contour_power": 1,
            "loss_weights": {"cam_contour": 1, "cam_seg": 1, "online_contour": 1, "online_seg": 1},
            "online": {"radius": 3, "beta": 10, "exp_times": 8, "tau_b": 0.25, "normalize": True, "warmup": 0.0,
                       "refine": "crf", "refine_contour": True, "refine_seg": False,
                       # IRNet's CRF widths (3 / 50 image pixels) / 4 on the stride-4 grid
                       "crf": {"gauss_sxy": 1.0, "bilateral_sxy": 12.5}},
            "paste": {"enabled": True},
            "epoch_eval": {"images": 0},  # Fig. 5 is an analysis, not part of a run
        },
        "pseudo_labels": {"scales": [1.0, 0.5, 1.5, 2.0], "flip": True, "radius": 5, "beta": 10, "exp_times": 8,
                          "tau_b": 0.25, "normalize_seg": True,
                          "map": {"irnet": "cam", "sance_naive": "seg", "sance": "seg"}},
        "segmentation": {  # DeepLab-v2 (§4.2, Table 6 on COCO)
            "backbone": net, "weights": "imagenet", "init_from_classifier": False, "output_stride": 8,
            "rates": [6, 12, 18, 24], "frozen_bn": True, "iterations": 20000 if voc else 100000, "batch_size": 10,
            "crop_size": 321, "scale_range": [0.5, 1.5], "lr": 2.5e-4, "head_lr_mult": 10, "weight_decay": 5e-4,
            "momentum": 0.9, "poly_power": 0.9, "test_scales": [0.5, 0.75, 1.0, 1.25, 1.5], "flip": True,
            "fusion": "max", "crf": voc, "crf_params": {"bilateral_sxy": 67.0},  # deeplab-pytorch's VOC values
        },
        "evaluation": {"contour": {"thresholds": 99, "max_dist": 0.02, "thinning": True, "kill_internal": False,
                                   "gt_source": "sbd" if voc else "masks", "max_images": 0 if voc else 2000}},
        "modes": ["irnet", "sance_naive", "sance"],
    }


def merged_as_snakemake(preset: Path) -> dict:
    """config.yaml, then the preset merged over it (snakemake --configfile), then the schemas' defaults filled in,
    in the Snakefile's order."""
    from snakemake.utils import update_config, validate

    config = load(REPO / "config.yaml")
    update_config(config, load(preset))
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    for section in SECTIONS:
        validate(config[section], str(REPO / "workflow" / "schemas" / f"{section}.schema.yaml"))
    return config


def leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    return a == b


@pytest.mark.parametrize("dataset", ["voc12", "coco14"])
def test_preset_merged_over_config_yaml_is_the_paper(dataset):
    merged = leaves(merged_as_snakemake(PRESETS / f"{dataset}.yaml"))
    paper = leaves(paper_values(dataset))
    wrong = {k: (merged.get(k), v) for k, v in paper.items() if not same(merged.get(k), v)}
    assert not wrong, f"{dataset}: merged value vs the paper's: {wrong}"


@pytest.mark.parametrize("dataset", ["voc12", "coco14"])
def test_no_demo_value_reaches_a_preset(dataset):
    """Every hyper-parameter config.yaml sets for the demo is in the paper table, so a demo value fails above;
    and none survives the merge (catches a new demo departure that a preset forgets to undo)."""
    demo = leaves({k: v for k, v in load(REPO / "config.yaml").items() if k in paper_values(dataset)})
    merged = leaves(merged_as_snakemake(PRESETS / f"{dataset}.yaml"))
    paper = leaves(paper_values(dataset))
    uncovered = sorted(set(demo) - set(paper))
    assert not uncovered, f"config.yaml sets {uncovered} for the demo; add the paper's value to paper_values()"
    leaked = {k: v for k, v in demo.items() if same(merged[k], v) and not same(paper[k], v)}
    assert not leaked, f"{dataset}: demo values in the merged preset: {leaked}"


def test_the_old_leak_is_caught():
    """A demo value that a preset does not restate reaches the merged config, and the comparison sees it.

    The old config.yaml set sance.scale_range [1.5, 2.5] for the demo and voc12.yaml did not
    set it: a VOC run trained on magnified crops."""
    from snakemake.utils import update_config

    preset = load(PRESETS / "voc12.yaml")
    preset["sance"].pop("scale_range", None)
    config = load(REPO / "config.yaml")
    config["sance"]["scale_range"] = [1.5, 2.5]  # the old demo departure
    update_config(config, preset)
    assert config["sance"]["scale_range"] == [1.5, 2.5]
    assert not same(config["sance"]["scale_range"], paper_values("voc12")["sance"]["scale_range"])
