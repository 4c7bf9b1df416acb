"""DirectRoute refuses endpoints it cannot call faithfully, and keeps the predict route documented."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from prediction_service.api.direct_route import DirectRoute
from tests.support.asgi import asgi_client


async def async_check(request: Request) -> str:
    return "ok"


def sync_check(request: Request) -> str:
    return "ok"


def test_unsupported_signatures_fail_at_definition():
    router = APIRouter(route_class=DirectRoute)

    async def with_query(name: str, request: Request, limit: int = 3):
        return {}

    async def with_sync_dependency(name: str, request: Request, key=Depends(sync_check)):
        return {}

    async def without_request(name: str):
        return {}

    for endpoint in (with_query, with_sync_dependency, without_request):
        with pytest.raises(TypeError, match="DirectRoute"):
            router.add_api_route("/m/{name}", endpoint, methods=["POST"])


async def test_path_params_request_and_dependencies_reach_the_endpoint():
    router = APIRouter(route_class=DirectRoute)

    @router.post("/m/{name}")
    async def endpoint(name: str, request: Request, key=Depends(async_check)):
        return JSONResponse({"name": name, "key": key, "path": request.url.path})

    app = FastAPI()
    app.include_router(router)
    async with asgi_client(app, lifespan=False) as client:
        response = await client.post("/m/lstm-price")
    assert response.json() == {"name": "lstm-price", "key": "ok", "path": "/m/lstm-price"}
    assert "/m/{name}" in app.openapi()["paths"]


async def test_predict_is_still_in_the_openapi_schema(client):
    schema = (await client.get("/openapi.json")).json()
    operation = schema["paths"]["/v1/models/{name}/predict"]["post"]
    assert [p["name"] for p in operation["parameters"]] == ["name"]
    assert "requestBody" in operation
