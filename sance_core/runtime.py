"""Process-level helpers: logging set-up, device choice, seeding. Called by entry points only."""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

import numpy as np

DEVICES = ("auto", "cpu", "cuda")


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to a file; stdout is never hijacked."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def resolve_device(name: str = "auto"):
    """'auto' picks CUDA when a GPU is visible, else CPU; 'cuda' without a GPU is an error."""
    import torch

    if name not in DEVICES and not name.startswith("cuda:"):
        raise ValueError(f"device must be one of {DEVICES} or 'cuda:N', got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but no CUDA device is visible")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a rerun with the same config repeats itself."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def set_threads(threads: int) -> None:
    """Respect the job's ``threads`` so parallel Snakemake jobs do not oversubscribe cores.

    Torch reads ``OMP_NUM_THREADS`` when it is first imported, so jobs that never touch
    torch (summaries, figures) do not pay for importing it here.
    """
    threads = max(1, int(threads))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def runtime_environment(device=None) -> dict:
    """What a trained model's last bits depend on besides its config, for its ``config.json``.

    The same config and seed repeat a training bit for bit on one machine, but another CPU (the
    kernels torch picks for it), another thread count or another torch build part the trainings
    in their last bits, and a short schedule carries that into the scores (docs/RESULTS.md,
    "make demo at commit 2125a5d on a second machine"). Recording these lets a user tell such a
    difference from a change of settings. ``device``: the torch device the model trained on.
    """
    import platform

    import torch

    from sance_core import __version__

    device = torch.device(device) if device is not None else torch.device("cpu")
    cuda = device.type == "cuda"
    return {
        "sance": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
    }


def visible_devices(name: str = "auto") -> list:
    """Every device one job may use: all visible GPUs for 'auto'/'cuda' (SLURM's --gpus=N or
    CUDA_VISIBLE_DEVICES decide which), only the named one for 'cuda:N', else the CPU."""
    import torch

    if name in ("auto", "cuda") and torch.cuda.is_available():
        return [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    return [resolve_device(name)]


def map_on_devices(make_worker, items, devices, queue_size: int = 4):
    """``make_worker(device)(item)`` for every item, yielded in input order, spread over devices.

    One device: a plain loop in this process. Several: one spawned process per device takes
    items round-robin (item i on device i mod n) and sends results back through a queue of
    ``queue_size`` per device, so the caller (the stage's single HDF5 writer) consumes them in
    order while all devices work, and memory stays bounded. ``make_worker`` must be picklable
    (a module-level function or a functools.partial of one); it builds the model once per
    device. A failing item raises RuntimeError naming the item, after stopping the workers.
    """
    items = list(items)
    devices = list(devices)
    if not devices:
        raise ValueError("map_on_devices needs at least one device")
    if len(devices) == 1 or len(items) <= 1:
        work = make_worker(devices[0])
        for item in items:
            yield work(item)
        return
    import multiprocessing as mp
    import queue as queue_lib

    import torch

    threads = torch.get_num_threads()  # the job's share of cores, for each worker as in this process
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue(maxsize=queue_size) for _ in devices]
    procs = [ctx.Process(target=_device_worker, daemon=True,
                         args=(make_worker, str(d), items[k::len(devices)], queues[k], threads))
             for k, d in enumerate(devices)]
    for p in procs:
        p.start()
    try:
        for i, item in enumerate(items):
            k = i % len(devices)
            while True:
                try:
                    status, value = queues[k].get(timeout=5)
                    break
                except queue_lib.Empty:
                    if not procs[k].is_alive():
                        raise RuntimeError(
                            f"worker on {devices[k]} died (exit code {procs[k].exitcode}) before item {item!r}"
                        ) from None
            if status == "error":
                message, trace = value
                raise RuntimeError(f"item {item!r} failed on {devices[k]}: {message}\n{trace}")
            yield value
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(timeout=10)


def _device_worker(make_worker, device: str, items, results, threads: int) -> None:
    import traceback

    import torch

    torch.set_num_threads(threads)
    try:
        work = make_worker(torch.device(device))
        for item in items:
            results.put(("ok", work(item)))
    except Exception as err:  # noqa: BLE001 - sent to the parent, which raises it
        results.put(("error", (f"{type(err).__name__}: {err}", traceback.format_exc(limit=5))))
