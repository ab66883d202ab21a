"""Score propagation along contour-aware affinities (paper Eq. 6, IRNet's semantics).

IRNet builds the dense ``(HW) x (HW)`` affinity matrix ``A`` (``a_ii = 1``, symmetric,
``a_ij = (1 - max path B) ** beta`` within the radius, 0 elsewhere), column-normalises it
into ``T = A / colsum(A)``, squares it ``exp_times`` times and computes
``M^b = (M * (1 - B)) @ T^(2^exp_times)``.  That costs O((HW)^2) memory and O((HW)^3)
time per squaring.

Here the same product is computed without ever forming ``A``: one application of ``T``
to a row vector ``x`` is the stencil

    (x T)_j = sum_i x_i A_ij / s_j = sum_{d in N} W_d[j] * x[j + d],
    W_d[j] = A(j, j + d) / s_j,   s_j = sum_d A(j, j + d)

over the symmetric neighbourhood ``N`` (self + both directions of every offset; ``A`` is
symmetric so the column sum equals the row sum).  The weights are computed once and the
stencil is applied ``2 ** exp_times`` times with shifted slices of a zero-padded buffer
(``addcmul_`` per direction): memory O(HW * |N|), time O(2^t * HW * |N|).  Neighbours
outside the map have weight exactly 0, matching IRNet, which crops them away.

Precision: the stencil is applied 256 times and float32 accumulation drifts: about
1e-4 of the map maximum with one accumulator, 2-6e-5 with four interleaved partial sums
(docs/BENCHMARKS.md) -- the same order as IRNet's float32 dense squarings.  By default
the iteration therefore runs in float64 on the CPU (exact to float32 output precision,
1.5-2x the float32 time) and in float32 with four partial sums elsewhere (GPU:
bandwidth-bound, fp64 often slow); pass ``compute_dtype`` to override.  The weights are
always computed in float64.  The result has the dtype of ``scores``.

Threads: the loop issues ~18k small element-wise ops (69 directions x 256).  On an
oversubscribed CPU, torch's per-op OpenMP fork/join can stall for milliseconds each
(measured: 23-40 s instead of 0.8 s at 96x128 on a 2-core box with load ~14), so jobs
should cap ``torch.set_num_threads`` to their share of cores (``sance_core.runtime.
set_threads`` does this for pipeline jobs); one thread was about as fast as two here.
"""

from __future__ import annotations

import logging

import torch

from sance_core.ops.affinity import path_affinity, symmetric_affinity, symmetric_offsets

__all__ = ["transition_weights", "apply_transition", "propagate", "propagate_batch"]

log = logging.getLogger(__name__)

_F32_PARTIAL_SUMS = 4


def transition_weights(
    contour: torch.Tensor, radius: int = 5, beta: float = 10, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Stencil weights of the column-normalised transition matrix ``T``.

    ``contour``: ``[B, H, W]`` or ``[H, W]`` in [0, 1].  Returns ``[B, D, H, W]``
    (``[D, H, W]`` unbatched) with ``D = 2K + 1`` ordered as
    :func:`sance_core.ops.affinity.symmetric_offsets`; ``W[b, d, y, x] = T[(y,x) + o_d, (y,x)]``,
    so the weights of every pixel sum to 1 (the column sums of ``T``).  Computed in float64,
    returned in ``dtype`` (default: the contour's floating dtype).
    """
    with torch.no_grad():
        # float64 weights: their rounding would otherwise be amplified by 2^t applications
        aff = path_affinity(contour.to(torch.float64), radius, beta)
        full = symmetric_affinity(aff, radius)
        del aff
        dim = 1 if full.dim() == 4 else 0
        # s >= 1 because of the self pair, so the division is always safe
        out_dtype = dtype or (contour.dtype if contour.is_floating_point() else torch.float32)
        return full.div_(full.sum(dim=dim, keepdim=True)).to(out_dtype)


def _default_compute_dtype(x: torch.Tensor) -> torch.dtype:
    if x.dtype == torch.float64 or x.device.type == "cpu":
        return torch.float64
    return torch.float32


@torch.no_grad()
def apply_transition(
    x: torch.Tensor,
    weights: torch.Tensor,
    radius: int,
    times: int,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Apply the stencil ``x <- x T`` ``times`` times.

    ``x``: ``[B, C, H, W]``; ``weights``: ``[B, D, H, W]`` from :func:`transition_weights`.
    Returns ``[B, C, H, W]`` in ``x.dtype``.
    """
    if x.dim() != 4 or weights.dim() != 4:
        raise ValueError("expected x [B, C, H, W] and weights [B, D, H, W]")
    b, c, h, w = x.shape
    offs = symmetric_offsets(radius).tolist()
    if weights.shape != (b, len(offs), h, w):
        raise ValueError(f"weights shape {tuple(weights.shape)} != {(b, len(offs), h, w)}")
    out_dtype = x.dtype
    cdt = compute_dtype or _default_compute_dtype(x)
    if times <= 0 or c == 0 or h * w == 0:
        return x.clone()

    reach = max(radius - 1, 0)
    wts = weights.to(cdt)
    # directions whose weight is zero everywhere (e.g. offsets longer than the map) do nothing
    live = (wts.flatten(2).amax(dim=2).amax(dim=0) > 0).tolist()  # one device sync
    live[0] = True
    per_dir = wts.transpose(0, 1).contiguous()  # [D, B, H, W]: one contiguous plane per direction
    dirs = [(dy, dx, per_dir[d].unsqueeze(1)) for d, (dy, dx) in enumerate(offs) if live[d]]

    hp, wp = h + 2 * reach, w + 2 * reach
    # zero border: neighbours outside the map have weight 0 anyway, zeros keep 0 * x finite
    buf = x.new_zeros((b, c, hp, wp), dtype=cdt)
    inner = buf[:, :, reach : reach + h, reach : reach + w]
    inner.copy_(x)
    terms = [(wd, buf[:, :, reach + dy : reach + dy + h, reach + dx : reach + dx + w]) for dy, dx, wd in dirs]
    n_part = 1 if cdt == torch.float64 else min(_F32_PARTIAL_SUMS, len(terms))
    groups = [terms[p::n_part] for p in range(n_part)]
    # contiguous accumulators: in-place ops on the strided interior view are several times slower
    accs = [x.new_empty((b, c, h, w), dtype=cdt) for _ in range(n_part)]
    for _ in range(times):
        for acc, group in zip(accs, groups):
            torch.mul(group[0][0], group[0][1], out=acc)
            for wd, v in group[1:]:
                acc.addcmul_(wd, v)
        for acc in accs[1:]:
            accs[0].add_(acc)
        inner.copy_(accs[0])
    return accs[0].to(out_dtype, copy=True)


@torch.no_grad()
def propagate_batch(
    scores: torch.Tensor,
    contour: torch.Tensor,
    radius: int = 5,
    beta: float = 10,
    exp_times: int = 8,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Batched Eq. (6): ``scores [B, C, H, W]``, ``contour [B, H, W]`` -> ``[B, C, H, W]``."""
    if scores.dim() != 4 or contour.dim() != 3:
        raise ValueError(
            f"expected scores [B, C, H, W] and contour [B, H, W], got "
            f"{tuple(scores.shape)} and {tuple(contour.shape)}"
        )
    if scores.shape[0] != contour.shape[0] or scores.shape[-2:] != contour.shape[-2:]:
        raise ValueError(f"scores {tuple(scores.shape)} and contour {tuple(contour.shape)} disagree")
    if exp_times < 0:
        raise ValueError(f"exp_times must be >= 0, got {exp_times}")
    if not scores.is_floating_point():
        scores = scores.float()
    contour = contour.to(device=scores.device, dtype=scores.dtype)
    cdt = compute_dtype or _default_compute_dtype(scores)
    weights = transition_weights(contour, radius, beta, dtype=cdt)
    x = scores * (1.0 - contour).unsqueeze(1)
    log.debug(
        "propagate %s: radius=%d beta=%s applications=%d compute=%s",
        tuple(scores.shape), radius, beta, 2**exp_times, cdt,
    )
    return apply_transition(x, weights, radius, 2**exp_times, cdt)


@torch.no_grad()
def propagate(
    scores: torch.Tensor,
    contour: torch.Tensor,
    radius: int = 5,
    beta: float = 10,
    exp_times: int = 8,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Eq. (6): ``M^b = (M * (1 - B)) T^(2^exp_times)`` without the dense matrix.

    ``scores``: ``[C, H, W]`` (or ``[B, C, H, W]``, see :func:`propagate_batch`);
    ``contour``: ``[H, W]`` (``[B, H, W]``) in [0, 1].  Returns scores of the same shape.
    """
    if scores.dim() == 4:
        return propagate_batch(scores, contour, radius, beta, exp_times, compute_dtype)
    if scores.dim() != 3 or contour.dim() != 2:
        raise ValueError(
            f"expected scores [C, H, W] and contour [H, W], got "
            f"{tuple(scores.shape)} and {tuple(contour.shape)}"
        )
    out = propagate_batch(
        scores.unsqueeze(0), contour.unsqueeze(0), radius, beta, exp_times, compute_dtype
    )
    return out[0]
