# SANCE weakly supervised semantic segmentation: image tags -> CAM seeds -> SANCE contour and
# segmentation model -> pseudo labels -> DeepLab. All logic lives in the sance_core package;
# the rules in workflow/rules/ only wire files together and pass hyper-parameters as params.

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from sance_core.config_checks import relation_errors, schema_error_message

min_version("9.0")


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


wildcard_constraints:
    split=r"[A-Za-z0-9_.-]+",
    mode=r"[A-Za-z0-9_]+",


scattergather:
    shard=config["shards"],


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


rule all:
    default_target: True
    input:
        all_targets(),
