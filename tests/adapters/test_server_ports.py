"""Triton and TorchServe cannot bind port 0: the ports they get are picked first, and a port taken between the
pick and the bind starts the server again on fresh ports (prediction_service/commands/servers/ports.py)."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from prediction_service.commands.servers import ports, torchserve, triton
from prediction_service.commands.servers.ports import free_port, port_conflict
from tests.support.torchserve_fixtures import _require_torchserve
from tests.support.triton_fixtures import start_local_triton


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process holds (listening), as a racing server would."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def hand_out_first(module, monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    """The first port ``module`` picks is ``port`` (taken already); the rest are really free."""
    given = iter([port])
    monkeypatch.setattr(module, "free_port", lambda: next(given, None) or free_port())


def test_picked_ports_are_free_and_below_the_ephemeral_range():
    start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    picked = {free_port() for _ in range(20)}
    assert all(ports.LOWEST_PICKED <= port < start for port in picked)
    for port in picked:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_both_servers_port_messages_are_recognised():
    assert port_conflict("E1207 main.cc:257] \"failed to start HTTP service: Unavailable - Socket "
                         "'127.0.0.1:60579' already in use \"")
    assert port_conflict("Caused by: io.netty.channel.unix.Errors$NativeIoException: bind(..) failed: "
                         "Address already in use")
    assert not port_conflict("Started HTTPService at 127.0.0.1:60579")


@pytest.mark.triton
def test_triton_starts_again_on_other_ports_when_its_port_was_taken(tmp_path, taken_port, monkeypatch):
    hand_out_first(triton, monkeypatch, taken_port)
    server = start_local_triton(tmp_path / "repo")
    try:
        assert server.http_port != taken_port
        assert "already in use" in server.log_tail(100_000)  # the first start met the taken port
        with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=5) as response:
            assert response.status == 200
    finally:
        server.stop()


@pytest.mark.triton
def test_triton_given_a_taken_port_fails_with_the_reason(tmp_path, taken_port):
    with pytest.raises(RuntimeError, match="already in use"):
        start_local_triton(tmp_path / "repo", http_port=taken_port)


@pytest.mark.torchserve
def test_torchserve_starts_again_on_other_ports_when_its_port_was_taken(tmp_path, taken_port, monkeypatch):
    _require_torchserve()
    hand_out_first(torchserve, monkeypatch, taken_port)
    server = torchserve.LocalTorchServe(tmp_path / "store", tmp_path / "work").start()
    try:
        assert taken_port not in vars(server.ports).values()
        assert "already in use" in (server.log_dir / "stdout.log").read_text()  # the first start met it
        assert server.ping()
    finally:
        server.stop()
