"""The Open Inference Protocol REST door: unchanged tritonclient.http code against the real server, and the
error cases over the ASGI app (httpx), each answered with OIP's {"error": message} and /v1's status."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from prediction_service.settings import LimitSettings, SecuritySettings, Settings
from tests.support.asgi import served_app
from tests.support.models import CLASSIFIER_SIGNATURE, TinyClassifier, register_tiny
from tests.support.server import launch

ADMIN = {"X-API-Key": "admin-secret"}
READ = {"X-API-Key": "read-secret"}
ROWS = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.25, 2.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
WEIGHTS = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)


def regressor(rows: np.ndarray, scale: float) -> np.ndarray:
    """What tiny-regressor at ``scale`` (1.0.0: 1, 2.0.0: 2) computes: scale * (rows . [1, 2, 3, 4] + 1)."""
    return (scale * (rows @ WEIGHTS + 1.0)).reshape(-1, 1)


# ---- the real server, through tritonclient.http ---------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_store_template, tmp_path_factory):
    """The tiny registry plus an unstaged tiny-classifier 2.0.0 (an A/B challenger), with API keys set:
    predictions stay open, experiments need the admin key and outcomes a read key."""
    work = tmp_path_factory.mktemp("oip-server")
    store = work / "store"
    shutil.copytree(tiny_store_template, store, symlinks=True)
    register_tiny(store, "tiny-classifier", "2.0.0", TinyClassifier(), CLASSIFIER_SIGNATURE, work / "export",
                  stage=None)
    # Several versions outside a stage load here within seconds (2.0.0 by path, the A/B challenger): the
    # default limit of 30/min allows a burst of one, so raise it rather than make the tests wait.
    process = launch(store, env={"API_KEYS": "admin-secret,read-secret:read"})
    yield process
    process.stop()


@pytest.fixture
def triton_client(server):
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=30.0)
    yield client
    client.close()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        yield client


def _x(rows: np.ndarray, binary: bool, name: str = "x") -> triton.InferInput:
    tensor = triton.InferInput(name, list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    return tensor


def test_server_and_model_metadata(triton_client):
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    server = triton_client.get_server_metadata()
    assert server["name"] == "prediction-service" and "binary_tensor_data" in server["extensions"]
    meta = triton_client.get_model_metadata("tiny-regressor")
    assert meta["name"] == "tiny-regressor" and meta["versions"] == ["1.0.0", "2.0.0"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]
    assert triton_client.get_model_metadata("tiny-classifier", "2.0.0")["outputs"][0]["shape"] == [-1, 3]
    config = triton_client.get_model_config("tiny-regressor")
    assert config["max_batch_size"] == 64 and config["platform"] == "onnxruntime_onnx"
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    assert config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}]


def test_model_readiness(triton_client):
    assert triton_client.is_model_ready("tiny-regressor")
    assert triton_client.is_model_ready("tiny-regressor", "1.0.0")
    assert not triton_client.is_model_ready("no-such-model")
    assert not triton_client.is_model_ready("tiny-regressor", "9.9.9")


def test_readiness_statuses(http):
    assert http.get("/v2/models/tiny-regressor/ready").status_code == 200
    unknown = http.get("/v2/models/tiny-regressor/versions/9.9.9/ready")
    assert unknown.status_code == 404 and "9.9.9" in unknown.json()["error"]
    assert http.get("/v2/models/no-such-model/ready").status_code == 404


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_infer_matches_v1_predict(triton_client, http, binary_in, binary_out):
    v1 = http.post("/v1/models/tiny-regressor/predict", json={"inputs": {"x": ROWS.tolist()}})
    assert v1.status_code == 200, v1.text
    result = triton_client.infer("tiny-regressor", [_x(ROWS, binary_in)], request_id="client-42",
                                 outputs=[triton.InferRequestedOutput("y", binary_data=binary_out)])
    y = result.as_numpy("y")
    assert y.dtype == np.float32 and y.shape == (3, 1)
    np.testing.assert_array_equal(y, np.asarray(v1.json()["outputs"]["y"], dtype=np.float32))
    np.testing.assert_allclose(y, regressor(ROWS, 1.0), rtol=1e-6)
    response = result.get_response()
    assert response["id"] == "client-42" and response["model_version"] == "1.0.0"
    parameters = response["parameters"]
    assert parameters["stage"] == "production" and parameters["model_version"] == "1.0.0"
    assert parameters["backend"] == v1.json()["provenance"]["backend"]
    assert parameters["sha256"] == v1.json()["provenance"]["sha256"] and len(parameters["sha256"]) == 64
    assert parameters["artifact"] and parameters["precision"] == "fp32"
    assert len(parameters["request_id"]) == 32 and parameters["request_id"] != "client-42"
    assert "arm" not in parameters and "experiment_id" not in parameters


def test_no_requested_outputs_come_back_binary_and_complete(triton_client):
    result = triton_client.infer("tiny-regressor", [_x(ROWS, True)])
    assert result.get_output("y")["parameters"]["binary_data_size"] == 3 * 4
    np.testing.assert_allclose(result.as_numpy("y"), regressor(ROWS, 1.0), rtol=1e-6)


def test_version_by_path_and_stage_by_parameter(triton_client):
    # with API keys configured, anyone may pick a stage but an explicit version needs a key, as on /v1
    # (headers=dict(...): tritonclient adds Inference-Header-Content-Length to the dict it is given)
    with pytest.raises(InferenceServerException) as caught:
        triton_client.infer("tiny-regressor", [_x(ROWS, True)], model_version="2.0.0")
    assert caught.value.status() == "401"
    pinned = triton_client.infer("tiny-regressor", [_x(ROWS, True)], model_version="2.0.0", headers=dict(READ))
    np.testing.assert_allclose(pinned.as_numpy("y"), regressor(ROWS, 2.0), rtol=1e-6)
    assert pinned.get_response()["parameters"]["stage"] == "staging"  # the stage that version holds
    staged = triton_client.infer("tiny-regressor", [_x(ROWS, False)], parameters={"stage": "staging"})
    assert staged.get_response()["model_version"] == "2.0.0"
    np.testing.assert_allclose(staged.as_numpy("y"), regressor(ROWS, 2.0), rtol=1e-6)
    # an explicit version in the path wins over the stage parameter
    both = triton_client.infer("tiny-regressor", [_x(ROWS, False)], model_version="1.0.0",
                               parameters={"stage": "staging"}, headers=dict(READ))
    np.testing.assert_allclose(both.as_numpy("y"), regressor(ROWS, 1.0), rtol=1e-6)
    assert triton_client.is_model_ready("tiny-regressor", "2.0.0")  # loaded now that it served


async def test_the_asyncio_client_too(server):
    import tritonclient.http.aio as aio_triton

    client = aio_triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        assert await client.is_model_ready("tiny-regressor")
        for binary in (True, False):
            tensor = aio_triton.InferInput("x", list(ROWS.shape), "FP32")
            tensor.set_data_from_numpy(ROWS, binary_data=binary)
            result = await client.infer("tiny-regressor", [tensor], outputs=[
                aio_triton.InferRequestedOutput("y", binary_data=binary)])
            np.testing.assert_allclose(result.as_numpy("y"), regressor(ROWS, 1.0), rtol=1e-6)
    finally:
        await client.close()


def test_compressed_request_and_response(triton_client):
    result = triton_client.infer("tiny-regressor", [_x(ROWS, True)], request_compression_algorithm="gzip",
                                 response_compression_algorithm="gzip")
    np.testing.assert_allclose(result.as_numpy("y"), regressor(ROWS, 1.0), rtol=1e-6)


def test_request_id_header_is_the_audit_id(http):
    body = {"id": "mine", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    response = http.post("/v2/models/tiny-regressor/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-Id"] == response.json()["parameters"]["request_id"]
    assert response.json()["id"] == "mine"


def test_ab_experiment_routed_by_routing_key_and_outcome_by_request_id(triton_client, http):
    # the unstaged challenger is registered but not loaded until something asks for it
    assert http.get("/v2/models/tiny-classifier/versions/2.0.0/ready").status_code == 503
    spec = {"model_name": "tiny-classifier", "champion_version": "1.0.0", "challenger_version": "2.0.0",
            "traffic_split": 0.5, "task": "classification"}
    assert http.post("/v1/experiments", json=spec).status_code == 401  # experiments need the admin key
    created = http.post("/v1/experiments", json=spec, headers=ADMIN)
    assert created.status_code == 201, created.text
    experiment_id = created.json()["id"]
    try:
        seen: dict[str, dict] = {}
        for i in range(40):
            key = f"client-{i}"
            result = triton_client.infer("tiny-classifier", [_x(ROWS[:1], True)], parameters={"routing_key": key})
            parameters = result.get_response()["parameters"]
            assert parameters["experiment_id"] == experiment_id
            assert parameters["model_version"] == {"champion": "1.0.0", "challenger": "2.0.0"}[parameters["arm"]]
            assert result.as_numpy("probabilities").shape == (1, 3)
            seen[key] = parameters
        assert {p["arm"] for p in seen.values()} == {"champion", "challenger"}
        assert http.get("/v2/models/tiny-classifier/versions/2.0.0/ready").status_code == 200
        again = triton_client.infer("tiny-classifier", [_x(ROWS[:1], False)],
                                    parameters={"routing_key": "client-7"}).get_response()["parameters"]
        assert again["arm"] == seen["client-7"]["arm"]  # sticky by routing key
        assert again["request_id"] != seen["client-7"]["request_id"]

        request_id = seen["client-3"]["request_id"]
        outcome = http.post(f"/v1/predictions/{request_id}/outcome", json={"actual": 2}, headers=READ)
        assert outcome.status_code == 201, outcome.text
        duplicate = http.post(f"/v1/predictions/{request_id}/outcome", json={"actual": 2}, headers=READ)
        assert duplicate.status_code == 409  # it was recorded, once, under the id the response reported
        unknown = http.post("/v1/predictions/client-3/outcome", json={"actual": 2}, headers=READ)
        assert unknown.status_code == 404  # the caller's own id is only echoed, never an audit id
    finally:
        assert http.post(f"/v1/experiments/{experiment_id}/stop", json={}, headers=ADMIN).status_code == 200
    after = triton_client.infer("tiny-classifier", [_x(ROWS[:1], True)], parameters={"routing_key": "client-3"})
    assert "arm" not in after.get_response()["parameters"]


def test_errors_reach_tritonclient_with_the_v1_status(triton_client):
    with pytest.raises(InferenceServerException) as caught:
        triton_client.infer("tiny-regressor", [_x(ROWS[:, :3], True)])
    assert caught.value.status() == "422" and "shape" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        triton_client.infer("tiny-regressor", [_x(ROWS, True)], outputs=[triton.InferRequestedOutput("nope")])
    assert caught.value.status() == "422" and "nope" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        triton_client.infer("no-such-model", [_x(ROWS, True)])
    assert caught.value.status() == "404" and "no-such-model" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        triton_client.get_model_metadata("no-such-model")
    assert caught.value.status() == "404"
    assert triton_client.is_server_ready()
    np.testing.assert_allclose(triton_client.infer("tiny-regressor", [_x(ROWS, True)]).as_numpy("y"),
                               regressor(ROWS, 1.0), rtol=1e-6)


def test_text_model_takes_a_bytes_text_input(demo_store):
    texts = ["Shares rally after strong earnings beat", "Company warns of losses and layoffs"]
    server = launch(demo_store)
    try:
        v1 = httpx.post(f"{server.url}/v1/models/sentiment-transformer/predict", json={"text": texts}, timeout=30)
        assert v1.status_code == 200, v1.text
        expected = v1.json()["outputs"]
        client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        try:
            meta = client.get_model_metadata("sentiment-transformer")
            assert {"name": "text", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
            for binary in (True, False):
                text = triton.InferInput("text", [len(texts)], "BYTES")
                text.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
                result = client.infer("sentiment-transformer", [text])
                assert set(result.get_response()["parameters"]) >= {"model_version", "request_id", "sha256"}
                for name, values in expected.items():
                    np.testing.assert_allclose(result.as_numpy(name), np.asarray(values), rtol=1e-5, atol=1e-6)
        finally:
            client.close()
    finally:
        server.stop()


# ---- error cases over the ASGI app ------------------------------------------------------------------------

INFER = "/v2/models/tiny-regressor/infer"
X_JSON = {"name": "x", "datatype": "FP32", "shape": [1, 4]}
GOOD = {"inputs": [{**X_JSON, "data": [1.0, 2.0, 3.0, 4.0]}]}


def _oip_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


async def _still_serving(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/health/ready")).status_code == 200
    response = await client.post(INFER, json=GOOD)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [31.0]


def _binary(declared: int, payload: bytes) -> tuple[bytes, int]:
    header = orjson.dumps({"inputs": [{**X_JSON, "parameters": {"binary_data_size": declared}}]})
    return header + payload, len(header)


@pytest.mark.parametrize("document, status, needle", [
    ({"inputs": [{**X_JSON, "datatype": "BYTES", "data": ["1", "2", "3", "4"]}]}, 422, "numeric"),
    ({"inputs": [{**X_JSON, "datatype": "BOOL", "data": [True, False, True, False]}]}, 422, "bool"),
    ({"inputs": [{**X_JSON, "datatype": "FLOAT", "data": [1, 2, 3, 4]}]}, 422, "datatype"),
    ({"inputs": [{**X_JSON, "data": [1.0, 2.0, 3.0]}]}, 422, "3 values"),
    ({"inputs": [{**X_JSON, "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]}, 422, "shape"),
    ({"inputs": [{**X_JSON, "name": "wrong", "data": [1, 2, 3, 4]}]}, 422, "names"),
    ({"inputs": [{**X_JSON, "name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}, 422, "text"),
    ({**GOOD, "outputs": [{"name": "nope"}]}, 422, "nope"),
    ({**GOOD, "parameters": {"routing_key": 7}}, 422, "routing_key"),
    ({"inputs": "x"}, 422, "inputs"),
])
async def test_bad_tensors(client, document, status, needle):
    response = await client.post(INFER, content=orjson.dumps(document))
    assert needle in _oip_error(response, status)
    await _still_serving(client)


@pytest.mark.parametrize("declared, payload, header_delta, status, needle", [
    (16, b"\0" * 16, 1000, 400, "Inference-Header-Content-Length"),  # header length larger than the body
    (16, b"\0" * 12, 0, 400, "runs past"),                           # binary_data_size larger than the data
    (12, b"\0" * 16, 0, 400, "after the last"),                      # unclaimed trailing bytes
    (12, b"\0" * 12, 0, 422, "expected 16"),                         # consistent framing, wrong tensor size
])
async def test_binary_size_mismatches(client, declared, payload, header_delta, status, needle):
    body, header_length = _binary(declared, payload)
    response = await client.post(INFER, content=body,
                                 headers={"Inference-Header-Content-Length": str(header_length + header_delta)})
    assert needle in _oip_error(response, status)
    await _still_serving(client)


async def test_binary_input_over_the_asgi_app(client):
    body, header_length = _binary(16, np.array([1, 2, 3, 4], dtype="<f4").tobytes())
    response = await client.post(INFER, content=body, headers={"Inference-Header-Content-Length": str(header_length)})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"  # nothing was asked in binary
    assert response.json()["outputs"][0]["data"] == [31.0]


async def test_malformed_json_and_empty_body(client):
    assert "JSON" in _oip_error(await client.post(INFER, content=b'{"inputs": ['), 400)
    _oip_error(await client.post(INFER, content=b""), 400)
    await _still_serving(client)


@pytest.mark.parametrize("v1_path, v1_body, v2_path, status", [
    ("/v1/models/no-such-model/predict", {"instance": [1, 2, 3, 4]}, "/v2/models/no-such-model/infer", 404),
    ("/v1/models/tiny-regressor/predict", {"instance": [1, 2, 3, 4], "version": "9.9.9"},
     "/v2/models/tiny-regressor/versions/9.9.9/infer", 404),
    ("/v1/models/tiny-regressor/predict", {"instance": [1, 2, 3]}, INFER, 422),
])
async def test_same_status_as_v1_with_the_oip_body(client, v1_path, v1_body, v2_path, status):
    v1 = await client.post(v1_path, json=v1_body)
    assert v1.status_code == status and set(v1.json()["error"]) == {"code", "message", "details"}
    document = GOOD if status != 422 else {"inputs": [{**X_JSON, "shape": [1, 3], "data": [1, 2, 3]}]}
    _oip_error(await client.post(v2_path, json=document), status)
    await _still_serving(client)


async def test_unknown_routes_and_bad_deadline_use_the_oip_body(client):
    _oip_error(await client.get("/v2/no-such-route"), 404)
    _oip_error(await client.get("/v2/models/no-such-model/config"), 404)
    _oip_error(await client.get("/v2/models/BAD NAME"), 400)
    assert "Deadline" in _oip_error(await client.post(INFER, json=GOOD, headers={"X-Request-Deadline-Ms": "soon"}), 422)
    await _still_serving(client)


async def test_a_failed_infer_still_reports_its_audit_id(client):
    response = await client.post(INFER, json={"inputs": [{**X_JSON, "name": "wrong", "data": [1, 2, 3, 4]}]})
    _oip_error(response, 422)
    assert len(response.headers["X-Request-Id"]) == 32


@pytest.fixture
async def small_client(tiny_store):
    """Bodies over 1 KiB refused; predictions need a key (so admission is checked before the body)."""
    settings = Settings(model_store=tiny_store, limits=LimitSettings(max_request_bytes=1024),
                        security=SecuritySettings(api_keys="read-secret:read", predict_requires_key=True))
    async with served_app(settings, headers=READ) as (_, http):
        yield http


async def test_oversized_bodies_are_413_declared_or_streamed(small_client):
    rows = np.zeros((64, 4), dtype=np.float32)
    big = orjson.dumps({"inputs": [{**X_JSON, "shape": [64, 4], "data": rows.reshape(-1).tolist()}]})
    assert len(big) > 1024
    assert "limit" in _oip_error(await small_client.post(INFER, content=big), 413)

    async def chunked():  # no Content-Length: the limit is enforced while reading
        for start in range(0, len(big), 256):
            yield big[start:start + 256]

    _oip_error(await small_client.post(INFER, content=chunked()), 413)
    v1 = await small_client.post("/v1/models/tiny-regressor/predict", content=big,
                                 headers={"content-type": "application/json"})
    assert v1.status_code == 413
    assert (await small_client.post(INFER, json=GOOD)).status_code == 200


async def test_a_small_gzip_body_may_not_inflate_past_the_limit(small_client):
    import gzip

    bomb = gzip.compress(b" " * 100_000)  # compresses to well under the 1 KiB limit
    assert len(bomb) < 1024
    response = await small_client.post(INFER, content=bomb, headers={"Content-Encoding": "gzip"})
    assert "decompressed" in _oip_error(response, 413)


async def test_admission_comes_before_the_body(small_client):
    oversized = b"x" * 4096
    missing = await small_client.post(INFER, content=oversized, headers={"X-API-Key": ""})
    assert "X-API-Key" in _oip_error(missing, 401)  # 401, not 413: the body was never read
    _oip_error(await small_client.post(INFER, content=oversized, headers={"X-API-Key": "wrong"}), 401)
    _oip_error(await small_client.get("/v2/models/tiny-regressor", headers={"X-API-Key": ""}), 401)
    assert (await small_client.get("/v2/health/ready", headers={"X-API-Key": ""})).status_code == 200
    assert (await small_client.get("/v2/models/tiny-regressor")).status_code == 200


async def test_served_and_refused_requests_are_audited_under_their_x_request_id(tiny_store):
    from prediction_service.monitoring.audit import AuditReader, audit_db_path

    settings = Settings(model_store=tiny_store)
    async with served_app(settings) as (_, http):
        served = await http.post(INFER, json={**GOOD, "parameters": {"stage": "staging"}})
        body, header_length = _binary(16, b"\0" * 12)
        refused = await http.post(INFER, content=body,  # framing error: never reaches the data plane
                                  headers={"Inference-Header-Content-Length": str(header_length)})
    assert served.status_code == 200 and refused.status_code == 400
    reader = AuditReader(audit_db_path(settings))  # the lifespan's end flushed the writer
    entry = reader.request(served.headers["X-Request-Id"])
    assert (entry.model, entry.version, entry.stage, entry.status) == ("tiny-regressor", "2.0.0", "staging", 200)
    failed = reader.request(refused.headers["X-Request-Id"])
    assert (failed.model, failed.status) == ("tiny-regressor", 400)
