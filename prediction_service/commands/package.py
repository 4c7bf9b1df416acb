"""``package``: export a PyTorch model to ONNX/TorchScript (+ fp16/int8), validate, benchmark, register.

The source is either a researcher's python file defining ``build_model() -> nn.Module`` and
``SIGNATURE`` (a ModelSignature), optionally ``validation_inputs(rows) -> {name: array}`` — that
file is the researcher's own code and is run explicitly — or a state_dict checkpoint (``.pt``)
loaded with ``torch.load(weights_only=True)`` into a model zoo ``--architecture``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from ..errors import InvalidInput, PredictionServiceError
from ..packaging.pipeline import PackagingOptions, PackagingRequest, PackagingResult, package_model
from ..packaging.validation import Tolerances
from ..settings import Settings
from ..signature import ModelSignature

log = logging.getLogger(__name__)


@dataclass
class LoadedSource:
    model: nn.Module
    signature: ModelSignature
    validation_inputs: Callable[[int], dict[str, np.ndarray]] | None
    architecture: str | None = None
    architecture_config: dict | None = None
    tokenizer: Path | None = None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("package", help="export, validate, benchmark and register a PyTorch model",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="model .py file (build_model + SIGNATURE) or state_dict .pt")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--fp16", action="store_true", help="also build and validate an fp16 ONNX variant")
    parser.add_argument("--int8", action="store_true", help="also build and validate an int8 ONNX variant")
    parser.add_argument("--store", type=Path, default=None, help="registry root (default: MODEL_STORE)")
    parser.add_argument("--architecture", help="model zoo architecture of a .pt checkpoint")
    parser.add_argument("--config", default="{}", help="JSON architecture config of a .pt checkpoint")
    parser.add_argument("--tokenizer", type=Path, help="vocab file for text models (stored as the signature's name)")
    parser.add_argument("--tolerances", default=None, help='JSON overrides, e.g. {"int8": {"max_abs_error": 0.05, '
                                                           '"mean_abs_error": 0.01}}')
    parser.add_argument("--description", default="")
    parser.add_argument("--validation-rows", type=int, default=64)
    parser.add_argument("--benchmark-runs", type=int, default=50, help="batch-1 runs per variant (0 = skip)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    store = args.store or Settings().model_store
    try:
        source = load_source(args.source, args.architecture, _json_arg(args.config, "--config"))
        options = PackagingOptions(
            fp16=args.fp16, int8=args.int8, validation_rows=args.validation_rows, benchmark_runs=args.benchmark_runs,
            tolerances=Tolerances.model_validate(_json_arg(args.tolerances, "--tolerances"))
            if args.tolerances else Tolerances(),
        )
        tokenizer = args.tokenizer or source.tokenizer
        extra = {source.signature.text.tokenizer: tokenizer} if source.signature.text and tokenizer else {}
        request = PackagingRequest(
            name=args.name, version=args.version, signature=source.signature, architecture=source.architecture,
            architecture_config=source.architecture_config or {}, description=args.description, extra_files=extra,
        )
        inputs = source.validation_inputs(options.validation_rows) if source.validation_inputs else None
        result = package_model(source.model, request, Path(store), options, validation_inputs=inputs)
    except ValidationError as exc:
        print(f"error: invalid option: {exc}", file=sys.stderr)
        return 2
    except PredictionServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.details:
            print(json.dumps(exc.details, indent=2, default=str), file=sys.stderr)
        return 1
    print(summary_table(result))
    return 0


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
    from ..modelzoo.architectures import build_model, signature_for
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


def _json_arg(text: str | None, option: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{option} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidInput(f"{option} must be a JSON object")
    return value


def summary_table(result: PackagingResult) -> str:
    version = result.version
    header = ("variant", "format", "precision", "size", "p50 ms", "p99 ms", "rows/s@32", "max err", "status")
    rows = [header]
    for v in result.validations:
        bench = result.benchmarks.get(v.variant)
        artifact = next((a for a in version.metadata.artifacts if a.format == v.format and a.precision == v.precision),
                        None)
        rows.append((
            v.variant, v.format, v.precision,
            _size(artifact.size_bytes) if artifact else "-",
            f"{bench.latency_ms_p50:.3f}" if bench else "-",
            f"{bench.latency_ms_p99:.3f}" if bench else "-",
            f"{bench.throughput_rows_per_s:.0f}" if bench else "-",
            f"{v.max_abs_error:.2e}",
            "accepted" if v.passed else "REJECTED: " + "; ".join(v.failures),
        ))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header) - 1)]
    lines = [f"{version.name}:{version.version} registered at {version.path}"]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    for v in result.rejected:
        worst = ", ".join(f"#{w.index} ({w.max_abs_error:.3g})" for w in v.worst_inputs)
        lines.append(f"{v.variant} rejected; worst inputs: {worst}")
    return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"
