"""The SANCE network: a shared ResNet backbone, a contour branch and an auxiliary segmentation branch.

Paper §3.2 / §4.2: the backbone runs at output stride 8 (dilation 2 in stage 4 and 4 in stage 5)
or 16; the contour branch reads all five stages and predicts one contour probability per pixel
of the stride-4 grid; the segmentation branch is ASPP on the top feature, upsampled to the same
stride-4 grid with ``C + 1`` channels (background first).  The ``irnet`` baseline is the same
network without the segmentation branch.

Both heads are "new layers": :meth:`SanceModel.param_groups` gives them ``new_lr_mult`` times the
backbone's learning rate (paper: 10x).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sance_core.models.backbones import BACKBONES, ResNetBackbone, freeze_batchnorm
from sance_core.models.heads import ASPP, ContourHead

log = logging.getLogger(__name__)

__all__ = ["SanceModel", "build_sance_model", "load_backbone_from_classifier", "ARCH_KEYS"]

# keys of a SANCE model's config.json that must match when it is loaded for inference
ARCH_KEYS = ("kind", "backbone", "output_stride", "classes", "seg_branch", "contour_channels", "aspp_rates")
MODEL_KIND = "sance"


class SanceModel(nn.Module):
    """``forward(x)`` returns ``{"contour": logits [B,1,h4,w4], "seg": logits [B,C+1,h4,w4]}``.

    ``seg`` is absent when the model has no segmentation branch (the ``irnet`` mode).
    ``h4 = ceil(H / 4)`` for inputs of any size (the grid of the backbone's first stage).
    """

    def __init__(self, backbone: ResNetBackbone, contour_head: ContourHead, seg_head: ASPP | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.contour_head = contour_head
        self.seg_head = seg_head

    @property
    def has_seg(self) -> bool:
        return self.seg_head is not None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        out = {"contour": self.contour_head(feats)}
        if self.seg_head is not None:
            size = feats[1].shape[-2:]
            seg = self.seg_head(feats[-1])
            out["seg"] = F.interpolate(seg, size=size, mode="bilinear", align_corners=False)
        return out

    def new_layers(self) -> list[nn.Module]:
        return [m for m in (self.contour_head, self.seg_head) if m is not None]

    def param_groups(self, lr: float, new_lr_mult: float, weight_decay: float) -> list[dict[str, Any]]:
        """Backbone at ``lr``, both heads at ``lr * new_lr_mult``; ``initial_lr`` drives the poly decay."""
        new = [p for m in self.new_layers() for p in m.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in self.backbone.parameters() if p.requires_grad], "lr": lr},
            {"params": new, "lr": lr * new_lr_mult},
        ]
        groups = [g for g in groups if g["params"]]
        for g in groups:
            g["initial_lr"] = g["lr"]
            g["weight_decay"] = weight_decay
        return groups

    def train(self, mode: bool = True) -> "SanceModel":
        super().train(mode)
        if getattr(self, "_frozen_bn", False):
            freeze_batchnorm(self.backbone)
        return self


def build_sance_model(
    num_classes: int,
    backbone: str = "resnet50",
    output_stride: int = 8,
    seg_branch: bool = True,
    weights: str | None = None,
    contour_channels: int = 32,
    aspp_rates: Sequence[int] = (6, 12, 18, 24),
    frozen_bn: bool = False,
) -> SanceModel:
    """Build a SANCE model; ``num_classes`` counts background (C + 1).

    Errors name the bad argument and the allowed values before anything is allocated.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    if output_stride not in (8, 16):
        raise ValueError(f"SANCE output_stride must be 8 or 16 (paper: 8; IRNet baseline: 16), got {output_stride}")
    if num_classes < 2:
        raise ValueError(f"num_classes counts background and must be >= 2, got {num_classes}")
    if contour_channels < 4 or contour_channels % 4:
        raise ValueError(f"contour_channels must be a positive multiple of 4 (GroupNorm(4)), got {contour_channels}")
    net = ResNetBackbone(backbone, weights, output_stride)
    contour = ContourHead(net.channels, mid=contour_channels, groups=4, target=1)
    seg = ASPP(net.channels[-1], num_classes, aspp_rates) if seg_branch else None
    model = SanceModel(net, contour, seg)
    model._frozen_bn = bool(frozen_bn)
    if frozen_bn:
        freeze_batchnorm(model.backbone)
    return model


def build_from_config(config: Mapping[str, Any]) -> SanceModel:
    """An untrained model with the architecture recorded in a SANCE ``config.json``."""
    missing = [k for k in ARCH_KEYS if k not in config]
    if missing or config.get("kind") != MODEL_KIND:
        raise ValueError(f"not a SANCE config.json (kind {config.get('kind')!r}, missing keys {missing})")
    return build_sance_model(
        num_classes=len(config["classes"]),
        backbone=config["backbone"],
        output_stride=int(config["output_stride"]),
        seg_branch=bool(config["seg_branch"]),
        contour_channels=int(config["contour_channels"]),
        aspp_rates=tuple(config["aspp_rates"]),
    )


def load_backbone_from_classifier(model: SanceModel, classifier_dir: str | Path) -> None:
    """Start the backbone from the trained CAM classifier's backbone (strict, ``weights_only``).

    Used where no ImageNet weights exist (the demo): the classifier's backbone is the only
    pretrained one.  The stride differs (dilation only), the weights' shapes do not.
    """
    from sance_core.engine.training import load_model

    state, config = load_model(classifier_dir, {"backbone": model.backbone.name})
    prefix = "backbone."
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise ValueError(f"{classifier_dir}: the classifier's model.pt has no 'backbone.*' weights")
    missing, unexpected = model.backbone.load_state_dict(sub, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{classifier_dir}: classifier backbone does not fit the SANCE backbone "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    log.info("backbone initialised from the classifier in %s", classifier_dir)
