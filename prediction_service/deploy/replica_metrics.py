"""Per-replica Prometheus exposition for Ray Serve, found by Prometheus file-based service discovery.

Serve's proxy sends ``GET /metrics`` to one replica, so a scrape through it sees that replica only. Each
replica therefore serves its own registry (the service's metric names, unchanged) on an ephemeral port
and writes one ``file_sd`` target file, ``<dir>/<replica>.json``, that Prometheus' ``file_sd_configs``
reads; the file goes away when the replica stops. The same idea as Ray's own
``prom_metrics_service_discovery.json``, for the service's registry instead of Ray's.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScrapeTarget:
    host: str
    port: int
    labels: dict[str, str]

    def file_sd(self) -> list[dict]:
        return [{"targets": [f"{self.host}:{self.port}"], "labels": self.labels}]


class ReplicaMetricsExporter:
    """Serves ``registry`` on ``host`` (an ephemeral port) and announces ``advertise:port`` in ``sd_dir``."""

    def __init__(self, registry: CollectorRegistry, sd_dir: Path, host: str, advertise: str, replica: str,
                 labels: dict[str, str]):
        self.sd_dir = sd_dir
        self._server, self._thread = start_http_server(0, addr=host, registry=registry)
        self.target = ScrapeTarget(advertise, self._server.server_port, {"replica": replica, **labels})
        self.path = sd_dir / f"{_safe(replica)}.json"
        sd_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.target.file_sd()))
        os.replace(temporary, self.path)  # Prometheus never reads a half-written file
        log.info("metrics of replica %s on %s:%d (%s)", replica, host, self.target.port, self.path)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server.shutdown()
        self._server.server_close()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
