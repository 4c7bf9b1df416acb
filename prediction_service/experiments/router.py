"""Sticky, deterministic traffic split.

A request's arm is a pure function of (experiment id, routing key): sha256 of both, the first 8 bytes
read as an integer and scaled to a uniform number in [0, 1), challenger when below the split. hashlib
(not the builtin ``hash()``, which is salted per process) makes the choice identical in every worker
process and after restarts, so one trading account or instrument stays on one arm for the whole
experiment. A request without a key gets a random draw: uniform, not sticky (``random``, not a uuid4 hashed:
the uuid's ``getrandom`` syscall let go of the GIL on every request of an experiment).

The assignment carries a digest of the routing key (``unit``): the key is the randomization unit, and
the analysis clusters its variance on it (stats.py). A digest, because the analysis needs only equality
and the state database need not hold account ids.

A shadow experiment answers every request from the champion and marks a sampled share of them for a copy
on the challenger (``shadow_version``).
"""

from __future__ import annotations

import hashlib
import random
from functools import lru_cache

from .models import Arm, Assignment, Experiment, ExperimentKind

_SCALE = float(2**64)


def bucket(experiment_id: str, routing_key: str) -> float:
    """Uniform number in [0, 1) determined by the experiment and the key only."""
    digest = hashlib.sha256(f"{experiment_id}\x00{routing_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def choose_arm(experiment_id: str, routing_key: str | None, challenger_share: float) -> Arm:
    draw = random.random() if routing_key is None else bucket(experiment_id, routing_key)
    return Arm.CHALLENGER if draw < challenger_share else Arm.CHAMPION


def unit_of(routing_key: str | None) -> str | None:
    """Digest of a routing key (16 hex chars); None for a request without one (its own unit)."""
    if routing_key is None:
        return None
    return hashlib.sha256(routing_key.encode()).hexdigest()[:16]


def assign(experiment: Experiment, routing_key: str | None) -> Assignment:
    if experiment.kind is ExperimentKind.SHADOW:
        # the champion answers every request; a sampled copy runs on the challenger (no stickiness needed:
        # both models see the same request, so the unit only clusters the variance)
        mirrored = experiment.shadow_fraction >= 1.0 or random.random() < experiment.shadow_fraction
        return _assignment(experiment.id, Arm.CHAMPION, experiment.champion_version, unit_of(routing_key),
                           experiment.challenger_version if mirrored else None)
    arm = choose_arm(experiment.id, routing_key, experiment.traffic_split)
    version = experiment.challenger_version if arm is Arm.CHALLENGER else experiment.champion_version
    return _assignment(experiment.id, arm, version, unit_of(routing_key), None)


@lru_cache(maxsize=8192)
def _assignment(experiment_id: str, arm: Arm, version: str, unit: str | None,
                shadow_version: str | None) -> Assignment:
    """One frozen Assignment per distinct value, shared by the requests that get it (a request without a
    routing key gets one of two): building and validating a new one cost every request of an experiment."""
    return Assignment(experiment_id=experiment_id, arm=arm, version=version, unit=unit,
                      shadow_version=shadow_version)
