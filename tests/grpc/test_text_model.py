"""BYTES tensors end to end: the demo sentiment model takes a ``text`` input that the server tokenizes;
tritonclient sends it raw (4-byte length + bytes per element), the stub sends it as typed bytes_contents,
and both answer what /v1 answers for the same text."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.grpc.conftest import serve_grpc

MODEL = "sentiment-transformer"
TEXTS = ["Shares rally after strong earnings beat", "Company warns of losses and layoffs"]


@pytest.fixture(scope="module")
def demo_server(demo_store, tmp_path_factory):
    server = serve_grpc(demo_store, tmp_path_factory.mktemp("grpc-demo"))
    try:
        yield server
    finally:
        server.process.stop()


def test_text_input_raw_and_typed_equal_the_rest_answer(demo_server):
    rest = httpx.post(f"{demo_server.http_url}/v1/models/{MODEL}/predict", json={"text": TEXTS}, timeout=30)
    assert rest.status_code == 200, rest.text
    expected = {name: np.array(values, np.float32) for name, values in rest.json()["outputs"].items()}
    assert [p["label"] for p in rest.json()["predictions"]] == ["positive", "negative"]

    client = demo_server.client()
    try:
        metadata = client.get_model_metadata(MODEL, as_json=True)
        assert {"name": "text", "datatype": "BYTES", "shape": ["-1"]} in metadata["inputs"]
        text = grpcclient.InferInput("text", [len(TEXTS)], "BYTES")
        text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
        result = client.infer(MODEL, [text])
    finally:
        client.close()
    assert {o.name for o in result.get_response().outputs} == set(expected)
    for name, want in expected.items():
        np.testing.assert_allclose(result.as_numpy(name), want, rtol=1e-5, atol=1e-6)

    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="text", datatype="BYTES", shape=[len(TEXTS)]).contents.bytes_contents.extend(
        [t.encode() for t in TEXTS])
    with grpc.insecure_channel(demo_server.grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    typed = grpcclient.InferResult(response)
    for name, want in expected.items():
        np.testing.assert_allclose(typed.as_numpy(name), want, rtol=1e-5, atol=1e-6)


def test_text_over_the_token_limit_is_truncated_and_bad_text_is_invalid_argument(demo_server):
    client = demo_server.client()
    try:
        answers = []
        for words in (80, 62):  # 80 words are read as their first 62 (+ [CLS] and [SEP])
            text = grpcclient.InferInput("text", [1], "BYTES")
            text.set_data_from_numpy(np.array([b"profit " * words], dtype=object))
            answers.append(client.infer(MODEL, [text]).as_numpy("probabilities"))
        np.testing.assert_array_equal(answers[0], answers[1])
        text = grpcclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"\xff\xfe not utf-8"], dtype=object))
        with pytest.raises(grpcclient.InferenceServerException) as caught:
            client.infer(MODEL, [text])
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and "not UTF-8" in caught.value.message()
        assert client.is_model_ready(MODEL)
    finally:
        client.close()
