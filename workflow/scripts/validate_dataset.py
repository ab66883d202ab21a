"""Snakemake adapter: run the `validate` stage of sance_core with this rule's params."""

from sance_core.snakemake_adapter import run_from_snakemake

run_from_snakemake(snakemake, "validate")  # noqa: F821 - injected by Snakemake
