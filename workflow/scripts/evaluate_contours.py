"""Snakemake adapter: run the `evaluate_contours` stage of sance_core with this rule's params."""

from sance_core.snakemake_adapter import run_from_snakemake

run_from_snakemake(snakemake, "evaluate_contours")  # noqa: F821 - injected by Snakemake
