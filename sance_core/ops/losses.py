"""Training losses of SANCE: affinity targets (Eq. 3), contour loss (Eq. 4), segmentation
loss (Eq. 5).

Pairs use the sparse layout of :mod:`sance_core.ops.affinity`: ``[B, K, H, W]`` where entry
``[b, k, y, x]`` is the pair (pixel (y, x), pixel (y, x) + offset_k), each unordered pair
once (IRNet's half-plane offsets).  A pair is used only when both ends are inside the map
and neither end is ignore (255).  IRNet additionally drops source pixels within
``radius - 1`` of the left/right/bottom border (an artefact of its fixed index tables);
here every in-map pair counts.

``region_mask`` (``[B, H, W]`` bool, optional) restricts the supervision to a region —
for the paste augmentation, the pasted rectangle: a pixel counts only inside it and a
pair only if both ends are inside it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from sance_core.ops.affinity import offset_valid_mask, path_affinity, path_offsets

__all__ = [
    "IGNORE_INDEX",
    "AffinityTargets",
    "pair_partner",
    "affinity_targets",
    "affinity_loss_terms",
    "contour_loss",
    "segmentation_loss",
]

from sance_core.constants import IGNORE_INDEX
EPS = 1e-5  # IRNet's constant inside the logs


class AffinityTargets(NamedTuple):
    """Eq. (3) as three disjoint bool masks ``[B, K, H, W]``; pairs in none of them are ignored."""

    bg_pos: torch.Tensor  # same label, label 0
    fg_pos: torch.Tensor  # same label, label > 0
    neg: torch.Tensor  # different labels


def pair_partner(x: torch.Tensor, radius: int, fill: float | int | bool = 0) -> torch.Tensor:
    """``[B, H, W]`` -> ``[B, K, H, W]`` with ``out[b, k, y, x] = x[b, y + dy_k, x + dx_k]``.

    Targets outside the map take ``fill``.
    """
    if x.dim() != 3:
        raise ValueError(f"expected [B, H, W], got {tuple(x.shape)}")
    b, h, w = x.shape
    offs = path_offsets(radius).tolist()
    if not offs:
        return x.new_zeros((b, 0, h, w))
    r = int(radius) - 1  # offsets reach 0 <= dy <= r, |dx| <= r
    padded = torch.full((b, h + r, w + 2 * r), fill, dtype=x.dtype, device=x.device)
    padded[:, :h, r : r + w] = x
    return torch.stack([padded[:, dy : dy + h, r + dx : r + dx + w] for dy, dx in offs], dim=1)


def affinity_targets(
    seeds: torch.Tensor,
    radius: int = 10,
    region_mask: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> AffinityTargets:
    """Eq. (3): pair targets from a seed label map ``[B, H, W]`` (or ``[H, W]``).

    Same label -> positive (split into background, label 0, and foreground), different
    label -> negative; a pair with ``ignore_index`` on either end, a target outside the
    map or (with ``region_mask``) an end outside the region is in no mask.
    """
    if seeds.dim() == 2:
        seeds = seeds.unsqueeze(0)
        region_mask = None if region_mask is None else region_mask.reshape(1, *region_mask.shape[-2:])
    if seeds.dim() != 3:
        raise ValueError(f"expected seeds [B, H, W], got {tuple(seeds.shape)}")
    seeds = seeds.long()
    b, h, w = seeds.shape
    src = seeds.unsqueeze(1)
    dst = pair_partner(seeds, radius, fill=ignore_index)
    valid = (src != ignore_index) & (dst != ignore_index)
    valid = valid & offset_valid_mask(h, w, radius, device=seeds.device).unsqueeze(0)
    if region_mask is not None:
        region_mask = region_mask.to(device=seeds.device, dtype=torch.bool)
        if region_mask.shape != seeds.shape:
            raise ValueError(f"region_mask {tuple(region_mask.shape)} != seeds {tuple(seeds.shape)}")
        valid = valid & region_mask.unsqueeze(1) & pair_partner(region_mask, radius, fill=False)
    same = src == dst
    pos = valid & same
    return AffinityTargets(bg_pos=pos & (src == 0), fg_pos=pos & (src > 0), neg=valid & ~same)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask``; 0 (still attached to the graph) for an empty mask."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def affinity_loss_terms(
    aff: torch.Tensor, targets: AffinityTargets, eps: float = EPS
) -> dict[str, torch.Tensor]:
    """The three averaged terms of Eq. (4) from sparse affinities ``[B, K, H, W]``.

    Logs as IRNet: ``log(a + eps)`` and ``log(1 + eps - a)``.  Each term is averaged over
    its own pair count; an empty group contributes exactly 0 (never NaN).
    """
    pos_log = -torch.log(aff + eps)
    neg_log = -torch.log(1.0 + eps - aff)
    return {
        "bg_pos": _masked_mean(pos_log, targets.bg_pos),
        "fg_pos": _masked_mean(pos_log, targets.fg_pos),
        "neg": _masked_mean(neg_log, targets.neg),
    }


def contour_loss(
    contour: torch.Tensor,
    seeds: torch.Tensor,
    radius: int = 10,
    power: float = 1.0,
    region_mask: torch.Tensor | None = None,
    eps: float = EPS,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Eq. (4): ``bg_pos / 2 + fg_pos / 2 + neg`` for a contour map ``[B, H, W]`` in [0, 1].

    ``seeds``: ``[B, H, W]`` labels (0 background, 1..C classes, 255 ignore) at the
    contour's resolution.  Training uses ``radius=10, power=1``.
    """
    if contour.dim() == 2:
        contour = contour.unsqueeze(0)
    aff = path_affinity(contour, radius, power)
    tgt = affinity_targets(seeds.reshape(contour.shape), radius, region_mask, ignore_index)
    terms = affinity_loss_terms(aff, tgt, eps)
    return terms["bg_pos"] / 2 + terms["fg_pos"] / 2 + terms["neg"]


def segmentation_loss(
    logits: torch.Tensor,
    seeds: torch.Tensor,
    region_mask: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Eq. (5): mean cross-entropy of softmax(``logits``) ``[B, C+1, H, W]`` over non-ignore pixels.

    Takes logits (``log_softmax`` is the stable form of ``log M``).  With no counted pixel
    (all 255, or an empty region) the loss is 0 and still backpropagates (zero gradient).
    """
    if logits.dim() != 4:
        raise ValueError(f"expected logits [B, C, H, W], got {tuple(logits.shape)}")
    seeds = seeds.reshape(logits.shape[0], *logits.shape[-2:]).long()
    valid = seeds != ignore_index
    if region_mask is not None:
        valid = valid & region_mask.to(device=seeds.device, dtype=torch.bool).reshape(seeds.shape)
    logp = F.log_softmax(logits, dim=1)
    safe = torch.where(valid, seeds, torch.zeros_like(seeds))
    if bool(((safe < 0) | (safe >= logits.shape[1])).any()):
        raise ValueError(f"seed labels outside [0, {logits.shape[1] - 1}] and not {ignore_index}")
    nll = -logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    return _masked_mean(nll, valid)
