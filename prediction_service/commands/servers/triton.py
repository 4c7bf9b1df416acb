"""A local Triton Inference Server process: the ``tritonserver`` binary shipped in the nvidia-pytriton wheel.

Used by tests, benchmarks and ``python -m prediction_service triton-local``. It runs with explicit
model control (the adapter loads and unloads models), listens on 127.0.0.1 only, and logs to a file.

The wheel's python backend needs its stub binary next to it; the venv is never modified: the
backends directory is copied once into a cache directory we own and the stub for this Python is
added there. The stub runs model.py with this interpreter's version and finds numpy / onnxruntime
through PYTHONPATH (this interpreter's site-packages).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .ports import free_port, start_on_free_ports

log = logging.getLogger(__name__)

DEFAULT_BACKEND_CACHE = Path("~/.cache/prediction-service/triton-backends").expanduser()
STUB_NAME = "triton_python_backend_stub"


class TritonNotInstalled(RuntimeError):
    """The tritonserver binary (nvidia-pytriton wheel) is not available."""


@dataclass(frozen=True)
class TritonDistribution:
    """Where the wheel keeps the server binary, its shared libraries, backends and python stubs."""

    binary: Path
    libs: Path
    backends: Path
    stub: Path

    @classmethod
    def find(cls) -> "TritonDistribution":
        spec = importlib.util.find_spec("pytriton")  # locate the wheel without importing it
        if spec is None or not spec.origin:
            raise TritonNotInstalled("nvidia-pytriton is not installed (pip install nvidia-pytriton)")
        root = Path(spec.origin).parent / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        dist = cls(
            binary=root / "bin" / "tritonserver",
            libs=root.parent.parent / "nvidia_pytriton.libs",
            backends=root / "backends",
            stub=root / "python_backend_stubs" / version / STUB_NAME,
        )
        for path in (dist.binary, dist.backends / "python", dist.stub):
            if not path.exists():
                raise TritonNotInstalled(f"the nvidia-pytriton wheel lacks {path}")
        return dist

    def prepared_backends(self, cache_dir: Path = DEFAULT_BACKEND_CACHE) -> Path:
        """A backends directory with the python backend and this Python's stub; built once, then reused."""
        key = f"py{sys.version_info.major}{sys.version_info.minor}-{int(self.stub.stat().st_mtime)}"
        target = cache_dir / key
        if (target / "python" / STUB_NAME).is_file():
            return target
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
        try:
            shutil.copytree(self.backends, staging / "backends", ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy2(self.stub, staging / "backends" / "python" / STUB_NAME)
            try:
                (staging / "backends").rename(target)
            except OSError:
                if not (target / "python" / STUB_NAME).is_file():  # not a concurrent winner: a real error
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("prepared Triton backends in %s", target)
        return target


@dataclass(frozen=True)
class GrpcTls:
    """Serve gRPC over TLS with this certificate chain and key (PEM). Triton's HTTP endpoint has no TLS."""

    certificate: Path
    private_key: Path


class LocalTriton:
    """Starts and stops one tritonserver process. ``with LocalTriton(repo) as triton: ...``"""

    def __init__(
        self,
        model_repository: Path,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_path: Path | None = None,
        backend_cache: Path = DEFAULT_BACKEND_CACHE,
        startup_timeout: float = 60.0,
        exit_timeout: int = 5,
        grpc_tls: GrpcTls | None = None,
    ):
        self.model_repository = Path(model_repository).resolve()
        # Ports picked here (none given) may be picked again until the first start: a restart keeps them.
        self._may_repick = not (http_port or grpc_port or metrics_port)
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.log_path = Path(log_path) if log_path else self.model_repository.parent / "tritonserver.log"
        self.startup_timeout = startup_timeout
        self.exit_timeout = exit_timeout
        self.grpc_tls = grpc_tls
        self._distribution = TritonDistribution.find()
        self._backend_cache = backend_cache
        self._process: subprocess.Popen[bytes] | None = None
        # A unique shared-memory prefix: several servers on one host must not share python-backend regions.
        self._shm_prefix = f"psvc_{os.getpid()}_{uuid.uuid4().hex[:8]}_"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        backends = self._distribution.prepared_backends(self._backend_cache)
        return [
            str(self._distribution.binary),
            f"--model-repository={self.model_repository}",
            "--model-control-mode=explicit",
            f"--backend-directory={backends}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            f"--exit-timeout-secs={self.exit_timeout}",
            "--strict-readiness=false",  # server readiness must not hinge on any one model
            "--log-verbose=0",
            *self._tls_flags(),
        ]

    def _tls_flags(self) -> list[str]:
        if self.grpc_tls is None:
            return []
        return ["--grpc-use-ssl=true", f"--grpc-server-cert={self.grpc_tls.certificate.resolve()}",
                f"--grpc-server-key={self.grpc_tls.private_key.resolve()}"]

    def environment(self) -> dict[str, str]:
        env = os.environ.copy()
        libs = [str(self._distribution.libs), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
        # The stub embeds the system libpython of this version; give it this environment's packages.
        paths = [*site.getsitepackages(), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def start(self) -> "LocalTriton":
        if self.running():
            return self
        self.model_repository.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        start_on_free_ports(self._spawn, self._wait_ready, self.stop, self.log_path,
                            self._repick_ports if self._may_repick else None, "tritonserver")
        self._may_repick = False
        log.info("tritonserver ready (pid %s)", self._process.pid)
        return self

    def _repick_ports(self) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()

    def _spawn(self) -> None:
        command = self.command()
        log.info("starting tritonserver (http %s, grpc %s), log %s", self.http_url, self.grpc_url, self.log_path)
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.environment(), start_new_session=True,
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with code {self._process.returncode} during startup; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"tritonserver not ready after {self.startup_timeout}s; log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (Triton drains in-flight requests for up to exit_timeout), then SIGKILL."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=self.exit_timeout + 10)
        except subprocess.TimeoutExpired:
            log.warning("tritonserver did not exit after SIGTERM; killing it")
            self._kill_group(process)
            self._remove_shared_memory()
        log.info("tritonserver stopped")

    def kill(self) -> None:
        """Abrupt death (SIGKILL to the server and its python-backend stubs), as a crash would be."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            self._kill_group(process)
        self._remove_shared_memory()

    def _remove_shared_memory(self) -> None:
        """A killed server cannot unlink its python-backend regions; they carry our unique prefix."""
        for region in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
            region.unlink(missing_ok=True)

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # start_new_session made the server a group leader
        except ProcessLookupError:
            pass
        process.wait(timeout=10)

    def wait(self) -> int:
        """Block until the server exits (foreground use)."""
        assert self._process is not None
        return self._process.wait()

    def log_tail(self, max_bytes: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[-max_bytes:].decode("utf-8", errors="replace")

    def __enter__(self) -> "LocalTriton":
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
