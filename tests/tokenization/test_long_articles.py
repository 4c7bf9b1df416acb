"""The default sentiment model truncates as the MiniLM model does: a long article within the byte limit is
served on its first 64 tokens (the texts it was trained on were cut the same way), not refused."""

from __future__ import annotations

from prediction_service.modelzoo.synthetic import synthetic_headlines
from prediction_service.registry import RegistryReader

HEADLINE = "Shares rally after strong earnings beat"


def _article(words: int) -> str:
    headlines, _ = synthetic_headlines(400, seed=11)
    body = " ".join(headlines).split()
    return " ".join([*HEADLINE.split(), *(body * (words // len(body) + 1))][:words])


def test_the_demo_signature_declares_truncation(demo_store):
    text = RegistryReader(demo_store).resolve("sentiment-transformer").signature.text
    assert text is not None and text.truncation and text.max_length == 64


async def test_a_2000_word_article_answers_200_as_its_first_64_tokens(demo_client):
    article = _article(2_000)
    assert len(article.split()) == 2_000 and len(article) > 10_000
    served = await demo_client.post("/v1/models/sentiment-transformer/predict", json={"text": [article]})
    assert served.status_code == 200, served.text
    head = " ".join(article.split()[:62])  # [CLS] + 62 words + [SEP]: what the model reads of the article
    reference = await demo_client.post("/v1/models/sentiment-transformer/predict", json={"text": [head]})
    assert served.json()["predictions"] == reference.json()["predictions"]
    for path, body in (("/api/v1/predict/sentiment", {"text": article}),
                       ("/api/ml/predict", {"model_name": "sentiment-transformer", "features": {"text": article}})):
        alias = await demo_client.post(path, json=body)
        assert alias.status_code == 200, alias.text
