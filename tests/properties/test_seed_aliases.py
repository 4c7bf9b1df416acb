"""The /api/v1 alias routes (price, sentiment, ensemble, batch) with generated bodies: OHLCV windows and
texts valid, broken and junk, bad model_version / stage / routing_key / symbol, and broken on the wire.
Every answer is documented, the error body is ``{"error": {...}}`` as on /v1, the server stays ready,
and metrics and the audit log count each request once (under the model the alias serves)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import strategies as st

from prediction_service.settings import SeedApiSettings

from .harness import copy_store, run_rest_property, serve
from .strategies import (HEADLINE, WINDOW, HttpCase, broken, encode, json_headers, mostly, numbers, odd_scalars,
                         selector_fields, shaped, tensor_values, tenth, texts, wire_body)

SEED = SeedApiSettings()
ROUTES = {"price": SEED.price_model, "sentiment": SEED.sentiment_model, "ensemble": SEED.ensemble_model,
          "batch": SEED.price_model}
"""Alias -> the model it serves (the registry's defaults)."""

BARS = [("price", {"symbol": "005930", "ohlcv_data": WINDOW}), ("price", {"ohlcv_data": WINDOW, "stage": "production"}),
        ("batch", {"items": [{"symbol": "a", "ohlcv_data": WINDOW}, {"ohlcv_data": WINDOW}]}),
        ("ensemble", {"symbol": "005930", "ohlcv_data": WINDOW, "news_text": HEADLINE})]
TEXT = [("sentiment", {"text": HEADLINE}), ("sentiment", {"text": "Company warns of losses", "routing_key": "k"}),
        ("ensemble", {"ohlcv_data": WINDOW, "news_text": "Kurse fallen"})]

windows = st.one_of(shaped(numbers, max_rank=3, max_dim=8), tensor_values,
                    st.sampled_from(([[100.0, 101.0, 99.0, -1.0, 10.0]] * 60, [[100.0] * 5] * 59,
                                     [[100.0] * 4] * 60, [WINDOW] * 3, [])))
FREE_BARS = st.one_of(
    st.fixed_dictionaries({"ohlcv_data": windows}, optional={"symbol": st.one_of(texts, odd_scalars)}),
    st.fixed_dictionaries({"items": st.one_of(st.lists(st.fixed_dictionaries({"ohlcv_data": windows}),
                                                       max_size=3),
                                              st.just([{"ohlcv_data": WINDOW}] * 300), odd_scalars)}))
FREE_TEXT = st.fixed_dictionaries({"text": st.one_of(texts, odd_scalars, st.sampled_from(("a" * 1100, "word " * 400,
                                                                                          [HEADLINE])))},
                                  optional={"news_text": st.one_of(texts, odd_scalars)})


@st.composite
def alias_cases(draw, valid: list[tuple[str, Any]], free_form: st.SearchStrategy) -> HttpCase:
    alias, document = draw(st.sampled_from(valid))
    document = draw(tenth.flatmap(lambda n: st.just(document) if n < 3 else broken(document)
                                              if n < 8 else free_form))
    if isinstance(document, dict):
        document = {**document, **draw(selector_fields(version_key="model_version"))}
    alias = draw(mostly(alias, st.sampled_from(tuple(ROUTES))))
    return HttpCase(ROUTES[alias], f"/api/v1/predict/{alias}", draw(wire_body(encode(document))),
                    draw(json_headers()))


@pytest.fixture(scope="module")
def served(property_store_template, tmp_path_factory):
    with serve(copy_store(property_store_template, tmp_path_factory.mktemp("aliases"))) as app:
        yield app


def _run(served, caplog, cases: st.SearchStrategy) -> None:
    run_rest_property(served, caplog, cases, oip=False)


def test_bars_aliases(served, caplog):
    _run(served, caplog, alias_cases(BARS, FREE_BARS))


def test_text_aliases(served, caplog):
    _run(served, caplog, alias_cases(TEXT, FREE_TEXT))
