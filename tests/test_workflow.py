"""The real Snakemake on the repository's workflow: schema, DAG, lint, a tiny run."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO, run_snakemake


def test_default_config_passes_the_schema_and_builds_the_dag(workdir):
    proc = run_snakemake(workdir, "-n", "all")
    assert "demo_data" in proc.stdout and "validate_dataset" in proc.stdout


@pytest.mark.parametrize(
    "override, key",
    [
        ({"data": {"nmae": "x"}}, "nmae"),
        ({"shrads": 3}, "shrads"),
        ({"demo": {"n_train": -4}}, "-4"),
        ({"device": "gpu"}, "gpu"),
        ({"data": {"classes": ["background"]}}, "classes"),
    ],
)
def test_config_mistakes_fail_at_once_naming_the_key(workdir, tmp_path, override, key):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(override))
    proc = run_snakemake(workdir, "-n", "all", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert key in out, out[-3000:]
    assert not any(workdir.iterdir()) or not (workdir / "results").exists()


def test_lint_is_clean(workdir):
    proc = run_snakemake(workdir, "--lint", check=False)
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr, proc.stdout


def test_scatter_count_follows_set_scatter(workdir):
    proc = run_snakemake(workdir, "-n", "all", "--set-scatter", "shard=3")
    assert "shards/train/3-of-3.txt" in proc.stdout


def test_tiny_data_stages_run_for_real(workdir, tiny_config):
    run_snakemake(workdir, "results/tiny/manifest.json", "results/tiny/shards/train/1-of-2.txt",
                  "--cores", "2", "--configfile", str(tiny_config))
    manifest = json.loads((workdir / "results/tiny/manifest.json").read_text())
    assert [len(manifest["splits"][s]) for s in ("train", "val")] == [12, 6]
    shard_ids = [(workdir / f"results/tiny/shards/train/{k}-of-2.txt").read_text().split() for k in (1, 2)]
    assert sorted(shard_ids[0] + shard_ids[1]) == sorted(e["id"] for e in manifest["splits"]["train"])
    assert (workdir / "results/tiny/figures/demo_preview.png").stat().st_size > 0
    for name in ("demo_data", "validate_dataset"):
        assert (workdir / f"logs/tiny/{name}.log").exists()
        assert (workdir / f"benchmarks/tiny/{name}.tsv").exists()
    # nothing to do on a second run: the DAG is stable
    again = run_snakemake(workdir, "results/tiny/manifest.json", "-n", "--configfile", str(tiny_config))
    assert "Nothing to be done" in again.stdout + again.stderr


def test_bad_dataset_stops_at_validation_with_the_file_named(workdir, tiny_config, tmp_path):
    run_snakemake(workdir, "resources/tiny", "--cores", "1", "--configfile", str(tiny_config))
    victim = sorted((workdir / "resources/tiny/JPEGImages").iterdir())[0]
    victim.write_bytes(b"not a jpeg")
    proc = run_snakemake(workdir, "results/tiny/manifest.json", "--cores", "1", "--configfile", str(tiny_config),
                         check=False)
    assert proc.returncode != 0
    log = (workdir / "logs/tiny/validate_dataset.log").read_text()
    assert victim.name in log and "unreadable" in log
    assert not (workdir / "results/tiny/manifest.json").exists()


@pytest.mark.slow
@pytest.mark.workflow
def test_oracle_seeds_run_in_their_own_folder(workdir, tiny_config, tmp_path):
    """seeds.source oracle: seeds from the masks under results/tiny/oracle_<corruption>/, no classifier needed."""
    clean = tmp_path / "oracle.yaml"
    clean.write_text(yaml.safe_dump({"seeds": {"source": "oracle", "oracle": {"unknown": 0}}}))
    folder = "results/tiny/oracle_core1_leak0_false0_unk0"
    run_snakemake(workdir, f"{folder}/eval/seeds.json", "--cores", "2", "--configfile", str(tiny_config),
                  "--configfile", str(clean))
    seeds = json.loads((workdir / f"{folder}/eval/seeds.json").read_text())
    assert seeds["precision"] == 1.0 and seeds["coverage"] == 1.0  # the clean oracle is the mask itself
    assert not (workdir / "results/tiny/classifier").exists() and not (workdir / "results/tiny/seeds").exists()
    assert (workdir / "results/tiny/manifest.json").exists()  # the dataset is shared with CAM runs
    # another corruption is another folder; the CAM run's seeds are planned under results/tiny/seeds
    noisy = tmp_path / "noisy.yaml"
    noisy.write_text(yaml.safe_dump({"seeds": {"source": "oracle", "oracle": {"core": 0.5, "leak": 2}}}))
    plan = run_snakemake(workdir, "-n", "all", "--configfile", str(tiny_config), "--configfile", str(noisy))
    assert "results/tiny/oracle_core0.5_leak2_false0_unk4/seeds/1-of-2.h5" in plan.stdout
    cam_plan = run_snakemake(workdir, "-n", "all", "--configfile", str(tiny_config))
    assert "results/tiny/seeds/1-of-2.h5" in cam_plan.stdout and "results/tiny/oracle_" not in cam_plan.stdout


def test_table1_preset_plans_every_row(workdir):
    proc = run_snakemake(workdir, "-n", "all", "--configfile", str(REPO / "workflow/presets/table1.yaml"))
    out = proc.stdout
    assert out.count("rule train_sance:") == 6 and out.count("rule train_segmenter:") == 7
    for mode in ("sance_naive_s16_cam", "sance_naive_cam", "sance_tta"):
        assert f"results/demo/{mode}/pseudo_labels/png" in out


@pytest.mark.parametrize("override, key", [
    ({"modes": ["irnet", "mystery"]}, "mode_options.mystery.base"),
    ({"modes": ["irnet_seg"], "mode_options": {"irnet_seg": {"base": "irnet", "map": "seg"}}},
     "mode_options.irnet_seg.map"),
    ({"mode_options": {"sance": {"output_stride": 32}}}, "32"),
    ({"segmentation": {"modes": ["fully_supervised", "sance_tta"]}}, "segmentation.modes"),
])
def test_table1_row_mistakes_name_the_key(workdir, tmp_path, override, key):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(override))
    proc = run_snakemake(workdir, "-n", "all", "--configfile", str(bad), check=False)
    assert proc.returncode != 0 and key in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
