"""One source of defaults: the stage dataclasses hold the paper's values; the schemas repeat them.

Snakemake fills a missing key from ``workflow/schemas/<section>.schema.yaml``; ``sance run``
(and ``--show-config``) from the stage's dataclass. Every schema default must equal the
dataclass default of the same hyper-parameter, and every hyper-parameter of a stage config
must be a schema key, so the two ways of running a stage train the same model from the same
partial config.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing

import pytest
import yaml

from conftest import REPO
from sance_core.eval.edge_eval import ContourEvalConfig
from sance_core.eval.evaluation import CAMEvalConfig
from sance_core.stages.cam import CAMConfig
from sance_core.stages.classifier import ClassifierConfig
from sance_core.stages.pseudo_labels import MapsConfig, PseudoLabelConfig
from sance_core.stages.sance import SanceConfig
from sance_core.stages.seeds import SeedConfig
from sance_core.stages.segmenter import PredictConfig, SegmenterConfig

SCHEMAS = REPO / "workflow" / "schemas"

# config section (dotted) -> the stage configs whose fields it feeds (schema key = field name,
# except where RENAMED says otherwise)
SECTION_CONFIGS: dict[str, tuple[type, ...]] = {
    "classifier": (ClassifierConfig,),
    "cam": (CAMConfig,),
    "seeds": (SeedConfig,),
    "sance": (SanceConfig,),
    "pseudo_labels": (MapsConfig, PseudoLabelConfig),
    "segmentation": (SegmenterConfig, PredictConfig),
    "evaluation": (CAMEvalConfig,),
    "evaluation.contour": (ContourEvalConfig,),
}
RENAMED = {("evaluation", "cam_thresholds"): "thresholds"}
# schema keys that are workflow wiring, not a stage-config field
WORKFLOW_ONLY = {"segmentation.modes", "pseudo_labels.map", "evaluation.contour"}
# stage-config fields that the workflow sets from elsewhere (paths, the split, the mode, where/how fast it runs)
NOT_IN_SECTION = {"dataset", "split", "mode", "seed", "device", "workers", "resume_dir", "compression",
                  "label_source", "backbone@CAMConfig", "backbone@PredictConfig", "tau_b@EvalConfig",
                  "align@PasteConfig",
                  # CRFConfig.gt_prob: the unary of a hard label (seeds only); these CRFs refine probabilities
                  "sance.online.crf.gt_prob", "segmentation.crf_params.gt_prob",
                  # Fig. 5's synthesis settings: the workflow fills them from the mode and pseudo_labels
                  "sance.epoch_eval.map", "sance.epoch_eval.scale", "sance.epoch_eval.radius",
                  "sance.epoch_eval.beta", "sance.epoch_eval.exp_times", "sance.epoch_eval.tau_b",
                  "sance.epoch_eval.normalize_seg", "sance.epoch_eval.seg_background"}


def schema(section: str) -> dict:
    return yaml.safe_load((SCHEMAS / f"{section.split('.')[0]}.schema.yaml").read_text())


def schema_props(section: str) -> dict:
    props = schema(section)["properties"]
    for part in section.split(".")[1:]:
        props = props[part]["properties"]
    return props


def field_default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def equal(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        # a: the schema's; keys only the dataclass has are checked by test_every_stage_hyper_parameter_is_a_schema_key
        return set(a) <= set(b) and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def schema_defaults(props: dict) -> dict:
    """The values Snakemake fills in for an empty mapping (nested objects recursively)."""
    out = {}
    for key, spec in props.items():
        if spec.get("type") == "object" and "properties" in spec:
            out[key] = schema_defaults(spec["properties"])
        elif "default" in spec:
            out[key] = spec["default"]
    return out


def pairs():
    """(key path, schema default, dataclass default, dataclass) for every schema key of a stage section."""
    for section, classes in SECTION_CONFIGS.items():
        defaults = schema_defaults(schema_props(section))
        for key, value in defaults.items():
            path = f"{section}.{key}"
            if path in WORKFLOW_ONLY:
                continue
            name = RENAMED.get((section, key), key)
            found = False
            for cls in classes:
                fields = {f.name: f for f in dataclasses.fields(cls)}
                if name in fields and f"{name}@{cls.__name__}" not in NOT_IN_SECTION:
                    found = True
                    yield path, value, plain(field_default(fields[name])), cls.__name__
            assert found, f"schema key {path} feeds no field of {[c.__name__ for c in classes]}"


@pytest.mark.parametrize("path,schema_value,class_value,cls", list(pairs()),
                         ids=lambda v: v if isinstance(v, str) and "." in v else "")
def test_schema_default_equals_the_stage_config_default(path, schema_value, class_value, cls):
    assert class_value is not dataclasses.MISSING, f"{cls}: {path} has no default"
    assert equal(schema_value, class_value), f"{path}: schema default {schema_value!r}, {cls} default {class_value!r}"


def _nested_fields(cls: type, prefix: str):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if {f"{f.name}@{cls.__name__}", f.name, f"{prefix}.{f.name}"} & NOT_IN_SECTION:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _nested_fields(hints[f.name], f"{prefix}.{f.name}")
        else:
            yield f"{prefix}.{f.name}"


def test_every_stage_hyper_parameter_is_a_schema_key():
    missing = []
    for section, classes in SECTION_CONFIGS.items():
        keys = {f"{section}.{k}" for k in schema_props(section)}
        flat = set()

        def walk(props, prefix):
            for k, spec in props.items():
                flat.add(f"{prefix}.{k}")
                if "properties" in spec:
                    walk(spec["properties"], f"{prefix}.{k}")
        walk(schema_props(section), section)
        for cls in classes:
            for path in _nested_fields(cls, section):
                renamed = {f"{s}.{v}": f"{s}.{k}" for (s, k), v in RENAMED.items()}
                if renamed.get(path, path) not in flat | keys:
                    missing.append(f"{path} ({cls.__name__})")
    assert not missing, f"stage-config fields without a schema key (Snakemake could not set them): {missing}"


def test_show_config_prints_the_schema_defaults(tmp_path):
    """``sance run train_sance --show-config`` with only the dataset: the schema's defaults of section sance."""
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"dataset": {"root": "x", "classes": ["background", "a"]}}))
    out = subprocess.run([sys.executable, "-m", "sance_core", "run", "train_sance", "--params", str(params),
                          "--show-config"], capture_output=True, text=True, cwd=REPO, check=True).stdout
    shown = json.loads(out)
    expected = schema_defaults(schema_props("sance"))
    for key, value in expected.items():
        assert equal(value, shown[key]), f"sance.{key}: --show-config {shown[key]!r}, schema {value!r}"


def test_config_yaml_holds_only_departures_each_with_a_reason():
    """Every hyper-parameter in config.yaml differs from its default and carries a comment."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    lines = (REPO / "config.yaml").read_text().splitlines()
    same = []
    for section in ("classifier", "cam", "seeds", "sance", "pseudo_labels", "segmentation"):
        defaults = schema_defaults(schema_props(section))

        def walk(values, defs, prefix):
            for key, value in values.items():
                if isinstance(value, dict) and isinstance(defs.get(key), dict):
                    walk(value, defs[key], f"{prefix}.{key}")
                elif key in defs and equal(value, defs[key]):
                    same.append(f"{prefix}.{key}")
                elif key in defs:
                    leaf = [line for line in lines if line.strip().startswith(f"{key}:")]
                    # the comment names the default it departs from and the demo's reason
                    assert leaf and all("#" in line for line in leaf), f"{prefix}.{key}: departure without a reason"
                    comments = [line.split("#", 1)[1].lower() for line in leaf]
                    assert all("demo" in c and ("paper" in c or "irnet" in c) for c in comments), \
                        f"{prefix}.{key}: say the paper's (or IRNet's) value and the demo's reason: {leaf}"
        walk(config.get(section) or {}, defaults, section)
    assert not same, f"config.yaml repeats defaults (remove them): {same}"
