"""SIGTERM under load (real uvicorn subprocess): readiness goes false while the server still serves (drain
period), then accepted requests finish, the audit log is flushed, exit code 0."""

from __future__ import annotations

import asyncio
import time

import httpx

from prediction_service.monitoring.audit import AuditReader
from tests.ops.load import drive
from tests.support.server import start_server

ROW = [1.0, 2.0, 3.0, 4.0]


async def _probe_readiness(url: str, until: float) -> list[int]:
    """Readiness answers seen on fresh connections until the listener goes away."""
    seen = []
    async with httpx.AsyncClient(timeout=2.0, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        while time.monotonic() < until:
            try:
                seen.append((await http.get(f"{url}/health/ready")).status_code)
            except httpx.TransportError:
                return seen
            await asyncio.sleep(0.005)
    return seen


async def test_sigterm_mid_traffic_drops_no_accepted_request(slow_store_template, tmp_path):
    server = start_server(slow_store_template, tmp_path, env={
        "SERVER_SHUTDOWN_GRACE_SECONDS": "15", "SERVER_SHUTDOWN_DRAIN_SECONDS": "0.6", "BATCH_MAX_BATCH_SIZE": "4", "BATCH_CONCURRENT_BATCHES": "1",
        "SIMPLE_INTRA_OP_THREADS": "1", "AUDIT_FLUSH_INTERVAL_MS": "50",
        # what is tested is the drain, not deadlines: a queue of slow batches on a busy machine may pass 1 s
        "LIMIT_DEFAULT_DEADLINE_MS": "20000",
    })
    url = f"{server.url}/v1/models/slow-regressor/predict"
    try:
        traffic = asyncio.create_task(drive(url, {"instance": ROW}, concurrency=12, seconds=6.0, stop_on_refused=True))
        await asyncio.sleep(1.5)
        terminated_at = time.monotonic()
        server.process.send_signal(15)
        readiness = await _probe_readiness(server.url, terminated_at + 5.0)
        outcomes = await traffic
        exit_code = await asyncio.to_thread(server.process.wait, 30)
    finally:
        server.stop()

    log = server.log()
    assert exit_code == 0, log[-3000:]
    assert "readiness is now false" in log
    assert readiness and set(readiness) == {503}, readiness  # once SIGTERM arrived, never ready again

    responses = [o for o in outcomes if o.status is not None]
    statuses = {o.status for o in responses}
    assert statuses <= {200, 503}, statuses
    in_flight_at_sigterm = [o for o in responses if o.sent_at < terminated_at < o.sent_at + o.latency_s]
    assert in_flight_at_sigterm and all(o.status == 200 for o in in_flight_at_sigterm)
    # during the drain period new predictions are still served (readiness already says go away)
    assert [o for o in responses if o.status == 200 and terminated_at + 0.1 < o.sent_at < terminated_at + 0.5]

    audited = AuditReader(server.store / ".state" / "audit.sqlite3").request_ids()
    ok = [o.request_id for o in responses if o.status == 200]
    assert len(ok) > 20 and set(ok) <= audited  # flushed on shutdown: every answered prediction is there
    # every prediction the server processed got its response back (else it dropped an accepted request)
    answered = {o.request_id for o in responses}
    assert audited <= answered, len(audited - answered)
    unanswered = [o for o in outcomes if o.status is None]
    assert all(o.sent_at >= terminated_at for o in unanswered)
    print(f"{len(ok)} ok, {len(in_flight_at_sigterm)} in flight at SIGTERM, {len(unanswered)} refused after; "
          f"readiness after SIGTERM: {readiness[:5]}")
