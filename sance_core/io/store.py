"""HDF5 artifact store: one file per stage and shard, one group per image id.

Layout of a file::

    /<image_id>/<dataset>     float16 maps in [0, 1] or uint8 labels (255 = ignore)
    /<image_id>.attrs         original size, stride, class keys, ...
    /.attrs                   stage name, config hash, sance version, ``complete``

Writers write to a temporary sibling file and rename it into place only after
``close`` succeeds, so a killed job never leaves a file that looks complete.

Checksums (format 2): every dataset carries HDF5's Fletcher32 filter (checked by HDF5 on each
read) and a CRC-32 of its stored bytes (``_sance_data_crc``: also catches a damaged chunk index,
which HDF5 reads back as fill values without complaint), every image group a CRC-32 of its
attributes and of its datasets' shapes and dtypes (``_sance_crc``), and the file a CRC-32 of its
ids and file attributes (``_sance_index_crc``).
Readers check them; damage raises :class:`ArtifactDamagedError` naming the file and how to
rebuild it. Format-1 files (no checksums) are still read.
Readers open the file lazily on first access (never across a ``fork``), which
keeps them safe inside DataLoader workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import traceback
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sance_core import __version__
from sance_core.io.files import DiskFullError, is_disk_full

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
_RESERVED_ATTRS = ("sance_format", "sance_version", "stage", "config_hash", "complete")
_GROUP_CRC = "_sance_crc"
_DATA_CRC = "_sance_data_crc"
_INTERNAL_ATTRS = (_GROUP_CRC, _DATA_CRC)
_INDEX_CRC = "_sance_index_crc"


class ArtifactError(RuntimeError):
    """An artifact file is missing, incomplete or not in the expected format."""


def rebuild_hint(path: str | Path) -> str:
    """How to rebuild an artifact of the workflow: remove it; Snakemake then rebuilds it and what depends on it."""
    import shlex

    return (f"rebuild it: rm {shlex.quote(str(path))} and run snakemake again (it rebuilds the missing "
            "file and what depends on it; every snakemake run also rebuilds damaged artifacts that it finds by itself)")


class ArtifactDamagedError(ArtifactError):
    """An artifact's content fails its checksums or its file structure is broken (truncated, overwritten)."""

    def __init__(self, path: str | Path, what: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: damaged artifact ({what}); {rebuild_hint(path)}")


def _crc(obj: Any) -> int:
    import zlib

    return zlib.crc32(json.dumps(obj, sort_keys=True, default=str).encode())


def _group_crc(group: h5py.Group) -> int:
    """CRC-32 of an image group's attributes and of its datasets' names, shapes and dtypes."""
    attrs = {k: _decode_attr(v) for k, v in group.attrs.items() if k != _GROUP_CRC}
    datasets = {name: [list(d.shape), d.dtype.str] for name, d in group.items()}
    return _crc({"attrs": attrs, "datasets": datasets})


def _array_crc(array: np.ndarray) -> int:
    import zlib

    return zlib.crc32(np.ascontiguousarray(array).tobytes())


def _index_crc(f: h5py.File) -> int:
    """CRC-32 of a file's image ids and file attributes."""
    attrs = {k: _decode_attr(v) for k, v in f.attrs.items() if k != _INDEX_CRC}
    return _crc({"ids": list(f.keys()), "attrs": attrs})


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
WRITER_SPACE_MARGIN = 1 << 20  # bytes kept free for HDF5's metadata when a writer closes its file
_open_readers: OrderedDict[int, weakref.ref] = OrderedDict()  # LRU of readers with an open file
_open_readers_pid: int | None = None


def _note_open(reader: ArtifactReader) -> None:
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

    def __enter__(self) -> ArtifactWriter:
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
        self._check_space(sum(np.asarray(a).nbytes for a in arrays.values()))
        group = self._file.create_group(image_id)
        data_crc: dict[str, int] = {}
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
            elif array.size > 0:  # small vectors and scalars: one chunk, so that they carry a checksum too
                chunks = array.shape or None
            compress = bool(chunks and array.ndim >= 2)
            dataset = group.create_dataset(
                name,
                data=array,
                chunks=chunks,
                compression=self.compression if compress else None,
                compression_opts=self.compression_opts if compress else None,
                shuffle=bool(compress and self.compression),
                fletcher32=bool(chunks),
            )
            self._flush(dataset)
            data_crc[name] = _array_crc(array)
        for key, value in (attrs or {}).items():
            group.attrs[key] = _encode_attr(value)
        group.attrs[_DATA_CRC] = _encode_attr(data_crc)
        group.attrs[_GROUP_CRC] = _group_crc(group)

    def _check_space(self, nbytes: int) -> None:
        """Refuse an image whose data (uncompressed) would not fit with WRITER_SPACE_MARGIN to spare.

        HDF5 meets a full disk badly: failed writes of cached data are only printed, and a file
        that hit ENOSPC can crash the process when it is closed. Checking first keeps HDF5 out of
        that state; :meth:`_flush` still catches what the estimate misses.
        """
        stat = os.statvfs(self._tmp.parent)
        if stat.f_bavail * stat.f_frsize < nbytes + WRITER_SPACE_MARGIN:
            raise DiskFullError(self.path)

    def _flush(self, dataset: h5py.Dataset) -> None:
        """Write the dataset's cached chunks now: HDF5 would otherwise write them when the object is
        freed, where a failed write (a full disk) is only printed, never raised."""
        try:
            dataset.flush()
        except Exception as err:
            if not is_disk_full(err):
                raise
            full = True
        else:
            full = False
        if full:  # raised outside the handler: no traceback keeps HDF5 objects alive past the file's close
            raise DiskFullError(self.path)

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self._file is not None
        done = False
        if tb is not None:  # free the HDF5 objects the failed frames hold before the file closes (else a
            traceback.clear_frames(tb.tb_next)  # dataset freed after its file closed on a full disk crashes HDF5)
        try:
            if exc_type is None:
                self._file.attrs["complete"] = True
                self._file.attrs["n_images"] = len(self._file)
                self._file.attrs[_INDEX_CRC] = _index_crc(self._file)
            self._file.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
                done = True
                log.info("wrote %s", self.path)
        except Exception as err:
            if is_disk_full(err):
                raise DiskFullError(self.path) from err
            raise
        finally:
            self._file = None
            if not done:
                self._tmp.unlink(missing_ok=True)
        if exc is not None and isinstance(exc, Exception) and is_disk_full(exc):
            raise DiskFullError(self.path) from exc
        return False


class ArtifactReader:
    """Lazy, read-only access to an artifact file; cheap to pickle into DataLoader workers."""

    def __init__(self, path: str | Path, expect_stage: str | None = None) -> None:
        self.path = Path(path)
        self.expect_stage = expect_stage
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._reads = 0
        self._index_checked = False
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
                raise ArtifactDamagedError(self.path, f"not a readable HDF5 file: {err}") from None
            _bound_metadata_cache(f)
            try:
                complete = bool(f.attrs.get("complete", False))
                if complete and not self._index_checked and _INDEX_CRC in f.attrs:
                    if int(f.attrs[_INDEX_CRC]) != _index_crc(f):
                        raise ArtifactDamagedError(self.path, "its ids or file attributes fail their checksum")
                    self._index_checked = True
            except Exception as err:  # noqa: BLE001 - broken metadata fails in many ways; all mean damage
                f.close()
                if isinstance(err, ArtifactDamagedError):
                    raise
                raise ArtifactDamagedError(self.path, f"unreadable file structure: {err}") from None
            if not complete:
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

    def __enter__(self) -> ArtifactReader:
        _ = self.file
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: _decode_attr(v) for k, v in self.file.attrs.items() if k != _INDEX_CRC}

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
            present = image_id in self.file
        except Exception as err:  # noqa: BLE001
            raise ArtifactDamagedError(self.path, f"unreadable index ({err})") from None
        if not present:
            raise KeyError(f"{self.path}: no image id {image_id!r}")
        try:
            group = self.file[image_id]
            if _GROUP_CRC in group.attrs and int(group.attrs[_GROUP_CRC]) != _group_crc(group):
                raise ArtifactDamagedError(self.path, f"image {image_id!r}: its attributes, shapes or dtypes "
                                                      "fail their checksum")
        except Exception as err:  # noqa: BLE001 - broken metadata fails in many ways; all mean damage
            if isinstance(err, ArtifactDamagedError):
                raise
            raise ArtifactDamagedError(self.path, f"image {image_id!r}: unreadable ({err})") from None
        return group

    def read(self, image_id: str, name: str | None = None) -> dict[str, np.ndarray] | np.ndarray:
        """One array (float16 maps come back as float32) or all arrays of an image (checksums verified)."""
        group = self._group(image_id)
        if name is not None and name not in group:
            raise KeyError(f"{self.path}: image {image_id!r} has no dataset {name!r} (has {list(group)})")
        try:
            names = [name] if name is not None else list(group)
            raw = {k: group[k][()] for k in names}
            expected = _decode_attr(group.attrs[_DATA_CRC]) if _DATA_CRC in group.attrs else {}
        except Exception as err:  # noqa: BLE001 - Fletcher32 mismatch, broken chunk index, ...
            del group
            raise ArtifactDamagedError(self.path, f"image {image_id!r}: data fails its checksum or is "
                                                  f"unreadable ({str(err).splitlines()[0]})") from None
        del group
        for k, array in raw.items():
            if k in expected and _array_crc(array) != int(expected[k]):
                raise ArtifactDamagedError(self.path, f"image {image_id!r}: dataset {k!r} fails its checksum")
        out: dict[str, np.ndarray] | np.ndarray = (
            _as_float32(raw[name]) if name is not None else {k: _as_float32(v) for k, v in raw.items()})
        self._count_read()
        return out

    def image_attrs(self, image_id: str) -> dict[str, Any]:
        return {k: _decode_attr(v) for k, v in self._group(image_id).attrs.items() if k not in _INTERNAL_ATTRS}


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


def verify_artifact(path: str | Path) -> str | None:
    """Read every image of an artifact, checking every checksum; None when sound, else what is wrong."""
    try:
        with ArtifactReader(path) as reader:
            version = int(reader.attrs.get("sance_format", 1))
            for image_id in reader.ids():
                reader.image_attrs(image_id)
                reader.read(image_id)
            if reader.attrs.get("n_images", len(reader)) != len(reader):
                return str(ArtifactDamagedError(path, f"holds {len(reader)} images, its writer wrote "
                                                      f"{reader.attrs['n_images']}"))
            if version < 2:
                log.warning("%s: format %d, written without checksums; only its structure was checked", path, version)
    except ArtifactError as err:
        return str(err) if "rebuild it" in str(err) else f"{err}; {rebuild_hint(path)}"
    return None


def quick_check(path: str | Path) -> str | None:
    """Cheap check of an artifact (opens it; ids and file attributes against their checksum, no data
    read): catches truncated, overwritten and unfinished files. None when it passes."""
    try:
        reader = ArtifactReader(path)
        try:
            _ = reader.file
        finally:
            reader.close()
    except ArtifactError as err:
        return str(err)
    return None


def mark_damaged_artifacts(folder: str | Path) -> list[Path]:
    """Give every ``*.h5`` under ``folder`` that fails :func:`quick_check` the modification time 0
    (logging why): older than its inputs, Snakemake rebuilds it and reruns what reads it, leaving
    its good neighbours alone. (A removed intermediate file would not be rebuilt while the files
    made from it are up to date.) Returns the marked files."""
    marked = []
    folder = Path(folder)
    if not folder.is_dir():
        return marked
    for path in sorted(folder.rglob("*.h5")):
        if path.name.startswith("."):
            continue
        problem = quick_check(path)
        if problem is not None:
            log.warning("damaged artifact %s will be rebuilt: %s", path, problem.split("; rebuild")[0])
            os.utime(path, (0, 0))
            marked.append(path)
    return marked
