"""Online labels (paper Eq. 7) and their background refinement (Eq. 8).

Channel convention (used by every function here):

* ``fg_scores``: ``[C, H, W]`` (or ``[B, C, H, W]``) — one channel per *foreground* class
  of the dataset, channel ``c - 1`` for class id ``c`` (1..C).  The background channel of
  the segmentation map is not an input: Eq. (7) replaces it by the constant ``tau_b``.
* ``class_labels``: ``[C]`` (or ``[B, C]``) image-level multi-hot vector over the same
  foreground classes (bool or 0/1).
* Output labels: ``long`` ``[H, W]`` (``[B, H, W]``), 0 = background, c = class id.

Scores of absent classes are zeroed, then divided by the global maximum of what remains
(IRNet's pseudo labels; the default, ``normalize=False`` keeps the raw scores), a background channel of constant ``tau_b`` is put in front and
the arg-max is taken (ties go to the lower index, so to background first).

For maps that hold only the present classes (the CAM files store only those),
:func:`scores_to_label` takes the channel -> class-id table ``keys`` directly.
"""

from __future__ import annotations

import torch

from sance_core.ops.propagation import propagate_batch

__all__ = [
    "DEFAULT_BG_THRESHOLD",
    "scores_to_label",
    "online_label",
    "refine_with_background",
    "make_online_label",
]

DEFAULT_BG_THRESHOLD = 0.25  # IRNet's sem_seg_bg_thres; the paper gives no tau_b


def scores_to_label(
    scores: torch.Tensor,
    bg_threshold: float = DEFAULT_BG_THRESHOLD,
    keys: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Background constant + arg-max over ``scores [P, H, W]`` (or ``[B, P, H, W]``).

    ``normalize`` divides by the global maximum (per image) first; an all-zero map stays
    zero and becomes background.  ``keys`` (``[P]``, or ``[B, P]``) maps channel p to its
    class id; default ``p + 1``.  Returns ``long`` labels ``[H, W]`` (``[B, H, W]``).
    """
    unbatched = scores.dim() == 3
    if unbatched:
        scores = scores.unsqueeze(0)
        keys = None if keys is None else keys.reshape(1, -1)
    if scores.dim() != 4:
        raise ValueError(f"expected scores [P, H, W] or [B, P, H, W], got {tuple(scores.shape)}")
    scores = scores.float() if not scores.is_floating_point() else scores
    b, p, h, w = scores.shape
    if normalize and p > 0:
        peak = scores.flatten(1).amax(dim=1).view(b, 1, 1, 1)
        scores = scores / torch.where(peak > 0, peak, torch.ones_like(peak))
    bg = torch.full((b, 1, h, w), float(bg_threshold), dtype=scores.dtype, device=scores.device)
    idx = torch.argmax(torch.cat([bg, scores], dim=1), dim=1)
    if keys is not None:
        keys = keys.to(device=scores.device, dtype=torch.long).reshape(b, p)
        table = torch.cat([keys.new_zeros((b, 1)), keys], dim=1)
        idx = torch.gather(table, 1, idx.view(b, -1)).view(b, h, w)
    return idx[0] if unbatched else idx


def online_label(
    fg_scores: torch.Tensor,
    class_labels: torch.Tensor,
    bg_threshold: float = DEFAULT_BG_THRESHOLD,
    normalize: bool = True,
) -> torch.Tensor:
    """Eq. (7): absent classes zeroed, max-normalised, background = ``bg_threshold``, arg-max.

    ``fg_scores``: ``[C, H, W]`` or ``[B, C, H, W]`` (propagated scores ``M^b`` of the C
    foreground classes); ``class_labels``: ``[C]`` or ``[B, C]``.  Returns labels
    ``[H, W]`` / ``[B, H, W]`` (long, 0 = background, c = class id).
    """
    unbatched = fg_scores.dim() == 3
    if unbatched:
        fg_scores = fg_scores.unsqueeze(0)
        class_labels = class_labels.reshape(1, -1)
    if fg_scores.dim() != 4 or class_labels.dim() != 2:
        raise ValueError(
            f"expected fg_scores [B, C, H, W] and class_labels [B, C], got "
            f"{tuple(fg_scores.shape)} and {tuple(class_labels.shape)}"
        )
    if class_labels.shape != fg_scores.shape[:2]:
        raise ValueError(f"class_labels {tuple(class_labels.shape)} != {tuple(fg_scores.shape[:2])}")
    present = class_labels.to(device=fg_scores.device).bool()[:, :, None, None]
    scores = torch.where(present, fg_scores, torch.zeros_like(fg_scores))
    label = scores_to_label(scores, bg_threshold, normalize=normalize)
    return label[0] if unbatched else label


def refine_with_background(online: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Eq. (8): ``Y^r = 0 where reference == 0, else online`` (any matching shape).

    ``reference`` is the dense-CRF label ``Y^crf`` of the segmentation map or a saliency
    label (0 = background); only its background decides, its classes are not used.
    """
    if online.shape != reference.shape:
        raise ValueError(f"online {tuple(online.shape)} and reference {tuple(reference.shape)} differ")
    reference = reference.to(online.device)
    return torch.where(reference == 0, torch.zeros_like(online), online)


def make_online_label(
    seg_probs: torch.Tensor,
    contour: torch.Tensor,
    class_labels: torch.Tensor,
    bg_threshold: float = DEFAULT_BG_THRESHOLD,
    radius: int = 5,
    beta: float = 10,
    exp_times: int = 8,
    reference: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Eqs. (6)-(8) for a batch, without gradients.

    ``seg_probs``: softmax map ``[B, C+1, H, W]`` (channel 0 = background, dropped);
    ``contour``: ``[B, H, W]``; ``class_labels``: ``[B, C]``; ``reference``: optional
    ``Y^crf`` / saliency labels ``[B, H, W]`` for Eq. (8); ``normalize`` as in
    :func:`online_label`.  Returns ``[B, H, W]`` long.
    """
    with torch.no_grad():
        fg = seg_probs[:, 1:].detach()
        present = class_labels.to(device=fg.device).bool()[:, :, None, None]
        # absent channels are zeroed by Eq. (7) anyway; zeroing first keeps them out of the max
        fg = torch.where(present, fg, torch.zeros_like(fg))
        mb = propagate_batch(fg, contour.detach(), radius=radius, beta=beta, exp_times=exp_times)
        label = online_label(mb, class_labels, bg_threshold, normalize=normalize)
        if reference is not None:
            label = refine_with_background(label, reference.reshape(label.shape))
        return label
