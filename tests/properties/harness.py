"""One started app per test module, driven from synchronous hypothesis tests, and the checks every
generated request must pass: a documented status, the door's error body, and metrics and the audit log
counting exactly what the client got.

The app (and, when asked, the OIP gRPC door over the same Service) runs in an event loop of its own
thread for the whole module: background work (the batcher, the audit writer's wake-ups, gRPC) keeps
running between examples, and each example submits its request to that loop.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import orjson
from hypothesis import HealthCheck, given, note, settings as hypothesis_settings
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from prediction_service.grpc.status import STATUS_CODES
from prediction_service.monitoring.audit import AuditReader, audit_db_path
from prediction_service.monitoring.metrics import UNRESOLVED
from prediction_service.settings import AuditSettings, BatchingSettings, LimitSettings, Settings, WarmupSettings
from prediction_service.state.tables import audit_predictions
from tests.support.asgi import served_app

T = TypeVar("T")

MAX_REQUEST_BYTES = 64 * 1024
"""The served app's LIMIT_MAX_REQUEST_BYTES: small, so oversized bodies stay cheap to generate."""
REQUESTS_METRIC = "prediction_requests_total"
REQUEST_ID = "x-request-id"
HEADER_LENGTH = "inference-header-content-length"
REST_STATUSES = frozenset({200, 400, 401, 403, 404, 409, 413, 415, 422, 429, 503, 504})
"""What a REST door may answer: 200, or the documented refusals (never another 5xx)."""
GRPC_ERROR_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION})
OBSERVED_WITHIN_S = 2.0
"""How long the counter and the audit log may take to show a request (both are normally immediate)."""

PROPERTY_SETTINGS = hypothesis_settings(
    max_examples=60, deadline=None, derandomize=True, database=None, print_blob=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.filter_too_much])
"""Reproducible in CI (derandomize), no example database, no per-example deadline."""


def property_settings(store: Path) -> Settings:
    """Audit every record at once (batch of 1), a small body limit, no warm-up (the models are tiny), and no
    tarpit: every example comes from the same in-process connection, and the statuses are what is checked."""
    return Settings(model_store=store, audit=AuditSettings(flush_interval_ms=5.0, batch_size=1),
                    limits=LimitSettings(max_request_bytes=MAX_REQUEST_BYTES, tarpit_errors_per_second=0),
                    batching=BatchingSettings(max_queue_delay_ms=0.5), warmup=WarmupSettings(enabled=False))


def copy_store(template: Path, into: Path) -> Path:
    store = into / "store"
    shutil.copytree(template, store, symlinks=True)
    return store


class LoopThread:
    """An event loop running in its own thread until closed."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="property-app-loop", daemon=True)
        self._thread.start()

    def submit(self, coroutine: Awaitable[T]) -> Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Awaitable[T], timeout_s: float = 60.0) -> T:
        return self.submit(coroutine).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10.0)
        self.loop.close()


@dataclass(frozen=True)
class Counted:
    """What the server had counted before a request to ``model``: its predictions by status, and the last
    audit row."""

    model: str
    by_status: dict[int, float]
    last_audit_id: int


class ServedApp:
    """The started app of a module, its HTTP client and (optionally) its gRPC door."""

    def __init__(self, loop: LoopThread, app: Any, http: httpx.AsyncClient, settings: Settings,
                 grpc_target: str | None):
        self.loop, self.app, self.http, self.settings = loop, app, http, settings
        self.grpc_target = grpc_target
        self._audit_path = audit_db_path(settings)
        self._reader: AuditReader | None = None
        self._channel: grpc.aio.Channel | None = None

    # ---- requests ----------------------------------------------------------------------------------

    def post(self, path: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.loop.run(self.http.post(path, content=content, headers=headers))

    def get(self, path: str) -> httpx.Response:
        return self.loop.run(self.http.get(path))

    def grpc_call(self, call: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
        assert self.grpc_target is not None, "this module's app has no gRPC door"

        async def run() -> T:
            if self._channel is None:
                self._channel = grpc.aio.insecure_channel(self.grpc_target)
            return await call(self._channel)

        return self.loop.run(run())

    # ---- what the server counted -------------------------------------------------------------------

    def counted(self, model: str) -> Counted:
        return Counted(model, self._by_status(model), self._last_audit_id())

    def assert_counted_once(self, before: Counted, status: int | frozenset[int], request_id: str | None) -> None:
        """Exactly one prediction of the model asked for more in ``prediction_requests_total``, under
        ``status`` (or one of the statuses a gRPC code stands for), and exactly one audit record more for it,
        with that status and, when the client was given one, its request id. (An ensemble's members are
        predictions of their own models, under their own request ids: not the client's request.)"""
        allowed = status if isinstance(status, frozenset) else frozenset({status})
        delta = self._wait(lambda: _delta(before.by_status, self._by_status(before.model)),
                           lambda d: sum(d.values()) >= 1)
        assert len(delta) == 1 and next(iter(delta.values())) == 1 and next(iter(delta)) in allowed, \
            f"{REQUESTS_METRIC} moved by {delta}; the client got {sorted(allowed)}"
        counted_status = next(iter(delta))
        audit = self.app.state.service.audit
        rows = self._wait(lambda: self._audit_rows_after(before.last_audit_id, before.model),
                          lambda r: len(r) >= 1 and audit.stats().backlog == 0)
        assert [status for _, status in rows] == [counted_status], \
            f"audit records after the request: {rows}; the client got {sorted(allowed)}"
        if request_id is not None:
            assert rows[0][0] == request_id, f"audit recorded request id {rows[0][0]}, the client got {request_id}"

    def assert_ready(self) -> None:
        ready = self.get("/health/ready")
        assert ready.status_code == 200, ready.text

    def _by_status(self, model: str) -> dict[int, float]:
        """``prediction_requests_total`` of ``model`` (or of names that resolved to no version) by status."""
        response = self.get("/metrics")
        assert response.status_code == 200, response.text
        totals: dict[int, float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == REQUESTS_METRIC and sample.labels["model"] in (model, UNRESOLVED):
                    code = int(sample.labels["status"])
                    totals[code] = totals.get(code, 0.0) + sample.value
        return totals

    def _audit(self) -> AuditReader | None:
        if self._reader is None:
            try:
                self._reader = AuditReader(self._audit_path, self.settings.state)
            except FileNotFoundError:  # nothing written yet
                return None
        return self._reader

    def _last_audit_id(self) -> int:
        reader = self._audit()
        if reader is None:
            return 0
        with reader.db.read() as conn:
            return int(conn.execute(select(audit_predictions.c.id).order_by(audit_predictions.c.id.desc())
                                    .limit(1)).scalar() or 0)

    def _audit_rows_after(self, last_id: int, model: str) -> list[tuple[str, int]]:
        reader = self._audit()
        if reader is None:
            return []
        c = audit_predictions.c
        with reader.db.read() as conn:
            return [(row.request_id, row.status) for row in conn.execute(
                select(c.request_id, c.status).where(c.id > last_id, c.model == model).order_by(c.id))]

    @staticmethod
    def _wait(read: Callable[[], T], done: Callable[[T], bool]) -> T:
        until = time.monotonic() + OBSERVED_WITHIN_S
        while True:
            value = read()
            if done(value) or time.monotonic() > until:
                return value
            time.sleep(0.005)


def _delta(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    changed = {code: after.get(code, 0.0) - before.get(code, 0.0) for code in set(before) | set(after)}
    return {code: value for code, value in changed.items() if value}


@contextmanager
def serve(store: Path, *, with_grpc: bool = False) -> Iterator[ServedApp]:
    """The app on ``store`` started in a loop thread (and the OIP gRPC door on a free port over the same
    Service when ``with_grpc``), until the block ends."""
    settings = property_settings(store)
    loop = LoopThread()
    started: Future = Future()
    stop = asyncio.Event()

    async def host() -> None:
        grpc_door = None
        try:
            async with served_app(settings, metrics_registry=CollectorRegistry()) as (app, http):
                target = None
                if with_grpc:
                    from prediction_service.grpc.server import GrpcServer

                    grpc_door = GrpcServer(app.state.service, "127.0.0.1", 0)
                    await grpc_door.start()
                    target = f"127.0.0.1:{grpc_door.port}"
                started.set_result(ServedApp(loop, app, http, settings, target))
                await stop.wait()
                if grpc_door is not None:
                    await grpc_door.stop(1.0)
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    hosting = loop.submit(host())
    served = started.result(120.0)
    try:
        yield served
    finally:
        async def close_channel() -> None:
            if served._channel is not None:
                await served._channel.close()

        loop.run(close_channel())
        loop.loop.call_soon_threadsafe(stop.set)
        hosting.result(60.0)
        loop.close()


# ---- what a door answers ---------------------------------------------------------------------------


def assert_rest_answer(response: httpx.Response, *, oip: bool) -> str:
    """A documented status, the door's error body, and a request id; returns the request id."""
    status = response.status_code
    assert status in REST_STATUSES, f"status {status}: {response.text[:500]}"
    request_id = response.headers.get(REQUEST_ID)
    assert request_id, f"no {REQUEST_ID} on a {status} answer: {response.text[:300]}"
    if status == 200:
        content = response.content
        if oip and HEADER_LENGTH in response.headers:  # binary outputs after a JSON header
            content = content[:int(response.headers[HEADER_LENGTH])]
        body = orjson.loads(content)
        assert isinstance(body, dict), body
        # the audit id is in the body too: top level on /v1 and the aliases, a response parameter on OIP
        given = body.get("parameters", {}).get("request_id") if oip else body.get("request_id")
        assert given == request_id, (given, request_id)
        return request_id
    body = orjson.loads(response.content)
    if oip:
        assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str) \
            and body["error"], body
    else:
        error = body.get("error") if isinstance(body, dict) else None
        assert isinstance(body, dict) and set(body) == {"error"} and isinstance(error, dict), body
        assert set(error) == {"code", "message", "details"}, error
        assert isinstance(error["code"], str) and error["code"], error
        assert isinstance(error["message"], str) and error["message"], error
        assert isinstance(error["details"], dict), error
    return request_id


def assert_no_tracebacks(records: list[logging.LogRecord]) -> None:
    """Bad requests are answered, never logged as failures (no error line, no traceback, per request)."""
    failures = [f"{r.name}: {r.getMessage()}" for r in records if r.levelno >= logging.ERROR or r.exc_info]
    assert not failures, failures[:5]


def http_statuses_of(code: grpc.StatusCode) -> frozenset[int]:
    """The HTTP statuses (what metrics and the audit log record) a gRPC code answers for."""
    if code == grpc.StatusCode.OK:
        return frozenset({200})
    return frozenset(int(status) for status, mapped in STATUS_CODES.items() if mapped == code)


def check_rest_case(served: ServedApp, model: str, path: str, body: bytes, headers: dict[str, str], *,
                    oip: bool) -> None:
    """Send one request for ``model``; it gets a documented answer, and is counted once, as the client saw it."""
    before = served.counted(model)
    response = served.post(path, body, headers)
    request_id = assert_rest_answer(response, oip=oip)
    served.assert_counted_once(before, response.status_code, request_id)


def run_rest_property(served: ServedApp, caplog: Any, cases: Any, *, oip: bool) -> None:
    """Every generated REST case answered as documented and counted once; then the server is still ready
    and nothing logged a traceback."""
    @PROPERTY_SETTINGS
    @given(case=cases)
    def answered_and_counted_once(case: Any) -> None:
        note(repr(case))  # the falsifying example, in full
        check_rest_case(served, case.model, case.path, case.body, case.headers, oip=oip)

    answered_and_counted_once()
    served.assert_ready()
    assert_no_tracebacks(caplog.get_records("call"))
