"""Models and ensembles share one namespace: each door refuses a name that holds the other kind (409
``name_in_use``), and a clash written on disk by hand costs only that name, never the worker's readiness."""

from __future__ import annotations

import base64
import logging
import os
import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from prediction_service.api.routes.registry import router
from prediction_service.ensemble import EnsembleMember, EnsembleRegistry, WeightedPriceSentiment
from prediction_service.errors import Conflict
from prediction_service.registry import ModelRegistry
from prediction_service.registry.errors import NameInUse
from prediction_service.registry.model_version import VersionMetadata
from prediction_service.settings import AuditSettings, SecuritySettings, Settings
from tests.registry.conftest import onnx_artifact, run_cli
from tests.support.asgi import asgi_client, router_app, served_app

ADMIN = {"X-API-Key": "admin-secret"}
ENSEMBLE = "combo"
MEMBERS = (EnsembleMember(role="price", model="tiny-regressor"),
           EnsembleMember(role="sentiment", model="tiny-classifier"))
COMBINER = WeightedPriceSentiment(positive_label="up", negative_label="down")


@pytest.fixture
def store(tiny_store, onnx_models) -> Path:
    """The tiny registry plus model ``other`` 1.0.0 and ensemble ``combo`` 1.0.0 in production."""
    ModelRegistry(tiny_store).register("other", "1.0.0", onnx_artifact(onnx_models["a"]))
    ensembles = EnsembleRegistry(tiny_store)
    ensembles.register(ENSEMBLE, "1.0.0", MEMBERS, COMBINER)
    ensembles.promote(ENSEMBLE, "1.0.0")
    return tiny_store


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".state" not in p.parts)


def test_the_python_api_refuses_a_model_under_an_ensembles_name_and_the_reverse(store, onnx_models):
    before = tree(store)
    with pytest.raises(NameInUse) as refused:
        ModelRegistry(store).register(ENSEMBLE, "2.0.0", onnx_artifact(onnx_models["a"]))
    assert isinstance(refused.value, Conflict) and int(refused.value.status) == 409
    assert refused.value.code == "name_in_use" and "is an ensemble" in refused.value.message
    with pytest.raises(NameInUse, match="is a model"):
        EnsembleRegistry(store).register("other", "1.0.0", MEMBERS, COMBINER)
    assert tree(store) == before


async def test_the_rest_routes_answer_409_name_in_use(store, onnx_models):
    settings = Settings(model_store=store, security=SecuritySettings(api_keys="admin-secret"))
    before = tree(store)
    async with asgi_client(router_app(router, settings), lifespan=False) as http:
        model = await http.post(f"/v1/registry/models/{ENSEMBLE}/versions", headers=ADMIN, json={
            "version": "2.0.0", "artifacts": [{"file_name": "model.onnx", "format": "onnx", "content_base64":
                                               base64.b64encode(onnx_models["a"].read_bytes()).decode()}]})
        ensemble = await http.post("/v1/registry/ensembles/other/versions", headers=ADMIN, json={
            "version": "9.0.0", "combiner": {"positive_label": "up", "negative_label": "down"},
            "members": [{"role": "price", "model": "tiny-regressor"},
                        {"role": "sentiment", "model": "tiny-classifier"}]})
    for response, says in ((model, "is an ensemble"), (ensemble, "is a model")):
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "name_in_use" and says in response.json()["error"]["message"]
    assert tree(store) == before


def test_the_cli_refuses_both_ways_with_exit_1(store, onnx_models):
    model = run_cli("registry", "register", ENSEMBLE, "2.0.0", "--store", str(store),
                    "--artifact", str(onnx_models["a"]), check=False)
    ensemble = run_cli("ensemble", "register", "other", "9.0.0", "--store", str(store), "--price", "tiny-regressor",
                       "--sentiment", "tiny-classifier", "--positive-label", "up", "--negative-label", "down",
                       check=False)
    for result in (model, ensemble):
        assert result.returncode == 1 and "name_in_use" in result.stderr, result.stderr
    assert not (store / ENSEMBLE / "v2.0.0").exists() and not (store / "other" / "v9.0.0").exists()


def _model_version_by_hand(store: Path, name: str, version: str) -> None:
    """What an operator copying files could leave: a model version under a name that holds an ensemble."""
    target = store / name / f"v{version}"
    shutil.copytree(store / "tiny-regressor" / "v1.0.0", target)
    meta = VersionMetadata.model_validate_json((target / "metadata.json").read_bytes())
    (target / "metadata.json").write_text(meta.model_copy(update={"name": name, "version": version,
                                                                  "status": "none"}).model_dump_json())


@pytest.mark.parametrize("model_in_production", [False, True], ids=["ensemble-production", "model-production"])
async def test_a_clash_on_disk_does_not_take_the_worker_out_of_rotation(store, caplog, model_in_production):
    _model_version_by_hand(store, ENSEMBLE, "2.0.0")
    if model_in_production:  # the other way round: the model's version holds production, the ensemble's staging
        os.symlink("v1.0.0", store / ENSEMBLE / "staging")
        (store / ENSEMBLE / "production").unlink()
        os.symlink("v2.0.0", store / ENSEMBLE / "production")
    settings = Settings(model_store=store, audit=AuditSettings(enabled=False), stage_poll_interval_seconds=0.05,
                        preload_stages="production,staging")
    caplog.set_level(logging.WARNING, logger="prediction_service.registry.reader")
    async with served_app(settings, metrics_registry=CollectorRegistry()) as (app, http):
        first = await http.get("/health/ready")
        await app.state.service.manager.poll()
        second = await http.get("/health/ready")
    for response in (first, second):
        assert response.status_code == 200, response.text
        assert response.json()["reasons"] == []
    clash = [r.getMessage() for r in caplog.records if "not a model version" in r.getMessage()]
    stage = "staging" if model_in_production else "production"
    assert len(clash) == 1 and f"{ENSEMBLE}/{stage} points at v1.0.0" in clash[0]  # once, not per probe
