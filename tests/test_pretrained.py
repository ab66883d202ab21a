"""``weights: imagenet``: torchvision's ImageNet file of the named backbone, from torchvision's cache.

No network: each test builds its own cache (a random state dict saved under torchvision's file
name in a temporary TORCH_HOME) and downloads are off (SANCE_OFFLINE, set in conftest).
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from sance_core import pretrained
from sance_core.models.backbones import BACKBONES, ResNetBackbone


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("SANCE_OFFLINE", "1")
    return home


def test_the_known_urls_are_torchvisions_and_the_cache_dir_is_torch_hubs(torch_home):
    assert set(pretrained.IMAGENET_URLS) == {n for n in BACKBONES if n not in ("resnet10", "resnet10_w32")}  # demo nets: none
    for name in pretrained.IMAGENET_URLS:
        enum = getattr(torchvision.models, name.replace("resnet", "ResNet") + "_Weights")
        assert pretrained.IMAGENET_URLS[name] == enum.IMAGENET1K_V1.url
    assert pretrained.torch_hub_dir() == torch_home / "hub"
    assert str(pretrained.torch_hub_dir()) == torch.hub.get_dir()
    assert pretrained.imagenet_file("resnet101") == torch_home / "hub" / "checkpoints" / "resnet101-63fe2227.pth"


def test_imagenet_reads_the_cached_file_into_the_backbone(torch_home):
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None)  # random weights standing in for ImageNet's
    target = pretrained.imagenet_file("resnet18")
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)

    net = ResNetBackbone("resnet18", "imagenet", output_stride=16)
    assert torch.equal(net.stem[0].weight, reference.conv1.weight)
    assert torch.equal(net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(net.layer2[0].bn1.running_var, reference.layer2[0].bn1.running_var)
    # the same file by path gives the same backbone
    by_path = ResNetBackbone("resnet18", str(target), output_stride=16)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), by_path.state_dict().values()))


def test_offline_without_cache_names_the_file_and_where_to_put_it(torch_home):
    with pytest.raises(pretrained.WeightsError) as err:
        ResNetBackbone("resnet50", "imagenet")
    message = str(err.value)
    assert str(torch_home / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in message
    assert pretrained.IMAGENET_URLS["resnet50"] in message and "SANCE_OFFLINE" in message


def test_a_failed_download_is_reported_and_leaves_no_partial_file(torch_home, monkeypatch):
    monkeypatch.setenv("SANCE_OFFLINE", "0")

    def no_network(url, timeout):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(pretrained.urllib.request, "urlopen", no_network)
    with pytest.raises(pretrained.WeightsError, match="download failed.*Network is unreachable"):
        pretrained.ensure_imagenet("resnet18")
    folder = pretrained.imagenet_file("resnet18").parent
    assert not folder.exists() or not any(folder.iterdir())


def test_a_download_lands_in_the_cache_atomically(torch_home, monkeypatch):
    import io

    monkeypatch.setenv("SANCE_OFFLINE", "0")
    payload = b"weights" * 1000
    monkeypatch.setattr(pretrained.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    path = pretrained.ensure_imagenet("resnet34")
    assert path == pretrained.imagenet_file("resnet34") and path.read_bytes() == payload
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_start_up_check_lists_every_section_and_skips_null_and_present_files(torch_home, tmp_path):
    local = tmp_path / "mine.pth"
    local.write_bytes(b"x")
    config = {
        "classifier": {"backbone": "resnet101", "weights": "imagenet"},
        "sance": {"backbone": "resnet18", "weights": None},
        "segmentation": {"backbone": "resnet50", "weights": str(tmp_path / "missing.pth"), "modes": ["sance"]},
    }
    errors = pretrained.check_weights(config)
    assert len(errors) == 2
    assert errors[0].startswith("config key classifier.weights:") and "resnet101-63fe2227.pth" in errors[0]
    assert errors[1].startswith("config key segmentation.weights:") and "missing.pth" in errors[1]
    config["segmentation"]["weights"] = str(local)
    target = pretrained.imagenet_file("resnet101")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"cached")
    assert pretrained.check_weights(config) == []
