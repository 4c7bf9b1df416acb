"""An upload's artifact contents stream to files as the body arrives, whatever the JSON looks like: escaped
slashes, chunks cut anywhere, a ``content_base64`` key outside the artifacts; the rest of the JSON is held
to LIMIT_MAX_REQUEST_BYTES."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from prediction_service.api.routes.registry import router
from prediction_service.settings import LimitSettings, SecuritySettings, Settings
from tests.support.asgi import asgi_client, router_app

ADMIN = {"X-API-Key": "admin-secret", "Content-Type": "application/json"}


@pytest.fixture
async def client(tmp_path):
    settings = Settings(model_store=tmp_path / "store", security=SecuritySettings(api_keys="admin-secret"),
                        limits=LimitSettings(max_artifact_upload_bytes=1 << 20, max_request_bytes=8 * 1024))
    async with asgi_client(router_app(router, settings), lifespan=False) as http:
        yield http


def _chunks(payload: bytes, size: int):
    async def generate():
        for start in range(0, len(payload), size):
            yield payload[start:start + size]
    return generate()


@pytest.mark.parametrize("chunk", [1, 7, 4096])
async def test_escaped_slashes_and_any_chunking_decode_to_the_same_artifact(client, onnx_models, chunk):
    raw = onnx_models["a"].read_bytes()
    encoded = base64.b64encode(raw).decode()
    assert "/" in encoded  # the escape is exercised
    document = json.dumps({"version": "1.0.0", "tags": {"content_base64": "a tag, not an artifact"},
                           "description": "x" * 2000,
                           "artifacts": [{"file_name": "model.onnx", "format": "onnx", "content_base64": "@"}]})
    payload = document.replace('"@"', json.dumps(encoded).replace("/", "\\/")).encode()
    created = await client.post("/v1/registry/models/price/versions", content=_chunks(payload, chunk), headers=ADMIN)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["artifacts"][0]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert body["tags"] == {"content_base64": "a tag, not an artifact"} and body["description"] == "x" * 2000


@pytest.mark.parametrize("content, status", [
    ("QUJD!!!!", 422),          # not base64
    ("QQ==QUJD", 422),          # padding before the end
    ("QUJDRA", 422),            # a group left incomplete
])
async def test_bad_base64_is_refused(client, content, status):
    payload = json.dumps({"version": "1.0.0", "artifacts": [
        {"file_name": "model.onnx", "format": "onnx", "content_base64": content}]}).encode()
    refused = await client.post("/v1/registry/models/price/versions", content=_chunks(payload, 3), headers=ADMIN)
    assert refused.status_code == status and refused.json()["error"]["code"] == "invalid_input"


async def test_the_json_around_the_artifacts_is_held_to_the_request_limit(client, tmp_path):
    payload = json.dumps({"version": "1.0.0", "description": "x" * 9000, "artifacts": [
        {"file_name": "model.onnx", "format": "onnx", "content_base64": "QUJD"}]}).encode()
    refused = await client.post("/v1/registry/models/price/versions", content=payload, headers=ADMIN)
    assert refused.status_code == 413 and refused.json()["error"]["details"] == {"max_bytes": 8 * 1024}
    unterminated = (b'{"version": "1.0.0", "artifacts": [{"file_name": "m.onnx", "format": "onnx", '
                    b'"content_base64": "QUJD')
    broken = await client.post("/v1/registry/models/price/versions", content=unterminated, headers=ADMIN)
    assert broken.status_code == 400
    assert not list((tmp_path / "store" / ".state" / "uploads").iterdir())
