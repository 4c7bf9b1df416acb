"""Per-model pre- and post-processing, chosen from what the model version declares in its signature.

Pre-processing turns what a caller sends into the model's tensors: a text model (``signature.text``)
takes strings in a ``text`` input and the server tokenizes them with the declared step (``word`` or BERT
``wordpiece``, tokenizer.py) over the vocab file stored in the version; a model declaring a bars step
(``signature.bars``) takes raw OHLCV in a ``bars`` input and the server runs the shipped step (bars.py) the
training data was built with; a single-input model takes an unnamed tensor. Post-processing shapes raw
outputs into per-row predictions (labels and scores for classifiers) for protocols that answer with them. Only fixed, shipped steps run
here: nothing from the registry is executed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..preprocessing.bars import bars_extent, bars_from_columns, expected_bars, preprocess_bars
from ..errors import InvalidInput, PayloadTooLarge, ServiceUnavailable
from ..types import RawInput
from ..registry import ModelVersion
from ..settings import LimitSettings
from ..signature import ModelSignature


class ModelProcessing:
    """The processing steps of one model version."""

    def __init__(self, version: ModelVersion, limits: LimitSettings):
        self.signature: ModelSignature = version.signature
        self.path = version.path
        self.name = version.name
        self.limits = limits
        self.tokens = 0
        """Tokens the model reads for the text request ``preprocess`` last tokenized (rows x its longest
        row), 0 for other inputs: what the request holds of the worker's :class:`TokensInFlight`."""

    def takes_text(self, inputs: dict[str, Any]) -> bool:
        """Whether ``inputs`` is text this model tokenizes (worth running off the event loop)."""
        return RawInput.TEXT in inputs and self.signature.text is not None and RawInput.TEXT not in self._input_names

    def takes_bars(self, inputs: dict[str, Any]) -> bool:
        """Whether ``inputs`` is raw OHLCV bars this model turns into its tensor."""
        return RawInput.BARS in inputs and self.signature.bars is not None and RawInput.BARS not in self._input_names

    def runs_off_loop(self, inputs: dict[str, Any]) -> bool:
        """Whether pre-processing ``inputs`` is CPU work worth a thread: tokenizing texts, computing
        indicators from bars, or converting and normalising more than a few windows' worth of bars (turning
        JSON lists into an array is itself work). Bars over the limits are refused at once, inline."""
        if self.takes_text(inputs):
            return True
        if not self.takes_bars(inputs):
            return False
        extent = bars_extent(inputs[RawInput.BARS])
        if extent is None or self._bars_refusal(extent) is not None:
            return False  # refused from its shape: nothing to hand to a thread
        step = self.signature.bars
        return step.kind != "ohlcv_window" or extent[0] * extent[1] > _INLINE_BARS

    def preprocess(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Caller tensors -> validated model tensors (dtype, shape, finiteness, row limits)."""
        max_rows = self.limits.max_batch_rows
        if RawInput.TEXT in inputs and RawInput.TEXT not in self._input_names:
            if self.signature.text is None:
                raise InvalidInput(f"model {self.name} does not take text; send its tensors",
                                   {"inputs": self._input_names})
            if len(inputs) != 1:
                raise InvalidInput(f"send '{RawInput.TEXT}' alone, or the model's tensors",
                                   {"got": sorted(inputs)})
            inputs = self._tokenize(inputs[RawInput.TEXT], max_rows)
        elif RawInput.BARS in inputs and RawInput.BARS not in self._input_names:
            step = self.signature.bars
            if step is None:
                raise InvalidInput(f"model {self.name} does not take bars; send its tensors",
                                   {"inputs": self._input_names})
            if len(inputs) != 1:
                raise InvalidInput(f"send '{RawInput.BARS}' alone, or the model's tensors",
                                   {"got": sorted(inputs), "expected": expected_bars(step)})
            bars = inputs[RawInput.BARS]
            extent = bars_extent(bars)
            refusal = None if extent is None else self._bars_refusal(extent)
            if refusal is not None:
                raise refusal
            if isinstance(bars, dict) or (isinstance(bars, list) and bars and isinstance(bars[0], dict)):
                bars = bars_from_columns(bars, max_rows)  # named columns -> the [.., 5] row form
            inputs = {step.input: preprocess_bars(step, bars, max_rows)}
        elif RawInput.UNNAMED in inputs:
            inputs = self._name_sole_input(inputs)
        return self.signature.validate_inputs(inputs, max_rows)

    def predictions(self, outputs: dict[str, np.ndarray]) -> list[Any]:
        signature = self.signature
        first = outputs[signature.outputs[0].name]
        if signature.task == "classification" and signature.labels and first.ndim == 2 \
                and first.shape[1] == len(signature.labels):
            labels = signature.labels
            return [{"label": labels[int(np.argmax(row))],
                     "scores": {label: float(score) for label, score in zip(labels, row)}} for row in first]
        rows = first.reshape(first.shape[0], -1)
        if signature.steps_ahead is not None:  # a forecast is a list of steps, even when n_steps kept one
            return [row.tolist() for row in rows]
        return [float(row[0]) if row.size == 1 else row.tolist() for row in rows]

    def check_steps(self, n_steps: int | None) -> None:
        """A request's ``n_steps`` fits the model's declared horizon (422 before the model runs, naming it)."""
        if n_steps is None:
            return
        horizon = self.signature.steps_ahead
        if horizon is None:
            raise InvalidInput(f"model {self.name} does not forecast steps ahead (its signature declares no "
                               "horizon): leave out n_steps", {"n_steps": n_steps})
        if n_steps > horizon:
            raise InvalidInput(f"n_steps {n_steps} exceeds the horizon of model {self.name}: it forecasts "
                               f"{horizon} steps ahead", {"n_steps": n_steps, "horizon": horizon})

    def first_steps(self, outputs: dict[str, np.ndarray], n_steps: int | None) -> dict[str, np.ndarray]:
        """The outputs cut to their first ``n_steps`` steps (axis 1, the horizon); as they are without one.
        Applied to what any backend returned, so every door and backend answers the same steps."""
        if n_steps is None or n_steps == self.signature.horizon or self.signature.rollout is not None:
            return outputs  # a rollout ran exactly n_steps
        return {name: np.ascontiguousarray(array[:, :n_steps]) for name, array in outputs.items()}

    def _bars_refusal(self, extent: tuple[int, int]) -> PayloadTooLarge | None:
        """413 for bars past the per-window or per-request limit, from the request's shape alone."""
        windows, count = extent
        limits = self.limits
        reads = self.signature.bars.min_bars if self.signature.bars is not None else None
        if count > limits.max_bars_per_window:
            return PayloadTooLarge(
                f"a bars window has {count} bars; at most {limits.max_bars_per_window} per window are accepted "
                f"(this model reads the last {reads})",
                {"bars_per_window": count, "max_bars_per_window": limits.max_bars_per_window, "model_reads": reads})
        if windows * count > limits.max_bars_per_request:
            return PayloadTooLarge(
                f"{windows} bar windows of up to {count} bars carry {windows * count} bars; at most "
                f"{limits.max_bars_per_request} per request are accepted (this model reads the last {reads} "
                "of each window)", {"windows": windows, "bars_per_window": count, "bars": windows * count,
                                    "max_bars_per_request": limits.max_bars_per_request, "model_reads": reads})
        return None

    @property
    def _input_names(self) -> list[str]:
        return [spec.name for spec in self.signature.inputs]

    def _name_sole_input(self, inputs: dict[str, Any]) -> dict[str, Any]:
        names = self._input_names
        if len(inputs) != 1:
            raise InvalidInput("mix of named and unnamed inputs", {"expected": names})
        if len(names) != 1:
            raise InvalidInput(f"this model has {len(names)} inputs: name each one "
                               "(instances as {name: row} objects)", {"expected": names})
        return {names[0]: inputs[RawInput.UNNAMED]}

    def _tokenize(self, texts: Any, max_rows: int) -> dict[str, np.ndarray]:
        spec = self.signature.text
        assert spec is not None
        items = _strings(texts)
        if not items:
            raise InvalidInput("empty batch: text is empty")
        if len(items) > max_rows:
            raise InvalidInput(f"{len(items)} texts exceed the limit of {max_rows}", {"rows": len(items)})
        max_chars = spec.max_length * self.limits.max_text_chars_per_token
        for index, text in enumerate(items):
            if len(text) <= max_chars:
                continue
            if spec.truncation:
                # The model reads only the first max_length tokens, which in any ordinary text lie well inside
                # max_length x max_text_chars_per_token characters: cut there first, so a huge text costs little.
                items[index] = text[:max_chars]
                continue
            # refused before tokenizing: a huge text costs nothing
            raise PayloadTooLarge(f"text {index} has {len(text)} characters; this model reads at most "
                                  f"{spec.max_length} tokens ({max_chars} characters)",
                                  {"index": index, "chars": len(text), "max_chars": max_chars})
        # Before tokenizing: a text reads as at least one token per max_text_chars_per_token characters
        # (the rule above), so a request that is over the budget on that count alone costs nothing.
        budget = self.limits.max_tokens_per_request
        longest = max(len(text) for text in items)
        at_least = min(spec.max_length, -(-longest // self.limits.max_text_chars_per_token) + 2)
        if len(items) * at_least > budget:
            raise PayloadTooLarge(
                f"{len(items)} texts of up to {longest} characters make at least {len(items) * at_least} tokens "
                f"for the model (rows x the longest row); at most {budget} per request are accepted: send fewer "
                "or shorter texts", {"rows": len(items), "tokens_at_least": len(items) * at_least,
                                     "max_tokens_per_request": budget})
        vocab = self.path / spec.tokenizer
        if spec.kind == "wordpiece":
            encoded = _wordpiece(vocab, spec.max_length, spec.lowercase, spec.truncation, spec.padding) \
                .encode_batch(items)
            ids, mask = encoded.input_ids, encoded.attention_mask
        else:
            ids, mask = _tokenizer(vocab).encode_batch(items, spec.max_length, truncate=spec.truncation)
        tokens = len(items) * int(mask.sum(axis=1).max())
        if tokens > budget:  # exact, before the model runs
            raise PayloadTooLarge(
                f"{len(items)} texts make {tokens} tokens for the model (rows x the longest row, "
                f"at most {spec.max_length} each); at most {budget} per request are accepted: send fewer or "
                "shorter texts", {"rows": len(items), "tokens": tokens, "max_tokens_per_request": budget})
        self.tokens = tokens
        arrays = {spec.input_ids: ids}
        if spec.attention_mask:
            arrays[spec.attention_mask] = mask
        if spec.token_type_ids:
            arrays[spec.token_type_ids] = encoded.token_type_ids
        return arrays


_INLINE_BARS = 1024
"""Converting and normalising up to this many bars (all windows together: 16 windows of 64) costs less than a
thread hop: done on the event loop. More, and a list-to-array conversion alone blocks the loop for
milliseconds."""


class TokensInFlight:
    """A worker's budget of text tokens tokenized and not yet answered (``max_tokens_in_flight``): a request
    that would push the total past it is refused with 503 and Retry-After, like a full worker; one request
    alone is always admitted (its size is bounded by ``max_tokens_per_request``). Thread-safe; acquire and
    release the same count, or use :meth:`hold`."""

    def __init__(self, limit: int):
        self.limit = limit
        self.tokens = 0
        self._lock = threading.Lock()

    def acquire(self, tokens: int) -> None:
        if tokens <= 0:
            return
        with self._lock:
            if self.tokens and self.tokens + tokens > self.limit:
                raise ServiceUnavailable(
                    f"server busy: {self.tokens} text tokens in flight, this request adds {tokens}",
                    {"tokens_in_flight": self.tokens, "tokens": tokens, "max_tokens_in_flight": self.limit})
            self.tokens += tokens

    def release(self, tokens: int) -> None:
        if tokens <= 0:
            return
        with self._lock:
            self.tokens -= tokens

    @contextmanager
    def hold(self, tokens: int) -> Iterator[None]:
        """``with budget.hold(processing.tokens): <run the model>``: acquired for the span, released after."""
        self.acquire(tokens)
        try:
            yield
        finally:
            self.release(tokens)


def _strings(texts: Any) -> list[str]:
    """A batch of texts: str / bytes items of a list or a 1-d array (OIP BYTES arrive as bytes)."""
    if isinstance(texts, np.ndarray):
        if texts.ndim > 1 and any(d != 1 for d in texts.shape[1:]):
            raise InvalidInput(f"'{RawInput.TEXT}' must be one string per row", {"shape": list(texts.shape)})
        texts = texts.reshape(-1).tolist()
    elif isinstance(texts, (str, bytes)):
        texts = [texts]
    items = []
    for index, item in enumerate(texts):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"text {index} is not UTF-8", {"index": index}) from None
        if not isinstance(item, str):
            raise InvalidInput(f"text {index} is not a string", {"index": index})
        items.append(item)
    return items


@lru_cache(maxsize=32)
def _tokenizer(path: Path):
    from ..preprocessing.tokenizer import Tokenizer

    return Tokenizer.from_file(path)


@lru_cache(maxsize=32)
def _wordpiece(path: Path, max_length: int, lowercase: bool, truncation: bool, padding: str):
    from ..preprocessing.tokenizer import WordPieceTokenizer

    return WordPieceTokenizer(path, max_length, lowercase=lowercase, truncation=truncation, padding=padding)
