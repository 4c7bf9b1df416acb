"""The strict input/output contract of a model version, and validation of request tensors against it.

Shapes include the batch dimension first; -1 marks a dynamic dimension. Validation is strict:
names, rank, fixed dims, dtype (with safe casts only), finiteness and row limits.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import InvalidInput

DType = Literal["float32", "float16", "float64", "int64", "int32", "bool"]

# Request JSON numbers arrive as float64/int64; these casts are allowed into the model's dtype.
_SAFE_CASTS: dict[str, tuple[str, ...]] = {
    "float32": ("float64", "float32", "float16", "int64", "int32"),
    "float16": ("float64", "float32", "float16", "int64", "int32"),
    "float64": ("float64", "float32", "float16", "int64", "int32"),
    "int64": ("int64", "int32"),
    "int32": ("int64", "int32"),
    "bool": ("bool",),
}
_DTYPES = {name: np.dtype(name) for name in _SAFE_CASTS}
_SAFE_DTYPES = {name: frozenset(np.dtype(source) for source in sources) for name, sources in _SAFE_CASTS.items()}


class TensorSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$", max_length=128)
    dtype: DType
    shape: tuple[int, ...]
    """Full shape with the batch dim first; -1 = dynamic."""

    @field_validator("shape")
    @classmethod
    def _valid_dims(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if not shape:
            raise ValueError("shape needs at least the batch dimension")
        if any(d == 0 or d < -1 for d in shape):
            raise ValueError(f"dims must be positive or -1, got {shape}")
        return shape

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]


WORDPIECE_MAX_LENGTH = 512
"""BERT-family encoders have 512 positions."""


class TextPreprocessing(BaseModel):
    """Models that take text declare their tokenizer; the service tokenizes ``text`` requests with the
    shipped step named by ``kind`` (preprocessing/tokenizer.py) over a vocab file stored with the version."""

    kind: Literal["word", "wordpiece"] = "word"
    """word: the plain-Python word-level tokenizer of the small demo transformer (refuses texts longer than
    ``max_length`` unless ``truncation``). wordpiece: BERT's WordPiece through the ``tokenizers`` library
    (BERT normaliser and pre-tokenizer, ``[CLS] ... [SEP]``, ``##`` continuation pieces)."""
    step_version: Literal[1] = 1
    """Version of the shipped step's definition; a changed tokenization gets a new number."""
    tokenizer: str
    """Tokenizer file name inside the version directory (a vocab file, one token per line, never code)."""
    max_length: int = Field(ge=1)
    """Tokens per text, ``[CLS]`` and ``[SEP]`` included (at most 512 for wordpiece)."""
    truncation: bool = False
    """Keep the first ``max_length`` tokens of a longer text (ending with ``[SEP]``) instead of refusing it."""
    padding: Literal["max_length", "longest"] = "max_length"
    """max_length: every row is padded to ``max_length``; longest: to the longest row of the request (the
    model's sequence dim must then be dynamic, -1), so a short headline does not pay for 512 positions."""
    lowercase: bool = True
    """wordpiece: lowercase and strip accents first (uncased BERT vocabularies)."""
    input_ids: str = "input_ids"
    attention_mask: str | None = "attention_mask"
    token_type_ids: str | None = None
    """wordpiece: the model input that takes segment ids (all 0 for one text), when the model has one."""

    @model_validator(mode="after")
    def _wordpiece_limits(self) -> "TextPreprocessing":
        if self.kind == "wordpiece" and self.max_length > WORDPIECE_MAX_LENGTH:
            raise ValueError(f"wordpiece max_length is at most {WORDPIECE_MAX_LENGTH}, got {self.max_length}")
        if self.max_length < 2:
            raise ValueError("max_length must leave room for [CLS] and [SEP]")
        if self.kind == "word" and (self.token_type_ids is not None or self.padding != "max_length"):
            raise ValueError("token_type_ids and padding 'longest' are wordpiece options")
        return self

    @property
    def tensor_names(self) -> list[str]:
        """The model inputs this step fills."""
        return [n for n in (self.input_ids, self.attention_mask, self.token_type_ids) if n is not None]


OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")


class BarsPreprocessing(BaseModel):
    """Models that take OHLCV bars declare which shipped step (prediction_service/preprocessing/bars.py) turns raw bars
    into their input tensor; the service runs it on a ``bars`` request, the training data was built with
    the same function. Only parameters live here: no code is ever read from the registry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["ohlcv_window", "ohlcv_features"]
    """ohlcv_window: the last ``window`` bars, prices / last close and volume / mean volume (5 columns).
    ohlcv_features: the indicator set (returns, SMA/EMA ratios, volatility, momentum, RSI, Bollinger,
    stochastics, ATR, MACD, lagged returns, Parkinson/Garman-Klass volatility, volume z-scores) over the
    last ``window + warmup`` bars, keeping the last ``window`` steps."""
    step_version: Literal[1] = 1
    """Version of the shipped step's definition; a changed formula gets a new number."""
    input: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$", max_length=128)
    """The model input the step fills."""
    window: int = Field(ge=1, le=100_000)
    """Time steps the model sees."""
    warmup: int = Field(0, ge=0, le=100_000)
    """Bars before the window that the indicators read (history); a request sends at least
    ``window + warmup`` bars per row and the step uses the last that many."""
    normalization: Literal["last_close_mean_volume"] = "last_close_mean_volume"
    """ohlcv_window: prices / the window's last close, volume / the window's mean volume."""
    indicator_windows: tuple[int, ...] = Field((5, 10, 20, 30, 50), min_length=1, max_length=16)
    """ohlcv_features: rolling windows of the per-window indicator block."""
    macd: tuple[tuple[int, int, int], ...] = Field(((12, 26, 9), (5, 35, 5)), max_length=8)
    """ohlcv_features: (fast, slow, signal) EMA spans of each MACD block."""
    clip: float = Field(50.0, gt=0)
    """ohlcv_features: features are clipped to [-clip, clip]."""

    @field_validator("indicator_windows")
    @classmethod
    def _positive_windows(cls, windows: tuple[int, ...]) -> tuple[int, ...]:
        if any(w < 1 for w in windows):
            raise ValueError("indicator windows must be >= 1")
        return windows

    @field_validator("macd")
    @classmethod
    def _positive_spans(cls, spans: tuple[tuple[int, int, int], ...]) -> tuple[tuple[int, int, int], ...]:
        if any(s < 1 for triple in spans for s in triple):
            raise ValueError("MACD spans must be >= 1")
        return spans

    @model_validator(mode="after")
    def _enough_history(self) -> "BarsPreprocessing":
        if self.kind == "ohlcv_features" and self.min_bars < 2:
            raise ValueError("ohlcv_features needs window + warmup >= 2 bars (returns read the previous close)")
        return self

    @property
    def min_bars(self) -> int:
        """Bars a request must send per row (more are allowed; the step uses the last ``min_bars``)."""
        return self.window + self.warmup

    @property
    def n_features(self) -> int:
        """Columns of the tensor the step makes."""
        if self.kind == "ohlcv_window":
            return len(OHLCV_COLUMNS)
        return 29 + 15 * len(self.indicator_windows) + 3 * len(self.macd)


class RolloutStep(BaseModel):
    """A one-step forecaster the server rolls forward: for ``n_steps`` it runs the model, appends the
    prediction to the end of the input window and drops the window's oldest step, then runs it again. The
    answer holds every step, ``[batch, n_steps]``, as if the model had a horizon of ``max_steps``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["shift_append"] = "shift_append"
    step_version: Literal[1] = 1
    input: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$", max_length=128)
    """The model input holding the window: ``[batch, window]`` or ``[batch, window, 1]``, oldest step first."""
    max_steps: int = Field(ge=1, le=1_000)
    """The most steps a request may ask for (each is one model run)."""


class ModelSignature(BaseModel):
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    task: Literal["regression", "classification"] = "regression"
    labels: list[str] | None = None
    """Class names, index-aligned with the classifier's last output dim."""
    max_batch_size: int = Field(256, ge=1)
    batch_delay_ms: float | None = Field(None, ge=0, le=1000)
    """This model's forming batches wait up to this long for company even while a run slot is free (fuller
    batches over latency); None: the server's batching settings decide."""
    text: TextPreprocessing | None = None
    bars: BarsPreprocessing | None = None
    """Set when the server turns raw OHLCV ``bars`` into this model's input (prediction_service/preprocessing/bars.py)."""
    horizon: int | None = Field(None, ge=1)
    """Steps ahead a forecaster predicts: every output is ``[batch, horizon, ...]``, step ``i`` at index ``i``
    of axis 1. A request's ``n_steps`` keeps the first that many steps; None: the model has no horizon."""
    rollout: RolloutStep | None = None
    """Set for a one-step model the server rolls forward for ``n_steps`` (instead of a ``horizon``)."""

    @model_validator(mode="after")
    def _unique_names(self) -> "ModelSignature":
        names = [t.name for t in self.inputs + self.outputs]
        if len(names) != len(set(names)):
            raise ValueError(f"tensor names must be unique: {names}")
        return self

    @model_validator(mode="after")
    def _bars_fill_the_input(self) -> "ModelSignature":
        bars = self.bars
        if bars is None:
            return self
        if len(self.inputs) != 1 or self.inputs[0].name != bars.input:
            raise ValueError(f"bars.input {bars.input!r} must name the model's only input "
                             f"(inputs: {[s.name for s in self.inputs]})")
        spec = self.inputs[0]
        if not spec.dtype.startswith("float") or len(spec.shape) != 3:
            raise ValueError(f"bars fill a float [batch, steps, features] input; {spec.name!r} is "
                             f"{spec.dtype} {list(spec.shape)}")
        for want, got in zip((bars.window, bars.n_features), spec.shape[1:]):
            if got != -1 and got != want:
                raise ValueError(f"bars step makes [batch, {bars.window}, {bars.n_features}], the input "
                                 f"{spec.name!r} is {list(spec.shape)}")
        return self

    @model_validator(mode="after")
    def _outputs_span_the_horizon(self) -> "ModelSignature":
        if self.horizon is None:
            return self
        for spec in self.outputs:
            if len(spec.shape) < 2 or spec.shape[1] != self.horizon:
                raise ValueError(f"a model with horizon {self.horizon} has [batch, {self.horizon}, ...] outputs; "
                                 f"{spec.name!r} is {list(spec.shape)}")
        return self

    @model_validator(mode="after")
    def _rollout_feeds_one_window(self) -> "ModelSignature":
        step = self.rollout
        if step is None:
            return self
        if self.horizon is not None or self.bars is not None or self.text is not None:
            raise ValueError("a rollout model takes its window as a tensor: no horizon, bars or text step")
        if len(self.inputs) != 1 or self.inputs[0].name != step.input:
            raise ValueError(f"rollout.input {step.input!r} must name the model's only input "
                             f"(inputs: {[s.name for s in self.inputs]})")
        spec = self.inputs[0]
        if not spec.dtype.startswith("float") or len(spec.shape) not in (2, 3) or spec.shape[2:] not in ((), (1,)):
            raise ValueError(f"a rollout window is a float [batch, window] or [batch, window, 1] input; "
                             f"{spec.name!r} is {spec.dtype} {list(spec.shape)}")
        if len(self.outputs) != 1 or self.outputs[0].shape[1:] not in ((), (1,)):
            raise ValueError("a rollout model has one output of one value per row ([batch] or [batch, 1])")
        return self

    @property
    def steps_ahead(self) -> int | None:
        """The most steps a request's ``n_steps`` may ask for: the horizon, or the rollout's ``max_steps``."""
        if self.rollout is not None:
            return self.rollout.max_steps
        return self.horizon

    @model_validator(mode="after")
    def _text_fills_the_inputs(self) -> "ModelSignature":
        text = self.text
        if text is None or text.kind == "word":  # word: checked per request, as before (older registries)
            return self
        names = {spec.name: spec for spec in self.inputs}
        filled = text.tensor_names
        if sorted(filled) != sorted(names):
            raise ValueError(f"the text step fills {filled}; the model's inputs are {sorted(names)}")
        for name in filled:
            spec = names[name]
            if not spec.dtype.startswith("int") or len(spec.shape) != 2:
                raise ValueError(f"text fills int [batch, tokens] inputs; {name!r} is {spec.dtype} "
                                 f"{list(spec.shape)}")
            if text.padding == "longest" and spec.shape[1] != -1:
                raise ValueError(f"padding 'longest' needs a dynamic token dim; {name!r} is {list(spec.shape)}")
            if spec.shape[1] not in (-1, text.max_length):
                raise ValueError(f"text rows have {text.max_length} tokens; {name!r} is {list(spec.shape)}")
        return self

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def synthetic_inputs(self, rows: int, seed: int = 0, dynamic_dim: int = 4,
                         int_high: int | None = None) -> dict[str, np.ndarray]:
        """Deterministic inputs of this signature, the one generator for smoke runs, warm-up, compiling
        and validation. A dynamic batch dim gets ``rows``, other dynamic dims ``dynamic_dim``; floats
        are standard normal.

        Without ``int_high``, integer ids/masks are ones and bools True: values every model accepts.
        With it (numeric validation, which should exercise more of the model): integers are drawn from
        ``[0, int_high)``, bools at random, and the attention mask named by ``text`` gets prefix masks of
        random length. Prefer real or model-zoo data when there is any.
        """
        rng = np.random.default_rng(seed)
        mask_name = self.text.attention_mask if self.text and int_high is not None else None
        arrays = {}
        for spec in self.inputs:
            batch = rows if spec.shape[0] == -1 else spec.shape[0]
            shape = (batch, *(dynamic_dim if d == -1 else d for d in spec.shape[1:]))
            if spec.name == mask_name:
                lengths = rng.integers(1, shape[-1] + 1, size=batch)
                arrays[spec.name] = (np.arange(shape[-1])[None, :] < lengths[:, None]).astype(spec.dtype)
            elif spec.dtype.startswith("float"):
                arrays[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif int_high is None:
                arrays[spec.name] = np.ones(shape, dtype=spec.dtype)
            elif spec.dtype == "bool":
                arrays[spec.name] = rng.random(shape) < 0.5
            else:
                arrays[spec.name] = rng.integers(0, int_high, size=shape).astype(spec.dtype)
        return arrays

    def validate_inputs(self, raw: dict[str, Any], max_rows: int | None = None) -> dict[str, np.ndarray]:
        """Turn request data into arrays of the declared dtype and shape, or raise InvalidInput."""
        expected = {s.name for s in self.inputs}
        missing, unknown = expected - raw.keys(), raw.keys() - expected
        if missing or unknown:
            raise InvalidInput(
                "input names do not match the model signature",
                {"missing": sorted(missing), "unexpected": sorted(unknown), "expected": sorted(expected)},
            )
        limit = min(self.max_batch_size, max_rows or self.max_batch_size)
        arrays: dict[str, np.ndarray] = {}
        rows: int | None = None
        for spec in self.inputs:
            array = _as_array(spec, raw[spec.name])
            _check_shape(spec, array)
            if array.shape[0] == 0:
                raise InvalidInput("empty batch", {"input": spec.name})
            if array.shape[0] > limit:
                raise InvalidInput(
                    f"batch of {array.shape[0]} rows exceeds the limit of {limit}",
                    {"input": spec.name, "rows": array.shape[0], "max_rows": limit},
                )
            if rows is not None and array.shape[0] != rows:
                raise InvalidInput("inputs disagree on the batch size", {"input": spec.name})
            rows = array.shape[0]
            arrays[spec.name] = array
        return arrays


def _as_array(spec: TensorSpec, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        array = value
    else:
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as exc:  # ragged nesting
            raise InvalidInput(f"input {spec.name!r} is not a rectangular array", {"input": spec.name}) from exc
    kind = array.dtype.kind
    if kind in "OUSV":
        raise InvalidInput(
            f"input {spec.name!r} must be numeric ({spec.dtype}); got non-numeric or ragged data",
            {"input": spec.name, "expected_dtype": spec.dtype},
        )
    if array.dtype not in _SAFE_DTYPES[spec.dtype]:
        raise InvalidInput(
            f"input {spec.name!r} has dtype {array.dtype.name}, expected {spec.dtype}",
            {"input": spec.name, "expected_dtype": spec.dtype, "got_dtype": array.dtype.name},
        )
    target = _DTYPES[spec.dtype]
    if target.kind == "f":
        # One finiteness pass, on the cast result: NaN/Inf stay non-finite through the cast, and a finite
        # value past the target's range (1e308 -> float32) becomes inf. Which of the two it was is only
        # worked out on the error path.
        if array.dtype == target:
            result = np.ascontiguousarray(array)
        else:
            with np.errstate(over="ignore"):
                result = np.ascontiguousarray(array, dtype=target)
        if not np.isfinite(result).all():
            if kind == "f" and not np.isfinite(array).all():
                raise InvalidInput(f"input {spec.name!r} contains NaN or Inf", {"input": spec.name})
            raise InvalidInput(f"input {spec.name!r} overflows {spec.dtype}", {"input": spec.name})
        return result
    if target.kind == "i" and kind == "i" and array.dtype.itemsize > target.itemsize and array.size:
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInput(f"input {spec.name!r} overflows {spec.dtype}", {"input": spec.name})
    return np.ascontiguousarray(array, dtype=target)


def _check_shape(spec: TensorSpec, array: np.ndarray) -> None:
    if array.ndim != len(spec.shape):
        raise InvalidInput(
            f"input {spec.name!r} has rank {array.ndim}, expected {len(spec.shape)} (shape {list(spec.shape)})",
            {"input": spec.name, "expected_shape": list(spec.shape), "got_shape": list(array.shape)},
        )
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
        if axis > 0 and want != -1 and want != got:
            raise InvalidInput(
                f"input {spec.name!r} has shape {list(array.shape)}, expected {list(spec.shape)}",
                {"input": spec.name, "expected_shape": list(spec.shape), "got_shape": list(array.shape)},
            )
