"""Deterministic batches: the data order and every sample's augmentation follow from (seed, epoch, position).

A run resumed at batch ``b`` of epoch ``e`` therefore draws exactly the batches and the random
crops an uninterrupted run draws from there on, whatever the number of data-loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def sample_seed(seed: int, epoch: int, position: int, stream: int) -> int:
    """The augmentation seed of the sample at ``position`` of the epoch's order (``stream`` tells uses apart)."""
    return int(np.random.default_rng([seed, epoch, position, stream]).integers(2**31))


class EpochBatches:
    """Batches of ``(index, sample_seed)`` of one epoch: a seeded permutation, the last partial batch dropped.

    ``start_batch`` skips the batches a resumed run has already trained on. Subclasses add
    per-batch keys through :meth:`batch_keys`.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start_batch: int = 0, stream: int = 7) -> None:
        if n < 1:
            raise ValueError("no training samples")
        self.batch_size = min(batch_size, n)
        self.n_batches = n // self.batch_size
        self.order = np.random.default_rng([seed, epoch]).permutation(n)
        self.seed, self.epoch, self.start_batch, self.stream = seed, epoch, start_batch, stream

    def __len__(self) -> int:
        return self.n_batches - self.start_batch

    def batch_keys(self, batch: int, positions: range) -> list[Any]:
        return [(int(self.order[p]), sample_seed(self.seed, self.epoch, p, self.stream)) for p in positions]

    def __iter__(self) -> Iterator[list[Any]]:
        for b in range(self.start_batch, self.n_batches):
            yield self.batch_keys(b, range(b * self.batch_size, (b + 1) * self.batch_size))
