"""The SANCE network: shapes at both strides, gradients into every part, param groups, errors."""

from __future__ import annotations

import math

import pytest
import torch

from sance_core.models import ASPP, ContourHead, build_sance_model
from sance_core.models.sance import build_from_config


@pytest.mark.parametrize("stride", [8, 16])
def test_forward_backward_shapes_and_gradients(stride):
    torch.manual_seed(0)
    model = build_sance_model(6, "resnet18", stride, aspp_rates=(1, 2))
    x = torch.randn(2, 3, 34, 42)
    out = model(x)
    h4, w4 = math.ceil(34 / 4), math.ceil(42 / 4)
    assert out["contour"].shape == (2, 1, h4, w4)
    assert out["seg"].shape == (2, 6, h4, w4)
    loss = torch.sigmoid(out["contour"]).mean() + torch.log_softmax(out["seg"], 1)[:, 0].mean()
    loss.backward()
    for name, module in (("backbone", model.backbone), ("contour", model.contour_head), ("seg", model.seg_head)):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), name
        assert any(float(g.abs().sum()) > 0 for g in grads), name
    # the top feature really is at the requested stride
    assert model.backbone(x)[-1].shape[-1] == math.ceil(42 / stride)


def test_irnet_model_has_no_segmentation_branch():
    model = build_sance_model(3, "resnet18", 16, seg_branch=False)
    out = model(torch.randn(1, 3, 32, 32))
    assert set(out) == {"contour"} and not model.has_seg


def test_param_groups_give_new_layers_ten_times_the_rate():
    model = build_sance_model(4, "resnet18", 8)
    groups = model.param_groups(0.01, 10.0, 5e-4)
    assert [g["lr"] for g in groups] == [0.01, 0.1]
    assert all(g["initial_lr"] == g["lr"] and g["weight_decay"] == 5e-4 for g in groups)
    n_params = sum(1 for _ in model.parameters())
    assert sum(len(g["params"]) for g in groups) == n_params
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    assert all(id(p) in backbone_ids for p in groups[0]["params"])
    assert not any(id(p) in backbone_ids for p in groups[1]["params"])


def test_frozen_bn_stays_in_eval_mode_when_training():
    model = build_sance_model(4, "resnet18", 8, frozen_bn=True).train()
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())


def test_aspp_sums_its_dilated_branches():
    aspp = ASPP(4, 3, (1, 3))
    x = torch.randn(1, 4, 9, 11)
    expected = aspp.branches[0](x) + aspp.branches[1](x)
    assert torch.allclose(aspp(x), expected)
    assert aspp(x).shape == (1, 3, 9, 11)
    with pytest.raises(ValueError, match="rates"):
        ASPP(4, 3, ())


def test_contour_head_resizes_every_stage_to_the_target_grid():
    head = ContourHead((8, 8, 16), mid=8)
    feats = [torch.randn(1, 8, 13, 17), torch.randn(1, 8, 13, 17), torch.randn(1, 16, 4, 5)]
    assert head(feats).shape == (1, 1, 13, 17)
    with pytest.raises(ValueError, match="expects 3"):
        head(feats[:2])


@pytest.mark.parametrize("kwargs, message", [
    ({"backbone": "vgg16"}, "unknown backbone 'vgg16'"),
    ({"output_stride": 32}, "output_stride must be 8 or 16"),
    ({"num_classes": 1}, "num_classes"),
    ({"contour_channels": 6}, "contour_channels"),
])
def test_factory_errors_name_the_argument(kwargs, message):
    args = {"num_classes": 3, "backbone": "resnet18"} | kwargs
    with pytest.raises(ValueError, match=message):
        build_sance_model(**args)


def test_build_from_config_refuses_foreign_configs():
    with pytest.raises(ValueError, match="not a SANCE config"):
        build_from_config({"kind": "cam_classifier", "backbone": "resnet18"})
