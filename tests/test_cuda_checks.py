"""The CPU side of benchmarks/cuda_checks.py: run the CUDA tests, read their report, update the docs."""

from __future__ import annotations

import importlib.util
import sys

import torch

from conftest import REPO


def _script():
    spec = importlib.util.spec_from_file_location("cuda_checks", REPO / "benchmarks" / "cuda_checks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["cuda_checks"] = module
    spec.loader.exec_module(module)
    return module


def test_section_replaces_only_its_block(tmp_path):
    checks = _script()
    rows = [{"name": "test_a", "outcome": "passed", "seconds": 1.25, "detail": ""},
            {"name": "test_b", "outcome": "skipped", "seconds": 0.0, "detail": "needs a CUDA device"}]
    block = checks.section(rows, "GPU X", "cmd", 12.0, "today")
    assert "| `test_a` | passed | 1.2 |" in block and "needs a CUDA device" in block
    doc = "# Benchmarks\n\nintro\n"
    once = checks.replace_section(doc, block)
    assert once.startswith(doc.rstrip("\n")) and once.count(checks.BEGIN) == 1
    again = checks.replace_section(once + "\n## after\n", block.replace("GPU X", "GPU Y"))
    assert again.count(checks.BEGIN) == 1 and "GPU Y" in again and "GPU X" not in again
    assert again.rstrip().endswith("## after")


def test_run_records_outcomes_and_skips_without_a_gpu(tmp_path):
    """A real run of the script on this machine, on one of the CUDA tests."""
    checks = _script()
    doc = tmp_path / "BENCH.md"
    doc.write_text("# Benchmarks\n")
    status = checks.main(["--doc", str(doc), "--write-skipped", "-k", "propagation"])
    text = doc.read_text()
    assert "test_propagation_float32_on_cuda_matches_float64_on_cpu" in text
    if torch.cuda.is_available():
        assert status == 0 and "| passed |" in text
    else:
        assert status == 0 and "| skipped |" in text and "needs a CUDA device" in text
        doc.write_text("# Benchmarks\n")
        checks.main(["--doc", str(doc), "-k", "propagation"])  # without --write-skipped: nothing recorded
        assert doc.read_text() == "# Benchmarks\n"
