# Helpers shared by all stage files (paths, per-stage params as plain dicts, resources).
# Every hyper-parameter reaches its job through params, built here from the config, so that
# changing it reruns exactly the stages that read it. Settings that change no result (device,
# workers, checkpoint timing) are not params: the job reads them from the config when it starts
# (sance_core.stages.adapter.RUNTIME_SETTINGS), so changing them reruns nothing.

import os
import sys
from pathlib import Path

# Jobs inherit this: torch's OpenMP worker threads otherwise spin while they wait, which on a
# busy or shared CPU stalls every multi-threaded job (a 2-thread ResNet-18 step under load 14:
# 9.9 s spinning, 1.5 s passive). Set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DATASET = config["data"]["name"]
# Dataset, classifier and CAMs (stages 1-3) live under SHARED; the seeds and everything after them
# under RESULTS, which for oracle seeds (seeds.source: oracle) is a folder named after the
# corruption, so oracle runs never mix with CAM runs or with each other.
SHARED = f"results/{DATASET}"
SHARED_LOGS = f"logs/{DATASET}"
SHARED_BENCH = f"benchmarks/{DATASET}"


def seed_run_dir():
    """'' for CAM seeds; 'oracle_<corruption>' for oracle seeds (sance_core.ops.oracle_seeds.OracleConfig.tag)."""
    if config["seeds"].get("source", "cam") != "oracle":
        return ""
    o = {"core": 1.0, "leak": 0, "false_rate": 0.0, "unknown": 4, **config["seeds"].get("oracle", {})}
    return f"oracle_core{o['core']:g}_leak{o['leak']}_false{o['false_rate']:g}_unk{o['unknown']}"


SEED_RUN = seed_run_dir()
RESULTS = f"{SHARED}/{SEED_RUN}" if SEED_RUN else SHARED
LOGS = f"{SHARED_LOGS}/{SEED_RUN}" if SEED_RUN else SHARED_LOGS
BENCH = f"{SHARED_BENCH}/{SEED_RUN}" if SEED_RUN else SHARED_BENCH
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
    """Inputs that stand for the dataset: the generated demo folder, or for real data every file its
    labels come from (split lists, tags or label file, masks, XML), so that editing one of them
    reruns validation and what depends on the labels."""
    if config["demo"]["enabled"]:
        return config["data"]["root"]
    from sance_core.data.dataset import DatasetSpec, label_source_files

    spec = DatasetSpec(**{**dataset_params(), "classes": tuple(config["data"]["classes"])})
    return label_source_files(spec, splits())


def manifest():
    return f"{SHARED}/manifest.json"


def all_targets():
    """Every final target of `snakemake all`, in pipeline order (the one list of them)."""
    return [
        manifest(),
        *shard_files(config["data"]["train_split"]),
        *cam_shards(),
        f"{SHARED}/eval/classifier.json",
        f"{SHARED}/eval/cam.json",
        f"{RESULTS}/eval/seeds.json",
        *[target for mode in sance_modes() for target in pseudo_label_targets(mode)],
        *[f"{mode_dir(m)}/eval/contour.json" for m in sance_modes()],
        *[f"{RESULTS}/{m}/eval/segmentation.json" for m in deeplab_modes()],
        *report_targets(),
    ]


def shard_files(split):
    """The shard id lists of a split (`--set-scatter shard=N` changes their number)."""
    return scatter.shard(f"{SHARED}/shards/{split}/{{scatteritem}}.txt")


def gpu_resources():
    """GPUs a training job asks the scheduler for: 1 when config device names CUDA, else 0."""
    return 1 if str(config["device"]).startswith("cuda") else 0


# Stages 2-3 (classifier and CAMs), built from config["classifier"] and config["cam"].
CLASSIFIER_KEYS = (
    "backbone",
    "weights",
    "output_stride",
    "zero_init_residual",
    "epochs",
    "batch_size",
    "crop_size",
    "scale_range",
    "lr",
    "head_lr_mult",
    "weight_decay",
    "momentum",
    "poly_power",
    "recipe",
)


def classifier_params():
    c = config["classifier"]
    return {
        "dataset": dataset_params(),
        "split": config["data"]["train_split"],
        **{k: c[k] for k in CLASSIFIER_KEYS},
        "seed": config["seed"],
        "resume_dir": f"{SHARED}/.resume/classifier",
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
        "compression": config["artifacts"]["compression"],
    }


def classifier_eval_params():
    return {
        "dataset": dataset_params(),
        "split": config["data"]["val_split"],
        "backbone": config["classifier"]["backbone"],
        "flip": config["cam"]["flip"],
    }


def cam_shards():
    """All CAM shard files of the training split, for rules that read every CAM."""
    return gather.shard(f"{SHARED}/cam/{{scatteritem}}.h5")


# Stage 4 (seeds): CAM seeds, or oracle seeds from the masks in oracle runs.


def make_seeds_inputs(wildcards):
    if SEED_RUN:
        return {
            "shard": f"{SHARED}/shards/{config['data']['train_split']}/{wildcards.scatteritem}.txt",
            "manifest": manifest(),
        }
    return {"cam": f"{SHARED}/cam/{wildcards.scatteritem}.h5"}


def make_seeds_params():
    s = config["seeds"]
    if SEED_RUN:  # only oracle runs get the oracle settings (CAM seeds do not rerun when they change)
        return {
            "dataset": dataset_params(),
            "compression": config["artifacts"]["compression"],
            "source": "oracle",
            "oracle": dict(s["oracle"]),
            "split": config["data"]["train_split"],
            "seed": config["seed"],
        }
    return {
        "dataset": dataset_params(),
        "fg_threshold": s["fg_threshold"],
        "bg_threshold": s["bg_threshold"],
        "crf": dict(s["crf"]),
        "compression": config["artifacts"]["compression"],
    }


# Stage 7 (DeepLab): the params of the segmenter jobs of a mode, built from config["segmentation"].
SEGMENTER_TRAIN_KEYS = (
    "backbone",
    "weights",
    "init_from_classifier",
    "output_stride",
    "rates",
    "frozen_bn",
    "iterations",
    "batch_size",
    "crop_size",
    "scale_range",
    "lr",
    "head_lr_mult",
    "weight_decay",
    "momentum",
    "poly_power",
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
        "resume_dir": f"{RESULTS}/.resume/{mode}/segmenter",
    }


def segmenter_train_inputs(wildcards):
    """The manifest, the pseudo-label PNG folder of the mode (none for the GT upper bound) and,
    when the backbone starts from it, the CAM classifier."""
    inputs = {"manifest": manifest()}
    if wildcards.mode != "fully_supervised":
        inputs["labels"] = f"{RESULTS}/{wildcards.mode}/pseudo_labels/png"
    if config["segmentation"]["init_from_classifier"]:
        inputs["classifier"] = f"{SHARED}/classifier/model.pt"
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
        "compression": config["artifacts"]["compression"],
    }


# Stages 5-6 (SANCE and its pseudo labels): every mode of config["modes"] writes under its own
# folder; a mode gets only the settings it uses, so e.g. changing the label refine module
# reruns 'sance' and leaves 'irnet' and 'sance_naive' alone. A mode is one of the three base
# modes or a row of Table 1 named in config["mode_options"] (base, stride, map, TTA).
SANCE_MODES = ("irnet", "sance_naive", "sance")
SANCE_MODE_RE = "[A-Za-z0-9_]+"
# the paper's settings per base mode (Table 1): the IRNet baseline is stride 16, CAM map,
# single-scale maps; SANCE(-naive) take sance.output_stride, pseudo_labels.map and the TTA scales
BASE_MODE_SETTINGS = {
    "irnet": {"output_stride": 16, "tta": False},
    "sance_naive": {},
    "sance": {},
}


def mode_settings(mode):
    """base, output_stride, map, tta of a mode: mode_options[mode] over the base mode's paper settings."""
    options = dict(config.get("mode_options", {}).get(mode, {}))
    base = options.pop("base", mode)
    settings = {
        "base": base,
        "output_stride": config["sance"]["output_stride"],
        "map": config["pseudo_labels"]["map"][base],
        "tta": True,
        **BASE_MODE_SETTINGS[base],
    }
    settings.update(options)
    return settings


def table1_key(mode):
    """Table 1's row order: baseline, SANCE-naive, SANCE; stride 16 before 8; CAM map before seg; TTA last."""
    m = mode_settings(mode)
    return (SANCE_MODES.index(m["base"]), -m["output_stride"], m["map"] != "cam", bool(m["tta"]))


# pseudo_labels keys of the stage-6 synthesis, shared by stage 6 and Fig. 5's per-epoch evaluation
SYNTHESIS_KEYS = ("radius", "beta", "exp_times", "tau_b", "normalize_seg", "seg_background")

SANCE_TRAIN_KEYS = (
    "backbone",
    "weights",
    "init_from_classifier",
    "output_stride",
    "frozen_bn",
    "contour_channels",
    "epochs",
    "batch_size",
    "crop_size",
    "scale_range",
    "lr",
    "new_lr_mult",
    "weight_decay",
    "momentum",
    "poly_power",
    "grad_clip",
    "lr_warmup",
    "contour_radius",
    "contour_power",
    "amp",
)


def mode_dir(mode):
    """Results folder of one ablation mode: results/<name>/<mode>."""
    return f"{RESULTS}/{mode}"


def sance_modes():
    """The SANCE modes of the run in Table 1's order."""
    return sorted(config["modes"], key=table1_key)


def sance_train_params(mode):
    s = config["sance"]
    settings = mode_settings(mode)
    params = {
        "dataset": dataset_params(),
        "mode": settings["base"],
        "split": config["data"]["train_split"],
        **{k: s[k] for k in SANCE_TRAIN_KEYS},
        "output_stride": settings["output_stride"],
        "seed": config["seed"],
        "resume_dir": f"{RESULTS}/.resume/{mode}/sance_model",
    }
    if epoch_eval_images() > 0:  # Fig. 5: pseudo labels as stage 6 makes them, one scale
        p = config["pseudo_labels"]
        params["epoch_eval"] = {
            "images": s["epoch_eval"]["images"],
            "map": settings["map"],
            "scale": p["scales"][0],
            **{k: p[k] for k in SYNTHESIS_KEYS},
        }
    mode = settings["base"]
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
        inputs["classifier"] = f"{SHARED}/classifier/model.pt"
    if epoch_eval_images() > 0 and pseudo_label_map(wildcards.mode) == "cam":
        inputs["cam"] = cam_shards()
    return inputs


def pseudo_label_map(mode):
    return mode_settings(mode)["map"]


def infer_maps_params(mode):
    """TTA: the pseudo_labels scales (+flip) averaged; without: the first scale alone, no flip."""
    p = config["pseudo_labels"]
    tta = mode_settings(mode)["tta"]
    return {
        "dataset": dataset_params(),
        "mode": mode_settings(mode)["base"],
        "split": config["data"]["train_split"],
        "scales": list(p["scales"]) if tta else list(p["scales"][:1]),
        "flip": p["flip"] if tta else False,
        "compression": config["artifacts"]["compression"],
    }


def make_pseudo_labels_params(mode):
    p = config["pseudo_labels"]
    return {
        "dataset": dataset_params(),
        "mode": mode,
        "split": config["data"]["train_split"],
        "map": pseudo_label_map(mode),
        **{k: p[k] for k in SYNTHESIS_KEYS},
        "compression": config["artifacts"]["compression"],
    }


def make_pseudo_labels_inputs(wildcards):
    """The mode's maps of the shard, its id list, the manifest and, for map 'cam', the CAM shard."""
    inputs = {
        "maps": f"{mode_dir(wildcards.mode)}/maps/{wildcards.shard}.h5",
        "shard": f"{SHARED}/shards/{config['data']['train_split']}/{wildcards.shard}.txt",
        "manifest": manifest(),
    }
    if pseudo_label_map(wildcards.mode) == "cam":
        inputs["cam"] = f"{SHARED}/cam/{wildcards.shard}.h5"
    return inputs


def pseudo_label_targets(mode):
    return [f"{mode_dir(mode)}/eval/pseudo_labels.json", f"{mode_dir(mode)}/pseudo_labels/png"]


# Stage 8 contours and the report (rules in contours.smk and report.smk).
def deeplab_modes():
    """The DeepLab modes of the config; without masks (data.mask_dir: null) the fully supervised
    upper bound, which trains on them, is left out with a note (evaluations skip images without
    a mask, so with none they report no score)."""
    modes = list(config["segmentation"]["modes"])
    if not config["data"]["mask_dir"] and "fully_supervised" in modes:
        modes.remove("fully_supervised")
    return modes


if not config["data"]["mask_dir"] and "fully_supervised" in config["segmentation"]["modes"]:
    from snakemake.logging import logger

    logger.warning(
        "segmentation.modes: 'fully_supervised' is left out: it trains on ground-truth masks and "
        "data.mask_dir is null (remove it from segmentation.modes to silence this note)"
    )


def epoch_eval_images():
    """Images scored after each SANCE epoch (paper Fig. 5); 0 without masks (nothing to score them on)."""
    return config["sance"]["epoch_eval"]["images"] if config["data"]["mask_dir"] else 0


if not config["data"]["mask_dir"] and config["sance"]["epoch_eval"]["images"] > 0:
    from snakemake.logging import logger

    logger.warning(
        "sance.epoch_eval: the per-epoch pseudo-label mIoU (Fig. 5) is left out: it is scored on the "
        "masks and data.mask_dir is null (set sance.epoch_eval.images: 0 to silence this note)"
    )


def ablation_modes():
    """Rows of the ablation table: the SANCE modes, then the DeepLab-only ones (fully_supervised)."""
    return sance_modes() + [m for m in deeplab_modes() if m not in sance_modes()]


def contour_maps_inputs(wildcards):
    """The mode's trained model, the manifest and, when set, the id list of the contour benchmark."""
    inputs = {"manifest": manifest(), "model": f"{mode_dir(wildcards.mode)}/sance_model/model.pt"}
    id_list = config["evaluation"]["contour"]["id_list"]
    if id_list:
        inputs["ids"] = id_list
    return inputs


def contour_maps_params(mode):
    """infer_contours: raw single-scale maps of the val split or of evaluation.contour.id_list."""
    return {
        "dataset": dataset_params(),
        "mode": mode_settings(mode)["base"],
        "split": config["data"]["val_split"],
        "id_list": config["evaluation"]["contour"]["id_list"],
        "compression": config["artifacts"]["compression"],
    }


def contour_eval_params(mode):
    return {
        "dataset": dataset_params(),
        "split": config["data"]["val_split"],
        "mode": mode,
        **dict(config["evaluation"]["contour"]),
    }


def summary_inputs(wildcards):
    """The evaluation JSONs that apply to a mode (fully_supervised: only its DeepLab evaluation)."""
    mode = wildcards.mode
    inputs = {"manifest": manifest()}
    if mode in sance_modes():
        inputs.update(
            {
                "classifier": f"{SHARED}/eval/classifier.json",
                "cam": f"{SHARED}/eval/cam.json",
                "seeds": f"{RESULTS}/eval/seeds.json",
                "pseudo_labels": f"{mode_dir(mode)}/eval/pseudo_labels.json",
                "contour": f"{mode_dir(mode)}/eval/contour.json",
            }
        )
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
        **({k: mode_settings(mode)[k] for k in ("base", "output_stride", "tta")} if mode in sance_modes() else {}),
    }


def report_grid_split(grid):
    return config["data"]["train_split"] if grid == "train" else config["data"]["val_split"]


def qualitative_inputs(wildcards):
    """train grid: CAMs, seeds, maps and pseudo labels of every SANCE mode; val grid: DeepLab predictions."""
    inputs = {"manifest": manifest()}
    if wildcards.grid == "train":
        inputs["cam"] = scatter.shard(f"{SHARED}/cam/{{scatteritem}}.h5")
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
    inputs = {"cam": f"{SHARED}/eval/cam.json", "seeds": f"{RESULTS}/eval/seeds.json"}
    inputs.update({f"pseudo_labels__{m}": f"{mode_dir(m)}/eval/pseudo_labels.json" for m in sance_modes()})
    inputs.update({f"segmentation__{m}": f"{mode_dir(m)}/eval/segmentation.json" for m in deeplab_modes()})
    return inputs


def training_history_inputs(wildcards):
    inputs = {"history__classifier": f"{SHARED}/classifier/history.csv"}
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
        *([f"{figures}/epoch_miou.png"] if epoch_eval_images() > 0 else []),
    ]
