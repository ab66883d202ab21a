"""Run the CUDA tests on this machine and record their outcome and timings in docs/BENCHMARKS.md.

Usage (repository root, on a machine with a GPU; about 5-10 minutes)::

    .venv/bin/python benchmarks/cuda_checks.py              # runs tests/test_cuda.py, updates the docs
    .venv/bin/python benchmarks/cuda_checks.py --no-write   # only prints the table
    # the docs block from JUnit reports saved on a GPU machine (pytest -m cuda --junitxml=...):
    .venv/bin/python benchmarks/cuda_checks.py --junit cuda1.xml cuda2.xml --device-name "NVIDIA H200; torch ..." \
        --command "python3 -m pytest -m cuda ..."

It runs ``pytest -m cuda tests/test_cuda.py`` (float32 propagation on CUDA against float64
on the CPU, mixed-precision training steps and their resume, the tiny ``all`` with
``device: cuda``) with a JUnit report, turns each test's outcome and duration into a table
row together with the GPU's name, torch and CUDA versions, and replaces the section between
the ``cuda-checks`` markers of docs/BENCHMARKS.md. Without a GPU every test is skipped with
its reason; the docs are then left unchanged (nothing was measured) unless ``--write-skipped``.
The exit status is pytest's (0 also when all were skipped).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- cuda-checks:begin -->", "<!-- cuda-checks:end -->"


def read_junit(path: Path) -> list[dict[str, str | float]]:
    """One row per test case of a JUnit XML file: name, outcome (passed/failed/error/skipped), seconds, detail."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                detail = (node.get("message") or "").splitlines()[0][:160] if node.get("message") else ""
                break
        rows.append({"name": case.get("name", "?"), "outcome": outcome,
                     "seconds": float(case.get("time", 0.0)), "detail": detail})
    return rows


def junit_summary(paths: list[Path]) -> tuple[float, str]:
    """Seconds of all test suites in the reports and the UTC time of the first one's start."""
    wall, starts = 0.0, []
    for path in paths:
        for suite in ET.parse(path).getroot().iter("testsuite"):
            wall += float(suite.get("time", 0.0))
            if suite.get("timestamp"):
                starts.append(_dt.datetime.fromisoformat(suite.get("timestamp")))
    when = min(starts).astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if starts else "time unknown"
    return wall, when


def device_line() -> str:
    import torch

    if not torch.cuda.is_available():
        return f"no CUDA device visible (torch {torch.__version__})"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{', '.join(names)}; torch {torch.__version__}, CUDA {torch.version.cuda}"


def section(rows: list[dict], device: str, command: str, wall: float, when: str) -> str:
    lines = [BEGIN, "", f"Command: `{command}` ({when}; {device}; {wall:.0f} s in all).", "",
             "| test | outcome | seconds | note |", "|---|---|---:|---|"]
    for r in rows:
        lines.append(f"| `{r['name']}` | {r['outcome']} | {r['seconds']:.1f} | {r['detail']} |")
    return "\n".join(lines + ["", END])


def replace_section(text: str, new: str) -> str:
    """``text`` with the block between the markers replaced (appended under a heading if absent)."""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        return head + new + rest.split(END, 1)[1]
    return text.rstrip("\n") + "\n\n## CUDA paths on a GPU (`benchmarks/cuda_checks.py`)\n\n" + new + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-write", action="store_true", help="print the table, leave docs/BENCHMARKS.md alone")
    ap.add_argument("--write-skipped", action="store_true", help="record the table even when every test skipped")
    ap.add_argument("--doc", type=Path, default=DOC, help="the Markdown file to update")
    ap.add_argument("--timeout", type=int, default=560, help="seconds for the whole pytest run")
    ap.add_argument("--junit", type=Path, nargs="+", help="build the block from these saved JUnit reports "
                    "(run elsewhere, e.g. on a GPU machine) instead of running pytest here")
    ap.add_argument("--device-name", help="the GPU / torch / CUDA line of the machine that made the reports "
                    "(with --junit; default: this machine's)")
    ap.add_argument("--command", help="the command that made the reports (with --junit)")
    args, pytest_args = ap.parse_known_args(argv)  # the rest goes to pytest (e.g. -k propagation)
    if args.junit:
        missing = [str(p) for p in args.junit if not p.is_file()]
        if missing:
            ap.error(f"--junit: no such report: {', '.join(missing)}")
        if pytest_args:
            ap.error(f"--junit reads saved reports; pytest arguments are not used: {' '.join(pytest_args)}")
        rows = [row for path in args.junit for row in read_junit(path)]
        wall, when = junit_summary(args.junit)
        command = args.command or "pytest -m cuda tests/test_cuda.py --junitxml=..."
        failed = any(r["outcome"] in ("failed", "error") for r in rows)
        return _record(args, rows, args.device_name or device_line(), command, wall, when, int(failed))

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "cuda.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider",
               f"--junitxml={junit}", str(REPO / "tests" / "test_cuda.py"), *pytest_args]
        start = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, timeout=args.timeout)
            status = proc.returncode
        except subprocess.TimeoutExpired:
            print(f"pytest did not finish within {args.timeout} s", file=sys.stderr)
            status = 124
        wall = time.monotonic() - start
        rows = read_junit(junit) if junit.exists() else []
    if status == 5:  # no test collected: nothing to record
        print("no CUDA test was collected", file=sys.stderr)
        return status
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _record(args, rows, device_line(), "benchmarks/cuda_checks.py", wall, when, status)


def _record(args: argparse.Namespace, rows: list[dict], device: str, command: str, wall: float, when: str,
            status: int) -> int:
    """Print the block and write it into ``args.doc`` unless nothing was measured or ``--no-write``."""
    text = section(rows, device, command, wall, when)
    print(text)
    all_skipped = bool(rows) and all(r["outcome"] == "skipped" for r in rows)
    if args.no_write or not rows or (all_skipped and not args.write_skipped):
        if all_skipped:
            print("every CUDA test skipped: docs left unchanged", file=sys.stderr)
        return status
    write_atomic(args.doc, replace_section(args.doc.read_text(), text))
    print(f"updated {args.doc}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
