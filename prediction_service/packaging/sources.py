"""Where a model to package comes from: a researcher's model file or a state_dict checkpoint of a zoo architecture."""

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


@dataclass
class LoadedSource:
    model: nn.Module
    signature: ModelSignature
    validation_inputs: Callable[[int], dict[str, np.ndarray]] | None
    architecture: str | None = None
    architecture_config: dict | None = None
    tokenizer: Path | None = None


def load_source(path: Path, architecture: str | None, config: dict) -> LoadedSource:
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist")
    if path.suffix == ".py":
        if architecture:
            raise InvalidInput("--architecture applies to .pt checkpoints, not to a model .py file")
        return _load_python(path)
    if path.suffix in {".pt", ".pth"}:
        return _load_checkpoint(path, architecture, config)
    raise InvalidInput(f"{path.name}: expected a model .py file or a state_dict .pt/.pth checkpoint")


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


