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


@pytest.mark.parametrize(("name", "kwargs"), [
    ("resnet18", {}), ("resnet18", {"zero_init_residual": True}), ("resnet34", {}),
    ("resnet50", {"replace_stride_with_dilation": [False, True, True]}), ("resnet101", {}),
])
def test_our_resnet_is_interchangeable_with_torchvisions(name: str, kwargs: dict) -> None:
    """sance_core.models.resnet builds what torchvision builds without torchvision's import: the
    same modules and state-dict keys, the same initial weights under one seed, the same outputs."""
    import torchvision

    from sance_core.models import resnet

    torch.manual_seed(5)
    ours = getattr(resnet, name)(**kwargs)
    torch.manual_seed(5)
    theirs = getattr(torchvision.models, name)(weights=None, **kwargs)
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    if name == "resnet18":
        x = torch.randn(2, 3, 48, 64)
        with torch.no_grad():
            assert torch.equal(ours.eval()(x), theirs.eval()(x))


def test_building_a_backbone_does_not_import_torchvision() -> None:
    """torchvision's package import pulls in torch._dynamo (about 3 CPU s per job); the backbones
    use sance_core.models.resnet. Checked in a fresh process."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from sance_core.models.backbones import ResNetBackbone\n"
            "from sance_core.models.classifier import CAMClassifier\n"
            "ResNetBackbone('resnet18', None, 16); ResNetBackbone('resnet50', None, 8); ResNetBackbone('resnet10_w32', None, 8)\n"
            "print('torchvision' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"
