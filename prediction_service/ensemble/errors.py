"""The ensemble's domain errors (mapped to protocols by api/errors.py and grpc/status.py like any other)."""

from __future__ import annotations

from ..errors import ServiceUnavailable


class MemberUnavailable(ServiceUnavailable):
    """A member model of an ensemble cannot serve (not registered, no version in its stage, failed to load):
    the ensemble is unavailable, not unknown, so 503 and the member named, never a 404 for the ensemble."""

    code = "ensemble_member_unavailable"
