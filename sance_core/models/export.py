"""Export a trained segmenter to ONNX and check the file with onnxruntime against PyTorch.

The exported graph takes a normalised float batch ``image [N, 3, H, W]`` (RGB / 255, then
ImageNet mean/std, recorded in the file's metadata) and returns ``logits [N, K, H, W]`` at the
input resolution; batch, height and width are dynamic axes. The class names, the
normalisation and the training mode are stored as ONNX metadata (``metadata_props``), so a
deployed file is self-describing.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sance_core.io.files import atomic_path
from sance_core.data.transforms import normalize_image

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-3


class ExportCheckError(RuntimeError):
    """onnxruntime's output differs from PyTorch's by more than the tolerance."""


@dataclass(frozen=True)
class ExportReport:
    path: str
    opset: int
    dynamic: bool
    checked_sizes: list[tuple[int, int]]
    max_abs_diff: float
    label_agreement: float
    tolerance: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _check_input(image: np.ndarray | None, height: int, width: int, seed: int) -> np.ndarray:
    if image is not None:
        return image
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def export_onnx(model: torch.nn.Module, config: dict[str, Any], out_path: str | Path, height: int = 321,
                width: int = 321, opset: int = DEFAULT_OPSET, dynamic: bool = True) -> Path:
    """Write ``model`` (eval mode, CPU) as ONNX to ``out_path`` atomically; return the path."""
    import onnx

    if opset < DEFAULT_OPSET:
        raise ValueError(f"opset must be >= {DEFAULT_OPSET}, got {opset}")
    if height < 8 or width < 8:
        raise ValueError(f"export size must be at least 8x8, got {height}x{width}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    dummy = torch.zeros(1, 3, height, width)
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    with atomic_path(out_path) as tmp:
        with warnings.catch_warnings():
            # the TorchScript-based exporter is what works without onnxscript; its deprecation notice is noise here
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(
                model, (dummy,), str(tmp), dynamo=False, opset_version=opset, input_names=["image"],
                output_names=["logits"], dynamic_axes=axes if dynamic else None, do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        meta = {
            "sance_kind": config.get("kind", ""),
            "classes": json.dumps(config.get("classes", [])),
            "normalization": json.dumps(config.get("normalization", {})),
            "backbone": str(config.get("backbone", "")),
            "mode": str(config.get("mode", "")),
            "output": "logits [N, K, H, W] at the input size; argmax over K gives the class index",
        }
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    log.info("wrote %s (opset %d, %s axes)", out_path, opset, "dynamic" if dynamic else "static")
    return out_path


def check_onnx(model: torch.nn.Module, onnx_path: str | Path, images: list[np.ndarray],
               tolerance: float = DEFAULT_TOLERANCE) -> tuple[float, float]:
    """Run both models on ``images`` (uint8 RGB); return (max |logit difference|, argmax agreement).

    Raises :class:`ExportCheckError` when the difference exceeds ``tolerance``.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model = model.cpu().eval()
    worst, agree, total = 0.0, 0, 0
    for image in images:
        x = normalize_image(image)[None]
        with torch.inference_mode():
            ref = model(x).numpy()
        out = session.run(["logits"], {"image": x.numpy()})[0]
        if out.shape != ref.shape:
            raise ExportCheckError(f"{onnx_path}: onnxruntime output shape {out.shape} differs from PyTorch's {ref.shape}")
        worst = max(worst, float(np.abs(out - ref).max()))
        agree += int((out.argmax(1) == ref.argmax(1)).sum())
        total += ref.shape[0] * ref.shape[2] * ref.shape[3]
    if not np.isfinite(worst) or worst > tolerance:
        raise ExportCheckError(
            f"{onnx_path}: onnxruntime logits differ from PyTorch's by up to {worst:.3g} (tolerance {tolerance:g})"
        )
    return worst, agree / max(total, 1)


def export_and_check(model_dir: str | Path, out_path: str | Path, height: int = 321, width: int = 321,
                     opset: int = DEFAULT_OPSET, dynamic: bool = True, tolerance: float = DEFAULT_TOLERANCE,
                     check_image: np.ndarray | None = None, seed: int = 0) -> ExportReport:
    """Load a saved segmenter, export it and compare onnxruntime with PyTorch.

    The check runs on ``check_image`` (or a seeded random picture of the export size) and,
    with dynamic axes, on a second, differently sized input, so a graph that silently froze
    the export size is caught. A failed check deletes the written file.
    """
    from sance_core.stages.segmenter import load_segmenter

    model, config = load_segmenter(model_dir, None, "cpu")
    path = export_onnx(model, config, out_path, height, width, opset, dynamic)
    first = _check_input(check_image, height, width, seed)
    images = [first]
    if dynamic:
        h2, w2 = first.shape[0] + 13, max(8, first.shape[1] - 7)
        images.append(np.random.default_rng(seed + 1).integers(0, 256, size=(h2, w2, 3), dtype=np.uint8))
    try:
        worst, agreement = check_onnx(model, path, images, tolerance)
    except Exception:
        Path(path).unlink(missing_ok=True)
        raise
    report = ExportReport(str(path), opset, dynamic, [tuple(im.shape[:2]) for im in images], worst, agreement, tolerance)
    log.info("onnxruntime check passed: max |diff| %.3g over %s, argmax agreement %.4f",
             worst, report.checked_sizes, agreement)
    return report
