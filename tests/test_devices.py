"""Several devices in one job: items spread over one process per device, results in input order."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from sance_core.runtime import map_on_devices, visible_devices


def _scaled_sum(scale: float, device: torch.device):
    """A 'model' built once per device: returns the item, its device and a result."""
    weight = torch.full((8,), scale, device=device)

    def work(item: int):
        if item == 13:
            raise ValueError("unlucky item")
        x = torch.arange(8, dtype=torch.float32, device=device) + item
        return item, str(device), float((weight * x).sum())
    return work


def expected(item: int, scale: float = 0.5) -> float:
    return scale * float(np.arange(8).sum() + 8 * item)


def test_visible_devices_on_this_machine():
    assert visible_devices("cpu") == [torch.device("cpu")]
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert len(visible_devices("auto")) == max(1, n_gpus)


def test_one_device_is_a_plain_loop():
    results = list(map_on_devices(functools.partial(_scaled_sum, 0.5), range(5), [torch.device("cpu")]))
    assert results == [(i, "cpu", expected(i)) for i in range(5)]


def test_two_devices_keep_the_order_and_name_a_failing_item():
    """Two worker processes (both on the CPU here): results in input order until item 13 fails."""
    got = []
    with pytest.raises(RuntimeError, match="item 13 failed on cpu: ValueError: unlucky item"):
        for result in map_on_devices(functools.partial(_scaled_sum, 0.5), list(range(13)) + [13, 14],
                                     [torch.device("cpu")] * 2, queue_size=2):
            got.append(result)
    assert got == [(i, "cpu", expected(i)) for i in range(13)]
