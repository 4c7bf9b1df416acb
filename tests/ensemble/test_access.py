"""The version-access rule holds for ensembles as for models, on every door: an explicit ensemble version
needs a read key, one that no stage serves (or an archived one) an admin key, and every member version an
ensemble pins is checked with the caller's own scope (it used to run as admin)."""

from __future__ import annotations

import numpy as np
import pytest

from prediction_service.ensemble import EnsembleMember, EnsembleRegistry
from prediction_service.modelzoo.synthetic import synthetic_ohlcv
from prediction_service.settings import SecuritySettings

from .conftest import COMBINER, ENSEMBLE, app_client, register_ensemble

ADMIN, READER = {"X-API-Key": "admin-key"}, {"X-API-Key": "read-key"}
KEYS = SecuritySettings(api_keys="admin-key,read-key:read")
TEXT = "Shares rally after strong earnings beat"


def _bars() -> list:
    return [synthetic_ohlcv(60, seed=3).tolist()]


async def _v1(http, version: str | None, headers: dict):
    body = {"inputs": {"bars": _bars(), "text": [TEXT]}}
    if version is not None:
        body["version"] = version
    return await http.post(f"/v1/models/{ENSEMBLE}/predict", json=body, headers=headers)


async def _oip(http, version: str | None, headers: dict):
    bars = np.asarray(_bars(), dtype=np.float64)
    request = {"inputs": [
        {"name": "bars", "datatype": "FP64", "shape": list(bars.shape), "data": bars.reshape(-1).tolist()},
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXT]}]}
    path = f"/v2/models/{ENSEMBLE}" + (f"/versions/{version}" if version else "") + "/infer"
    return await http.post(path, json=request, headers=headers)


async def _alias(http, version: str | None, headers: dict):
    body = {"ohlcv_data": _bars()[0], "news_text": TEXT}
    if version is not None:
        body["model_version"] = version
    return await http.post("/api/v1/predict/ensemble", json=body, headers=headers)


DOORS = [_v1, _oip, _alias]


def _requests(service, model: str, status: str) -> float:
    return sum(sample.value for metric in service.metrics.registry.collect() for sample in metric.samples
               if sample.name == "prediction_requests_total" and sample.labels.get("model") == model
               and sample.labels.get("status") == status)


@pytest.fixture
async def keyed(ensemble_store):
    registry = register_ensemble(ensemble_store, "0.9.0", stage=None)  # an old version, then archived
    registry.archive(ENSEMBLE, "0.9.0", actor="test")
    async with app_client(ensemble_store, security=KEYS) as (app, http):
        http.app = app
        yield http


@pytest.mark.parametrize("door", DOORS, ids=lambda door: door.__name__.strip("_"))
async def test_an_explicit_ensemble_version_needs_a_key_and_an_archived_one_admin(keyed, door):
    assert (await door(keyed, None, {})).status_code == 200  # a stage: open, as for models
    assert (await door(keyed, "1.0.0", {})).status_code == 401
    assert (await door(keyed, "1.0.0", READER)).status_code == 200
    assert (await door(keyed, "0.9.0", {})).status_code == 401
    assert (await door(keyed, "0.9.0", READER)).status_code == 403
    archived = await door(keyed, "0.9.0", ADMIN)
    assert archived.status_code == 200, archived.text


async def test_a_refused_version_is_counted_and_loads_nothing(keyed):
    service = keyed.app.state.service
    loaded_before = {model.key for model in service.adapter.loaded()}
    assert (await _v1(keyed, "0.9.0", READER)).status_code == 403
    assert {model.key for model in service.adapter.loaded()} == loaded_before
    assert _requests(service, ENSEMBLE, "403") == 1


async def test_a_pinned_member_version_is_checked_with_the_callers_scope(ensemble_store):
    members = (EnsembleMember(role="price", model="lstm-price", version="1.0.0"),
               EnsembleMember(role="sentiment", model="sentiment-transformer"))
    registry = EnsembleRegistry(ensemble_store)
    registry.register(ENSEMBLE, "3.0.0", members, COMBINER)
    registry.promote(ENSEMBLE, "3.0.0", "production", actor="test")
    async with app_client(ensemble_store, security=KEYS) as (app, http):
        anonymous = await _v1(http, None, {})
        assert anonymous.status_code == 401, anonymous.text
        assert "explicit version" in anonymous.json()["error"]["message"]
        reader = await _v1(http, None, READER)
        assert reader.status_code == 200, reader.text
        assert reader.json()["provenance"]["members"][0]["version"] == "1.0.0"
