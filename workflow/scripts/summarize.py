"""Snakemake adapter: run the `summarize` stage of sance_core with this rule's params."""

from sance_core.snakemake_adapter import run_from_snakemake

run_from_snakemake(snakemake, "summarize")  # noqa: F821 - injected by Snakemake
