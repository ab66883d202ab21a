"""Config errors worded for the user, found before any job runs (called by the Snakefile).

The Snakefile validates each config section against ``workflow/schemas/<section>.schema.yaml``.
jsonschema words its first error relative to the section and buries the key in a schema
dump; :func:`schema_error_message` turns it into one line that names the full key path
(``seeds.crf.gt_prob``), the value and what is allowed. :func:`relation_errors` checks what
a schema cannot express because it involves two keys (``bg_threshold <= fg_threshold``,
``[low, high]`` ranges, mutually exclusive options); without it such a mistake would only
surface when the stage's job starts, possibly after hours of earlier stages.

Pure Python (no torch): it runs on every ``snakemake`` call, dry runs included.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def key_path(parts: Iterable[Any]) -> str:
    """``["seeds", "crf", "gt_prob"]`` -> ``seeds.crf.gt_prob``; list indices as ``cam.scales[0]``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def schema_error_message(section: str | None, error: BaseException | None) -> str:
    """One line for a jsonschema ``ValidationError`` of ``section`` (None: the top level).

    Unknown keys list the allowed ones; enum errors list the allowed values; every message
    starts with the full key path.
    """
    path = getattr(error, "absolute_path", None)
    if error is None or path is None:  # not a jsonschema error: keep what we have
        where = section or "(top level)"
        return f"config {where}: {error}" if error is not None else f"config {where} is invalid"
    parts = ([section] if section else []) + list(path)
    where = key_path(parts)
    validator = getattr(error, "validator", None)
    schema = getattr(error, "schema", {}) or {}
    instance = getattr(error, "instance", None)
    if validator == "additionalProperties" and isinstance(instance, Mapping):
        allowed = list(schema.get("properties", {}))
        unknown = [k for k in instance if k not in allowed]
        named = ", ".join(key_path([*parts, k]) for k in unknown)
        return f"unknown config key(s) {named}; allowed keys here: {', '.join(allowed)}"
    if validator == "enum":
        allowed = ", ".join(repr(v) for v in schema.get("enum", []))
        return f"config key {where}: {_short(instance)} is not allowed; allowed values: {allowed}"
    message = getattr(error, "message", str(error))
    return f"config key {where}: {message}"


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _range_error(config: Mapping[str, Any], key: str) -> str | None:
    value = _get(config, key)
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        if value[0] > value[1]:
            return f"config key {key}: [low, high] needs low <= high, got {list(value)}"
    return None


RANGE_KEYS = (
    "classifier.scale_range", "sance.scale_range", "segmentation.scale_range",
    "sance.paste.rect_scale", "sance.paste.patch_scale",
)


BASE_MODES = ("irnet", "sance_naive", "sance")


def _mode_errors(config: Mapping[str, Any], modes: list[str]) -> list[str]:
    """Modes that are neither a base mode nor a mode_options row with a base; maps a base cannot make."""
    errors: list[str] = []
    options = _get(config, "mode_options") or {}
    for mode in modes:
        base = (options.get(mode) or {}).get("base", mode)
        if base not in BASE_MODES:
            errors.append(f"config key modes: {mode!r} is not one of {', '.join(BASE_MODES)}; a Table 1 row "
                          f"needs mode_options.{mode}.base (one of {', '.join(BASE_MODES)})")
        elif base == "irnet" and (options.get(mode) or {}).get("map") == "seg":
            errors.append(f"config key mode_options.{mode}.map: 'seg' needs a segmentation branch, "
                          "which base 'irnet' has not (allowed: cam)")
    for mode in _get(config, "segmentation.modes") or []:
        if mode != "fully_supervised" and mode not in modes:
            errors.append(f"config key segmentation.modes: {mode!r} is not in modes ({', '.join(modes)}) "
                          "nor 'fully_supervised'")
    return errors


def relation_errors(config: Mapping[str, Any]) -> list[str]:
    """Every violated constraint between two config keys, each naming the keys and values."""
    errors: list[str] = []
    fg, bg = _get(config, "seeds.fg_threshold"), _get(config, "seeds.bg_threshold")
    if isinstance(fg, (int, float)) and isinstance(bg, (int, float)) and bg > fg:
        errors.append(f"config keys seeds.bg_threshold ({bg}) and seeds.fg_threshold ({fg}): "
                      "need bg_threshold <= fg_threshold (paper: 0.05 and 0.30)")
    errors += [e for e in (_range_error(config, k) for k in RANGE_KEYS) if e]
    for section in ("sance", "segmentation"):
        from_classifier = _get(config, f"{section}.init_from_classifier")
        if _get(config, f"{section}.weights") and from_classifier:
            errors.append(f"config keys {section}.weights and {section}.init_from_classifier: set one, not both "
                          f"(weights = an ImageNet file; init_from_classifier = start from the CAM classifier)")
        ours, theirs = _get(config, f"{section}.backbone"), _get(config, "classifier.backbone")
        if from_classifier and ours and theirs and ours != theirs:
            errors.append(f"config keys {section}.backbone ({ours}) and classifier.backbone ({theirs}): "
                          f"{section}.init_from_classifier starts the {section} backbone from the classifier's, "
                          "so the two must be the same architecture")
    if _get(config, "demo.enabled"):
        lo, hi = _get(config, "demo.min_side"), _get(config, "demo.max_side")
        if isinstance(lo, int) and isinstance(hi, int) and lo >= hi:
            errors.append(f"config keys demo.min_side ({lo}) and demo.max_side ({hi}): need min_side < max_side")
    modes, seg_modes = _get(config, "modes"), _get(config, "segmentation.modes")
    if modes is not None and not modes and seg_modes is not None and not seg_modes:  # None: the (non-empty) default
        errors.append("config keys modes and segmentation.modes are both empty: the ablation table needs "
                      "at least one mode (modes: irnet, sance_naive, sance; segmentation.modes: also fully_supervised)")
    mode_list = list(BASE_MODES) if modes is None else list(modes)  # None: the schema's default
    errors += _mode_errors(config, mode_list)
    if ("sance" in mode_list and _get(config, "sance.online.refine") == "saliency"
            and not _get(config, "sance.online.saliency_dir")):
        errors.append("config key sance.online.saliency_dir: required when sance.online.refine is 'saliency'")
    return errors


def yaml_syntax_error(path: str) -> str | None:
    """``file:line:column: problem`` for a config file that is not valid YAML; None when it parses.

    Snakemake's own message for such a file names neither the file nor the place.
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            yaml.safe_load(f)
    except FileNotFoundError:
        return None  # Snakemake reports a missing file itself
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")
    return None


CONFIGFILE_FLAGS = ("--configfile", "--configfiles")


def configfile_args(argv: Sequence[str]) -> list[str]:
    """The files a Snakemake command line gives with ``--configfile`` / ``--configfiles``.

    Both flags take one or more values (``--configfile a.yaml b.yaml`` or ``--configfile=a.yaml``);
    the values end at the next option. A value that is no existing file (a target such as ``all``
    written after the flag) is left out: Snakemake names a missing config file itself.
    """
    files: list[str] = []
    taking = False
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if flag in CONFIGFILE_FLAGS:
            taking = not eq
            if eq:
                files.append(value)
            continue
        if arg.startswith("-"):
            taking = False
        elif taking:
            files.append(arg)
    return [f for f in files if Path(f).is_file()]
