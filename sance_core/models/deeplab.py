"""DeepLab-v2: a dilated ResNet (output stride 8) and the ASPP classifier of Chen et al. (PAMI 2018).

DeepLab-v2's ASPP differs from the DeepLab-v3 module: every branch is a 3x3 dilated
convolution that maps the features straight to class scores, and the branches are *summed*
(no 1x1 branch, no image pooling, no batch norm, no projection). The paper's VOC model uses
rates 6/12/18/24 on a ResNet-101 with output stride 8; the new layers start from N(0, 0.01)
and zero bias and learn ``head_lr_mult`` (10x) faster than the backbone.

The ASPP module is ``sance_core.models.heads.ASPP``, shared with the SANCE segmentation branch.
``DeepLabV2.forward`` returns logits upsampled (bilinear) to the input size, so training,
multi-scale inference and the exported ONNX graph all see one resolution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sance_core.models.backbones import BACKBONES, ResNetBackbone
from sance_core.models.heads import ASPP

MODEL_KIND = "deeplab_v2"
DEFAULT_RATES = (6, 12, 18, 24)
# keys of config.json that define the architecture (build_from_config reads them)
ARCH_KEYS = ("kind", "backbone", "output_stride", "rates", "classes")


class DeepLabV2(nn.Module):
    """ResNet backbone (stride 8: dilation 2 in stage 4, 4 in stage 5) + DeepLab-v2 ASPP (summed branches)."""

    def __init__(self, num_classes: int, backbone: str = "resnet101", weights: str | None = None,
                 output_stride: int = 8, rates: Sequence[int] = DEFAULT_RATES, frozen_bn: bool = False) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes (background included) must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.frozen_bn = frozen_bn
        self.backbone = ResNetBackbone(backbone, weights, output_stride, frozen_bn=frozen_bn)
        self.aspp = ASPP(self.backbone.channels[-1], num_classes, rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K, H, W]`` at the input resolution (K = classes including background)."""
        logits = self.aspp(self.backbone(x)[-1])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def train(self, mode: bool = True) -> "DeepLabV2":
        """Frozen BatchNorm layers stay in eval mode (their statistics are never updated)."""
        super().train(mode)
        if self.frozen_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def param_groups(self, lr: float, head_lr_mult: float, weight_decay: float) -> list[dict[str, Any]]:
        """Backbone at ``lr``, the ASPP classifier at ``lr * head_lr_mult`` (DeepLab: 10x)."""
        groups = [
            {"params": [p for p in self.backbone.parameters() if p.requires_grad], "lr": lr},
            {"params": list(self.aspp.parameters()), "lr": lr * head_lr_mult},
        ]
        for g in groups:
            g["initial_lr"] = g["lr"]
            g["weight_decay"] = weight_decay
        return groups


def arch_config(classes: Sequence[str], backbone: str, output_stride: int, rates: Sequence[int],
                frozen_bn: bool = False) -> dict[str, Any]:
    """The architecture part of ``config.json`` (what :func:`build_from_config` needs)."""
    return {
        "kind": MODEL_KIND,
        "backbone": backbone,
        "output_stride": int(output_stride),
        "rates": [int(r) for r in rates],
        "classes": list(classes),
        "frozen_bn": bool(frozen_bn),
    }


def build_from_config(config: Mapping[str, Any]) -> DeepLabV2:
    """An untrained DeepLab-v2 with the architecture recorded in a saved ``config.json``."""
    if config.get("kind") != MODEL_KIND:
        raise ValueError(f"config.json describes a {config.get('kind')!r} model, not a {MODEL_KIND!r} segmenter")
    missing = [k for k in ARCH_KEYS if k not in config]
    if missing:
        raise ValueError(f"config.json lacks the key(s) {', '.join(missing)} needed to rebuild the segmenter")
    if config["backbone"] not in BACKBONES:
        raise ValueError(f"config.json names an unknown backbone {config['backbone']!r} (known: {', '.join(BACKBONES)})")
    classes = config["classes"]
    if not isinstance(classes, list) or len(classes) < 2:
        raise ValueError(f"config.json 'classes' must list background and at least one class, got {classes!r}")
    return DeepLabV2(len(classes), config["backbone"], None, int(config["output_stride"]),
                     tuple(config["rates"]), bool(config.get("frozen_bn", False)))
