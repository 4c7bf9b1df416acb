"""Loopback ports for servers that cannot bind port 0 and report it (Triton, TorchServe, MLflow...).

A port found free can be taken before its server binds it. Two things keep that rare and harmless: ports are
picked below the kernel's ephemeral range, which client connections draw their local ports from, and a
server that finds its port taken at start-up is started again on fresh ports (``start_on_free_ports``).
"""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PICKED = 20_000
PORT_IN_USE_MARKERS = ("already in use",)
"""What Triton (``Socket '127.0.0.1:N' already in use``) and TorchServe's netty (``bind(..) failed: Address
already in use``) write when a port is taken."""


def _ephemeral_start() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nobody holds right now, below the ephemeral range when one there is free."""
    top = _ephemeral_start()
    if top > LOWEST_PICKED:
        for port in random.sample(range(LOWEST_PICKED, top), 50):
            if _bindable(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_conflict(log_text: str) -> bool:
    """Whether a server's start-up log says another process held one of its ports."""
    lowered = log_text.lower()
    return any(marker in lowered for marker in PORT_IN_USE_MARKERS)


def start_on_free_ports(spawn: Callable[[], None], wait_ready: Callable[[], None], stop: Callable[[], None],
                        output: Path, repick: Callable[[], None] | None, server: str, attempts: int = 3) -> None:
    """``spawn`` the server and ``wait_ready`` (RuntimeError when the process exits); on any failure ``stop``
    it. When it failed because a port was taken and ``repick`` may choose others (the ports were picked, no
    client knows them yet), pick again and start again, up to ``attempts`` times. ``output``: its log file."""
    for attempt in range(1, attempts + 1):
        offset = output.stat().st_size if output.exists() else 0
        spawn()
        try:
            wait_ready()
            return
        except RuntimeError:
            stop()
            if repick is None or attempt == attempts or not port_conflict(_read_from(output, offset)):
                raise
        except BaseException:
            stop()
            raise
        log.warning("a %s port was taken between its pick and its bind; starting again on other ports", server)
        repick()


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            return file.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
