"""Figures for the Snakemake report: what a person looks at to judge a run.

* :func:`run_qualitative` - a grid per split for a fixed set of ids: image, ground truth and,
  on the train split, CAM, seeds and per mode the contour map, segmentation map and pseudo
  label; on the val split the DeepLab prediction of every mode.
* :func:`run_iou_bars` - per-class IoU of the pseudo labels (train) and DeepLab (val), per mode.
* :func:`run_pr_curves` - the contour precision-recall curves with ODS points and iso-F lines.
* :func:`run_training_curves` - the loss terms of every training stage from their ``history.csv``.

Figures are drawn with matplotlib's object API on an Agg canvas (no global state, no display)
and written atomically. Inputs that hold several modes are named ``<kind>__<mode>``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sance_core.io.files import as_paths, atomic_path
from sance_core.data.dataset import DatasetSpec, Manifest
from sance_core.io.images import DataError, read_image
from sance_core.io.palette import colorize, read_label_png

log = logging.getLogger(__name__)

SEP = "__"  # input name = <kind>__<mode>
MODE_TITLES = {"irnet": "IRNet", "sance_naive": "SANCE-naive", "sance": "SANCE", "fully_supervised": "fully sup."}


# --------------------------------------------------------------------------- helpers


def by_mode(inputs: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """``{mode: value}`` of the inputs named ``<kind>__<mode>``, in input order."""
    prefix = kind + SEP
    return {name[len(prefix):]: value for name, value in inputs.items() if name.startswith(prefix)}


def pick_ids(manifest: Manifest, split: str, ids: Sequence[str], n: int) -> list[str]:
    """The configured ids (each must be in the split), or the first ``n`` of the split."""
    available = manifest.ids(split)
    if ids:
        unknown = [i for i in ids if i not in set(available)]
        if unknown:
            raise DataError(f"report ids {unknown} are not in split {split!r} "
                            f"(first ids of the split: {available[:5]})")
        return list(ids)
    return available[:n]


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    return Path(path)


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    import cv2

    h, w = size
    if array.shape[:2] == (h, w):
        return array
    return cv2.resize(array, (w, h), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An image with a [0, 1] heat map blended over it (jet colours), as CAM figures usually show."""
    from matplotlib import colormaps

    heat = np.clip(_resize(heat.astype(np.float32), image.shape[:2], nearest=False), 0.0, 1.0)
    colour = (colormaps["jet"](heat)[..., :3] * 255.0).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colour * alpha).astype(np.uint8)


def contour_picture(contour: np.ndarray, size: tuple[int, int], normalize: bool = True) -> np.ndarray:
    """A contour map as dark lines on white, at the image size; scaled by its maximum when ``normalize``
    (an untrained branch predicts small values everywhere; the caption gives the maximum)."""
    up = np.clip(_resize(contour.astype(np.float32), (size[0], size[1]), nearest=False), 0.0, 1.0)
    if normalize and up.max() > 0:
        up = up / up.max()
    grey = (255.0 * (1.0 - up)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _upsample_to(array: np.ndarray, size: tuple[int, int], stride: int) -> np.ndarray:
    """A stride-``stride`` map ``[..., h, w]`` -> ``[..., H, W]`` (bilinear x stride, then cropped)."""
    from sance_core.eval.edge_eval import upsample_contour

    if array.ndim == 2:
        return upsample_contour(array, size, stride)
    return np.stack([upsample_contour(a, size, stride) for a in array])


class _Shards:
    """Image id -> array lookups over the shards of one stage (opened once, closed at the end)."""

    def __init__(self, paths: Sequence[str], stage: str) -> None:
        from sance_core.io.store import open_shards

        self.index = open_shards(list(paths), expect_stage=stage) if paths else {}

    def read(self, image_id: str, name: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        reader = self.index.get(image_id)
        if reader is None or name not in reader.keys(image_id):
            return None
        return reader.read(image_id, name), reader.image_attrs(image_id)

    def close(self) -> None:
        for reader in set(self.index.values()):
            reader.close()


# --------------------------------------------------------------------------- qualitative grids


@dataclass(frozen=True)
class QualitativeConfig:
    """Which ids of which split, and the modes (columns) to show."""

    dataset: DatasetSpec
    split: str = "train"
    ids: tuple[str, ...] = ()  # empty: the first n_ids of the split
    n_ids: int = 4
    modes: tuple[str, ...] = ()
    cell_inches: float = 1.6
    dpi: int = 100

    def __post_init__(self) -> None:
        if self.n_ids < 1:
            raise ValueError(f"report n_ids must be >= 1, got {self.n_ids}")


Cell = tuple[str, np.ndarray | None, str]


def _cells_for(cfg: QualitativeConfig, image_id: str, stores: Mapping[str, Any]) -> list[Cell]:
    """(column title, RGB picture or None when that stage has nothing for the image, note) of one row."""
    image = read_image(cfg.dataset.image_path(image_id))
    size = image.shape[:2]
    mask_path = cfg.dataset.mask_path(image_id)
    gt = read_label_png(mask_path) if mask_path is not None and mask_path.is_file() else None
    cells: list[Cell] = [("image", image, ""), ("ground truth", None if gt is None else colorize(gt), "")]
    if "cam" in stores:
        found = stores["cam"].read(image_id, "cam")
        heat = None
        if found is not None:
            cams = found[0]
            heat = cams.max(axis=0) if cams.ndim == 3 and cams.shape[0] else np.zeros(size, np.float32)
        cells.append(("CAM", None if heat is None else heat_overlay(image, heat), ""))
    if "seeds" in stores:
        found = stores["seeds"].read(image_id, "seed")
        cells.append(("seeds", None if found is None else colorize(found[0]), ""))
    for mode in cfg.modes:
        title = MODE_TITLES.get(mode, mode)
        if mode in stores.get("maps", {}):
            found = stores["maps"][mode].read(image_id, "contour")
            pic, note = None, ""
            if found is not None:
                stride = int(found[1].get("stride", 4))
                full = _upsample_to(found[0], size, stride)
                pic, note = contour_picture(full, size), f"max {full.max():.2f}"
            cells.append((f"{title}\ncontour", pic, note))
            found = stores["maps"][mode].read(image_id, "seg")
            pic = None
            if found is not None:
                stride = int(found[1].get("stride", 4))
                pic = colorize(_upsample_to(found[0], size, stride).argmax(axis=0))
            cells.append((f"{title}\nseg map", pic, ""))
        if mode in stores.get("pseudo_labels", {}):
            found = stores["pseudo_labels"][mode].read(image_id, "label")
            cells.append((f"{title}\npseudo label", None if found is None else colorize(found[0]), ""))
        if mode in stores.get("predictions", {}):
            found = stores["predictions"][mode].read(image_id, "label")
            cells.append((f"{title}\nprediction", None if found is None else colorize(found[0]), ""))
    return cells


def qualitative_grid(cfg: QualitativeConfig, manifest: Manifest, inputs: Mapping[str, Any], path: str | Path) -> list[str]:
    """Draw the grid of ``cfg.split`` to ``path``; returns the ids shown."""
    ids = pick_ids(manifest, cfg.split, cfg.ids, cfg.n_ids)
    stores: dict[str, Any] = {}
    if as_paths(inputs.get("cam")):
        stores["cam"] = _Shards(as_paths(inputs["cam"]), "cam")
    if as_paths(inputs.get("seeds")):
        stores["seeds"] = _Shards(as_paths(inputs["seeds"]), "seeds")
    for kind, stage in (("maps", "maps"), ("pseudo_labels", "pseudo_labels"), ("predictions", None)):
        per_mode = {m: _Shards(as_paths(p), stage) for m, p in by_mode(inputs, kind).items() if as_paths(p)}
        if per_mode:
            stores[kind] = per_mode
    try:
        rows = [_cells_for(cfg, image_id, stores) for image_id in ids]
    finally:
        for store in stores.values():
            for s in (store.values() if isinstance(store, dict) else [store]):
                s.close()
    # one column per image, one row per stage: the report fits figures to its width, so a tall
    # grid of a few columns stays legible where a row of a dozen thumbnails would not
    n_rows = max(len(r) for r in rows) if rows else 1
    n_cols = max(1, len(rows))
    fig = _new_figure(cfg.cell_inches * n_cols + 1.2, cfg.cell_inches * n_rows + 0.6)
    for c, (image_id, cells) in enumerate(zip(ids, rows)):
        for r, (title, pic, note) in enumerate(cells):
            ax = fig.add_subplot(n_rows, n_cols, r * n_cols + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if pic is None:  # this stage has nothing for the image (e.g. IRNet has no seg map)
                ax.imshow(np.full(cells[0][1].shape, 242, np.uint8))
                ax.text(0.5, 0.5, "–", ha="center", va="center", fontsize=14, color="0.5", transform=ax.transAxes)
            else:
                ax.imshow(pic, interpolation="nearest")
            if note:
                ax.set_xlabel(note, fontsize=6, labelpad=1)
            if r == 0:
                ax.set_title(image_id, fontsize=8)
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.suptitle(f"{cfg.split} split", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    save_figure(fig, path, cfg.dpi)
    log.info("qualitative grid of %s (%d ids, %d stages) -> %s", cfg.split, len(ids), n_rows, path)
    return ids


def run_qualitative(cfg: QualitativeConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> list[str]:
    """Inputs ``manifest``, optional ``cam``/``seeds`` shards and ``maps__<mode>``, ``pseudo_labels__<mode>``,
    ``predictions__<mode>`` shards; output ``png``."""
    return qualitative_grid(cfg, Manifest.load(inputs["manifest"]), inputs, outputs["png"])


# --------------------------------------------------------------------------- per-class IoU


@dataclass(frozen=True)
class IoUBarsConfig:
    classes: tuple[str, ...]
    dpi: int = 100


def _read_json(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: evaluation file not found") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err


def _iou_vector(data: Mapping[str, Any], classes: Sequence[str], where: str) -> np.ndarray:
    iou = data.get("iou") or {}
    if not isinstance(iou, dict):
        raise DataError(f"{where}: 'iou' must map class names to values, got {type(iou).__name__}")
    unknown = sorted(set(iou) - set(classes))
    if unknown:
        raise DataError(f"{where}: classes {unknown} are not in data.classes {list(classes)}")
    return np.array([np.nan if iou.get(c) is None else 100.0 * float(iou[c]) for c in classes])


def iou_bars(cfg: IoUBarsConfig, panels: Sequence[tuple[str, dict[str, dict[str, Any]]]], path: str | Path) -> None:
    """One panel per (title, {series name: eval JSON}); grouped bars per class, mIoU in the legend."""
    classes = list(cfg.classes)
    panels = [(t, s) for t, s in panels if s]
    fig = _new_figure(max(6.0, 0.9 * len(classes) + 2.5) + 3.2, 3.0 * max(1, len(panels)))
    for k, (title, series) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, k + 1)
        width = 0.8 / max(1, len(series))
        x = np.arange(len(classes))
        for j, (name, data) in enumerate(series.items()):
            values = _iou_vector(data, classes, name)
            miou = data.get("miou")
            label = f"{name} (mIoU {100 * miou:.1f})" if isinstance(miou, (int, float)) else name
            ax.bar(x + (j - (len(series) - 1) / 2) * width, np.nan_to_num(values), width, label=label)
        ax.set_xticks(x)
        ax.set_xticklabels(classes, rotation=30 if len(classes) > 8 else 0, fontsize=8, ha="right" if len(classes) > 8 else "center")
        ax.set_ylim(0, 100)
        ax.set_ylabel("IoU (%)", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    if not panels:
        fig.text(0.5, 0.5, "no evaluations", ha="center")
    fig.tight_layout()
    save_figure(fig, path, cfg.dpi)


def run_iou_bars(cfg: IoUBarsConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
    """Inputs ``cam``, ``seeds`` (optional), ``pseudo_labels__<mode>``, ``segmentation__<mode>`` JSONs; output ``png``."""
    train: dict[str, dict[str, Any]] = {}
    for name, label in (("cam", "CAM"), ("seeds", "seeds (confident px)")):
        if inputs.get(name):
            train[label] = _read_json(inputs[name])
    for mode, path in by_mode(inputs, "pseudo_labels").items():
        train[f"{MODE_TITLES.get(mode, mode)} pseudo labels"] = _read_json(path)
    val = {MODE_TITLES.get(m, m): _read_json(p) for m, p in by_mode(inputs, "segmentation").items()}
    iou_bars(cfg, [("train split: CAMs, seeds and pseudo labels", train), ("val split: DeepLab predictions", val)],
             outputs["png"])


# --------------------------------------------------------------------------- PR curves


@dataclass(frozen=True)
class PRCurvesConfig:
    dpi: int = 100


def pr_curves(curves: Mapping[str, Mapping[str, Any]], path: str | Path, dpi: int = 100) -> None:
    """Precision against recall per mode, ODS marked; iso-F lines as in the BSDS plots."""
    fig = _new_figure(5.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    r = np.linspace(0.01, 1, 200)
    for f in np.arange(0.1, 1.0, 0.1):
        p = f * r / (2 * r - f)
        ok = (p > 0) & (p <= 1)
        ax.plot(r[ok], p[ok], color="0.85", lw=0.7, zorder=0)
    for mode, data in curves.items():
        pts = [(c["recall"], c["precision"]) for c in data.get("curve") or [] if c.get("recall") is not None]
        title = MODE_TITLES.get(mode, mode)
        if not pts:
            continue
        rec, prec = zip(*pts)
        ods = data.get("ods")
        label = f"{title} (ODS {ods:.3f}, OIS {data.get('ois') or 0:.3f})" if ods is not None else title
        line, = ax.plot(rec, prec, lw=1.5, label=label)
        if ods is not None and data.get("ods_recall") is not None:
            ax.plot([data["ods_recall"]], [data["ods_precision"]], "o", color=line.get_color(), ms=5)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("contour precision-recall (iso-F lines in grey)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path, dpi)


def run_pr_curves(cfg: PRCurvesConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
    """Inputs ``contour__<mode>`` (contour.json of each mode); output ``png``."""
    curves = {mode: _read_json(p) for mode, p in by_mode(inputs, "contour").items()}
    pr_curves(curves, outputs["png"], cfg.dpi)


# --------------------------------------------------------------------------- training curves


@dataclass(frozen=True)
class TrainingCurvesConfig:
    x: str = "step"
    dpi: int = 100


def read_history(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``history.csv`` (numbers; empty cells dropped)."""
    rows = []
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            clean = {}
            for k, v in row.items():
                try:
                    clean[k] = float(v)
                except (TypeError, ValueError):
                    continue
            rows.append(clean)
    return rows


def loss_columns(rows: Sequence[Mapping[str, float]]) -> list[str]:
    """The loss terms of a history (every column naming a loss), the total first."""
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if "loss" in k.lower() and k not in cols]
    return sorted(cols, key=lambda c: (c.lower() not in ("loss", "total_loss", "loss_total"), c))


def training_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path, x: str = "step",
                    dpi: int = 100) -> None:
    """One panel per trained model: its loss terms against ``x`` (log scale when they span decades)."""
    n = max(1, len(histories))
    cols = min(n, 3)
    fig = _new_figure(4.2 * cols, 3.0 * math.ceil(n / cols))
    for k, (name, rows) in enumerate(histories.items()):
        ax = fig.add_subplot(math.ceil(n / cols), cols, k + 1)
        for col in loss_columns(rows):
            pts = [(r.get(x, i), r[col]) for i, r in enumerate(rows) if col in r and math.isfinite(r[col])]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, lw=1, label=col)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(x, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "no loss columns", ha="center", transform=ax.transAxes, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi)


def history_title(name: str) -> str:
    """``sance_model_sance`` -> ``SANCE model: SANCE``; ``segmenter_irnet`` -> ``DeepLab: IRNet``."""
    for prefix, title in (("sance_model_", "SANCE model"), ("segmenter_", "DeepLab")):
        if name.startswith(prefix):
            mode = name[len(prefix):]
            return f"{title}: {MODE_TITLES.get(mode, mode)}"
    return name.replace("_", " ")


def run_training_curves(cfg: TrainingCurvesConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
    """Inputs ``history__<model>`` (any number of ``history.csv``); output ``png``."""
    histories = {history_title(name): read_history(p) for name, p in by_mode(inputs, "history").items()}
    training_curves(histories, outputs["png"], cfg.x, cfg.dpi)
