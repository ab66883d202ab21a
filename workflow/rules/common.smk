# Helpers shared by all stage files (paths, per-stage params as plain dicts, resources).
# Every hyper-parameter reaches its job through params, built here from the config, so that
# changing it reruns exactly the stages that read it.

import os
import sys
from pathlib import Path

# Jobs inherit this: torch's OpenMP worker threads otherwise spin while they wait, which on a
# busy or shared CPU stalls every multi-threaded job (a 2-thread ResNet-18 step under load 14:
# 9.9 s spinning, 1.5 s passive). Set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DATASET = config["data"]["name"]
RESULTS = f"results/{DATASET}"
LOGS = f"logs/{DATASET}"
BENCH = f"benchmarks/{DATASET}"
ENV = "../../envs/sance.yaml"
# the rules' script imports sance_core from this checkout even when it is not installed
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
    """Every final target of `snakemake all`, in pipeline order (the one list of them)."""
    return [
        manifest(),
        *shard_files(config["data"]["train_split"]),
        *cam_shards(),
        f"{RESULTS}/eval/cam.json",
        f"{RESULTS}/eval/seeds.json",
        *[target for mode in sance_modes() for target in pseudo_label_targets(mode)],
        *[f"{mode_dir(m)}/eval/contour.json" for m in sance_modes()],
        *[f"{RESULTS}/{m}/eval/segmentation.json" for m in config["segmentation"]["modes"]],
        *report_targets(),
    ]


def shard_files(split):
    """The shard id lists of a split (`--set-scatter shard=N` changes their number)."""
    return scatter.shard(f"{RESULTS}/shards/{split}/{{scatteritem}}.txt")


def gpu_resources():
    """GPUs a training job asks the scheduler for: 1 when config device names CUDA, else 0."""
    return 1 if str(config["device"]).startswith("cuda") else 0


# Stages 2-3 (classifier and CAMs), built from config["classifier"] and config["cam"].
CLASSIFIER_KEYS = (
    "backbone", "weights", "output_stride", "zero_init_residual", "epochs", "batch_size", "crop_size",
    "scale_range", "lr", "head_lr_mult", "weight_decay", "momentum", "poly_power", "checkpoint_interval",
)


def classifier_params():
    c = config["classifier"]
    return {
        "dataset": dataset_params(),
        "split": config["data"]["train_split"],
        **{k: c[k] for k in CLASSIFIER_KEYS},
        "seed": config["seed"],
        "device": config["device"],
        "workers": config["workers"],
        "resume_dir": f"{RESULTS}/.resume/classifier",
    }


def cam_params():
    c = config["cam"]
    return {
        "dataset": dataset_params(),
        "split": config["data"]["train_split"],
        "backbone": config["classifier"]["backbone"],
        "scales": list(c["scales"]),
        "flip": c["flip"],
        "batch_size": c["batch_size"],
        "device": config["device"],
        "workers": config["workers"],
        "compression": config["artifacts"]["compression"],
    }


def cam_shards():
    """All CAM shard files of the training split, for rules that read every CAM."""
    return gather.shard(f"{RESULTS}/cam/{{scatteritem}}.h5")


# Stage 7 (DeepLab): the params of the segmenter jobs of a mode, built from config["segmentation"].
SEGMENTER_TRAIN_KEYS = (
    "backbone", "weights", "init_from_classifier", "output_stride", "rates", "frozen_bn", "iterations",
    "batch_size", "crop_size", "scale_range", "lr", "head_lr_mult", "weight_decay", "momentum", "poly_power",
    "checkpoint_every",
)


def segmenter_train_params(mode):
    s = config["segmentation"]
    return {
        "dataset": dataset_params(),
        "mode": mode,
        "label_source": "ground_truth" if mode == "fully_supervised" else "pseudo_labels",
        "split": config["data"]["train_split"],
        **{k: s[k] for k in SEGMENTER_TRAIN_KEYS},
        "seed": config["seed"],
        "device": config["device"],
        "workers": config["workers"],
        "resume_dir": f"{RESULTS}/.resume/{mode}/segmenter",
    }


def segmenter_train_inputs(wildcards):
    """The manifest, the pseudo-label PNG folder of the mode (none for the GT upper bound) and,
    when the backbone starts from it, the CAM classifier."""
    inputs = {"manifest": manifest()}
    if wildcards.mode != "fully_supervised":
        inputs["labels"] = f"{RESULTS}/{wildcards.mode}/pseudo_labels/png"
    if config["segmentation"]["init_from_classifier"]:
        inputs["classifier"] = f"{RESULTS}/classifier/model.pt"
    return inputs


def segmenter_predict_params(mode):
    s = config["segmentation"]
    return {
        "dataset": dataset_params(),
        "mode": mode,
        "backbone": s["backbone"],
        "test_scales": list(s["test_scales"]),
        "flip": s["flip"],
        "fusion": s["fusion"],
        "crf": s["crf"],
        "crf_params": dict(s["crf_params"]),
        "device": config["device"],
        "compression": config["artifacts"]["compression"],
    }


# Stages 5-6 (SANCE and its pseudo labels): every mode of config["modes"] writes under its own
# folder; a mode gets only the settings it uses, so e.g. changing the label refine module
# reruns 'sance' and leaves 'irnet' and 'sance_naive' alone.
SANCE_MODES = ("irnet", "sance_naive", "sance")
SANCE_MODE_RE = "|".join(SANCE_MODES)
SANCE_TRAIN_KEYS = (
    "backbone", "weights", "init_from_classifier", "output_stride", "frozen_bn", "contour_channels",
    "epochs", "batch_size", "crop_size", "scale_range", "lr", "new_lr_mult", "weight_decay", "momentum",
    "poly_power", "grad_clip", "contour_radius", "contour_power", "amp",
)


def mode_dir(mode):
    """Results folder of one ablation mode: results/<name>/<mode>."""
    return f"{RESULTS}/{mode}"


def sance_modes():
    return list(config["modes"])


def sance_train_params(mode):
    s = config["sance"]
    params = {
        "dataset": dataset_params(),
        "mode": mode,
        "split": config["data"]["train_split"],
        **{k: s[k] for k in SANCE_TRAIN_KEYS},
        "seed": config["seed"],
        "device": config["device"],
        "workers": config["workers"],
        "resume_dir": f"{RESULTS}/.resume/{mode}/sance_model",
    }
    if mode == "irnet":  # contour branch and CAM seeds only
        params["loss_weights"] = {"cam_contour": s["loss_weights"]["cam_contour"]}
        return params
    params["aspp_rates"] = list(s["aspp_rates"])
    params["loss_weights"] = dict(s["loss_weights"])
    params["paste"] = dict(s["paste"])
    online = dict(s["online"])
    if mode == "sance_naive":  # no label refine module
        online = {k: v for k, v in online.items() if not k.startswith(("refine", "saliency", "crf"))}
    elif online["refine"] != "saliency":
        online = {k: v for k, v in online.items() if not k.startswith("saliency")}
    params["online"] = online
    return params


def sance_train_inputs(wildcards):
    """The manifest, the CAM seeds and, when the backbone starts from it, the classifier."""
    inputs = {
        "manifest": manifest(),
        "seeds": scatter.shard(f"{RESULTS}/seeds/{{scatteritem}}.h5"),
    }
    if config["sance"]["init_from_classifier"]:
        inputs["classifier"] = f"{RESULTS}/classifier/model.pt"
    return inputs


def pseudo_label_map(mode):
    return config["pseudo_labels"]["map"][mode]


def infer_maps_params(mode):
    p = config["pseudo_labels"]
    return {
        "dataset": dataset_params(),
        "mode": mode,
        "split": config["data"]["train_split"],
        "scales": list(p["scales"]),
        "flip": p["flip"],
        "device": config["device"],
        "compression": config["artifacts"]["compression"],
    }


def make_pseudo_labels_params(mode):
    p = config["pseudo_labels"]
    return {
        "dataset": dataset_params(),
        "mode": mode,
        "split": config["data"]["train_split"],
        "map": pseudo_label_map(mode),
        **{k: p[k] for k in ("radius", "beta", "exp_times", "tau_b", "normalize_seg")},
        "compression": config["artifacts"]["compression"],
    }


def make_pseudo_labels_inputs(wildcards):
    """The mode's maps of the shard, its id list, the manifest and, for map 'cam', the CAM shard."""
    inputs = {
        "maps": f"{mode_dir(wildcards.mode)}/maps/{wildcards.shard}.h5",
        "shard": f"{RESULTS}/shards/{config['data']['train_split']}/{wildcards.shard}.txt",
        "manifest": manifest(),
    }
    if pseudo_label_map(wildcards.mode) == "cam":
        inputs["cam"] = f"{RESULTS}/cam/{wildcards.shard}.h5"
    return inputs


def pseudo_label_targets(mode):
    return [f"{mode_dir(mode)}/eval/pseudo_labels.json", f"{mode_dir(mode)}/pseudo_labels/png"]


# Stage 8 contours and the report (rules in contours.smk and report.smk).
def deeplab_modes():
    return list(config["segmentation"]["modes"])


def ablation_modes():
    """Rows of the ablation table: the SANCE modes, then the DeepLab-only ones (fully_supervised)."""
    return sance_modes() + [m for m in deeplab_modes() if m not in sance_modes()]


def contour_eval_params(mode):
    return {
        "dataset": dataset_params(),
        "split": config["data"]["train_split"],
        "mode": mode,
        **dict(config["evaluation"]["contour"]),
    }


def summary_inputs(wildcards):
    """The evaluation JSONs that apply to a mode (fully_supervised: only its DeepLab evaluation)."""
    mode = wildcards.mode
    inputs = {"manifest": manifest()}
    if mode in sance_modes():
        inputs.update({
            "cam": f"{RESULTS}/eval/cam.json",
            "seeds": f"{RESULTS}/eval/seeds.json",
            "pseudo_labels": f"{mode_dir(mode)}/eval/pseudo_labels.json",
            "contour": f"{mode_dir(mode)}/eval/contour.json",
        })
    if mode in deeplab_modes():
        inputs["segmentation"] = f"{mode_dir(mode)}/eval/segmentation.json"
    return inputs


def summary_params(mode):
    return {
        "mode": mode,
        "dataset": DATASET,
        "train_split": config["data"]["train_split"],
        "val_split": config["data"]["val_split"],
        "tau_b": config["pseudo_labels"]["tau_b"] if mode in sance_modes() else None,
    }


def report_grid_split(grid):
    return config["data"]["train_split"] if grid == "train" else config["data"]["val_split"]


def qualitative_inputs(wildcards):
    """train grid: CAMs, seeds, maps and pseudo labels of every SANCE mode; val grid: DeepLab predictions."""
    inputs = {"manifest": manifest()}
    if wildcards.grid == "train":
        inputs["cam"] = scatter.shard(f"{RESULTS}/cam/{{scatteritem}}.h5")
        inputs["seeds"] = scatter.shard(f"{RESULTS}/seeds/{{scatteritem}}.h5")
        for mode in sance_modes():
            inputs[f"maps__{mode}"] = scatter.shard(f"{mode_dir(mode)}/maps/{{scatteritem}}.h5")
            inputs[f"pseudo_labels__{mode}"] = scatter.shard(f"{mode_dir(mode)}/pseudo_labels/{{scatteritem}}.h5")
    else:
        for mode in deeplab_modes():
            inputs[f"predictions__{mode}"] = scatter.shard(f"{mode_dir(mode)}/predictions/{{scatteritem}}.h5")
    return inputs


def qualitative_params(grid):
    r = config["report"]
    return {
        "dataset": dataset_params(),
        "split": report_grid_split(grid),
        "ids": list(r["ids"][grid]),
        "n_ids": r["n_ids"],
        "modes": sance_modes() if grid == "train" else deeplab_modes(),
        "cell_inches": r["cell_inches"],
        "dpi": r["dpi"],
    }


def iou_bars_inputs(wildcards):
    inputs = {"cam": f"{RESULTS}/eval/cam.json", "seeds": f"{RESULTS}/eval/seeds.json"}
    inputs.update({f"pseudo_labels__{m}": f"{mode_dir(m)}/eval/pseudo_labels.json" for m in sance_modes()})
    inputs.update({f"segmentation__{m}": f"{mode_dir(m)}/eval/segmentation.json" for m in deeplab_modes()})
    return inputs


def training_history_inputs(wildcards):
    inputs = {"history__classifier": f"{RESULTS}/classifier/history.csv"}
    inputs.update({f"history__sance_model_{m}": f"{mode_dir(m)}/sance_model/history.csv" for m in sance_modes()})
    inputs.update({f"history__segmenter_{m}": f"{mode_dir(m)}/segmenter/history.csv" for m in deeplab_modes()})
    return inputs


def report_targets():
    figures = f"{RESULTS}/figures"
    return [
        f"{RESULTS}/ablation.tsv",
        *[f"{mode_dir(m)}/summary.json" for m in ablation_modes()],
        f"{figures}/qualitative_train.png",
        f"{figures}/qualitative_val.png",
        f"{figures}/per_class_iou.png",
        f"{figures}/contour_pr.png",
        f"{figures}/training_curves.png",
    ]
