"""The child process of packaging variants: ``python -m prediction_service.packaging.worker BATCH.json``.

isolation.run_jobs starts it with a VariantBatch (isolation.py) and watches it. For each job in order it builds
the variant's artifact (optimise, fp16, int8, tree conversion), opens it with the runtime serving will use
(runtimes.open_artifact), validates it against the reference outputs and benchmarks it once it passed, writing
``<variant> <phase>`` to the batch's progress file before each phase, so the parent can tell which variant, where,
a crash or a hang hit (and start a fresh child for the variants after it). Each outcome, or the exception the
variant raised, goes to the job's result file as JSON; an exception rejects that variant only.

Test hook (a real code path, for the isolation tests and for drills): ``PREDICTION_SERVICE_PACKAGING_FAULT`` in
the environment, ``<variant>:<phase>:<action>`` entries separated by commas (``onnx-fp16:open:segv``), makes
this child, when it is that variant's, act at the start of that phase: ``segv`` (kills itself with SIGSEGV),
``abort`` (SIGABRT), ``hang`` (sleeps until killed), ``error`` (raises RuntimeError), ``exit`` (exit status 3).
Phases: start, build, open, validate, benchmark.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from ..errors import InvalidInput, PredictionServiceError
from ..execution.runtimes import open_artifact
from .benchmark import benchmark
from .isolation import FAULT_ENV, VariantBatch, VariantJob, VariantOutcome, load_batches, load_validation_data
from .quantize import QuantizationSummary
from .validation import validate_runner


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m prediction_service.packaging.worker BATCH.json", file=sys.stderr)
        return 2
    batch = VariantBatch.model_validate_json(Path(argv[0]).read_text(encoding="utf-8"))
    for job in batch.jobs:
        _run(job, batch.progress)
    return 0


def _run(job: VariantJob, progress: Path) -> None:
    """One variant: build, open, validate, benchmark; its outcome (or the exception it raised) to job.result."""
    outcome = VariantOutcome()
    phase = "start"

    def enter(name: str) -> None:
        nonlocal phase
        phase = name
        _record_phase(progress, job.variant, name)
        _injected_fault(job.variant, name)

    try:
        enter("start")
        inputs, reference = load_validation_data(job.data)
        if job.build is not None:
            enter("build")
            outcome.quantization = _build(job)
        enter("open")
        runtime = open_artifact(job.artifact, job.format, job.signature, job.threads,
                                architecture=job.architecture, architecture_config=job.architecture_config)
        enter("validate")
        outcome.validation = validate_runner(runtime, inputs, reference, job.signature, job.variant, job.format,
                                             job.precision, job.tolerances)
        if outcome.validation.passed and job.benchmark_runs:
            enter("benchmark")
            outcome.benchmark = benchmark(runtime, inputs, job.artifact.stat().st_size, runs=job.benchmark_runs,
                                          threads=job.threads)
        runtime.close()
    except Exception as exc:  # noqa: BLE001 - any failure is this variant's rejection, reported to the parent
        print(f"[worker] {job.variant} failed in phase {phase}:", file=sys.stderr, flush=True)
        traceback.print_exc()
        message = exc.message if isinstance(exc, PredictionServiceError) else str(exc)
        first_line = (message.strip().splitlines() or [""])[0]
        outcome = VariantOutcome(error=f"{type(exc).__name__}: {first_line}"[:500], phase=phase,
                                 quantization=outcome.quantization,
                                 invalid_input=message if isinstance(exc, InvalidInput) else None)
    outcome.phase = phase
    _write_result(job.result, outcome)


def _build(job: VariantJob) -> QuantizationSummary | None:
    step = job.build
    target = job.artifact
    if step.kind == "optimize_onnx":
        from .export import optimize_onnx

        if step.level == "disabled":
            shutil.copyfile(step.source, target)
        else:
            optimize_onnx(step.source, target, step.level)
    elif step.kind == "fp16":
        from .variants import make_fp16

        make_fp16(step.source, target)
    elif step.kind == "int8_dynamic":
        from .variants import make_int8

        make_int8(step.source, target)
    elif step.kind == "int8_static":
        from .quantize import make_int8_static

        return make_int8_static(step.source, target, step.recipe, load_batches(step.calibration))
    elif step.kind == "tree_to_onnx":
        from .export import check_onnx
        from .trees import convert_to_onnx, load_tree_model

        convert_to_onnx(load_tree_model(step.source), job.signature, target)
        check_onnx(target, job.signature)
    return None


def _record_phase(progress: Path, variant: str, phase: str) -> None:
    # Unbuffered: the line is the kernel's once write() returns, whatever becomes of this process next.
    fd = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{variant} {phase}\n".encode())
    finally:
        os.close(fd)


def _write_result(result: Path, outcome: VariantOutcome) -> None:
    tmp = result.with_name(result.name + ".tmp")
    tmp.write_text(outcome.model_dump_json(), encoding="utf-8")
    os.replace(tmp, result)


def _injected_fault(variant: str, phase: str) -> None:
    for entry in filter(None, (e.strip() for e in os.environ.get(FAULT_ENV, "").split(","))):
        parts = entry.split(":")
        if len(parts) != 3 or parts[0] != variant or parts[1] != phase:
            continue
        action = parts[2]
        print(f"[worker] injected fault {entry!r} ({FAULT_ENV})", file=sys.stderr, flush=True)
        if action == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif action == "abort":
            os.abort()
        elif action == "hang":
            while True:
                time.sleep(3600)
        elif action == "error":
            raise RuntimeError(f"injected fault in phase {phase}")
        elif action == "exit":
            os._exit(3)


if __name__ == "__main__":
    sys.exit(main())
