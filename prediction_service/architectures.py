"""Reference architectures of the model zoo, each with its exact serving signature.

All three trace to static graphs (no data-dependent control flow), so they export cleanly to ONNX
with a dynamic batch axis and to TorchScript. A state_dict checkpoint is rebuilt from
metadata.json's ``architecture`` + ``architecture_config`` with :func:`build_model`.
"""

from __future__ import annotations

from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from .errors import InvalidInput
from .signature import ModelSignature, TensorSpec, TextPreprocessing

DIRECTION_LABELS = ["down", "flat", "up"]
SENTIMENT_LABELS = ["negative", "neutral", "positive"]


class LSTMPriceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq_len: int = Field(60, ge=1)
    n_features: int = Field(5, ge=1)
    hidden_size: int = Field(32, ge=1)
    num_layers: int = Field(1, ge=1)


class CNNLSTMDirectionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq_len: int = Field(60, ge=1)
    n_features: int = Field(110, ge=1)
    conv_channels: int = Field(32, ge=1)
    kernel_size: int = Field(3, ge=1)
    hidden_size: int = Field(32, ge=1)
    n_classes: int = Field(3, ge=2)


class SentimentTransformerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(512, ge=4)
    max_length: int = Field(64, ge=1)
    d_model: int = Field(64, ge=8)
    n_heads: int = Field(4, ge=1)
    n_layers: int = Field(2, ge=1)
    dim_feedforward: int = Field(128, ge=8)
    n_classes: int = Field(3, ge=2)


class LSTMPricePredictor(nn.Module):
    """OHLCV window -> next (normalised) close."""

    def __init__(self, config: LSTMPriceConfig):
        super().__init__()
        self.lstm = nn.LSTM(config.n_features, config.hidden_size, num_layers=config.num_layers, batch_first=True)
        self.head = nn.Linear(config.hidden_size, 1)

    def forward(self, ohlcv: torch.Tensor) -> torch.Tensor:
        sequence, _ = self.lstm(ohlcv)
        return self.head(sequence[:, -1, :])


class CNNLSTMDirection(nn.Module):
    """Feature window -> probabilities of down / flat / up (softmax inside the model)."""

    def __init__(self, config: CNNLSTMDirectionConfig):
        super().__init__()
        self.conv = nn.Conv1d(config.n_features, config.conv_channels, config.kernel_size,
                              padding=config.kernel_size // 2)
        self.lstm = nn.LSTM(config.conv_channels, config.hidden_size, batch_first=True)
        self.head = nn.Linear(config.hidden_size, config.n_classes)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        conv = torch.relu(self.conv(features.transpose(1, 2))).transpose(1, 2)
        sequence, _ = self.lstm(conv)
        return self.head(sequence[:, -1, :])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(features), dim=-1)


class SentimentTransformer(nn.Module):
    """Token ids + mask -> probabilities of negative / neutral / positive (softmax inside the model).

    Attention and pooling are written out with plain tensor ops (no nn.MultiheadAttention fast path),
    so the ONNX and TorchScript graphs are the same math on every runtime.
    """

    def __init__(self, config: SentimentTransformerConfig):
        super().__init__()
        if config.d_model % config.n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        self.n_heads = config.n_heads
        self.head_dim = config.d_model // config.n_heads
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Parameter(torch.zeros(1, config.max_length, config.d_model))
        self.layers = nn.ModuleList(_EncoderLayer(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.n_classes)
        nn.init.normal_(self.position_embedding, std=0.02)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)
        hidden = self.token_embedding(input_ids) + self.position_embedding[:, : input_ids.shape[1], :]
        # Additive key mask: padded positions get a large negative score (finite, so fp16 stays finite).
        key_bias = (1.0 - mask)[:, None, None, :] * -1e4
        for layer in self.layers:
            hidden = layer(hidden, key_bias)
        hidden = self.norm(hidden)
        weights = mask[:, :, None]
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(input_ids, attention_mask), dim=-1)


class _EncoderLayer(nn.Module):
    def __init__(self, config: SentimentTransformerConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.d_model // config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)
        self.norm1 = nn.LayerNorm(config.d_model)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.ff = nn.Sequential(nn.Linear(config.d_model, config.dim_feedforward), nn.GELU(),
                                nn.Linear(config.dim_feedforward, config.d_model))

    def forward(self, hidden: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = hidden.shape
        qkv = self.qkv(self.norm1(hidden)).reshape(batch, length, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        scores = q @ k.transpose(-2, -1) * (self.head_dim ** -0.5) + key_bias
        attended = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(batch, length, d_model)
        hidden = hidden + self.out(attended)
        return hidden + self.ff(self.norm2(hidden))


class Architecture(BaseModel):
    """A registry entry: how to build the module and what it serves."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    config_type: type[BaseModel]
    builder: Callable[[BaseModel], nn.Module]
    signature: Callable[[BaseModel], ModelSignature]


def _lstm_signature(config: LSTMPriceConfig) -> ModelSignature:
    return ModelSignature(
        inputs=[TensorSpec(name="ohlcv", dtype="float32", shape=(-1, config.seq_len, config.n_features))],
        outputs=[TensorSpec(name="price", dtype="float32", shape=(-1, 1))],
        task="regression",
    )


def _direction_signature(config: CNNLSTMDirectionConfig) -> ModelSignature:
    return ModelSignature(
        inputs=[TensorSpec(name="features", dtype="float32", shape=(-1, config.seq_len, config.n_features))],
        outputs=[TensorSpec(name="probabilities", dtype="float32", shape=(-1, config.n_classes))],
        task="classification",
        labels=DIRECTION_LABELS[: config.n_classes] if config.n_classes == 3 else None,
    )


def _sentiment_signature(config: SentimentTransformerConfig) -> ModelSignature:
    return ModelSignature(
        inputs=[TensorSpec(name="input_ids", dtype="int64", shape=(-1, config.max_length)),
                TensorSpec(name="attention_mask", dtype="int64", shape=(-1, config.max_length))],
        outputs=[TensorSpec(name="probabilities", dtype="float32", shape=(-1, config.n_classes))],
        task="classification",
        labels=SENTIMENT_LABELS if config.n_classes == 3 else None,
        # trained on truncated texts (modelzoo/datasets.py): a longer text is served on its first tokens
        text=TextPreprocessing(tokenizer="vocab.txt", max_length=config.max_length, truncation=True),
    )


ARCHITECTURES: dict[str, Architecture] = {
    "lstm_price": Architecture(config_type=LSTMPriceConfig, builder=LSTMPricePredictor, signature=_lstm_signature),
    "cnn_lstm_direction": Architecture(config_type=CNNLSTMDirectionConfig, builder=CNNLSTMDirection,
                                       signature=_direction_signature),
    "sentiment_transformer": Architecture(config_type=SentimentTransformerConfig, builder=SentimentTransformer,
                                          signature=_sentiment_signature),
}


def _architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise InvalidInput(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}",
                           {"architecture": name}) from None


def parse_config(name: str, config: dict | None = None) -> BaseModel:
    """Validated config of ``name`` (unknown keys are refused, so a typo does not pass silently)."""
    try:
        return _architecture(name).config_type.model_validate(config or {})
    except ValidationError as exc:
        raise InvalidInput(f"invalid config for architecture {name!r}: {exc.errors()[0]['msg']}",
                           {"architecture": name, "errors": exc.errors(include_url=False, include_context=False)}) from exc


def build_model(name: str, config: dict | None = None) -> nn.Module:
    """A fresh (untrained) module of architecture ``name``, in eval mode."""
    architecture = _architecture(name)
    return architecture.builder(parse_config(name, config)).eval()


def signature_for(name: str, config: dict | None = None) -> ModelSignature:
    return _architecture(name).signature(parse_config(name, config))
