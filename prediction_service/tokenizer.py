"""A plain-Python word-level tokenizer over a vocab file (one token per line, never code).

Ids: the vocab line number. ``[PAD]``, ``[UNK]``, ``[CLS]`` and ``[SEP]`` must be present; a sequence
is ``[CLS] tokens... [SEP]`` padded with ``[PAD]`` to ``max_length``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InvalidInput

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP)
# Words keep inner hyphens, ampersands and apostrophes (in-line, s&p, company's); other punctuation splits.
_WORD = re.compile(r"[a-z0-9]+(?:[-&'][a-z0-9]+)*|[^\sa-z0-9]")
MAX_VOCAB_BYTES = 8 * 1024 * 1024


class Tokenizer:
    def __init__(self, tokens: Sequence[str]):
        vocab: dict[str, int] = {}
        for index, token in enumerate(tokens):
            if not token or any(c.isspace() for c in token):
                raise InvalidInput(f"vocab line {index + 1}: a token must be one non-empty word", {"line": index + 1})
            if token in vocab:
                raise InvalidInput(f"vocab line {index + 1}: duplicate token {token!r}", {"line": index + 1})
            vocab[token] = index
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise InvalidInput(f"vocab lacks special tokens {missing}", {"missing": missing})
        self.vocab = vocab
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (vocab[t] for t in SPECIAL_TOKENS)

    @classmethod
    def from_file(cls, path: Path) -> "Tokenizer":
        """Read a UTF-8 vocab file: plain text, one token per line; nothing in it is evaluated."""
        path = Path(path)
        if path.stat().st_size > MAX_VOCAB_BYTES:
            raise InvalidInput(f"vocab file {path.name} is larger than {MAX_VOCAB_BYTES} bytes")
        lines = path.read_text(encoding="utf-8").splitlines()
        return cls([line.strip() for line in lines if line.strip()])

    def __len__(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())

    def encode(self, text: str) -> list[int]:
        """``[CLS] ids... [SEP]``, unpadded."""
        ids = [self.vocab.get(word, self.unk_id) for word in self.tokenize(text)]
        return [self.cls_id, *ids, self.sep_id]

    def encode_batch(self, texts: Sequence[str], max_length: int,
                     truncate: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """int64 ``(input_ids, attention_mask)`` of shape ``[len(texts), max_length]``.

        A text longer than ``max_length`` tokens (special tokens included) raises InvalidInput
        unless ``truncate``, in which case it keeps its first tokens and ends with ``[SEP]``.
        """
        if max_length < 2:
            raise InvalidInput("max_length must leave room for [CLS] and [SEP]", {"max_length": max_length})
        input_ids = np.full((len(texts), max_length), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(texts), max_length), dtype=np.int64)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInput(f"text {row} is not a string", {"index": row})
            ids = self.encode(text)
            if len(ids) > max_length:
                if not truncate:
                    raise InvalidInput(
                        f"text {row} has {len(ids)} tokens (with [CLS]/[SEP]), more than the limit of {max_length}",
                        {"index": row, "tokens": len(ids), "max_length": max_length},
                    )
                ids = ids[: max_length - 1] + [self.sep_id]
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask
