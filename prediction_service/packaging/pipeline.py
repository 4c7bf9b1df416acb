"""export -> variants -> validate -> benchmark -> register, with a log line per variant.

A version is registered only with variants that passed numeric validation against the original model
(PyTorch, or a tree model's native library). Each variant's build (ONNX Runtime's optimisation, fp16, int8, a
tree model's conversion), validation and benchmark run in a child process of its own (isolation.py): a crash,
a hang past ``variant_timeout_s`` or an error there rejects that variant with the reason, like a numeric
mismatch does. The primary variant (fp32 ONNX) failing registers nothing (ValidationFailed); any other
rejected variant (TorchScript, state_dict, fp16, int8) is left out and reported.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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
from ..execution.runtimes import TorchRuntime
from ..signature import ModelSignature
from ..torch_threads import torch_threads
from .benchmark import BenchmarkResult
from .export import OnnxOptimization, TorchScriptMethod, export_onnx, export_torchscript
from .isolation import (BuildStep, ConvertFp16, ConvertTree, OptimizeOnnx, QuantizeDynamic, QuantizeStatic,
                        VariantJob, run_jobs, save_batches, save_validation_data)
from .quantize import Calibration, QuantizationSummary, StaticInt8Options, calibration_batches
from .trees import TreeModel
from .trees import check_signature as check_tree_signature
from .validation import Tolerances, VariantValidation, not_measured

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
    variant_timeout_s: float = Field(900.0, gt=0)
    """Longest one variant's child process (build, validation, benchmark) may run before it is killed and
    the variant rejected as hung."""


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
    """The primary variant: its failure (mismatch, crash, hang, error) stops the whole packaging."""
    benchmarked: bool = True
    build: BuildStep | None = None
    """What the variant's child process runs to make ``path``; None: already written by this process."""


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
    with _work_dir(store, request) as work, torch_threads(options.threads):
        model = model.eval()
        signature = request.signature
        inputs = _validation_set(signature, validation_inputs, options)
        log.info("[%s:%s] validation set: %d rows", request.name, request.version, _rows(inputs))
        reference = TorchRuntime(model, signature, options.threads).run(inputs)
        example = {name: array[:2] for name, array in inputs.items()}
        if options.int8 and options.int8_static is not None:  # each batch checked like a request
            calibration_inputs = [signature.validate_inputs(batch) for batch in
                                  calibration_batches(calibration_inputs, options.int8_static.calibration_batch)]
        variants, export_failures = _export_torch(model, request, options, example, calibration_inputs, work)
        return _validate_and_register(request, store, options, inputs, reference, variants, export_failures, work)


def package_tree_model(model: TreeModel, request: PackagingRequest, store: Path,
                       options: PackagingOptions | None = None,
                       validation_inputs: dict[str, np.ndarray] | None = None) -> PackagingResult:
    """A LightGBM / XGBoost model or a scikit-learn pipeline (trees.py) as one fp32 ONNX variant: converted in
    a child process, validated against the native library's predictions on the validation set, benchmarked
    and registered. fp16 and int8 do not apply (ONNX Runtime evaluates tree ensembles in fp32)."""
    options = options or PackagingOptions()
    store = Path(store)
    if options.fp16 or options.int8:
        raise InvalidInput("a tree model is packaged as one fp32 ONNX graph: fp16 and int8 variants do not apply "
                           "(ONNX Runtime's TreeEnsemble operators compute in fp32)",
                           {"fp16": options.fp16, "int8": options.int8})
    check_tree_signature(model, request.signature)
    if request.architecture:
        raise InvalidInput("a tree model has no model zoo architecture")
    RegistryLayout(store).new_version_dir(request.name, request.version)
    _check_extra_files(request)
    with _work_dir(store, request) as work:
        inputs = _validation_set(request.signature, validation_inputs, options)
        log.info("[%s:%s] validation set: %d rows (reference: %s's own predictions)", request.name,
                 request.version, _rows(inputs), model.source.library)
        reference = model.predict_signature(request.signature, inputs)
        variants = [_Variant("onnx-fp32", "onnx", "fp32", work / "model.onnx", "model.onnx", True,
                             build=ConvertTree(source=model.source))]
        return _validate_and_register(request, store, options, inputs, reference, variants, {}, work)


@contextmanager
def _work_dir(store: Path, request: PackagingRequest) -> Iterator[Path]:
    work_root = store / WORK_DIR
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{request.name}-{request.version}-", dir=work_root))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with suppress(OSError):  # leave no empty scratch dir behind (another packaging may still use it)
            work_root.rmdir()


def _validate_and_register(request: PackagingRequest, store: Path, options: PackagingOptions,
                           inputs: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                           variants: list[_Variant], export_failures: dict[str, VariantValidation],
                           work: Path) -> PackagingResult:
    """Each variant's build, validation and benchmark in a child process (isolation.py), one after the other
    (benchmarks alone on the CPU; a crash or a hang costs only the variant it hit); then the passing ones are
    registered. The primary variant failing raises ValidationFailed once every variant has been tried."""
    signature = request.signature
    tag = f"[{request.name}:{request.version}]"
    data = save_validation_data(work / "validation.npz", inputs, reference)
    jobs = [VariantJob(
        variant=variant.key, format=variant.format, precision=variant.precision, artifact=variant.path,
        build=variant.build, signature=signature, architecture=request.architecture,
        architecture_config=request.architecture_config, threads=options.threads, tolerances=options.tolerances,
        benchmark_runs=options.benchmark_runs if variant.benchmarked else 0, data=data,
        result=work / f"{variant.key}.result.json") for variant in variants if variant.key not in export_failures]
    for failure in export_failures.values():
        _log_variant(tag, failure, None)
    outcomes = run_jobs(jobs, options.variant_timeout_s, work,
                        on_outcome=lambda o: _log_variant(tag, o.validation, o.benchmark) if o.validation else None)
    validations: dict[str, VariantValidation] = {}
    benchmarks: dict[str, BenchmarkResult] = {}
    quantization: QuantizationSummary | None = None
    for variant in variants:
        if variant.key in export_failures:
            result = export_failures[variant.key]
        else:
            outcome = outcomes[variant.key]
            if outcome.invalid_input is not None:  # the options are wrong, not the variant: nothing registers
                raise InvalidInput(outcome.invalid_input, {"variant": variant.key, "phase": outcome.phase})
            result = outcome.validation
            assert result is not None  # run_jobs reports a dead child as a rejection
            if outcome.benchmark is not None and result.passed:
                benchmarks[variant.key] = outcome.benchmark
            if outcome.quantization is not None and result.passed:
                quantization = outcome.quantization
        validations[variant.key] = result
    for variant in variants:
        result = validations[variant.key]
        if not result.passed and variant.required:
            raise ValidationFailed(
                f"{variant.key} of {request.name}:{request.version} failed, nothing was registered: "
                + "; ".join(result.failures),
                {"variant": variant.key, "validation": result.model_dump(mode="json"),
                 "variants": {key: v.model_dump(mode="json") for key, v in validations.items()}},
            )
    accepted = [v for v in variants if validations[v.key].passed]

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
    log.info("%s registered %d artifacts at %s%s", tag, len(sources), version.path,
             f" ({len(variants) - len(accepted)} rejected)" if len(accepted) < len(variants) else "")
    return PackagingResult(version=version, validations=list(validations.values()), benchmarks=benchmarks)


def _log_variant(tag: str, result: VariantValidation, bench: BenchmarkResult | None) -> None:
    """The progress line of one variant (and its benchmark)."""
    if result.error is not None:
        log.warning("%s %s: REJECTED: %s", tag, result.variant, result.error)
        return
    log.info("%s validate %s: %s (max abs %.3g, mean abs %.3g%s)", tag, result.variant,
             "passed" if result.passed else "REJECTED: " + "; ".join(result.failures),
             result.max_abs_error, result.mean_abs_error,
             "" if result.top1_agreement is None else f", top-1 {result.top1_agreement:.3f}")
    if bench is not None:
        log.info("%s benchmark %s: p50 %.3f ms, p99 %.3f ms, %.0f rows/s at batch %d, %d bytes", tag, result.variant,
                 bench.latency_ms_p50, bench.latency_ms_p99, bench.throughput_rows_per_s, bench.throughput_batch,
                 bench.size_bytes)


def register(store: Path, metadata: VersionMetadata, sources: list[ArtifactSource],
             extra_files: list[Path]) -> ModelVersion:
    """The one place the pipeline writes to the registry (events recorded, signature smoke-checked)."""
    return ModelRegistry(store).register(
        metadata.name, metadata.version, sources, signature=metadata.signature, metrics=metadata.metrics,
        tags=metadata.tags, description=metadata.description, architecture=metadata.architecture,
        architecture_config=metadata.architecture_config, validation=metadata.validation,
        extra_files=extra_files, benchmarks=metadata.benchmarks, actor="packaging")


def _export_torch(model: nn.Module, request: PackagingRequest, options: PackagingOptions,
                  example: dict[str, np.ndarray], calibration_inputs: Calibration | None,
                  work: Path) -> tuple[list[_Variant], dict[str, VariantValidation]]:
    """The PyTorch exports, here (they need the live module): the raw ONNX graph every ONNX variant is built
    from in its child, the TorchScript archive and the state_dict. A TorchScript export that raises is that
    variant's rejection; the ONNX export failing fails the packaging (there is no primary without it)."""
    signature = request.signature
    tag = f"[{request.name}:{request.version}]"
    failures: dict[str, VariantValidation] = {}
    raw_onnx = export_onnx(model, signature, example, work / "raw.onnx", opset=options.opset)
    log.info("%s export onnx (opset %d) checked", tag, options.opset)
    variants = [_Variant("onnx-fp32", "onnx", "fp32", work / "model.onnx", "model.onnx", True,
                         build=OptimizeOnnx(source=raw_onnx, level=options.onnx_optimization))]
    if options.torchscript:
        ts_path = work / "model.pt"
        try:
            method = export_torchscript(model, signature, example, ts_path, options.torchscript_method)
            log.info("%s export torchscript (%s, frozen, optimised for inference)", tag, method)
        except Exception as exc:  # noqa: BLE001 - the compiler and tracer raise many types
            reason = f"torch failed exporting TorchScript: {type(exc).__name__}: " \
                     f"{(str(exc).strip().splitlines() or [''])[0]}"[:500]
            failures["torchscript-fp32"] = not_measured("torchscript-fp32", "torchscript", "fp32", 0,
                                                        options.tolerances, reason)
        variants.append(_Variant("torchscript-fp32", "torchscript", "fp32", ts_path, "model.pt", False))
    if options.state_dict and request.architecture:
        sd_path = work / "state_dict.pt"
        torch.save(model.state_dict(), sd_path)
        log.info("%s saved state_dict for architecture %s", tag, request.architecture)
        # Rebuilt from the architecture + config and the saved weights, as serving does.
        variants.append(_Variant("state_dict-fp32", "state_dict", "fp32", sd_path, "state_dict.pt", False,
                                 benchmarked=False))
    if options.fp16:
        variants.append(_Variant("onnx-fp16", "onnx", "fp16", work / "model.fp16.onnx", "model.fp16.onnx", False,
                                 build=ConvertFp16(source=raw_onnx)))
    if options.int8:
        if options.int8_static is None:
            build: BuildStep = QuantizeDynamic(source=raw_onnx)
        else:
            assert calibration_inputs is not None  # package_model checked it
            calibration = save_batches(work / "calibration.npz", calibration_batches(
                calibration_inputs, options.int8_static.calibration_batch))
            build = QuantizeStatic(source=raw_onnx, recipe=options.int8_static, calibration=calibration)
        variants.append(_Variant("onnx-int8", "onnx", "int8", work / "model.int8.onnx", "model.int8.onnx", False,
                                 build=build))
    return variants, failures


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
