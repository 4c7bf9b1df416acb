"""The README documents what the aliases take: every alias path, body field and query parameter, and the
combiner.json of its `ensemble register` example is the one setup-demo registers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel

from prediction_service.api.routes import model_server_v2, seed_aliases
from prediction_service.api.routes.experiments import StopRequest
from prediction_service.commands.demo_registry import DEMO_COMBINER

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
ALIAS_BODIES = (seed_aliases.PriceRequest, seed_aliases.SentimentRequest, seed_aliases.EnsembleRequest,
                seed_aliases.BatchRequest, seed_aliases.BatchItem, model_server_v2.PredictRequest,
                model_server_v2.BatchPredictRequest, model_server_v2.ReloadRequest, model_server_v2.ABTestCreate,
                StopRequest)


def test_the_combiner_file_is_the_demo_combiner():
    block = re.search(r"cat > combiner\.json <<'JSON'\n(.*?)\nJSON\n", README, re.S)
    assert block is not None, "the README shows combiner.json's content"
    assert json.loads(block.group(1)) == DEMO_COMBINER.model_dump(mode="json")


@pytest.mark.parametrize("router", [seed_aliases.router, model_server_v2.router], ids=["aipx", "model-server-v2"])
def test_every_alias_path_is_documented(router):
    for route in router.routes:
        assert isinstance(route, APIRoute)
        assert route.path in README, route.path


@pytest.mark.parametrize("body", ALIAS_BODIES, ids=lambda model: model.__name__)
def test_every_alias_body_field_is_documented(body: type[BaseModel]):
    missing = [name for name in body.model_fields if f'"{name}"' not in README and f"`{name}`" not in README]
    assert not missing, f"{body.__name__}: {missing} not in the README"


def test_every_query_parameter_is_documented():
    from prediction_service.api.app import create_app

    missing = []
    for route in create_app().routes:
        if isinstance(route, APIRoute):
            missing += [f"{route.path}?{q.name}" for q in route.dependant.query_params
                        if f"?{q.name}=" not in README and f"&{q.name}=" not in README]
    assert not missing, missing
