"""benchmarks/goals.py: the demo's goals read from run folders, per run, mean, range and runs meeting them."""

import json
import statistics

import pytest

from conftest import load_benchmark

MODES = ["irnet", "sance_naive", "sance"]


def _write(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _run(root, name, cam, lowest, precision, coverage, pl, ods, deeplab, reference):
    """A run folder as ``snakemake all`` leaves it, reduced to the files the script reads."""
    folder = root / name
    _write(folder / "eval" / "cam.json", {"miou": cam, "iou": {"background": 0.7, "a": lowest, "b": lowest + 0.1}})
    for mode in MODES:
        _write(folder / mode / "summary.json", {
            "mode": mode, "seed_precision": precision, "seed_coverage": coverage,
            "pseudo_label_miou": pl[mode], "contour_ods": ods[mode], "segmentation_miou": deeplab[mode]})
    _write(folder / "fully_supervised" / "summary.json", {"mode": "fully_supervised", "segmentation_miou": reference})
    return folder


@pytest.fixture
def runs(tmp_path):
    # run 0 meets every goal; run 1 misses every goal, the seed goal by its coverage alone
    good = _run(tmp_path, "demo", 0.46, 0.30, 0.86, 0.60,
                {"irnet": 0.40, "sance_naive": 0.43, "sance": 0.46}, {"irnet": 0.30, "sance_naive": 0.31, "sance": 0.32},
                {"irnet": 0.40, "sance_naive": 0.45, "sance": 0.52}, 0.60)
    bad = _run(tmp_path, "demo_s1", 0.40, 0.20, 0.90, 0.40,
               {"irnet": 0.40, "sance_naive": 0.41, "sance": 0.42}, {"irnet": 0.35, "sance_naive": 0.30, "sance": 0.35},
               {"irnet": 0.40, "sance_naive": 0.40, "sance": 0.30}, 0.60)
    return good, bad


def _cells(table, label_start):
    row = next(line for line in table.splitlines() if line.startswith(f"| {label_start}"))
    return [c.strip() for c in row.strip("|").split("|")]


def test_goals_table_values_means_ranges_and_counts(runs):
    goals = load_benchmark("goals")
    loaded = [goals.load_run(folder, MODES) for folder in runs]
    table = goals.goals_table(loaded, "irnet", "sance")
    assert _cells(table, "CAM mIoU")[1:] == ["46.0", "40.0", "43.0", "6.0", "1 / 2"]
    assert _cells(table, "lowest class")[1:] == ["30.0", "20.0", "25.0", "10.0", "1 / 2"]
    # the seed goal needs both precision and coverage: run 1 is precise enough but covers too little
    assert _cells(table, "seed precision")[1:] == ["86.0", "90.0", "88.0", "4.0", "1 / 2"]
    assert _cells(table, "seed coverage")[1:] == ["60.0", "40.0", "50.0", "20.0", "1 / 2"]
    assert _cells(table, "pseudo labels")[1:] == ["6.0", "2.0", "4.0", "4.0", "1 / 2"]
    # ODS must be strictly above: the tie of run 1 does not count
    assert _cells(table, "contour ODS")[1:] == ["2.0", "0.0", "1.0", "2.0", "1 / 2"]
    assert _cells(table, "DeepLab")[1:] == ["86.7", "50.0", "68.3", "36.7", "1 / 2"]


def test_goals_met_exactly_at_their_bounds(tmp_path):
    """A margin of exactly +5 and a share of exactly 85 % meet their goals (>=): rounding must not take them away."""
    goals = load_benchmark("goals")
    folder = _run(tmp_path, "edge", 0.45, 0.25, 0.85, 0.50,
                  {m: v for m, v in zip(MODES, (0.37, 0.40, 0.42))}, {m: 0.3 for m in MODES},
                  {m: 0.51 for m in MODES}, 0.60)
    run = goals.load_run(folder, MODES)
    table = goals.goals_table([run], "irnet", "sance")
    for label in ("CAM mIoU", "lowest class", "seed precision", "pseudo labels", "DeepLab"):
        assert _cells(table, label)[-1] == "1 / 1", label
    assert _cells(table, "contour ODS")[-1] == "0 / 1"


def test_modes_table_matches_the_summaries(runs):
    goals = load_benchmark("goals")
    loaded = [goals.load_run(folder, MODES) for folder in runs]
    table = goals.modes_table(loaded, MODES)
    lines = [line for line in table.splitlines()[2:]]
    assert len(lines) == 3 * len(MODES) + 1
    for run_index, folder in enumerate(runs):
        for mode in MODES:
            doc = json.loads((folder / mode / "summary.json").read_text())
            row = _cells(table, f"{mode} | pseudo labels")
            assert row[2 + run_index] == f"{100 * doc['pseudo_label_miou']:.1f}"
    values = [100 * json.loads((f / "sance" / "summary.json").read_text())["contour_ods"] for f in runs]
    row = _cells(table, "sance | contour ODS")
    assert row[-2] == f"{statistics.mean(values):.1f}"
    assert row[-1] == f"{max(values) - min(values):.1f}"
    assert _cells(table, "fully_supervised")[2:] == ["60.0", "60.0", "60.0", "0.0"]


def test_main_prints_both_tables(runs, capsys):
    goals = load_benchmark("goals")
    goals.main([str(f) for f in runs])
    out = capsys.readouterr().out
    assert out.count("| goal | demo | demo_s1 | mean | range | met in |") == 1
    assert "| mode | score | demo | demo_s1 | mean | range |" in out


def test_a_missing_summary_names_the_file_and_its_rule(runs):
    goals = load_benchmark("goals")
    (runs[1] / "sance" / "summary.json").unlink()
    with pytest.raises(SystemExit, match=r"demo_s1/sance/summary.json: missing; it is written by rule summarize"):
        goals.main([str(f) for f in runs])


def test_a_missing_cam_evaluation_names_the_file(runs):
    goals = load_benchmark("goals")
    (runs[0] / "eval" / "cam.json").unlink()
    with pytest.raises(SystemExit, match=r"demo/eval/cam.json: missing; it is written by rule evaluate_cams"):
        goals.load_run(runs[0], MODES)


def test_a_value_that_is_not_a_number_names_the_key(runs):
    goals = load_benchmark("goals")
    path = runs[0] / "irnet" / "summary.json"
    doc = json.loads(path.read_text())
    doc["contour_ods"] = None
    path.write_text(json.dumps(doc))
    with pytest.raises(SystemExit, match=r"irnet/summary.json: key 'contour_ods' should be a finite number, got None"):
        goals.load_run(runs[0], MODES)


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    goals = load_benchmark("goals")
    with pytest.raises(SystemExit, match="not a run folder"):
        goals.load_run(tmp_path / "nothing", MODES)


def test_baseline_must_be_one_of_the_modes(runs, capsys):
    goals = load_benchmark("goals")
    with pytest.raises(SystemExit):
        goals.main([str(runs[0]), "--modes", "irnet", "sance", "--baseline", "sance_naive"])
    assert "--baseline/--method 'sance_naive' must be one of --modes" in capsys.readouterr().err
