"""CPU time per request: what each front door costs, measured so that a busy machine does not blur it.

    python bench/cpu_per_request.py [--seconds 8] [--rounds 3] [--store DIR]

Throughput on a shared 2-core machine moves with whatever else runs; the CPU seconds a server process
spends per answered request move much less (contention stretches wall time, not the work done). So, for
the same ONNX LSTM and the same load (``wrk -t1 -c32``, one row per request, one worker each), this
prints the server's user+system CPU per 2xx response (all its threads and child processes, from psutil)
for:

- the lean baseline (bench/lean_server.py: Starlette + orjson + ORT micro-batcher, no features),
- the service's REST /v1 JSON with every feature on (defaults: metrics, audit, provenance, A/B lookup),
- the same with the audit log off (AUDIT_ENABLED=false), to price the audit writer (on a fresh audit file:
  a table that already holds a million rows costs more per insert),
- the service's OIP REST JSON and binary.

Then the ratios to the lean server: "x2.0" means the door costs twice the lean server's CPU per request,
so at most half its throughput on a saturated core. Medians of --rounds rounds; rounds alternate order.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from front_door_bench import MODEL, http_targets, verify  # noqa: E402
from front_door_load import HttpTarget, run_wrk  # noqa: E402
from loadgen import median  # noqa: E402
from serve_bench import ensure_store, process  # noqa: E402

from prediction_service.registry import ModelRegistry  # noqa: E402
from tests.support.server import free_port, launch  # noqa: E402

CONNECTIONS = 32  # wrk -t1 -c32: one row per request


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its live children (uvicorn's workers, the audit thread included)."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def listening_pid(port: int) -> int:
    """The process that listens on ``port`` (serve_bench.process does not hand out its Popen)."""
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return conn.pid
    raise RuntimeError(f"nothing listens on port {port}")


def measure(target: HttpTarget, pid: int, seconds: int, work: Path) -> tuple[float, float]:
    """(CPU microseconds per 2xx response, rps) over one wrk run."""
    before = cpu_seconds(pid)
    figures = run_wrk(target, CONNECTIONS, seconds, work)
    spent = cpu_seconds(pid) - before
    answered = figures.rps * seconds
    if figures.bad:
        print(f"  !! {target.label}: {figures.bad} non-2xx / errors", flush=True)
    return spent / max(answered, 1.0) * 1e6, figures.rps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", type=Path)
    args = parser.parse_args()
    store = ensure_store(args.store)
    version = ModelRegistry(store).reader.resolve(MODEL, stage="production")
    batch = next(iter(version.signature.synthetic_inputs(1).values()))
    work = Path(tempfile.mkdtemp(prefix="cpu-per-request-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)  # last out: after the servers stopped
        lean_port = free_port()
        model = version.artifact_path(version.artifact(("onnx",), "fp32"))
        stack.enter_context(process([sys.executable, str(REPO / "bench" / "lean_server.py"), "--model",
                                            str(model), "--port", str(lean_port)],
                                           f"http://127.0.0.1:{lean_port}/predict"))
        # a fresh audit file: inserting into a table of a million rows costs more (its request-id index)
        service = launch(store, env={"AUDIT_DB_PATH": str(work / "audit.sqlite3")}, log_path=work / "service.log")
        stack.callback(service.stop)
        no_audit = launch(store, env={"AUDIT_ENABLED": "false"}, log_path=work / "service-no-audit.log")
        stack.callback(no_audit.stop)
        lean_t, v1, oip_json, oip_binary = http_targets(f"http://127.0.0.1:{lean_port}", service.url, None,
                                                        version, batch)
        v1_no_audit = HttpTarget("service v1, audit off", v1.url.replace(service.url, no_audit.url), v1.body,
                                 v1.headers, v1.decode)
        verify([lean_t, v1, oip_json, oip_binary, v1_no_audit], {})
        targets = [(lean_t, listening_pid(lean_port)), (v1, service.process.pid), (v1_no_audit, no_audit.process.pid),
                   (oip_json, service.process.pid), (oip_binary, service.process.pid)]
        results: dict[str, list[tuple[float, float]]] = {}
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}/{args.rounds} (1-min load average {psutil.getloadavg()[0]:.2f})", flush=True)
            for target, pid in targets if round_no % 2 == 0 else reversed(targets):
                run_wrk(target, CONNECTIONS, 1, work)  # warm-up
                us, rps = measure(target, pid, args.seconds, work)
                results.setdefault(target.label, []).append((us, rps))
                print(f"  {target.label:<26} {us:8.0f} us CPU / request   {rps:8.1f} req/s", flush=True)
    lean_us = median([us for us, _ in results[lean_t.label]])
    print(f"\n{'target':<28}{'CPU us/req':>12}{'x lean':>9}{'rps':>10}   (medians of {args.rounds} rounds)")
    for label, runs in results.items():
        us = median([u for u, _ in runs])
        print(f"{label:<28}{us:12.0f}{us / lean_us:9.2f}{median([r for _, r in runs]):10.1f}")


if __name__ == "__main__":
    main()
