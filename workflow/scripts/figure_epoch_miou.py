"""Snakemake adapter: run the `figure_epoch_miou` stage of sance_core with this rule's params."""

from sance_core.snakemake_adapter import run_from_snakemake

run_from_snakemake(snakemake, "figure_epoch_miou")  # noqa: F821 - injected by Snakemake
