"""Prediction heads on top of a five-stage backbone: the contour branch and ASPP.

``ContourHead`` follows IRNet's class-boundary branch (``fc_edge1..6``): every backbone stage
is reduced by a 1x1 convolution + GroupNorm + ReLU, brought to the stride-4 grid of the first
stage, concatenated and mapped to one logit per pixel.  Low stages carry the spatial detail,
high stages the semantics that tell object contours from texture edges.

``ASPP`` is DeepLab-v2's atrous spatial pyramid pooling for ResNets: parallel 3x3 convolutions
with different dilation rates, summed.  It is generic (``ASPP(in_ch, out_ch, rates)``) so the
SANCE segmentation branch and the DeepLab segmenter share it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ASPP", "ContourHead"]


class ASPP(nn.Module):
    """DeepLab-v2 ASPP: ``sum_r conv3x3_dilated_r(x)``; output ``[B, out_ch, H, W]`` (same size).

    Weights start as N(0, 0.01) and biases at 0, DeepLab's initialisation of its classifier.
    """

    def __init__(self, in_ch: int, out_ch: int, rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        rates = tuple(int(r) for r in rates)
        if in_ch < 1 or out_ch < 1:
            raise ValueError(f"ASPP needs in_ch >= 1 and out_ch >= 1, got {in_ch}, {out_ch}")
        if not rates or any(r < 1 for r in rates):
            raise ValueError(f"ASPP rates must be a non-empty list of integers >= 1, got {list(rates)}")
        self.rates = rates
        self.branches = nn.ModuleList(
            nn.Conv2d(in_ch, out_ch, 3, padding=r, dilation=r, bias=True) for r in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class ContourHead(nn.Module):
    """IRNet-style contour branch: logits ``[B, 1, h, w]`` on the grid of ``features[target]``.

    ``in_channels``: channels of the five backbone stages; ``mid``: channels per reduced stage
    (IRNet: 32); ``target``: index of the stage whose grid is the output grid (1 = layer1,
    stride 4).  Stages are resized with bilinear interpolation to that exact size, so odd
    input sizes and any backbone stride work.
    """

    def __init__(self, in_channels: Sequence[int], mid: int = 32, groups: int = 4, target: int = 1) -> None:
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        if not in_channels:
            raise ValueError("ContourHead needs the channels of at least one backbone stage")
        if mid < 1 or mid % groups:
            raise ValueError(f"ContourHead mid channels ({mid}) must be a positive multiple of groups ({groups})")
        if not 0 <= target < len(in_channels):
            raise ValueError(f"target stage {target} outside 0..{len(in_channels) - 1}")
        self.target = target
        self.reduce = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, mid, 1, bias=False), nn.GroupNorm(groups, mid), nn.ReLU(inplace=True))
            for c in in_channels
        )
        self.fuse = nn.Conv2d(mid * len(in_channels), 1, 1, bias=True)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.reduce):
            raise ValueError(f"ContourHead expects {len(self.reduce)} feature maps, got {len(features)}")
        size = features[self.target].shape[-2:]
        parts = []
        for f, reduce in zip(features, self.reduce):
            r = reduce(f)
            if r.shape[-2:] != size:
                r = F.interpolate(r, size=size, mode="bilinear", align_corners=False)
            parts.append(r)
        return self.fuse(torch.cat(parts, dim=1))
