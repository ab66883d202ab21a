"""The real Snakemake on the repository's workflow: schema, DAG, lint, a tiny run."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import run_snakemake


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
