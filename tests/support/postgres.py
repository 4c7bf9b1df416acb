"""A real PostgreSQL for tests: ``initdb`` in a temporary directory, ``pg_ctl`` listening on a Unix socket in
that directory only (no TCP port another process could take first), as an unprivileged user when the tests
run as root (PostgreSQL refuses to run as root); stopped at exit.

Fixtures (a plugin of tests/conftest.py): ``postgres_server`` (one cluster per run, started on first use),
``postgres_url`` (a fresh database per test, dropped afterwards), and two parametrized over SQLite and
PostgreSQL: ``state_settings`` (a StateSettings to pass) and ``state_backend`` (sets STATE_DATABASE_URL).
Tests that need PostgreSQL skip when its binaries are not installed (.ci/run installs them).
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from prediction_service.settings import StateSettings


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[-3]))
    return Path(versions[-1]).parent if versions else None


class PostgresServer:
    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="pgtest-"))  # not under pytest's 0700 tmp: the user must reach it
        self.data = self.root / "data"
        self.port = 5432  # names the socket file in the cluster's own directory: no TCP port is bound
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "nobody"
            pw = pwd.getpwnam(self.user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._names = itertools.count()
        try:
            self._init()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                  "--no-sync")

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result

    def start(self) -> None:
        options = (f"-c listen_addresses='' -p {self.port} -c unix_socket_directories={self.root} "
                   "-c fsync=off -c full_page_writes=off")  # test data: durability buys nothing
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w",
                  "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.root}&port={self.port}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"host={self.root} port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        name = f"t{os.getpid()}_{next(self._names)}"
        self._admin(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


_server: PostgresServer | None = None


def shared_server() -> PostgresServer:
    """One cluster per test run, started by the first test that needs it."""
    global _server
    if _server is None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)")
        server = PostgresServer(bin_dir)
        server.start()
        atexit.register(server.close)
        _server = server
    return _server


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    return shared_server()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for one test."""
    from prediction_service.state.database import dispose_all

    name = postgres_server.create_database()
    yield postgres_server.url(name)
    dispose_all()  # pooled connections of this process, before the database goes
    if postgres_server.running():
        postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def state_settings(request) -> StateSettings:
    """The state backend a test runs against: SQLite files (the default) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return StateSettings(database_url=None)  # explicit: whatever STATE_DATABASE_URL the shell has
    return StateSettings(database_url=request.getfixturevalue("postgres_url"))


@pytest.fixture(params=["sqlite", "postgresql"])
def state_backend(request, monkeypatch) -> str:
    """Runs a test once per backend through the environment (STATE_DATABASE_URL), as a deployment
    configures it: stores built without explicit settings, and forked or spawned children, follow it."""
    if request.param == "postgresql":
        monkeypatch.setenv("STATE_DATABASE_URL", request.getfixturevalue("postgres_url"))
    else:
        monkeypatch.delenv("STATE_DATABASE_URL", raising=False)
    return request.param
