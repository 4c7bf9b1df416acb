"""Hot reload: stage links moved by another process while clients predict; zero failed requests."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import aiohttp
import pytest

from prediction_service.registry.writer import set_stage_link
from tests.support.server import REPO, running_server

ROW = [1.0, 2.0, 3.0, 4.0]
EXPECTED = {"1.0.0": 31.0, "2.0.0": 62.0}

# The operator's command (`registry promote`), run 20 times by one process of its own: the CLI's entry point
# in-process, so the test pays one interpreter start-up, not twenty.
FLIP_SCRIPT = """
import contextlib, io, json, sys, time
from prediction_service.cli import main
root, flips = sys.argv[1], int(sys.argv[2])
for i in range(flips):
    version = "2.0.0" if i % 2 == 0 else "1.0.0"
    before = time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        status = main(["registry", "promote", "tiny-regressor", version, "--store", root, "--actor", "flip-test"])
    assert status == 0, status
    print(json.dumps({"version": version, "at": before, "done": time.time()}), flush=True)
    time.sleep(0.1)
"""


def possible_production(records: list[dict], start: float, end: float) -> set[str]:
    """Versions that may have been production at some instant in [start, end]."""
    possible, current = set(), "1.0.0"
    for record in records:
        if record["at"] > end:
            break
        if record["done"] >= start:  # this move may have happened inside the window: both sides count
            possible |= {current, record["version"]}
        current = record["version"]
    return possible | {current}


@pytest.mark.slow
async def test_production_link_flipped_20_times_by_another_process_under_load(tiny_store):
    import json

    with running_server(tiny_store, env={"STAGE_POLL_INTERVAL_SECONDS": "0.05"}, workers=2) as (base, _):
        flipper = subprocess.Popen([sys.executable, "-c", FLIP_SCRIPT, str(tiny_store), "20"], cwd=REPO,
                                   stdout=subprocess.PIPE, text=True)
        results: list[tuple[float, float, int, dict]] = []

        async def client_loop(session: aiohttp.ClientSession):
            while flipper.poll() is None:
                sent = time.time()
                async with session.post(f"{base}/v1/models/tiny-regressor/predict", json={"instance": ROW}) as r:
                    body = await r.json()
                    results.append((sent, time.time(), r.status, body))

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(client_loop(session) for _ in range(6)))
        flipper.wait(timeout=30)
        records = [json.loads(line) for line in flipper.stdout.read().splitlines()]
        assert flipper.returncode == 0

    assert len(records) == 20
    assert len(results) > 100
    # The link moves somewhere inside each CLI run: a version may be served from the start of the run
    # that makes it production until the end of the run that replaces it.
    failures = [(status, body) for _, _, status, body in results if status != 200]
    assert failures == []
    versions = {body["version"] for *_, body in results}
    assert versions == {"1.0.0", "2.0.0"}
    for sent, received, _, body in results:
        # the output really came from the version the response names
        assert body["predictions"][0] == pytest.approx(EXPECTED[body["version"]])
        # and that version was production at some instant while the request was in flight
        assert body["version"] in possible_production(records, sent, received), (sent, received, body["version"])


async def test_reload_endpoint_switches_now_and_keeps_old_on_failure(client, tiny_store):
    predict = "/v1/models/tiny-regressor/predict"
    assert (await client.post(predict, json={"instance": ROW})).json()["version"] == "1.0.0"
    set_stage_link(tiny_store, "tiny-regressor", "production", "2.0.0")
    reloaded = await client.post("/v1/models/tiny-regressor/reload")
    assert reloaded.status_code == 200 and reloaded.json()["serving"]["production"] == "2.0.0"
    assert (await client.post(predict, json={"instance": ROW})).json()["version"] == "2.0.0"

    # a broken new target: the old version keeps serving and the failure is reported
    broken = tiny_store / "tiny-regressor" / "v1.0.0" / "model.onnx"
    broken.write_bytes(b"not onnx")
    manager = client.app.state.service.manager
    await client.app.state.service.adapter.unload(("tiny-regressor", "1.0.0"))
    set_stage_link(tiny_store, "tiny-regressor", "production", "1.0.0")
    reloaded = (await client.post("/v1/models/tiny-regressor/reload")).json()
    assert reloaded["serving"]["production"] == "2.0.0"
    assert "1.0.0" in reloaded["load_failures"]
    response = await client.post(predict, json={"instance": ROW})
    assert response.status_code == 200 and response.json()["version"] == "2.0.0"
    assert "1.0.0" in manager.failures("tiny-regressor")


async def test_watcher_picks_up_link_change_and_unloads_the_old_version(client, tiny_store):
    adapter = client.app.state.service.adapter
    assert (await client.post("/v1/models/tiny-regressor/predict", json={"instance": ROW})).json()["version"] == "1.0.0"
    set_stage_link(tiny_store, "tiny-regressor", "production", "2.0.0")
    for _ in range(100):
        await asyncio.sleep(0.05)
        loaded = {m.key.version for m in adapter.loaded() if m.key.name == "tiny-regressor"}
        if client.app.state.service.manager.routes("tiny-regressor").get("production") == "2.0.0" and "1.0.0" not in loaded:
            break
    assert client.app.state.service.manager.routes("tiny-regressor")["production"] == "2.0.0"
    assert "1.0.0" not in {m.key.version for m in adapter.loaded() if m.key.name == "tiny-regressor"}
