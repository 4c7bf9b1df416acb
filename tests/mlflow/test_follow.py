"""Follow mode: a real server process (two workers) with MLFLOW_* set follows a real MLflow server. Moving the
production alias makes it serve the new version under load with no failed request; moving it back rolls back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import torch

from prediction_service.registry import ModelRegistry
from tests.support.models import REGRESSOR_SIGNATURE, TinyRegressor, export
from tests.support.server import free_port, launch, start_server

mlflow = pytest.importorskip("mlflow")
import mlflow.onnx  # noqa: E402
import onnx  # noqa: E402
from mlflow.models import ModelSignature as MlflowSignature  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.types import Schema, TensorSpec  # noqa: E402

MODEL = "follow-regressor"
SCALES = {"mlflow-1": 1.0, "mlflow-2": 2.0}
ROW = [0.1, 0.2, 0.3, 0.4]
TENSOR_SIGNATURE = MlflowSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 4), "x")]),
                                   outputs=Schema([TensorSpec(np.dtype("float32"), (-1, 1), "y")]))


def _expected(version: str) -> float:
    return float(TinyRegressor(SCALES[version])(torch.tensor([ROW])).detach().numpy()[0, 0])


class Load:
    """Two threads posting predictions back to back until stopped; every answer kept (status, version, value)."""

    def __init__(self, url: str):
        self.url = f"{url}/v1/models/{MODEL}/predict"
        self.answers: list[tuple[int, str | None, object]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._post, daemon=True) for _ in range(2)]

    def _post(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(self.url, json={"instance": ROW})
                except httpx.HTTPError as exc:
                    self.answers.append((0, None, repr(exc)))
                    continue
                body = response.json()
                self.answers.append((response.status_code, body.get("version"), body))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def settled_on(self, version: str, run: int = 20) -> bool:
        """The last ``run`` answers all came from ``version`` (both workers have switched)."""
        tail = self.answers[-run:]
        return len(tail) == run and all(v == version for _, v, _ in tail)


def _wait(condition: Callable[[], bool], what: str, server, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{server.log()[-4000:]}")
        time.sleep(0.2)


def _value(body: dict) -> float:
    return float(np.asarray(body["predictions"] if "predictions" in body else body["outputs"]["y"]).ravel()[0])


def test_running_server_follows_the_production_alias(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server.uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        for scale in SCALES.values():
            onnx_path, _ = export(TinyRegressor(scale), REGRESSOR_SIGNATURE, tmp_path / f"x{scale}")
            with mlflow.start_run():
                mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="model", signature=TENSOR_SIGNATURE,
                                      registered_model_name=MODEL, save_as_external_data=False)
    finally:
        mlflow.set_tracking_uri(previous)
    client.set_registered_model_alias(MODEL, "production", "1")

    store = tmp_path / "store"
    store.mkdir()
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri, "MLFLOW_MODEL_NAMES": MODEL,
           "MLFLOW_POLL_INTERVAL_SECONDS": "0.5", "STAGE_POLL_INTERVAL_SECONDS": "0.5"}
    server = launch(store, env=env, workers=2, log_path=tmp_path / "server.log", log_level="info")
    try:
        predict = f"{server.url}/v1/models/{MODEL}/predict"
        # the followers mirror both versions and promote v1 by themselves (the store started empty)
        _wait(lambda: httpx.post(predict, json={"instance": ROW}).status_code == 200, "the first sync", server)
        with Load(server.url) as load:
            _wait(lambda: load.settled_on("mlflow-1"), "mlflow-1 served by both workers", server)
            client.set_registered_model_alias(MODEL, "production", "2")
            _wait(lambda: load.settled_on("mlflow-2"), "the switch to mlflow-2", server)
            client.set_registered_model_alias(MODEL, "production", "1")  # roll back
            _wait(lambda: load.settled_on("mlflow-1"), "the rollback to mlflow-1", server)
        failed = [a for a in load.answers if a[0] != 200]
        assert not failed, failed[:5]
        assert len(load.answers) > 60  # three settled runs of 20 at least
        assert {v for _, v, _ in load.answers} == {"mlflow-1", "mlflow-2"}
        for _, version, body in load.answers:  # each answer is the output of the version it names
            assert _value(body) == pytest.approx(_expected(version), rel=1e-5)

        following = httpx.get(f"{server.url}/health/ready").json()["mlflow"]
        assert following["syncs"] > 0 and following["last_error"] is None and following["refused"] == 0

        registry = ModelRegistry(store)
        assert registry.stages(MODEL)["production"] == "mlflow-1"
        assert registry.get(MODEL, "mlflow-2").metadata.status == "archived"
        moves = [(e.version, e.to_stage, e.actor) for e in registry.model_events(MODEL) if e.event == "stage_change"
                 and e.to_stage == "production"]
        assert [v for v, _, _ in moves] == ["mlflow-1", "mlflow-2", "mlflow-1"]  # each move once, whichever worker
        assert all(actor.startswith("mlflow-follow:") for _, _, actor in moves)
        registered = [e for e in registry.model_events(MODEL) if e.event == "registered"]
        assert sorted(e.version for e in registered) == ["mlflow-1", "mlflow-2"]  # two workers, one copy each
    finally:
        server.stop()


def test_an_unreachable_mlflow_is_logged_once_and_never_fails_serving(tiny_store_template, tmp_path):
    # no MLflow on this port: every sync finds the model unreachable (fast: no client retries)
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", "MLFLOW_MODEL_NAMES": "tiny-regressor",
           "MLFLOW_POLL_INTERVAL_SECONDS": "0.2", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    server = start_server(tiny_store_template, tmp_path, env=env)
    try:
        predict = f"{server.url}/v1/models/tiny-regressor/predict"

        def following() -> dict:
            return httpx.get(f"{server.url}/health/ready").json()["mlflow"]

        _wait(lambda: following()["syncs"] >= 5, "five syncs", server)
        ready = httpx.get(f"{server.url}/health/ready")
        assert ready.status_code == 200 and following()["refused"] == 1
        answer = httpx.post(predict, json={"instance": ROW})
        assert answer.status_code == 200 and answer.json()["version"] == "1.0.0"
        said = [line for line in server.log().splitlines() if "mlflow follow" in line and "tiny-regressor" in line]
        assert len(said) == 1 and "refused" in said[0] and "cannot" in said[0], said
    finally:
        server.stop()
