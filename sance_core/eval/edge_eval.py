"""Contour quality as in the BSDS / SBD boundary benchmarks: ODS, OIS, AP and the PR curve.

Per image and threshold the predicted strength map is binarised (``>= t``), optionally thinned
(MATLAB ``bwmorph thin``), and matched one-to-one against the ground-truth boundary pixels
within ``max_dist * diagonal`` pixels by pyEdgeEval's ``correspond_pixels`` (the benchmark's
own min-cost assignment, compiled). The counts ``(cntR, sumR, cntP, sumP)`` per threshold are
all an image contributes; the dataset numbers follow MATLAB's ``collect_eval_bdry``:

* ODS: recall/precision of the summed counts per threshold, best F over the curve with the
  benchmark's linear interpolation between neighbouring thresholds;
* OIS: each image at its own best threshold (no interpolation), counts summed, then F;
* ``ap``: SBD's 101-point interpolated average precision; ``area_pr``: BSDS's area under the
  interpolated PR curve (pyEdgeEval's ``AUC``).

Ground truth for our class-agnostic contours is built from label masks (:func:`mask_boundaries`)
or read from SBD's ``GTcls.Boundaries`` (union over classes). Protocols: SBD ``max_dist=0.02``
(optionally ``kill_internal``), BSDS ``max_dist=0.0075``.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sance_core.constants import IGNORE_INDEX, MAP_STRIDE
from sance_core.data.dataset import DatasetSpec, Manifest

log = logging.getLogger(__name__)

# benchmark settings; the SBD benchmark also removes predictions inside the object ("kill internal")
PROTOCOLS: dict[str, dict[str, Any]] = {
    "sbd": {"max_dist": 0.02, "kill_internal": True, "thinning": True},
    "bsds": {"max_dist": 0.0075, "kill_internal": False, "thinning": True},
}


def protocol(name: str) -> dict[str, Any]:
    """The settings of a named benchmark protocol ('sbd' or 'bsds')."""
    try:
        return dict(PROTOCOLS[name])
    except KeyError:
        raise ValueError(f"unknown contour protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None


def threshold_values(thresholds: int | Sequence[float]) -> np.ndarray:
    """``n`` -> the benchmark's ``linspace(1/(n+1), 1-1/(n+1), n)`` (99 -> 0.01..0.99); a list is used as is."""
    if isinstance(thresholds, (int, np.integer)) and not isinstance(thresholds, bool):
        n = int(thresholds)
        if n < 1:
            raise ValueError(f"number of thresholds must be >= 1, got {n}")
        return np.linspace(1.0 / (n + 1), 1.0 - 1.0 / (n + 1), n)
    values = np.asarray(list(thresholds), dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or np.any(np.diff(values) <= 0):
        raise ValueError(f"thresholds must be a non-empty increasing list, got {list(values)}")
    return values


# --------------------------------------------------------------------------- ground truth


def fill_ignored(label: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray | None:
    """Give every ignored pixel the label of its nearest labelled pixel (None if nothing is labelled).

    VOC draws its void band centred on object outlines, so the filled map's boundary runs
    through the middle of the band, where the true outline is.
    """
    from scipy import ndimage

    label = np.asarray(label)
    void = label == ignore_index
    if not void.any():
        return label
    if void.all():
        return None
    idx = ndimage.distance_transform_edt(void, return_distances=False, return_indices=True)
    return label[idx[0], idx[1]]


def seg_to_boundary(seg: np.ndarray) -> np.ndarray:
    """BSDS ``seg2bdry(seg, 'imageSize')``: a one-pixel boundary on the upper-left side of each label change."""
    seg = np.asarray(seg)
    h, w = seg.shape
    out = np.zeros((h, w), dtype=bool)
    if h < 2 or w < 2:
        return out
    ev = seg[:-1, :] != seg[1:, :]  # vertical change below pixel (i, j): [h-1, w]
    eh = seg[:, :-1] != seg[:, 1:]  # horizontal change right of (i, j): [h, w-1]
    out[:-1, :-1] = eh[:-1, :] | eh[1:, :] | ev[:, :-1] | ev[:, 1:]
    return out


def mask_boundaries(label: np.ndarray, ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray]:
    """Class-agnostic GT boundary of a label mask and its ignore region.

    Returns ``(boundary [H,W] bool, ignored [H,W] bool)``: boundaries between different labels
    after filling ignored pixels by their nearest label; ``ignored`` marks the void pixels, in
    which predictions count only when they match a boundary (see :func:`evaluate_image`).
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label mask must be 2-D, got shape {label.shape}")
    ignored = label == ignore_index
    filled = fill_ignored(label, ignore_index)
    if filled is None:
        return np.zeros(label.shape, dtype=bool), ignored
    return seg_to_boundary(filled), ignored


# --------------------------------------------------------------------------- matching


@dataclass
class BoundaryCounts:
    """Per-threshold counts of one image: matched GT pixels / all GT pixels, matched / all predictions."""

    count_r: np.ndarray
    sum_r: np.ndarray
    count_p: np.ndarray
    sum_p: np.ndarray
    name: str = ""

    def as_rows(self, thresholds: np.ndarray) -> list[tuple[float, int, int, int, int]]:
        """MATLAB ``_ev1.txt`` rows: threshold cntR sumR cntP sumP."""
        return [(float(t), int(a), int(b), int(c), int(d))
                for t, a, b, c, d in zip(thresholds, self.count_r, self.sum_r, self.count_p, self.sum_p)]


def thin(mask: np.ndarray) -> np.ndarray:
    """Morphological thinning to one-pixel-wide curves (MATLAB ``bwmorph(.., 'thin', inf)``)."""
    from pyEdgeEval.preprocess import binary_thin

    return np.asarray(binary_thin(np.asarray(mask, dtype=bool)), dtype=bool)


def match(pred: np.ndarray, gt: np.ndarray, max_dist: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of two binary maps within ``max_dist * diagonal``: (matched pred, matched gt)."""
    from pyEdgeEval._lib import correspond_pixels

    m1, m2, _, _ = correspond_pixels(pred.astype(np.float64), gt.astype(np.float64), max_dist=float(max_dist))
    return m1 > 0, m2 > 0


def evaluate_image(
    pred: np.ndarray,
    gts: np.ndarray | Sequence[np.ndarray],
    thresholds: np.ndarray,
    max_dist: float,
    thinning: bool = True,
    kill_region: np.ndarray | None = None,
    name: str = "",
) -> BoundaryCounts:
    """Counts of one predicted strength map ``[H,W]`` in [0,1] against one or several GT boundaries.

    With several GTs (BSDS's human annotations) recall sums over them and a prediction is
    correct when any GT matches it. ``kill_region`` (bool ``[H,W]``) removes predicted pixels in
    the region farther than ``max_dist * diagonal`` from every GT boundary before matching: SBD's
    "kill internal" (region = the object) and our void band handling (region = ignored pixels).
    A GT without any boundary pixel counts every prediction as a false positive.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt_list = [np.asarray(gts, dtype=bool)] if np.ndim(gts) == 2 else [np.asarray(g, dtype=bool) for g in gts]
    if not gt_list:
        raise ValueError(f"{name or 'image'}: no ground-truth boundary map given")
    for g in gt_list:
        if g.shape != pred.shape:
            raise ValueError(f"{name or 'image'}: prediction {pred.shape} and GT boundary {g.shape} differ in size")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    n = thresholds.shape[0]
    count_r, sum_r, count_p, sum_p = (np.zeros(n) for _ in range(4))

    keep = None
    if kill_region is not None:
        from scipy import ndimage

        if kill_region.shape != pred.shape:
            raise ValueError(f"{name or 'image'}: kill region {kill_region.shape} and prediction {pred.shape} differ")
        any_gt = np.logical_or.reduce(gt_list)
        if any_gt.any():
            buffer = max_dist * float(np.hypot(*pred.shape))
            far = ndimage.distance_transform_edt(~any_gt) > buffer
            keep = ~(far & kill_region)
        else:
            keep = ~kill_region

    # thresholds that select the same pixels give the same counts: match once per distinct set
    values = np.sort(pred.ravel())
    n_selected = values.size - np.searchsorted(values, thresholds, side="left")
    previous: tuple[int, tuple[float, float, float, float]] | None = None
    seen: dict[bytes, tuple[float, float, float, float]] = {}
    for i, t in enumerate(thresholds):
        if previous is not None and previous[0] == n_selected[i]:
            count_r[i], sum_r[i], count_p[i], sum_p[i] = previous[1]
            continue
        binary = pred >= t
        if thinning:
            binary = thin(binary)
        if keep is not None:
            binary &= keep
        key = np.packbits(binary).tobytes()
        if key in seen:  # thinning often maps neighbouring thresholds to the same curves
            row = seen[key]
            count_r[i], sum_r[i], count_p[i], sum_p[i] = row
            previous = (int(n_selected[i]), row)
            continue
        acc_p = np.zeros(binary.shape, dtype=bool)
        cr = sr = 0.0
        for g in gt_list:
            if not g.any():
                continue
            m_pred, m_gt = match(binary, g, max_dist)
            acc_p |= m_pred
            cr += float(m_gt.sum())
            sr += float(g.sum())
        row = (cr, sr, float(acc_p.sum()), float(binary.sum()))
        seen[key] = row
        count_r[i], sum_r[i], count_p[i], sum_p[i] = row
        previous = (int(n_selected[i]), row)
    return BoundaryCounts(count_r, sum_r, count_p, sum_p, name)


def _evaluate_job(job: tuple[Any, ...]) -> BoundaryCounts:
    pred, gts, thresholds, max_dist, thinning, kill_region, name = job
    return evaluate_image(pred, gts, thresholds, max_dist, thinning, kill_region, name)


def evaluate_many(jobs: Iterable[tuple[Any, ...]], processes: int = 1, total: int | None = None) -> list[BoundaryCounts]:
    """Run :func:`evaluate_image` over ``(pred, gts, thresholds, max_dist, thinning, kill_region, name)`` jobs.

    The matching is CPU-bound compiled code that holds the GIL, so ``processes > 1`` uses worker
    processes (results come back in job order).
    """
    from tqdm import tqdm

    if processes <= 1:
        return [_evaluate_job(j) for j in tqdm(jobs, total=total, desc="contour matching", unit="img", mininterval=5)]
    # fork: 'spawn' would re-run the caller's __main__ (a Snakemake script: fails outside Snakemake).
    # The children only run numpy/scipy and the compiled matcher, never torch or OpenMP code.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    # at most 2 jobs per worker in flight: memory stays flat however many images the split has
    # (Executor.map would read every map up front)
    results: dict[int, BoundaryCounts] = {}
    bar = tqdm(total=total, desc="contour matching", unit="img", mininterval=5)
    with ProcessPoolExecutor(max_workers=processes, mp_context=ctx) as pool:
        pending: dict[Any, int] = {}

        def collect(futures: Iterable[Any]) -> None:
            for future in futures:
                results[pending.pop(future)] = future.result()
                bar.update(1)

        for index, job in enumerate(jobs):
            pending[pool.submit(_evaluate_job, job)] = index
            if len(pending) >= 2 * processes:
                collect(wait(pending, return_when=FIRST_COMPLETED).done)
        collect(list(pending))
    bar.close()
    return [results[i] for i in range(len(results))]


# --------------------------------------------------------------------------- dataset scores


def _rpf(count_r: np.ndarray, sum_r: np.ndarray, count_p: np.ndarray, sum_p: np.ndarray) -> tuple[np.ndarray, ...]:
    rec = count_r / (sum_r + (sum_r == 0))
    prec = count_p / (sum_p + (sum_p == 0))
    return rec, prec, f_measure(prec, rec)


def f_measure(prec: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """Harmonic mean, 0 where precision and recall are both 0."""
    prec, rec = np.asarray(prec, dtype=np.float64), np.asarray(rec, dtype=np.float64)
    return 2.0 * prec * rec / (prec + rec + ((prec + rec) == 0))


def interpolated_best(thresholds: np.ndarray, rec: np.ndarray, prec: np.ndarray) -> tuple[float, float, float, float]:
    """MATLAB ``interp_max``: best F along the curve, 101 linear steps between neighbouring thresholds.

    Returns ``(threshold, recall, precision, F)``; the first maximum wins, as in the benchmark.
    """
    t, r, p = (np.asarray(a, dtype=np.float64) for a in (thresholds, rec, prec))
    if t.size == 1:
        return float(t[0]), float(r[0]), float(p[0]), float(f_measure(p[0], r[0]))
    d = np.linspace(0.0, 1.0, 101)[None, :]
    ti = t[1:, None] * d + t[:-1, None] * (1 - d)
    ri = r[1:, None] * d + r[:-1, None] * (1 - d)
    pi = p[1:, None] * d + p[:-1, None] * (1 - d)
    fi = f_measure(pi, ri)
    # candidates in the benchmark's order: the first point, then each segment's 101 steps
    all_t = np.concatenate([t[:1], ti.ravel()])
    all_r = np.concatenate([r[:1], ri.ravel()])
    all_p = np.concatenate([p[:1], pi.ravel()])
    all_f = np.concatenate([[f_measure(p[0], r[0])], fi.ravel()])
    k = int(np.argmax(all_f))
    return float(all_t[k]), float(all_r[k]), float(all_p[k]), float(all_f[k])


def average_precision(rec: np.ndarray, prec: np.ndarray) -> float:
    """SBD's AP: mean over recall levels 0, 0.01, ..., 0.99 of the best precision at recall >= level, / 101."""
    rec, prec = np.asarray(rec), np.asarray(prec)
    levels = np.arange(0.0, 1.0, 0.01)
    best = [np.max(prec[rec >= lv], initial=0.0) for lv in levels]
    return float(np.sum(best) / 101.0)


def area_under_pr(rec: np.ndarray, prec: np.ndarray) -> float:
    """BSDS's ``Area_PR``: precision interpolated at recall 0, 0.01, ..., 0.99 (0 outside the curve), x 0.01."""
    rec_u, idx = np.unique(np.asarray(rec), return_index=True)
    if rec_u.shape[0] <= 1:
        return 0.0
    prec_u = np.asarray(prec)[idx]
    interp = np.interp(np.arange(0.0, 1.0, 0.01), rec_u, prec_u, left=0.0, right=0.0)
    return float(interp.sum() * 0.01)


@dataclass
class ContourScores:
    """Dataset-level contour quality (fractions in [0, 1]) and the PR curve."""

    ods: float
    ods_threshold: float
    ods_recall: float
    ods_precision: float
    ois: float
    ois_recall: float
    ois_precision: float
    ap: float
    area_pr: float
    n_images: int
    curve: list[dict[str, float]] = field(default_factory=list)
    per_image: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ods": self.ods, "ods_threshold": self.ods_threshold, "ods_recall": self.ods_recall,
            "ods_precision": self.ods_precision, "ois": self.ois, "ois_recall": self.ois_recall,
            "ois_precision": self.ois_precision, "ap": self.ap, "area_pr": self.area_pr,
            "n_images": self.n_images, "curve": self.curve, "per_image": self.per_image,
        }


def stack_counts(counts: Sequence[BoundaryCounts]) -> np.ndarray:
    """Per-image counts as one array ``[N, 4, T]`` (cntR, sumR, cntP, sumP), the layout of
    :func:`ods_from_counts` and :func:`summarize`."""
    return np.stack([[c.count_r, c.sum_r, c.count_p, c.sum_p] for c in counts])


def ods_from_counts(stack: np.ndarray, thresholds: np.ndarray) -> float:
    """ODS of per-image counts ``[N, 4, T]`` (cntR, sumR, cntP, sumP): summed over the images, the
    benchmark's interpolated best F over the thresholds (what :func:`summarize` reports as ``ods``)."""
    rec, prec, _ = _rpf(*np.asarray(stack, dtype=np.float64).sum(axis=0))
    return interpolated_best(np.asarray(thresholds, dtype=np.float64), rec, prec)[3]


def summarize(counts: Sequence[BoundaryCounts], thresholds: np.ndarray) -> ContourScores:
    """ODS / OIS / AP / area under PR and the PR curve from the per-image counts."""
    if not counts:
        raise ValueError("no images to summarise")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    stack = stack_counts(counts)  # [N, 4, T]
    if stack.shape[2] != thresholds.shape[0]:
        raise ValueError(f"counts have {stack.shape[2]} thresholds, expected {thresholds.shape[0]}")
    rec, prec, f1 = _rpf(*stack.sum(axis=0))
    ods_t, ods_r, ods_p, ods_f = interpolated_best(thresholds, rec, prec)

    per_image, best_counts = [], np.zeros(4)
    for c, s in zip(counts, stack):
        r_i, p_i, f_i = _rpf(*s)
        k = int(np.argmax(f_i))
        best_counts += s[:, k]
        per_image.append({"id": c.name, "threshold": float(thresholds[k]), "recall": float(r_i[k]),
                          "precision": float(p_i[k]), "f": float(f_i[k])})
    ois_r, ois_p, ois_f = (float(v) for v in _rpf(*best_counts))
    curve = [{"threshold": float(t), "recall": float(r), "precision": float(p), "f": float(f)}
             for t, r, p, f in zip(thresholds, rec, prec, f1)]
    return ContourScores(
        ods=ods_f, ods_threshold=ods_t, ods_recall=ods_r, ods_precision=ods_p,
        ois=ois_f, ois_recall=ois_r, ois_precision=ois_p,
        ap=average_precision(rec, prec), area_pr=area_under_pr(rec, prec),
        n_images=len(counts), curve=curve, per_image=per_image,
    )


# --------------------------------------------------------------------------- pipeline stage

GT_SOURCES = ("masks", "sbd")


@dataclass(frozen=True)
class ContourEvalConfig:
    """Settings of ``evaluate_contours``; the SBD protocol by default (the paper's Table 2)."""

    dataset: DatasetSpec
    split: str = "train"
    mode: str = ""
    thresholds: int = 99  # the benchmark's 99; fewer for quick runs
    max_dist: float = 0.02  # SBD 0.02, BSDS 0.0075 (fraction of the image diagonal)
    thinning: bool = True
    kill_internal: bool = False  # SBD's option; off because intra-object edges are what SANCE removes
    gt_source: str = "masks"  # 'masks': boundaries of the split's label masks; 'sbd': GTcls.Boundaries
    sbd_dir: str | None = None  # folder holding cls/<id>.mat (gt_source 'sbd')
    id_list: str | None = None  # the evaluated ids instead of the split's (SBD's val.txt for the paper's numbers)
    max_images: int = 0  # 0 = every image with ground truth; else the first N in manifest order

    def __post_init__(self) -> None:
        if self.thresholds < 1:
            raise ValueError(f"contour thresholds must be >= 1, got {self.thresholds}")
        if not 0.0 < self.max_dist < 1.0:
            raise ValueError(f"contour max_dist is a fraction of the image diagonal in (0, 1), got {self.max_dist}")
        if self.gt_source not in GT_SOURCES:
            raise ValueError(f"contour gt_source must be one of {GT_SOURCES}, got {self.gt_source!r}")
        if self.gt_source == "sbd" and not self.sbd_dir:
            raise ValueError("contour gt_source is 'sbd' but sbd_dir (the folder with cls/<id>.mat) is not set")
        if self.max_images < 0:
            raise ValueError(f"contour max_images must be >= 0, got {self.max_images}")


def upsample_contour(contour: np.ndarray, size: Sequence[int], stride: int = MAP_STRIDE) -> np.ndarray:
    """Stride-``stride`` map ``[h, w]`` -> ``[H, W]``: bilinear x stride (half-pixel centres, as IRNet), cropped."""
    import cv2

    contour = np.asarray(contour, dtype=np.float32)
    while contour.ndim > 2 and contour.shape[0] == 1:
        contour = contour[0]
    if contour.ndim != 2:
        raise ValueError(f"contour map must be [h, w], got shape {contour.shape}")
    height, width = int(size[0]), int(size[1])
    h, w = contour.shape
    if h * stride < height or w * stride < width:
        raise ValueError(f"contour map {contour.shape} at stride {stride} cannot cover an image of {height}x{width}")
    up = cv2.resize(contour, (w * stride, h * stride), interpolation=cv2.INTER_LINEAR) if stride > 1 else contour
    return np.clip(up[:height, :width], 0.0, 1.0)


def _gt_for(cfg: ContourEvalConfig, image_id: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(boundary, kill region) of one image, or None when it has no ground truth."""
    if cfg.gt_source == "sbd":
        from sance_core.data.readers import read_sbd_cls

        path = Path(str(cfg.sbd_dir)) / "cls" / f"{image_id}.mat"
        if not path.is_file():
            return None
        ann = read_sbd_cls(path)
        boundary = ann.boundary_map()
        region = ann.segmentation > 0 if cfg.kill_internal else np.zeros(boundary.shape, dtype=bool)
        return boundary, region
    from sance_core.io.palette import read_label_png

    mask_path = cfg.dataset.mask_path(image_id)
    if mask_path is None or not mask_path.is_file():
        return None
    label = read_label_png(mask_path)
    boundary, ignored = mask_boundaries(label)
    region = ignored | ((label != 0) & (label != IGNORE_INDEX)) if cfg.kill_internal else ignored
    return boundary, region


def job_processes() -> int:
    """The job's threads (the Snakemake adapter exports them as OMP_NUM_THREADS)."""
    import os

    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


@dataclass
class ContourCounts:
    """Per-image boundary counts of one mode's contour maps, before they are summarised."""

    ids: list[str]  # the images scored, in order (those with ground truth, at most max_images)
    thresholds: np.ndarray  # [T]
    counts: list[BoundaryCounts]  # one per id
    peaks: dict[str, float]  # largest contour value per id
    settings: dict[str, Any]
    id_list: dict[str, Any] | None = None  # {"id_list": path, "listed": n} when cfg.id_list replaced the split


def contour_counts(cfg: ContourEvalConfig, manifest: Manifest, map_paths: Sequence[str],
                   processes: int = 1, expect_stage: str = "maps") -> ContourCounts:
    """Match a mode's contour maps against the ground-truth boundaries, image by image.

    ``cfg.id_list`` (a file of ids, e.g. SBD's ``val.txt``) replaces the split's ids: the paper's
    protocol scores SBD val images, which are not in VOC's train_aug (``infer_contours`` infers
    their raw maps). ``expect_stage``: ``contours`` (the workflow: raw single-scale maps) or
    ``maps`` (the pseudo-label stage's test-time-augmented maps). A missing map or a bad
    ground-truth file fails before the matching starts.
    """
    from sance_core.io.images import DataError, read_id_list
    from sance_core.io.store import open_shards

    ids = manifest.ids(cfg.split)
    restricted = None
    if cfg.gt_source == "sbd" and not (Path(str(cfg.sbd_dir)) / "cls").is_dir():
        raise DataError(f"evaluation.contour.sbd_dir {cfg.sbd_dir!r} has no cls/ folder of SBD .mat files")
    id_list = cfg.id_list
    if id_list:
        ids = list(dict.fromkeys(read_id_list(id_list)))
        restricted = {"id_list": str(id_list), "listed": len(ids)}
    index = open_shards(list(map_paths), expect_stage=expect_stage)
    missing = [i for i in ids if i not in index]
    if missing:
        where = f"id list {id_list}" if id_list else f"split {cfg.split!r}"
        raise DataError(f"{expect_stage} files {list(map_paths)} lack {len(missing)} id(s) of {where}: {missing[:5]}")
    thresholds = threshold_values(cfg.thresholds)
    settings = {"thresholds": cfg.thresholds, "max_dist": cfg.max_dist, "thinning": cfg.thinning,
                "kill_internal": cfg.kill_internal, "gt_source": cfg.gt_source}

    def jobs() -> Iterable[tuple[Any, ...]]:
        for image_id in selected:
            boundary, region = gt[image_id]
            reader = index[image_id]
            attrs = reader.image_attrs(image_id)
            contour = upsample_contour(reader.read(image_id, "contour"), boundary.shape, int(attrs.get("stride", 4)))
            peaks[image_id] = float(contour.max(initial=0.0))
            yield contour, boundary, thresholds, cfg.max_dist, cfg.thinning, region, image_id

    gt: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    selected: list[str] = []
    peaks: dict[str, float] = {}
    counts: list[BoundaryCounts] = []
    try:
        for image_id in ids:  # ground truth first: a bad file fails before the matching starts
            item = _gt_for(cfg, image_id)
            if item is None:
                continue
            gt[image_id] = item
            selected.append(image_id)
            if cfg.max_images and len(selected) >= cfg.max_images:
                break
        if selected:
            counts = evaluate_many(jobs(), processes=min(processes, len(selected)), total=len(selected))
    finally:
        for reader in set(index.values()):
            reader.close()
    return ContourCounts(selected, thresholds, counts, peaks, settings, restricted)


def evaluate_contour_maps(cfg: ContourEvalConfig, manifest: Manifest, map_paths: Sequence[str],
                          processes: int = 1, expect_stage: str = "maps") -> dict[str, Any]:
    """ODS/OIS/AP of a mode's contour maps over ``cfg.split``; the JSON result (with curve and per image).

    The images and maps are those of :func:`contour_counts`.
    """
    matched = contour_counts(cfg, manifest, map_paths, processes, expect_stage)
    thresholds, counts, peaks = matched.thresholds, matched.counts, matched.peaks
    result: dict[str, Any] = {"split": cfg.split, "mode": cfg.mode, "settings": matched.settings}
    if matched.id_list:
        result["id_list"] = matched.id_list
    if not matched.ids:
        note = f"no ground-truth boundaries for split {cfg.split!r}: nothing evaluated"
        log.warning("contour evaluation: %s", note)
        result.update({"ods": None, "ois": None, "ap": None, "area_pr": None, "ods_threshold": None,
                       "n_images": 0, "curve": [], "per_image": [], "note": note})
        return result
    scores = summarize(counts, thresholds)
    for row in scores.per_image:
        row["map_max"] = peaks.get(row["id"])
    result.update(scores.as_dict())
    top = max(peaks.values(), default=0.0)
    if top < thresholds[0]:
        log.warning("contour maps never reach the lowest threshold %.3f (largest value %.4f): every "
                    "threshold selects nothing, so ODS/OIS are 0 (an untrained or collapsed contour branch?)",
                    thresholds[0], top)
    log.info("contours (%s, %d images): ODS %.4f at %.3f, OIS %.4f, AP %.4f", cfg.mode or "-", scores.n_images,
             scores.ods, scores.ods_threshold, scores.ois, scores.ap)
    return result


