"""Snakemake adapter: run the `shard_ids` stage of sance_core with this rule's params."""

from sance_core.snakemake_adapter import run_from_snakemake

run_from_snakemake(snakemake, "shard_ids")  # noqa: F821 - injected by Snakemake
