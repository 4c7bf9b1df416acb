"""The registered ensemble generated as a Triton ``ensemble_scheduling`` config (members + the shipped
combiner step) loads in a real tritonserver (nvidia-pytriton's) and answers what the service's own
ensemble path answers for the same bars and texts."""

from __future__ import annotations

import numpy as np
import pytest

from prediction_service.adapters.triton import TritonAdapter
from prediction_service.ensemble import EnsembleRegistry
from prediction_service.modelzoo.synthetic import synthetic_ohlcv
from prediction_service.processing import ModelProcessing
from prediction_service.registry import RegistryReader
from prediction_service.settings import LimitSettings
from tests.support.triton_fixtures import triton_settings

from .conftest import ENSEMBLE

pytestmark = pytest.mark.triton

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
