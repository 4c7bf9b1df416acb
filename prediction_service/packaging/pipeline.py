"""export -> variants -> validate -> benchmark -> register, with a log line per step.

A version is registered only with variants that passed numeric validation against the original
PyTorch model. If the fp32 ONNX, TorchScript or state_dict export fails validation nothing is
registered (ValidationFailed); a failing fp16/int8 variant is left out and reported as rejected.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..artifacts import ArtifactFormat, Precision
from ..errors import InvalidInput, ValidationFailed
from ..registry.layout import METADATA_FILE, RegistryLayout
from ..registry.model_version import ModelVersion, ValidationReport, VersionMetadata
from ..registry.store import ModelRegistry
from ..registry.writer import ArtifactSource
from ..execution.runtimes import Runtime, TorchRuntime, open_artifact
from ..signature import ModelSignature
from ..torch_threads import torch_threads
from .benchmark import BenchmarkResult, benchmark
from .export import OnnxOptimization, TorchScriptMethod, export_onnx, export_torchscript, optimize_onnx
from .quantize import (Calibration, QuantizationSummary, StaticInt8Options, calibration_batches,
                       make_int8_static)
from .validation import Tolerances, VariantValidation, validate_runner
from .variants import make_fp16, make_int8

log = logging.getLogger(__name__)

WORK_DIR = ".packaging"
"""Scratch space under the registry root (hidden from the registry's listings)."""
VALIDATION_DYNAMIC_DIM = 8
"""Generated validation inputs: size of dynamic dims other than the batch."""
VALIDATION_INT_HIGH = 2
"""Generated validation inputs: integer ids drawn from [0, this)."""


class PackagingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fp16: bool = False
    """Also build an fp16 ONNX variant."""
    int8: bool = False
    """Also build an int8 ONNX variant: dynamic quantization, or static with ``int8_static``."""
    int8_static: StaticInt8Options | None = None
    """Build the int8 variant by static (calibrated) quantization with this recipe instead of dynamic;
    package_model then needs ``calibration_inputs``. Validated against the same int8 tolerances."""
    torchscript: bool = True
    torchscript_method: TorchScriptMethod = "auto"
    """auto = script, falling back to trace for code the TorchScript compiler rejects."""
    state_dict: bool = True
    """Keep the weights as a state_dict too (only when an architecture is named: it needs the code)."""
    opset: int = Field(17, ge=17)
    onnx_optimization: OnnxOptimization = "basic"
    tolerances: Tolerances = Field(default_factory=Tolerances)
    validation_rows: int = Field(64, ge=1, le=4096)
    benchmark_runs: int = Field(50, ge=0)
    """Batch-1 runs per variant; 0 skips benchmarks."""
    threads: int = Field(1, ge=1)
    """Threads for ONNX Runtime and torch while validating and benchmarking."""


class PackagingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str
    version: str
    signature: ModelSignature
    architecture: str | None = None
    architecture_config: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    extra_files: dict[str, Path] = Field(default_factory=dict)
    """File name inside the version -> source file (e.g. ``{"vocab.txt": path}``)."""


class PackagingResult(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    version: ModelVersion
    validations: list[VariantValidation]
    benchmarks: dict[str, BenchmarkResult]

    @property
    def rejected(self) -> list[VariantValidation]:
        return [v for v in self.validations if not v.passed]


@dataclass(frozen=True)
class _Variant:
    key: str
    format: ArtifactFormat
    precision: Precision
    path: Path
    file_name: str
    required: bool
    """A required variant failing validation stops the whole packaging."""
    benchmarked: bool = True

    def open(self, request: PackagingRequest, options: PackagingOptions) -> Runtime:
        """The runtime serving will use for this artifact, opened the same way (runtimes.open_artifact)."""
        return open_artifact(self.path, self.format, request.signature, options.threads,
                             architecture=request.architecture, architecture_config=request.architecture_config)


def package_model(model: nn.Module, request: PackagingRequest, store: Path,
                  options: PackagingOptions | None = None,
                  validation_inputs: dict[str, np.ndarray] | None = None,
                  calibration_inputs: Calibration | None = None) -> PackagingResult:
    """``calibration_inputs``: rows the static int8 recipe measures activation ranges on (other rows than
    the validation set's, or validation would grade the calibration data), as tensors or a list of batches."""
    options = options or PackagingOptions()
    store = Path(store)
    RegistryLayout(store).new_version_dir(request.name, request.version)  # Conflict before any expensive work
    _check_extra_files(request)
    if options.int8 and options.int8_static is not None and not calibration_inputs:
        raise InvalidInput("static int8 quantization (int8_static) needs calibration_inputs",
                           {"variant": "onnx-int8"})
    work_root = store / WORK_DIR
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{request.name}-{request.version}-", dir=work_root))
    try:
        with torch_threads(options.threads):
            return _package(model.eval(), request, store, options, validation_inputs, calibration_inputs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with suppress(OSError):  # leave no empty scratch dir behind (another packaging may still use it)
            work_root.rmdir()


def _package(model: nn.Module, request: PackagingRequest, store: Path, options: PackagingOptions,
             validation_inputs: dict[str, np.ndarray] | None, calibration_inputs: Calibration | None,
             work: Path) -> PackagingResult:
    signature = request.signature
    inputs = _validation_set(signature, validation_inputs, options)
    log.info("[%s:%s] validation set: %d rows", request.name, request.version, _rows(inputs))
    reference = TorchRuntime(model, signature, options.threads).run(inputs)
    example = {name: array[:2] for name, array in inputs.items()}

    if options.int8 and options.int8_static is not None:  # each batch checked like a request
        calibration_inputs = [signature.validate_inputs(batch) for batch in
                              calibration_batches(calibration_inputs, options.int8_static.calibration_batch)]
    variants, quantization = _export_all(model, request, options, example, calibration_inputs, work)
    validations: dict[str, VariantValidation] = {}
    for variant in variants:
        result = validate_runner(variant.open(request, options), inputs, reference, signature, variant.key,
                                 variant.format, variant.precision, options.tolerances)
        validations[variant.key] = result
        log.info("[%s:%s] validate %s: %s (max abs %.3g, mean abs %.3g%s)", request.name, request.version,
                 variant.key, "passed" if result.passed else "REJECTED: " + "; ".join(result.failures),
                 result.max_abs_error, result.mean_abs_error,
                 "" if result.top1_agreement is None else f", top-1 {result.top1_agreement:.3f}")
        if not result.passed and variant.required:
            raise ValidationFailed(
                f"{variant.key} export of {request.name}:{request.version} does not match the PyTorch model: "
                + "; ".join(result.failures),
                {"variant": variant.key, "validation": result.model_dump(mode="json")},
            )
    accepted = [v for v in variants if validations[v.key].passed]

    benchmarks: dict[str, BenchmarkResult] = {}
    if options.benchmark_runs:
        for variant in (v for v in accepted if v.benchmarked):
            benchmarks[variant.key] = benchmark(variant.open(request, options), inputs, variant.path.stat().st_size,
                                                runs=options.benchmark_runs, threads=options.threads)
            b = benchmarks[variant.key]
            log.info("[%s:%s] benchmark %s: p50 %.3f ms, p99 %.3f ms, %.0f rows/s at batch %d, %d bytes",
                     request.name, request.version, variant.key, b.latency_ms_p50, b.latency_ms_p99,
                     b.throughput_rows_per_s, b.throughput_batch, b.size_bytes)

    report = ValidationReport(
        passed=True,  # only passing variants are registered; rejected ones are listed in details
        kind="numeric_parity",
        details={
            "rows": _rows(inputs),
            "variants": {key: v.model_dump(mode="json") for key, v in validations.items() if v.passed},
            "rejected": [v.model_dump(mode="json") for v in validations.values() if not v.passed],
            **({"quantization": quantization.model_dump(mode="json")} if quantization else {}),
        },
    )
    metadata = VersionMetadata(
        name=request.name, version=request.version, description=request.description,
        architecture=request.architecture, architecture_config=request.architecture_config,
        signature=signature, metrics=request.metrics, tags=request.tags,
        validation=report, benchmarks={key: b.model_dump(mode="json") for key, b in benchmarks.items()},
    )
    sources = [ArtifactSource(v.path, v.format, v.precision, v.file_name) for v in accepted]
    version = register(store, metadata, sources, _stage_extra_files(request, work))
    log.info("[%s:%s] registered %d artifacts at %s", request.name, request.version, len(sources), version.path)
    return PackagingResult(version=version, validations=list(validations.values()), benchmarks=benchmarks)


def register(store: Path, metadata: VersionMetadata, sources: list[ArtifactSource],
             extra_files: list[Path]) -> ModelVersion:
    """The one place the pipeline writes to the registry (events recorded, signature smoke-checked)."""
    return ModelRegistry(store).register(
        metadata.name, metadata.version, sources, signature=metadata.signature, metrics=metadata.metrics,
        tags=metadata.tags, description=metadata.description, architecture=metadata.architecture,
        architecture_config=metadata.architecture_config, validation=metadata.validation,
        extra_files=extra_files, benchmarks=metadata.benchmarks, actor="packaging")


def _export_all(model: nn.Module, request: PackagingRequest, options: PackagingOptions,
                example: dict[str, np.ndarray], calibration_inputs: Calibration | None,
                work: Path) -> tuple[list[_Variant], QuantizationSummary | None]:
    signature = request.signature
    tag = f"[{request.name}:{request.version}]"
    raw_onnx = export_onnx(model, signature, example, work / "raw.onnx", opset=options.opset)
    log.info("%s export onnx (opset %d) checked", tag, options.opset)
    served_onnx = work / "model.onnx"
    if options.onnx_optimization == "disabled":
        shutil.copyfile(raw_onnx, served_onnx)
    else:
        optimize_onnx(raw_onnx, served_onnx, options.onnx_optimization)
    log.info("%s onnx graph optimisation: %s", tag, options.onnx_optimization)
    variants = [_Variant("onnx-fp32", "onnx", "fp32", served_onnx, "model.onnx", True)]
    if options.torchscript:
        ts_path = work / "model.pt"
        method = export_torchscript(model, signature, example, ts_path, options.torchscript_method)
        log.info("%s export torchscript (%s, frozen, optimised for inference)", tag, method)
        variants.append(_Variant("torchscript-fp32", "torchscript", "fp32", ts_path, "model.pt", True))
    if options.state_dict and request.architecture:
        sd_path = work / "state_dict.pt"
        torch.save(model.state_dict(), sd_path)
        log.info("%s saved state_dict for architecture %s", tag, request.architecture)
        # Rebuilt from the architecture + config and the saved weights, as serving does.
        variants.append(_Variant("state_dict-fp32", "state_dict", "fp32", sd_path, "state_dict.pt", True,
                                 benchmarked=False))
    if options.fp16:
        fp16_path = make_fp16(raw_onnx, work / "model.fp16.onnx")
        log.info("%s variant onnx fp16 built", tag)
        variants.append(_Variant("onnx-fp16", "onnx", "fp16", fp16_path, "model.fp16.onnx", False))
    quantization = None
    if options.int8:
        int8_path = work / "model.int8.onnx"
        if options.int8_static is None:
            make_int8(raw_onnx, int8_path)
            log.info("%s variant onnx int8 (dynamic quantization) built", tag)
        else:
            assert calibration_inputs is not None  # package_model checked it
            quantization = make_int8_static(raw_onnx, int8_path, options.int8_static, calibration_inputs)
            log.info("%s variant onnx int8 (static quantization, QDQ, %d nodes int8, %d fp32, calibrated on %d "
                     "rows) built", tag, quantization.quantized_nodes, quantization.fp32_nodes,
                     quantization.calibration_rows)
        variants.append(_Variant("onnx-int8", "onnx", "int8", int8_path, "model.int8.onnx", False))
    return variants, quantization


def _validation_set(signature: ModelSignature, given: dict[str, np.ndarray] | None,
                    options: PackagingOptions) -> dict[str, np.ndarray]:
    raw = given if given is not None else signature.synthetic_inputs(
        options.validation_rows, dynamic_dim=VALIDATION_DYNAMIC_DIM, int_high=VALIDATION_INT_HIGH)
    rows = _rows(raw)
    # Checked against the signature like a request would be, but in chunks: the set may exceed max_batch_size.
    chunks = [signature.validate_inputs({k: v[i : i + signature.max_batch_size] for k, v in raw.items()})
              for i in range(0, rows, signature.max_batch_size)]
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def _rows(inputs: dict[str, np.ndarray]) -> int:
    return len(next(iter(inputs.values())))


def _check_extra_files(request: PackagingRequest) -> None:
    for file_name, source in request.extra_files.items():
        if Path(file_name).name != file_name or file_name in {METADATA_FILE, ""}:
            raise InvalidInput(f"extra file name {file_name!r} must be a plain file name")
        if not Path(source).is_file():
            raise InvalidInput(f"extra file {source} does not exist")
    text = request.signature.text
    if text is not None and text.tokenizer not in request.extra_files:
        raise InvalidInput(f"the signature needs tokenizer file {text.tokenizer!r}; pass it in extra_files",
                           {"tokenizer": text.tokenizer})


def _stage_extra_files(request: PackagingRequest, work: Path) -> list[Path]:
    """Copy extra files under their in-version names (the writer keeps a file's own name)."""
    staged_dir = work / "extra"
    staged_dir.mkdir()
    staged = []
    for file_name, source in request.extra_files.items():
        shutil.copyfile(source, staged_dir / file_name)
        staged.append(staged_dir / file_name)
    return staged
