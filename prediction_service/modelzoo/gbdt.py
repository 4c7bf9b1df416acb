"""``gbdt-direction``: a small LightGBM classifier of the next few steps' direction (down / flat / up).

Its inputs are the shipped OHLCV features (preprocessing/bars.py, the CNN-LSTM's 110 indicators) of the last
bar only: the declared ``ohlcv_features`` step with ``window=1`` and the CNN-LSTM's 50 bars of warm-up, so a
request sends 51 raw bars per row and the server computes the features exactly as training did. The model
is trained on those ``[rows, 1, 110]`` tensors flattened to 110 columns; the packaged ONNX graph takes the
step's ``[batch, 1, 110]`` tensor and flattens it itself (packaging/trees.py). Training takes well under a
second on one thread (deterministic LightGBM).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..architectures import DIRECTION_LABELS
from ..signature import BarsPreprocessing, ModelSignature, TensorSpec
from .datasets import DIRECTION_WARMUP, Dataset, direction_dataset

log = logging.getLogger(__name__)

NAME = "gbdt-direction"
MODEL_FILE = "lightgbm_model.txt"
"""The native LightGBM text model, stored beside the ONNX graph in the registered version (provenance)."""
WINDOW = 1


@dataclass(frozen=True)
class GbdtPlan:
    train_rows: int = 2048
    n_estimators: int = 40
    num_leaves: int = 15
    learning_rate: float = 0.1
    min_child_samples: int = 20
    seed: int = 0
    params: dict = field(default_factory=dict)


@dataclass
class TrainedGbdt:
    path: Path
    """The saved native model (LightGBM text format)."""
    train_accuracy: float
    train_seconds: float


def bars_step() -> BarsPreprocessing:
    """The features of the last bar, from ``1 + 50`` bars."""
    return BarsPreprocessing(kind="ohlcv_features", input="features", window=WINDOW, warmup=DIRECTION_WARMUP)


def signature() -> ModelSignature:
    step = bars_step()
    return ModelSignature(
        inputs=[TensorSpec(name=step.input, dtype="float32", shape=(-1, WINDOW, step.n_features))],
        outputs=[TensorSpec(name="probabilities", dtype="float32", shape=(-1, len(DIRECTION_LABELS)))],
        task="classification", labels=list(DIRECTION_LABELS), bars=step,
    )


def dataset(n: int, seed: int = 0) -> Dataset:
    """Feature tensors ``[n, 1, 110]`` (what :func:`bars_step` makes from each row's bars) and direction labels."""
    return direction_dataset(n, seed=seed, seq_len=WINDOW)


def train(path: Path, plan: GbdtPlan | None = None) -> TrainedGbdt:
    """Fit the classifier on synthetic bars and save it in LightGBM's native text format at ``path``."""
    import lightgbm

    plan = plan or GbdtPlan()
    started = time.perf_counter()
    data = dataset(plan.train_rows, seed=plan.seed)
    rows = data.inputs["features"].reshape(len(data), -1)
    classifier = lightgbm.LGBMClassifier(
        n_estimators=plan.n_estimators, num_leaves=plan.num_leaves, learning_rate=plan.learning_rate,
        min_child_samples=plan.min_child_samples, random_state=plan.seed, n_jobs=1, deterministic=True,
        force_row_wise=True, verbose=-1, **plan.params)
    classifier.fit(rows, data.targets)
    classifier.booster_.save_model(str(path))
    accuracy = float((classifier.predict(rows) == data.targets).mean())
    seconds = time.perf_counter() - started
    log.info("trained %s: %d rows, %d trees, train accuracy %.3f (%.2f s)", NAME, plan.train_rows,
             plan.n_estimators, accuracy, seconds)
    return TrainedGbdt(Path(path), accuracy, seconds)


def validation_rows(n: int, seed: int) -> dict[str, np.ndarray]:
    return dataset(n, seed=seed).inputs
