"""Bridge from a Snakemake ``script:`` job to :func:`sance_core.stages.run_stage`.

Every rule runs ``workflow/scripts/run_stage.py``, which calls :func:`run_from_snakemake`: the
rule's name is the stage's name, ``params.cfg`` its config, the named inputs and outputs its files.
"""

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


def run_from_snakemake(smk: Any, stage: str | None = None) -> None:
    """Run the stage named like the rule (or ``stage``) with ``params.cfg``, logging to the rule's log file."""
    stage = stage or smk.rule
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
