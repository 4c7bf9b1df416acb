"""The model-repository extension: index, load and unload (admin), over REST and gRPC, on the registry and
the model manager; what a stage serves cannot be unloaded this way."""

from __future__ import annotations

import pytest
from tritonclient.utils import InferenceServerException

from prediction_service.settings import SecuritySettings, Settings
from tests.grpc.conftest import serve_grpc
from tests.support.asgi import served_app

ADMIN = {"X-API-Key": "admin-secret"}
READER = {"X-API-Key": "reader-secret"}
ROW = [1.0, 2.0, 3.0, 4.0]


def states(index: list[dict]) -> dict[tuple[str, str], tuple[str, str]]:
    return {(e["name"], e["version"]): (e["state"], e["reason"]) for e in index}


@pytest.fixture
def keyed_settings(tiny_store) -> Settings:
    return Settings(model_store=tiny_store, security=SecuritySettings(api_keys="admin-secret,reader-secret:read"))


async def test_load_beside_production_then_unload_over_rest(keyed_settings):
    async with served_app(keyed_settings) as (_, http):
        index = (await http.post("/v2/repository/index", headers=ADMIN)).json()
        assert states(index)[("tiny-regressor", "1.0.0")] == ("READY", "production")
        assert states(index)[("tiny-regressor", "2.0.0")] == ("UNAVAILABLE", "staging")
        ready = (await http.post("/v2/repository/index", headers=ADMIN, json={"ready": True})).json()
        assert all(e["state"] == "READY" for e in ready) and ("tiny-regressor", "2.0.0") not in states(ready)

        loaded = await http.post("/v2/repository/models/tiny-regressor/load", headers=ADMIN,
                                 json={"parameters": {"version": "2.0.0"}})
        assert loaded.status_code == 200, loaded.text
        assert states((await http.post("/v2/repository/index", headers=ADMIN)).json())[
            ("tiny-regressor", "2.0.0")][0] == "READY"
        assert (await http.get("/v2/models/tiny-regressor/versions/2.0.0/ready")).status_code == 200

        unloaded = await http.post("/v2/repository/models/tiny-regressor/unload", headers=ADMIN,
                                   json={"parameters": {"version": "2.0.0"}})
        assert unloaded.status_code == 200, unloaded.text
        assert states((await http.post("/v2/repository/index", headers=ADMIN)).json())[
            ("tiny-regressor", "2.0.0")][0] == "UNAVAILABLE"

        # production stays: refused by name and by default, and still serving
        for body in ({"parameters": {"version": "1.0.0"}}, None):
            refused = await http.post("/v2/repository/models/tiny-regressor/unload", headers=ADMIN, json=body)
            assert refused.status_code == 409, refused.text
        assert (await http.post("/v1/models/tiny-regressor/predict", json={"instance": ROW})).status_code == 200


async def test_repository_calls_need_admin_and_clear_bodies(keyed_settings):
    async with served_app(keyed_settings) as (_, http):
        assert (await http.post("/v2/repository/index")).status_code == 401
        assert (await http.post("/v2/repository/index", headers=READER)).status_code == 403
        load = "/v2/repository/models/tiny-regressor/load"
        assert (await http.post(load, headers=READER)).status_code == 403
        config = await http.post(load, headers=ADMIN, json={"parameters": {"config": "{}"}})
        assert config.status_code == 422 and "config" in config.text  # never a config sent with the request
        assert (await http.post(load, headers=ADMIN, content=b"{not json")).status_code == 422
        assert (await http.post(load, headers=ADMIN, json={"parameters": {"version": 2}})).status_code == 422
        missing = await http.post(load, headers=ADMIN, json={"parameters": {"version": "9.9.9"}})
        assert missing.status_code == 404
        unknown = await http.post("/v2/repository/models/no-such-model/load", headers=ADMIN)
        assert unknown.status_code == 404
        # a small admin document with required fields, sent empty: 422, never a 500
        empty = await http.post("/v2/systemsharedmemory/region/r/register", headers=ADMIN)
        assert empty.status_code == 422, empty.text
        metadata = (await http.get("/v2")).json()
        assert "model_repository" in metadata["extensions"]


def test_tritonclient_repository_calls_over_grpc(tiny_store_template, tmp_path):
    server = serve_grpc(tiny_store_template, tmp_path, env={"API_KEYS": "admin-secret,reader-secret:read"})
    client = server.client()
    admin = {"x-api-key": "admin-secret"}
    try:
        index = client.get_model_repository_index(headers=admin, as_json=True)["models"]
        assert states(index)[("tiny-regressor", "2.0.0")] == ("UNAVAILABLE", "staging")
        client.load_model("tiny-regressor", headers=admin)  # no version: production, already loaded
        assert client.is_model_ready("tiny-regressor", "1.0.0", headers=admin)
        with pytest.raises(InferenceServerException) as refused:
            client.unload_model("tiny-regressor", headers=admin)  # only production is loaded
        assert refused.value.status() == "StatusCode.FAILED_PRECONDITION"
        with pytest.raises(InferenceServerException) as denied:
            client.get_model_repository_index(headers={"x-api-key": "reader-secret"})
        assert denied.value.status() == "StatusCode.PERMISSION_DENIED"
        assert "model_repository" in client.get_server_metadata(as_json=True)["extensions"]
    finally:
        client.close()
        server.process.stop()


def test_grpc_load_and_unload_take_the_version_parameter(tiny_store_template, tmp_path):
    from tritonclient.grpc import service_pb2

    server = serve_grpc(tiny_store_template, tmp_path)
    client = server.client()
    try:
        stub = client._client_stub  # tritonclient's load_model sends no version: the raw request does
        version = {"version": service_pb2.ModelRepositoryParameter(string_param="2.0.0")}
        stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="tiny-regressor",
                                                                        parameters=version))
        assert client.is_model_ready("tiny-regressor", "2.0.0")
        stub.RepositoryModelUnload(service_pb2.RepositoryModelUnloadRequest(model_name="tiny-regressor",
                                                                            parameters=version))
        assert not client.is_model_ready("tiny-regressor", "2.0.0")
    finally:
        client.close()
        server.process.stop()
