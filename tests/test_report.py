"""Report figures, the contour-evaluation stage, and `snakemake --report` on a workflow whose
upstream artifacts are faked (fast), plus the whole tiny pipeline (slow)."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import run_snakemake
from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.data.shards import read_shard
from sance_core.eval.edge_eval import ContourEvalConfig, evaluate_contour_maps, mask_boundaries
from sance_core.io.palette import read_label_png
from sance_core.io.store import ArtifactWriter
from sance_core.stages.pseudo_labels import present_planes

SANCE_MODES = ("irnet", "sance")
DEEPLAB_MODES = ("fully_supervised",)
FIGURES = ("qualitative_train", "qualitative_val", "per_class_iou", "contour_pr", "training_curves")
MY_RULES = ("evaluate_contours", "summarize", "ablation_table", "ablation", "figure_qualitative",
            "figure_iou_bars", "figure_pr_curves", "figure_training_curves")


def _stride4(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[-2:]
    h4, w4 = -(-h // 4), -(-w // 4)
    pad = [(0, 0)] * (a.ndim - 2) + [(0, 4 * h4 - h), (0, 4 * w4 - w)]
    a = np.pad(a, pad, mode="edge")
    return a.reshape(*a.shape[:-2], h4, 4, w4, 4).mean(axis=(-3, -1))


def fake_upstream(root: Path, name: str, classes: list[str]) -> None:
    """CAMs, seeds, maps, pseudo labels, predictions, eval JSONs and histories made from the GT masks."""
    res = root / "results" / name
    Manifest.load(res / "manifest.json")  # the manifest exists
    spec = DatasetSpec(root=str(root / "resources" / name), classes=tuple(classes))
    rng = np.random.default_rng(0)
    n_cls = len(classes)

    def shards(split: str) -> list[Path]:
        return sorted((res / "shards" / split).glob("*.txt"))

    for shard in shards("train"):
        ids = read_shard(shard)
        masks = {i: read_label_png(spec.mask_path(i)) for i in ids}
        with ArtifactWriter(res / "cam" / f"{shard.stem}.h5", "cam") as cam, \
                ArtifactWriter(res / "seeds" / f"{shard.stem}.h5", "seeds") as seeds:
            for i, m in masks.items():
                keys = [int(k) for k in np.unique(m) if 0 < k < 255]
                maps = np.stack([(m == k).astype(np.float32) * 0.8 for k in keys]) if keys else np.zeros((0, *m.shape))
                cam.add(i, {"cam": maps, "cam_stride4": _stride4(maps)}, {"class_keys": keys, "size": list(m.shape)})
                seed = m.copy()
                seed[rng.random(m.shape) < 0.3] = 255
                seeds.add(i, {"seed": seed}, {"size": list(m.shape)})
        for k, mode in enumerate(SANCE_MODES):
            with ArtifactWriter(res / mode / "maps" / f"{shard.stem}.h5", "maps") as maps_w, \
                    ArtifactWriter(res / mode / "pseudo_labels" / f"{shard.stem}.h5", "pseudo_labels") as pl_w:
                for i, m in masks.items():
                    boundary, _ = mask_boundaries(m)
                    contour = np.clip(_stride4(boundary.astype(np.float32)) * 2, 0, 1)
                    contour = np.maximum(contour, rng.random(contour.shape) < 0.15 * k)  # spurious edges
                    arrays, attrs = {"contour": contour}, {"size": list(m.shape), "stride": 4}
                    if mode != "irnet":  # as infer_maps stores it: background + present classes
                        onehot = np.stack([(m == c) for c in range(n_cls)]).astype(np.float32)
                        present = [int(c) for c in np.unique(m) if c not in (0, 255)]
                        arrays["seg"], attrs["class_keys"] = present_planes(_stride4(onehot), present)
                    maps_w.add(i, arrays, attrs)
                    pl_w.add(i, {"label": np.where(m == 255, 0, m).astype(np.uint8)}, {"size": list(m.shape)})
    # the raw contour maps of the val split (infer_contours), spurious edges growing with the mode
    val_ids = [i for shard in shards("val") for i in read_shard(shard)]
    for k, mode in enumerate(SANCE_MODES):
        with ArtifactWriter(res / mode / "contours" / "eval.h5", "contours") as w:
            for i in val_ids:
                m = read_label_png(spec.mask_path(i))
                boundary, _ = mask_boundaries(m)
                contour = np.clip(_stride4(boundary.astype(np.float32)) * 2, 0, 1)
                contour = np.maximum(contour, rng.random(contour.shape) < 0.15 * k)
                w.add(i, {"contour": contour}, {"size": list(m.shape), "stride": 4})
    for shard in shards("val"):
        for mode in DEEPLAB_MODES:
            with ArtifactWriter(res / mode / "predictions" / f"{shard.stem}.h5", "predictions") as w:
                for i in read_shard(shard):
                    m = read_label_png(spec.mask_path(i))
                    w.add(i, {"label": np.where(m == 255, 0, m).astype(np.uint8)})

    def iou(v: float) -> dict:
        return {c: v for c in classes}

    def dump(path: Path, data: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))

    dump(res / "eval" / "classifier.json", {"map": 0.9, "ap": {c: 0.9 for c in classes[1:]}, "accuracy": 0.95,
                                            "n_images": 6, "split": "val"})
    dump(res / "eval" / "cam.json", {"miou": 0.4, "iou": iou(0.4), "n_images": 12, "best_threshold": 0.15})
    dump(res / "eval" / "seeds.json", {"miou": 0.6, "iou": iou(0.6), "precision": 0.8, "coverage": 0.5,
                                       "n_images": 12})
    for k, mode in enumerate(SANCE_MODES):
        dump(res / mode / "eval" / "pseudo_labels.json", {"miou": 0.5 + 0.05 * k, "iou": iou(0.5 + 0.05 * k),
                                                          "n_images": 12, "tau_b": 0.25})
    for mode in DEEPLAB_MODES:
        dump(res / mode / "eval" / "segmentation.json", {"miou": 0.7, "iou": iou(0.7), "n_images": 6})
    histories = [res / "classifier" / "history.csv"]
    histories += [res / m / "sance_model" / "history.csv" for m in SANCE_MODES]
    histories += [res / m / "segmenter" / "history.csv" for m in DEEPLAB_MODES]
    for h in histories:
        h.parent.mkdir(parents=True, exist_ok=True)
        h.write_text("step,epoch,loss,loss_seg,lr\n" + "".join(
            f"{s},0,{2.0 / (s + 1):.4f},{1.0 / (s + 1):.4f},0.01\n" for s in range(10)))


def _embedded(html_text: str, mime: str) -> dict[str, bytes]:
    """Files embedded in a self-contained Snakemake report (data URIs), by file name."""
    pattern = rf"data:{mime};[^,\"]*?filename=([^;,\"]+)[^,\"]*;base64,([A-Za-z0-9+/=]+)"
    return {name: base64.b64decode(data) for name, data in re.findall(pattern, html_text)}


def fake_data(root: Path, name: str, classes: list[str]) -> None:
    """The demo dataset, its manifest and shard lists, made by the stage code in-process (no Snakemake jobs)."""
    from sance_core.stages import run_stage

    data = root / "resources" / name
    res = root / "results" / name
    run_stage("demo_data", {"generator": {"n_train": 6, "n_val": 4, "min_side": 48, "max_side": 64}},
              {}, {"root": str(data), "preview": str(res / "figures" / "demo_preview.png")})
    spec = {"root": str(data), "classes": classes}
    run_stage("validate_dataset", {"name": name, "dataset": spec, "splits": ["train", "val"], "threads": 1},
              {}, {"manifest": str(res / "manifest.json")})
    for split in ("train", "val"):
        run_stage("shard_ids", {"split": split}, {"manifest": str(res / "manifest.json")},
                  {"shards": [str(res / "shards" / split / f"{k}-of-2.txt") for k in (1, 2)]})


@pytest.mark.workflow
def test_report_builds_on_faked_upstream(workdir, tmp_path):
    """Faked data and model outputs; then the contour evaluation, summaries, ablation, figures and
    `--report` for real: the page must embed every figure and the ablation table."""
    import yaml

    classes = yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text())["data"]["classes"]
    fake_data(workdir, "fake", classes)
    fake_upstream(workdir, "fake", classes)
    config = tmp_path / "fake.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"name": "fake", "root": str(workdir / "resources" / "fake")},
        "demo": {"enabled": False},
        "modes": list(SANCE_MODES),
        "segmentation": {"modes": list(DEEPLAB_MODES)},
        "evaluation": {"contour": {"thresholds": 5, "max_images": 4}},
        "report": {"n_ids": 2, "dpi": 60},
    }))
    targets = ["ablation", *(f"results/fake/figures/{f}.png" for f in FIGURES)]
    common = ["--configfile", str(config), "--allowed-rules", *MY_RULES]
    run_snakemake(workdir, *targets, "--cores", "2", *common)

    res = workdir / "results" / "fake"
    contour = json.loads((res / "sance" / "eval" / "contour.json").read_text())
    assert 0 < contour["ods"] <= 1 and contour["n_images"] == 4 and len(contour["curve"]) == 5
    rows = [line.split("\t") for line in (res / "ablation.tsv").read_text().splitlines()]
    assert [r[0] for r in rows[1:]] == [*SANCE_MODES, *DEEPLAB_MODES]
    fully = dict(zip(rows[0], rows[-1]))
    assert fully["pseudo_label_miou"] == "" and fully["contour_ods"] == "" and fully["segmentation_miou"] == "0.7000"
    assert fully["classifier_map"] == "" and dict(zip(rows[0], rows[1]))["classifier_map"] == "0.9000"
    # the noisier fake contours of the later modes must score lower
    ods = [json.loads((res / m / "eval" / "contour.json").read_text())["ods"] for m in SANCE_MODES]
    assert ods[0] > ods[-1]

    report = workdir / "report.html"
    run_snakemake(workdir, *targets, "--report", str(report), *common)
    page = report.read_text()
    for name in [f"{f}.png" for f in FIGURES] + ["ablation.html", "ablation.tsv", "contour.json", "summary.tsv"]:
        assert name in page, name
    pngs = _embedded(page, "image/png")
    for f in FIGURES:
        assert pngs[f"{f}.png"] == (res / "figures" / f"{f}.png").read_bytes(), f  # embedded, not linked
    table = _embedded(page, "text/html")["ablation.html"].decode()
    assert "baseline (IRNet)" in table and "<table>" in table


def test_contour_stage_on_one_shard(tmp_path):
    """evaluate_contour_maps on a hand-made maps shard: a perfect contour scores 1, noise lowers it."""
    root = tmp_path / "voc"
    (root / "SegmentationClass").mkdir(parents=True)
    from sance_core.io.palette import save_label_png

    entries = []
    for k in range(2):
        m = np.zeros((40, 48), np.uint8)
        m[8:30, 10 + k:35] = 1
        save_label_png(m, root / "SegmentationClass" / f"im{k}.png")
        entries.append({"id": f"im{k}", "height": 40, "width": 48, "labels": [1], "has_mask": True})
    manifest = Manifest("t", str(root), ["background", "a"], {"train": entries})
    spec = DatasetSpec(root=str(root), classes=("background", "a"))
    for name, noise in (("perfect", 0.0), ("noisy", 1.0)):
        with ArtifactWriter(tmp_path / f"{name}.h5", "maps") as w:
            for k in range(2):
                m = read_label_png(root / "SegmentationClass" / f"im{k}.png")
                b = mask_boundaries(m)[0].astype(np.float32)
                full = np.clip(b + noise * np.random.default_rng(k).random(b.shape), 0, 1)
                # store at full resolution with stride 1 so the perfect map survives exactly
                w.add(f"im{k}", {"contour": full}, {"size": [40, 48], "stride": 1})
        cfg = ContourEvalConfig(dataset=spec, thresholds=9, mode=name, thinning=False)
        result = evaluate_contour_maps(cfg, manifest, [str(tmp_path / f"{name}.h5")])
        if noise == 0:
            # pyEdgeEval's correspond_pixels is clock-seeded and randomised (like the MATLAB original):
            # even identical maps can leave a handful of pixels unmatched (0.9946 and 0.9892 seen)
            assert result["ods"] == pytest.approx(1.0, abs=0.03) and result["ois"] == pytest.approx(1.0, abs=0.03)
            # thinning drops the inner pixel of each staircase corner: precision stays ~1 (the same
            # randomised matcher: 0.9888 seen), recall dips
            thinned = evaluate_contour_maps(replace(cfg, thinning=True), manifest, [str(tmp_path / f"{name}.h5")])
            assert thinned["ods_precision"] == pytest.approx(1.0, abs=0.03) and 0.9 < thinned["ods"] < 1.0
        else:
            assert result["ods"] < 0.95
        assert result["n_images"] == 2 and [p["id"] for p in result["per_image"]] == ["im0", "im1"]
    # an id list replaces the split's ids (the paper: SBD's val.txt, images outside the manifest);
    # every listed id needs a map
    (tmp_path / "ids.txt").write_text("im1\n")
    one = evaluate_contour_maps(replace(cfg, id_list=str(tmp_path / "ids.txt")), manifest, [str(tmp_path / "noisy.h5")])
    assert one["n_images"] == 1 and one["id_list"]["listed"] == 1
    (tmp_path / "ids.txt").write_text("im1\nnot_inferred\n")
    with pytest.raises(ValueError, match="lack 1 id.*not_inferred"):
        evaluate_contour_maps(replace(cfg, id_list=str(tmp_path / "ids.txt")), manifest, [str(tmp_path / "noisy.h5")])
    with pytest.raises(ValueError, match="sbd_dir"):
        ContourEvalConfig(dataset=spec, gt_source="sbd")
    with pytest.raises(ValueError, match="no cls/ folder"):
        evaluate_contour_maps(replace(cfg, gt_source="sbd", sbd_dir=str(tmp_path)), manifest, [str(tmp_path / "noisy.h5")])


@pytest.mark.slow
@pytest.mark.workflow
def test_tiny_pipeline_report(tiny_all_run, tiny_config, tmp_path):
    """The whole tiny pipeline (the session's run), then the report: every figure embedded."""
    workdir = tiny_all_run
    report = tmp_path / "report.html"
    run_snakemake(workdir, "--report", str(report), "--configfile", str(tiny_config))
    page = report.read_text()
    for name in ("qualitative_train.png", "qualitative_val.png", "per_class_iou.png", "contour_pr.png",
                 "training_curves.png", "ablation.html"):
        assert name in page, name
    pngs = _embedded(page, "image/png")
    for f in FIGURES:
        assert pngs[f"{f}.png"] == (workdir / "results/tiny/figures" / f"{f}.png").read_bytes(), f
    modes = [line.split("\t")[0] for line in (workdir / "results/tiny/ablation.tsv").read_text().splitlines()[1:]]
    assert modes[:3] == ["irnet", "sance_naive", "sance"] and "fully_supervised" in modes


def test_epoch_miou_figure_reads_the_end_of_epoch_rows(tmp_path):
    from sance_core.stages.figures import EpochMIoUConfig, epoch_miou_points, run_epoch_miou

    rows = [{"step": 1, "epoch": 1, "loss": 1.0}, {"step": 2, "epoch": 1, "loss": 0.9, "pseudo_miou": 0.3},
            {"step": 3, "epoch": 2, "loss": 0.8}, {"step": 4, "epoch": 2, "loss": 0.7, "pseudo_miou": 0.35}]
    assert epoch_miou_points(rows) == [(1, 0.3), (2, 0.35)]
    paths = {}
    for mode in ("irnet", "sance"):
        path = tmp_path / f"{mode}.csv"
        cols = ["step", "epoch", "loss", "pseudo_miou"]
        path.write_text(",".join(cols) + "\n" + "\n".join(",".join(str(r.get(c, "")) for c in cols) for r in rows))
        paths[f"history__{mode}"] = str(path)
    out = tmp_path / "fig5.png"
    run_epoch_miou(EpochMIoUConfig(), paths, {"png": str(out)})
    assert out.stat().st_size > 0
