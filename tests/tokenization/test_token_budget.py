"""Text is bounded in tokens: a request over max_tokens_per_request is refused (413) before the model runs,
from character counts before tokenizing or exactly after; a worker's tokens in flight are bounded
(TokensInFlight); a long text is tokenized only as far as the model reads, with the same tokens as the whole."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from tokenizers import Tokenizer as ReferenceTokenizer

from prediction_service.errors import ServiceUnavailable
from prediction_service.types import RawInput
from prediction_service.modelzoo import minilm_sentiment as minilm
from prediction_service.modelzoo.datasets import VOCAB_PATH
from prediction_service.modelzoo.synthetic import synthetic_headlines
from prediction_service.serving.processing import ModelProcessing, TokensInFlight
from prediction_service.settings import LimitSettings, Settings
from prediction_service.signature import ModelSignature, TensorSpec
from prediction_service.preprocessing.tokenizer import Tokenizer
from tests.support.asgi import served_app

SENTIMENT = "/v1/models/sentiment-transformer/predict"
HEADLINE = "Shares rally after strong earnings beat"


def _model_runs(metrics: CollectorRegistry, model: str) -> float:
    return metrics.get_sample_value("prediction_batch_rows_count", {"model": model}) or 0.0


@pytest.mark.parametrize("texts, says", [
    # 64 texts of 60 words (480 characters: at least 32 tokens each): over from their length, never tokenized
    ([" ".join(["markets"] * 60)] * 64, "make at least 2048 tokens"),
    # short in characters (2 per token) but 42 tokens each: over the budget once tokenized
    (["a " * 40] * 20, "make 840 tokens"),
])
async def test_text_over_the_token_budget_is_413_before_the_model_runs(demo_store, texts, says):
    metrics = CollectorRegistry()
    settings = Settings(model_store=demo_store, limits=LimitSettings(max_tokens_per_request=256))
    async with served_app(settings, metrics_registry=metrics) as (_, client):
        response = await client.post(SENTIMENT, json={"text": texts})
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "payload_too_large" and says in error["message"], error
        assert error["details"]["max_tokens_per_request"] == 256
        assert _model_runs(metrics, "sentiment-transformer") == 0
        within = await client.post(SENTIMENT, json={"text": [HEADLINE] * 20})  # 20 x 8 tokens
        assert within.status_code == 200, within.text
        assert _model_runs(metrics, "sentiment-transformer") == 1


@dataclass
class _Version:
    signature: ModelSignature
    path: Path
    name: str = "m"


def _wordpiece(tmp_path: Path, max_length: int, limits: LimitSettings) -> ModelProcessing:
    shutil.copyfile(minilm.vocab_path(), tmp_path / "vocab.txt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    signature = ModelSignature(inputs=[TensorSpec(name=n, dtype="int64", shape=(-1, -1)) for n in names],
                               outputs=[TensorSpec(name="p", dtype="float32", shape=(-1, 3))],
                               text={"tokenizer": "vocab.txt", "kind": "wordpiece", "max_length": max_length,
                                     "truncation": True, "padding": "longest", "token_type_ids": "token_type_ids"})
    return ModelProcessing(_Version(signature, tmp_path), limits)


def test_the_request_cost_is_rows_times_the_longest_row(tmp_path):
    processing = _wordpiece(tmp_path, 32, LimitSettings())
    arrays = processing.preprocess({RawInput.TEXT: ["Stocks rally", "Oil slips as demand fears grow"]})
    assert arrays["input_ids"].shape == (2, 8) and processing.tokens == 16
    processing.preprocess({RawInput.TEXT: [" ".join(["markets"] * 600)] * 3})  # truncated: 32 tokens a row
    assert processing.tokens == 3 * 32


def test_a_long_text_has_the_tokens_of_the_whole_text_cut_where_the_model_stops(tmp_path):
    """Only a prefix of a long text is tokenized, yet every row equals the reference tokenizer's encoding of
    the whole text truncated to max_length: punctuation, accents, CJK, over-long words and texts without
    spaces included."""
    reference = ReferenceTokenizer.from_file(str(minilm.encoder_dir() / "tokenizer.json"))
    reference.no_padding()
    words = " ".join(synthetic_headlines(200, seed=3)[0]).split()
    pieces = words + ["S&P", "500,", "Café", "naïve", "x" * 150, "中文字符", "\u0301", "$5.2bn", "...", "\t",
                      "ΣΟΦΙΑΣ", "\x1c", "a\u00a0b", "--"]
    rng = random.Random(7)
    texts = [rng.choice([" ", "", ",", "\n"]).join(rng.choice(pieces) for _ in range(rng.choice([3, 80, 700])))
             for _ in range(60)]
    for max_length in (16, 128):
        # the character rule set aside (it cuts long texts first): only what the tokenizer reads is compared
        limits = LimitSettings(max_tokens_per_request=1 << 20, max_text_chars_per_token=10_000)
        processing = _wordpiece(tmp_path, max_length, limits)
        arrays = processing.preprocess({RawInput.TEXT: texts})
        reference.enable_truncation(max_length)
        for row, text in enumerate(texts):
            ids = arrays["input_ids"][row][arrays["attention_mask"][row] == 1].tolist()
            assert ids == reference.encode(text).ids, (max_length, row, text[:120])


def test_the_word_step_reads_only_the_words_it_keeps():
    tokenizer = Tokenizer.from_file(VOCAB_PATH)
    text = "shares rally after strong earnings beat as the market rallies " * 50
    ids, mask = tokenizer.encode_batch([text], 8, truncate=True)
    whole = [tokenizer.vocab.get(word, tokenizer.unk_id) for word in tokenizer.tokenize(text)]
    assert ids[0].tolist() == [tokenizer.cls_id, *whole[:6], tokenizer.sep_id] and mask.all()


async def test_a_long_text_and_its_first_words_give_the_same_prediction(minilm_client):
    """The model reads 256 tokens: a 600-word text and its first 300 words (well past 256 tokens) are the
    same input to it."""
    words = " ".join(synthetic_headlines(200, seed=4)[0]).split()[:600]
    long, head = " ".join(words), " ".join(words[:300])
    url = "/v1/models/sentiment-minilm/predict"
    slow_ok = {"X-Request-Deadline-Ms": "60000"}
    answers = [await minilm_client.post(url, json={"text": [text]}, headers=slow_ok) for text in (long, head)]
    assert [a.status_code for a in answers] == [200, 200], answers[0].text
    assert answers[0].json()["outputs"] == answers[1].json()["outputs"]


def test_tokens_in_flight_refuse_past_the_budget_and_admit_after_release():
    budget = TokensInFlight(1000)
    budget.acquire(600)
    with pytest.raises(ServiceUnavailable) as refused:
        budget.acquire(500)
    assert refused.value.status == 503 and refused.value.headers() == {"Retry-After": "1"}
    assert refused.value.details["tokens_in_flight"] == 600 and budget.tokens == 600
    with budget.hold(400):
        assert budget.tokens == 1000
    budget.release(600)
    assert budget.tokens == 0
    with budget.hold(5000):  # alone, a request is always admitted
        with pytest.raises(ServiceUnavailable):
            budget.acquire(1)
    assert budget.tokens == 0
