"""Snakemake adapter: run the `demo_data` stage of sance_core with this rule's params."""

from sance_core.snakemake_adapter import run_from_snakemake

run_from_snakemake(snakemake, "demo_data")  # noqa: F821 - injected by Snakemake
