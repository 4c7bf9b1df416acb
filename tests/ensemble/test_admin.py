"""Operators manage ensembles without Python: ``python -m prediction_service ensemble ...`` in real
subprocesses, and the admin-scoped /v1/registry/ensembles routes (keys checked before the body is read)."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
from fastapi import FastAPI

from prediction_service.api.errors import install_error_handlers
from prediction_service.api.routes.registry import router
from prediction_service.ensemble import EnsembleRegistry
from prediction_service.serving.service import Service
from prediction_service.settings import SecuritySettings, Settings
from tests.registry.conftest import run_cli

ADMIN = {"X-API-Key": "admin-secret"}
READ = {"X-API-Key": "read-secret"}
MEMBERS = [{"role": "price", "model": "lstm-price"}, {"role": "sentiment", "model": "sentiment-transformer"}]
DEMO = {"production": "1.0.0", "staging": None, "versions": 1}
"""One version in production: the demo's price-sentiment (setup-demo), and here "ps" once promoted."""


@pytest.fixture
def store(demo_store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(demo_store, root, symlinks=True)
    return root


def test_cli_register_list_show_promote_archive(store, tmp_path):
    combiner = tmp_path / "combiner.json"
    combiner.write_text(json.dumps({"price_weight": 0.8, "sentiment_weight": 0.2, "sentiment_scale": 0.05}))
    cli = ("ensemble",)
    run_cli(*cli, "register", "ps", "1.0.0", "--store", str(store), "--price", "lstm-price",
            "--sentiment", "sentiment-transformer", "--sentiment-version", "1.0.0", "--combiner", str(combiner),
            "--price-weight", "0.7", "--sentiment-weight", "0.3", "--tag", "desk=fx", "--actor", "ops")
    registered = EnsembleRegistry(store).get("ps", "1.0.0").metadata
    # the flags win over the file; what neither sets keeps the file's value or the default
    assert (registered.combiner.price_weight, registered.combiner.sentiment_scale) == (0.7, 0.05)
    assert registered.member("sentiment").version == "1.0.0" and registered.member("price").stage is None
    assert registered.tags == {"desk": "fx"}

    run_cli(*cli, "promote", "ps", "1.0.0", "--store", str(store))
    listed = json.loads(run_cli(*cli, "list", "--store", str(store), "--json").stdout)
    assert listed == [{"ensemble": "price-sentiment", **DEMO}, {"ensemble": "ps", **DEMO}]
    shown = run_cli(*cli, "show", "ps", "--store", str(store)).stdout
    assert "member sentiment: sentiment-transformer 1.0.0" in shown and "price_weight=0.7" in shown
    archived = json.loads(run_cli(*cli, "archive", "ps", "1.0.0", "--store", str(store), "--json").stdout)
    assert archived["status"] == "archived"
    assert EnsembleRegistry(store).stages("ps")["production"] is None


@pytest.mark.parametrize("extra, says", [
    (["--price-weight", "0.9"], "price_weight + sentiment_weight must be 1"),
    (["--disagree-confidence", "2"], "disagree_confidence"),
    (["--price-stage", "staging"], "no staging version"),
])
def test_cli_refuses_a_bad_combiner_or_member_and_writes_nothing(store, extra, says):
    result = run_cli("ensemble", "register", "ps", "1.0.0", "--store", str(store), "--price", "lstm-price",
                     "--sentiment", "sentiment-transformer", *extra, check=False)
    assert result.returncode == 1 and says in result.stderr
    assert not (store / "ps").exists() or not any((store / "ps").glob("v*"))


@pytest.fixture
async def client(store):
    app = FastAPI()
    app.state.service = Service(Settings(model_store=store,
                                         security=SecuritySettings(api_keys="admin-secret,read-secret:read")))
    install_error_handlers(app)
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield http


async def test_rest_register_promote_show_archive(client):
    created = await client.post("/v1/registry/ensembles/ps/versions", headers=ADMIN, json={
        "version": "1.0.0", "members": MEMBERS, "combiner": {"price_weight": 0.5, "sentiment_weight": 0.5}})
    assert created.status_code == 201, created.text
    assert created.json()["combiner"]["price_weight"] == 0.5 and created.json()["status"] == "none"
    promoted = await client.post("/v1/registry/ensembles/ps/versions/1.0.0/promote", headers=ADMIN, json={})
    assert promoted.status_code == 200 and promoted.json()["status"] == "production"

    listed = await client.get("/v1/registry/ensembles", headers=READ)
    assert listed.json() == [{"name": "price-sentiment", **DEMO}, {"name": "ps", **DEMO}]
    detail = (await client.get("/v1/registry/ensembles/ps", headers=READ)).json()
    assert detail["stages"]["production"] == "1.0.0" and detail["versions"][0]["members"][0]["model"] == "lstm-price"
    version = await client.get("/v1/registry/ensembles/ps/versions/1.0.0", headers=READ)
    assert version.json()["version"] == "1.0.0"
    assert (await client.get("/v1/registry/ensembles/nope", headers=READ)).status_code == 404

    archived = await client.post("/v1/registry/ensembles/ps/versions/1.0.0/archive", headers=ADMIN)
    assert archived.status_code == 200 and archived.json()["status"] == "archived"


async def test_rest_writes_need_admin_before_the_body_is_read_and_bad_bodies_are_422(client):
    body = {"version": "1.0.0", "members": MEMBERS}
    for headers in ({}, READ):
        refused = await client.post("/v1/registry/ensembles/ps/versions", headers=headers, json=body)
        assert refused.status_code in (401, 403), refused.text
        # an unparseable body still gets the auth answer: the key is checked first
        garbled = await client.post("/v1/registry/ensembles/ps/versions", headers=headers, content=b"{not json",
                                    )
        assert garbled.status_code in (401, 403)
    bad = await client.post("/v1/registry/ensembles/ps/versions", headers=ADMIN, json={
        **body, "combiner": {"price_weight": 0.9, "sentiment_weight": 0.3}})
    assert bad.status_code == 422 and "must be 1" in bad.text
    missing = await client.post("/v1/registry/ensembles/ps/versions", headers=ADMIN, json={
        "version": "1.0.0", "members": [MEMBERS[0], {"role": "sentiment", "model": "no-such-model"}]})
    assert missing.status_code == 422 and "no-such-model" in missing.text
    assert (await client.get("/v1/registry/ensembles", headers=READ)).json() == [{"name": "price-sentiment", **DEMO}]
