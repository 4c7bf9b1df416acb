"""ModelProcessing's text path over the declared steps: which texts are truncated, which are refused."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from prediction_service.errors import InvalidInput, PayloadTooLarge
from prediction_service.types import RawInput
from prediction_service.modelzoo import minilm_sentiment as minilm
from prediction_service.modelzoo.datasets import VOCAB_PATH
from prediction_service.serving.processing import ModelProcessing
from prediction_service.settings import LimitSettings
from prediction_service.signature import ModelSignature, TensorSpec


@dataclass
class _Version:
    """Just what ModelProcessing reads of a registry version."""

    signature: ModelSignature
    path: Path
    name: str = "m"


def _processing(tmp_path: Path, vocab: Path, text: dict, token_dim: int = -1,
                chars_per_token: int = 4) -> ModelProcessing:
    shutil.copyfile(vocab, tmp_path / "vocab.txt")
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if text.get("token_type_ids") else [])
    signature = ModelSignature(inputs=[TensorSpec(name=n, dtype="int64", shape=(-1, token_dim)) for n in names],
                               outputs=[TensorSpec(name="p", dtype="float32", shape=(-1, 3))],
                               text={"tokenizer": "vocab.txt", **text})
    return ModelProcessing(_Version(signature, tmp_path), LimitSettings(max_text_chars_per_token=chars_per_token))


def test_wordpiece_fills_ids_mask_and_token_types_padded_to_the_longest(tmp_path):
    processing = _processing(tmp_path, minilm.vocab_path(), {
        "kind": "wordpiece", "max_length": 32, "truncation": True, "padding": "longest",
        "token_type_ids": "token_type_ids"})
    arrays = processing.preprocess({RawInput.TEXT: ["Stocks rally", "Oil slips as demand fears grow"]})
    assert set(arrays) == {"input_ids", "attention_mask", "token_type_ids"}
    assert arrays["input_ids"].shape == (2, 8) and arrays["attention_mask"][0].tolist() == [1] * 4 + [0] * 4
    assert not arrays["token_type_ids"].any()


def test_a_truncating_step_cuts_a_huge_text_instead_of_refusing_it(tmp_path):
    processing = _processing(tmp_path, minilm.vocab_path(), {
        "kind": "wordpiece", "max_length": 16, "truncation": True, "padding": "longest",
        "token_type_ids": "token_type_ids"})
    huge = "up " * 300_000  # 900,000 characters: cut to 16 x 4 (21 words) before tokenizing
    arrays = processing.preprocess({RawInput.TEXT: [huge]})
    assert arrays["input_ids"].shape == (1, 16) and arrays["input_ids"][0, -1] == 102


def test_a_step_without_truncation_still_refuses(tmp_path):
    processing = _processing(tmp_path, minilm.vocab_path(), {"kind": "wordpiece", "max_length": 8,
                                                             "padding": "longest"})
    with pytest.raises(PayloadTooLarge):
        processing.preprocess({RawInput.TEXT: ["x" * 33]})
    with pytest.raises(InvalidInput, match="more than the limit of 8"):
        processing.preprocess({RawInput.TEXT: ["a b c d e f g"]})


def test_the_word_step_is_unchanged_and_may_now_truncate(tmp_path):
    refusing = _processing(tmp_path, VOCAB_PATH, {"max_length": 8}, token_dim=8, chars_per_token=16)
    with pytest.raises(InvalidInput, match="more than the limit of 8"):
        refusing.preprocess({RawInput.TEXT: ["shares rally after strong earnings beat as the market rallies"]})
    truncating = _processing(tmp_path, VOCAB_PATH, {"max_length": 8, "truncation": True}, token_dim=8,
                             chars_per_token=16)
    ids = truncating.preprocess({RawInput.TEXT: ["shares rally after strong earnings beat as the market rallies"]})
    assert ids["input_ids"].shape == (1, 8) and np.all(ids["attention_mask"] == 1)
