"""Snakemake adapter: run the `figure_pr_curves` stage of sance_core with this rule's params."""

from sance_core.snakemake_adapter import run_from_snakemake

run_from_snakemake(snakemake, "figure_pr_curves")  # noqa: F821 - injected by Snakemake
