"""Atomic file writes (temporary sibling + rename) and input-path normalisation.

Every artifact is written through :func:`atomic_path`: a reader never sees a half-written
file, and a writer killed mid-way leaves only a ``.<name>.tmp-<pid><suffix>`` sibling, which
:func:`sance_core.io.store.remove_stale_temp_files` deletes when the next writer starts.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temp_sibling(path: str | Path) -> Path:
    """``.<name>.tmp-<pid><suffix>`` next to ``path`` (the suffix kept so writers pick the format)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    Works for files and for folders (an existing folder at ``path`` is replaced as a whole).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and not tmp.is_symlink() and path.exists():
            _remove(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (parent folders created)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def as_paths(value: Any) -> list[str]:
    """A Snakemake input entry (one path, a list of paths, or nothing) as a list of path strings."""
    if value is None or value == "":
        return []
    return [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value]
