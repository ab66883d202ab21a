"""``sance inspect``: list, summarise and render any HDF5 artifact of the pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sance_core.constants import IGNORE_INDEX
from sance_core.io.palette import colorize
from sance_core.io.store import ArtifactReader


def summarise(path: str | Path, max_ids: int = 20) -> str:
    """Human-readable listing: file attributes, ids, and per-dataset shape/dtype/min/mean/max."""
    reader = ArtifactReader(path)
    lines = [f"{path}"]
    for key, value in reader.attrs.items():
        lines.append(f"  {key}: {value}")
    ids = reader.ids()
    lines.append(f"  {len(ids)} image(s)")
    for image_id in ids[:max_ids]:
        attrs = reader.image_attrs(image_id)
        lines.append(f"  {image_id}  " + "  ".join(f"{k}={v}" for k, v in attrs.items()))
        for name, array in reader.read(image_id).items():  # type: ignore[union-attr]
            lines.append("    " + describe_array(name, array))
    if len(ids) > max_ids:
        lines.append(f"  ... {len(ids) - max_ids} more")
    reader.close()
    return "\n".join(lines)


def describe_array(name: str, array: np.ndarray) -> str:
    shape = "x".join(map(str, array.shape))
    if array.size == 0:
        return f"{name}: {array.dtype} {shape} (empty)"
    if array.dtype == np.uint8:
        values, counts = np.unique(array, return_counts=True)
        hist = ", ".join(f"{v}:{c}" for v, c in zip(values.tolist(), counts.tolist()))
        return f"{name}: uint8 {shape} labels {{{hist}}}"
    return (f"{name}: {array.dtype} {shape} min {array.min():.4f} mean {array.mean():.4f} "
            f"max {array.max():.4f}")


def render(path: str | Path, image_id: str, out_png: str | Path) -> Path:
    """One panel per dataset of the entry: label maps in the VOC palette, float maps as heat maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with ArtifactReader(path) as reader:
        arrays = reader.read(image_id)
        attrs = reader.image_attrs(image_id)
    assert isinstance(arrays, dict)
    class_keys = attrs.get("class_keys") or attrs.get("classes")
    panels: list[tuple[str, np.ndarray, bool]] = []
    for name, array in arrays.items():
        if array.dtype == np.uint8 and array.ndim == 2:
            panels.append((name, colorize(array), True))
        elif array.ndim == 2:
            panels.append((name, array, False))
        elif array.ndim == 3 and array.shape[-1] == 3 and array.dtype == np.uint8:
            panels.append((name, array, True))
        elif array.ndim == 3:
            for k in range(array.shape[0]):
                label = f"{name}[{class_keys[k]}]" if class_keys and k < len(class_keys) else f"{name}[{k}]"
                panels.append((label, array[k], False))
    if not panels:
        raise ValueError(f"{path}: entry {image_id!r} has no 2-D or 3-D dataset to render")
    cols = min(4, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, data, is_rgb) in zip(axes.flat, panels):
        if is_rgb:
            ax.imshow(data)
        else:
            im = ax.imshow(data, cmap="jet", vmin=0.0, vmax=max(1.0, float(np.nanmax(data))))
            fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title(title, fontsize=8)
    fig.suptitle(f"{Path(path).name} : {image_id}", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


__all__ = ["summarise", "render", "describe_array", "IGNORE_INDEX"]
