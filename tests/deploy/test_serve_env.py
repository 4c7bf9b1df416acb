"""`python -m prediction_service serve`, started exactly as the Deployment starts it (its args, no flags), with
the environment the manifests give it, takes host, ports (HTTP and OIP gRPC) and workers from that environment.

The manifests bind 0.0.0.0 on 8080; here the host is loopback and the port a free one, so the values that
reach uvicorn are still ones only the environment could have given it (the CLI gets no --host/--port)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import tritonclient.grpc as grpcclient

from tests.deploy.manifests import config_env, one, pod_spec, render_base
from tests.support.server import REPO, free_port

ADMIN_KEY = "deploy-test-admin-key"


def manifest_command_and_env(store: Path, metrics_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The container's args and environment from the rendered base, with paths moved into tmp dirs."""
    docs = render_base()
    [container] = pod_spec(one(docs, "Deployment"))["containers"]
    env = dict(config_env(docs))
    for item in container["env"]:
        env[item["name"]] = item.get("value")
    mount = env["MODEL_STORE"]
    env["POD_NAME"] = "prediction-service-test-pod"  # the downward API
    env["API_KEYS"] = ADMIN_KEY  # what the Secret would hold
    env["STATE_DATABASE_URL"] = ""  # its Secret holds a PostgreSQL URL; one process here: SQLite (tests/state)
    env["AUDIT_DB_PATH"] = env["AUDIT_DB_PATH"].replace("$(POD_NAME)", env["POD_NAME"]).replace(mount, str(store), 1)
    env["MODEL_STORE"] = str(store)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    metrics_dir.mkdir()  # an emptyDir mount exists before the container starts
    return ["-m", "prediction_service", *container["args"]], env


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SERVER_", "PROMETHEUS_"))}
    full.update(env, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, *command], cwd=REPO, env=full, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(process: subprocess.Popen, url: str, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"not ready within {timeout} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def listening(process: subprocess.Popen) -> set[tuple[str, int]]:
    pids = {process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))}
    # gRPC binds an IPv6 socket with the IPv4-mapped address (::ffff:127.0.0.1): still that one IPv4 address.
    return {(c.laddr.ip.removeprefix("::ffff:"), c.laddr.port) for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def uvicorn_workers(process: subprocess.Popen) -> list[psutil.Process]:
    children = psutil.Process(process.pid).children()
    return [c for c in children if "multiprocessing.spawn" in " ".join(c.cmdline())]


def test_serve_takes_port_workers_and_secret_from_the_manifest_environment(tiny_store, tmp_path):
    command, env = manifest_command_and_env(tiny_store, tmp_path / "metrics")
    workers = int(env["SERVER_WORKERS"])
    assert workers > 1, "the base runs several workers: this test checks they all start"
    port, grpc_port = free_port(), free_port()
    assert env["SERVER_GRPC_PORT"], "the manifest sets the OIP gRPC port"
    env.update(SERVER_HOST="127.0.0.1", SERVER_PORT=str(port), SERVER_GRPC_PORT=str(grpc_port),
               SERVER_SHUTDOWN_DRAIN_SECONDS="0")
    log = tmp_path / "serve.log"
    process = start(command, env, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(process, url, log)
        assert listening(process) == {("127.0.0.1", port), ("127.0.0.1", grpc_port)}
        assert len(uvicorn_workers(process)) == workers
        oip = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:  # the OIP gRPC door answers on the port the manifest's SERVER_GRPC_PORT names
            assert oip.is_server_ready()
        finally:
            oip.close()
        assert httpx.get(f"{url}/v1/models").status_code == 401  # API_KEYS from the Secret is in force
        assert httpx.get(f"{url}/v1/models", headers={"X-API-Key": ADMIN_KEY}).status_code == 200
        predicted = httpx.post(f"{url}/v1/models/tiny-regressor/predict", json={"instance": [1.0, 2.0, 3.0, 4.0]})
        assert predicted.status_code == 200, predicted.text
        assert list((tmp_path / "metrics").glob("*.db")), "metrics in the PROMETHEUS_MULTIPROC_DIR the manifest mounts"
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        # The audit log was flushed on shutdown into the per-pod database the manifest names.
        with sqlite3.connect(env["AUDIT_DB_PATH"]) as db:
            rows = db.execute("SELECT model, status FROM audit_predictions").fetchall()
        assert rows == [("tiny-regressor", 200)]
    finally:
        stop(process)


def test_serve_binds_the_host_from_the_environment(tiny_store, tmp_path):
    """SERVER_HOST really reaches the bind: 127.0.0.2 (still loopback) differs from the 127.0.0.1 default."""
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
    except OSError as exc:
        pytest.skip(f"127.0.0.2 is not bindable here ({exc})")
    command, env = manifest_command_and_env(tiny_store, tmp_path / "metrics")
    port, grpc_port = free_port(), free_port()
    env.update(SERVER_HOST="127.0.0.2", SERVER_PORT=str(port), SERVER_GRPC_PORT=str(grpc_port), SERVER_WORKERS="1")
    log = tmp_path / "serve.log"
    process = start(command, env, log)
    try:
        wait_ready(process, f"http://127.0.0.2:{port}", log)
        assert listening(process) == {("127.0.0.2", port), ("127.0.0.2", grpc_port)}
    finally:
        stop(process)
