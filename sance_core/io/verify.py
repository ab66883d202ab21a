"""``sance verify``: check every artifact of a run and say how to rebuild the damaged ones."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from sance_core.io.store import rebuild_hint, verify_artifact

log = logging.getLogger(__name__)


def _check_model(path: Path) -> str | None:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to load means the file is unusable
        return f"{path}: damaged model file ({str(err).splitlines()[0][:200]}); {rebuild_hint(path)}"
    return None


def _check_json(path: Path) -> str | None:
    try:
        json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        return f"{path}: damaged JSON ({err}); {rebuild_hint(path)}"
    return None


def verify_run(folder: str | Path) -> tuple[list[str], int]:
    """Every ``.h5`` (all data read, every checksum checked), ``.pt`` (loaded weights-only) and ``.json``
    under ``folder`` (the resume checkpoints in ``.resume`` included). Returns (problems, files checked)."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such results folder")
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    checks = {".h5": verify_artifact, ".pt": _check_model, ".json": _check_json}
    problems, n = [], 0
    for path in files:
        check = checks.get(path.suffix)
        if check is None or ".tmp" in path.name:
            continue
        n += 1
        problem = check(path)
        if problem is not None:
            problems.append(problem)
    return problems, n
