"""Real servers on one PostgreSQL: two processes with separate local state directories share experiments,
outcomes and the audit log; the database restarting under load fails no prediction, loses no audit
record, and turns outcomes posted meanwhile into 503s that wrote nothing."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from prediction_service.monitoring.audit import AuditReader
from prediction_service.settings import StateSettings
from tests.support.models import CLASSIFIER_SIGNATURE, TinyClassifier, register_tiny
from tests.support.server import launch

REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny-classifier"
SPEC = {"model_name": MODEL, "champion_version": "1.0.0", "challenger_version": "2.0.0", "traffic_split": 0.5,
        "task": "classification"}


@pytest.fixture(scope="module")
def ab_store_template(tiny_store_template, tmp_path_factory) -> Path:
    """The tiny registry plus a challenger for tiny-classifier (registered with the SQLite defaults)."""
    root = tmp_path_factory.mktemp("ab") / "store"
    shutil.copytree(tiny_store_template, root, symlinks=True)
    register_tiny(root, MODEL, "2.0.0", TinyClassifier(), CLASSIFIER_SIGNATURE, tmp_path_factory.mktemp("w"),
                  stage=None)
    return root


def serve(template: Path, work: Path, url: str):
    store = work / "store"
    shutil.copytree(template, store, symlinks=True)
    env = {"STATE_DATABASE_URL": url, "AUDIT_FLUSH_INTERVAL_MS": "20", "EXPERIMENT_ROUTE_CACHE_TTL_SECONDS": "0.2",
           "EXPERIMENT_AUTO_APPLY_INTERVAL_SECONDS": "0"}
    return launch(store, env=env, log_path=work / "server.log")


def predict(http: httpx.Client, rng: random.Random) -> httpx.Response:
    return http.post(f"/v1/models/{MODEL}/predict",
                     json={"instance": [rng.uniform(-1, 1) for _ in range(4)], "routing_key": f"k{rng.random()}"})


def audit_cli(*args: str, store: Path, url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prediction_service", "audit", *args, "--store", str(store)],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "STATE_DATABASE_URL": url})


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.slow
def test_two_servers_share_one_experiment_and_one_audit_log(ab_store_template, tmp_path, postgres_url):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = serve(ab_store_template, tmp_path / "a", postgres_url)
    try:
        b = serve(ab_store_template, tmp_path / "b", postgres_url)
        try:
            with httpx.Client(base_url=a.url, timeout=30) as http_a, httpx.Client(base_url=b.url, timeout=30) as http_b:
                created = http_a.post("/v1/experiments", json=SPEC)
                assert created.status_code == 201, created.text
                exp_id = created.json()["id"]
                time.sleep(0.5)  # b's route cache (0.2 s) sees the experiment a created
                rng = random.Random(7)
                served: dict[str, list[dict]] = {"a": [], "b": []}
                for i in range(30):
                    for name, mine, other in (("a", http_a, http_b), ("b", http_b, http_a)):
                        body = predict(mine, rng).json()
                        assert body["experiment_id"] == exp_id, body
                        served[name].append(body)
                        # the outcome goes to the other process: the prediction is found in the shared database
                        outcome = other.post(f"/v1/predictions/{body['request_id']}/outcome", json={"actual": i % 3})
                        assert outcome.status_code == 201, outcome.text
                analysis = http_b.get(f"/v1/experiments/{exp_id}/analyze").json()
                assert sum(arm["requests"] for arm in analysis["arms"].values()) == 60
                assert sum(arm["outcomes"] for arm in analysis["arms"].values()) == 60
        finally:
            b.stop()
    finally:
        a.stop()
    # neither process wrote local state files: everything went to PostgreSQL
    for work in ("a", "b"):
        assert not list((tmp_path / work / "store" / ".state").glob("*.sqlite3"))
    reader = AuditReader(tmp_path / "unused", StateSettings(database_url=postgres_url))
    ids = {body["request_id"] for bodies in served.values() for body in bodies}
    assert reader.request_ids() == ids
    # `audit` answers from either process's records, whichever store it is pointed at
    for name, store_of_other in (("a", tmp_path / "b" / "store"), ("b", tmp_path / "a" / "store")):
        body = served[name][0]
        out = audit_cli("--request-id", body["request_id"], store=store_of_other, url=postgres_url)
        assert out.returncode == 0 and f"version    {body['version']}" in out.stdout, out.stdout + out.stderr
    first = min((body for bodies in served.values() for body in bodies), key=lambda body: body["request_id"])
    moment = reader.request(first["request_id"]).ts
    second = datetime.fromisoformat(moment.replace("Z", "+00:00")).astimezone(timezone.utc)
    in_second = reader.which_version(MODEL, second)
    out = audit_cli("--model", MODEL, "--at", second.strftime("%Y-%m-%dT%H:%M:%SZ"), store=tmp_path / "a" / "store",
                    url=postgres_url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sum(s.requests for s in in_second.served) >= 1
    for s in in_second.served:
        assert f"version {s.version}" in out.stdout and f"{s.requests} predictions" in out.stdout


@pytest.mark.slow
def test_a_database_restart_under_load_fails_no_prediction_and_loses_no_audit_record(
        ab_store_template, tmp_path, postgres_server, postgres_url):
    server = serve(ab_store_template, tmp_path, postgres_url)
    responses: list[httpx.Response] = []
    stop = threading.Event()

    def load(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set() and len(responses) < 3000:
                responses.append(predict(http, rng))
                time.sleep(0.005)

    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            exp_id = http.post("/v1/experiments", json=SPEC).json()["id"]
            before = predict(http, random.Random(1)).json()
            assert before["experiment_id"] == exp_id
            threads = [threading.Thread(target=load, args=(seed,)) for seed in range(2)]
            for thread in threads:
                thread.start()
            wait_for(lambda: len(responses) >= 20)
            postgres_server.stop()
            try:
                during = len(responses)
                wait_for(lambda: len(responses) >= during + 20)  # predictions keep coming while it is down
                outcome = http.post(f"/v1/predictions/{before['request_id']}/outcome", json={"actual": 1})
                assert outcome.status_code == 503 and outcome.json()["error"]["code"] == "state_unavailable"
                wait_for(lambda: http.get("/health/ready").json()["audit"]["failing"])
                ready = http.get("/health/ready")
                assert ready.status_code == 200 and ready.json()["audit"]["backlog"] > 0  # buffered, still serving
            finally:
                postgres_server.start()
            after = len(responses)
            wait_for(lambda: len(responses) >= after + 20)
            stop.set()
            for thread in threads:
                thread.join(30)
            assert [r.status_code for r in responses] == [200] * len(responses)
            wait_for(lambda: not (audit := http.get("/health/ready").json()["audit"])["failing"]
                     and audit["backlog"] == 0)
            # the outcome refused during the outage wrote nothing: it can be posted now, once
            assert http.post(f"/v1/predictions/{before['request_id']}/outcome", json={"actual": 1}).status_code == 201
            analysis = http.get(f"/v1/experiments/{exp_id}/analyze").json()
            assert sum(arm["outcomes"] for arm in analysis["arms"].values()) == 1
    finally:
        stop.set()
        server.stop()
    reader = AuditReader(tmp_path / "unused", StateSettings(database_url=postgres_url))
    served = {r.json()["request_id"] for r in responses} | {before["request_id"]}
    assert reader.count() == len(served) and reader.request_ids() == served
