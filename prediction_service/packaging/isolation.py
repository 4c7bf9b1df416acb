"""Each variant's build, validation and benchmark run in a child process, so a crash cannot take packaging down.

ONNX Runtime, its quantizer and the converters are native code: a graph they mishandle can kill the process
(an fp16 LSTM with attention pooling segfaults in ONNX Runtime's session creation, every time). The packaging
process therefore hands each variant to a fresh ``python -m prediction_service.packaging.worker JOB.json``
(worker.py) and waits for it. The job is typed data, no pickled model: the variant's source and artifact
paths, the build step (optimise, fp16, int8, a tree model's conversion), the signature, tolerances and
thread count, and an ``.npz`` with the validation inputs and the reference outputs. The child writes the
phase it enters to a progress file before each step, and its outcome (validation report, benchmark,
quantization summary, or the exception it raised) as JSON.

What the parent makes of the child's end:

* exit 0 with an outcome: the variant's validation, passed or not;
* killed by a signal: ``<who> crashed (SIGSEGV) <doing>``, from the last phase the child entered (e.g.
  ``ONNX Runtime crashed (SIGSEGV) creating the session``);
* still running after ``timeout`` seconds: its process group is killed, ``timed out after N s <doing>``;
* an exception: ``<who> failed <doing>: <error>``; any other exit: ``exited with status N <doing>``.

Each becomes a rejected variant with that reason (validation.not_measured); the pipeline decides what a
rejection means (the primary variant failing stops the packaging, any other is left out).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..artifacts import ArtifactFormat, Precision
from ..signature import ModelSignature
from .benchmark import BenchmarkResult
from .quantize import QuantizationSummary, StaticInt8Options
from .trees import TreeSource
from .validation import Tolerances, VariantValidation, not_measured

log = logging.getLogger(__name__)

WORKER_MODULE = "prediction_service.packaging.worker"
FAULT_ENV = "PREDICTION_SERVICE_PACKAGING_FAULT"
"""Test hook read by the worker (worker.py): ``<variant>:<phase>:<action>`` entries, comma-separated, make the
child of that variant crash (segv, abort), hang, raise or exit at the start of that phase."""
PHASES = ("start", "build", "open", "validate", "benchmark")
_LOG_TAIL_LINES = 12


class OptimizeOnnx(BaseModel):
    """ONNX Runtime's graph optimisation of the exported graph (``level`` as PackagingOptions.onnx_optimization)."""

    kind: Literal["optimize_onnx"] = "optimize_onnx"
    source: Path
    level: Literal["disabled", "basic", "extended"] = "basic"


class ConvertFp16(BaseModel):
    kind: Literal["fp16"] = "fp16"
    source: Path


class QuantizeDynamic(BaseModel):
    kind: Literal["int8_dynamic"] = "int8_dynamic"
    source: Path


class QuantizeStatic(BaseModel):
    kind: Literal["int8_static"] = "int8_static"
    source: Path
    recipe: StaticInt8Options
    calibration: Path
    """``.npz`` of calibration batches (``b<index>__<input>`` arrays), run in index order."""


class ConvertTree(BaseModel):
    kind: Literal["tree_to_onnx"] = "tree_to_onnx"
    source: TreeSource


BuildStep = Annotated[Union[OptimizeOnnx, ConvertFp16, QuantizeDynamic, QuantizeStatic, ConvertTree],
                      Field(discriminator="kind")]


class VariantJob(BaseModel):
    """Everything one child needs, as data."""

    model_config = ConfigDict(extra="forbid")

    variant: str
    format: ArtifactFormat
    precision: Precision
    artifact: Path
    """Where the variant's file is (or, with ``build``, is written)."""
    build: BuildStep | None = None
    """How the child makes the artifact; None: the parent already wrote it (TorchScript, state_dict)."""
    signature: ModelSignature
    architecture: str | None = None
    architecture_config: dict[str, Any] = Field(default_factory=dict)
    threads: int = 1
    tolerances: Tolerances = Field(default_factory=Tolerances)
    benchmark_runs: int = 0
    """Batch-1 benchmark runs once validation passed; 0 = no benchmark."""
    data: Path
    """``.npz``: ``in__<input>`` validation inputs and ``ref__<output>`` reference outputs."""
    progress: Path
    result: Path


class VariantOutcome(BaseModel):
    """What the child reports (also what the parent makes of a child that died)."""

    validation: VariantValidation | None = None
    benchmark: BenchmarkResult | None = None
    quantization: QuantizationSummary | None = None
    error: str | None = None
    """The exception the child caught, ``Type: message``."""
    phase: str | None = None
    """The phase the child was in when it stopped."""
    invalid_input: str | None = None
    """The child refused the job's options (InvalidInput, e.g. a static int8 recipe that selects no node): the
    caller's mistake, raised again by the parent instead of rejecting the variant."""


def save_validation_data(path: Path, inputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> Path:
    np.savez(path, **{f"in__{k}": v for k, v in inputs.items()}, **{f"ref__{k}": v for k, v in reference.items()})
    return path


def load_validation_data(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as stored:
        inputs = {k[4:]: stored[k] for k in stored.files if k.startswith("in__")}
        reference = {k[5:]: stored[k] for k in stored.files if k.startswith("ref__")}
    return inputs, reference


def save_batches(path: Path, batches: list[dict[str, np.ndarray]]) -> Path:
    np.savez(path, **{f"b{index}__{name}": array for index, batch in enumerate(batches)
                      for name, array in batch.items()})
    return path


def load_batches(path: Path) -> list[dict[str, np.ndarray]]:
    batches: dict[int, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as stored:
        for key in stored.files:
            index, name = key.split("__", 1)
            batches.setdefault(int(index[1:]), {})[name] = stored[key]
    return [batches[index] for index in sorted(batches)]


def describe(job: VariantJob, phase: str | None) -> tuple[str, str]:
    """(who, doing) of a phase, for a reason such as ``ONNX Runtime crashed (SIGSEGV) creating the session``."""
    runtime = "ONNX Runtime" if job.format == "onnx" else "torch"
    if phase == "build" and job.build is not None:
        return {
            "optimize_onnx": ("ONNX Runtime", "optimising the graph"),
            "fp16": ("the fp16 converter", "converting the graph to fp16"),
            "int8_dynamic": ("ONNX Runtime's quantizer", "quantizing the graph to int8"),
            "int8_static": ("ONNX Runtime's quantizer", "calibrating and quantizing the graph to int8"),
            "tree_to_onnx": ("the tree converter", "converting the model to ONNX"),
        }[job.build.kind]
    if phase == "open":
        return runtime, {"onnx": "creating the session", "torchscript": "loading the TorchScript archive",
                         "state_dict": "rebuilding the model from its state_dict"}[job.format]
    if phase == "validate":
        return runtime, "running the validation set"
    if phase == "benchmark":
        return runtime, "benchmarking"
    return "the variant's process", "starting"


def run_job(job: VariantJob, timeout: float) -> VariantOutcome:
    """Run ``job`` in a child process; never raises for what happens inside the child."""
    job_file = job.result.with_name(job.result.stem + ".job.json")
    log_file = job.result.with_name(job.result.stem + ".log")
    job_file.write_text(job.model_dump_json(), encoding="utf-8")
    for stale in (job.result, job.progress):
        stale.unlink(missing_ok=True)
    env = dict(os.environ)
    # The child imports this very package, wherever it was imported from (a checkout, a wheel, a test's path).
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    started = time.monotonic()
    timed_out = False
    with open(log_file, "wb") as child_log:
        child = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, str(job_file)], stdin=subprocess.DEVNULL,
                                 stdout=child_log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            returncode = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(child)
            returncode = child.wait()
        except BaseException:  # interrupted: take the child (and anything it started) down too
            _kill_group(child)
            child.wait()
            raise
    elapsed = time.monotonic() - started
    phase = _last_phase(job.progress)
    outcome = _read_outcome(job.result)
    if not timed_out and returncode == 0 and outcome is not None and outcome.validation is not None:
        return outcome
    if not timed_out and outcome is not None and outcome.invalid_input is not None:
        return outcome
    who, doing = describe(job, phase)
    if timed_out:
        reason = f"timed out after {timeout:g} s {doing} (killed)"
    elif returncode < 0:
        reason = f"{who} crashed ({_signal_name(-returncode)}) {doing}"
    elif outcome is not None and outcome.error:
        reason = f"{who} failed {doing}: {outcome.error}"
    else:
        reason = f"the variant's process exited with status {returncode} {doing}"
    tail = _tail(log_file)
    log.warning("%s: %s after %.1f s%s", job.variant, reason, elapsed,
                f"; its last output:\n{tail}" if tail else "")
    rows = _rows(job.data)
    return VariantOutcome(
        validation=not_measured(job.variant, job.format, job.precision, rows, job.tolerances, reason),
        error=reason, phase=phase)


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)  # the child leads its own session (start_new_session)
    except (ProcessLookupError, PermissionError):
        child.kill()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_phase(progress: Path) -> str | None:
    try:
        lines = progress.read_text(encoding="utf-8").split()
    except OSError:
        return None
    return lines[-1] if lines else None


def _read_outcome(result: Path) -> VariantOutcome | None:
    try:
        return VariantOutcome.model_validate_json(result.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _tail(log_file: Path) -> str:
    try:
        lines = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-_LOG_TAIL_LINES:])


def _rows(data: Path) -> int:
    try:
        inputs, _ = load_validation_data(data)
    except (OSError, ValueError):
        return 0
    return len(next(iter(inputs.values()))) if inputs else 0
