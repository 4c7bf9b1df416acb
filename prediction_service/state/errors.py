"""Errors of the state database, as domain errors (api/errors.py maps them by their status)."""

from __future__ import annotations

from ..errors import ServiceUnavailable


class StateUnavailable(ServiceUnavailable):
    """The state database (SQLite file or PostgreSQL) cannot be reached or refused the transaction: 503,
    and the transaction was rolled back, so nothing of it was written."""

    code = "state_unavailable"


class SchemaOutdated(RuntimeError):
    """The state schema is older than this code and STATE_AUTO_MIGRATE is off."""
