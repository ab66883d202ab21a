"""ResNet backbones shared by the classifier, the SANCE model and DeepLab.

``weights`` is ``'imagenet'`` (torchvision's ImageNet state dict of the named ResNet, read from
torchvision's cache and fetched there once where a network is reachable: ``sance_core.pretrained``),
a local ``.pth`` state dict, or ``None`` for random init.

Besides torchvision's ResNets, two small ResNets sized for the CPU demo (random init, no ImageNet
file exists for them): ``resnet10`` (ResNet-18 with one BasicBlock per stage instead of two) and
``resnet10_w32`` (the same at half width: 32-64-128-256 channels). The presets keep the paper's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from sance_core.models import resnet
from sance_core.pretrained import resolve_weights

log = logging.getLogger(__name__)

BACKBONES = ("resnet10_w32", "resnet10", "resnet18", "resnet34", "resnet50", "resnet101")
# the small demo ResNets: BasicBlocks per stage and the channels of layer1..layer4
_SMALL = {"resnet10": ((1, 1, 1, 1), (64, 128, 256, 512)), "resnet10_w32": ((1, 1, 1, 1), (32, 64, 128, 256))}
# channels of the five stages (stem, layer1..layer4) per architecture
STAGE_CHANNELS = {
    "resnet10_w32": (32, 32, 64, 128, 256),
    "resnet10": (64, 64, 128, 256, 512),
    "resnet18": (64, 64, 128, 256, 512),
    "resnet34": (64, 64, 128, 256, 512),
    "resnet50": (64, 256, 512, 1024, 2048),
    "resnet101": (64, 256, 512, 1024, 2048),
}


class ResNetBackbone(nn.Module):
    """A ResNet (``sance_core.models.resnet``, interchangeable with torchvision's, without its import cost)
    cut into five stages with a chosen output stride (8, 16 or 32).

    Stride 16 dilates stage 5 (dilation 2); stride 8 dilates stage 4 by 2 and stage 5 by 4,
    as DeepLab and the SANCE paper do. ``forward`` returns the five stage outputs
    (strides 4, 4, 8, 8|16, 8|16|32 for stem-after-pool, layer1..layer4).
    """

    def __init__(self, name: str = "resnet50", weights: str | Path | None = None, output_stride: int = 16,
                 frozen_bn: bool = False) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if name in _SMALL:
            net = _small_resnet(*_SMALL[name])
            _dilate_basic(net, output_stride)
        elif name in ("resnet18", "resnet34"):
            net = getattr(resnet, name)()
            _dilate_basic(net, output_stride)
        else:
            dilation = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}[output_stride]
            net = getattr(resnet, name)(replace_stride_with_dilation=dilation)
        path = resolve_weights(weights, name)
        if path is not None:
            load_backbone_weights(net, path)
        self.name = name
        self.output_stride = output_stride
        self.channels = STAGE_CHANNELS[name]
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if frozen_bn:
            freeze_batchnorm(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = self.stem(x)
        f1 = self.layer1(f0)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f0, f1, f2, f3, f4]


def _small_resnet(blocks: tuple[int, ...], widths: tuple[int, ...]) -> nn.Module:
    """A ResNet of BasicBlocks with ``blocks`` per stage and ``widths`` channels.

    ``resnet.ResNet`` builds 64-128-256-512 channels; the layers are rebuilt with ``widths`` (the
    stem gets ``widths[0]``), initialised as ``ResNet`` initialises itself. Built this way, not by
    giving ``ResNet`` the widths, so that one seed keeps giving the demo backbones the same weights.
    """
    BasicBlock = resnet.BasicBlock
    net = resnet.ResNet(BasicBlock, list(blocks))
    net.inplanes = widths[0]
    net.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(widths[0])
    net.layer1 = net._make_layer(BasicBlock, widths[0], blocks[0])
    net.layer2 = net._make_layer(BasicBlock, widths[1], blocks[1], stride=2)
    net.layer3 = net._make_layer(BasicBlock, widths[2], blocks[2], stride=2)
    net.layer4 = net._make_layer(BasicBlock, widths[3], blocks[3], stride=2)
    net.fc = nn.Linear(widths[3], 1000)
    net.init_weights()
    return net


def _dilate_basic(net: nn.Module, output_stride: int) -> None:
    """torchvision's BasicBlock refuses ``replace_stride_with_dilation``; dilate by hand."""
    plan = {8: ((net.layer3, 2), (net.layer4, 4)), 16: ((net.layer4, 2),), 32: ()}[output_stride]
    for layer, dilation in plan:
        for i, block in enumerate(layer):
            if i == 0:
                block.conv1.stride = (1, 1)
                if block.downsample is not None:
                    block.downsample[0].stride = (1, 1)
                d_first = max(1, dilation // 2)
            else:
                d_first = dilation
            block.conv1.dilation, block.conv1.padding = (d_first, d_first), (d_first, d_first)
            block.conv2.dilation, block.conv2.padding = (dilation, dilation), (dilation, dilation)


def load_backbone_weights(net: nn.Module, path: str | Path) -> None:
    """Load an ImageNet state dict from a local file, safely, ignoring only the classifier head."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {path} not found (set weights: null to train from scratch)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the backbone (missing {missing[:5]}..., unexpected {unexpected[:5]}...)"
        )
    log.info("loaded backbone weights from %s", path)


def freeze_batchnorm(module: nn.Module) -> None:
    """Keep BatchNorm statistics and affine parameters fixed (small batches, as IRNet does)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
