"""Snakemake adapter: run the `extract_cams` stage of sance_core with this rule's params."""

from sance_core.snakemake_adapter import run_from_snakemake

run_from_snakemake(snakemake, "extract_cams")  # noqa: F821 - injected by Snakemake
