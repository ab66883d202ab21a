"""Run summaries: one table per mode, and the ablation table across modes (the paper's Table 1).

Both are assembled from the evaluation JSONs the stages write (nothing is recomputed):
``eval/classifier.json``, ``eval/cam.json`` and ``eval/seeds.json`` (shared by all modes), and per mode
``<mode>/eval/{pseudo_labels,segmentation,contour}.json``. A metric whose JSON is absent
(``fully_supervised`` has no pseudo labels and no contours) or ``null`` stays empty.
All metrics are fractions in [0, 1]; the Markdown copy of the ablation shows percentages.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sance_core.io.files import write_text_atomic

log = logging.getLogger(__name__)

# metric column -> (input name, key in that JSON); the summary/ablation column order
METRICS: dict[str, tuple[str, str]] = {
    "classifier_map": ("classifier", "map"),
    "cam_miou": ("cam", "miou"),
    "seed_precision": ("seeds", "precision"),
    "seed_coverage": ("seeds", "coverage"),
    "pseudo_label_miou": ("pseudo_labels", "miou"),
    "segmentation_miou": ("segmentation", "miou"),
    "contour_ods": ("contour", "ods"),
    "contour_ois": ("contour", "ois"),
    "contour_ap": ("contour", "ap"),
}
EVAL_INPUTS = ("classifier", "cam", "seeds", "pseudo_labels", "segmentation", "contour")
# the paper's Table 1: pseudo-label mIoU (train), DeepLab mIoU (val); + contour ODS (Table 2)
ABLATION_COLUMNS = ("mode", "output_stride", "pseudo_label_map", "tta", "pseudo_label_miou", "segmentation_miou",
                    "contour_ods", "contour_ois",
                    "classifier_map", "cam_miou", "seed_precision", "seed_coverage", "tau_b", "n_train", "n_val")
MODE_TITLES = {
    "irnet": "baseline (IRNet)",
    "sance_naive": "SANCE-naive",
    "sance": "SANCE",
    "fully_supervised": "fully supervised (GT masks)",
}


class SummaryError(ValueError):
    """An evaluation file is unreadable or holds a value that is not a fraction."""


# --------------------------------------------------------------------------- reading


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SummaryError(f"{path}: evaluation file not found") from None
    except json.JSONDecodeError as err:
        raise SummaryError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise SummaryError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _fraction(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SummaryError(f"{where}: expected a number in [0, 1] or null, got {value!r}")
    value = float(value)
    if math.isnan(value):
        return None
    if not 0.0 <= value <= 1.0:
        raise SummaryError(f"{where}: {value} is not a fraction in [0, 1]")
    return value


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class SummaryConfig:
    """What the JSONs do not say: the mode, the splits and the background constant used."""

    mode: str
    dataset: str = ""
    train_split: str = "train"
    val_split: str = "val"
    tau_b: float | None = None  # pseudo-label background constant; the pseudo-label JSON's value wins
    base: str | None = None  # Table 1 rows: the base mode (irnet, sance_naive, sance) of a named row
    output_stride: int | None = None  # Table 1's "stride" of the SANCE backbone
    tta: bool | None = None  # Table 1's "TTA": multi-scale maps for the pseudo labels


def assemble_summary(cfg: SummaryConfig, evals: Mapping[str, Mapping[str, Any] | None],
                     manifest_counts: Mapping[str, int] | None = None,
                     sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The summary of one mode from its evaluation results (``None`` = that stage does not apply)."""
    summary: dict[str, Any] = {"mode": cfg.mode, "dataset": cfg.dataset, "base": cfg.base,
                               "output_stride": cfg.output_stride, "tta": cfg.tta}
    for column, (name, key) in METRICS.items():
        data = evals.get(name)
        summary[column] = None if data is None else _fraction(data.get(key), f"{(sources or {}).get(name, name)}:{key}")
    pl = evals.get("pseudo_labels") or {}
    tau_b = pl.get("tau_b", cfg.tau_b) if cfg.mode != "fully_supervised" else None
    summary["tau_b"] = None if tau_b is None else float(tau_b)
    summary["pseudo_label_map"] = pl.get("map")  # Table 1's "map": the scores propagated ('cam' or 'seg')
    if evals.get("contour"):
        summary["contour_ods_threshold"] = evals["contour"].get("ods_threshold")
        # where the contours were scored: the val split, or the ids of evaluation.contour.id_list (SBD val)
        id_list = evals["contour"].get("id_list")
        summary["contour_split"] = evals["contour"].get("split", cfg.val_split)
        summary["contour_id_list"] = id_list.get("id_list") if isinstance(id_list, Mapping) else None
    if evals.get("cam"):
        summary["cam_threshold"] = evals["cam"].get("best_threshold")

    # images per split: the manifest's counts, else the evaluations' own
    train = next((_count(evals[n].get("n_images")) for n in ("pseudo_labels", "cam", "seeds")
                  if evals.get(n) and _count(evals[n].get("n_images")) is not None), None)
    val = _count((evals.get("segmentation") or {}).get("n_images"))
    counts = dict(manifest_counts or {})
    summary["n_images"] = {cfg.train_split: counts.get(cfg.train_split, train),
                           cfg.val_split: counts.get(cfg.val_split, val)}
    summary["n_evaluated"] = {name: _count(d.get("n_images")) for name, d in evals.items() if d}
    summary["splits"] = {"train": cfg.train_split, "val": cfg.val_split}
    summary["sources"] = dict(sources or {})
    return summary


def summary_row(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The flat table row of a summary (ablation columns)."""
    splits = summary.get("splits", {})
    n = summary.get("n_images", {})
    row = {c: summary.get(c) for c in ABLATION_COLUMNS if c not in ("n_train", "n_val")}
    row["n_train"] = n.get(splits.get("train", "train"))
    row["n_val"] = n.get(splits.get("val", "val"))
    row["base"] = summary.get("base")
    row["n_contour"] = (summary.get("n_evaluated") or {}).get("contour")
    row["contour_split"] = summary.get("contour_split")
    row["contour_id_list"] = summary.get("contour_id_list")
    return row


# --------------------------------------------------------------------------- writing


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def tsv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Tab-separated table; a missing value is an empty cell."""
    lines = ["\t".join(columns)] + ["\t".join(_cell(r.get(c)) for c in columns) for r in rows]
    return "\n".join(lines) + "\n"


def mode_title(row: Mapping[str, Any]) -> str:
    """The paper's name of a row: its mode's, or its base mode's with the row name beside it."""
    mode = str(row["mode"])
    if mode in MODE_TITLES:
        return MODE_TITLES[mode]
    base = row.get("base")
    return f"{MODE_TITLES[base]} ({mode})" if base in MODE_TITLES else mode


def markdown_text(rows: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """The ablation as a Markdown table, metrics in percent (one decimal, as the paper), '–' when absent."""
    def pct(v: Any) -> str:
        return "–" if v is None else f"{100 * float(v):.1f}"

    head = ["Mode", "Stride", "Map", "TTA", "Pseudo labels mIoU (train)", "DeepLab mIoU (val)", "Contour ODS", "Contour OIS",
            "Classifier mAP (val)", "CAM mIoU", "Seed precision", "Seed coverage", "τ_b"]
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        tta = r.get("tta")
        cells = [mode_title(r), "–" if r.get("output_stride") is None else str(r["output_stride"]),
                 r.get("pseudo_label_map") or "–", "–" if tta is None or tta == "" else ("yes" if tta else "no"),
                 pct(r.get("pseudo_label_miou")),
                 pct(r.get("segmentation_miou")), pct(r.get("contour_ods")), pct(r.get("contour_ois")),
                 pct(r.get("classifier_map")), pct(r.get("cam_miou")), pct(r.get("seed_precision")), pct(r.get("seed_coverage")),
                 "–" if r.get("tau_b") is None else f"{float(r['tau_b']):g}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(splits_note(rows) + " Fully supervised: DeepLab trained on the ground-truth masks (no pseudo labels, "
                 "no contours).")
    return "\n".join(lines) + "\n"


def splits_note(rows: Sequence[Mapping[str, Any]]) -> str:
    """Which images each column scores: pseudo labels the train split, contours the val split (or the
    ids of ``evaluation.contour.id_list``, as many as ``max_images`` allows), DeepLab the val split."""
    def first(key: str) -> Any:
        return next((r.get(key) for r in rows if r.get(key) is not None), None)

    def n(value: Any) -> str:
        return "?" if value is None else str(value)

    id_list = first("contour_id_list")
    where = f"the ids of {id_list}" if id_list else f"the {first('contour_split') or 'val'} split"
    return (f"Pseudo labels on the train split ({n(first('n_train'))} images), contours on {where} "
            f"({n(first('n_contour'))} images scored, raw single-scale maps), "
            f"DeepLab on the val split ({n(first('n_val'))} images).")


def html_text(rows: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """The ablation as a standalone HTML page (the Snakemake report shows HTML inline, TSV only as a download)."""
    import html

    heads = {"mode": "mode", "pseudo_label_miou": "pseudo labels mIoU (train)",
             "segmentation_miou": "DeepLab mIoU (val)", "contour_ods": "contour ODS", "contour_ois": "contour OIS",
             "classifier_map": "classifier mAP (val)",
             "cam_miou": "CAM mIoU", "seed_precision": "seed precision", "seed_coverage": "seed coverage",
             "tau_b": "τ<sub>b</sub>", "n_train": "train images", "n_val": "val images",
             "pseudo_label_map": "map", "output_stride": "stride", "tta": "TTA"}

    def cell(col: str, row: Mapping[str, Any]) -> str:
        value = row.get(col)
        if value is None:
            return "<td class='na'>–</td>"
        if col == "mode":
            return f"<td class='mode'>{html.escape(mode_title(row))}</td>"
        if col in METRICS:
            return f"<td>{100 * float(value):.1f}</td>"
        return f"<td>{html.escape(f'{value:g}' if isinstance(value, float) else str(value))}</td>"

    head = "".join(f"<th>{heads.get(c, html.escape(c))}</th>" for c in ABLATION_COLUMNS)
    body = "".join("<tr>" + "".join(cell(c, r) for c in ABLATION_COLUMNS) + "</tr>" for r in rows)
    style = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td.mode{text-align:left}"
             "td.na{color:#999;text-align:center}th{background:#f2f2f2}th:first-child{text-align:left}")
    title = html.escape(title or "Ablation")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style>"
            f"</head><body><h3>{title}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<p>Metrics in percent. CAMs and seeds on the train split. {html.escape(splits_note(rows))} "
            "&ndash;: not applicable (the fully supervised DeepLab has no pseudo labels and no "
            "contours).</p></body></html>\n")


def write_summary(summary: Mapping[str, Any], json_path: str | Path, tsv_path: str | Path) -> None:
    write_text_atomic(json_path, json.dumps(dict(summary), indent=1, allow_nan=False) + "\n")
    write_text_atomic(tsv_path, tsv_text([summary_row(summary)], ABLATION_COLUMNS))


# --------------------------------------------------------------------------- stages


def _load_evals(inputs: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any] | None], dict[str, str]]:
    evals: dict[str, dict[str, Any] | None] = {}
    sources: dict[str, str] = {}
    for name in EVAL_INPUTS:
        path = inputs.get(name)
        if path in (None, "", []):
            evals[name] = None
            continue
        sources[name] = str(path)
        evals[name] = read_json(path)
    return evals, sources


def run_summary(cfg: SummaryConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs: any of ``classifier``, ``cam``, ``seeds``, ``pseudo_labels``, ``segmentation``, ``contour`` (JSON paths), and
    optionally ``manifest``; outputs ``json`` and ``tsv``."""
    evals, sources = _load_evals(inputs)
    counts = None
    if inputs.get("manifest"):
        from sance_core.data.dataset import Manifest

        manifest = Manifest.load(inputs["manifest"])
        counts = {s: len(manifest.ids(s)) for s in (cfg.train_split, cfg.val_split) if s in manifest.splits}
    summary = assemble_summary(cfg, evals, counts, sources)
    write_summary(summary, outputs["json"], outputs["tsv"])
    log.info("summary of %s: %s", cfg.mode, {k: summary[k] for k in METRICS})
    return summary


@dataclass(frozen=True)
class AblationConfig:
    modes: tuple[str, ...]
    title: str = ""

    def __post_init__(self) -> None:
        if not self.modes:
            raise ValueError("the ablation table needs at least one mode")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError(f"ablation modes are listed twice: {list(self.modes)}")


def assemble_ablation(modes: Sequence[str], summaries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per mode, in the configured order; each summary must be the one of its mode."""
    if len(modes) != len(summaries):
        raise SummaryError(f"{len(modes)} modes but {len(summaries)} summaries")
    rows = []
    for mode, summary in zip(modes, summaries):
        if summary.get("mode") != mode:
            raise SummaryError(f"summary listed for mode {mode!r} belongs to mode {summary.get('mode')!r}")
        rows.append(summary_row(summary))
    return rows


def run_ablation(cfg: AblationConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Inputs ``summaries`` (the per-mode summary.json, in ``cfg.modes`` order); outputs ``tsv``, ``md``, ``html``."""
    paths = inputs["summaries"]
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    rows = assemble_ablation(cfg.modes, [read_json(p) for p in paths])
    write_text_atomic(outputs["tsv"], tsv_text(rows, ABLATION_COLUMNS))
    if "md" in outputs:
        write_text_atomic(outputs["md"], markdown_text(rows, cfg.title))
    if "html" in outputs:
        write_text_atomic(outputs["html"], html_text(rows, cfg.title))
    log.info("ablation table of %d modes written to %s", len(rows), outputs["tsv"])
    return rows
