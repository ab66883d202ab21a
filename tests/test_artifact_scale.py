"""Artifacts at scale: a reader's memory does not grow with the images it reads; the benchmark runs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from sance_core.io.store import ArtifactReader, ArtifactWriter


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_reader_memory_stays_flat_over_thousands_of_images(tmp_path):
    """HDF5's adaptive metadata cache would hold ~15 KB per visited image; the reader bounds it."""
    path = tmp_path / "seeds.h5"
    seed = np.zeros((16, 16), np.uint8)
    with ArtifactWriter(path, "seeds", {"t": 1}) as writer:
        for i in range(3000):
            writer.add(f"img{i:05d}", {"seed": seed}, {"class_keys": [1], "size": [16, 16], "stride": 4})
    reader = ArtifactReader(path, expect_stage="seeds")
    ids = reader.ids()
    for image_id in ids[:1000]:
        reader.read(image_id)
        reader.image_attrs(image_id)
    after_1000 = rss_mb()
    for image_id in ids[1000:]:
        reader.read(image_id)
        reader.image_attrs(image_id)
    growth = rss_mb() - after_1000
    reader.close()
    assert growth < 8, f"reading 2,000 more images grew memory by {growth:.1f} MB"


@pytest.mark.slow
def test_benchmark_script_reports_every_stage(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "artifact_scale.py"), "--sizes", "2", "4",
                           "--stages", "seeds", "maps", "--height", "64", "--width", "64", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [(r["stage"], r["images"]) for r in result["rows"]] == [("seeds", 2), ("seeds", 4), ("maps", 2), ("maps", 4)]
    assert all(r["bytes_per_image"] > 0 and r["write_images_per_s"] > 0 for r in result["rows"])
