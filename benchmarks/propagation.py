"""Benchmark: sparse stencil propagation vs IRNet's dense matrix power (Eq. 6).

Usage (from the repository root)::

    .venv/bin/python benchmarks/propagation.py                # the table in docs/BENCHMARKS.md
    .venv/bin/python benchmarks/propagation.py --sizes 32x32,64x64 --repeats 3

Every measurement runs in a fresh subprocess so that its peak resident set size
(``ru_maxrss``) is its own: the worker loads its inputs from ``.npy`` files, warms up on
an 8x8 map, records ``ru_maxrss`` as the baseline, runs the method once (timed; the
memory delta is taken here) and, for the sparse method, ``--repeats - 1`` more times
(the reported time is the minimum).  The dense baseline follows IRNet's
``to_transition_matrix``/``propagate_to_edge`` in float32: dense ``A`` (self = 1, both
directions), ``A ** beta``, division by the column sums, ``exp_times`` squarings with
``torch.matmul``, then ``x @ T``.  Both sides run with denormals flushed (otherwise the
dense squarings slow down by orders of magnitude on x86).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RADIUS, BETA, EXP_TIMES, N_CLASSES = 5, 10, 8, 3


# ---------------------------------------------------------------- inputs


def make_inputs(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A contour-like map (low background, a few strong straight edges) and CAM-like blobs."""
    rng = np.random.default_rng(seed)
    contour = 0.05 * rng.random((h, w))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    for _ in range(max(2, (h + w) // 24)):
        y0, x0 = rng.random(2) * (h, w)
        ang = rng.random() * np.pi
        dist = np.abs((yy - y0) * np.cos(ang) - (xx - x0) * np.sin(ang))
        contour = np.maximum(contour, 0.95 * np.exp(-(dist**2) / 0.5))
    scores = np.zeros((N_CLASSES, h, w))
    for c in range(N_CLASSES):
        for _ in range(2):
            cy, cx = rng.random(2) * (h, w)
            sig = (0.05 + 0.1 * rng.random()) * min(h, w)
            scores[c] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2))
    scores /= scores.max(axis=(1, 2), keepdims=True)
    return contour.astype(np.float32), scores.astype(np.float32)


# ---------------------------------------------------------------- methods (worker side)


def dense_propagate(scores, contour, radius: int, beta: float, exp_times: int, dtype=None):
    """IRNet's semantics with the dense (HW) x (HW) transition matrix (float32 like IRNet)."""
    import torch

    dtype = dtype or torch.float32
    scores, contour = scores.to(dtype), contour.to(dtype)

    from sance_core.ops.affinity import path_affinity, symmetric_affinity, symmetric_offsets

    c, h, w = scores.shape
    n = h * w
    with torch.no_grad():
        full = symmetric_affinity(path_affinity(contour, radius, 1.0), radius)  # [D, H, W]
        offs = symmetric_offsets(radius)
        ys = torch.arange(h).view(1, h, 1)
        xs = torch.arange(w).view(1, 1, w)
        ty = (ys + offs[:, 0].view(-1, 1, 1)).expand(-1, h, w)
        tx = (xs + offs[:, 1].view(-1, 1, 1)).expand(-1, h, w)
        inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
        rows = (ys * w + xs).expand_as(ty)[inside]
        cols = (ty * w + tx)[inside]
        aff = torch.zeros(n, n, dtype=dtype)
        aff[rows, cols] = full[inside]
        aff.pow_(beta)
        aff.div_(aff.sum(dim=0, keepdim=True))  # to_transition_matrix: column-normalised
        trans = aff
        del aff
        for _ in range(exp_times):
            trans = torch.matmul(trans, trans)
        x = (scores * (1 - contour)).reshape(c, n)
        return torch.matmul(x, trans).reshape(c, h, w)


def _worker(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from sance_core.ops.propagation import propagate

    contour = torch.from_numpy(np.load(args.contour))
    scores = torch.from_numpy(np.load(args.scores))

    if args.method in ("dense", "dense-f64"):
        ddt = torch.float64 if args.method == "dense-f64" else torch.float32

        def run(s, c):
            return dense_propagate(s, c, RADIUS, BETA, EXP_TIMES, ddt)
    else:
        cdt = torch.float32 if args.method == "sparse-f32" else None

        def run(s, c):
            return propagate(s, c, RADIUS, BETA, EXP_TIMES, compute_dtype=cdt)

    run(scores[:, :8, :8].contiguous(), contour[:8, :8].contiguous())  # warm-up, tiny
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = run(scores, contour)
    times = [time.perf_counter() - t0]
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(args.repeats - 1 if args.method.startswith("sparse") else 0):
        t0 = time.perf_counter()
        run(scores, contour)
        times.append(time.perf_counter() - t0)
    np.save(args.result, out.numpy())
    print(json.dumps({
        "time_s": min(times),
        "times_s": times,
        "rss_delta_bytes": (peak_kib - base_kib) * 1024,
        "threads": torch.get_num_threads(),
    }))


# ---------------------------------------------------------------- driver


def _measure(method: str, contour_path: str, scores_path: str, result: str, repeats: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--contour", contour_path,
           "--scores", scores_path, "--result", result, "--repeats", str(repeats)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {method} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="32x32,64x64,96x128,128x128", help="comma-separated HxW list")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of the sparse method (min reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch default)")
    ap.add_argument("--no-f32", action="store_true", help="skip the float32-accumulation variant")
    ap.add_argument("--exact-max-hw", type=int, default=4096,
                    help="also compute a float64 dense reference for maps up to this many pixels")
    ap.add_argument("--worker", choices=["dense", "dense-f64", "sparse", "sparse-f32"], help=argparse.SUPPRESS)
    ap.add_argument("--contour", help=argparse.SUPPRESS)
    ap.add_argument("--scores", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.method = args.worker
        _worker(args)
        return 0

    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    methods = ["sparse"] + ([] if args.no_f32 else ["sparse-f32"]) + ["dense"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for h, w in sizes:
            contour, scores = make_inputs(h, w)
            cp, sp = os.path.join(tmp, "contour.npy"), os.path.join(tmp, "scores.npy")
            np.save(cp, contour)
            np.save(sp, scores)
            res, outs = {}, {}
            todo = methods + (["dense-f64"] if h * w <= args.exact_max_hw else [])
            for m in todo:
                rp = os.path.join(tmp, f"{m}.npy")
                res[m] = _measure(m, cp, sp, rp, args.repeats, args.threads)
                outs[m] = np.load(rp).astype(np.float64)
                print(f"# {h}x{w} {m}: {res[m]}", file=sys.stderr, flush=True)
            ref = outs["dense"]
            scale = np.abs(ref).max()
            diff = {m: float(np.abs(outs[m] - ref).max() / scale) for m in methods if m != "dense"}
            exact = {}
            if "dense-f64" in outs:  # how far each float32-output method is from exact
                e = outs["dense-f64"]
                exact = {m: float(np.abs(outs[m] - e).max() / np.abs(e).max()) for m in methods}
            rows.append({"size": f"{h}x{w}", "hw": h * w, "res": res, "diff": diff, "exact": exact})

    threads = rows[0]["res"]["dense"]["threads"] if rows else 0
    load = os.getloadavg()
    print(f"# propagate: radius={RADIUS} beta={BETA} exp_times={EXP_TIMES} (T^{2**EXP_TIMES}), "
          f"{N_CLASSES} classes, float32 in/out; torch threads={threads}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{_dt.date.today().isoformat()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    print("| map | HW | dense time (s) | sparse time (s) | speed-up | dense peak RSS delta (MiB) "
          "| sparse peak RSS delta (MiB) | memory ratio | max abs diff / max |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        d, s = r["res"]["dense"], r["res"]["sparse"]
        print(f"| {r['size']} | {r['hw']} | {d['time_s']:.3f} | {s['time_s']:.4f} | "
              f"{d['time_s'] / s['time_s']:.0f}x | {_mib(d['rss_delta_bytes'])} | "
              f"{_mib(s['rss_delta_bytes'])} | "
              f"{d['rss_delta_bytes'] / max(s['rss_delta_bytes'], 1):.0f}x | {r['diff']['sparse']:.1e} |")
    if not args.no_f32:
        print()
        print("| map | sparse float32-accumulation time (s) | peak RSS delta (MiB) | max abs diff / max |")
        print("|---|---:|---:|---:|")
        for r in rows:
            f = r["res"]["sparse-f32"]
            print(f"| {r['size']} | {f['time_s']:.4f} | {_mib(f['rss_delta_bytes'])} | {r['diff']['sparse-f32']:.1e} |")
    exact_rows = [r for r in rows if r["exact"]]
    if exact_rows:
        print()
        print("| map | max abs diff / max vs float64 dense: " + " | ".join(methods) + " |")
        print("|---|" + "---:|" * len(methods))
        for r in exact_rows:
            print(f"| {r['size']} | " + " | ".join(f"{r['exact'][m]:.1e}" for m in methods) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
