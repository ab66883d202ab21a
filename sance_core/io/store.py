"""HDF5 artifact store: one file per stage and shard, one group per image id.

Layout of a file::

    /<image_id>/<dataset>     float16 maps in [0, 1] or uint8 labels (255 = ignore)
    /<image_id>.attrs         original size, stride, class keys, ...
    /.attrs                   stage name, config hash, sance version, ``complete``

Writers write to a temporary sibling file and rename it into place only after
``close`` succeeds, so a killed job never leaves a file that looks complete.
Readers open the file lazily on first access (never across a ``fork``), which
keeps them safe inside DataLoader workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sance_core import __version__

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_RESERVED_ATTRS = ("sance_format", "sance_version", "stage", "config_hash", "complete")


class ArtifactError(RuntimeError):
    """An artifact file is missing, incomplete or not in the expected format."""


def config_hash(config: Any) -> str:
    """Stable short hash of a (dataclass or JSON-like) config, recorded with every artifact."""
    if is_dataclass(config) and not isinstance(config, type):
        config = asdict(config)
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# HDF5's metadata cache grows adaptively with every group a reader visits (~15-25 KB of memory
# per image with HDF5 2.0, so reading 80k COCO images through one open file would hold over a
# GB). A small fixed cache keeps a reader's memory flat however many images it reads, at no
# measurable cost for the sequential reads of the stages (benchmarks/artifact_scale.py).
READER_METADATA_CACHE_BYTES = 1 << 20


# Beyond that cache, HDF5 (2.0) keeps ~10 KB for every dataset opened in a file until the file is
# closed (measured with h5py's low-level h5d.open/close alone), so a reader that stays open grows
# with the images it reads (~12 KB each: 1 GB over COCO's train set), and so does every shard file
# left open. A reader therefore closes its file after READER_REOPEN_EVERY images (reopening costs
# about a millisecond), and at most READER_MAX_OPEN files are open per process, the least recently
# used closed first. Peak memory of a stage then does not grow with the number of images or shards
# (tests/test_reliability.py measures it in fresh processes).
READER_REOPEN_EVERY = 128
READER_MAX_OPEN = 8
_open_readers: OrderedDict[int, weakref.ref] = OrderedDict()  # LRU of readers with an open file
_open_readers_pid: int | None = None


def _note_open(reader: "ArtifactReader") -> None:
    """Register ``reader`` as most recently used; close the least recently used beyond the limit."""
    global _open_readers_pid
    if _open_readers_pid != os.getpid():  # a forked child: the parent's handles are not ours to close
        _open_readers.clear()
        _open_readers_pid = os.getpid()
    _open_readers.pop(id(reader), None)
    _open_readers[id(reader)] = weakref.ref(reader)
    while len(_open_readers) > READER_MAX_OPEN:
        _, ref = _open_readers.popitem(last=False)
        oldest = ref()
        if oldest is not None:
            oldest.close()


def _bound_metadata_cache(f: h5py.File, size: int = READER_METADATA_CACHE_BYTES) -> None:
    config = f.id.get_mdc_config()
    config.set_initial_size = True
    config.initial_size = config.max_size = size
    config.min_size = min(config.min_size, size)
    config.incr_mode = 0  # H5C_incr__off: never grow
    config.flash_incr_mode = 0  # H5C_flash_incr__off
    f.id.set_mdc_config(config)


def remove_stale_temp_files(path: str | Path) -> list[Path]:
    """Delete ``.<name>.tmp*`` siblings of ``path`` left by a writer that was killed before its rename.

    Only one job ever writes a given output (Snakemake guarantees it), so a temporary file of
    the same name found when a new writer starts belongs to a dead attempt: without this, every
    killed job would leave a partial file (on COCO, gigabytes) behind for good.
    """
    path = Path(path)
    prefix = f".{path.name}.tmp"
    stale = [p for p in path.parent.iterdir() if p.name.startswith(prefix)] if path.parent.is_dir() else []
    for p in stale:
        log.warning("removing %s, a partial file left by an earlier writer that did not finish", p)
        p.unlink(missing_ok=True)
    return stale


def _check_id(image_id: str) -> None:
    if not image_id or "/" in image_id or image_id in (".", ".."):
        raise ValueError(f"image id {image_id!r} cannot be used as an HDF5 group name")


def _encode_attr(value: Any) -> Any:
    """Attributes hold plain numbers, strings or arrays; anything else is stored as JSON text."""
    if isinstance(value, (str, int, float, bool, np.integer, np.floating, np.ndarray)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, np.integer, np.floating)) for v in value):
        return np.asarray(value)
    return "json:" + json.dumps(value, default=str)


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class ArtifactWriter:
    """Write one stage's shard; use as a context manager.

    On a clean exit the temporary file is marked complete and renamed to ``path``;
    on an exception it is deleted, and ``path`` is left untouched.
    """

    def __init__(
        self,
        path: str | Path,
        stage: str,
        config: Any = None,
        compression: str = "gzip",
        compression_level: int = 4,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.stage = stage
        self.config_hash = config_hash(config) if config is not None else ""
        if compression not in ("gzip", "lzf", "none"):
            raise ValueError(f"compression must be 'gzip', 'lzf' or 'none', got {compression!r}")
        self.compression = None if compression == "none" else compression
        self.compression_opts = compression_level if compression == "gzip" else None
        self._extra_attrs = dict(attrs or {})
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._file: h5py.File | None = None

    def __enter__(self) -> "ArtifactWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.path)
        self._file = h5py.File(self._tmp, "w", track_order=True)
        a = self._file.attrs
        a["sance_format"] = FORMAT_VERSION
        a["sance_version"] = __version__
        a["stage"] = self.stage
        a["config_hash"] = self.config_hash
        a["complete"] = False
        for key, value in self._extra_attrs.items():
            a[key] = _encode_attr(value)
        return self

    def add(
        self,
        image_id: str,
        arrays: Mapping[str, np.ndarray],
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Store the arrays of one image. Float maps become float16, labels must be uint8."""
        if self._file is None:
            raise RuntimeError("ArtifactWriter.add called outside its 'with' block")
        _check_id(image_id)
        if image_id in self._file:
            raise ValueError(f"{self.path}: image id {image_id!r} written twice")
        group = self._file.create_group(image_id)
        for name, array in arrays.items():
            array = np.asarray(array)
            if np.issubdtype(array.dtype, np.floating):
                array = array.astype(np.float16)
            elif array.dtype == np.bool_:
                array = array.astype(np.uint8)
            elif array.dtype != np.uint8 and np.issubdtype(array.dtype, np.integer):
                if array.size and (array.min() < 0 or array.max() > 255):
                    raise ValueError(f"{image_id}/{name}: integer data must fit uint8 (0..255)")
                array = array.astype(np.uint8)
            chunks = None
            if array.ndim >= 2 and array.size > 0:
                # one chunk per class plane: readers usually want whole planes
                chunks = (1,) * (array.ndim - 2) + array.shape[-2:]
            group.create_dataset(
                name,
                data=array,
                chunks=chunks,
                compression=self.compression if chunks else None,
                compression_opts=self.compression_opts if chunks else None,
                shuffle=bool(chunks and self.compression),
            )
        for key, value in (attrs or {}).items():
            group.attrs[key] = _encode_attr(value)

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._file is not None
        try:
            if exc_type is None:
                self._file.attrs["complete"] = True
                self._file.attrs["n_images"] = len(self._file)
            self._file.close()
        finally:
            self._file = None
            if exc_type is None:
                os.replace(self._tmp, self.path)
                log.info("wrote %s", self.path)
            else:
                self._tmp.unlink(missing_ok=True)


class ArtifactReader:
    """Lazy, read-only access to an artifact file; cheap to pickle into DataLoader workers."""

    def __init__(self, path: str | Path, expect_stage: str | None = None) -> None:
        self.path = Path(path)
        self.expect_stage = expect_stage
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._reads = 0
        if not self.path.exists():
            raise ArtifactError(f"{self.path}: artifact file does not exist")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        state["_reads"] = 0
        return state

    @property
    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            try:
                f = h5py.File(self.path, "r")
            except OSError as err:
                raise ArtifactError(f"{self.path}: not a readable HDF5 file ({err})") from err
            _bound_metadata_cache(f)
            if not bool(f.attrs.get("complete", False)):
                f.close()
                raise ArtifactError(f"{self.path}: artifact is incomplete (its writer did not finish)")
            stage = f.attrs.get("stage")
            if self.expect_stage is not None and stage != self.expect_stage:
                f.close()
                raise ArtifactError(f"{self.path}: expected a {self.expect_stage!r} artifact, found {stage!r}")
            self._file, self._pid, self._reads = f, os.getpid(), 0
        _note_open(self)
        return self._file

    def _count_read(self) -> None:
        """After READER_REOPEN_EVERY images, close the file (reopened on the next access) to free HDF5's
        per-dataset state."""
        self._reads += 1
        if self._reads >= READER_REOPEN_EVERY:
            self.close()

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
            _open_readers.pop(id(self), None)
        self._file = None
        self._reads = 0

    def __enter__(self) -> "ArtifactReader":
        _ = self.file
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: _decode_attr(v) for k, v in self.file.attrs.items()}

    def ids(self) -> list[str]:
        return list(self.file.keys())

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.file

    def __len__(self) -> int:
        return len(self.file)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def keys(self, image_id: str) -> list[str]:
        return list(self._group(image_id).keys())

    def _group(self, image_id: str) -> h5py.Group:
        try:
            return self.file[image_id]
        except KeyError:
            raise KeyError(f"{self.path}: no image id {image_id!r}") from None

    def read(self, image_id: str, name: str | None = None) -> dict[str, np.ndarray] | np.ndarray:
        """One array (float16 maps come back as float32) or all arrays of an image."""
        group = self._group(image_id)
        if name is not None:
            if name not in group:
                raise KeyError(f"{self.path}: image {image_id!r} has no dataset {name!r} (has {list(group)})")
            out: dict[str, np.ndarray] | np.ndarray = _as_float32(group[name][()])
        else:
            out = {k: _as_float32(v[()]) for k, v in group.items()}
        del group
        self._count_read()
        return out

    def image_attrs(self, image_id: str) -> dict[str, Any]:
        return {k: _decode_attr(v) for k, v in self._group(image_id).attrs.items()}


def _as_float32(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) if array.dtype == np.float16 else array


def open_shards(paths: list[str | Path], expect_stage: str | None = None) -> dict[str, ArtifactReader]:
    """Map every image id to the reader of the shard that holds it (shards never overlap)."""
    index: dict[str, ArtifactReader] = {}
    for path in paths:
        reader = ArtifactReader(path, expect_stage)
        for image_id in reader.ids():
            if image_id in index:
                raise ArtifactError(f"image id {image_id!r} is in both {index[image_id].path} and {path}")
            index[image_id] = reader
    return index
