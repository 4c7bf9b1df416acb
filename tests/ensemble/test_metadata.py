"""An ensemble on every door's metadata and readiness: /v1 lists it (kind ensemble) and describes it; OIP
REST and gRPC answer its inputs (bars, text) and outputs, ready when every member's version is loaded."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from prediction_service.ensemble import EnsembleMember, EnsembleRegistry
from prediction_service.modelzoo.synthetic import synthetic_ohlcv
from tests.grpc.conftest import serve_grpc

from .conftest import COMBINER, ENSEMBLE, register_ensemble

OUTPUTS = ["prediction", "confidence", "price", "sentiment_score"]


async def test_v1_lists_and_describes_the_ensemble(ensemble_client):
    listed = (await ensemble_client.get("/v1/models")).json()
    entries = {entry["name"]: entry for entry in listed}
    assert "kind" not in entries["lstm-price"]  # models are listed as before
    assert entries[ENSEMBLE]["kind"] == "ensemble"
    assert entries[ENSEMBLE]["versions"] == ["1.0.0"] and entries[ENSEMBLE]["stages"]["production"] == "1.0.0"

    detail = (await ensemble_client.get(f"/v1/models/{ENSEMBLE}")).json()
    assert detail["kind"] == "ensemble" and detail["version"] == "1.0.0" and detail["ready"] is True
    members = {m["role"]: m for m in detail["members"]}
    assert (members["price"]["model"], members["price"]["serves"], members["price"]["ready"]) == \
        ("lstm-price", "1.0.0", True)
    assert detail["combiner"]["price_weight"] == COMBINER.price_weight
    assert [i["name"] for i in detail["inputs"]] == ["bars", "text"]
    assert [o["name"] for o in detail["outputs"]] == OUTPUTS


async def test_oip_rest_metadata_config_and_readiness(ensemble_client):
    metadata = (await ensemble_client.get(f"/v2/models/{ENSEMBLE}")).json()
    assert metadata["name"] == ENSEMBLE and metadata["versions"] == ["1.0.0"] and metadata["platform"] == "ensemble"
    assert {"name": "bars", "datatype": "FP64", "shape": [-1, -1, 5]} in metadata["inputs"]
    assert {"name": "text", "datatype": "BYTES", "shape": [-1]} in metadata["inputs"]
    assert [o["name"] for o in metadata["outputs"]] == OUTPUTS
    assert all(o["datatype"] == "FP64" for o in metadata["outputs"])
    config = (await ensemble_client.get(f"/v2/models/{ENSEMBLE}/config")).json()
    assert config["platform"] == "ensemble" and config["parameters"]["version"]["string_value"] == "1.0.0"
    ready = await ensemble_client.get(f"/v2/models/{ENSEMBLE}/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert (await ensemble_client.get(f"/v2/models/{ENSEMBLE}/versions/9.9.9")).status_code == 404


async def test_not_ready_while_a_member_version_is_not_loaded(ensemble_client):
    root = ensemble_client.app.state.service.settings.model_store
    registry = EnsembleRegistry(root)
    # A second version pinning a sentiment version that exists but no stage serves (so nothing loads it).
    source = root / "sentiment-transformer" / "v1.0.0"
    shutil.copytree(source, root / "sentiment-transformer" / "v1.1.0")
    meta = source.parent / "v1.1.0" / "metadata.json"
    meta.write_text(meta.read_text().replace('"1.0.0"', '"1.1.0"').replace('"production"', '"none"'))
    registry.register(ENSEMBLE, "2.0.0", (EnsembleMember(role="price", model="lstm-price"),
                                          EnsembleMember(role="sentiment", model="sentiment-transformer",
                                                         version="1.1.0")), COMBINER)
    pinned = await ensemble_client.get(f"/v2/models/{ENSEMBLE}/versions/2.0.0/ready")
    assert pinned.status_code == 503 and pinned.json()["ready"] is False
    assert (await ensemble_client.get(f"/v2/models/{ENSEMBLE}/ready")).status_code == 200  # production: 1.0.0

    # a request loads the pinned member on first use; then the version is ready
    bars = [synthetic_ohlcv(60, seed=3).tolist()]
    served = await ensemble_client.post(f"/v1/models/{ENSEMBLE}/predict",
                                        json={"inputs": {"bars": bars, "text": ["Stocks rally"]}, "version": "2.0.0"})
    assert served.status_code == 200, served.text
    assert (await ensemble_client.get(f"/v2/models/{ENSEMBLE}/versions/2.0.0/ready")).status_code == 200


@pytest.fixture(scope="module")
def grpc_ensemble_server(demo_store, tmp_path_factory):
    template = tmp_path_factory.mktemp("ensemble-template") / "store"
    shutil.copytree(demo_store, template, symlinks=True)  # price-sentiment 1.0.0 in production
    server = serve_grpc(template, tmp_path_factory.mktemp("grpc-ensemble"))
    try:
        yield server
    finally:
        server.process.stop()


def test_grpc_metadata_readiness_and_inference(grpc_ensemble_server):
    client = grpc_ensemble_server.client()
    try:
        assert client.is_model_ready(ENSEMBLE)
        metadata = client.get_model_metadata(ENSEMBLE, as_json=True)
        assert metadata["platform"] == "ensemble" and metadata["versions"] == ["1.0.0"]
        assert {"name": "bars", "datatype": "FP64", "shape": ["-1", "-1", "5"]} in metadata["inputs"]
        assert {"name": "text", "datatype": "BYTES", "shape": ["-1"]} in metadata["inputs"]
        assert [o["name"] for o in metadata["outputs"]] == OUTPUTS
        assert not client.is_model_ready("no-such-ensemble")

        bars = np.asarray([synthetic_ohlcv(60, seed=5)], dtype=np.float64)
        inputs = [grpcclient.InferInput("bars", list(bars.shape), "FP64"),
                  grpcclient.InferInput("text", [1], "BYTES")]
        inputs[0].set_data_from_numpy(bars)
        inputs[1].set_data_from_numpy(np.array([b"Shares rally after strong earnings beat"], dtype=object))
        result = client.infer(ENSEMBLE, inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUTS])
        assert result.as_numpy("prediction").shape == (1, 1)
        parameters = result.get_response(as_json=True)["parameters"]
        assert parameters["price_model_version"]["string_param"] == "lstm-price:1.0.0"
    finally:
        client.close()
