"""The /v1/registry router on a minimal app with API keys configured."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import pytest

from prediction_service.api.routes.registry import router
from prediction_service.settings import SecuritySettings, Settings
from tests.support.asgi import asgi_client, router_app

ADMIN = {"X-API-Key": "admin-secret"}
READ = {"X-API-Key": "read-secret"}


@pytest.fixture
async def client(tmp_path):
    app = router_app(router, Settings(model_store=tmp_path / "store",
                                      security=SecuritySettings(api_keys="admin-secret,read-secret:read")))
    async with asgi_client(app, lifespan=False) as http:
        yield http


def _upload(path, version: str, **extra) -> dict:
    return {"version": version, "artifacts": [{"file_name": "model.onnx", "format": "onnx",
                                               "content_base64": base64.b64encode(path.read_bytes()).decode()}],
            **extra}


async def test_register_promote_compare_events_and_delete(client, onnx_models):
    created = await client.post("/v1/registry/models/price/versions", headers=ADMIN,
                                json=_upload(onnx_models["a"], "1.0.0", metrics={"mae": 0.5}))
    assert created.status_code == 201, created.text
    assert created.json()["signature"]["inputs"][0]["shape"] == [-1, 4]
    assert created.json()["validation"]["kind"] == "smoke"
    await client.post("/v1/registry/models/price/versions", headers=ADMIN,
                      json=_upload(onnx_models["b"], "1.1.0", metrics={"mae": 0.4}))

    promoted = await client.post("/v1/registry/models/price/versions/1.0.0/promote", headers=ADMIN, json={})
    assert promoted.status_code == 200 and promoted.json()["status"] == "production"
    listed = (await client.get("/v1/registry/models", headers=READ)).json()
    assert listed == [{"name": "price", "production": "1.0.0", "staging": None, "versions": 2}]
    detail = (await client.get("/v1/registry/models/price", headers=READ)).json()
    assert [v["version"] for v in detail["versions"]] == ["1.0.0", "1.1.0"]

    compared = (await client.get("/v1/registry/models/price/compare", params={"a": "1.0.0", "b": "1.1.0"},
                                 headers=READ)).json()
    assert compared["metrics"][0]["delta"] == pytest.approx(-0.1)

    patched = await client.patch("/v1/registry/models/price/versions/1.1.0/metrics", headers=ADMIN,
                                 json={"metrics": {"sharpe": 1.5}})
    assert patched.json()["metrics"] == {"mae": 0.4, "sharpe": 1.5}

    refused = await client.delete("/v1/registry/models/price/versions/1.0.0", headers=ADMIN)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "stage_in_use"
    deleted = await client.delete("/v1/registry/models/price/versions/1.1.0", headers=ADMIN)
    assert deleted.status_code == 204

    events = (await client.get("/v1/registry/models/price/events", headers=READ)).json()
    assert [e["event"] for e in events] == ["registered", "registered", "stage_change", "metrics_updated", "deleted"]
    assert events[2]["actor"].startswith("api-key:")
    now = datetime.now(timezone.utc).isoformat()
    at = (await client.get("/v1/registry/models/price/production-at", params={"time": now}, headers=READ)).json()
    assert at["version"] == "1.0.0"


async def test_promotion_gate_and_archive_over_http(client, onnx_models):
    body = _upload(onnx_models["a"], "1.0.0",
                   validation={"passed": False, "kind": "numeric_parity", "details": {"max_abs_diff": 0.2}})
    assert (await client.post("/v1/registry/models/price/versions", headers=ADMIN, json=body)).status_code == 201
    refused = await client.post("/v1/registry/models/price/versions/1.0.0/promote", headers=ADMIN, json={})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "promotion_refused"
    forced = await client.post("/v1/registry/models/price/versions/1.0.0/promote", headers=ADMIN, json={"force": True})
    assert forced.status_code == 200
    archived = await client.post("/v1/registry/models/price/versions/1.0.0/archive", headers=ADMIN)
    assert archived.json()["status"] == "archived"
    again = await client.post("/v1/registry/models/price/versions/1.0.0/archive", headers=ADMIN)
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_transition"


async def test_auth_401_without_key_403_with_read_key_on_writes(client, onnx_models):
    assert (await client.get("/v1/registry/models")).status_code == 401
    assert (await client.get("/v1/registry/models", headers={"X-API-Key": "wrong"})).status_code == 401
    assert (await client.get("/v1/registry/models", headers=READ)).status_code == 200
    upload = _upload(onnx_models["a"], "1.0.0")
    assert (await client.post("/v1/registry/models/price/versions", json=upload)).status_code == 401
    forbidden = await client.post("/v1/registry/models/price/versions", headers=READ, json=upload)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
    for method, url in [("POST", "/v1/registry/models/price/versions/1.0.0/promote"),
                        ("POST", "/v1/registry/models/price/versions/1.0.0/archive"),
                        ("DELETE", "/v1/registry/models/price/versions/1.0.0")]:
        assert (await client.request(method, url, headers=READ, json={})).status_code == 403


async def test_uploads_cannot_name_paths_outside_the_store(client, onnx_models, tmp_path):
    upload = _upload(onnx_models["a"], "1.0.0")
    upload["artifacts"][0]["file_name"] = "../../escape.onnx"
    bad_file = await client.post("/v1/registry/models/price/versions", headers=ADMIN, json=upload)
    assert bad_file.status_code == 400 and bad_file.json()["error"]["code"] == "invalid_name"
    bad_model = await client.post("/v1/registry/models/..%2Fevil/versions", headers=ADMIN,
                                  json=_upload(onnx_models["a"], "1.0.0"))
    assert bad_model.status_code == 404  # an encoded slash never matches the {name} segment
    dotted = await client.post("/v1/registry/models/..evil/versions", headers=ADMIN,
                               json=_upload(onnx_models["a"], "1.0.0"))
    assert dotted.status_code == 400 and dotted.json()["error"]["code"] == "invalid_name"
    bad_version = await client.post("/v1/registry/models/price/versions", headers=ADMIN,
                                    json=_upload(onnx_models["a"], "../1"))
    assert bad_version.status_code == 400
    ctrl = await client.get("/v1/registry/models/pri%0Ace", headers=READ)
    assert ctrl.status_code == 400
    assert not list(tmp_path.rglob("escape.onnx"))
    assert not list((tmp_path / "store" / ".state" / "uploads").iterdir())  # temp uploads cleaned


async def test_not_found_and_bad_base64(client):
    missing = await client.get("/v1/registry/models/nope/versions/1.0.0", headers=READ)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    bad = {"version": "1.0.0", "artifacts": [{"file_name": "m.onnx", "format": "onnx", "content_base64": "!!"}]}
    response = await client.post("/v1/registry/models/price/versions", headers=ADMIN, json=bad)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_input"


def test_openapi_names_each_schema_once_and_documents_the_bodies(tmp_path):
    from prediction_service.api.app import create_app

    spec = create_app(Settings(model_store=tmp_path / "store")).openapi()
    names = set(spec["components"]["schemas"])
    assert {"ModelSummary", "ModelDetail", "RegistryModelSummary", "RegistryModelDetail"} <= names
    assert not [name for name in names if "__" in name]  # FastAPI's module-path names mean a clash
    upload = spec["paths"]["/v1/registry/models/{name}/versions"]["post"]["requestBody"]
    artifact = upload["content"]["application/json"]["schema"]["properties"]["artifacts"]["items"]
    assert artifact["properties"]["format"]["enum"] == ["onnx", "torchscript", "state_dict"]
    for path, method in [("/v1/registry/models/{name}/versions/{version}/promote", "post"),
                         ("/v1/registry/models/{name}/versions/{version}/metrics", "patch")]:
        assert spec["paths"][path][method]["requestBody"]["required"]


# ---- the serving contract at promotion ----------------------------------------------------------------------

async def test_a_changed_contract_is_409_until_an_admin_overrides_it(client, onnx_models):
    for version, model in (("1.0.0", "a"), ("2.0.0", "wide")):
        created = await client.post("/v1/registry/models/price/versions", headers=ADMIN,
                                    json=_upload(onnx_models[model], version))
        assert created.status_code == 201, created.text
    assert (await client.post("/v1/registry/models/price/versions/1.0.0/promote", headers=ADMIN,
                              json={})).status_code == 200

    compared = (await client.get("/v1/registry/models/price/compare", params={"a": "1.0.0", "b": "2.0.0"},
                                 headers=READ)).json()
    assert [(c["field"], c["a"], c["b"]) for c in compared["contract_changes"]] == [
        ("inputs.features", "float32[-1, 4]", "float32[-1, 6]"),
        ("outputs.prediction", "float32[-1, 2]", "float32[-1, 3]")]

    refused = await client.post("/v1/registry/models/price/versions/2.0.0/promote", headers=ADMIN, json={})
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "contract_changed" and "inputs.features" in error["message"]
    assert [d["field"] for d in error["details"]["differences"]] == ["inputs.features", "outputs.prediction"]
    assert error["details"]["production_version"] == "1.0.0"
    forced = await client.post("/v1/registry/models/price/versions/2.0.0/promote", headers=ADMIN,
                               json={"force": True})
    assert forced.status_code == 409 and forced.json()["error"]["code"] == "contract_changed"  # force is not it
    read_only = await client.post("/v1/registry/models/price/versions/2.0.0/promote", headers=READ,
                                  json={"allow_contract_change": True})
    assert read_only.status_code == 403

    allowed = await client.post("/v1/registry/models/price/versions/2.0.0/promote", headers=ADMIN,
                                json={"allow_contract_change": True})
    assert allowed.status_code == 200 and allowed.json()["status"] == "production"
    events = (await client.get("/v1/registry/models/price/events", headers=READ)).json()
    change = next(e for e in events if e["event"] == "contract_change")
    assert change["version"] == "2.0.0" and change["actor"].startswith("api-key:")
    assert change["details"]["production_version"] == "1.0.0" and len(change["details"]["differences"]) == 2
    # rolling back is a contract change too (the other way round), and needs the same override
    back = await client.post("/v1/registry/models/price/versions/1.0.0/promote", headers=ADMIN, json={})
    assert back.status_code == 409 and back.json()["error"]["code"] == "contract_changed"


async def test_registering_a_bare_artifact_under_a_bars_model_names_the_step(client, bars_models):
    signature = json.loads(bars_models["signature"].read_text())
    parity = json.loads(bars_models["parity"].read_text())
    created = await client.post("/v1/registry/models/lstm-price/versions", headers=ADMIN,
                                json=_upload(bars_models["a"], "1.1.0", signature=signature, validation=parity))
    assert created.status_code == 201, created.text
    await client.post("/v1/registry/models/lstm-price/versions/1.1.0/promote", headers=ADMIN, json={})

    bare = await client.post("/v1/registry/models/lstm-price/versions", headers=ADMIN,
                             json=_upload(bars_models["b"], "9.9.9"))
    assert bare.status_code == 409, bare.text
    error = bare.json()["error"]
    assert error["code"] == "contract_changed" and "bars step ohlcv_window(" in error["message"]
    assert error["details"]["dropped"] == ["bars"]
    assert (await client.get("/v1/registry/models/lstm-price/versions/9.9.9", headers=READ)).status_code == 404

    allowed = await client.post("/v1/registry/models/lstm-price/versions", headers=ADMIN,
                                json=_upload(bars_models["b"], "9.9.9", allow_contract_change=True))
    assert allowed.status_code == 201 and allowed.json()["signature"]["bars"] is None
    # a smoke run alone does not pass the gate where production has a numeric parity report
    smoke = await client.post("/v1/registry/models/lstm-price/versions/9.9.9/promote", headers=ADMIN, json={})
    assert smoke.status_code == 409 and smoke.json()["error"]["code"] == "promotion_refused"
    assert "only a smoke run" in smoke.json()["error"]["message"]
