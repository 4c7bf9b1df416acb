"""A small, bounded load through Serve's proxy: a few threads sending predictions until stopped, every
response recorded (time sent and received, status, version, replica, output)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx

from prediction_service.deploy.ray_serve import REPLICA_HEADER


@dataclass(frozen=True)
class Answer:
    sent: float
    received: float
    status: int
    version: str | None
    replica: str | None
    output: float | None
    error: str | None = None


@dataclass
class Load:
    url: str
    path: str
    body: dict
    threads: int = 2
    pause_s: float = 0.0
    max_requests: int = 5000
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]

    def __enter__(self) -> "Load":
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(60)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def failures(self) -> list[Answer]:
        return [answer for answer in self.snapshot() if answer.status != 200]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self._stop.is_set() and len(self.answers) < self.max_requests:
                sent = time.monotonic()
                try:
                    response = http.post(self.path, json=self.body)
                    body = response.json() if response.status_code == 200 else {}
                    answer = Answer(sent, time.monotonic(), response.status_code, body.get("version"),
                                    response.headers.get(REPLICA_HEADER),
                                    body["outputs"]["y"][0][0] if body else None,
                                    None if response.status_code == 200 else response.text[:300])
                except httpx.HTTPError as exc:  # a dropped connection counts as a failed request
                    answer = Answer(sent, time.monotonic(), 0, None, None, None, repr(exc))
                with self._lock:
                    self.answers.append(answer)
                if self.pause_s:
                    time.sleep(self.pause_s)


def wait_until(condition, timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
