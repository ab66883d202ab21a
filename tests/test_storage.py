"""HDF5 artifact store: round trip, atomic write, lazy readers, inspect."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from sance_core.io.store import ArtifactError, ArtifactReader, ArtifactWriter, config_hash, open_shards


def _write(path, n=3, stage="cam"):
    rng = np.random.default_rng(0)
    data = {}
    with ArtifactWriter(path, stage=stage, config={"scales": [1.0, 0.5]}, attrs={"classes": ["a", "b"]}) as w:
        for i in range(n):
            maps = rng.random((2, 8, 10)).astype(np.float32)
            label = rng.integers(0, 3, (8, 10)).astype(np.uint8)
            label[0, 0] = 255
            w.add(f"img_{i}", {"cam": maps, "label": label}, attrs={"class_keys": [1, 3], "size": (32, 40)})
            data[f"img_{i}"] = (maps, label)
    return data


def test_round_trip_types_attrs_and_layout(tmp_path):
    path = tmp_path / "shard0.h5"
    data = _write(path)
    reader = ArtifactReader(path, expect_stage="cam")
    assert reader.ids() == ["img_0", "img_1", "img_2"]
    assert reader.attrs["stage"] == "cam"
    assert reader.attrs["complete"] is True or reader.attrs["complete"] == 1
    assert reader.attrs["config_hash"] == config_hash({"scales": [1.0, 0.5]})
    assert reader.attrs["classes"] == ["a", "b"]
    for image_id, (maps, label) in data.items():
        got = reader.read(image_id)
        assert got["cam"].dtype == np.float32
        np.testing.assert_allclose(got["cam"], maps, atol=1e-3)  # float16 storage
        np.testing.assert_array_equal(got["label"], label)
        assert reader.image_attrs(image_id) == {"class_keys": [1, 3], "size": [32, 40]}
    with h5py.File(path) as f:
        ds = f["img_0/cam"]
        assert ds.dtype == np.float16 and ds.chunks == (1, 8, 10) and ds.compression == "gzip" and ds.shuffle
        assert f["img_0/label"].dtype == np.uint8


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        ArtifactReader(tmp_path / "nope.h5")
    path = tmp_path / "a.h5"
    _write(path, n=1)
    with pytest.raises(ArtifactError, match="expected a 'seeds' artifact"):
        ArtifactReader(path, expect_stage="seeds").ids()
    with pytest.raises(KeyError, match="no image id 'zzz'"):
        ArtifactReader(path).read("zzz")


def test_failed_writer_leaves_nothing(tmp_path):
    path = tmp_path / "shard.h5"
    with pytest.raises(RuntimeError):
        with ArtifactWriter(path, stage="cam") as w:
            w.add("a", {"x": np.zeros((2, 2), np.float32)})
            raise RuntimeError("crash mid-way")
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_no_complete_looking_file(tmp_path):
    """SIGKILL mid-write: the final name never appears, and a partial temp file is refused."""
    path = tmp_path / "shard.h5"
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from sance_core.io.store import ArtifactWriter
        with ArtifactWriter({str(path)!r}, stage="cam") as w:
            w.add("a", {{"x": np.zeros((4, 4), np.float32)}})
            w._file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -9
    assert not path.exists()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".shard.h5.tmp")
    with pytest.raises(ArtifactError):
        ArtifactReader(leftovers[0]).ids()


def test_reader_is_lazy_and_picklable(tmp_path):
    path = tmp_path / "a.h5"
    _write(path, n=2)
    reader = ArtifactReader(path)
    assert reader._file is None  # nothing opened until first access
    reader.ids()
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._file is None
    assert clone.ids() == ["img_0", "img_1"]


def test_open_shards_indexes_ids_and_refuses_overlap(tmp_path):
    _write(tmp_path / "0.h5", n=2)
    with ArtifactWriter(tmp_path / "1.h5", stage="cam") as w:
        w.add("other", {"x": np.ones((2, 2), np.float32)})
    index = open_shards([tmp_path / "0.h5", tmp_path / "1.h5"])
    assert sorted(index) == ["img_0", "img_1", "other"]
    with pytest.raises(ArtifactError, match="is in both"):
        open_shards([tmp_path / "0.h5", tmp_path / "0.h5"])


def test_writer_rejects_bad_ids_and_values(tmp_path):
    with pytest.raises(ValueError):
        with ArtifactWriter(tmp_path / "x.h5", stage="s") as w:
            w.add("../evil", {"x": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="fit uint8"):
        with ArtifactWriter(tmp_path / "y.h5", stage="s") as w:
            w.add("a", {"x": np.full((2, 2), 300, np.int32)})
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()


def test_inspect_cli_lists_and_renders(tmp_path):
    from sance_core.cli import main

    path = tmp_path / "a.h5"
    _write(path, n=2)
    proc = subprocess.run([sys.executable, "-m", "sance_core", "inspect", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "2 image(s)" in proc.stdout and "img_1" in proc.stdout and "cam: float32 2x8x10" in proc.stdout
    out = tmp_path / "img.png"
    assert main(["inspect", str(path), "img_0", "--png", str(out)]) == 0
    assert out.stat().st_size > 1000
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert main(["inspect", str(path), "missing_id"]) == 2
