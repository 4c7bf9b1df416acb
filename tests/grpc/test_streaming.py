"""ModelStreamInfer through tritonclient's stream APIs (sync ``start_stream`` / ``async_stream_infer`` and
aio ``stream_infer``): answers come back matched by id; a bad request's error comes back in the stream
(``error_message``, as Triton does) and the stream goes on serving the requests after it."""

from __future__ import annotations

import queue

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

ROWS = {"a": [[1.0, 2.0, 3.0, 4.0]], "b": [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], "d": [[2.0, 0.0, 0.0, 0.0]]}
EXPECTED = {"a": [[31.0]], "b": [[1.0], [11.0]], "d": [[3.0]]}  # tiny-regressor 1.0.0: x . [1,2,3,4] + 1


def tensor(module, rows: list[list[float]], name: str = "x"):
    array = np.array(rows, np.float32)
    infer_input = module.InferInput(name, list(array.shape), "FP32")
    infer_input.set_data_from_numpy(array)
    return infer_input


def test_sync_stream_answers_every_request_and_reports_the_bad_one(grpc_server):
    answers: queue.Queue = queue.Queue()
    client = grpc_server.client()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("tiny-regressor", [tensor(grpcclient, ROWS["a"])], request_id="a")
        client.async_stream_infer("tiny-regressor", [tensor(grpcclient, ROWS["b"])], request_id="b")
        client.async_stream_infer("tiny-regressor", [tensor(grpcclient, [[1.0, 2.0]])], request_id="bad-shape")
        client.async_stream_infer("no-such-model", [tensor(grpcclient, ROWS["a"])], request_id="bad-model")
        client.async_stream_infer("tiny-regressor", [tensor(grpcclient, ROWS["d"])], request_id="d")
        received = [answers.get(timeout=30) for _ in range(5)]
    finally:
        client.stop_stream()
        client.close()

    results = {result.get_response().id: result for result, error in received if error is None}
    errors = sorted(str(error) for result, error in received if error is not None)
    assert sorted(results) == ["a", "b", "d"]
    for request_id, expected in EXPECTED.items():
        assert results[request_id].as_numpy("y").tolist() == expected
    assert len(errors) == 2
    assert any("has shape [1, 2], expected [-1, 4]" in error for error in errors)
    assert any("no-such-model" in error for error in errors)


def test_stream_selects_versions_and_stages(grpc_server):
    answers: queue.Queue = queue.Queue()
    client = grpc_server.client()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("tiny-regressor", [tensor(grpcclient, ROWS["a"])], request_id="v2",
                                  model_version="2.0.0")
        client.async_stream_infer("tiny-regressor", [tensor(grpcclient, ROWS["a"])], request_id="staging",
                                  parameters={"stage": "staging"})
        received = [answers.get(timeout=30) for _ in range(2)]
    finally:
        client.stop_stream()
        client.close()
    assert all(error is None for _, error in received), received
    for result, _ in received:
        assert result.as_numpy("y").tolist() == [[62.0]]
        assert result.get_response().parameters["stage"].string_param == "staging"


async def test_aio_infer_and_stream_infer(grpc_server):
    client = aioclient.InferenceServerClient(grpc_server.grpc_url)
    try:
        assert await client.is_server_ready() and await client.is_model_ready("tiny-regressor")
        single = await client.infer("tiny-regressor", [tensor(grpcclient, ROWS["b"])], request_id="one")
        assert single.as_numpy("y").tolist() == EXPECTED["b"] and single.get_response().id == "one"

        async def requests():
            for request_id in ("a", "bad", "b", "d"):
                rows = [[1.0]] if request_id == "bad" else ROWS[request_id]
                yield {"model_name": "tiny-regressor", "inputs": [tensor(grpcclient, rows)], "request_id": request_id}

        results, errors = {}, []
        async for result, error in client.stream_infer(requests()):
            if error is not None:
                errors.append(str(error))
            else:
                results[result.get_response().id] = result.as_numpy("y").tolist()
            if len(results) + len(errors) == 4:
                break
    finally:
        await client.close()
    assert results == {key: EXPECTED[key] for key in ("a", "b", "d")}
    assert len(errors) == 1 and "expected [-1, 4]" in errors[0]
