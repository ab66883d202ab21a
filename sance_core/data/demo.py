"""Embedded demo dataset: synthetic photos with image tags and VOC-style masks.

Why it exists: the workflow must run end to end on a laptop without downloads, and the
numbers it produces on the demo data should mean something. So the generator is a miniature
of PASCAL VOC at a quarter of its image size (VOC images are about 500 x 375 px, the demo's
88-128 px; ``sance demo-data --stats`` prints the statistics below):

* objects span a quarter to three quarters of the shorter image side and cover 20-35 % of the
  labelled pixels (VOC: about 25 %), so an object is 7-24 cells wide on the stride-4 grid
  (VOC: about 4x that);
* every object has a class-specific part (a saturated, patterned "head") and a LARGER body
  whose texture distribution is SHARED by all classes and by headless background distractors,
  so a classifier's CAM fires on the head first;
* how much of an object carries class evidence varies per instance, as on VOC: the head's
  colour is strong or faint, the body is plain (shared texture), tinted with the class colour
  or faintly patterned with the class pattern, and the border between head and body (and a
  second part border splitting the body into two shades) is strong, weak or barely visible.
  These intra-object part borders are what CAM seeds sometimes span and what a boundary
  model must learn are not object boundaries;
* 1..``max_objects`` objects with scale variation, occlusion (later objects cover earlier ones,
  masks follow), truncation at the image border, pairs of the same class and of classes that
  co-occur (lamp with robot; bird, snail and cactus with each other), as person and bicycle
  do on VOC;
* cluttered backgrounds: smooth gradients, band-limited noise, lines, stripes, rectangles,
  blobs, and distractor blobs textured like the shared body but without a head (background in
  the mask), soft shadows, lighting gradients, sensor noise and JPEG compression;
* varying non-square image sizes and a VOC-style void band (255) along every object outline.

The generator is fixed before any method is measured on it and is not tuned to any method.
Everything is drawn from ``numpy.random.Generator(PCG64)`` streams derived from the seed, so
the same config gives bit-identical files; the dataset is written into a temporary sibling
folder and renamed into place, so a crash never leaves a complete-looking partial dataset.
Besides the VOC layout the generator writes ``objects.tsv`` (one row per object: visible size,
visible class-part pixels, body evidence, part-border strengths), the instance-level record
that ``demo_statistics`` reads.
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from sance_core.constants import IGNORE_INDEX
from sance_core.io.palette import colorize, read_label_png, save_label_png

log = logging.getLogger(__name__)

DEMO_CLASSES: tuple[str, ...] = ("background", "bird", "lamp", "robot", "snail", "cactus")

_MIN_VISIBLE = 0.5  # fraction of an object (and of its head) that must stay visible
_LAYOUT_TRIES = 60
_ID_PREFIX = "demo_"


@dataclass(frozen=True)
class DemoDataConfig:
    """Size and appearance knobs of the demo dataset (defaults: the shipped demo)."""

    seed: int = 0
    n_train: int = 160
    n_val: int = 48
    min_side: int = 88  # image sides drawn per image in [min_side, max_side], non-square
    max_side: int = 128  # VOC's sides (about 333-500 px) at a quarter
    void_width: int = 2  # width in px of the 255 band along object borders in masks
    max_objects: int = 3
    jpeg_quality: int = 92

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if self.n_train < 1 or self.n_val < 0:
            raise ValueError(f"need n_train >= 1 and n_val >= 0, got {self.n_train}, {self.n_val}")
        if self.min_side < 32 or self.max_side <= self.min_side:
            raise ValueError(
                f"need 32 <= min_side < max_side (images are non-square), got {self.min_side}, {self.max_side}"
            )
        if self.void_width < 0:
            raise ValueError(f"void_width must be >= 0, got {self.void_width}")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must lie in 1..100, got {self.jpeg_quality}")


# --------------------------------------------------------------------------- shapes
# Object-local coordinates: u to the right (the way the object faces), v downwards,
# the silhouette spans roughly [-1, 1] on both axes.


def _ellipse(u: np.ndarray, v: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 <= 1.0


def _box(
    u: np.ndarray, v: np.ndarray, x0: float, y0: float, x1: float, y1: float, r: float = 0.0
) -> np.ndarray:
    """Axis-aligned box with corner radius ``r`` (signed-distance test)."""
    qx = np.abs(u - (x0 + x1) / 2) - ((x1 - x0) / 2 - r)
    qy = np.abs(v - (y0 + y1) / 2) - ((y1 - y0) / 2 - r)
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    inside = np.minimum(np.maximum(qx, qy), 0)
    return outside + inside <= r


def _capsule(u: np.ndarray, v: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], r: float) -> np.ndarray:
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((u - p0[0]) * dx + (v - p0[1]) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return (u - p0[0] - t * dx) ** 2 + (v - p0[1] - t * dy) ** 2 <= r * r


def _convex(u: np.ndarray, v: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Inside test of a convex polygon given in either winding order."""
    pos = np.ones(u.shape, dtype=bool)
    neg = np.ones(u.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]):
        cross = (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0)
        pos &= cross >= 0
        neg &= cross <= 0
    return pos | neg


ShapeFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _bird(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    body = (
        _ellipse(u, v, 0.0, 0.1, 0.72, 0.42)
        | _convex(u, v, [(-0.5, 0.05), (-1.02, -0.32), (-1.02, 0.26)])
        | _capsule(u, v, (-0.1, 0.45), (-0.18, 0.92), 0.05)
        | _capsule(u, v, (0.15, 0.45), (0.22, 0.92), 0.05)
    )
    head = _ellipse(u, v, 0.62, -0.22, 0.25, 0.25) | _convex(u, v, [(0.82, -0.3), (1.08, -0.2), (0.82, -0.12)])
    return body, head


def _lamp(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    body = _convex(u, v, [(-0.5, 0.98), (0.5, 0.98), (0.22, -0.28), (-0.22, -0.28)]) | _ellipse(
        u, v, 0.0, 0.96, 0.62, 0.1
    )
    head = _convex(u, v, [(-0.36, -0.24), (0.36, -0.24), (0.17, -0.66), (-0.17, -0.66)]) | _ellipse(
        u, v, 0.0, -0.7, 0.07, 0.07
    )
    return body, head


def _robot(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    body = (
        _box(u, v, -0.48, -0.32, 0.48, 0.42, 0.06)
        | _box(u, v, -0.38, 0.4, -0.12, 1.0, 0.03)
        | _box(u, v, 0.12, 0.4, 0.38, 1.0, 0.03)
        | _capsule(u, v, (-0.48, -0.22), (-0.86, 0.25), 0.09)
        | _capsule(u, v, (0.48, -0.22), (0.86, 0.25), 0.09)
        | _box(u, v, -0.08, -0.4, 0.08, -0.3)
    )
    head = _box(u, v, -0.22, -0.78, 0.22, -0.38, 0.04) | _capsule(u, v, (0.0, -0.78), (0.0, -0.96), 0.035)
    return body, head


def _snail(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    body = _ellipse(u, v, -0.18, -0.12, 0.55, 0.55) | _box(u, v, -0.95, 0.3, 0.7, 0.62, 0.14)
    head = (
        _ellipse(u, v, 0.78, 0.36, 0.22, 0.18)
        | _capsule(u, v, (0.86, 0.26), (0.98, -0.16), 0.04)
        | _capsule(u, v, (0.72, 0.26), (0.68, -0.13), 0.04)
    )
    return body, head


def _cactus(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    body = (
        _box(u, v, -0.24, -0.5, 0.24, 1.0, 0.2)
        | _capsule(u, v, (-0.24, 0.25), (-0.62, 0.25), 0.12)
        | _capsule(u, v, (-0.62, 0.25), (-0.62, -0.18), 0.12)
        | _capsule(u, v, (0.24, 0.05), (0.6, 0.05), 0.12)
        | _capsule(u, v, (0.6, 0.05), (0.6, -0.38), 0.12)
    )
    du, dv = u, v + 0.64
    head = np.hypot(du, dv) <= 0.19 + 0.05 * np.cos(6 * np.arctan2(dv, du))
    return body, head


@dataclass(frozen=True)
class _ClassSpec:
    """How one class looks: silhouette, head hue and head pattern."""

    shape: ShapeFn
    head_centre: tuple[float, float]  # local (u, v) of the head, the origin of its pattern
    hue: float  # degrees
    pattern: str


_SPECS: tuple[_ClassSpec, ...] = (
    _ClassSpec(_bird, (0.62, -0.22), 5.0, "dots"),
    _ClassSpec(_lamp, (0.0, -0.45), 50.0, "checker"),
    _ClassSpec(_robot, (0.0, -0.58), 215.0, "hstripes"),
    _ClassSpec(_snail, (0.78, 0.36), 115.0, "rings"),
    _ClassSpec(_cactus, (0.0, -0.64), 300.0, "spokes"),
)
assert len(_SPECS) == len(DEMO_CLASSES) - 1


# --------------------------------------------------------------------------- textures


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return np.array(rgb, dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float, channels: int = 1) -> np.ndarray:
    """Band-limited noise (about unit std): coarse Gaussian noise, cubic upsampling."""
    gh, gw = int(math.ceil(h / cell)) + 3, int(math.ceil(w / cell)) + 3
    coarse = rng.standard_normal((gh, gw, channels)).astype(np.float32)
    up = cv2.resize(coarse, (int(round(gw * cell)), int(round(gh * cell))), interpolation=cv2.INTER_CUBIC)
    up = up.reshape(up.shape[0], up.shape[1], channels)
    oy, ox = int(cell), int(cell)
    return up[oy : oy + h, ox : ox + w]


def _body_texture(rng: np.random.Generator, ap: np.ndarray, bp: np.ndarray, rad: np.ndarray) -> np.ndarray:
    """The texture SHARED by all classes (and by headless distractors): grey-brown stripes.

    ``ap, bp`` are frame-local pixel coordinates (so the stripes turn with the object),
    ``rad`` is a normalised radius used for a little 3-D-looking shading.
    """
    h, w = ap.shape
    base = _hsv(rng.uniform(15, 45), rng.uniform(0.12, 0.45), rng.uniform(0.35, 0.72))
    period = rng.uniform(4.5, 9.0)
    theta = rng.uniform(0, np.pi)
    phase = rng.uniform(0, 2 * np.pi)
    amp = rng.uniform(0.12, 0.28)
    stripes = np.sin(2 * np.pi * (ap * np.cos(theta) + bp * np.sin(theta)) / period + phase)
    mottle = _smooth_noise(rng, h, w, rng.uniform(3.0, 7.0))[..., 0]
    shade = 1.0 - 0.28 * np.clip(rad, 0, 1.2) ** 2
    gain = (1.0 + amp * stripes + 0.08 * mottle) * shade
    tex = base[None, None, :] * gain[..., None]
    tex += 0.025 * rng.standard_normal((h, w, 3)).astype(np.float32)
    return tex.astype(np.float32)


def _head_texture(rng: np.random.Generator, spec: _ClassSpec, hx: np.ndarray, hy: np.ndarray) -> np.ndarray:
    """The class-specific part: a saturated class hue with a class-specific pattern.

    ``hx, hy`` are pixel coordinates relative to the head centre in the object frame.
    """
    h, w = hx.shape
    base = _hsv(spec.hue + rng.uniform(-8, 8), rng.uniform(0.62, 0.92), rng.uniform(0.68, 0.95))
    tex = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
    white = np.ones(3, dtype=np.float32)
    if spec.pattern == "dots":
        p = 4.5
        dot = (np.mod(hx, p) - p / 2) ** 2 + (np.mod(hy, p) - p / 2) ** 2 <= 1.25**2
        tex[dot] *= 0.3
    elif spec.pattern == "checker":
        p = 3.0
        chk = (np.floor(hx / p) + np.floor(hy / p)).astype(np.int64) % 2 == 1
        tex[chk] *= 0.55
    elif spec.pattern == "hstripes":
        on = np.mod(hy, 4.0) < 2.0
        tex[on] = 0.5 * tex[on] + 0.5 * white
    elif spec.pattern == "rings":
        ring = np.sin(2 * np.pi * np.hypot(hx, hy) / 3.5) > 0
        tex[ring] *= 0.45
    elif spec.pattern == "spokes":
        spoke = np.sin(8 * np.arctan2(hy, hx)) > 0
        tex[spoke] = 0.45 * tex[spoke] + 0.55 * white
    else:  # pragma: no cover - the specs above are the only patterns
        raise ValueError(spec.pattern)
    tex *= (1.0 + 0.06 * _smooth_noise(rng, h, w, 4.0))
    tex += 0.025 * rng.standard_normal((h, w, 3)).astype(np.float32)
    return tex


# --------------------------------------------------------------------------- objects


@dataclass
class _Patch:
    """One rendered object in its own square window centred on the object's origin."""

    cls: int  # 1-based class id
    half: int
    body: np.ndarray  # bool [S, S], head pixels excluded
    head: np.ndarray  # bool [S, S]
    ap: np.ndarray  # frame-local pixel coordinates, for textures
    bp: np.ndarray
    su: float
    sv: float
    rad: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.body | self.head


def _render_patch(rng: np.random.Generator, cls: int, extent: float) -> _Patch:
    """Rasterise one object of ``extent`` px with a random pose (vectorised implicit shapes)."""
    spec = _SPECS[cls - 1]
    theta = float(np.clip(rng.normal(0.0, np.deg2rad(12)), -np.deg2rad(30), np.deg2rad(30)))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    jit = rng.uniform(-0.12, 0.12)
    su, sv = extent / 2 * (1 + jit), extent / 2 * (1 - jit)
    fy, fx = rng.random(2)
    half = int(math.ceil(1.6 * max(su, sv))) + 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    dy, dx = yy - fy, xx - fx
    c, s = math.cos(theta), math.sin(theta)
    ap = flip * (c * dx + s * dy)
    bp = -s * dx + c * dy
    u, v = ap / su, bp / sv
    body, head = spec.shape(u, v)
    body = body & ~head
    return _Patch(cls, half, body, head, ap, bp, su, sv, np.hypot(u, v) / 1.1)


def _window(h: int, w: int, cy: int, cx: int, half: int) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Image and patch slices where a patch centred at (cy, cx) overlaps the image."""
    y0, x0 = cy - half, cx - half
    y1, x1 = y0 + 2 * half + 1, x0 + 2 * half + 1
    iy0, ix0, iy1, ix1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    if iy0 >= iy1 or ix0 >= ix1:
        return None
    return (slice(iy0, iy1), slice(ix0, ix1)), (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))


def _place(h: int, w: int, patch: np.ndarray, cy: int, cx: int, half: int) -> np.ndarray:
    out = np.zeros((h, w), dtype=bool)
    win = _window(h, w, cy, cx, half)
    if win is not None:
        out[win[0]] = patch[win[1]]
    return out


@dataclass(frozen=True)
class _ImagePlan:
    """What one image contains, drawn up front so the class balance is controlled."""

    height: int
    width: int
    classes: tuple[int, ...]  # in drawing order (later ones occlude earlier ones)
    scales: tuple[float, ...]  # object extent as a fraction of the shorter image side


# classes that co-occur (as person and bicycle on VOC): a further object is one of the first
# one's partners with p = _P_PARTNER; lamp-robot is a pair, bird-snail-cactus a triangle, so
# every class is drawn as a partner equally often
_PARTNERS: dict[int, tuple[int, ...]] = {1: (4, 5), 4: (1, 5), 5: (1, 4), 2: (3,), 3: (2,)}
_P_SAME, _P_PARTNER = 0.25, 0.5
# object extent as a fraction of the shorter image side (VOC: a quarter to three quarters and
# more, 0.63-1.0 for most single objects of voc-mini); shrunk a little per extra object
_EXTENT = (0.6, 1.3)
_EXTENT_SHRINK = 0.12


def _plan_images(cfg: DemoDataConfig) -> list[_ImagePlan]:
    """Sizes and object classes of all images (train first, then val).

    The first class comes from a shuffled deck of the 5 classes, refilled when empty, so class
    frequencies stay balanced; a further object repeats the first one's class with p=0.25
    (same-class pairs), is one of its co-occurring partners (``_PARTNERS``) with p=0.5, and is
    another class otherwise. 45 % of the images hold one object, 35 % two, 20 % three.
    """
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    n_cls = len(DEMO_CLASSES) - 1
    weights = np.array([0.45, 0.35, 0.2] + [0.1] * max(0, cfg.max_objects - 3))[: cfg.max_objects]
    weights = weights / weights.sum()
    deck: list[int] = []

    def draw(exclude: set[int]) -> int:
        if len(exclude) >= n_cls:
            exclude = set()
        while True:
            if not deck:
                deck.extend((rng.permutation(n_cls) + 1).tolist())
            for i, c in enumerate(deck):
                if c not in exclude:
                    return deck.pop(i)
            deck.extend((rng.permutation(n_cls) + 1).tolist())

    plans = []
    for _ in range(cfg.n_train + cfg.n_val):
        while True:
            hgt, wid = (int(x) for x in rng.integers(cfg.min_side, cfg.max_side + 1, size=2))
            if hgt != wid:
                break
        k = int(rng.choice(np.arange(1, cfg.max_objects + 1), p=weights))
        classes = [draw(set())]
        for _ in range(k - 1):
            r = rng.random()
            if r < _P_SAME:
                classes.append(classes[0])
            elif r < _P_SAME + _P_PARTNER:
                partners = _PARTNERS[classes[0]]
                classes.append(partners[int(rng.integers(len(partners)))])
            else:
                classes.append(draw(set(classes) | set(_PARTNERS[classes[0]])))
        order = rng.permutation(k)
        classes = [classes[i] for i in order]
        lo, hi = _EXTENT
        scales = np.exp(rng.uniform(np.log(lo), np.log(hi), size=k)) * (1.0 - _EXTENT_SHRINK * (k - 1))
        plans.append(_ImagePlan(hgt, wid, tuple(classes), tuple(float(s) for s in scales)))
    return plans


def _layout(
    rng: np.random.Generator, plan: _ImagePlan
) -> tuple[list[_Patch], list[tuple[int, int]]]:
    """Pose and place the objects so every object and every head stays >= half visible.

    Retries with new positions, shrinking the objects every 10 failures; after all tries the
    best layout found is kept (the mask stays the truth either way).
    """
    h, w = plan.height, plan.width
    side = min(h, w)
    shrink = 1.0
    best: tuple[float, list[_Patch], list[tuple[int, int]]] | None = None
    patches: list[_Patch] = []
    for attempt in range(_LAYOUT_TRIES):
        if attempt % 10 == 0:
            patches = [_render_patch(rng, c, s * side * shrink) for c, s in zip(plan.classes, plan.scales)]
            shrink *= 0.88
        centres = []
        for p in patches:
            ext = 2 * max(p.su, p.sv)
            lo_y, hi_y = 0.3 * ext, h - 0.3 * ext
            lo_x, hi_x = 0.3 * ext, w - 0.3 * ext
            cy = rng.uniform(lo_y, hi_y) if hi_y > lo_y else h / 2
            cx = rng.uniform(lo_x, hi_x) if hi_x > lo_x else w / 2
            centres.append((int(round(cy)), int(round(cx))))
        covered = np.zeros((h, w), dtype=bool)
        worst = 1.0
        for p, (cy, cx) in zip(reversed(patches), reversed(centres)):
            m = _place(h, w, p.mask, cy, cx, p.half)
            hd = _place(h, w, p.head, cy, cx, p.half)
            vis = (m & ~covered).sum() / max(int(p.mask.sum()), 1)
            vis_head = (hd & ~covered).sum() / max(int(p.head.sum()), 1)
            worst = min(worst, vis, vis_head)
            covered |= m
        if best is None or worst > best[0]:
            best = (worst, list(patches), list(centres))
        if worst >= _MIN_VISIBLE:
            break
    assert best is not None
    if best[0] < _MIN_VISIBLE:
        log.debug("layout kept with visible fraction %.2f after %d tries", best[0], _LAYOUT_TRIES)
    return best[1], best[2]


# --------------------------------------------------------------------------- background


def _random_bg_colour(rng: np.random.Generator) -> np.ndarray:
    sat = rng.uniform(0.03, 0.45) if rng.random() < 0.85 else rng.uniform(0.45, 0.65)
    return _hsv(rng.uniform(0, 360), sat, rng.uniform(0.22, 0.9))


def _blend(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """In place: img = img * (1 - alpha) + colour * alpha (colour: [3] or [H, W, 3])."""
    a = alpha[..., None]
    img *= 1.0 - a
    img += a * colour


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Gradient + band-limited noise + clutter with edges + body-textured distractor blobs.

    Returns the float image ``[h, w, 3]`` and the bool map ``[h, w]`` of the distractors' pixels
    (alpha above one half)."""
    c1, c2 = _random_bg_colour(rng), _random_bg_colour(rng)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (np.cos(ang) * (xx - w / 2) + np.sin(ang) * (yy - h / 2)) / max(h, w) + 0.5
    t = np.clip(ramp, 0, 1)[..., None]
    img = (c1 * (1 - t) + c2 * t).astype(np.float32)
    coarse = rng.uniform(12, 28)
    img *= 1.0 + 0.1 * _smooth_noise(rng, h, w, coarse, 1) + 0.035 * _smooth_noise(rng, h, w, coarse, 3)
    img *= 1.0 + 0.05 * _smooth_noise(rng, h, w, rng.uniform(3, 7), 1)

    canvas = np.zeros((h, w), dtype=np.uint8)
    for _ in range(int(rng.integers(4, 13))):
        canvas[:] = 0
        kind = rng.choice(["line", "rect", "frame", "ellipse", "poly", "stripes"], p=[0.25, 0.15, 0.1, 0.2, 0.15, 0.15])
        colour = _random_bg_colour(rng)
        if rng.random() < 0.3:  # sometimes clutter in the shared body's colour family
            colour = _hsv(rng.uniform(15, 45), rng.uniform(0.12, 0.45), rng.uniform(0.35, 0.72))
        p0 = (int(rng.integers(-w // 4, w + w // 4)), int(rng.integers(-h // 4, h + h // 4)))
        if kind == "line":
            p1 = (int(rng.integers(-w // 4, w + w // 4)), int(rng.integers(-h // 4, h + h // 4)))
            cv2.line(canvas, p0, p1, 255, int(rng.integers(1, 4)), cv2.LINE_AA)
        elif kind in ("rect", "frame", "stripes"):
            p1 = (p0[0] + int(rng.integers(8, w // 2)), p0[1] + int(rng.integers(8, h // 2)))
            cv2.rectangle(canvas, p0, p1, 255, -1 if kind != "frame" else int(rng.integers(1, 4)))
        elif kind == "ellipse":
            axes = (int(rng.integers(4, w // 4)), int(rng.integers(4, h // 4)))
            cv2.ellipse(canvas, p0, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
        else:
            n = int(rng.integers(3, 6))
            r = rng.uniform(6, min(h, w) / 3)
            angs = np.sort(rng.uniform(0, 2 * np.pi, n))
            pts = np.stack([p0[0] + r * np.cos(angs), p0[1] + r * np.sin(angs)], 1).round().astype(np.int32)
            cv2.fillPoly(canvas, [pts], 255, cv2.LINE_AA)
        alpha = canvas.astype(np.float32) / 255.0 * rng.uniform(0.55, 1.0)
        if kind == "stripes":
            th = rng.uniform(0, np.pi)
            per = rng.uniform(3, 10)
            on = np.sin(2 * np.pi * (np.cos(th) * xx + np.sin(th) * yy) / per) > 0
            alpha *= on
        _blend(img, alpha, colour)

    # distractors: blobs with the SHARED body texture but no class part (background in masks)
    n_dis = int(rng.choice([0, 1, 2], p=[0.35, 0.4, 0.25]))
    distractor = np.zeros((h, w), dtype=bool)
    for _ in range(n_dis):
        canvas[:] = 0
        side = min(h, w)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        size = rng.uniform(0.12, 0.35) * side
        if rng.random() < 0.6:
            axes = (max(2, int(size / 2)), max(2, int(size / 2 * rng.uniform(0.35, 1.0))))
            cv2.ellipse(canvas, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
        elif rng.random() < 0.5:
            ang = rng.uniform(0, np.pi)
            d = np.array([np.cos(ang), np.sin(ang)]) * size / 2
            p0 = (int(cx - d[0]), int(cy - d[1]))
            p1 = (int(cx + d[0]), int(cy + d[1]))
            cv2.line(canvas, p0, p1, 255, max(2, int(size * rng.uniform(0.12, 0.3))), cv2.LINE_AA)
        else:
            n = int(rng.integers(4, 7))
            angs = np.sort(rng.uniform(0, 2 * np.pi, n))
            rr = size / 2 * rng.uniform(0.6, 1.0, n)
            pts = np.stack([cx + rr * np.cos(angs), cy + rr * np.sin(angs)], 1).round().astype(np.int32)
            cv2.fillPoly(canvas, [pts], 255, cv2.LINE_AA)
        th = rng.uniform(0, 2 * np.pi)
        ap = np.cos(th) * (xx - cx) + np.sin(th) * (yy - cy)
        bp = -np.sin(th) * (xx - cx) + np.cos(th) * (yy - cy)
        rad = np.hypot(xx - cx, yy - cy) / (size / 2)
        _blend(img, canvas.astype(np.float32) / 255.0, _body_texture(rng, ap, bp, rad))
        distractor |= canvas > 127
    return img, distractor


# --------------------------------------------------------------------------- image + mask


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y <= r * r + r).astype(np.uint8)


def _void_band(inst: np.ndarray, width: int) -> np.ndarray:
    """VOC-style void band along every object outline (also between touching instances).

    ``ceil(width/2)`` px inside each instance and ``floor(width/2)`` px outside the union of
    objects; the image border is not an outline (erosion pads with the maximum).
    """
    band = np.zeros(inst.shape, dtype=bool)
    if width <= 0:
        return band
    t_in, t_out = (width + 1) // 2, width // 2
    k_in = _disk(t_in)
    for v in np.unique(inst):
        if v == 0:
            continue
        region = (inst == v).astype(np.uint8)
        band |= (region > 0) & (cv2.erode(region, k_in) == 0)
    if t_out > 0:
        fg = (inst > 0).astype(np.uint8)
        band |= (fg == 0) & (cv2.dilate(fg, _disk(t_out)) > 0)
    return band


BODY_KINDS: tuple[str, ...] = ("plain", "tinted", "patterned")
_P_BODY = (0.5, 0.3, 0.2)  # per instance: how the body carries class evidence

# Part codes of demo_part_maps (255: void, as in the masks): three object parts, and the
# background split into the distractors (blobs with the shared body texture) and the rest
PART_BACKGROUND, PART_HEAD, PART_EVIDENCE_BODY, PART_PLAIN_BODY, PART_DISTRACTOR = 0, 1, 2, 3, 4
PART_NAMES: dict[int, str] = {PART_HEAD: "head", PART_EVIDENCE_BODY: "evidence body", PART_PLAIN_BODY: "plain body"}


@dataclass(frozen=True)
class _Evidence:
    """How much class evidence one instance shows, and how strong its part borders are."""

    head_strength: float  # 0..1: blend of the class head over the shared body texture
    body: str  # one of BODY_KINDS
    body_strength: float  # blend of the class colour / pattern into the body (0 when plain)
    seam: float  # 0..1 darkening of a 1-px seam on the head-body border (0: none)
    split: float  # 0..1 shade difference between the body's two parts (an inner part border)


def _draw_evidence(rng: np.random.Generator) -> _Evidence:
    body = BODY_KINDS[int(rng.choice(len(BODY_KINDS), p=_P_BODY))]
    body_strength = 0.0 if body == "plain" else float(rng.uniform(0.25, 0.6))
    seam = float(rng.uniform(0.2, 0.6)) if rng.random() < 0.4 else 0.0
    return _Evidence(
        head_strength=float(rng.uniform(0.5, 1.0)),
        body=body,
        body_strength=body_strength,
        seam=seam,
        split=float(rng.uniform(0.0, 0.35)),
    )


def _object_texture(rng: np.random.Generator, p: _Patch, ev: _Evidence) -> np.ndarray:
    """Texture of one object in its window: shared body, class head, per-instance evidence.

    Part borders inside the object: the head-body border (contrast set by ``head_strength``,
    optionally a dark seam) and a straight border splitting the body into two shades
    (``split``), neither of which is an object boundary in the mask.
    """
    spec = _SPECS[p.cls - 1]
    hu, hv = spec.head_centre
    head_tex = _head_texture(rng, spec, p.ap - hu * p.su, p.bp - hv * p.sv)
    body_tex = _body_texture(rng, p.ap, p.bp, p.rad)
    # an inner part border: one side of a line through the body is darker or lighter
    ang = rng.uniform(0, 2 * np.pi)
    off = rng.uniform(-0.35, 0.35) * max(p.su, p.sv)
    side = (np.cos(ang) * p.ap + np.sin(ang) * p.bp) > off
    body_tex *= np.where(side, 1.0 - ev.split, 1.0)[..., None]
    if ev.body == "tinted":
        lum = body_tex.mean(axis=2, keepdims=True)
        colour = _hsv(spec.hue + rng.uniform(-8, 8), rng.uniform(0.5, 0.85), 1.0)
        body_tex = (1 - ev.body_strength) * body_tex + ev.body_strength * (1.6 * lum * colour)
    elif ev.body == "patterned":
        body_tex = (1 - ev.body_strength) * body_tex + ev.body_strength * head_tex
    head_tex = ev.head_strength * head_tex + (1 - ev.head_strength) * body_tex
    tex = np.where(p.head[..., None], head_tex, body_tex)
    if ev.seam > 0:
        seam = p.head & (cv2.dilate(p.body.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
        tex[seam] *= 1.0 - ev.seam
    return tex


def _render_image(
    rng: np.random.Generator, plan: _ImagePlan, void_width: int
) -> tuple[np.ndarray, np.ndarray, list[dict], np.ndarray]:
    """One RGB uint8 image, its uint8 class mask (0 background, 1..5, 255 void), one record
    per object (class, visible pixels and extent, visible head pixels, evidence) and its uint8
    part map (``PART_*`` codes, 255 where the mask is void)."""
    h, w = plan.height, plan.width
    img, distractor = _background(rng, h, w)
    patches, centres = _layout(rng, plan)
    inst = np.zeros((h, w), dtype=np.int32)
    head_map = np.zeros((h, w), dtype=bool)
    part_map = np.where(distractor, PART_DISTRACTOR, PART_BACKGROUND).astype(np.uint8)
    cls_map = np.zeros((h, w), dtype=np.uint8)
    evidence: list[_Evidence] = []
    light = rng.uniform(0, 2 * np.pi)
    sh_dx, sh_dy = math.cos(light), math.sin(light)
    for i, (p, (cy, cx)) in enumerate(zip(patches, centres)):
        ev = _draw_evidence(rng)
        evidence.append(ev)
        win = _window(h, w, cy, cx, p.half)
        if win is None:
            continue
        iwin, pwin = win
        mask_f = p.mask.astype(np.float32)
        # soft drop shadow on what is already there
        off = 0.06 * 2 * max(p.su, p.sv)
        m_shift = cv2.warpAffine(
            mask_f, np.float32([[1, 0, off * sh_dx], [0, 1, off * sh_dy]]), mask_f.shape[::-1]
        )
        shadow = cv2.GaussianBlur(m_shift, (0, 0), max(1.0, off / 2)) * rng.uniform(0.2, 0.4)
        img[iwin] *= 1.0 - shadow[pwin][..., None]
        # texture: shared body + class head with this instance's evidence, antialiased edges
        tex = _object_texture(rng, p, ev)
        alpha = cv2.GaussianBlur(mask_f, (3, 3), 0.6)
        _blend(img[iwin], alpha[pwin], tex[pwin])
        m = p.mask[pwin]
        inst[iwin][m] = i + 1
        head_map[iwin][m] = p.head[pwin][m]
        body_part = PART_PLAIN_BODY if ev.body == "plain" else PART_EVIDENCE_BODY
        part_map[iwin][m] = np.where(p.head[pwin][m], PART_HEAD, body_part)
        cls_map[iwin][m] = p.cls

    # global lighting, slight camera blur, sensor noise
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(ang) * (xx - w / 2) + np.sin(ang) * (yy - h / 2)) / max(h, w)
    gain = rng.uniform(0.8, 1.15) * (1.0 + rng.uniform(0.1, 0.35) * ramp + 0.06 * _smooth_noise(rng, h, w, 30.0)[..., 0])
    img *= gain[..., None] * rng.uniform(0.93, 1.07, size=3).astype(np.float32)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 0.7))
    img += rng.uniform(0.008, 0.03) * rng.standard_normal(img.shape).astype(np.float32)
    rgb = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)

    label = cls_map.copy()
    void = _void_band(inst, void_width)
    label[void] = IGNORE_INDEX
    part_map[void] = IGNORE_INDEX
    records = []
    for i, (p, ev) in enumerate(zip(patches, evidence)):
        vis = inst == i + 1
        if not vis.any():
            continue
        ys, xs = np.nonzero(vis)
        records.append(
            {
                "class": int(p.cls),
                "pixels": int(vis.sum()),
                "extent": int(max(np.ptp(ys), np.ptp(xs)) + 1),
                "head_pixels": int((vis & head_map).sum()),
                "body": ev.body,
                "head_strength": round(ev.head_strength, 3),
                "body_strength": round(ev.body_strength, 3),
                "seam": round(ev.seam, 3),
                "split": round(ev.split, 3),
            }
        )
    return rgb, label, records, part_map


# --------------------------------------------------------------------------- writing

_OBJECT_COLUMNS = (
    "class", "pixels", "extent", "head_pixels", "body", "head_strength", "body_strength", "seam", "split"
)


def _looks_like_demo(root: Path) -> bool:
    try:
        return (root / "classes.txt").read_text().split() == list(DEMO_CLASSES) and (root / "ImageSets").is_dir()
    except OSError:
        return False


def generate_demo_dataset(cfg: DemoDataConfig, root: Path) -> None:
    """Write the demo dataset in the PASCAL VOC layout under ``root``, atomically.

    Layout: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` ('P' mode, VOC palette),
    ``ImageSets/Segmentation/{train,val}.txt``, ``classes.txt`` and ``cls_labels.tsv``.
    An existing ``root`` is replaced only if it is an earlier demo dataset (or empty);
    anything else raises ``FileExistsError`` so user data is never deleted.
    """
    root = Path(root)
    if root.exists() and not (root.is_dir() and (not any(root.iterdir()) or _looks_like_demo(root))):
        raise FileExistsError(f"{root} exists and is not a demo dataset; refusing to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = root.parent / f".{root.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        _write_dataset(cfg, tmp)
        if root.exists():
            old = root.parent / f".{root.name}.old-{tag}"
            os.rename(root, old)
            os.rename(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("demo dataset: %d train + %d val images written to %s", cfg.n_train, cfg.n_val, root)


def _demo_ids(cfg: DemoDataConfig) -> list[str]:
    return [f"{_ID_PREFIX}{i + 1:06d}" for i in range(cfg.n_train + cfg.n_val)]


def _render_all(cfg: DemoDataConfig) -> Iterator[tuple[str, np.ndarray, np.ndarray, list[dict], np.ndarray]]:
    """``(id, rgb, mask, object records, part map)`` of every image, in id order.

    Each image draws from its own stream of ``SeedSequence(cfg.seed)``, so an image is the same
    whether the dataset is written or only re-rendered (:func:`demo_part_maps`).
    """
    plans = _plan_images(cfg)
    streams = np.random.SeedSequence(cfg.seed).spawn(len(plans))
    for img_id, plan, ss in zip(_demo_ids(cfg), plans, streams):
        rng = np.random.Generator(np.random.PCG64(ss))
        yield (img_id, *_render_image(rng, plan, cfg.void_width))


def demo_part_maps(cfg: DemoDataConfig, root: Path | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Re-render the demo images of ``cfg`` and yield ``(id, part map)``, uint8 ``[H, W]``.

    A part map says which part of an object each pixel is: ``PART_HEAD`` (the class-specific
    part), ``PART_EVIDENCE_BODY`` (a tinted or patterned body, which carries class evidence),
    ``PART_PLAIN_BODY`` (a body with the texture shared by all classes and the background
    distractors); background pixels are ``PART_DISTRACTOR`` where a distractor blob is visible and
    ``PART_BACKGROUND`` (0) elsewhere; 255 where the mask is void. The dataset on disk
    does not hold them: they are rendered again (about 6 s for the demo's 208 images). With
    ``root`` (a dataset written from the same ``cfg``), every re-rendered mask is compared with
    ``root``'s and a ``ValueError`` names the first that differs, so a part map is never paired
    with the mask of other data.
    """
    for img_id, _rgb, label, _records, parts in _render_all(cfg):
        if root is not None:
            path = Path(root) / "SegmentationClass" / f"{img_id}.png"
            if not path.exists():
                raise ValueError(f"{path}: not found; {root} is not a demo dataset of {cfg}")
            if not np.array_equal(read_label_png(path), label):
                raise ValueError(f"{path}: differs from the mask the generator renders for {cfg}; "
                                 "give the seed and sizes the dataset was generated with")
        yield img_id, parts


def _write_dataset(cfg: DemoDataConfig, out: Path) -> None:
    (out / "JPEGImages").mkdir()
    (out / "SegmentationClass").mkdir()
    (out / "ImageSets" / "Segmentation").mkdir(parents=True)
    ids = _demo_ids(cfg)
    labels: list[str] = []
    objects = ["id\t" + "\t".join(_OBJECT_COLUMNS) + "\n"]
    for img_id, rgb, label, records, _parts in _render_all(cfg):
        objects += [f"{img_id}\t" + "\t".join(str(r[c]) for c in _OBJECT_COLUMNS) + "\n" for r in records]
        Image.fromarray(rgb, mode="RGB").save(
            out / "JPEGImages" / f"{img_id}.jpg",
            format="JPEG",
            quality=cfg.jpeg_quality,
            subsampling=2,  # 4:2:0, stated so the encoding never depends on defaults
            optimize=False,
            progressive=False,
        )
        save_label_png(label, out / "SegmentationClass" / f"{img_id}.png")
        present = [int(c) for c in np.unique(label) if c not in (0, IGNORE_INDEX)]
        labels.append(f"{img_id}\t{' '.join(str(c) for c in present)}\n")
    train, val = ids[: cfg.n_train], ids[cfg.n_train :]
    (out / "ImageSets" / "Segmentation" / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (out / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{i}\n" for i in val))
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in DEMO_CLASSES))
    (out / "cls_labels.tsv").write_text("".join(labels))
    (out / "objects.tsv").write_text("".join(objects))


# --------------------------------------------------------------------------- preview


def render_preview(root: Path, out_png: Path, n: int = 8, split: str = "train") -> None:
    """Write a grid of ``n`` samples of ``split``: image, coloured mask and overlay (rows)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    root, out_png = Path(root), Path(out_png)
    ids = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[:n]
    if not ids:
        raise ValueError(f"{root}: split {split!r} lists no images")
    classes_file = root / "classes.txt"
    names = classes_file.read_text().split() if classes_file.exists() else list(DEMO_CLASSES)
    fig = Figure(figsize=(1.9 * len(ids), 6.4), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, len(ids), squeeze=False)
    for j, img_id in enumerate(ids):
        with Image.open(root / "JPEGImages" / f"{img_id}.jpg") as im:
            rgb = np.asarray(im.convert("RGB"))
        label = read_label_png(root / "SegmentationClass" / f"{img_id}.png")
        col = colorize(label)
        fg = ((label != 0) & (label != IGNORE_INDEX))[..., None]
        overlay = np.where(fg, (0.45 * rgb + 0.55 * col), rgb).astype(np.uint8)
        present = [names[c] if c < len(names) else str(c) for c in np.unique(label) if c not in (0, IGNORE_INDEX)]
        for i, pic in enumerate((rgb, col, overlay)):
            ax = axes[i, j]
            ax.imshow(pic, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title(f"{img_id}\n{', '.join(present)}", fontsize=7)
    for i, row in enumerate(("image", "mask", "overlay")):
        axes[i, 0].set_ylabel(row, fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    log.info("preview of %d %s samples written to %s", len(ids), split, out_png)


# --------------------------------------------------------------------------- statistics

GRID_STRIDE = 4  # the stride of the boundary/affinity grid the paper's spatial settings live on


def demo_statistics(root: Path, split: str | None = None) -> dict:
    """Statistics of a written demo dataset (all ids, or those of ``split``).

    * ``foreground_fraction``: object pixels / labelled (non-void) pixels, over all masks;
    * ``objects_per_image``: mean and a histogram of objects (visible instances) per image;
    * ``classes_per_image``: mean number of distinct classes per image;
    * ``extent_px`` / ``extent_cells`` / ``extent_side``: percentiles (10, 50, 90) of an object's
      visible extent (longer bounding-box side) in pixels, in stride-4 grid cells and as a fraction
      of the image's shorter side;
    * ``part_fraction``: percentiles of visible class-part (head) pixels / visible object pixels;
      ``evidence_fraction``: the same with the body counted in when it carries class evidence
      (tinted or patterned); ``body_kinds``: share of instances per body kind;
    * ``cooccurrence``: images holding class i and class j (diagonal: images holding class i).
    """
    root = Path(root)
    ids = None
    if split is not None:
        ids = set((root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split())
    names = (root / "classes.txt").read_text().split()
    n_cls = len(names)
    fg = lab = 0
    sides: dict[str, int] = {}
    cooc = np.zeros((n_cls, n_cls), dtype=np.int64)
    n_images = 0
    classes_per_image = []
    for line in (root / "cls_labels.tsv").read_text().splitlines():
        img_id, _, tags = line.partition("\t")
        if ids is not None and img_id not in ids:
            continue
        label = read_label_png(root / "SegmentationClass" / f"{img_id}.png")
        valid = label != IGNORE_INDEX
        lab += int(valid.sum())
        fg += int((valid & (label != 0)).sum())
        sides[img_id] = min(label.shape)
        present = [int(t) for t in tags.split()]
        for a in present:
            for b in present:
                cooc[a, b] += 1
        classes_per_image.append(len(present))
        n_images += 1
    rows = [r.split("\t") for r in (root / "objects.tsv").read_text().splitlines()[1:]]
    cols = ("id",) + _OBJECT_COLUMNS
    rows = [dict(zip(cols, r)) for r in rows if r[0] in sides]
    per_image = np.bincount([list(sides).index(r["id"]) for r in rows], minlength=n_images)
    extent = np.array([int(r["extent"]) for r in rows], dtype=np.float64)
    side = np.array([sides[r["id"]] for r in rows], dtype=np.float64)
    pix = np.array([int(r["pixels"]) for r in rows], dtype=np.float64)
    head = np.array([int(r["head_pixels"]) for r in rows], dtype=np.float64)
    body_kind = np.array([r["body"] for r in rows])
    evid = np.where(body_kind == "plain", head, pix)

    def pct(x: np.ndarray) -> list[float]:
        return [round(float(v), 3) for v in np.percentile(x, [10, 50, 90])] if len(x) else []

    return {
        "images": n_images,
        "objects": len(rows),
        "foreground_fraction": round(fg / max(lab, 1), 4),
        "objects_per_image": round(float(per_image.mean()), 3) if n_images else 0.0,
        "objects_per_image_histogram": {str(k): int((per_image == k).sum()) for k in range(1, int(per_image.max(initial=0)) + 1)},
        "classes_per_image": round(float(np.mean(classes_per_image)), 3) if n_images else 0.0,
        "extent_px": pct(extent),
        "extent_cells": pct(extent / GRID_STRIDE),
        "extent_side": pct(extent / side),
        "part_fraction": pct(head / np.maximum(pix, 1)),
        "evidence_fraction": pct(evid / np.maximum(pix, 1)),
        "body_kinds": {k: round(float((body_kind == k).mean()), 3) for k in BODY_KINDS} if len(rows) else {},
        "classes": names,
        "cooccurrence": cooc[1:, 1:].tolist(),
    }


def format_statistics(stats: dict) -> str:
    """The statistics as a short plain-text report (what ``sance demo-data --stats`` prints)."""
    names = stats["classes"][1:]
    lines = [
        f"images {stats['images']}, objects {stats['objects']}",
        f"foreground fraction of labelled pixels: {100 * stats['foreground_fraction']:.1f} %",
        (
            f"objects per image: {stats['objects_per_image']:.2f} (histogram {stats['objects_per_image_histogram']}); "
            f"classes per image {stats['classes_per_image']:.2f}"
        ),
        (
            "object extent, percentiles 10/50/90: "
            f"{'/'.join(f'{v:g}' for v in stats['extent_px'])} px = "
            f"{'/'.join(f'{v:.1f}' for v in stats['extent_cells'])} stride-4 cells = "
            f"{'/'.join(f'{v:.2f}' for v in stats['extent_side'])} of the shorter image side"
        ),
        "discriminative-part (head) fraction of an object, p10/50/90: "
        + "/".join(f"{v:.2f}" for v in stats["part_fraction"]),
        "class-evidence fraction (head, plus a tinted/patterned body), p10/50/90: "
        + "/".join(f"{v:.2f}" for v in stats["evidence_fraction"]),
        "bodies: " + ", ".join(f"{k} {100 * v:.0f} %" for k, v in stats["body_kinds"].items()),
        "co-occurrence (images holding both classes; diagonal: images holding the class):",
        " " * 8 + "".join(f"{n:>8s}" for n in names),
    ]
    for n, row in zip(names, stats["cooccurrence"]):
        lines.append(f"{n:>8s}" + "".join(f"{v:8d}" for v in row))
    return "\n".join(lines)


def write_statistics(root: Path, out_json: Path) -> dict:
    """Write ``demo_statistics`` of every split to ``out_json`` (atomically); return them."""
    stats = {split: demo_statistics(root, split) for split in ("train", "val")}
    stats["all"] = demo_statistics(root)
    from sance_core.io.files import write_text_atomic

    write_text_atomic(Path(out_json), json.dumps(stats, indent=1))
    return stats
