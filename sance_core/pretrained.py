"""ImageNet weights by name: ``weights: imagenet`` means torchvision's ImageNet file of the backbone.

The file is torchvision's ``IMAGENET1K_V1`` state dict of the named ResNet (the weights IRNet
and DeepLab start from), kept where torchvision keeps it: ``torch.hub.get_dir()/checkpoints``,
i.e. ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``). It is
downloaded there once where a network is reachable; offline, a copy placed there (or a local
``.pth`` named in ``weights``) is read instead. :func:`check_weights` runs when Snakemake starts,
so a missing file is reported, with its name and folder, before any job is submitted.

Torch-free (the Snakefile imports it on every call); :func:`torch_hub_dir` repeats
``torch.hub.get_dir()``'s rule without importing torch (a test holds the two together).
Set ``SANCE_OFFLINE=1`` to forbid downloads (tests, air-gapped clusters).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

IMAGENET = "imagenet"
# torchvision's ResNet*_Weights.IMAGENET1K_V1.url (tests/test_pretrained.py checks them against torchvision)
IMAGENET_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}
# config sections whose models have a ResNet backbone with its own 'weights' key
WEIGHT_SECTIONS = ("classifier", "sance", "segmentation")


class WeightsError(FileNotFoundError):
    """ImageNet weights are wanted but neither cached nor downloadable; the message says where to put them."""


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch: ``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``."""
    home = os.getenv("TORCH_HOME") or os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub"


def imagenet_file(backbone: str) -> Path:
    """Where torchvision caches the ImageNet weights of ``backbone``."""
    try:
        url = IMAGENET_URLS[backbone]
    except KeyError:
        raise ValueError(f"no ImageNet weights known for backbone {backbone!r}; "
                         f"known: {', '.join(IMAGENET_URLS)}") from None
    return torch_hub_dir() / "checkpoints" / url.rsplit("/", 1)[1]


def offline() -> bool:
    return os.getenv("SANCE_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def _download(url: str, target: Path, timeout: float) -> None:
    """Fetch ``url`` into ``target`` atomically (temporary file in the same folder, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            shutil.copyfileobj(response, out)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure_imagenet(backbone: str, download: bool | None = None, timeout: float = 30.0) -> Path:
    """The cached ImageNet file of ``backbone``, downloaded first when missing and allowed.

    Raises :class:`WeightsError` naming the file, its folder and the URL when it is missing
    and cannot be fetched (offline, or ``SANCE_OFFLINE=1``).
    """
    path = imagenet_file(backbone)
    if path.is_file():
        return path
    url = IMAGENET_URLS[backbone]
    if download is None:
        download = not offline()
    reason = "downloads are off (SANCE_OFFLINE)"
    if download:
        log.info("downloading the ImageNet weights of %s: %s -> %s", backbone, url, path)
        try:
            _download(url, path, timeout)
            return path
        except OSError as err:
            reason = f"the download failed ({err})"
    raise WeightsError(
        f"ImageNet weights of {backbone} not found: {path.name} is not in {path.parent} and {reason}. "
        f"Fetch {url} on a machine with a network and put it at {path} (torchvision's cache, "
        f"$TORCH_HOME/hub/checkpoints; set TORCH_HOME to use another folder), or set weights to a local .pth"
    )


def resolve_weights(weights: str | None, backbone: str) -> Path | None:
    """``None`` -> None (random init); ``'imagenet'`` -> the cached torchvision file; else the path itself."""
    if not weights:
        return None
    if weights == IMAGENET:
        return ensure_imagenet(backbone)
    return Path(weights)


def check_weights(config: Mapping[str, Any]) -> list[str]:
    """Errors for every config section whose weights cannot be found (run at Snakemake start-up).

    ``imagenet`` is fetched into the cache here when it is missing and a network is reachable,
    so jobs on compute nodes without a network read the cached file.
    """
    errors: list[str] = []
    for section in WEIGHT_SECTIONS:
        values = config.get(section) or {}
        weights, backbone = values.get("weights"), values.get("backbone")
        if section == "segmentation" and not (values.get("modes") or []):
            continue
        if not weights or not isinstance(backbone, str):
            continue
        if weights == IMAGENET:
            try:
                ensure_imagenet(backbone)
            except (WeightsError, ValueError) as err:
                errors.append(f"config key {section}.weights: {err}")
        elif not Path(str(weights)).is_file():
            errors.append(f"config key {section}.weights: file {weights} not found "
                          f"(use 'imagenet' for torchvision's ImageNet weights of {backbone}, or null for random init)")
    return errors
