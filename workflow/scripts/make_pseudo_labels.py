"""Snakemake adapter: run the `make_pseudo_labels` stage of sance_core with this rule's params."""

from sance_core.snakemake_adapter import run_from_snakemake

run_from_snakemake(snakemake, "make_pseudo_labels")  # noqa: F821 - injected by Snakemake
