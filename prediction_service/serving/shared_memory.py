"""POSIX shared-memory regions a co-located client registers (the OIP system shared-memory extension),
per worker. A region is a span of a file in /dev/shm, mapped once at registration and unmapped on
unregister and at shutdown; inference reads inputs from it and writes outputs into it.

Only /dev/shm is ever opened: a key is one name (tritonclient's "/name" form, the slash optional), opened
relative to the /dev/shm directory with O_NOFOLLOW, so neither a path nor a symlink leads elsewhere.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadRequest, Conflict
from ..types import RegionStatus

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
MAX_REGIONS = 256
"""Regions one worker holds at most: each is a mapping and its name a dict entry."""
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_KEY = re.compile(r"/?([A-Za-z0-9_.\-]{1,255})")


@dataclass
class _Region:
    status: RegionStatus
    mapping: mmap.mmap
    fd: int
    """Kept open so every access can check the object still holds the span (see _span)."""

    def close(self) -> None:
        self.mapping.close()
        os.close(self.fd)


class SharedMemoryRegistry:
    """Regions by name. Thread-safe: decoding may run off the event loop while a region is unregistered."""

    def __init__(self, directory: Path = SHM_DIR):
        self.directory = directory
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()

    # ---- the extension's calls -------------------------------------------------------------------

    def register(self, name: str, key: str, offset: int, byte_size: int) -> RegionStatus:
        """Map ``byte_size`` bytes at ``offset`` of /dev/shm/<key> as region ``name``."""
        if not _NAME.fullmatch(name):
            raise BadRequest("a region name is 1-128 letters, digits, '_', '.' or '-'", {"region": name})
        match = _KEY.fullmatch(key) if isinstance(key, str) else None
        if match is None or match.group(1) in (".", ".."):
            raise BadRequest("a shared-memory key is one name in /dev/shm ('/name'): letters, digits, '_', '.' "
                             "or '-', no other '/'", {"region": name})
        for field, value in (("offset", offset), ("byte_size", byte_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise BadRequest(f"{field} must be a non-negative integer", {"region": name, field: value})
        if byte_size == 0:
            raise BadRequest("byte_size must be positive", {"region": name})
        with self._lock:
            if name in self._regions:
                raise Conflict(f"shared-memory region {name!r} is already registered: unregister it first",
                               {"region": name})
            if len(self._regions) >= MAX_REGIONS:
                raise BadRequest(f"at most {MAX_REGIONS} shared-memory regions may be registered",
                                 {"max_regions": MAX_REGIONS})
            mapping, fd = self._map(name, match.group(1), offset, byte_size)
            status = RegionStatus(name, key, offset, byte_size)
            self._regions[name] = _Region(status, mapping, fd)
        log.info("shared-memory region %s registered: %s [%d, +%d)", name, key, offset, byte_size)
        return status

    def unregister(self, name: str | None = None) -> list[str]:
        """Unmap ``name`` (None: every region); the names unregistered. An unknown name is no error, as
        in Triton: the region is not registered either way."""
        with self._lock:
            names = list(self._regions) if name is None else [name] if name in self._regions else []
            regions = [self._regions.pop(n) for n in names]
        for region in regions:
            region.close()
        return names

    def status(self, name: str | None = None) -> list[RegionStatus]:
        with self._lock:
            if name is None:
                return [region.status for region in self._regions.values()]
            if name not in self._regions:
                raise _unknown(name)
            return [self._regions[name].status]

    def close(self) -> None:
        """At shutdown: every mapping goes."""
        self.unregister(None)

    # ---- SharedMemoryRegions (oip/shared_memory.py): what the codecs call -------------------------

    def check(self, region: str, offset: int, byte_size: int) -> None:
        with self._lock:
            self._span(region, offset, byte_size)

    def read(self, region: str, offset: int, byte_size: int) -> bytearray:
        with self._lock:  # held while copying: an unregister waits instead of unmapping under the read
            start, mapping = self._span(region, offset, byte_size)
            # one copy, writable: the views are released before the lock is, so close() never finds one
            with memoryview(mapping) as whole, whole[start:start + byte_size] as span:
                return bytearray(span)

    def write(self, region: str, offset: int, byte_size: int, data: bytes) -> None:
        if len(data) > byte_size:
            raise BadRequest(f"output of {len(data)} bytes does not fit the {byte_size} bytes offered in "
                             f"region {region!r}", {"region": region, "bytes": len(data), "byte_size": byte_size})
        with self._lock:
            start, mapping = self._span(region, offset, byte_size)
            mapping[start:start + len(data)] = data

    # ---- helpers -----------------------------------------------------------------------------------

    def _span(self, name: str, offset: int, byte_size: int) -> tuple[int, mmap.mmap]:
        """The mapping and where the span starts in it, once it is known to lie inside the region."""
        region = self._regions.get(name)
        if region is None:
            raise _unknown(name)
        size = region.status.byte_size
        if offset < 0 or byte_size < 0 or offset + byte_size > size:
            raise BadRequest(f"offset {offset} + byte_size {byte_size} runs past region {name!r} ({size} bytes)",
                             {"region": name, "offset": offset, "byte_size": byte_size, "region_bytes": size})
        end = region.status.offset + region.status.byte_size
        # touching a mapped page past the end of the file is SIGBUS, which would end the worker: a client
        # that shrank the object since it was registered gets a 400 instead
        if os.fstat(region.fd).st_size < end:
            raise BadRequest(f"the shared-memory object of region {name!r} is now shorter than the region: "
                             "unregister it and register it again", {"region": name})
        return region.status.offset + offset, region.mapping

    def _map(self, name: str, filename: str, offset: int, byte_size: int) -> tuple[mmap.mmap, int]:
        try:
            directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise BadRequest(f"{self.directory} is not available on this host: {exc.strerror}") from None
        try:
            fd = os.open(filename, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
        except OSError as exc:  # missing, a symlink (ELOOP), not permitted
            raise BadRequest(f"shared-memory key {filename!r} cannot be opened in {self.directory}: "
                             f"{exc.strerror}", {"region": name}) from None
        finally:
            os.close(directory)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise BadRequest(f"shared-memory key {filename!r} is not a shared-memory object", {"region": name})
            if offset + byte_size > info.st_size:
                raise BadRequest(f"offset {offset} + byte_size {byte_size} runs past the {info.st_size} bytes of "
                                 f"{filename!r}", {"region": name, "file_bytes": info.st_size})
            return mmap.mmap(fd, offset + byte_size), fd  # from 0: mmap offsets must be page-aligned
        except BaseException:
            os.close(fd)
            raise


def _unknown(name: str) -> BadRequest:
    return BadRequest(f"shared-memory region {name!r} is not registered", {"region": name})
