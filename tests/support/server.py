"""Start the real server (``python -m prediction_service serve``) in a subprocess on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from prediction_service.commands.servers.ports import free_port  # noqa: F401  (servers without port 0)

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    store: Path
    log_path: Path
    grpc_port: int | None = None
    """The gRPC door's port when launched with ``grpc=True``."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM the server (what a process manager does) and return its exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Stop the server and its workers whatever state they are in."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def launch(store: Path, env: dict[str, str] | None = None, workers: int = 1, log_path: Path | None = None,
           ready_timeout: float = 60.0, log_level: str = "warning", grpc: bool = False) -> ServerProcess:
    """Serve ``store`` as it is on a port the server picks (``--port 0``: no race with another process
    taking a port chosen beforehand), with ``grpc`` its gRPC door on one it picks too (``--grpc-port-file``);
    returns once /health/ready says ready."""
    run_dir = Path(tempfile.mkdtemp(prefix="server-", dir=store.parent))
    port_file = run_dir / "port"
    log_path = log_path or run_dir / "server.log"
    full_env = {**os.environ, "MODEL_STORE": str(store), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                **(env or {})}
    if "PROMETHEUS_MULTIPROC_DIR" not in (env or {}):
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # serve makes its own for several workers
    if "SERVER_GRPC_PORT" not in (env or {}):
        full_env["SERVER_GRPC_PORT"] = "0"  # no gRPC door unless a test asks (8001 would be shared by all)
    grpc_port_file = run_dir / "grpc-port"
    grpc_args = ["--grpc-port-file", str(grpc_port_file)] if grpc else []
    with open(log_path, "wb") as log_file:
        # Own session: stop() can signal uvicorn's worker processes too.
        process = subprocess.Popen(
            [sys.executable, "-m", "prediction_service", "serve", "--store", str(store), "--port", "0",
             "--port-file", str(port_file), "--workers", str(workers), "--log-level", log_level, *grpc_args],
            cwd=REPO, env=full_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + ready_timeout
    port = _bound_port(process, port_file, log_path, deadline)  # written after the gRPC port's file
    server = ServerProcess(process, port, store, log_path,
                           grpc_port=int(grpc_port_file.read_text()) if grpc else None)
    last_answer = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()[-3000:]}")
        try:
            response = httpx.get(f"{server.url}/health/ready", timeout=1.0)
            if response.status_code == 200:
                return server
            last_answer = f"{response.status_code} {response.text[:1000]}"
        except httpx.HTTPError as exc:
            last_answer = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server on port {port} not ready after {ready_timeout} s (last /health/ready: "
                       f"{last_answer}):\n{server.log()[-3000:]}")


def _bound_port(process: subprocess.Popen, port_file: Path, log_path: Path, deadline: float) -> int:
    """The port the server reports in ``port_file`` once it has bound it."""
    while time.monotonic() < deadline:
        if port_file.exists():
            return int(port_file.read_text())
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{_tail(log_path)}")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)
    raise RuntimeError(f"server did not bind a port in time:\n{_tail(log_path)}")


def _tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-3000:]


def start_server(store_template: Path, work: Path, env: dict[str, str] | None = None, workers: int = 1,
                 ready_timeout: float = 60.0, grpc: bool = False) -> ServerProcess:
    """Copy the registry into ``work`` and serve the copy (tests that change the store keep the template)."""
    store = work / "store"
    shutil.copytree(store_template, store, symlinks=True)
    return launch(store, env={"STAGE_POLL_INTERVAL_SECONDS": "0.5", **(env or {})}, workers=workers,
                  log_path=work / "server.log", ready_timeout=ready_timeout, log_level="info", grpc=grpc)


@contextmanager
def running_server(store: Path, env: dict[str, str] | None = None, workers: int = 1, log_path: Path | None = None,
                   ready_timeout: float = 60.0) -> Iterator[tuple[str, subprocess.Popen]]:
    server = launch(store, env=env, workers=workers, log_path=log_path, ready_timeout=ready_timeout)
    try:
        yield server.url, server.process
    finally:
        server.stop()
