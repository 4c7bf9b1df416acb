"""Crash-safe file operations: write to a temp name, fsync, ``os.replace``, fsync the directory."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .watch import registry_changed


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Makes a change of ``path``'s entries durable; every write to the registry ends with one, so this is
    also where cached resolutions in this process learn of it (registry/watch.py)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    registry_changed()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Readers see the old content or the new, never a torn file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; registry files are world-readable like the artifacts
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_symlink(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` (relative) atomically: a reader sees the old or the new target, never none."""
    tmp = link.parent / f".{link.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)


@contextmanager
def assembled_dir(final: Path, *, replace: bool = False, durable: bool = True) -> Iterator[Path]:
    """A directory built under a temporary name beside ``final`` and renamed into place when the block
    succeeds, so a reader sees all of it or none of it; removed when the block fails. ``replace``: an
    existing ``final`` is removed first (generated entries); else the rename fails if it exists.
    ``durable``: fsync the new directory and its parent (registry versions)."""
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=parent))
    try:
        # mkdtemp makes 0700: a backend running as another user (Triton, TorchServe) must read it
        staging.chmod(0o755)
        yield staging
        if durable:
            fsync_dir(staging)
        if replace and final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        if durable:
            fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
