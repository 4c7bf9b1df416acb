"""Test tiers, from what a test starts: ``unit`` (no app), ``app`` (the service in-process over ASGI),
``process`` (a served subprocess: ``serve``, a gRPC server, a CLI run), ``external`` (Triton, TorchServe,
PostgreSQL, Ray, MLflow, Prometheus).

A test's tier is the highest of what its fixtures start and what its own body calls, so a new test lands
in the right tier without a marker. ``scripts/test.sh --fast`` runs the unit and app tiers.
"""

from __future__ import annotations

import inspect
import re
from functools import lru_cache

import pytest

TIERS = ("unit", "app", "process", "external")

FIXTURE_TIERS = {
    # external servers
    "shared_triton": "external", "shared_torchserve": "external", "postgres_server": "external",
    "postgres_url": "external", "mlflow_server": "external", "ray_serve": "external", "deploy": "external",
    "scraped": "external",  # a real Prometheus scraping a served process
    # served subprocesses
    "grpc_server": "process",
    # the app in-process
    "client": "app", "demo_client": "app", "ensemble_client": "app", "minilm_client": "app",
}
"""Fixtures by what they start; fixtures that build on these inherit through pytest's fixture closure."""

SERVER_GROUPS = {
    "shared_triton": "triton", "shared_torchserve": "torchserve", "postgres_server": "postgresql",
    "postgres_url": "postgresql", "mlflow_server": "mlflow", "ray_serve": "ray", "deploy": "ray",
}
"""Session fixtures that start one external server per test process, by the group of their users (one worker
runs a group: tests/support/server_groups.py)."""

EXTERNAL_MARKERS = {"triton", "torchserve"}
EXTERNAL_PARAMS = {"postgresql", "triton", "torchserve"}
"""Parameter values that start an external server (a parametrized backend or state database)."""

# Calls in a test's own body (or in helpers of its module that it calls) that start something.
_CALLS = (
    ("external", re.compile(r"\b(start_local_triton|LocalTriton|LocalTorchServe|promtool|PostgresServer|"
                            r"shared_server|mlflow|ray\.init|serve\.run)\b")),
    ("process", re.compile(r"\b(start_server|launch|running_server|serve_grpc|subprocess|Popen|run_cli)\s*\(")),
    ("app", re.compile(r"\b(served_app|ASGITransport|create_app|create_serving_app|Service)\s*\(")),
)


def tier_of(item: pytest.Item) -> str:
    found = {"unit"}
    if EXTERNAL_MARKERS & {mark.name for mark in item.iter_markers()}:
        found.add("external")
    for name in getattr(item, "fixturenames", ()):
        if name in FIXTURE_TIERS:
            found.add(FIXTURE_TIERS[name])
    callspec = getattr(item, "callspec", None)
    if callspec is not None and EXTERNAL_PARAMS & {str(value).split("-")[0] for value in callspec.params.values()}:
        found.add("external")  # a backend or state database chosen by parameter (getfixturevalue inside)
    function = getattr(item, "function", None)
    if function is not None:
        found.update(_called_tiers(function))
    return max(found, key=TIERS.index)


@lru_cache(maxsize=None)
def _called_tiers(function) -> frozenset[str]:
    """Tiers of what ``function`` starts, following the module-level helpers it calls (one level deep)."""
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return frozenset()
    module = inspect.getmodule(function)
    helpers = [value for name, value in vars(module).items()
               if inspect.isfunction(value) and value.__module__ == module.__name__ and value is not function
               and re.search(rf"\b{re.escape(name)}\s*\(", source)] if module is not None else []
    for helper in helpers:
        try:
            source += inspect.getsource(helper)
        except (OSError, TypeError):
            pass
    return frozenset(tier for tier, pattern in _CALLS if pattern.search(source))


def server_groups(item: pytest.Item) -> set[str]:
    """The shared external servers ``item`` uses, through its fixtures or a backend chosen by parameter."""
    groups = {SERVER_GROUPS[name] for name in getattr(item, "fixturenames", ()) if name in SERVER_GROUPS}
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        groups |= EXTERNAL_PARAMS & {str(value).split("-")[0] for value in callspec.params.values()}
    return groups


def mark_tiers(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(getattr(pytest.mark, tier_of(item)))
