"""No route declares a body parameter: FastAPI reads a declared body whole before any dependency runs,
so an unauthenticated caller could make a worker buffer it. Routes read their body after the key check
(api/model_body.py, api/body.py) under their own limit."""

from __future__ import annotations

from fastapi.routing import APIRoute

from prediction_service.api.app import create_app
from prediction_service.settings import Settings

def _api_routes(routes) -> list[APIRoute]:
    found = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):  # FastAPI keeps included routers nested
            found += _api_routes(route.original_router.routes)
    return found


def test_no_route_reads_its_body_before_the_key_check(tmp_path):
    routes = _api_routes(create_app(Settings(model_store=tmp_path / "store")).routes)
    assert any(route.path == "/v1/registry/models/{name}/versions" for route in routes)
    declared = {(method, route.path) for route in routes if route.body_field is not None for method in route.methods}
    assert not declared, f"routes with a declared body: {sorted(declared)}"
