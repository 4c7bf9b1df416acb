"""POST /v1/models/{name}/predict with generated tensors, rows, text and raw OHLCV bars (valid, broken,
junk, and broken on the wire): every answer is documented, the error body is ``{"error": {...}}``, the
server stays ready, and metrics and the audit log count each request once, as the client got it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import strategies as st

from prediction_service.preprocessing.bars import preprocess_bars
from prediction_service.modelzoo.datasets import price_bars_step

from .harness import copy_store, run_rest_property, serve
from .strategies import (BAD_NAMES, COLUMNS, DIRECTION, ENSEMBLE, HEADLINE, LONG_WINDOW, MODELS, PRICE, ROW, SENTIMENT,
                         TINY, WINDOW, HttpCase, broken, encode, json_headers, model_path, mostly, numbers,
                         odd_scalars, selector_fields, shaped, tensor_values, tenth, texts, wire_body)

PREDICT = "/v1/models/{name}/predict"

NORMALIZED = preprocess_bars(price_bars_step(), WINDOW).tolist()  # lstm-price's own tensor for WINDOW

TENSORS = [(TINY, {"inputs": {"x": [ROW, ROW]}}), (TINY, {"inputs": {"x": [ROW]}, "stage": "staging"}),
           (PRICE, {"inputs": {"ohlcv": NORMALIZED}}),
           (ENSEMBLE, {"inputs": {"bars": [WINDOW], "text": [HEADLINE]}})]
ROWS = [(TINY, {"instances": [ROW, ROW, ROW]}), (TINY, {"instance": ROW}), (TINY, {"instance": {"x": ROW}}),
        (TINY, {"instances": [{"x": ROW}, {"x": ROW}], "version": "2.0.0"}),
        (PRICE, {"instance": NORMALIZED[0]})]
TEXT = [(SENTIMENT, {"text": HEADLINE}), (SENTIMENT, {"text": [HEADLINE, "Company warns of losses and layoffs"]})]
BARS = [(PRICE, {"bars": WINDOW}), (PRICE, {"bars": [WINDOW, WINDOW]}), (PRICE, {"bars": COLUMNS}),
        (PRICE, {"bars": [COLUMNS]}), (DIRECTION, {"bars": LONG_WINDOW})]

tensor_names = st.sampled_from(("x", "ohlcv", "features", "bars", "text", "", "wrong", "input_ids"))
FREE_TENSORS = st.fixed_dictionaries({"inputs": st.one_of(st.dictionaries(tensor_names, tensor_values, max_size=3),
                                                          odd_scalars, st.lists(tensor_values, max_size=2))})
FREE_ROWS = st.one_of(
    st.fixed_dictionaries({"instances": st.one_of(st.lists(tensor_values, max_size=4), odd_scalars,
                                                  st.just([ROW] * 300))}),
    st.fixed_dictionaries({"instance": tensor_values}),
    st.fixed_dictionaries({"instances": st.lists(st.dictionaries(tensor_names, tensor_values, max_size=2),
                                                 min_size=1, max_size=3)}))
FREE_TEXT = st.fixed_dictionaries({"text": st.one_of(
    texts, st.lists(texts, max_size=4), st.sampled_from(("a" * 1100, "word " * 400, [HEADLINE] * 300, [], [[]])),
    st.lists(odd_scalars, min_size=1, max_size=3))})
FREE_BARS = st.fixed_dictionaries({"bars": st.one_of(
    shaped(numbers, max_rank=3, max_dim=8), tensor_values,
    st.dictionaries(st.sampled_from(("open", "high", "low", "close", "volume", "vwap")),
                    st.one_of(st.lists(numbers, max_size=70), odd_scalars), max_size=6),
    st.sampled_from(([[100.0, 101.0, 99.0, -1.0, 10.0]] * 60, [[100.0] * 5] * 59, [[100.0] * 4] * 60,
                     [WINDOW] * 300, [WINDOW, LONG_WINDOW], [COLUMNS] * 300)))})
FREE_FORM = st.one_of(odd_scalars, st.lists(numbers, max_size=4),
                      st.fixed_dictionaries({"instance": st.just(ROW), "text": st.just(HEADLINE)}))


@st.composite
def v1_cases(draw, valid: list[tuple[str, Any]], free_form: st.SearchStrategy) -> HttpCase:
    model, document = draw(st.sampled_from(valid))
    document = draw(tenth.flatmap(lambda n: st.just(document) if n < 3 else broken(document)
                                              if n < 7 else free_form if n < 9 else FREE_FORM))
    if isinstance(document, dict):
        document = {**document, **draw(selector_fields())}
    model = draw(mostly(model, st.sampled_from(MODELS + BAD_NAMES)))
    return HttpCase(*model_path(model, PREDICT), draw(wire_body(encode(document))), draw(json_headers()))


@pytest.fixture(scope="module")
def served(property_store_template, tmp_path_factory):
    with serve(copy_store(property_store_template, tmp_path_factory.mktemp("v1"))) as app:
        yield app


def _run(served, caplog, cases: st.SearchStrategy) -> None:
    run_rest_property(served, caplog, cases, oip=False)


def test_tensors(served, caplog):
    _run(served, caplog, v1_cases(TENSORS, FREE_TENSORS))


def test_rows(served, caplog):
    _run(served, caplog, v1_cases(ROWS, FREE_ROWS))


def test_text(served, caplog):
    _run(served, caplog, v1_cases(TEXT, FREE_TEXT))


def test_bars(served, caplog):
    _run(served, caplog, v1_cases(BARS, FREE_BARS))
