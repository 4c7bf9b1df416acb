"""Request ids: UUIDv7 (RFC 9562) written as 32 hex digits, 48 bits of Unix milliseconds then 74 random.

Time-ordered on purpose: the audit log indexes request ids and the A/B prediction table keys on them, and a
B-tree takes increasing keys at its right edge instead of on random pages: with 1M audit rows a random id
cost the writer 2.8x the CPU (40 vs 15 us per record) and 5.3x the wall time of a UUIDv7
(bench/audit_index_bench.py), and the gap grows with the table. Same shape as before (32 hex digits),
still unguessable: the random bits come from os.urandom.

os.urandom is read 256 ids at a time: each call is a getrandom() syscall that lets go of the GIL, and
getting it back behind the audit writer or a runtime thread made that line ~6 % of the event loop's
samples under overload (py-spy, 7k requests/s).
"""

from __future__ import annotations

import os
import threading
import time

_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0b10 << 62
_RAND_A_MASK = (1 << 12) - 1
_RAND_B_MASK = (1 << 62) - 1
_RANDOM_BYTES = 10  # 80 bits read, 74 used
_IDS_PER_READ = 256


class _RandomPool:
    """os.urandom bytes read in blocks, handed out 10 at a time (thread-safe; emptied in a forked child,
    which must not reuse its parent's bytes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block = b""
        self._offset = 0

    def take(self) -> int:
        with self._lock:
            if self._offset + _RANDOM_BYTES > len(self._block):
                self._block, self._offset = os.urandom(_RANDOM_BYTES * _IDS_PER_READ), 0
            block, start = self._block, self._offset
            self._offset = start + _RANDOM_BYTES
        return int.from_bytes(block[start:start + _RANDOM_BYTES], "big")

    def clear(self) -> None:
        self._lock = threading.Lock()
        self._block, self._offset = b"", 0


_pool = _RandomPool()
os.register_at_fork(after_in_child=_pool.clear)


def new_request_id() -> str:
    random = _pool.take()
    milliseconds = time.time_ns() // 1_000_000
    value = ((milliseconds << 80) | _VERSION_7 | (((random >> 62) & _RAND_A_MASK) << 64) | _VARIANT_RFC
             | (random & _RAND_B_MASK))
    return f"{value:032x}"


def random_request_id() -> str:
    """128 random bits as 32 hex digits: the id scheme before UUIDv7, kept for the bench's comparison."""
    return os.urandom(16).hex()


def issued_at(request_id: str) -> float | None:
    """When a request id of ours was made (Unix seconds, from its UUIDv7 milliseconds); None for any other
    string (a caller's own X-Request-Id)."""
    if len(request_id) != 32:
        return None
    try:
        value = int(request_id, 16)
    except ValueError:
        return None
    if (value >> 76) & 0xF != 0x7 or (value >> 62) & 0b11 != 0b10:
        return None
    return (value >> 80) / 1000.0
