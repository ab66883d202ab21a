"""DeepLab-v2: shapes, the summed ASPP head, parameter groups, frozen BN, rebuilding from config.json."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sance_core.models.deeplab import DeepLabV2, arch_config, build_from_config


@pytest.fixture(scope="module")
def model() -> DeepLabV2:
    torch.manual_seed(0)
    return DeepLabV2(6, "resnet18", None, output_stride=8)


def test_forward_gives_logits_at_input_size_from_a_stride8_map(model):
    x = torch.randn(2, 3, 41, 54)
    feats = model.backbone(x)
    assert feats[-1].shape[-2:] == (6, 7)  # ceil(41/8), ceil(54/8): output stride 8
    out = model(x)
    assert out.shape == (2, 6, 41, 54)
    coarse = model.aspp(feats[-1])
    expected = F.interpolate(coarse, size=(41, 54), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected)


def test_aspp_is_the_sum_of_dilated_3x3_classifiers(model):
    feats = torch.randn(1, 512, 9, 11)
    branches = [F.conv2d(feats, conv.weight, conv.bias, padding=r, dilation=r)
                for conv, r in zip(model.aspp.branches, (6, 12, 18, 24))]
    torch.testing.assert_close(model.aspp(feats), sum(branches))
    assert [conv.dilation for conv in model.aspp.branches] == [(r, r) for r in (6, 12, 18, 24)]


def test_backward_reaches_backbone_and_head(model):
    model.zero_grad()
    x = torch.randn(2, 3, 32, 40)
    labels = torch.randint(0, 6, (2, 32, 40))
    labels[0, :5] = 255
    F.cross_entropy(model(x), labels, ignore_index=255).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.backbone.stem[0].weight.grad.abs().sum() > 0
    assert model.aspp.branches[0].weight.grad.abs().sum() > 0


def test_param_groups_split_backbone_and_head_with_the_head_multiplier(model):
    groups = model.param_groups(lr=2.5e-4, head_lr_mult=10.0, weight_decay=5e-4)
    assert [g["lr"] for g in groups] == pytest.approx([2.5e-4, 2.5e-3])
    assert all(g["initial_lr"] == g["lr"] and g["weight_decay"] == 5e-4 for g in groups)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len([p for p in model.parameters() if p.requires_grad])
    assert {id(p) for p in model.aspp.parameters()} == {id(p) for p in groups[1]["params"]}


def test_frozen_batchnorm_stays_fixed_in_train_mode():
    net = DeepLabV2(3, "resnet18", None, output_stride=16, rates=(1, 2), frozen_bn=True).train()
    bn = net.backbone.stem[1]
    assert not bn.training and not bn.weight.requires_grad
    before = bn.running_mean.clone()
    net(torch.randn(2, 3, 32, 32) * 5 + 3)
    torch.testing.assert_close(bn.running_mean, before)
    assert all(not g["params"] or g["params"][0].requires_grad for g in net.param_groups(0.1, 10, 0))


def test_rebuild_from_config_json_roundtrip_and_refusals(model):
    config = arch_config(["background", "a", "b", "c", "d", "e"], "resnet18", 8, (6, 12, 18, 24))
    rebuilt = build_from_config(config)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 3, 24, 24)
    model.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), model(x))
    with pytest.raises(ValueError, match="not a 'deeplab_v2'"):
        build_from_config({**config, "kind": "cam_classifier"})
    with pytest.raises(ValueError, match="rates"):
        build_from_config({k: v for k, v in config.items() if k != "rates"})
    with pytest.raises(ValueError, match="unknown backbone 'resnet7'"):
        build_from_config({**config, "backbone": "resnet7"})
    with pytest.raises(ValueError, match="num_classes"):
        DeepLabV2(1, "resnet18")
