"""Bridge from a Snakemake ``script:`` job to :func:`sance_core.stages.run_stage`.

Every rule runs ``workflow/scripts/run_stage.py``, which calls :func:`run_from_snakemake`: the
rule's name is the stage's name, ``params.cfg`` its config, the named inputs and outputs its files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from sance_core.io.store import (
    ArtifactDamagedError,
    ArtifactError,
    DiskFullError,
    remove_stale_temp_files,
)
from sance_core.runtime import set_threads, setup_logging
from sance_core.stages import get_stage, run_stage

log = logging.getLogger(__name__)


def _named(namedlist: Any) -> dict[str, Any]:
    """Named entries of a Snakemake Namedlist as a plain dict (lists stay lists)."""
    return {name: getattr(namedlist, name) for name in namedlist._names}


# Settings that decide where and how fast a job runs, never what it computes (a resumed training
# ends bit-identical to an uninterrupted one). They reach the job from the workflow config when it
# starts, not through params: Snakemake reruns a job whose params changed, and these must not.
# stage config field -> key path in the workflow config
RUNTIME_SETTINGS: dict[str, tuple[str, ...]] = {
    "device": ("device",),
    "workers": ("workers",),
    "checkpoint_interval": ("classifier", "checkpoint_interval"),
    "checkpoint_every": ("segmentation", "checkpoint_every"),
}


def runtime_settings(config: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The :data:`RUNTIME_SETTINGS` that ``stage``'s config has, taken from the workflow ``config``."""
    config_class, _ = get_stage(stage)
    fields = {f.name for f in dataclasses.fields(config_class)}
    settings = {}
    for name, path in RUNTIME_SETTINGS.items():
        value: Any = config
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if name in fields and value is not None:
            settings[name] = value
    return settings


def run_from_snakemake(smk: Any, stage: str | None = None) -> None:
    """Run the stage named like the rule (or ``stage``) with ``params.cfg``, logging to the rule's log file."""
    stage = stage or smk.rule
    setup_logging(smk.log[0] if len(smk.log) else None)
    set_threads(smk.threads)
    params = {**runtime_settings(smk.config, stage), **dict(smk.params.cfg)}
    try:
        run_stage(stage, params, _named(smk.input), _named(smk.output))
    except Exception as err:  # noqa: BLE001 - report cleanly, then fail the job
        log.error("stage %s failed: %s", stage, err)
        if not isinstance(err, (ValueError, KeyError, FileNotFoundError, DiskFullError, ArtifactError)):
            log.exception("traceback")
        for output in smk.output:  # temporary files of any writer of this job (a full disk must not stay full)
            remove_stale_temp_files(output)
        _mark_damaged_input(smk, err)
        sys.exit(1)


def _mark_damaged_input(smk: Any, err: BaseException) -> None:
    """An input artifact that failed its checksums gets modification time 0, older than its own
    inputs, so the next run rebuilds it and what depends on it instead of failing here again
    (a removed file would not be rebuilt while the files made from it are up to date). Only a
    file that is a declared input of this job."""
    damaged = err if isinstance(err, ArtifactDamagedError) else None
    cause = err.__cause__ or err.__context__
    while damaged is None and cause is not None:
        damaged = cause if isinstance(cause, ArtifactDamagedError) else None
        cause = cause.__cause__ or cause.__context__
    if damaged is None:
        return
    inputs = {os.path.realpath(str(p)) for p in smk.input}
    if os.path.realpath(damaged.path) in inputs and damaged.path.is_file():
        os.utime(damaged.path, (0, 0))
        log.error("marked the damaged input %s for rebuilding: run snakemake again to rebuild it and what "
                  "depends on it", damaged.path)
