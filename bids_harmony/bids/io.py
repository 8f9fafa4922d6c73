"""Atomic file writes.

Every file in the output dataset is first written under a hidden temporary name
in its final directory and then renamed over the final name (``os.replace`` is
atomic on POSIX within one file system).  An interrupted run therefore leaves
either the previous complete file or the new complete file, never a truncated
one that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` and move it onto ``path`` on success.

    The temporary name keeps the full extension (``.nii.gz``) so writers that
    pick a format from the name behave as for the final file.  ``durable``
    flushes the file to disk before the rename (model files, which are written
    once and loaded by every later run).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{final.name}")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented, key-sorted JSON atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")


def copy_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy ``src`` to ``dst`` atomically (contents only, no permissions)."""
    with atomic_path(dst) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
        while chunk := fin.read(1 << 22):
            fout.write(chunk)
    return Path(dst)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's contents, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_nifti(img: Any, path: str | os.PathLike[str]) -> Path:
    """Save a nibabel image atomically."""
    import nibabel as nb

    with atomic_path(path) as tmp:
        nb.save(img, str(tmp))
    return Path(path)


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and paths for ``json.dumps``."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
