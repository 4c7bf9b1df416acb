"""Each variant's build, validation and benchmark run in a child process, so a crash cannot take packaging down.

ONNX Runtime, its quantizer and the converters are native code: a graph they mishandle can kill the process
(an fp16 LSTM with attention pooling segfaults in ONNX Runtime's session creation, every time). The packaging
process therefore hands the variants to a child, ``python -m prediction_service.packaging.worker BATCH.json``
(worker.py), and watches it. The jobs are typed data, no pickled model: each variant's source and artifact
paths, the build step (optimise, fp16, int8, a tree model's conversion), the signature, tolerances and thread
count, and an ``.npz`` with the validation inputs and the reference outputs. The child takes the variants one
after the other, appending ``<variant> <phase>`` to a progress file before each phase, and writes each outcome
(validation report, benchmark, quantization summary, or the exception the variant raised) as JSON.

One child for the run (one interpreter start and one torch import, instead of one per variant: packaging a
CNN-LSTM with five variants took 8.3 s with a child per variant, 2.9 s so), yet a failure costs only its
variant: when the child dies, the variant it was in is rejected and a fresh child takes the ones after it.

* an outcome: the variant's validation, passed or not;
* the variant raised: ``<who> failed <doing>: <error>`` (the child goes on with the next variant);
* the child killed by a signal: ``<who> crashed (SIGSEGV) <doing>``, from the last phase it entered (e.g.
  ``ONNX Runtime crashed (SIGSEGV) creating the session``);
* one variant still running after ``timeout`` seconds: the child's process group is killed, ``timed out after
  N s <doing> (killed)``; any other exit: ``exited with status N <doing>``.

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
from collections.abc import Callable
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
_POLL_S = 0.02


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
    result: Path


class VariantBatch(BaseModel):
    """What one child process works through, in order."""

    jobs: list[VariantJob]
    progress: Path
    """The child appends ``<variant> <phase>`` before each phase of each job."""


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
    """Run one job in a child process (see :func:`run_jobs`)."""
    return run_jobs([job], timeout)[job.variant]


def run_jobs(jobs: list[VariantJob], timeout: float, work: Path | None = None,
             on_outcome: Callable[[VariantOutcome], None] | None = None) -> dict[str, VariantOutcome]:
    """Run ``jobs`` in order in child processes: one child takes them one after the other (one interpreter start,
    one torch import, for a whole packaging run), and when it dies (a signal, a hang past ``timeout`` seconds
    on one variant, any exit before the end) the variant it was in is rejected with the reason and a fresh child
    takes the remaining ones. So a crash costs exactly the variant that crashed. Never raises for what happens
    in a child. ``on_outcome`` sees each outcome as soon as it is known (the progress lines)."""
    work = Path(work) if work is not None else jobs[0].result.parent
    outcomes: dict[str, VariantOutcome] = {}
    pending = list(jobs)
    attempt = 0
    while pending:
        attempt += 1
        for job in pending:
            job.result.unlink(missing_ok=True)
        batch = VariantBatch(jobs=pending, progress=work / f"batch-{attempt}.progress")
        dead = _run_batch(batch, work / f"batch-{attempt}", timeout, outcomes, on_outcome)
        if dead is not None:
            job, outcome = dead
            outcomes[job.variant] = outcome
            if on_outcome is not None:
                on_outcome(outcome)
        pending = [job for job in pending if job.variant not in outcomes]
    return {job.variant: outcomes[job.variant] for job in jobs}


def _run_batch(batch: VariantBatch, stem: Path, timeout: float, outcomes: dict[str, VariantOutcome],
               on_outcome: Callable[[VariantOutcome], None] | None) -> tuple[VariantJob, VariantOutcome] | None:
    """One child over ``batch``; finished outcomes go into ``outcomes``. Returns the job the child died in, with
    its rejection, or None when the child finished every job."""
    batch_file, log_file = stem.with_suffix(".json"), stem.with_suffix(".log")
    batch_file.write_text(batch.model_dump_json(), encoding="utf-8")
    batch.progress.unlink(missing_ok=True)
    env = dict(os.environ)
    # The child imports this very package, wherever it was imported from (a checkout, a wheel, a test's path).
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    by_name = {job.variant: job for job in batch.jobs}
    current, since = batch.jobs[0].variant, time.monotonic()  # the child's start counts against the first job
    phase: str | None = None
    timed_out = False

    def collect() -> None:
        for job in batch.jobs:
            if job.variant in outcomes:
                continue
            outcome = _read_outcome(job.result)
            if outcome is None:
                continue
            if outcome.validation is None and outcome.invalid_input is None:  # an error the child caught
                who, doing = describe(job, outcome.phase)
                reason = f"{who} failed {doing}: {outcome.error}"
                outcome = _rejected(job, reason, outcome.phase)
            outcomes[job.variant] = outcome
            if on_outcome is not None:
                on_outcome(outcome)

    with open(log_file, "wb") as child_log:
        child = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, str(batch_file)], stdin=subprocess.DEVNULL,
                                 stdout=child_log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            while True:
                returncode = child.poll()
                last = _last_progress(batch.progress)
                if last is not None:
                    variant, phase_now = last
                    if variant != current:
                        current, since = variant, time.monotonic()
                    phase = phase_now
                collect()
                if returncode is not None:
                    break
                if time.monotonic() - since > timeout:
                    timed_out = True
                    _kill_group(child)
                    returncode = child.wait()
                    break
                time.sleep(_POLL_S)
        except BaseException:  # interrupted: take the child (and anything it started) down too
            _kill_group(child)
            child.wait()
            raise
    collect()
    if all(job.variant in outcomes for job in batch.jobs):
        return None
    job = by_name[current]
    if job.variant in outcomes:  # it died between two jobs: the next one is where it stopped
        job = next(j for j in batch.jobs if j.variant not in outcomes)
        phase = "start"
    who, doing = describe(job, phase)
    if timed_out:
        reason = f"timed out after {timeout:g} s {doing} (killed)"
    elif returncode < 0:
        reason = f"{who} crashed ({_signal_name(-returncode)}) {doing}"
    else:
        reason = f"the variant's process exited with status {returncode} {doing}"
    tail = _tail(log_file)
    log.warning("%s: %s after %.1f s%s", job.variant, reason, time.monotonic() - since,
                f"; its last output:\n{tail}" if tail else "")
    return job, _rejected(job, reason, phase)


def _rejected(job: VariantJob, reason: str, phase: str | None) -> VariantOutcome:
    return VariantOutcome(
        validation=not_measured(job.variant, job.format, job.precision, _rows(job.data), job.tolerances, reason),
        error=reason, phase=phase)


def _last_progress(progress: Path) -> tuple[str, str] | None:
    try:
        lines = progress.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        parts = line.split()
        if len(parts) == 2:  # a line being written may be partial: take the last whole one
            return parts[0], parts[1]
    return None


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
