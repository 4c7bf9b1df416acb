"""The registered ensemble generated as a Triton ``ensemble_scheduling`` config (members + the shipped
combiner step) loads in a real tritonserver (nvidia-pytriton's) and answers what the service's own
ensemble path answers for the same bars and texts."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from prediction_service.adapters.triton import TritonAdapter
from prediction_service.ensemble import EnsembleRegistry
from prediction_service.modelzoo.synthetic import synthetic_ohlcv
from prediction_service.serving.processing import ModelProcessing
from prediction_service.registry import RegistryReader
from prediction_service.settings import LimitSettings
from tests.support.triton_fixtures import triton_settings

from .conftest import ENSEMBLE

pytestmark = pytest.mark.triton

SLOW_MACHINE = {"X-Request-Deadline-Ms": "120000"}
"""Triton starts the combiner's python stub beside the first requests; a busy 2-core machine is slow then."""
TEXTS = ["Shares rally after strong earnings beat", "Regulator opens probe, stock plunges"]


async def test_triton_ensemble_answers_like_the_service(ensemble_store, ensemble_client, shared_triton):
    bars = [synthetic_ohlcv(60, seed=40 + row).tolist() for row in range(len(TEXTS))]
    served = await ensemble_client.post(f"/v1/models/{ENSEMBLE}/predict", json={"inputs": {"bars": bars,
                                                                                          "text": TEXTS}})
    assert served.status_code == 200, served.text

    ensemble = EnsembleRegistry(ensemble_store).resolve(ENSEMBLE)
    reader = RegistryReader(ensemble_store)
    members = {m.role: reader.resolve(m.model, m.version, m.followed_stage) for m in ensemble.metadata.members}
    # The service computes model tensors from bars and texts before any backend sees them; so does this test.
    limits = LimitSettings()
    tensors = {**ModelProcessing(members["price"], limits).preprocess({"bars": bars}),
               **ModelProcessing(members["sentiment"], limits).preprocess({"text": TEXTS})}

    adapter = TritonAdapter(triton_settings(shared_triton, ensemble_store))
    try:
        entry = await adapter.load_ensemble(ENSEMBLE, ensemble.version, ensemble.metadata.combiner, members)
        config = (adapter.repository / entry / "config.pbtxt").read_text()
        assert 'platform: "ensemble"' in config and "ensemble_scheduling" in config
        outputs = await adapter.predict_ensemble(entry, tensors)
        for name, expected in served.json()["outputs"].items():
            np.testing.assert_allclose(outputs[name], np.array(expected), rtol=1e-6, atol=1e-7, err_msg=name)
        await adapter.unload_ensemble(entry)
        assert not (adapter.repository / entry).exists()
    finally:
        for member in members.values():
            await adapter.unload(member.key)
        await adapter.close()


async def test_the_service_serves_the_ensemble_through_tritons_own(ensemble_store, shared_triton):
    """SERVING_ADAPTER_TYPE=triton: once generated, the request runs as one call to Triton's ensemble and
    answers what the in-process combination answers, with the same provenance."""
    from prediction_service.settings import AdapterType

    from .conftest import COMBINER, app_client

    # a generous per-call timeout: Triton starts the combiner's python stub beside these requests (2 cores)
    base = triton_settings(shared_triton, ensemble_store, timeout_seconds=60.0)
    bars = [synthetic_ohlcv(60, seed=50 + row).tolist() for row in range(3)]
    texts = TEXTS + ["Company schedules annual meeting"]
    async with app_client(ensemble_store, triton=base.triton, serving_adapter_type=AdapterType.TRITON) as (app, http):
        async def ask(text: list[str]) -> dict:
            response = await http.post(f"/v1/models/{ENSEMBLE}/predict", headers=SLOW_MACHINE,
                                       json={"inputs": {"bars": bars, "text": text}})
            assert response.status_code == 200, response.text
            return response.json()

        in_process = [await ask(texts), await ask(texts[:1])]  # combined in-process while Triton's is generated
        native = app.state.service.dataplane.ensembles.native
        for _ in range(600):
            if native.generated(ENSEMBLE, "1.0.0") is not None:
                break
            await asyncio.sleep(0.1)
        entry = native.generated(ENSEMBLE, "1.0.0")
        assert entry is not None
        # the generation may finish before the second in-process request: count from here on
        rows_before = await ensemble_inference_count(base, entry)
        served = [await ask(texts), await ask(texts[:1])]

        # One text per window: both paths run the same batches, so the answers are identical.
        assert served[0]["outputs"] == in_process[0]["outputs"]
        # One text for all windows: in-process runs it once, Triton's ensemble on each repeated row; the
        # sentiment model's float32 scores may then differ in the last bit (batch-dependent kernels).
        for name, values in in_process[1]["outputs"].items():
            np.testing.assert_allclose(served[1]["outputs"][name], values, rtol=1e-6, err_msg=name)
        price = (await http.post("/v1/models/lstm-price/predict", json={"bars": bars})).json()
        sentiment = (await http.post("/v1/models/sentiment-transformer/predict", json={"text": texts})).json()
        expected = COMBINER.combine(np.array(price["outputs"]["price"], dtype=np.float32),
                                    np.array(sentiment["outputs"]["probabilities"], dtype=np.float32),
                                    ["negative", "neutral", "positive"]).outputs()
        for name, values in expected.items():
            np.testing.assert_array_equal(np.array(served[0]["outputs"][name]), values, err_msg=name)

        # the same provenance: the ensemble version's hash, each member's version, stage and artifact
        for body in served:
            assert body["provenance"]["backend"] == "ensemble" and body["version"] == "1.0.0"
            assert body["provenance"]["sha256"] == in_process[0]["provenance"]["sha256"]
            members = {m["role"]: m for m in body["provenance"]["members"]}
            for role, alone in (("price", price), ("sentiment", sentiment)):
                assert (members[role]["version"], members[role]["stage"]) == (alone["version"], alone["stage"])
                for field in ("backend", "artifact", "format", "precision", "sha256"):
                    assert members[role][field] == alone["provenance"][field], (role, field)

        # and it was Triton's ensemble that answered them: its statistics count exactly those rows
        assert await ensemble_inference_count(base, entry) - rows_before == 6
        await app.state.service.adapter.unload_ensemble(entry)


async def ensemble_inference_count(settings, entry: str) -> int:
    """Rows Triton's statistics count for the generated ensemble so far."""
    from prediction_service.adapters.triton_client import TritonConnection

    connection = TritonConnection(settings.triton)
    try:
        stats = await connection.inference_statistics(entry, 10.0)
    finally:
        await connection.close()
    return int(stats["model_stats"][0].get("inference_count", 0))
