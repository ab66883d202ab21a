"""Snakemake adapter: run the `infer_contours` stage of sance_core with this rule's params."""

from sance_core.snakemake_adapter import run_from_snakemake

run_from_snakemake(snakemake, "infer_contours")  # noqa: F821 - injected by Snakemake
