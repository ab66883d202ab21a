"""The CAM classifier network: a ResNet backbone, global average pooling and a bias-free 1x1 head.

IRNet's design (``resnet50_cam``): a ResNet backbone (output stride 16), global average pooling
and a 1x1 convolution without bias over the C foreground classes. Because the head is linear and
has no bias, applying it to the feature map *before* pooling gives the class activation maps
(CAM) exactly; :meth:`CAMClassifier.cam` does that and the ``extract_cams`` stage uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sance_core.models.backbones import ResNetBackbone
from sance_core.models.resnet import BasicBlock, Bottleneck

MODEL_KIND = "cam_classifier"
ARCH_KEYS = ("kind", "backbone", "output_stride", "classes")
# training recipes (sance_core.stages.classifier): the papers' text, or IRNet's code
RECIPES = ("paper", "irnet")


class CAMClassifier(nn.Module):
    """ResNet backbone + global average pooling + bias-free 1x1 classifier (IRNet's ``resnet50_cam``)."""

    def __init__(self, num_classes: int, backbone: str = "resnet18", weights: str | None = None,
                 output_stride: int = 16, zero_init_residual: bool = False, recipe: str = "paper") -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if recipe not in RECIPES:
            raise ValueError(f"recipe: unknown {recipe!r}; choose one of {', '.join(RECIPES)}")
        self.num_classes = num_classes
        self.recipe = recipe
        self.backbone = ResNetBackbone(backbone, weights, output_stride)
        self.classifier = nn.Conv2d(self.backbone.channels[-1], num_classes, 1, bias=False)
        if zero_init_residual and not weights:
            zero_last_bn(self.backbone)
        if recipe == "irnet":  # IRNet's resnet50_cam: conv1..layer2 get no gradient
            for module in (self.backbone.stem, self.backbone.layer1, self.backbone.layer2):
                module.requires_grad_(False)

    def train(self, mode: bool = True) -> CAMClassifier:
        """As ``nn.Module.train``; with recipe ``irnet`` every BatchNorm keeps its statistics (IRNet's FixedBatchNorm)."""
        super().train(mode)
        if self.recipe == "irnet":
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last backbone stage, ``[B, D, H/s, W/s]``."""
        return self.backbone(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, C]``."""
        pooled = self.features(x).mean(dim=(2, 3), keepdim=True)
        return self.classifier(pooled).flatten(1)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Raw class activation maps ``[B, C, H/s, W/s]`` (before ReLU): the head on every position."""
        return F.conv2d(self.features(x), self.classifier.weight)

    def param_groups(self, lr: float, head_lr_mult: float, weight_decay: float) -> list[dict[str, Any]]:
        """Backbone at ``lr``, the new head at ``lr * head_lr_mult``; ``initial_lr`` drives the poly decay."""
        groups = [
            {"params": [p for p in self.backbone.parameters() if p.requires_grad], "lr": lr},
            {"params": list(self.classifier.parameters()), "lr": lr * head_lr_mult},
        ]
        for g in groups:
            g["initial_lr"] = g["lr"]
            g["weight_decay"] = weight_decay
        return groups


def zero_last_bn(backbone: nn.Module) -> None:
    """Zero the last BatchNorm scale of every residual block (Goyal et al., 2017).

    Each block then starts as the identity, which makes a randomly initialised ResNet train
    faster; it is not applied to pretrained weights.
    """
    for block in backbone.modules():
        if isinstance(block, Bottleneck):
            nn.init.zeros_(block.bn3.weight)
        elif isinstance(block, BasicBlock):
            nn.init.zeros_(block.bn2.weight)


def build_from_config(config: Mapping[str, Any]) -> CAMClassifier:
    """An untrained classifier with the architecture recorded in ``config.json``."""
    missing = [k for k in ARCH_KEYS if k not in config]
    if missing or config.get("kind") != MODEL_KIND:
        raise ValueError(f"not a classifier config.json (kind {config.get('kind')!r}, missing keys {missing})")
    return CAMClassifier(len(config["classes"]) - 1, config["backbone"], None, int(config["output_stride"]))


