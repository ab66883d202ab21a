"""The script of every rule: run the sance_core stage named like the rule with its params.cfg."""

from sance_core.stages.adapter import run_from_snakemake

run_from_snakemake(snakemake)  # noqa: F821 - injected by Snakemake
