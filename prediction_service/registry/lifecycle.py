"""The lifecycle of a version: none -> staging -> production -> archived, and which moves are allowed.

``metadata.json`` ``status`` mirrors the stage links; the links are the truth (see reconcile.py).
"""

from __future__ import annotations

from .errors import InvalidTransition
from .model_version import Status

# from-status -> statuses it may move to. Entering production is further gated by validation.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    "none": frozenset({"staging", "production", "archived"}),
    "staging": frozenset({"production", "archived"}),
    "production": frozenset({"archived"}),
    # archived -> production is the rollback path: a version that served before serves again.
    "archived": frozenset({"staging", "production"}),
}

# The stage link that carries a status; "none" and "archived" have none.
STAGE_OF_STATUS: dict[str, str] = {"staging": "staging", "production": "production"}


def check_transition(name: str, version: str, current: Status, target: Status) -> None:
    if target not in ALLOWED_TRANSITIONS.get(current, frozenset()):
        allowed = sorted(ALLOWED_TRANSITIONS.get(current, frozenset()))
        raise InvalidTransition(
            f"{name} {version}: cannot move from {current} to {target}; allowed: {', '.join(allowed) or 'none'}",
            {"model": name, "version": version, "from": current, "to": target, "allowed": allowed},
        )
