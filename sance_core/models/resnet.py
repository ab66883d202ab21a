"""ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016): the network
only, written for this package so that a job that builds a network does not import torchvision
(whose package import pulls in ``torch._dynamo``: about 3 CPU s per process, as much again as
``import torch``, paid by every pipeline job that runs a network).

It is built to be interchangeable with torchvision's ``resnet18`` ... ``resnet152``: the same
module names (``conv1``, ``bn1``, ``layer1.0.downsample.0``, ...), hence the same state-dict keys,
so torchvision's ImageNet files load unchanged; the modules are created and initialised in the
same order (He-normal fan-out convolutions, BatchNorm 1/0, optional zero-initialised last
BatchNorm of each residual branch), so one seed gives the same initial weights.
``tests/test_backbones.py`` holds both properties against torchvision itself.

Shapes: ``forward`` maps ``[B, 3, H, W]`` to logits ``[B, num_classes]``; the stages
``layer1`` ... ``layer4`` have strides 4, 8, 16, 32 (less where ``replace_stride_with_dilation``
trades a stride for dilation, as DeepLab does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """A bias-free convolution that keeps the size at stride 1 (padding = dilation for 3 x 3)."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation,
                     bias=False)


class BasicBlock(nn.Module):
    """Two 3 x 3 convolutions and an identity (or projected) shortcut; ``expansion`` 1."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 3, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1 x 1 reduce, 3 x 3 (strided, dilated), 1 x 1 expand by ``expansion`` 4; stride on the 3 x 3."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, planes * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """Stem (7 x 7 stride-2 convolution, max-pool), four stages of ``blocks[i]`` residual blocks
    with 64-128-256-512 base channels (times the block's expansion), global pooling and ``fc``.

    ``replace_stride_with_dilation``: for ``layer2`` .. ``layer4``, keep stride 1 and dilate
    instead (the blocks after the first of a stage use the stage's dilation).
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], blocks: Sequence[int], num_classes: int = 1000,
                 zero_init_residual: bool = False,
                 replace_stride_with_dilation: Sequence[bool] = (False, False, False)) -> None:
        super().__init__()
        if len(blocks) != 4 or len(replace_stride_with_dilation) != 3:
            raise ValueError(f"need 4 block counts and 3 dilation flags, got {list(blocks)} and "
                             f"{list(replace_stride_with_dilation)}")
        self.inplanes, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, blocks[0])
        self.layer2 = self._make_layer(block, 128, blocks[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, blocks[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, blocks[3], 2, replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self.init_weights(zero_init_residual)

    def init_weights(self, zero_init_residual: bool = False) -> None:
        """He-normal (fan-out) convolutions, BatchNorm weight 1 and bias 0, in module order; with
        ``zero_init_residual`` each block's last BatchNorm starts at 0 (the block starts as its shortcut)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1,
                    dilate: bool = False) -> nn.Sequential:
        """One stage: a first block that changes stride (or dilation) and width, then ``blocks - 1`` more."""
        entry_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        out = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(_conv(self.inplanes, out, 1, stride), nn.BatchNorm2d(out))
        layers = [block(self.inplanes, planes, stride, downsample, entry_dilation)]
        self.inplanes = out
        layers += [block(out, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_DEPTHS: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}


def _resnet(name: str, **kwargs) -> ResNet:
    block, blocks = _DEPTHS[name]
    return ResNet(block, blocks, **kwargs)


def resnet18(**kwargs) -> ResNet:
    return _resnet("resnet18", **kwargs)


def resnet34(**kwargs) -> ResNet:
    return _resnet("resnet34", **kwargs)


def resnet50(**kwargs) -> ResNet:
    return _resnet("resnet50", **kwargs)


def resnet101(**kwargs) -> ResNet:
    return _resnet("resnet101", **kwargs)


def resnet152(**kwargs) -> ResNet:
    return _resnet("resnet152", **kwargs)
