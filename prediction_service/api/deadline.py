"""The deadline budget a caller asks for in the X-Request-Deadline-Ms header (every HTTP door); the rule
that turns it into a deadline (scope ceiling, OIP timeout) is serving/deadline.py."""

from __future__ import annotations

from starlette.datastructures import Headers

from ..errors import InvalidInput
from ..v1.schemas import DEADLINE_HEADER, MAX_DEADLINE_MS


def requested_budget_ms(headers: Headers) -> float | None:
    """The header's budget in milliseconds, None when absent; a malformed or out-of-range value is 400."""
    raw = headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        budget_ms = float(raw)
    except ValueError:
        raise InvalidInput(f"{DEADLINE_HEADER} must be a number of milliseconds") from None
    if not 0 < budget_ms <= MAX_DEADLINE_MS:
        raise InvalidInput(f"{DEADLINE_HEADER} must be in (0, {MAX_DEADLINE_MS}]")
    return budget_ms
