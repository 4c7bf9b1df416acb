"""The request deadline from the X-Request-Deadline-Ms header (every HTTP door)."""

from __future__ import annotations

import time

from starlette.datastructures import Headers

from ..errors import InvalidInput
from ..schemas import DEADLINE_HEADER, MAX_DEADLINE_MS


def request_deadline(headers: Headers, default_ms: float) -> float:
    """A time.monotonic() instant: now + the header's budget (or the default)."""
    raw = headers.get(DEADLINE_HEADER)
    try:
        budget_ms = float(raw) if raw is not None else default_ms
    except ValueError:
        raise InvalidInput(f"{DEADLINE_HEADER} must be a number of milliseconds") from None
    if not 0 < budget_ms <= MAX_DEADLINE_MS:
        raise InvalidInput(f"{DEADLINE_HEADER} must be in (0, {MAX_DEADLINE_MS}]")
    return time.monotonic() + budget_ms / 1000.0
