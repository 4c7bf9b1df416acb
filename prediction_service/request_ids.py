"""Request ids: UUIDv7 (RFC 9562) written as 32 hex digits, 48 bits of Unix milliseconds then 74 random.

Time-ordered on purpose: the audit log indexes request ids and the A/B prediction table keys on them, and a
B-tree takes increasing keys at its right edge instead of on random pages: with 1M audit rows a random id
cost the writer 2.8x the CPU (40 vs 15 us per record) and 5.3x the wall time of a UUIDv7
(bench/audit_index_bench.py), and the gap grows with the table. Same shape as before (32 hex digits), still unguessable (74 random bits).
"""

from __future__ import annotations

import os
import time

_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0b10 << 62
_RAND_A_MASK = (1 << 12) - 1
_RAND_B_MASK = (1 << 62) - 1


def new_request_id() -> str:
    random = int.from_bytes(os.urandom(10), "big")
    milliseconds = time.time_ns() // 1_000_000
    value = ((milliseconds << 80) | _VERSION_7 | (((random >> 62) & _RAND_A_MASK) << 64) | _VARIANT_RFC
             | (random & _RAND_B_MASK))
    return f"{value:032x}"


def random_request_id() -> str:
    """128 random bits as 32 hex digits: the id scheme before UUIDv7, kept for the bench's comparison."""
    return os.urandom(16).hex()
