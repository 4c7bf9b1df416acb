"""Where a model to package comes from: a researcher's model file, a state_dict checkpoint of a zoo architecture,
or a fitted tree model saved by its own library (LightGBM text, XGBoost JSON/UBJSON, a skops scikit-learn
pipeline; trees.py says what is loaded and what never is)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInput
from ..signature import ModelSignature
from .trees import TreeModel, TreeSource, check_signature, default_signature, detect_library, load_tree_model


@dataclass
class LoadedSource:
    model: nn.Module | TreeModel
    """A PyTorch module, or a tree model (package_tree_model packages it)."""
    signature: ModelSignature
    validation_inputs: Callable[[int], dict[str, np.ndarray]] | None
    architecture: str | None = None
    architecture_config: dict | None = None
    tokenizer: Path | None = None


def load_source(path: Path, architecture: str | None, config: dict, *, signature: ModelSignature | None = None,
                labels: list[str] | None = None, trusted_types: tuple[str, ...] = ()) -> LoadedSource:
    """``signature``, ``labels`` and ``trusted_types`` apply to tree models only: the signature to serve it
    under (default: trees.default_signature with ``labels``), and the types a skops file may name beyond
    skops's defaults."""
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist")
    library = detect_library(path)
    if library is not None:
        if architecture:
            raise InvalidInput("--architecture applies to .pt checkpoints, not to a tree model")
        return _load_tree(TreeSource(path=path.resolve(), library=library, trusted_types=tuple(trusted_types)),
                          signature, labels)
    if signature is not None or labels or trusted_types:
        raise InvalidInput("--signature, --labels and --trust apply to tree models (a .py file declares SIGNATURE, "
                           "a checkpoint's architecture has one)")
    if path.suffix == ".py":
        if architecture:
            raise InvalidInput("--architecture applies to .pt checkpoints, not to a model .py file")
        return _load_python(path)
    if path.suffix in {".pt", ".pth"}:
        return _load_checkpoint(path, architecture, config)
    raise InvalidInput(f"{path.name}: expected a model .py file, a state_dict .pt/.pth checkpoint, or a tree model "
                       "(LightGBM .txt, XGBoost .json/.ubj, scikit-learn pipeline .skops)")


def _load_tree(source: TreeSource, signature: ModelSignature | None, labels: list[str] | None) -> LoadedSource:
    model = load_tree_model(source)
    if signature is None:
        signature = default_signature(model, labels)
    elif labels:
        raise InvalidInput("give the labels in the signature file, or --labels without --signature")
    check_signature(model, signature)
    return LoadedSource(model, signature, None)


def _load_python(path: Path) -> LoadedSource:
    """Execute the researcher's model file (explicitly given on the command line) and read its contract."""
    spec = importlib.util.spec_from_file_location(f"packaged_model_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    build = getattr(module, "build_model", None)
    signature = getattr(module, "SIGNATURE", None)
    if not callable(build) or not isinstance(signature, ModelSignature):
        raise InvalidInput(f"{path.name} must define build_model() -> nn.Module and SIGNATURE (a ModelSignature)")
    model = build()
    if not isinstance(model, nn.Module):
        raise InvalidInput(f"{path.name}: build_model() returned {type(model).__name__}, not an nn.Module")
    return LoadedSource(model.eval(), signature, getattr(module, "validation_inputs", None))


def _load_checkpoint(path: Path, architecture: str | None, config: dict) -> LoadedSource:
    from ..architectures import build_model, signature_for
    from ..modelzoo.datasets import VOCAB_PATH, dataset_for

    if not architecture:
        raise InvalidInput("a .pt checkpoint needs --architecture (a model zoo architecture)")
    model = build_model(architecture, config)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise InvalidInput(f"{path.name} is not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InvalidInput(f"{path.name} does not fit architecture {architecture}: {exc}") from exc
    signature = signature_for(architecture, config)
    return LoadedSource(
        model.eval(), signature, lambda rows: dataset_for(architecture, rows, seed=1234, config=config).inputs,
        architecture=architecture, architecture_config=config,
        tokenizer=VOCAB_PATH if signature.text else None,
    )


