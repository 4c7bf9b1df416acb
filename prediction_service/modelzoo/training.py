"""Brief, deterministic training of the model zoo models on synthetic data (seconds, CPU)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..torch_threads import torch_threads
from ..architectures import build_model
from .datasets import Dataset, dataset_for, default_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingPlan:
    architecture: str
    config: dict
    steps: int
    batch_size: int
    train_rows: int
    learning_rate: float = 3e-3
    seed: int = 0


@dataclass
class TrainedModel:
    architecture: str
    config: dict
    model: nn.Module
    final_loss: float
    train_seconds: float


def default_plans() -> dict[str, TrainingPlan]:
    """Sizes chosen so all three train in well under 20 s on one thread."""
    vocab_size = len(default_tokenizer())
    return {
        "lstm_price": TrainingPlan("lstm_price", {"hidden_size": 32}, steps=120, batch_size=32, train_rows=512),
        "cnn_lstm_direction": TrainingPlan("cnn_lstm_direction", {"conv_channels": 32, "hidden_size": 32},
                                           steps=120, batch_size=32, train_rows=512),
        "sentiment_transformer": TrainingPlan("sentiment_transformer", {"vocab_size": vocab_size},
                                              steps=120, batch_size=32, train_rows=1024),
    }


def _loss(model: nn.Module, architecture: str, inputs: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    if architecture == "lstm_price":
        # Learn the deviation from "no change": targets sit near 1.0.
        return nn.functional.mse_loss(model(*inputs), targets)
    return nn.functional.cross_entropy(model.logits(*inputs), targets)


def train(plan: TrainingPlan, threads: int = 1) -> TrainedModel:
    started = time.perf_counter()
    with torch_threads(threads):
        torch.manual_seed(plan.seed)
        data: Dataset = dataset_for(plan.architecture, plan.train_rows, seed=plan.seed, config=plan.config)
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in data.inputs.values()]
        targets = torch.from_numpy(data.targets)
        model = build_model(plan.architecture, plan.config).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=plan.learning_rate)
        order = torch.Generator().manual_seed(plan.seed)
        loss = torch.tensor(float("nan"))
        for _ in range(plan.steps):
            batch = torch.randint(0, len(data), (plan.batch_size,), generator=order)
            loss = _loss(model, plan.architecture, [t[batch] for t in tensors], targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
    seconds = time.perf_counter() - started
    log.info("trained %s: %d steps, final loss %.5f (%.1f s)", plan.architecture, plan.steps, loss.item(), seconds)
    return TrainedModel(plan.architecture, plan.config, model, float(loss.item()), seconds)


def train_all(threads: int = 1) -> dict[str, TrainedModel]:
    return {name: train(plan, threads) for name, plan in default_plans().items()}
