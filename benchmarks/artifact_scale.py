"""How the HDF5 artifacts scale: bytes per image, write/read throughput, peak memory.

Writes and reads synthetic, COCO-sized shards with ``sance_core.io.store`` exactly as the
stages do (one writer per shard, one group per image, only the present classes stored) and
checks that memory does not grow with the number of images in a shard::

    .venv/bin/python benchmarks/artifact_scale.py                      # 500 / 1,000 / 2,000 images
    .venv/bin/python benchmarks/artifact_scale.py --sizes 50 100 --stages seeds --json out.json

Each (stage, size) runs in a fresh process so its peak resident memory (``ru_maxrss``) is its
own; the baseline (interpreter + numpy + h5py, measured the same way without writing) is
reported beside it (it includes a pool of 8 synthetic images that the writer cycles through). The synthetic maps imitate real ones so that compression ratios are
realistic: CAMs are ReLU'd sums of Gaussian blobs computed on the stride-4 grid and upsampled
bilinearly (as the CAM stage does), max-normalised per class; seeds and labels are the
thresholded blobs (piecewise constant, with 255 bands for seeds). Numbers in docs/SCALING.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# what one image of each stage stores (K = present classes, C + 1 = all classes with background)
STAGES = {
    "cam": "cam [K,H,W] + cam_stride4 [K,h,w] float16",
    "seeds": "seed [H,W] uint8",
    "maps": "contour [h,w] + seg [K+1,h,w] float16 (softmax planes of the present classes + background)",
    "maps_all_classes": "contour [h,w] + seg [C+1,h,w] float16 (the softmax over every class, C = 80)",
    "pseudo_labels": "label [H,W] uint8",
}
COCO_CLASSES = 80
POOL = 8  # distinct synthetic images, cycled


def blobs(rng: np.random.Generator, k: int, h: int, w: int) -> np.ndarray:
    """``[k, h, w]`` float32 maps in [0, 1]: each a ReLU'd sum of 1-3 Gaussian blobs, max = 1."""
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    maps = np.zeros((k, h, w), np.float32)
    for c in range(k):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            sy, sx = rng.uniform(0.05, 0.25) * h, rng.uniform(0.05, 0.25) * w
            maps[c] += rng.uniform(0.5, 1.0) * np.exp(-((ys - cy) ** 2) / (2 * sy**2) - ((xs - cx) ** 2) / (2 * sx**2))
        maps[c] = np.maximum(maps[c] - 0.05, 0.0)  # ReLU'd: exact zeros away from the objects
        maps[c] /= maps[c].max() + 1e-5
    return maps


def upsample(maps: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of ``[k, h4, w4]`` to ``[k, h, w]`` (what the CAM stage stores at full size)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(maps)[None]
    return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0].numpy()


def synthetic(stage: str, rng: np.random.Generator, k: int, h: int, w: int) -> tuple[dict[str, np.ndarray], dict]:
    h4, w4 = -(-h // 4), -(-w // 4)
    low = blobs(rng, k, h4, w4)
    keys = sorted(rng.choice(np.arange(1, COCO_CLASSES + 1), size=k, replace=False).tolist())
    attrs = {"class_keys": keys, "size": [h, w], "stride": 4}
    if stage == "cam":
        return {"cam": upsample(low, h, w), "cam_stride4": low}, attrs
    labels_full = None
    if stage in ("seeds", "pseudo_labels"):
        full = upsample(low, h, w)
        best = full.argmax(0)
        score = full.max(0)
        labels_full = np.where(score > 0.30, np.asarray(keys, np.uint8)[best], 0).astype(np.uint8)
        if stage == "seeds":
            labels_full[(score > 0.05) & (score <= 0.30)] = 255  # unsure band of Eq. (1)
            return {"seed": labels_full}, attrs
        return {"label": labels_full}, attrs
    contour = np.clip(np.abs(np.gradient(low.sum(0))[0]) * 8, 0, 1).astype(np.float32)
    # a network's softmax over all C + 1 classes: present classes and background from the
    # blobs, absent classes small but never exactly zero (smooth low-resolution logit noise)
    noise = rng.normal(size=(COCO_CLASSES + 1, -(-h4 // 2), -(-w4 // 2))).astype(np.float32)
    logits = -4.0 + 1.5 * upsample(noise, h4, w4)
    logits[0] = 6.0 * (1.0 - low.max(0))
    logits[keys] = 6.0 * low
    seg = np.exp(logits - logits.max(0, keepdims=True))
    seg /= seg.sum(0, keepdims=True)
    if stage == "maps":  # stored for the present classes and background only
        return {"contour": contour, "seg": seg[[0, *keys]]}, attrs
    if stage == "maps_all_classes":
        return {"contour": contour, "seg": seg}, {**attrs, "class_keys": list(range(1, COCO_CLASSES + 1))}
    raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child(stage: str, n: int, k: int, h: int, w: int, compression: str, folder: str, seed: int) -> dict:
    """One measurement, in its own process: write n images to one shard, read them all back."""
    import h5py  # noqa: F401 - part of the baseline
    import torch  # noqa: F401

    from sance_core.io.store import ArtifactReader, ArtifactWriter

    # a pool of distinct images generated up front, cycled while writing: the generator's own
    # allocations (torch upsampling) stay out of what is measured
    rng = np.random.default_rng(seed)
    pool = [synthetic("cam" if stage == "baseline" else stage, rng, k, h, w) for _ in range(POOL)]
    base_rss = peak_rss_mb()
    if stage == "baseline":
        return {"stage": stage, "peak_rss_mb": base_rss}
    path = Path(folder) / f"{stage}-{n}.h5"
    write_s = 0.0
    raw_bytes = 0
    start = time.perf_counter()
    with ArtifactWriter(path, stage, {"benchmark": True}, compression=compression) as writer:
        for i in range(n):
            arrays, attrs = pool[i % POOL]
            raw_bytes += sum(a.size * (2 if a.dtype == np.float32 else a.itemsize) for a in arrays.values())
            writer.add(f"img{i:06d}", arrays, attrs)
    write_s = time.perf_counter() - start  # including the final flush and rename
    file_bytes = path.stat().st_size
    after_write_rss = peak_rss_mb()
    start = time.perf_counter()
    checksum = 0.0
    reader = ArtifactReader(path, expect_stage=stage)
    for image_id in reader.ids():
        for array in reader.read(image_id).values():  # type: ignore[union-attr]
            checksum += float(array[..., ::64, ::64].sum())
    reader.close()
    read_s = time.perf_counter() - start
    path.unlink()
    return {
        "stage": stage, "images": n, "bytes_per_image": file_bytes / n, "raw_bytes_per_image": raw_bytes / n,
        "file_mb": file_bytes / 1e6, "write_s": write_s, "read_s": read_s,
        "write_images_per_s": n / write_s, "read_images_per_s": n / read_s,
        "write_mb_per_s": file_bytes / 1e6 / write_s, "read_mb_per_s": file_bytes / 1e6 / read_s,
        "baseline_rss_mb": base_rss, "peak_rss_write_mb": after_write_rss, "peak_rss_mb": peak_rss_mb(),
        "checksum": checksum,
    }


def time_cpu_stages(sizes: list[tuple[int, int]], k: int, repeats: int, seed: int) -> list[dict]:
    """Seconds per image of the two CPU-bound per-image stages at real image sizes, one thread:
    CRF seeds (sance_core.stages.seeds.make_seed: two dense CRFs, IRNet settings) and pseudo-label
    synthesis (sance_core.stages.pseudo_labels.synthesize_label: propagation radius 5, beta 10, t 8)."""
    import torch

    from sance_core.stages.pseudo_labels import synthesize_label
    from sance_core.stages.seeds import make_seed

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    rows = []
    for h, w in sizes:
        h4, w4 = -(-h // 4), -(-w // 4)
        low = blobs(rng, k, h4, w4)
        cams = upsample(low, h, w)
        image = (rng.random((h, w, 3)) * 40 + np.stack([cams.max(0) * 200] * 3, -1)).astype(np.uint8)
        keys = list(range(1, k + 1))
        contour = np.clip(np.abs(np.gradient(low.sum(0))[0]) * 8, 0, 1).astype(np.float32)
        for name, fn in (("seeds (2 dense CRFs)", lambda: make_seed(image, cams, keys)),
                         ("pseudo_labels (propagation)", lambda: synthesize_label(low, keys, contour, (h, w)))):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            rows.append({"stage": name, "size": [h, w], "classes": k, "seconds_per_image": float(np.median(times))})
            print(f"{name:30s} {h}x{w}, {k} classes: {np.median(times):.2f} s/image (median of {repeats})", flush=True)
    return rows


def run_child(args: argparse.Namespace, stage: str, n: int, folder: str) -> dict:
    cmd = [sys.executable, __file__, "--child", stage, str(n), "--classes", str(args.classes),
           "--height", str(args.height), "--width", str(args.width), "--compression", args.compression,
           "--folder", folder, "--seed", str(args.seed)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict], baseline: float) -> str:
    lines = [
        f"baseline peak RSS (python + numpy + h5py + torch, nothing written): {baseline:.0f} MB",
        "| stage | images | KB/image (raw) | write img/s | write MB/s | read img/s | read MB/s | peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['images']} | {r['bytes_per_image'] / 1e3:.1f} ({r['raw_bytes_per_image'] / 1e3:.0f}) | "
            f"{r['write_images_per_s']:.0f} | {r['write_mb_per_s']:.1f} | {r['read_images_per_s']:.0f} | "
            f"{r['read_mb_per_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000], help="images per shard")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--classes", type=int, default=3, help="present classes per image (COCO: 2.9 on average)")
    p.add_argument("--height", type=int, default=640)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--compression", default="gzip", choices=["gzip", "lzf", "none"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folder", help="where the shards are written (default: a temporary folder)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--cpu-stages", action="store_true",
                   help="instead: time CRF seeds and propagation per image at VOC (375x500) and COCO (480x640) sizes")
    p.add_argument("--child", nargs=2, metavar=("STAGE", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.cpu_stages:
        rows = time_cpu_stages([(375, 500), (480, 640)], args.classes, 3, args.seed)
        if args.json:
            Path(args.json).write_text(json.dumps({"cpu_stages": rows, "load_average": os.getloadavg()}, indent=1))
        return 0

    if args.child:
        stage, n = args.child[0], int(args.child[1])
        result = child(stage, n, args.classes, args.height, args.width, args.compression, args.folder, args.seed)
        print(json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        baseline = run_child(args, "baseline", 0, folder)["peak_rss_mb"]
        rows = []
        for stage in args.stages:
            for n in args.sizes:
                row = run_child(args, stage, n, folder)
                rows.append(row)
                print(f"{stage:18s} {n:6d} images: {row['bytes_per_image'] / 1e3:8.1f} KB/image, "
                      f"write {row['write_images_per_s']:6.1f} img/s, read {row['read_images_per_s']:6.1f} img/s, "
                      f"peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
    print()
    print(table(rows, baseline))
    flat = {}
    for stage in args.stages:
        peaks = [r["peak_rss_mb"] for r in rows if r["stage"] == stage]
        flat[stage] = max(peaks) - min(peaks)
        print(f"{stage}: peak RSS spread across sizes {flat[stage]:.1f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "settings": {k: getattr(args, k) for k in ("sizes", "stages", "classes", "height", "width", "compression")},
            "baseline_rss_mb": baseline, "rows": rows, "rss_spread_mb": flat}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
