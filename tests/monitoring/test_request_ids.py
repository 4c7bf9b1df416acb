"""Request ids are UUIDv7: 32 hex digits, unique, ordered by the millisecond they were made."""

from __future__ import annotations

import os
import time
import uuid

from prediction_service.types import RequestContext
from prediction_service.request_ids import new_request_id


def test_a_request_id_is_a_uuid7_carrying_the_millisecond_it_was_made():
    before = time.time_ns() // 1_000_000
    request_id = new_request_id()
    after = time.time_ns() // 1_000_000
    assert len(request_id) == 32 and request_id == request_id.lower()
    parsed = uuid.UUID(hex=request_id)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert before <= int(request_id[:12], 16) <= after


def test_ids_are_unique_and_sort_in_the_order_they_were_made():
    ids = []
    for _ in range(5):
        ids.extend(new_request_id() for _ in range(2000))
        time.sleep(0.002)  # the next group starts in a later millisecond
    assert len(set(ids)) == len(ids)
    groups = [ids[i:i + 2000] for i in range(0, len(ids), 2000)]
    for earlier, later in zip(groups, groups[1:]):
        assert max(earlier) < min(later)


def test_every_request_context_gets_one():
    first, second = RequestContext(), RequestContext()
    assert first.request_id != second.request_id
    assert uuid.UUID(hex=first.request_id).version == 7


def test_a_forked_child_does_not_reuse_its_parents_random_bytes():
    """Ids draw from a block of os.urandom bytes; a forked worker must read its own."""
    new_request_id()  # the parent now holds a block with bytes left
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    theirs = os.read(read, 64).decode()
    os.close(read)
    ours = new_request_id()
    assert len(theirs) == 32 and theirs[12:] != ours[12:]  # the random part (after the milliseconds)
