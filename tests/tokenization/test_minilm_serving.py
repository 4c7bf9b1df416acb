"""sentiment-minilm served from ``text``: the server tokenizes with the version's declared wordpiece step
(vocab.txt stored with the version), a 2,000-word text is truncated and served, and text gives the answer of
the tensors the reference tokenizer makes."""

from __future__ import annotations

import json

import numpy as np
from tokenizers import Tokenizer as ReferenceTokenizer

from prediction_service.commands.demo_registry import MINILM_NAME
from prediction_service.modelzoo import minilm_sentiment as minilm
from prediction_service.modelzoo.synthetic import SENTIMENT_CLASSES, synthetic_headlines
from prediction_service.registry import RegistryReader

URL = f"/v1/models/{MINILM_NAME}/predict"
SLOW_OK = {"X-Request-Deadline-Ms": "60000"}
"""A 22 M-parameter encoder on a shared CI core can take longer than the default 1 s deadline."""
HEADLINES = ["Shares of Apple surge 5% after Q3 earnings beat; S&P 500 rallies.",
             "Tesla warns of weaker deliveries, stock tumbles in pre-market trading",
             "The Fed holds rates steady and schedules its next meeting"]


def _reference_inputs(texts: list[str], max_length: int) -> dict[str, list]:
    """What a client with the model's own tokenizer.json sends as tensors (padded to the longest row)."""
    reference = ReferenceTokenizer.from_file(str(minilm.encoder_dir() / "tokenizer.json"))
    reference.enable_truncation(max_length)
    reference.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = reference.encode_batch(texts)
    return {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings]}


def test_the_version_declares_wordpiece_and_stores_its_vocab(minilm_store):
    version = RegistryReader(minilm_store).resolve(MINILM_NAME)
    text = version.signature.text
    assert text is not None and text.kind == "wordpiece" and text.truncation and text.max_length == 256
    assert text.token_type_ids == "token_type_ids" and text.padding == "longest"
    assert (version.path / "vocab.txt").read_bytes() == minilm.vocab_path().read_bytes()
    written = json.loads((version.path / "metadata.json").read_text())
    assert written["signature"]["text"]["kind"] == "wordpiece"
    # fp32, fp16 and int8 were each validated against PyTorch; what passed is registered, what did not is named
    validation = version.metadata.validation.details
    validated = set(validation["variants"]) | {v["variant"] for v in validation["rejected"]}
    assert validated == {"onnx-fp32", "onnx-fp16", "onnx-int8"}
    assert {"onnx-fp32", "onnx-fp16"} <= set(validation["variants"])
    assert {(a.format, a.precision) for a in version.metadata.artifacts} >= {("onnx", "fp32"), ("onnx", "fp16")}


async def test_text_gives_the_answer_of_the_reference_tokenizers_tensors(minilm_client):
    from_text = await minilm_client.post(URL, json={"text": HEADLINES}, headers=SLOW_OK)
    from_tensors = await minilm_client.post(URL, json={"inputs": _reference_inputs(HEADLINES, 256)},
                                            headers=SLOW_OK)
    assert from_text.status_code == from_tensors.status_code == 200, from_text.text
    assert from_text.json()["outputs"] == from_tensors.json()["outputs"]
    predictions = from_text.json()["predictions"]
    assert [p["label"] for p in predictions][:2] == ["positive", "negative"]
    assert set(predictions[0]["scores"]) == set(SENTIMENT_CLASSES)


async def test_a_2000_word_text_is_truncated_and_served(minilm_client):
    words = " ".join(synthetic_headlines(400, seed=9)[0]).split()[:2000]
    text = "Shares soar after record profits beat estimates. " + " ".join(words)
    assert len(text.split()) > 2000
    response = await minilm_client.post(URL, json={"text": [text, HEADLINES[0]]}, headers=SLOW_OK)
    assert response.status_code == 200, response.text
    # the same as its first 256 tokens sent as tensors: the rest was cut, not refused
    first = await minilm_client.post(URL, json={"inputs": _reference_inputs([text, HEADLINES[0]], 256)},
                                     headers=SLOW_OK)
    assert first.status_code == 200 and len(_reference_inputs([text], 256)["input_ids"][0]) == 256
    assert response.json()["outputs"] == first.json()["outputs"]


async def test_oip_rest_takes_text_as_bytes(minilm_client):
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(HEADLINES)], "data": HEADLINES}]}
    oip = await minilm_client.post(f"/v2/models/{MINILM_NAME}/infer", json=body, headers=SLOW_OK)
    v1 = await minilm_client.post(URL, json={"text": HEADLINES}, headers=SLOW_OK)
    assert oip.status_code == 200, oip.text
    probabilities = next(o for o in oip.json()["outputs"] if o["name"] == "probabilities")
    np.testing.assert_array_equal(np.array(probabilities["data"], dtype=np.float32).reshape(len(HEADLINES), -1),
                                  np.array(v1.json()["outputs"]["probabilities"], dtype=np.float32))


async def test_the_head_learned_the_synthetic_sentiment(minilm_client):
    texts, labels = synthetic_headlines(64, seed=77)  # not the training or validation seeds
    response = await minilm_client.post(URL, json={"text": texts}, headers=SLOW_OK)
    assert response.status_code == 200, response.text
    predicted = [SENTIMENT_CLASSES.index(p["label"]) for p in response.json()["predictions"]]
    accuracy = float(np.mean(np.array(predicted) == labels))
    assert accuracy > 0.8, (accuracy, response.json()["provenance"])
