"""Run a real TorchServe as a child process on loopback: for development and for the tests.

``LocalTorchServe`` writes a config.properties (127.0.0.1 addresses on free ports, one model store,
model control API on, workflows and remote URLs off, no config snapshots), starts
``torchserve --start --foreground`` in its own process group, waits for ``/ping``, and stops it with
SIGTERM then SIGKILL. Everything it writes (config, logs, key_file.json, pid file) stays in ``work_dir``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ...adapters.torchserve_client import read_key_file
from .ports import free_port, start_on_free_ports

logger = logging.getLogger(__name__)

KEY_FILE = "key_file.json"


def missing_requirements() -> str | None:
    """Why a local TorchServe cannot start here, or None when java and torchserve are available."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "java (a Java 17 runtime, e.g. apt-get install openjdk-17-jre-headless) is not on PATH"
    if _torchserve_executable() is None:
        return "the torchserve package is not installed (pip install torchserve torch-model-archiver)"
    return None


def _torchserve_executable() -> str | None:
    beside_python = Path(sys.executable).with_name("torchserve")
    return str(beside_python) if beside_python.is_file() else shutil.which("torchserve")


def _pick() -> int:
    return free_port()  # the module's picker, looked up at each call


@dataclass
class TorchServePorts:
    inference: int = field(default_factory=_pick)
    management: int = field(default_factory=_pick)
    metrics: int = field(default_factory=_pick)
    grpc_inference: int = field(default_factory=_pick)
    grpc_management: int = field(default_factory=_pick)


class LocalTorchServe:
    """A TorchServe child process. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(
        self,
        model_store: Path,
        work_dir: Path | None = None,
        *,
        ports: TorchServePorts | None = None,
        token_auth: bool = True,
        job_queue_size: int = 1000,
        startup_timeout_s: float = 120.0,
    ):
        self.model_store = Path(model_store).resolve()
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="torchserve-")).resolve()
        # Ports picked here (none given) may be picked again until the first start: a restart keeps them.
        self._may_repick = ports is None
        self.ports = ports or TorchServePorts()
        self.token_auth = token_auth
        self.job_queue_size = job_queue_size
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen | None = None
        self._socket_dir: Path | None = None

    # --- addresses -------------------------------------------------------------------------
    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}"

    @property
    def key_file(self) -> Path:
        """TorchServe writes its keys into its working directory."""
        return self.work_dir / KEY_FILE

    @property
    def log_dir(self) -> Path:
        return self.work_dir / "logs"

    @property
    def config_path(self) -> Path:
        return self.work_dir / "config.properties"

    def keys(self) -> dict[str, str]:
        """``{"inference": ..., "management": ...}`` from the key file ({} with token auth off)."""
        if not self.token_auth:
            return {}
        return read_key_file(self.key_file)

    # --- lifecycle -------------------------------------------------------------------------
    def write_config(self) -> Path:
        self.model_store.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"inference_address={self.inference_url}",
            f"management_address={self.management_url}",
            f"metrics_address={self.metrics_url}",
            "grpc_inference_address=127.0.0.1",
            "grpc_management_address=127.0.0.1",
            f"grpc_inference_port={self.ports.grpc_inference}",
            f"grpc_management_port={self.ports.grpc_management}",
            f"model_store={self.model_store}",
            # Registration goes through the management API, for .mar files this service built itself.
            "enable_model_api=true",
            # Only archives already in the model store; never a remote URL (ShellTorch).
            f"allowed_urls=file://{self.model_store}/.*",
            "use_env_allowed_urls=false",
            "install_py_dep_per_model=false",
            "disable_system_metrics=true",
            f"job_queue_size={self.job_queue_size}",
            "default_workers_per_model=1",
        ]
        if not self.token_auth:
            lines.append("disable_token_authorization=true")
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return self.config_path

    def start(self) -> "LocalTorchServe":
        problem = missing_requirements()
        if problem:
            raise RuntimeError(f"cannot start TorchServe: {problem}")
        if self.running:
            return self
        start_on_free_ports(self._spawn, self.wait_ready, self.stop, self._stdout_path,
                            self._repick_ports if self._may_repick else None, "TorchServe")
        self._may_repick = False
        if self.token_auth:
            logger.info("TorchServe token keys are in %s", self.key_file)
        return self

    def _repick_ports(self) -> None:
        self.ports = TorchServePorts()

    def _spawn(self) -> None:
        self.write_config()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.key_file.unlink(missing_ok=True)
        env = dict(os.environ)
        # The torchserve launcher keeps a pid file in the temp dir: one per instance, not one per host.
        env.update(TMPDIR=str(self.work_dir), LOG_LOCATION=str(self.log_dir), METRICS_LOCATION=str(self.log_dir))
        # The frontend talks to its Python workers over Unix sockets named .ts.sock.<9000+n> and unpacks
        # archives into models/, both in java.io.tmpdir, which the launcher takes from TEMP: a short directory
        # of this instance's own (socket paths are limited to 107 bytes), so servers on one host share neither.
        self._socket_dir = self._socket_dir or Path(tempfile.mkdtemp(prefix="ts-sock-"))
        env["TEMP"] = str(self._socket_dir)
        command = [
            _torchserve_executable(), "--start", "--foreground", "--ncs",
            "--ts-config", str(self.config_path), "--model-store", str(self.model_store),
        ]
        if not self.token_auth:
            command.append("--disable-token-auth")
        logger.info("starting TorchServe: inference %s, management %s, logs %s",
                    self.inference_url, self.management_url, self.log_dir)
        stdout = open(self._stdout_path, "ab")
        try:
            self._process = subprocess.Popen(
                command, cwd=self.work_dir, env=env, stdout=stdout, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches java and the workers
            )
        finally:
            stdout.close()

    @property
    def _stdout_path(self) -> Path:
        return self.log_dir / "stdout.log"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"TorchServe exited with {self._process.returncode}; see {self.log_dir}")
            if self.ping():
                return
            time.sleep(0.25)
        raise TimeoutError(f"TorchServe not healthy after {self.startup_timeout_s}s; see {self.log_dir}")

    def ping(self) -> bool:
        """Both APIs answer: the inference API says Healthy and the management API lists models. TorchServe
        opens them one after the other; a caller that registers a model right after start needs the second."""
        inference, management = self._auth_header("inference"), self._auth_header("management")
        if inference is None or management is None:
            return False
        try:
            request = urllib.request.Request(f"{self.inference_url}/ping", headers=inference)
            with urllib.request.urlopen(request, timeout=1.0) as response:
                if json.load(response).get("status") != "Healthy":
                    return False
            request = urllib.request.Request(f"{self.management_url}/models", headers=management)
            with urllib.request.urlopen(request, timeout=1.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _auth_header(self, api: str) -> dict[str, str] | None:
        """The Authorization header for ``api`` ({} without token auth); None while the key file is not ready."""
        if not self.token_auth:
            return {}
        if not self.key_file.is_file():
            return None
        try:
            return {"Authorization": f"Bearer {self.keys()[api]}"}
        except (KeyError, ValueError):
            return None  # key file is being written

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group (launcher, java frontend, Python workers); SIGKILL what remains."""
        if self._process is None:
            return
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        # The launcher exits at once; java and its workers take a moment to shut down cleanly.
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._group_alive():
            logger.warning("TorchServe did not stop in %.0fs; killing it", timeout_s)
            self._signal_group(signal.SIGKILL)
        self._process.wait()
        self._process = None
        self._remove_socket_dir()

    def kill(self) -> None:
        """Crash it: SIGKILL the whole process group at once (used to test recovery)."""
        if self._process is None:
            return
        self._signal_group(signal.SIGKILL)
        self._process.wait()
        deadline = time.monotonic() + 10.0
        while self._group_alive() and time.monotonic() < deadline:  # until the ports are free again
            time.sleep(0.05)
        self._process = None
        self._remove_socket_dir()

    def _remove_socket_dir(self) -> None:
        """The worker sockets and the unpacked models: a new start makes a new one."""
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def _group_alive(self) -> bool:
        assert self._process is not None
        self._process.poll()  # reap the launcher so it does not count as alive
        try:
            os.killpg(self._process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._process is not None
        try:
            os.killpg(self._process.pid, sig)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "LocalTorchServe":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
