"""Training history: one row of floats per iteration (step, epoch, loss, lr, terms...), as CSV and as curves."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from sance_core.io.files import atomic_path


class History:
    """Per-iteration training records as CSV, and a curve plot from them."""

    def __init__(self, csv_path: str | Path) -> None:
        self.path = Path(csv_path)
        self.rows: list[dict[str, float]] = []

    def append(self, **row: float | int | torch.Tensor) -> None:
        self.rows.append({k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in row.items()})

    def load(self, path: str | Path) -> None:
        """Continue a history after a resume."""
        path = Path(path)
        if path.is_file():
            with path.open() as f:
                self.rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]

    def save(self, path: str | Path | None = None) -> Path:
        """Write the rows as CSV (atomically); a column missing in a row is an empty cell."""
        path = Path(path) if path else self.path
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        return path

    def columns(self, wanted: list[str]) -> list[str]:
        """The entries of ``wanted`` that some row holds, in that order."""
        return [c for c in wanted if any(c in r for r in self.rows)]

    def plot(self, png_path: str | Path, columns: list[str] | None = None, x: str = "step",
             title: str = "training") -> Path:
        """One panel per column against ``x`` (loss terms, learning rate, accuracy...)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if columns is None:
            columns = [k for k in (self.rows[0] if self.rows else {}) if k not in (x, "epoch")]
        n = max(1, len(columns))
        fig = Figure(figsize=(3.6 * min(n, 4), 2.8 * math.ceil(n / 4)))
        FigureCanvasAgg(fig)
        for i, col in enumerate(columns):
            ax = fig.add_subplot(math.ceil(n / 4), min(n, 4), i + 1)
            pts = [(r[x], r[col]) for r in self.rows if col in r and x in r]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, lw=1)
            ax.set_title(col, fontsize=9)
            ax.set_xlabel(x, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        with atomic_path(png_path) as tmp:
            fig.savefig(tmp, dpi=100)
        return Path(png_path)
