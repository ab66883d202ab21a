"""The CPU side of benchmarks/cuda_checks.py: run the CUDA tests, read their report, update the docs."""

from __future__ import annotations

import pytest
import torch

from conftest import load_benchmark


def _script():
    return load_benchmark("cuda_checks")


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


_REPORT = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite name="pytest" errors="0"
failures="{failures}" skipped="0" tests="1" time="{time}" timestamp="{stamp}" hostname="vm">{case}</testsuite></testsuites>"""


def test_saved_junit_reports_make_the_block(tmp_path):
    """`--junit`: the block from reports made on another machine, their times and the given device line."""
    checks = _script()
    passed = tmp_path / "a.xml"
    passed.write_text(_REPORT.format(failures=0, time="40.5", stamp="2026-11-30T00:47:07.240213+00:00",
                                     case='<testcase classname="tests.test_cuda" name="test_a" time="38.317" />'))
    failed = tmp_path / "b.xml"
    failed.write_text(_REPORT.format(failures=1, time="303.3", stamp="2026-11-30T00:48:00.571305+00:00",
                                     case='<testcase classname="tests.test_cuda" name="test_b" time="300.017">'
                                          '<failure message="Failed: Timeout (&gt;300.0s) from pytest-timeout.">'
                                          'trace</failure></testcase>'))
    doc = tmp_path / "BENCH.md"
    doc.write_text("# Benchmarks\n")
    status = checks.main(["--doc", str(doc), "--junit", str(passed), str(failed),
                          "--device-name", "GPU Z; torch 9.9", "--command", "pytest -m cuda x"])
    text = doc.read_text()
    assert status == 1  # a failed test in the reports
    assert "| `test_a` | passed | 38.3 |" in text
    assert "| `test_b` | failed | 300.0 | Failed: Timeout (>300.0s) from pytest-timeout. |" in text
    assert "Command: `pytest -m cuda x` (2026-11-30 00:47 UTC; GPU Z; torch 9.9; 344 s in all)." in text
    assert checks.main(["--doc", str(doc), "--no-write", "--junit", str(passed), "--device-name", "G"]) == 0


def test_saved_junit_report_missing_is_named(tmp_path, capsys):
    checks = _script()
    missing = tmp_path / "nope.xml"
    with pytest.raises(SystemExit) as exc:
        checks.main(["--doc", str(tmp_path / "d.md"), "--junit", str(missing)])
    assert exc.value.code == 2
    assert str(missing) in capsys.readouterr().err
