# SANCE weakly supervised semantic segmentation: image tags -> CAM seeds -> SANCE contour and
# segmentation model -> pseudo labels -> DeepLab. All logic lives in the sance_core package;
# the rules in workflow/rules/ only wire files together and pass hyper-parameters as params.

import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

sys.path.insert(0, workflow.basedir)  # this checkout's sance_core, installed or not
from sance_core.config_checks import relation_errors, schema_error_message, yaml_syntax_error
from sance_core.pretrained import check_weights

min_version("9.0")


# Snakemake says only "Config file is not valid JSON or YAML": name the file, line and column
if (_yaml_error := yaml_syntax_error("config.yaml")) is not None:
    raise WorkflowError(_yaml_error)


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


# the top level first (unknown sections, global keys), then each section against its own schema,
# then what involves two keys; messages name the full key path and what is allowed
try:
    validate(config, "workflow/schemas/config.schema.yaml")
except WorkflowError as err:
    raise WorkflowError(f"{schema_error_message(None, err.__context__)} (see workflow/schemas/config.schema.yaml)", err)
SECTIONS = [
    "data",
    "demo",
    "classifier",
    "cam",
    "seeds",
    "evaluation",
    "sance",
    "pseudo_labels",
    "segmentation",
    "report",
]
for section in SECTIONS:
    try:
        validate(config[section], f"workflow/schemas/{section}.schema.yaml")
    except WorkflowError as err:
        raise WorkflowError(
            f"{schema_error_message(section, err.__context__)} (see workflow/schemas/{section}.schema.yaml)", err
        )
if relation_errors(config):
    raise WorkflowError("config values contradict each other:\n  " + "\n  ".join(relation_errors(config)))
# backbone weights: 'imagenet' is fetched into torchvision's cache now (where a network is
# reachable), so jobs on compute nodes read it; a missing file stops here, before any job
WEIGHT_ERRORS = check_weights(config)
if WEIGHT_ERRORS:
    raise WorkflowError("backbone weights missing:\n  " + "\n  ".join(WEIGHT_ERRORS))


wildcard_constraints:
    split=r"[A-Za-z0-9_.-]+",
    mode=r"[A-Za-z0-9_]+",


scattergather:
    shard=config["shards"],


# Small jobs (seconds, little memory) run inside the Snakemake process instead of as their own
# cluster job: shard lists, summaries, the ablation table and the report figures. Under the SLURM
# profile this saves one sbatch submission (and two Snakemake start-ups) each; locally it changes nothing.
localrules:
    shard_ids,
    summarize,
    ablation_table,
    ablation,
    figure_qualitative,
    figure_iou_bars,
    figure_pr_curves,
    figure_training_curves,
    figure_epoch_miou,


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/classifier.smk"
include: "workflow/rules/cam.smk"
include: "workflow/rules/seeds.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/sance.smk"
include: "workflow/rules/pseudo_labels.smk"
include: "workflow/rules/segmenter.smk"
include: "workflow/rules/contours.smk"
include: "workflow/rules/report.smk"


# A damaged artifact (truncated, overwritten, unfinished) is marked before the DAG is built
# (modification time 0, so older than its inputs), so that Snakemake rebuilds it and what reads it
# instead of failing at its first reader on every run. A cheap check (no data read; dry runs mark
# too); readers verify the data checksums, and a job whose input fails them marks that input the same way
# (sance_core.stages.adapter). Jobs do not repeat the check.
if workflow.is_main_process:
    from snakemake.logging import logger

    from sance_core.io.store import mark_damaged_artifacts

    for damaged in mark_damaged_artifacts(RESULTS):
        logger.warning(f"damaged artifact {damaged} will be rebuilt")


rule all:
    default_target: True
    input:
        all_targets(),
