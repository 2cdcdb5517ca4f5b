"""Crash-safe file writes and file digests: the one copy every layer uses.

Adapters, checkpoints, shards, manifests, reports, the privacy ledger and the registry are all
written so that a reader (or a process restarted after a crash) sees either the old content or
the new one, never half of each: write to a temporary file in the same directory (so the rename
cannot cross a filesystem), flush it to disk, then ``os.replace`` it over the target. A
directory is built beside its final place and swapped in with two renames.

This module sits below every package of feddx (it imports nothing of feddx), so ``data/`` can
use it as freely as ``model/`` or ``serve/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_BLOCK = 1 << 20


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks (adapters, shards, GGUF files)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_open(
    path: Path, mode: str = "w", *, encoding: str | None = "utf-8", private: bool = False
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it is flushed,
    fsynced and renamed over ``path``; on an exception it is removed and ``path`` is untouched.

    ``mode`` is ``"w"`` (text) or ``"wb"`` (bytes). The temporary file is created with mode 0600
    by ``mkstemp``, so a private file (a key) is never readable by others, not even briefly;
    the finished file gets 0600 with ``private`` and 0644 otherwise.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600 if private else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, *, private: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb", private=private) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str, *, private: bool = False) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w", private=private) as f:
        f.write(text)


def atomic_write_json(path: Path, obj: Any, *, indent: int | None = 1, **kwargs: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON (and a final newline) atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, **kwargs) + "\n")


def atomic_write_with(path: Path, write: Callable[[Path], None]) -> None:
    """Let ``write(tmp)`` produce a file (e.g. a library's ``savefig`` or ``save_file``) at a
    temporary path beside ``path``, then rename it over ``path``; nothing is left on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temp_dir_beside(final: Path) -> Path:
    """A fresh empty directory next to ``final`` to build its replacement in (same filesystem,
    so :func:`replace_dir` is two renames)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished directory ``tmp`` to ``final``, discarding an older ``final``.

    The old directory is first renamed aside, then ``tmp`` renamed into place, then the old one
    deleted: both renames are atomic, so between them ``final`` is briefly absent, never
    half-written, and a crash at any point leaves either version whole.
    """
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{os.getpid()}-{time.time_ns()}")
        final.rename(trash)
        tmp.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(final)


@contextmanager
def building_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on a clean exit it replaces ``final``
    (:func:`replace_dir`), on an exception it is deleted and ``final`` is untouched."""
    tmp = temp_dir_beside(final)
    try:
        yield tmp
        replace_dir(tmp, Path(final))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


__all__ = [
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_write_with",
    "building_dir",
    "file_sha256",
    "replace_dir",
    "temp_dir_beside",
]
