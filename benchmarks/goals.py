"""The demo's quality goals over runs of several generator seeds: each run, the mean, the range, and how many meet them.

Reads only what ``snakemake all`` wrote into each run folder, so the table is the pipeline's own
numbers, not a copy:

* ``eval/cam.json``: CAM mIoU at its best background threshold and the IoU of every class;
* ``<mode>/summary.json`` of every mode: seed precision and coverage, pseudo-label mIoU (train),
  contour ODS (val) and DeepLab mIoU (val);
* ``fully_supervised/summary.json``: DeepLab trained on the ground-truth masks.

The goals are those of the demo's issues (docs/RESULTS.md, "The goals at a glance"):

* CAM mIoU >= 45 and every class's CAM IoU >= 25 (IRNet's CAMs on VOC: 48.3);
* seeds >= 85 % precise at >= 50 % coverage;
* the method's pseudo labels >= the baseline's + 5 points; its contour ODS above the baseline's;
* the method's DeepLab >= 85 % of the fully supervised DeepLab.

Printed: one markdown table of the goals (a column per run, then mean, range = max - min, and
"met in" = runs meeting the goal / runs), and one of every mode's pseudo-label mIoU, contour ODS
and DeepLab mIoU (mean and range over the runs; the spread between generator seeds asked for by
the demo's issue). All numbers in %.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/goals.py results/demo results/demo_s1 results/demo_s2
    # runs of other generator seeds: snakemake ... --configfile config.yaml seed1.yaml -- all, with
    # seed1.yaml = {data: {name: demo_s1, root: resources/demo_s1}, demo: {seed: 1}}
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sance_core.stages.summary import SummaryError, read_json

CAM_MIOU = 0.45
CAM_CLASS_IOU = 0.25
SEED_PRECISION = 0.85
SEED_COVERAGE = 0.50
PSEUDO_LABEL_MARGIN = 0.05
DEEPLAB_SHARE = 0.85
REFERENCE = "fully_supervised"

# comparisons ">=" of differences and ratios of stored fractions tolerate their rounding (0.42 - 0.37 < 0.05)
_EPS = 1e-9
# the keys read from every mode's summary.json
_SUMMARY_KEYS = ("pseudo_label_miou", "contour_ods", "segmentation_miou", "seed_precision", "seed_coverage")
# what writes each file, for the error when it is missing
_WRITER = {"cam.json": "rule evaluate_cams", "summary.json": "rule summarize (target all)"}


@dataclass(frozen=True)
class Run:
    """The numbers of one run folder (fractions, as the pipeline stores them)."""

    name: str
    cam_miou: float
    cam_iou: Mapping[str, float]
    seed_precision: float
    seed_coverage: float
    modes: Mapping[str, Mapping[str, float]]  # mode -> the _SUMMARY_KEYS of its summary.json
    reference: float  # fully supervised DeepLab mIoU


def _read_json(path: Path) -> dict[str, Any]:
    """The stage-8 reader (``summary.read_json``), with the rule that writes a missing file named."""
    if not path.is_file():
        raise SystemExit(f"{path}: missing; it is written by {_WRITER.get(path.name, 'the pipeline')} of that run")
    try:
        return read_json(path)
    except SummaryError as err:
        raise SystemExit(str(err)) from err


def _number(doc: Mapping[str, Any], key: str, path: Path) -> float:
    value = doc.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise SystemExit(f"{path}: key '{key}' should be a finite number, got {value!r}")
    return float(value)


def load_run(folder: Path, modes: Sequence[str]) -> Run:
    """Read ``folder``'s CAM evaluation and the summaries of ``modes`` and of the fully supervised DeepLab."""
    if not folder.is_dir():
        raise SystemExit(f"{folder}: not a run folder (expected results/<data.name>)")
    cam_path = folder / "eval" / "cam.json"
    cam = _read_json(cam_path)
    iou = cam.get("iou")
    if not isinstance(iou, dict) or not iou:
        raise SystemExit(f"{cam_path}: key 'iou' should map every class to its CAM IoU, got {iou!r}")
    summaries = {}
    for mode in modes:
        path = folder / mode / "summary.json"
        doc = _read_json(path)
        summaries[mode] = {key: _number(doc, key, path) for key in _SUMMARY_KEYS}
    ref_path = folder / REFERENCE / "summary.json"
    return Run(
        name=folder.name,
        cam_miou=_number(cam, "miou", cam_path),
        cam_iou={str(k): _number(iou, k, cam_path) for k in iou},
        seed_precision=summaries[modes[0]]["seed_precision"],  # the seeds are shared by every mode
        seed_coverage=summaries[modes[0]]["seed_coverage"],
        modes=summaries,
        reference=_number(_read_json(ref_path), "segmentation_miou", ref_path),
    )


@dataclass(frozen=True)
class Goal:
    """One row: a value per run (in %) and whether that run meets the goal."""

    label: str
    value: Callable[[Run], float]
    met: Callable[[Run], bool]


def goals(baseline: str, method: str) -> list[Goal]:
    """The goal rows, ``method`` compared with ``baseline`` where a goal compares two modes."""

    def lowest(r: Run) -> float:
        return min(r.cam_iou.values())

    def pl(r: Run, mode: str) -> float:
        return r.modes[mode]["pseudo_label_miou"]

    def ods(r: Run, mode: str) -> float:
        return r.modes[mode]["contour_ods"]

    def share(r: Run) -> float:
        return r.modes[method]["segmentation_miou"] / r.reference if r.reference > 0 else 0.0

    return [
        Goal(f"CAM mIoU (>= {100 * CAM_MIOU:g})", lambda r: 100 * r.cam_miou, lambda r: r.cam_miou >= CAM_MIOU),
        Goal(f"lowest class CAM IoU (>= {100 * CAM_CLASS_IOU:g})", lambda r: 100 * lowest(r),
             lambda r: lowest(r) >= CAM_CLASS_IOU),
        Goal(f"seed precision (>= {100 * SEED_PRECISION:g}, coverage >= {100 * SEED_COVERAGE:g})",
             lambda r: 100 * r.seed_precision,
             lambda r: r.seed_precision >= SEED_PRECISION and r.seed_coverage >= SEED_COVERAGE),
        Goal("seed coverage", lambda r: 100 * r.seed_coverage, lambda r: r.seed_coverage >= SEED_COVERAGE),
        Goal(f"pseudo labels, {method} - {baseline} (>= +{100 * PSEUDO_LABEL_MARGIN:g})",
             lambda r: 100 * (pl(r, method) - pl(r, baseline)),
             lambda r: pl(r, method) - pl(r, baseline) >= PSEUDO_LABEL_MARGIN - _EPS),
        Goal(f"contour ODS, {method} - {baseline} (> 0)", lambda r: 100 * (ods(r, method) - ods(r, baseline)),
             lambda r: ods(r, method) > ods(r, baseline)),
        Goal(f"DeepLab, {method} / fully supervised (>= {100 * DEEPLAB_SHARE:g} %)", lambda r: 100 * share(r),
             lambda r: share(r) >= DEEPLAB_SHARE - _EPS),
    ]


def spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and range (max - min) of ``values``."""
    return sum(values) / len(values), max(values) - min(values)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _value_cells(values: Sequence[float]) -> list[str]:
    """Each value, then their mean and range, with one decimal."""
    return [f"{v:.1f}" for v in (*values, *spread(values))]


def goals_table(runs: Sequence[Run], baseline: str, method: str) -> str:
    """Markdown: a row per goal, a column per run, then mean, range and the runs that meet it."""
    lines = [_row(["goal", *(r.name for r in runs), "mean", "range", "met in"]),
             _row(["---", *(["---:"] * (len(runs) + 3))])]
    for goal in goals(baseline, method):
        met = sum(goal.met(r) for r in runs)
        lines.append(_row([goal.label, *_value_cells([goal.value(r) for r in runs]), f"{met} / {len(runs)}"]))
    return "\n".join(lines)


def modes_table(runs: Sequence[Run], modes: Sequence[str]) -> str:
    """Markdown: every mode's pseudo-label mIoU, contour ODS and DeepLab mIoU per run, mean and range."""
    keys = (("pseudo labels", "pseudo_label_miou"), ("contour ODS", "contour_ods"), ("DeepLab", "segmentation_miou"))
    lines = [_row(["mode", "score", *(r.name for r in runs), "mean", "range"]),
             _row(["---", "---", *(["---:"] * (len(runs) + 2))])]
    for mode in modes:
        for label, key in keys:
            lines.append(_row([mode, label, *_value_cells([100 * r.modes[mode][key] for r in runs])]))
    lines.append(_row([REFERENCE, "DeepLab", *_value_cells([100 * r.reference for r in runs])]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders results/<data.name>, one per generator seed")
    parser.add_argument("--modes", nargs="+", default=["irnet", "sance_naive", "sance"],
                        help="modes of the second table (default: the three of the demo)")
    parser.add_argument("--baseline", default="irnet", help="the mode the method is compared with (default irnet)")
    parser.add_argument("--method", default="sance", help="the mode whose goals are checked (default sance)")
    args = parser.parse_args(argv)
    for mode in (args.baseline, args.method):
        if mode not in args.modes:
            parser.error(f"--baseline/--method {mode!r} must be one of --modes {args.modes}")
    runs = [load_run(folder, args.modes) for folder in args.runs]
    print(goals_table(runs, args.baseline, args.method))
    print()
    print(modes_table(runs, args.modes))


if __name__ == "__main__":
    main()
