"""Per-mode summaries and the ablation table, assembled from synthetic evaluation JSONs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sance_core.stages import run_stage
from sance_core.stages.summary import (
    ABLATION_COLUMNS,
    AblationConfig,
    SummaryConfig,
    SummaryError,
    mode_title,
    run_ablation,
    run_summary,
)

MODES = ("irnet", "sance_naive", "sance", "fully_supervised")


def _write(path: Path, data: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path)


def _fake_run(root: Path) -> dict[str, dict[str, str]]:
    """Evaluation JSONs in the layout and with the keys the evaluation stages write."""
    shared = {
        "cam": _write(root / "eval" / "cam.json", {"miou": 0.41, "iou": {"background": 0.7}, "n_images": 12,
                                                   "best_threshold": 0.15, "split": "train"}),
        "seeds": _write(root / "eval" / "seeds.json", {"miou": 0.6, "precision": 0.83, "coverage": 0.52,
                                                       "n_images": 12, "iou": {}}),
    }
    inputs = {}
    for k, mode in enumerate(MODES):
        d = root / mode / "eval"
        one = {"segmentation": _write(d / "segmentation.json", {"miou": 0.5 + 0.01 * k, "iou": {}, "n_images": 6,
                                                                "split": "val"})}
        if mode != "fully_supervised":
            one.update(shared)
            one["pseudo_labels"] = _write(d / "pseudo_labels.json", {"miou": 0.55 + 0.02 * k, "iou": {},
                                                                     "n_images": 12, "tau_b": 0.3,
                                                                     "map": "cam" if mode == "irnet" else "seg"})
            one["contour"] = _write(d / "contour.json", {"ods": 0.3 + 0.1 * k, "ois": 0.35 + 0.1 * k, "ap": 0.2,
                                                         "ods_threshold": 0.4, "n_images": 10, "curve": [],
                                                         "split": "val"})
        inputs[mode] = one
    return inputs


def test_summary_per_mode(tmp_path):
    inputs = _fake_run(tmp_path)
    out = {"json": tmp_path / "sance" / "summary.json", "tsv": tmp_path / "sance" / "summary.tsv"}
    run_summary(SummaryConfig(mode="sance", dataset="tiny", tau_b=0.25), inputs["sance"], out)
    s = json.loads(out["json"].read_text())
    assert s["mode"] == "sance"
    assert s["cam_miou"] == 0.41 and s["seed_precision"] == 0.83 and s["seed_coverage"] == 0.52
    assert s["pseudo_label_miou"] == pytest.approx(0.59) and s["segmentation_miou"] == pytest.approx(0.52)
    assert s["contour_ods"] == pytest.approx(0.5) and s["contour_ois"] == pytest.approx(0.55)
    assert s["tau_b"] == 0.3  # the value recorded with the pseudo labels wins over the config's
    assert s["n_images"] == {"train": 12, "val": 6}
    header, row = out["tsv"].read_text().splitlines()
    assert header.split("\t") == list(ABLATION_COLUMNS)
    cells = dict(zip(header.split("\t"), row.split("\t")))
    assert cells["mode"] == "sance" and cells["contour_ods"] == "0.5000" and cells["n_val"] == "6"


def test_summary_counts_from_the_manifest(tmp_path):
    from sance_core.data.dataset import Manifest

    inputs = _fake_run(tmp_path)["irnet"]
    manifest = Manifest("tiny", "root", ["background", "a"],
                        {"train": [{"id": f"t{i}"} for i in range(20)], "val": [{"id": "v"}]})
    manifest.save(tmp_path / "manifest.json")
    out = {"json": tmp_path / "s.json", "tsv": tmp_path / "s.tsv"}
    run_summary(SummaryConfig(mode="irnet"), {**inputs, "manifest": str(tmp_path / "manifest.json")}, out)
    s = json.loads(out["json"].read_text())
    assert s["n_images"] == {"train": 20, "val": 1}
    assert s["n_evaluated"]["pseudo_labels"] == 12


def test_fully_supervised_has_empty_pseudo_label_and_contour_cells(tmp_path):
    inputs = _fake_run(tmp_path)
    out = {"json": tmp_path / "fs.json", "tsv": tmp_path / "fs.tsv"}
    run_summary(SummaryConfig(mode="fully_supervised", tau_b=0.25), inputs["fully_supervised"], out)
    s = json.loads(out["json"].read_text())
    assert s["pseudo_label_miou"] is None and s["contour_ods"] is None and s["tau_b"] is None
    assert s["segmentation_miou"] == pytest.approx(0.53)


def test_ablation_table_rows_in_mode_order(tmp_path):
    inputs = _fake_run(tmp_path)
    summaries = []
    for mode in MODES:
        out = {"json": tmp_path / mode / "summary.json", "tsv": tmp_path / mode / "summary.tsv"}
        table1 = {} if mode == "fully_supervised" else {"base": mode, "output_stride": 16 if mode == "irnet" else 8,
                                                       "tta": mode != "irnet"}
        run_stage("summarize", {"mode": mode, "tau_b": 0.25, **table1}, inputs[mode], out)
        summaries.append(str(out["json"]))
    out = {"tsv": tmp_path / "ablation.tsv", "md": tmp_path / "ablation.md"}
    run_stage("ablation_table", {"modes": list(MODES), "title": "tiny"}, {"summaries": summaries}, out)
    lines = out["tsv"].read_text().splitlines()
    rows = [dict(zip(lines[0].split("\t"), line.split("\t"))) for line in lines[1:]]
    assert [r["mode"] for r in rows] == list(MODES)
    assert [r["pseudo_label_miou"] for r in rows] == ["0.5500", "0.5700", "0.5900", ""]
    assert [r["segmentation_miou"] for r in rows] == ["0.5000", "0.5100", "0.5200", "0.5300"]
    assert rows[-1]["contour_ods"] == "" and rows[0]["contour_ods"] == "0.3000"
    md = out["md"].read_text()
    assert "| SANCE | 8 | seg | yes | 59.0 | 52.0 | 50.0 |" in md
    assert "| baseline (IRNet) | 16 | cam | no | 55.0 |" in md
    assert "| fully supervised (GT masks) | – | – | – | – | 53.0 | – |" in md
    assert [r["output_stride"] for r in rows] == ["16", "8", "8", ""] and rows[0]["tta"] == "False"
    assert [r["pseudo_label_map"] for r in rows] == ["cam", "seg", "seg", ""]
    # the note under the table names the images each column scores (contours: val, not train)
    note = ("Pseudo labels on the train split (12 images), contours on the val split (10 images scored, raw "
            "single-scale maps), DeepLab on the val split (6 images).")
    assert note in md
    run_stage("ablation_table", {"modes": list(MODES), "title": "tiny"}, {"summaries": summaries},
              {**out, "html": tmp_path / "ablation.html"})
    assert note in (tmp_path / "ablation.html").read_text()
    # a summary under the wrong mode is refused
    with pytest.raises(SummaryError, match="belongs to mode"):
        run_ablation(AblationConfig(modes=("sance", "irnet")), {"summaries": summaries[:2]}, out)


def test_bad_values_are_named(tmp_path):
    inputs = _fake_run(tmp_path)["sance"]
    _write(Path(inputs["contour"]), {"ods": 64.2})  # a percentage, not a fraction
    out = {"json": tmp_path / "x.json", "tsv": tmp_path / "x.tsv"}
    with pytest.raises(SummaryError, match=r"contour\.json:ods: 64\.2 is not a fraction"):
        run_summary(SummaryConfig(mode="sance"), inputs, out)
    assert not out["json"].exists()
    Path(inputs["contour"]).write_text("{broken")
    with pytest.raises(SummaryError, match="not valid JSON"):
        run_summary(SummaryConfig(mode="sance"), inputs, out)
    with pytest.raises(SummaryError, match="not found"):
        run_summary(SummaryConfig(mode="sance"), {**inputs, "contour": str(tmp_path / "missing.json")}, out)


def test_null_metrics_stay_empty(tmp_path):
    """A tags-only split evaluates nothing: the stage writes null, the table an empty cell."""
    inputs = _fake_run(tmp_path)["sance"]
    _write(Path(inputs["segmentation"]), {"miou": None, "iou": {}, "n_images": 0})
    out = {"json": tmp_path / "x.json", "tsv": tmp_path / "x.tsv"}
    run_summary(SummaryConfig(mode="sance"), inputs, out)
    assert json.loads(out["json"].read_text())["segmentation_miou"] is None


def test_a_table1_row_is_named_after_its_base_mode():
    assert mode_title({"mode": "sance_tta", "base": "sance"}) == "SANCE (sance_tta)"
    assert mode_title({"mode": "irnet"}) == "baseline (IRNet)"
    assert mode_title({"mode": "other"}) == "other"


def test_contours_scored_on_an_id_list_are_named_in_the_note(tmp_path):
    """VOC's preset scores the contours on SBD's val ids (evaluation.contour.id_list), not the val split."""
    inputs = _fake_run(tmp_path)["sance"]
    _write(Path(inputs["contour"]), {"ods": 0.6, "ois": 0.62, "ap": 0.5, "n_images": 2857, "split": "val",
                                     "id_list": {"id_list": "/data/SBD/val.txt", "listed": 2857}})
    out = {"json": tmp_path / "s.json", "tsv": tmp_path / "s.tsv"}
    run_summary(SummaryConfig(mode="sance"), inputs, out)
    out_table = {"tsv": tmp_path / "a.tsv", "md": tmp_path / "a.md"}
    run_ablation(AblationConfig(modes=("sance",)), {"summaries": [str(out["json"])]}, out_table)
    assert "contours on the ids of /data/SBD/val.txt (2857 images scored" in out_table["md"].read_text()
