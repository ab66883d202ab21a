"""The checks of `make lint` (the Snakemake lint runs in test_workflow.py): the tree passes them."""

from __future__ import annotations

import subprocess

import pytest

from conftest import BIN, REPO


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    exe = BIN / tool
    if not exe.is_file():
        pytest.fail(f"{exe} not found: install envs/requirements.txt (make venv)")
    return subprocess.run([str(exe), *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing():
    proc = _run("ruff", "check", "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_snakemake_files_are_formatted():
    proc = _run("snakefmt", "--check", "Snakefile", "workflow")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
