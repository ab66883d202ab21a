"""Path affinities from a contour map (paper Eq. 2, IRNet's convention).

A pixel pair (i, j) with j = i + (dy, dx) gets the affinity
``a_ij = (1 - max_{k in path(i, j)} B_k) ** power``: high inside coherent regions,
low as soon as the straight path between the two pixels crosses a contour.

Only the half-plane offsets (dy > 0, or dy == 0 and dx > 0) are stored, so each
unordered pair appears exactly once.  The *sparse form* of the affinities is a
tensor ``[B, K, H, W]`` whose entry ``[b, k, y, x]`` is the affinity of pixel
``(y, x)`` to pixel ``(y + dy_k, x + dx_k)``.

Out-of-map convention: pixels outside the map count as contour 1 (the map is padded
with 1), and entries whose target pixel falls outside the map are exactly 0 and
flagged invalid by :func:`offset_valid_mask` (also for ``power == 0``, where
``0 ** 0`` would otherwise give 1).  Pairs whose both ends lie inside the map have
their whole path inside the map (the path lives in the box spanned by the two ends),
so the padding never changes an in-map affinity.

:func:`symmetric_affinity` expands the sparse form to the full neighbourhood
(both directions and the self pair with ``a_ii = 1``) that score propagation needs.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "path_offsets",
    "path_points",
    "offset_valid_mask",
    "path_affinity",
    "path_max",
    "symmetric_offsets",
    "symmetric_affinity",
]


@functools.lru_cache(maxsize=32)
def _offsets_list(radius: int) -> tuple[tuple[int, int], ...]:
    """Half-plane offsets in IRNet's search order (dy == 0 row first, then by dy, dx)."""
    r = int(radius)
    out: list[tuple[int, int]] = []
    for dx in range(1, r):
        out.append((0, dx))
    for dy in range(1, r):
        for dx in range(-r + 1, r):
            if dy * dy + dx * dx < r * r:
                out.append((dy, dx))
    return tuple(out)


def _check_radius(radius: int) -> int:
    if isinstance(radius, bool) or int(radius) != radius:
        raise ValueError(f"radius must be an integer, got {radius!r}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    return int(radius)


def path_offsets(radius: int) -> torch.Tensor:
    """All offsets (dy, dx) with dy > 0, or dy == 0 and dx > 0, and dy² + dx² < radius².

    Returns a ``LongTensor [K, 2]`` (K = 0 for radius <= 1) in IRNet's order.
    """
    r = _check_radius(radius)
    offs = _offsets_list(r)
    if not offs:
        return torch.zeros((0, 2), dtype=torch.long)
    return torch.tensor(offs, dtype=torch.long)


def _path_of(dy: int, dx: int) -> list[tuple[int, int]]:
    """Lattice points within distance < 1 of the segment (0,0)-(dy,dx), inside its box."""
    length_sq = dy * dy + dx * dx
    pts: list[tuple[int, int]] = []
    for y in range(min(0, dy), max(0, dy) + 1):
        for x in range(min(0, dx), max(0, dx) + 1):
            # exact integer form of (dy*x - dx*y)^2 / (dy^2 + dx^2) < 1
            if (dy * x - dx * y) ** 2 < length_sq:
                pts.append((y, x))
    return pts


@functools.lru_cache(maxsize=32)
def _path_table(radius: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    return tuple(tuple(_path_of(dy, dx)) for dy, dx in _offsets_list(radius))


@functools.lru_cache(maxsize=32)
def _path_points_cached(radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    table = _path_table(radius)
    length = max((len(p) for p in table), default=1)
    points = torch.zeros((len(table), length, 2), dtype=torch.long)
    mask = torch.zeros((len(table), length), dtype=torch.bool)
    for i, pts in enumerate(table):
        points[i, : len(pts)] = torch.tensor(pts, dtype=torch.long)
        mask[i, : len(pts)] = True
    return points, mask


def path_points(radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Path points of every offset, padded for vectorised gathers.

    Returns ``points [K, L, 2]`` (long, (y, x) relative to the source pixel) and
    ``mask [K, L]`` (bool, True for real path points), L = longest path.  Padding
    entries repeat the source point (0, 0) — always on the path — so a max over all
    L entries equals the max over the real path without consulting the mask.
    """
    points, mask = _path_points_cached(_check_radius(radius))
    return points.clone(), mask.clone()


def offset_valid_mask(
    height: int, width: int, radius: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """``[K, H, W]`` bool: True where the target pixel (y + dy_k, x + dx_k) is inside the map."""
    offs = path_offsets(radius).to(device)
    ys = torch.arange(height, device=device).view(1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, width)
    ty = ys + offs[:, 0].view(-1, 1, 1)
    tx = xs + offs[:, 1].view(-1, 1, 1)
    return (ty < height) & (tx >= 0) & (tx < width)


def _reach(radius: int) -> int:
    """Padding needed on the left, right and bottom: |dx| <= r-1 and 0 <= dy <= r-1."""
    return max(_check_radius(radius) - 1, 0)


class _PathMax(torch.autograd.Function):
    """Max of the 1-padded contour along each offset's path; backward via the arg-max.

    One offset at a time: the L path points are sliced from the padded map and reduced,
    so the forward never holds more than ``B * L * H * W`` gathered values.  For the
    backward only the winning path index (uint8) is kept, instead of autograd holding
    every gathered value.  At ties the first maximal path point takes the gradient.
    """

    @staticmethod
    def forward(ctx, contour: torch.Tensor, radius: int) -> torch.Tensor:  # type: ignore[override]
        b, h, w = contour.shape
        reach = _reach(radius)
        table = _path_table(radius)
        padded = F.pad(contour, (reach, reach, 0, reach), mode="constant", value=1.0)
        out = contour.new_empty((b, len(table), h, w))
        need_arg = bool(ctx.needs_input_grad[0])
        arg = (
            torch.empty((b, len(table), h, w), dtype=torch.uint8, device=contour.device)
            if need_arg
            else None
        )
        for k, pts in enumerate(table):
            g = torch.stack(
                [padded[:, py : py + h, reach + px : reach + px + w] for py, px in pts], dim=1
            )
            # amax + argmax rather than max(dim): the latter is pathologically slow on
            # multi-threaded CPU builds for small tensors (milliseconds per call)
            torch.amax(g, dim=1, out=out[:, k])
            if need_arg:
                arg[:, k] = torch.argmax(g, dim=1).to(torch.uint8)
        if need_arg:
            ctx.save_for_backward(arg)
        ctx.radius = radius
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (arg,) = ctx.saved_tensors
        b, k, h, w = grad_out.shape
        reach = _reach(ctx.radius)
        hp, wp = h + reach, w + 2 * reach
        dev = grad_out.device
        points, _ = _path_points_cached(ctx.radius)
        delta = (points[..., 0] * wp + points[..., 1]).to(dev)  # [K, L] flat path offsets
        # flat index of every output pixel in the padded map
        base = (
            torch.arange(h, device=dev).view(h, 1) * wp + torch.arange(w, device=dev).view(1, w) + reach
        ).view(1, -1)
        gflat = grad_out.new_zeros((b, hp * wp))
        for i in range(k):
            idx = base + delta[i][arg[:, i].reshape(b, -1).long()]
            gflat.scatter_add_(1, idx, grad_out[:, i].reshape(b, -1))
        grad = gflat.view(b, hp, wp)[:, :h, reach : reach + w]
        return grad, None


def path_max(contour: torch.Tensor, radius: int) -> torch.Tensor:
    """``[B, K, H, W]``: max of the (1-padded) contour along each offset's path."""
    if contour.dim() != 3:
        raise ValueError(f"expected contour [B, H, W], got shape {tuple(contour.shape)}")
    r = _check_radius(radius)
    if not _offsets_list(r):
        # empty, but a fresh tensor still attached to the graph
        return contour.unsqueeze(1)[:, :0] * 1.0
    return _PathMax.apply(contour, r)


def path_affinity(contour: torch.Tensor, radius: int, power: float = 1.0) -> torch.Tensor:
    """Eq. (2) in sparse form: ``a[b, k, y, x] = (1 - max_path B) ** power`` to pixel + offset_k.

    ``contour``: ``[B, H, W]`` or ``[H, W]`` in [0, 1].  Returns ``[B, K, H, W]``
    (``[K, H, W]`` for an unbatched input); entries whose target is outside the map are
    exactly 0.  Differentiable w.r.t. ``contour`` (sub-gradient at ties: the first
    maximal path point).
    """
    unbatched = contour.dim() == 2
    if unbatched:
        contour = contour.unsqueeze(0)
    if contour.dim() != 3:
        raise ValueError(f"expected contour [B, H, W] or [H, W], got {tuple(contour.shape)}")
    if not contour.is_floating_point():
        contour = contour.float()
    b, h, w = contour.shape
    valid = offset_valid_mask(h, w, radius, device=contour.device).unsqueeze(0)
    invalid = ~valid
    m = path_max(contour, radius)
    if not (torch.is_grad_enabled() and contour.requires_grad):
        # inference (e.g. propagation): same values, computed in place to save memory
        aff = m.neg_().add_(1.0)
        if power != 1:
            aff.masked_fill_(invalid, 1.0).pow_(power)
        aff.masked_fill_(invalid, 0.0)
    elif power == 1:
        aff = (1.0 - m).masked_fill(invalid, 0.0)
    else:
        # base 1 on invalid entries keeps pow's gradient finite there (0 ** p for p < 1)
        aff = (1.0 - m).masked_fill(invalid, 1.0).pow(power).masked_fill(invalid, 0.0)
    return aff[0] if unbatched else aff


def symmetric_offsets(radius: int) -> torch.Tensor:
    """Full neighbourhood ``[2K+1, 2]``: (0, 0) first, then +offsets, then -offsets."""
    offs = path_offsets(radius)
    return torch.cat([torch.zeros((1, 2), dtype=torch.long), offs, -offs], dim=0)


def _copy_shifted(dst: torch.Tensor, src: torch.Tensor, dy: int, dx: int) -> None:
    """``dst[..., y, x] = src[..., y - dy, x - dx]`` where the source is inside; rest untouched."""
    h, w = src.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    dst[..., yd, xd] = src[..., ys, xs]


def symmetric_affinity(aff: torch.Tensor, radius: int) -> torch.Tensor:
    """Sparse ``[B, K, H, W]`` -> full neighbourhood ``[B, 2K+1, H, W]``.

    Entry ``[b, d, y, x]`` is ``A(p, p + o_d)`` for ``o_d = symmetric_offsets(radius)[d]``:
    d = 0 is the self pair (1), d in 1..K the stored pairs, d in K+1..2K the reverse
    pairs ``A(p, p - o_k) = a_k[p - o_k]`` (0 when p - o_k is outside the map).
    """
    unbatched = aff.dim() == 3
    if unbatched:
        aff = aff.unsqueeze(0)
    offs = _offsets_list(_check_radius(radius))
    if aff.shape[1] != len(offs):
        raise ValueError(f"expected {len(offs)} offsets for radius {radius}, got {aff.shape[1]}")
    b, k, h, w = aff.shape
    # filled in place (no stack / cat copies); slice assignment stays differentiable
    full = aff.new_zeros((b, 2 * k + 1, h, w))
    full[:, 0] = 1.0
    full[:, 1 : k + 1] = aff
    for i, (dy, dx) in enumerate(offs):
        _copy_shifted(full[:, k + 1 + i], aff[:, i], dy, dx)
    return full[0] if unbatched else full

