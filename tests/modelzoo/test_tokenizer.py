from pathlib import Path

import numpy as np
import pytest

from prediction_service.errors import InvalidInput
from prediction_service.modelzoo.datasets import VOCAB_PATH, default_tokenizer
from prediction_service.modelzoo.synthetic import synthetic_headlines
from prediction_service.preprocessing.tokenizer import SPECIAL_TOKENS, Tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return default_tokenizer()


def test_shipped_vocab_has_special_tokens_first_and_a_few_hundred_words(tokenizer):
    assert [tokenizer.vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert 300 <= len(tokenizer) <= 512


def test_encode_batch_gives_known_ids_padding_and_mask(tokenizer):
    ids, mask = tokenizer.encode_batch(["Apple beats estimates", "zzzunknownword"], max_length=8)
    vocab = tokenizer.vocab
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == (2, 8)
    assert ids[0].tolist() == [2, vocab["apple"], vocab["beats"], vocab["estimates"], 3, 0, 0, 0]
    assert mask[0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert ids[1].tolist() == [2, 1, 3, 0, 0, 0, 0, 0]  # unknown word -> [UNK]


def test_words_keep_inner_hyphens_and_ampersands(tokenizer):
    assert tokenizer.tokenize("The S&P 500 is in-line, says Fed.") == \
        ["the", "s&p", "500", "is", "in-line", ",", "says", "fed", "."]


def test_over_limit_text_raises_invalid_input_with_count_and_limit(tokenizer):
    text = " ".join(["stocks"] * 10)
    with pytest.raises(InvalidInput) as info:
        tokenizer.encode_batch(["ok", text], max_length=8)
    assert "12 tokens" in info.value.message and "limit of 8" in info.value.message
    assert info.value.details == {"index": 1, "tokens": 12, "max_length": 8}


def test_truncate_keeps_the_first_tokens_and_ends_with_sep(tokenizer):
    ids, mask = tokenizer.encode_batch([" ".join(["stocks"] * 10)], max_length=8, truncate=True)
    assert ids[0, 0] == 2 and ids[0, -1] == 3 and mask[0].sum() == 8
    assert (ids[0, 1:-1] == tokenizer.vocab["stocks"]).all()


def test_synthetic_headlines_use_only_vocab_words(tokenizer):
    texts, _ = synthetic_headlines(200, seed=5)
    ids, mask = tokenizer.encode_batch(texts, max_length=64)
    assert not (ids[mask == 1] == tokenizer.unk_id).any()


def test_vocab_is_read_as_text_never_executed(tmp_path: Path):
    marker = tmp_path / "marker"
    marker.write_text("still here")
    vocab = tmp_path / "vocab.txt"
    payload = f'__import__("os").remove("{marker}")'
    vocab.write_text("\n".join([*SPECIAL_TOKENS, payload, "stocks"]) + "\n")
    tokenizer = Tokenizer.from_file(vocab)
    assert marker.exists()
    assert tokenizer.vocab[payload] == 4 and tokenizer.vocab["stocks"] == 5


@pytest.mark.parametrize("lines, problem", [
    (["[PAD]", "[UNK]", "[CLS]"], "special tokens"),
    ([*SPECIAL_TOKENS, "up", "up"], "duplicate"),
])
def test_bad_vocab_files_are_refused(tmp_path: Path, lines, problem):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(lines))
    with pytest.raises(InvalidInput, match=problem):
        Tokenizer.from_file(vocab)


def test_vocab_asset_ships_in_the_package():
    assert VOCAB_PATH.is_file() and VOCAB_PATH.parent.name == "assets"
