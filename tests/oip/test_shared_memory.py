"""The system shared-memory extension: regions registered (admin), inputs read from and outputs written to
them, over REST and gRPC, with tritonclient's own shared-memory utilities; nothing outside /dev/shm."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from prediction_service.settings import SecuritySettings, Settings
from tests.grpc.conftest import serve_grpc
from tests.support.asgi import served_app
from tests.support.server import start_server

ADMIN = {"X-API-Key": "admin-secret"}
READER = {"X-API-Key": "reader-secret"}
KEYS = "admin-secret,reader-secret:read"
ROWS = np.arange(32 * 4, dtype=np.float32).reshape(32, 4) / 10.0
IN_BYTES, OUT_BYTES = ROWS.nbytes, 32 * 4  # y: 32 x 1 float32


@pytest.fixture
def regions():
    """An input and an output region in /dev/shm, unlinked afterwards."""
    tag = uuid.uuid4().hex[:12]
    made = [shm.create_shared_memory_region(f"in-{tag}", f"/ps-in-{tag}", IN_BYTES + 64),
            shm.create_shared_memory_region(f"out-{tag}", f"/ps-out-{tag}", OUT_BYTES + 64)]
    shm.set_shared_memory_region(made[0], [ROWS], offset=64)
    yield tag, made
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def _outputs_via_binary(client, model: str = "tiny-regressor") -> np.ndarray:
    x = httpclient.InferInput("x", list(ROWS.shape), "FP32")
    x.set_data_from_numpy(ROWS, binary_data=True)
    return client.infer(model, [x], outputs=[httpclient.InferRequestedOutput("y", binary_data=True)]).as_numpy("y")


def test_tritonclient_http_round_trip_through_regions(tiny_store_template, tmp_path, regions):
    tag, (inp, out) = regions
    server = start_server(tiny_store_template, tmp_path, env={"API_KEYS": KEYS})
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    admin = {"X-API-Key": "admin-secret"}
    try:
        client.register_system_shared_memory(f"in-{tag}", f"/ps-in-{tag}", IN_BYTES, offset=64, headers=admin)
        client.register_system_shared_memory(f"out-{tag}", f"/ps-out-{tag}", OUT_BYTES + 64, headers=admin)
        status = {r["name"]: r for r in client.get_system_shared_memory_status(headers=admin)}
        assert status[f"in-{tag}"] == {"name": f"in-{tag}", "key": f"/ps-in-{tag}", "offset": 64,
                                       "byte_size": IN_BYTES}
        assert client.get_system_shared_memory_status(f"out-{tag}", headers=admin)[0]["byte_size"] == OUT_BYTES + 64

        x = httpclient.InferInput("x", list(ROWS.shape), "FP32")
        x.set_shared_memory(f"in-{tag}", IN_BYTES)
        y = httpclient.InferRequestedOutput("y")
        y.set_shared_memory(f"out-{tag}", OUT_BYTES, offset=32)
        result = client.infer("tiny-regressor", [x], outputs=[y])
        described = result.get_output("y")
        assert "data" not in described
        assert described["parameters"]["shared_memory_region"] == f"out-{tag}"
        assert described["parameters"]["shared_memory_byte_size"] == OUT_BYTES
        written = shm.get_contents_as_numpy(out, np.float32, described["shape"], offset=32)
        expected = _outputs_via_binary(client)
        np.testing.assert_array_equal(written, expected)

        # the same span, reused: the client changes the input and the answer follows
        shm.set_shared_memory_region(inp, [ROWS * 2], offset=64)
        client.infer("tiny-regressor", [x], outputs=[y])
        assert not np.array_equal(shm.get_contents_as_numpy(out, np.float32, described["shape"], offset=32),
                                  expected)

        with pytest.raises(InferenceServerException) as refused:
            client.register_system_shared_memory("x", f"/ps-in-{tag}", 8, headers={"X-API-Key": "reader-secret"})
        assert refused.value.status() == "403"

        client.unregister_system_shared_memory(f"in-{tag}", headers=admin)
        with pytest.raises(InferenceServerException) as gone:
            client.infer("tiny-regressor", [x], outputs=[y])
        assert gone.value.status() == "400" and f"in-{tag}" in gone.value.message()
        client.unregister_system_shared_memory(headers=admin)
        assert client.get_system_shared_memory_status(headers=admin) == []
    finally:
        server.stop()


@pytest.fixture
def keyed_settings(tiny_store) -> Settings:
    return Settings(model_store=tiny_store, security=SecuritySettings(api_keys=KEYS))


def _register(name: str, key: str, byte_size: int, offset: int = 0) -> tuple[str, dict]:
    return f"/v2/systemsharedmemory/region/{name}/register", {"key": key, "offset": offset, "byte_size": byte_size}


async def test_registration_is_checked_and_admin_only(keyed_settings, regions, tmp_path):
    tag, _ = regions
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"\0" * 4096)
    link = Path(f"/dev/shm/ps-link-{tag}")
    os.symlink(outside, link)
    try:
        async with served_app(keyed_settings) as (_, http):
            path, body = _register("r1", f"/ps-in-{tag}", IN_BYTES)
            assert (await http.post(path, json=body)).status_code == 401
            assert (await http.post(path, json=body, headers=READER)).status_code == 403
            assert (await http.get("/v2/systemsharedmemory/status", headers=READER)).status_code == 403
            for key in (str(outside), "/../etc/passwd", "/a/b", "..", f"/ps-link-{tag}", "/no-such-key-x"):
                refused = await http.post(path, json={**body, "key": key}, headers=ADMIN)
                assert refused.status_code == 400, (key, refused.text)
            for offset, size in ((0, IN_BYTES + 65), (IN_BYTES, 65), (-1, 8), (0, 0)):
                refused = await http.post(path, json={**body, "offset": offset, "byte_size": size}, headers=ADMIN)
                assert refused.status_code == 400, (offset, size, refused.text)
            bad_name = await http.post("/v2/systemsharedmemory/region/a%20b/register", json=body, headers=ADMIN)
            assert bad_name.status_code == 400
            assert (await http.post(path, json={"key": 1, "byte_size": 8}, headers=ADMIN)).status_code == 422
            assert (await http.get("/v2/systemsharedmemory/status", headers=ADMIN)).json() == []

            assert (await http.post(path, json=body, headers=ADMIN)).status_code == 200
            assert (await http.post(path, json=body, headers=ADMIN)).status_code == 409  # the name is taken
            unknown = await http.get("/v2/systemsharedmemory/region/nope/status", headers=ADMIN)
            assert unknown.status_code == 400
            assert "system_shared_memory" in (await http.get("/v2")).json()["extensions"]
    finally:
        link.unlink()


async def test_infer_spans_are_checked_against_the_region(keyed_settings, regions):
    tag, _ = regions
    async with served_app(keyed_settings) as (app, http):
        for name, key, size, offset in ((f"in-{tag}", f"/ps-in-{tag}", IN_BYTES, 64),
                                        (f"out-{tag}", f"/ps-out-{tag}", OUT_BYTES, 0)):
            path, body = _register(name, key, size, offset)
            assert (await http.post(path, json=body, headers=ADMIN)).status_code == 200

        def request(x_params: dict, y_params: dict | None = None, shape=(32, 4)) -> dict:
            doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(shape), "parameters": x_params}]}
            if y_params is not None:
                doc["outputs"] = [{"name": "y", "parameters": y_params}]
            return doc

        good = {"shared_memory_region": f"in-{tag}", "shared_memory_byte_size": IN_BYTES}
        answered = await http.post("/v2/models/tiny-regressor/infer", json=request(good))
        assert answered.status_code == 200, answered.text
        plain = await http.post("/v2/models/tiny-regressor/infer", json={"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [32, 4], "data": ROWS.reshape(-1).tolist()}]})
        assert answered.json()["outputs"][0]["data"] == plain.json()["outputs"][0]["data"]

        bad_inputs = [
            {**good, "shared_memory_offset": 4},  # runs past the region
            {**good, "shared_memory_byte_size": IN_BYTES - 4},  # does not hold the shape
            {**good, "shared_memory_offset": -4},
            {**good, "shared_memory_region": "nope"},
            {"shared_memory_byte_size": IN_BYTES},  # no region named
            {**good, "shared_memory_byte_size": "12"},
        ]
        for params in bad_inputs:
            refused = await http.post("/v2/models/tiny-regressor/infer", json=request(params))
            assert 400 <= refused.status_code < 500, (params, refused.text)
        both = request(good)
        both["inputs"][0]["data"] = ROWS.reshape(-1).tolist()
        assert (await http.post("/v2/models/tiny-regressor/infer", json=both)).status_code == 400
        # the shape budget is judged before the region is read
        huge = await http.post("/v2/models/tiny-regressor/infer", json=request(good, shape=(10**9, 4)))
        assert huge.status_code == 422 and "rows" in huge.text
        for y_params in ({"shared_memory_region": f"out-{tag}", "shared_memory_byte_size": OUT_BYTES - 4},
                         {"shared_memory_region": f"out-{tag}", "shared_memory_byte_size": OUT_BYTES,
                          "shared_memory_offset": 4}):
            refused = await http.post("/v2/models/tiny-regressor/infer", json=request(good, y_params))
            assert refused.status_code == 400, (y_params, refused.text)
        # an object shrunk under its region is refused, not read past its end (that would be SIGBUS)
        os.truncate(f"/dev/shm/ps-in-{tag}", 64)
        shrunk = await http.post("/v2/models/tiny-regressor/infer", json=request(good))
        assert shrunk.status_code == 400 and "shorter" in shrunk.text
        assert (await http.get("/v2/health/live")).status_code == 200


def test_tritonclient_grpc_round_trip_through_regions(tiny_store_template, tmp_path, regions):
    tag, (inp, out) = regions
    server = serve_grpc(tiny_store_template, tmp_path, env={"API_KEYS": KEYS})
    client = server.client()
    admin = {"x-api-key": "admin-secret"}
    try:
        client.register_system_shared_memory(f"in-{tag}", f"/ps-in-{tag}", IN_BYTES, offset=64, headers=admin)
        client.register_system_shared_memory(f"out-{tag}", f"/ps-out-{tag}", OUT_BYTES + 64, headers=admin)
        status = client.get_system_shared_memory_status(headers=admin, as_json=True)["regions"]
        assert status[f"in-{tag}"]["key"] == f"/ps-in-{tag}" and int(status[f"in-{tag}"]["offset"]) == 64

        x = grpcclient.InferInput("x", list(ROWS.shape), "FP32")
        x.set_shared_memory(f"in-{tag}", IN_BYTES)
        y = grpcclient.InferRequestedOutput("y")
        y.set_shared_memory(f"out-{tag}", OUT_BYTES, offset=64)
        result = client.infer("tiny-regressor", [x], outputs=[y])
        described = result.get_output("y")
        assert described.parameters["shared_memory_region"].string_param == f"out-{tag}"
        written = shm.get_contents_as_numpy(out, np.float32, list(described.shape), offset=64)
        x_raw = grpcclient.InferInput("x", list(ROWS.shape), "FP32")
        x_raw.set_data_from_numpy(ROWS)
        np.testing.assert_array_equal(written, client.infer("tiny-regressor", [x_raw]).as_numpy("y"))

        x.set_shared_memory(f"in-{tag}", IN_BYTES, offset=8)  # past the region's end
        with pytest.raises(InferenceServerException) as refused:
            client.infer("tiny-regressor", [x])
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        with pytest.raises(InferenceServerException) as refused:
            client.register_system_shared_memory("escape", "/../etc/passwd", 8, headers=admin)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        with pytest.raises(InferenceServerException) as refused:
            client.get_system_shared_memory_status(headers={"x-api-key": "reader-secret"})
        assert refused.value.status() == "StatusCode.PERMISSION_DENIED"

        client.unregister_system_shared_memory(headers=admin)
        assert not client.get_system_shared_memory_status(headers=admin, as_json=True).get("regions")
    finally:
        server.process.stop()


def test_grpc_decoding_mixes_region_and_raw_inputs(regions):
    """tritonclient sends no raw_input_contents entry for an input in a region: the others still line up."""
    from tritonclient.grpc import service_pb2

    from prediction_service.oip.grpc_codec import decode_request
    from prediction_service.serving.shared_memory import SharedMemoryRegistry

    tag, _ = regions
    registry = SharedMemoryRegistry()
    registry.register("in", f"/ps-in-{tag}", offset=64, byte_size=IN_BYTES)
    try:
        request = service_pb2.ModelInferRequest(model_name="m")
        first = request.inputs.add(name="a", datatype="FP32", shape=[32, 4])
        first.parameters["shared_memory_region"].string_param = "in"
        first.parameters["shared_memory_byte_size"].int64_param = IN_BYTES
        request.inputs.add(name="b", datatype="INT64", shape=[2])
        request.raw_input_contents.append(np.array([7, 9], dtype=np.int64).tobytes())
        decoded = decode_request(request, regions=registry)
        np.testing.assert_array_equal(decoded.inputs["a"], ROWS)
        np.testing.assert_array_equal(decoded.inputs["b"], [7, 9])
        assert decoded.inputs["a"].flags.writeable
        request.raw_input_contents.append(b"\0" * 8)  # one more than the inputs outside regions
        with pytest.raises(Exception) as refused:
            decode_request(request, regions=registry)
        assert getattr(refused.value, "status", None) == 422
    finally:
        registry.close()
    assert registry.status() == []
