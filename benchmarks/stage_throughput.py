"""Per-stage throughput at VOC image size on this machine: seconds per image and peak memory.

Usage (repository root; a few minutes on a free core)::

    .venv/bin/python benchmarks/stage_throughput.py                 # VOC preset networks, 1 image per stage
    .venv/bin/python benchmarks/stage_throughput.py --images 2 --threads 2

One 375 x 500 RGB image (VOC's typical size), 21 classes, 2 present (VOC train_aug averages
1.5), networks with random weights (speed does not depend on the weights) built as the VOC
preset builds them: the CAM classifier ResNet-101 (output stride 16), the SANCE model
ResNet-101 (output stride 8, ASPP 6/12/18/24), DeepLab-v2 ResNet-101 (output stride 8).
Each stage runs in a fresh process (its peak RSS is its own) after one warm-up image; what is
timed is the stage's per-image function as the pipeline calls it:

- ``cam``: ``multiscale_cams`` + ``combine_scales`` at scale 1.0 with flip (one forward of 2 images)
- ``seeds``: ``make_seed`` (two dense CRFs, IRNet's settings) of the CAMs of 2 classes
- ``maps``: ``predict_maps`` at scale 1.0 with flip
- ``pseudo_labels``: ``synthesize_label`` (propagation radius 5, beta 10, t 8 + labelling)
- ``deeplab``: ``predict_label`` at scale 1.0 with flip, without CRF, and ``deeplab_crf``: the dense CRF alone

On a GPU (``--device cuda``) the wall time is the figure to use and ``peak_gpu_mb`` the
networks' GPU memory (printed in the per-stage JSON lines). The networks are measured at one scale only
(the full test-time augmentation would take many
minutes per image on a shared CPU); the preset's multi-scale cost is projected from it by the
pixel count of the scales (sum of scale^2): 7.5x for CAMs and maps (1.0, 0.5, 1.5, 2.0),
5.63x for DeepLab (0.5 ... 1.5). Those columns are marked projected in the output.
``--preset-scales`` runs the networks at the preset's scales instead (measured, no projection;
meant for a GPU, where the cost does not follow the pixel count).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
H, W, N_CLASSES, PRESENT = 375, 500, 21, (3, 12)
PRESET_SCALES = {"cam": (1.0, 0.5, 1.5, 2.0), "maps": (1.0, 0.5, 1.5, 2.0), "deeplab": (0.5, 0.75, 1.0, 1.25, 1.5)}
STAGES = ("cam", "seeds", "maps", "pseudo_labels", "deeplab", "deeplab_crf")


def _image(seed: int) -> np.ndarray:
    """A smooth random RGB image with a few blobs (CRFs and compression behave as on photos)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.zeros((H, W, 3), np.float32)
    for _ in range(6):
        cy, cx, r = rng.random() * H, rng.random() * W, 30 + 80 * rng.random()
        img += rng.random(3) * 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _cams(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    maps = [np.exp(-((yy - rng.random() * H) ** 2 + (xx - rng.random() * W) ** 2) / (2 * 60.0**2)) for _ in PRESENT]
    return np.stack(maps).astype(np.float32)


def stage_scales(stage: str, preset: bool) -> tuple[float, ...]:
    """The scales a stage's network runs at: 1.0, or the preset's test-time scales (``PRESET_SCALES``)."""
    return tuple(PRESET_SCALES.get(stage, (1.0,))) if preset else (1.0,)


def _stage_fn(stage: str, device: str = "cpu", preset: bool = False):
    """Per-image function of ``stage`` (built once: model, inputs) at ``stage_scales(stage, preset)``."""
    import torch

    scales = stage_scales(stage, preset)

    torch.manual_seed(0)
    if stage == "cam":
        from sance_core.models.classifier import CAMClassifier
        from sance_core.stages.cam import combine_scales, multiscale_cams

        model = CAMClassifier(N_CLASSES - 1, "resnet101", None, 16).to(device).eval()

        def run(i):
            per = multiscale_cams(model, [_image(i)], scales, True)[0]
            return combine_scales(per, (H, W), PRESENT, 16)
    elif stage == "seeds":
        from sance_core.stages.seeds import make_seed

        def run(i):
            return make_seed(_image(i), _cams(i), PRESENT)
    elif stage == "maps":
        from sance_core.models.sance import build_sance_model
        from sance_core.stages.pseudo_labels import predict_maps, present_planes

        model = build_sance_model(N_CLASSES, "resnet101", 8, aspp_rates=(6, 12, 18, 24)).to(device).eval()

        def run(i):
            contour, seg = predict_maps(model, _image(i), scales, True, device)
            return present_planes(seg, PRESENT)
    elif stage == "pseudo_labels":
        from sance_core.stages.pseudo_labels import synthesize_label

        h4, w4 = (H + 3) // 4, (W + 3) // 4

        def run(i):
            rng = np.random.default_rng(i)
            contour = (rng.random((h4, w4)) ** 6).astype(np.float32)
            scores = rng.random((len(PRESENT), h4, w4)).astype(np.float32)
            return synthesize_label(scores, PRESENT, contour, (H, W))
    elif stage in ("deeplab", "deeplab_crf"):
        from sance_core.models.deeplab import DeepLabV2
        from sance_core.ops.crf import deeplab_crf
        from sance_core.ops.inference import predict_label, refine_with_crf

        if stage == "deeplab_crf":
            probs = np.random.default_rng(0).dirichlet(np.ones(N_CLASSES), size=(H, W)).transpose(2, 0, 1)

            def run(i):
                return refine_with_crf(_image(i), probs.astype(np.float32), deeplab_crf())
        else:
            model = DeepLabV2(N_CLASSES, "resnet101", None, 8, (6, 12, 18, 24)).to(device).eval()

            def run(i):
                return predict_label(model, _image(i), scales, True, None, device)
    else:
        raise ValueError(f"unknown stage {stage!r}; known: {STAGES}")
    return run


def _worker(stage: str, images: int, threads: int, device: str = "cpu", preset: bool = False) -> dict:
    import torch

    torch.set_num_threads(threads)
    run = _stage_fn(stage, device, preset)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        run(100)  # warm-up
        times, cpu = [], []
        for i in range(images):
            t0, c0 = time.perf_counter(), time.process_time()
            run(i)
            sync()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {"stage": stage, "s_per_image": min(times), "cpu_s_per_image": min(cpu), "times": times,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": threads, "device": device,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None,
            "load": os.getloadavg()[0], "scales": list(stage_scales(stage, preset))}


def projected(row: dict) -> float | None:
    """CPU seconds per image of the preset's test-time augmentation, from the one-scale measurement.

    CPU time, not wall time: on the shared machine the wall time mostly measures the other jobs.
    """
    scales = PRESET_SCALES.get(row["stage"])
    return None if scales is None or row.get("scales", [1.0]) != [1.0] else row["cpu_s_per_image"] * sum(s * s for s in scales)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--images", type=int, default=1, help="timed images per stage after the warm-up (min reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--device", default="cpu", help="device of the networks (cpu, cuda, cuda:N); CRFs and "
                    "propagation stay on the CPU as in the pipeline")
    ap.add_argument("--preset-scales", action="store_true", help="run the networks at the preset's test-time "
                    "scales (with flip) instead of scale 1.0: measured, not projected (meant for a GPU)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.images, args.threads, args.device, args.preset_scales)))
        return 0
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=str(args.threads))
    rows = []
    for stage in args.stages:
        load0 = os.getloadavg()[0]
        proc = subprocess.run([sys.executable, __file__, "--worker", stage, "--images", str(args.images),
                               "--threads", str(args.threads), "--device", args.device,
                               *(["--preset-scales"] if args.preset_scales else [])], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"stage {stage} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["load_start"] = load0
        rows.append(row)
        print(f"# {json.dumps(row)}", file=sys.stderr, flush=True)
    print(f"# {H}x{W}, {N_CLASSES} classes, {len(PRESENT)} present, torch threads {args.threads}, device {args.device}, "
          f"{os.cpu_count()} CPUs, {args.images} timed image(s) per stage")
    scale_note = "preset scales" if args.preset_scales else "1 scale"
    print(f"| stage | measured wall s / image ({scale_note}) | measured CPU s / image | images / s (CPU time) "
          "| peak RSS MB | peak GPU MB | projected CPU s / image, preset TTA | load avg (start / end) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        p, gpu = projected(r), r.get("peak_gpu_mb")
        print(f"| {r['stage']} | {r['s_per_image']:.2f} | {r['cpu_s_per_image']:.2f} | {1 / r['cpu_s_per_image']:.3f} | "
              f"{r['peak_rss_mb']:.0f} | {'' if gpu is None else f'{gpu:.0f}'} | {'' if p is None else f'{p:.1f}'} | "
              f"{r['load_start']:.1f} / {r['load']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
