"""Stage ``shard_ids``: split a manifest split into N id lists, one per per-image job."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sance_core.io.images import read_id_list


@dataclass(frozen=True)
class ShardConfig:
    split: str


def shard_ids(ids: list[str], n_shards: int) -> list[list[str]]:
    """Contiguous, near-equal chunks in manifest order, so shard k's ids are easy to find."""
    if n_shards < 1:
        raise ValueError(f"number of shards must be >= 1, got {n_shards}")
    size, extra = divmod(len(ids), n_shards)
    chunks, start = [], 0
    for k in range(n_shards):
        end = start + size + (1 if k < extra else 0)
        chunks.append(ids[start:end])
        start = end
    return chunks


def read_shard(path: str | Path) -> list[str]:
    """Ids of one shard file (may be empty when there are more shards than images)."""
    path = Path(path)
    return [] if path.stat().st_size == 0 else read_id_list(path)


