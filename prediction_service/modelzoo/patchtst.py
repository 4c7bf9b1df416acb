"""``patchtst-price``: a small PatchTST forecaster of the next :data:`HORIZON` closes, built from transformers'
``PatchTSTConfig`` / ``PatchTSTForPrediction`` (a fresh config: nothing is downloaded).

Its input is the LSTM's declared ``ohlcv_window`` step over :data:`CONTEXT` bars (prices / the last close,
volume / the mean volume), so a request sends raw OHLCV and the server normalises it exactly as training did.
The model reads the five channels in patches of :data:`PATCH` bars and forecasts all five channels
:data:`HORIZON` steps ahead; the served graph keeps the close channel: ``forecast`` is ``[batch, horizon]``,
each value a future close / the last close (1.0 = unchanged). The signature declares the horizon, so requests
may ask for the first ``n_steps`` of it.

About 18 k parameters; training on synthetic bars takes a few seconds on one thread. transformers is needed to
build and train it only: the ONNX graph is what is served.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from ..signature import BarsPreprocessing, ModelSignature, TensorSpec
from ..preprocessing.bars import preprocess_bars
from ..torch_threads import torch_threads
from .datasets import Dataset, bar_windows
from .synthetic import synthetic_ohlcv

log = logging.getLogger(__name__)

NAME = "patchtst-price"
CONTEXT = 64
"""Bars the model reads (the step's window)."""
HORIZON = 8
"""Closes forecast, one per future step."""
PATCH = 8
"""Bars per patch (non-overlapping: stride = patch length): 8 patches of the context."""
CLOSE_CHANNEL = 3


@dataclass(frozen=True)
class PatchTSTPlan:
    train_rows: int = 1024
    steps: int = 100
    batch_size: int = 32
    learning_rate: float = 3e-3
    d_model: int = 32
    layers: int = 2
    heads: int = 4
    ffn_dim: int = 64
    seed: int = 0


@dataclass
class TrainedPatchTST:
    model: object
    """The :class:`PatchTSTPrice` module, in eval mode."""
    final_loss: float
    baseline_loss: float
    """The loss of forecasting "unchanged" (every ratio 1.0) on the training rows: what training should beat."""
    train_seconds: float
    parameters: int


def bars_step() -> BarsPreprocessing:
    return BarsPreprocessing(kind="ohlcv_window", input="ohlcv", window=CONTEXT)


def signature() -> ModelSignature:
    step = bars_step()
    return ModelSignature(
        inputs=[TensorSpec(name=step.input, dtype="float32", shape=(-1, CONTEXT, step.n_features))],
        outputs=[TensorSpec(name="forecast", dtype="float32", shape=(-1, HORIZON))],
        task="regression", horizon=HORIZON, bars=step,
    )


def dataset(n: int, seed: int = 0) -> Dataset:
    """Normalised windows ``[n, CONTEXT, 5]`` (what :func:`bars_step` makes from each row's bars) -> the next
    :data:`HORIZON` closes / the window's last close, ``[n, HORIZON]``."""
    series = synthetic_ohlcv(n + CONTEXT + HORIZON, seed=seed)
    windows = preprocess_bars(bars_step(), bar_windows(series, n, CONTEXT))
    close = series[:, 3]
    last = close[CONTEXT - 1 : CONTEXT - 1 + n]
    ahead = np.lib.stride_tricks.sliding_window_view(close[CONTEXT:], HORIZON)[:n]
    return Dataset({"ohlcv": windows}, (ahead / last[:, None]).astype(np.float32))


def build_model(plan: PatchTSTPlan | None = None):
    """A fresh :class:`PatchTSTPrice` (random weights, seeded)."""
    import torch

    plan = plan or PatchTSTPlan()
    torch.manual_seed(plan.seed)
    return _module_class()(plan)


def _module_class():
    import torch
    from torch import nn

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import PatchTSTConfig, PatchTSTForPrediction
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # a notice about the unused causal-LM loss_type default: expected

    class GatherPatchify(nn.Module):
        """PatchTST's patchify (``unfold`` over time, then channels first) as one index gather: the same
        values, and it exports to ONNX, where the TorchScript exporter's ``unfold`` with a negative dim
        lays the patches out wrongly (the graph fails ONNX Runtime's shape inference)."""

        def __init__(self, patchify: nn.Module):
            super().__init__()
            starts = patchify.sequence_start + torch.arange(patchify.num_patches) * patchify.patch_stride
            self.register_buffer("index", starts[:, None] + torch.arange(patchify.patch_length)[None, :],
                                 persistent=False)

        def forward(self, past_values: torch.Tensor) -> torch.Tensor:
            # [batch, time, channels] -> [batch, patches, patch, channels] -> [batch, channels, patches, patch]
            return past_values[:, self.index, :].permute(0, 3, 1, 2)

    class PatchTSTPrice(nn.Module):
        """PatchTSTForPrediction over the normalised OHLCV window -> the close channel's forecast."""

        def __init__(self, plan: PatchTSTPlan):
            super().__init__()
            config = PatchTSTConfig(
                num_input_channels=5, context_length=CONTEXT, prediction_length=HORIZON, patch_length=PATCH,
                patch_stride=PATCH, d_model=plan.d_model, num_attention_heads=plan.heads,
                num_hidden_layers=plan.layers, ffn_dim=plan.ffn_dim, dropout=0.0, attention_dropout=0.0,
                ff_dropout=0.0, head_dropout=0.0, positional_dropout=0.0, path_dropout=0.0, scaling=None,
                loss="mse", attn_implementation="eager")
            # scaling=None: the bars step already divides prices by the last close, so the head forecasts the
            # ratios directly (a per-window std scaler made the brief training worse than "unchanged")
            self.patchtst = PatchTSTForPrediction(config)
            self.patchtst.model.patchifier = GatherPatchify(self.patchtst.model.patchifier)

        def forward(self, ohlcv: torch.Tensor) -> torch.Tensor:
            return self.patchtst(past_values=ohlcv).prediction_outputs[..., CLOSE_CHANNEL]

    return PatchTSTPrice


def train(plan: PatchTSTPlan | None = None, threads: int = 1) -> TrainedPatchTST:
    """Brief MSE training on synthetic bars (seconds, CPU); returns the module in eval mode."""
    import torch

    plan = plan or PatchTSTPlan()
    started = time.perf_counter()
    with torch_threads(threads):
        model = build_model(plan).train()
        data = dataset(plan.train_rows, seed=plan.seed)
        inputs = torch.from_numpy(np.ascontiguousarray(data.inputs["ohlcv"]))
        targets = torch.from_numpy(data.targets)
        optimizer = torch.optim.Adam(model.parameters(), lr=plan.learning_rate)
        order = torch.Generator().manual_seed(plan.seed)
        loss = torch.tensor(float("nan"))
        for _ in range(plan.steps):
            batch = torch.randint(0, len(data), (plan.batch_size,), generator=order)
            loss = torch.nn.functional.mse_loss(model(inputs[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            final = float(torch.nn.functional.mse_loss(model(inputs), targets))
        baseline = float(((data.targets - 1.0) ** 2).mean())
    seconds = time.perf_counter() - started
    parameters = sum(p.numel() for p in model.parameters())
    log.info("trained %s: %d parameters, %d steps, loss %.6f (unchanged-forecast baseline %.6f, %.1f s)", NAME,
             parameters, plan.steps, final, baseline, seconds)
    return TrainedPatchTST(model, final, baseline, seconds, parameters)


def validation_rows(n: int, seed: int) -> dict[str, np.ndarray]:
    return dataset(n, seed=seed).inputs
