"""The small demo ResNets of the backbone factory: stage channels, strides, dilation, init."""

from __future__ import annotations

import pytest
import torch

from sance_core.models.backbones import BACKBONES, STAGE_CHANNELS, ResNetBackbone


@pytest.mark.parametrize("name", ["resnet10", "resnet10_w32"])
@pytest.mark.parametrize("stride", [8, 16, 32])
def test_small_resnet_stages(name: str, stride: int) -> None:
    torch.manual_seed(0)
    net = ResNetBackbone(name, None, stride).eval()
    assert name in BACKBONES and net.channels == STAGE_CHANNELS[name]
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 96))
    expect = [4, 4, 8, min(16, stride), stride]
    for f, c, s in zip(feats, STAGE_CHANNELS[name], expect):
        assert tuple(f.shape) == (1, c, 64 // s, 96 // s)
    # one BasicBlock per stage: ResNet-18 with half the blocks (and half the width for _w32)
    assert all(len(layer) == 1 for layer in (net.layer1, net.layer2, net.layer3, net.layer4))


def test_small_resnet_sizes() -> None:
    n18 = sum(p.numel() for p in ResNetBackbone("resnet18").parameters())
    n10 = sum(p.numel() for p in ResNetBackbone("resnet10").parameters())
    n10w = sum(p.numel() for p in ResNetBackbone("resnet10_w32").parameters())
    assert n10w < n10 / 3.5 and n10 < n18 * 0.5
    conv = ResNetBackbone("resnet10_w32").layer4[0].conv1.weight
    assert conv.std() > 0  # initialised (kaiming), not left at zero
