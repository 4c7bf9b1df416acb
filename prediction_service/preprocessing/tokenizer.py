"""The shipped tokenization steps, each over a vocab file stored with the model version (one token per
line, never code): ``word`` (a plain-Python word-level tokenizer, the small demo transformer's) and
``wordpiece`` (BERT's WordPiece through the ``tokenizers`` library).

Ids: the vocab line number. ``[PAD]``, ``[UNK]``, ``[CLS]`` and ``[SEP]`` must be present; a sequence
is ``[CLS] tokens... [SEP]`` padded with ``[PAD]``.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np

from ..errors import InvalidInput

if TYPE_CHECKING:
    from tokenizers import Encoding

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

    def encode(self, text: str, max_words: int | None = None) -> list[int]:
        """``[CLS] ids... [SEP]``, unpadded; with ``max_words``, of the first that many words only (the rest of
        the text is not scanned)."""
        words = (match.group() for match in _WORD.finditer(text.lower()))
        ids = [self.vocab.get(word, self.unk_id) for word in islice(words, max_words)]
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
            # one word past what fits is enough to know the text is too long: a long text is not read to its end
            ids = self.encode(text, max_length - 1)
            if len(ids) > max_length:
                if not truncate:
                    tokens = len(self.encode(text))
                    raise InvalidInput(
                        f"text {row} has {tokens} tokens (with [CLS]/[SEP]), more than the limit of {max_length}",
                        {"index": row, "tokens": tokens, "max_length": max_length},
                    )
                ids = ids[: max_length - 1] + [self.sep_id]
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask


@dataclass(frozen=True)
class Encoded:
    """A tokenized batch: int64 ``[rows, tokens]`` arrays."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray


class WordPieceTokenizer:
    """BERT WordPiece (the ``tokenizers`` library, Rust) built from a vocab file and declared options only:
    BERT normaliser (clean text, CJK split, lowercase + accent stripping when ``lowercase``), BERT
    pre-tokenizer, WordPiece with ``##`` pieces and ``[UNK]``, ``[CLS] $A [SEP]`` with type id 0. This is
    what ``BertTokenizerFast`` / a BERT ``tokenizer.json`` does; nothing beyond the vocab is read from the
    registry, so a version cannot bring its own normaliser or code.
    """

    def __init__(self, vocab_path: Path, max_length: int, *, lowercase: bool = True, truncation: bool = True,
                 padding: Literal["max_length", "longest"] = "max_length"):
        from tokenizers import Tokenizer as HFTokenizer, decoders, normalizers, pre_tokenizers, processors
        from tokenizers.models import WordPiece

        if max_length < 2:
            raise InvalidInput("max_length must leave room for [CLS] and [SEP]", {"max_length": max_length})
        vocab = _read_vocab(Path(vocab_path))
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise InvalidInput(f"vocab lacks special tokens {missing}", {"missing": missing})
        tokenizer = HFTokenizer(WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=100))
        tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                          strip_accents=None, lowercase=lowercase)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{CLS}:0 $A:0 {SEP}:0", pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
            special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])])
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        self.truncation = truncation
        self.max_length = max_length
        self.padding = padding
        # Without truncation the tokenizer must see the whole text to report its length: check, then pad.
        # Rows are padded by encode_batch, once the part of each text the model reads is known.
        tokenizer.enable_truncation(max_length if truncation else WORDPIECE_NO_LIMIT)
        self._tokenizer = tokenizer
        self.vocab = vocab
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (vocab[t] for t in SPECIAL_TOKENS)

    def __len__(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of ``text`` (no special tokens, no truncation): for tests and debugging."""
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return [token for token, real in zip(encoding.tokens, encoding.attention_mask) if real]

    def encode_batch(self, texts: Sequence[str]) -> Encoded:
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInput(f"text {row} is not a string", {"index": row})
        if self.truncation:
            encodings = self._encode_read_part(list(texts))
        else:
            encodings = self._tokenizer.encode_batch(list(texts))
            for row, encoding in enumerate(encodings):
                length = len(encoding.ids)
                if length > self.max_length:
                    raise InvalidInput(
                        f"text {row} has {length} tokens (with [CLS]/[SEP]), more than the limit of {self.max_length}",
                        {"index": row, "tokens": length, "max_length": self.max_length})
        width = self.max_length if self.padding == "max_length" else max(len(e.ids) for e in encodings)
        input_ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            input_ids[row, : len(encoding.ids)] = encoding.ids
            attention_mask[row, : len(encoding.ids)] = 1
        token_type_ids = np.zeros_like(input_ids)  # one segment: all 0 (pair inputs are not served)
        return Encoded(input_ids, attention_mask, token_type_ids)

    def _encode_read_part(self, texts: list[str]) -> list["Encoding"]:
        """Each text truncated to ``max_length`` tokens, tokenizing only about the part the model reads: a
        prefix cut at a word boundary (:func:`_word_prefix`) has the same first tokens as the whole text, so
        once a prefix fills ``max_length`` its encoding is the whole text's; a prefix that falls short is
        retried twice as long. So a 600-word text costs about ``max_length`` tokens of work, not 600 words."""
        encodings: list[Encoding | None] = [None] * len(texts)
        pending = list(range(len(texts)))
        chars = self.max_length * PREFIX_CHARS_PER_TOKEN
        while pending:
            parts = [_word_prefix(texts[row], chars) for row in pending]
            retry = []
            for row, part, encoding in zip(pending, parts, self._tokenizer.encode_batch(parts)):
                if len(part) == len(texts[row]) or len(encoding.ids) == self.max_length:
                    encodings[row] = encoding
                else:
                    retry.append(row)
            pending, chars = retry, chars * 2
        return encodings  # type: ignore[return-value]  # every row filled


WORDPIECE_NO_LIMIT = 1 << 20
"""Token cap used when a step does not truncate (the text is then refused past max_length)."""
PREFIX_CHARS_PER_TOKEN = 6
"""First guess at the characters ``max_length`` wordpiece tokens span (English averages about 4-5 per token,
the space included); a prefix that turns out shorter is retried twice as long."""
_PUNCTUATION = frozenset(string.punctuation)
"""ASCII punctuation: BERT's pre-tokenizer always splits it off as a word of its own."""


def _word_prefix(text: str, chars: int) -> str:
    """The longest prefix of ``text`` within ``chars`` characters that ends at a word boundary BERT's
    normaliser and pre-tokenizer keep (after a space or an ASCII punctuation mark), so its words are the first
    words of ``text``, whole; ``text`` itself when it is that short or has no such boundary there."""
    if len(text) <= chars:
        return text
    for end in range(chars, 0, -1):
        char = text[end - 1]
        if char == " " or char in _PUNCTUATION:
            return text[:end]
    return text


def _read_vocab(path: Path) -> dict[str, int]:
    """Vocab file -> token: line number, read as ``tokenizers``' own ``WordPiece.read_file`` does (trailing
    whitespace trimmed; a duplicate token keeps its last line)."""
    if path.stat().st_size > MAX_VOCAB_BYTES:
        raise InvalidInput(f"vocab file {path.name} is larger than {MAX_VOCAB_BYTES} bytes")
    tokens = path.read_text(encoding="utf-8").splitlines()
    return {token.rstrip(): index for index, token in enumerate(tokens) if token.strip()}
