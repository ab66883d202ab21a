"""Snakemake adapter: run the `export_pseudo_label_pngs` stage of sance_core with this rule's params."""

from sance_core.snakemake_adapter import run_from_snakemake

run_from_snakemake(snakemake, "export_pseudo_label_pngs")  # noqa: F821 - injected by Snakemake
