"""The application on a two-node Ray cluster answers as the standalone service does: same outputs and
provenance through Serve's proxy (both replicas, one per node, answering), same 4xx bodies for bad input,
and the Open Inference Protocol REST door too."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from prediction_service.deploy.ray_serve import NODE_HEADER, REPLICA_HEADER, RayAppArgs, application
from prediction_service.monitoring.audit import AuditReader
from tests.ray.conftest import deployed
from tests.ray.load import wait_until

PREDICT = "/v1/models/tiny-regressor/predict"
ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0], [3.0, 3.0, 3.0, 3.0]]
PER_REQUEST = ("request_id", "inference_time_ms")  # differ between any two calls, on any server


def _stable(body: dict) -> dict:
    return {key: value for key, value in body.items() if key not in PER_REQUEST}


def replica_env(store) -> dict[str, str]:
    return {"MODEL_STORE": str(store), "STAGE_POLL_INTERVAL_SECONDS": "0.2", "SERVER_GRPC_PORT": "0"}


@pytest.fixture(scope="module")
def parity_store(tiny_store_template, tmp_path_factory):
    store = tmp_path_factory.mktemp("ray-parity") / "store"
    shutil.copytree(tiny_store_template, store, symlinks=True)
    return store


@pytest.fixture(scope="module")
def two_nodes(ray_serve, parity_store):
    """2 replicas of 1 CPU on two 1-CPU nodes: Serve must place one on each. Each serves its metrics on its
    own port, announced in a file_sd directory. One deployment for the module's tests."""
    args = RayAppArgs(env=replica_env(parity_store), metrics_sd_dir=str(parity_store.parent / "prometheus-sd"))
    with deployed(ray_serve, application(args, num_replicas=2, ray_actor_options={"num_cpus": 1})) as served:
        yield served


async def test_predictions_equal_the_standalone_service_from_both_nodes(two_nodes, client):
    nodes, replicas = set(), set()
    with httpx.Client(base_url=two_nodes.url, timeout=30) as ray_http:
        for attempt in range(60):  # Serve spreads requests at random: both replicas answer well within 60
            row = ROWS[attempt % len(ROWS)]
            through_ray = ray_http.post(PREDICT, json={"instance": row})
            assert through_ray.status_code == 200, through_ray.text
            nodes.add(through_ray.headers[NODE_HEADER])
            replicas.add(through_ray.headers[REPLICA_HEADER])
            standalone = await client.post(PREDICT, json={"instance": row})
            assert _stable(through_ray.json()) == _stable(standalone.json())
            assert through_ray.json()["provenance"]["sha256"]
            # One id: the replica took Serve's (the proxy's header), for the body and the audit log alike.
            assert through_ray.headers.get_list("x-request-id") == [through_ray.json()["request_id"]]
            if len(nodes) == 2 and attempt >= len(ROWS):
                break
    assert nodes == set(two_nodes.node_ids), "the two replicas are not on the two nodes"
    assert len(replicas) == 2
    assert two_nodes.running_replicas() == 2


async def test_open_inference_protocol_rest_through_serve(two_nodes, client):
    body = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": sum(ROWS, [])}]}
    path = "/v2/models/tiny-regressor/infer"
    through_ray = httpx.post(two_nodes.url + path, json=body, timeout=30)
    standalone = await client.post(path, json=body)
    assert through_ray.status_code == standalone.status_code == 200, through_ray.text
    ray_body, local_body = through_ray.json(), standalone.json()
    assert ray_body["outputs"] == local_body["outputs"]
    assert ray_body["model_version"] == local_body["model_version"] == "1.0.0"
    metadata = httpx.get(two_nodes.url + "/v2/models/tiny-regressor", timeout=30)
    assert metadata.json() == (await client.get("/v2/models/tiny-regressor")).json()


def test_one_request_id_for_header_body_and_audit_log(two_nodes, parity_store):
    """Serve's proxy names each request (the caller's X-Request-Id, else a uuid4) and appends that id to
    the response; the replica takes it as its own, so the header, the body and the audit log agree."""
    audit = parity_store / ".state" / "audit.sqlite3"
    with httpx.Client(base_url=two_nodes.url, timeout=30) as ray_http:
        generated = ray_http.post(PREDICT, json={"instance": ROWS[0]})
        chosen = ray_http.post(PREDICT, json={"instance": ROWS[0]}, headers={"X-Request-Id": "trade-42.a:1"})
        refused = ray_http.post(PREDICT, json={"instance": [1.0, 2.0]}, headers={"X-Request-Id": "bad-7"})
        odd = ray_http.post(PREDICT, json={"instance": ROWS[0]}, headers={"X-Request-Id": "not a token"})
    assert generated.status_code == chosen.status_code == odd.status_code == 200
    (serve_id,) = generated.headers.get_list("x-request-id")
    assert generated.json()["request_id"] == serve_id
    assert chosen.headers.get_list("x-request-id") == ["trade-42.a:1"] == [chosen.json()["request_id"]]
    assert refused.status_code == 422 and refused.headers.get_list("x-request-id") == ["bad-7"]
    # Not a plain token: the audit log keeps the service's own id, and the proxy still echoes the caller's.
    assert odd.headers.get_list("x-request-id") == [odd.json()["request_id"], "not a token"]

    def audited() -> bool:
        if not audit.is_file():
            return False
        reader = AuditReader(audit)
        return all(reader.request(i) is not None for i in (serve_id, "trade-42.a:1", "bad-7"))

    wait_until(audited, 30, "the three requests in the audit log")
    reader = AuditReader(audit)
    assert (reader.request(serve_id).status, reader.request("trade-42.a:1").status) == (200, 200)
    assert reader.request("bad-7").status == 422


BAD = [
    (PREDICT, {"instance": [1.0, 2.0, 3.0]}),                  # wrong shape
    (PREDICT, {"instance": ["a", "b", "c", "d"]}),             # not numeric
    (PREDICT, {"instance": [1.0, 2.0, 3.0, 4.0], "surprise": 1}),  # not in the schema
    (PREDICT, {"instances": [[1.0, 2.0, 3.0, 4.0]] * 300}),    # over the model's batch limit
    (PREDICT, {"instance": [1.0, 2.0, 3.0, 4.0], "version": "9.9.9"}),  # no such version
    ("/v1/models/no-such-model/predict", {"instance": [1.0, 2.0, 3.0, 4.0]}),
    ("/v2/models/tiny-regressor/infer", {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                                      "data": [1, 2, 3]}]}),
]


async def test_bad_input_gets_the_same_4xx_bodies(two_nodes, client):
    with httpx.Client(base_url=two_nodes.url, timeout=30) as ray_http:
        for path, payload in BAD:
            through_ray = ray_http.post(path, json=payload)
            standalone = await client.post(path, json=payload)
            assert 400 <= standalone.status_code < 500, (path, payload, standalone.text)
            assert through_ray.status_code == standalone.status_code, (payload, through_ray.text)
            assert through_ray.json() == standalone.json(), payload
        malformed = b'{"instance": [1, 2'
        headers = {"content-type": "application/json"}
        through_ray = ray_http.post(PREDICT, content=malformed, headers=headers)
        standalone = await client.post(PREDICT, content=malformed, headers=headers)
        assert (through_ray.status_code, through_ray.json()) == (standalone.status_code, standalone.json()) \
            and standalone.status_code == 400


def _families(exposition: str) -> set[str]:
    """Metric names; prometheus_client's ``*_created`` gauges appear only once a label set has been used."""
    return {line.split()[2] for line in exposition.splitlines()
            if line.startswith("# TYPE ") and not line.split()[2].endswith("_created")}


async def test_each_replica_exposes_the_service_metric_names(two_nodes, parity_store, client):
    def served_ok(text: str) -> float:
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("prediction_requests_total{") and 'status="200"' in line)

    targets = sorted((parity_store.parent / "prometheus-sd").glob("*.json"))
    assert len(targets) == 2  # one file_sd target per replica
    groups = [json.loads(path.read_text())[0] for path in targets]
    before = sum(served_ok(httpx.get(f"http://{g['targets'][0]}/metrics", timeout=30).text) for g in groups)
    for _ in range(4):
        assert httpx.post(two_nodes.url + PREDICT, json={"instance": ROWS[0]}, timeout=30).status_code == 200
    await client.post(PREDICT, json={"instance": ROWS[0]})
    standalone = _families((await client.get("/metrics")).text)
    after = 0.0
    for group in groups:
        assert group["labels"]["replica"] and group["labels"]["node"] in two_nodes.node_ids
        text = httpx.get(f"http://{group['targets'][0]}/metrics", timeout=30).text
        assert _families(text) == standalone, (_families(text) ^ standalone)
        after += served_ok(text)
    assert after - before == 4  # the replicas' counts add up to what went through the proxy
    # Through the proxy, /metrics is one replica's registry: same names again
    assert _families(httpx.get(two_nodes.url + "/metrics", timeout=30).text) == standalone
