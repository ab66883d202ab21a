"""Snakemake adapter: run the `ablation_table` stage of sance_core with this rule's params."""

from sance_core.snakemake_adapter import run_from_snakemake

run_from_snakemake(snakemake, "ablation_table")  # noqa: F821 - injected by Snakemake
