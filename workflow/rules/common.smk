# Helpers shared by all stage files (paths, per-stage params as plain dicts, resources).
# Every hyper-parameter reaches its job through params, built here from the config, so that
# changing it reruns exactly the stages that read it.

import sys
from pathlib import Path

DATASET = config["data"]["name"]
RESULTS = f"results/{DATASET}"
LOGS = f"logs/{DATASET}"
BENCH = f"benchmarks/{DATASET}"
ENV = "../../envs/sance.yaml"
# the adapters import sance_core from this checkout even when it is not installed
sys.path.insert(0, str(Path(workflow.basedir)))
PYTHON = sys.executable


def dataset_params():
    """The dataset description every data-reading stage gets (sance_core DatasetSpec)."""
    d = config["data"]
    return {
        "root": d["root"],
        "classes": list(d["classes"]),
        "image_dir": d["image_dir"],
        "image_ext": d["image_ext"],
        "mask_dir": d["mask_dir"],
        "split_dir": d["split_dir"],
        "labels": d["labels"],
        "label_file": d["label_file"],
        "annotation_dir": d["annotation_dir"],
        "format": d["format"],
        "tags_file": d["tags_file"],
    }


def splits():
    return [config["data"]["train_split"], config["data"]["val_split"]]


def dataset_source():
    """Input that stands for the dataset: the generated demo folder, or the split lists of real data."""
    if config["demo"]["enabled"]:
        return config["data"]["root"]
    d = config["data"]
    if d["format"] == "tags_csv":
        return [f"{d['root']}/{d['tags_file']}"]
    return [f"{d['root']}/{d['split_dir']}/{s}.txt" for s in splits()]


def manifest():
    return f"{RESULTS}/manifest.json"


def all_targets():
    """What `snakemake all` builds; later stages add theirs to TARGETS in their rule file."""
    return [manifest(), *shard_files(config["data"]["train_split"]), *TARGETS]


TARGETS = []


def shard_files(split):
    """The shard id lists of a split (`--set-scatter shard=N` changes their number)."""
    return scatter.shard(f"{RESULTS}/shards/{split}/{{scatteritem}}.txt")
