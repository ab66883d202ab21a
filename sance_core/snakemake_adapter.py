"""Thin bridge from a Snakemake ``script:`` job to :func:`sance_core.stages.run_stage`."""

from __future__ import annotations

import logging
import sys
from typing import Any

from sance_core.runtime import set_threads, setup_logging
from sance_core.stages import run_stage

log = logging.getLogger(__name__)


def _named(namedlist: Any) -> dict[str, Any]:
    """Named entries of a Snakemake Namedlist as a plain dict (lists stay lists)."""
    return {name: getattr(namedlist, name) for name in namedlist._names}


def run_from_snakemake(smk: Any, stage: str) -> None:
    """Build the stage config from ``params.cfg`` and run it, logging to the rule's log file."""
    setup_logging(smk.log[0] if len(smk.log) else None)
    set_threads(smk.threads)
    params = dict(smk.params.cfg)
    try:
        run_stage(stage, params, _named(smk.input), _named(smk.output))
    except Exception as err:  # noqa: BLE001 - report cleanly, then fail the job
        log.error("stage %s failed: %s", stage, err)
        if not isinstance(err, (ValueError, KeyError, FileNotFoundError)):
            log.exception("traceback")
        sys.exit(1)
