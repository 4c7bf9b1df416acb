"""One deadline rule for every door: the caller's budget (REST header, gRPC deadline), shortened by the
Open Inference Protocol's ``timeout`` parameter, capped by what the caller's scope may ask for.

A deadline is how long the server keeps working for a request. Letting any anonymous caller ask for
the server maximum (ten minutes) let one request hold a model for 20 s of work; anonymous and
read-scoped callers get ``LIMIT_CALLER_DEADLINE_CEILING_MS`` at most, admin keys the server maximum.
"""

from __future__ import annotations

import time

from ..types import MAX_DEADLINE_MS, Scope
from ..settings import LimitSettings


def request_deadline(limits: LimitSettings, scope: Scope | None, budget_ms: float | None,
                     timeout_s: float | None = None, *, start: float | None = None) -> float:
    """A time.monotonic() instant: ``start`` (default now) + the caller's budget (default
    ``LIMIT_DEFAULT_DEADLINE_MS``), no later than the protocol's timeout parameter and the scope's ceiling."""
    budget = limits.default_deadline_ms if budget_ms is None else budget_ms
    if timeout_s is not None:
        budget = min(budget, timeout_s * 1000.0)
    ceiling = MAX_DEADLINE_MS if scope is not None and scope >= Scope.ADMIN else limits.caller_deadline_ceiling_ms
    budget = min(budget, ceiling)
    return (time.monotonic() if start is None else start) + budget / 1000.0
