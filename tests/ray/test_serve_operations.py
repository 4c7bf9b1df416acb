"""Operations on the Ray Serve application, under bounded load: hot reload followed by every replica with
no failed request, a killed replica replaced by Serve, and autoscaling up and back down (Serve's status API)."""

from __future__ import annotations

import shutil
import time

import httpx
import ray
from ray import serve

from prediction_service.deploy.ray_serve import RayAppArgs, application
from prediction_service.registry import ModelRegistry
from tests.ray.conftest import APP
from tests.ray.load import Load, wait_until
from tests.ray.test_serve_parity import PREDICT, replica_env

ROW = [1.0, 2.0, 3.0, 4.0]
EXPECTED = {"1.0.0": 31.0, "2.0.0": 62.0}  # tiny-regressor: scale * (x . [1, 2, 3, 4]) + scale


def test_hot_reload_across_replicas_under_load(deploy, tiny_store):
    served = deploy(application(RayAppArgs(env=replica_env(tiny_store)), num_replicas=2,
                                ray_actor_options={"num_cpus": 0.5}))
    with Load(served.url, PREDICT, {"instance": ROW}, threads=2) as load:
        wait_until(lambda: len({a.replica for a in load.snapshot()}) == 2, 60, "both replicas answering")
        promoted_at = time.monotonic()
        ModelRegistry(tiny_store).promote("tiny-regressor", "2.0.0", "production", actor="test")
        promoted_by = time.monotonic()

        def every_replica_switched() -> bool:
            after = [a for a in load.snapshot() if a.sent > promoted_by and a.version == "2.0.0"]
            return len({a.replica for a in after}) == 2

        wait_until(every_replica_switched, 60, "both replicas serving 2.0.0")
        switched = len(load.snapshot())
        wait_until(lambda: len(load.snapshot()) >= switched + 20, 60, "20 more answers")
    answers = load.snapshot()
    assert load.failures() == [], load.failures()[:5]
    for answer in answers:  # every answer is the output of the version it names
        assert abs(answer.output - EXPECTED[answer.version]) < 1e-4, answer
        if answer.received < promoted_at:
            assert answer.version == "1.0.0", answer  # nothing serves 2.0.0 before it is promoted
    for replica in {a.replica for a in answers}:  # each replica switches once and never goes back
        versions = [a.version for a in sorted(answers, key=lambda a: a.received) if a.replica == replica]
        first_new = versions.index("2.0.0")
        assert set(versions[first_new:]) == {"2.0.0"}, (replica, versions)
    assert {a.version for a in answers[switched:]} == {"2.0.0"}


def _replica_actor_name(replica_id: str) -> str:
    names = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
             if actor["namespace"] == "serve" and actor["name"].endswith(f"#{replica_id}")]
    assert len(names) == 1, names
    return names[0]


def test_killed_replica_is_replaced(deploy, tiny_store, record_property):
    served = deploy(application(RayAppArgs(env=replica_env(tiny_store)), num_replicas=2,
                                ray_actor_options={"num_cpus": 0.5}))
    with Load(served.url, PREDICT, {"instance": ROW}, threads=1, pause_s=0.02) as load:
        wait_until(lambda: len({a.replica for a in load.snapshot()}) == 2, 60, "both replicas answering")
        before = {a.replica for a in load.snapshot()}
        victim = sorted(before)[0]
        ray.kill(ray.get_actor(_replica_actor_name(victim), namespace="serve"), no_restart=True)
        killed_at = time.monotonic()

        def replaced() -> bool:
            fresh = {a.replica for a in load.snapshot() if a.sent > killed_at and a.status == 200} - before
            return bool(fresh) and served.running_replicas() == 2

        wait_until(replaced, 120, "a new replica answering and 2 running")
        recovered = len(load.snapshot())
        wait_until(lambda: len(load.snapshot()) >= recovered + 20, 60, "20 more answers")
    answers = load.snapshot()
    failed = load.failures()
    record_property("failed_requests", len(failed))
    print(f"replica killed under load: {len(failed)} failed of {len(answers)} requests")
    assert all(a.status == 200 for a in answers[recovered:]), answers[recovered:]
    assert victim not in {a.replica for a in answers[recovered:]}
    assert len(failed) <= 5, failed  # only requests in flight on the killed replica may fail
    assert httpx.get(served.url + "/health/ready", timeout=30).status_code == 200


def test_autoscaling_up_under_load_and_back_down(deploy, slow_store_template, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(slow_store_template, store, symlinks=True)
    autoscaling = {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                   "upscale_delay_s": 1, "downscale_delay_s": 5, "metrics_interval_s": 0.5,
                   "look_back_period_s": 2}
    env = {**replica_env(store), "LIMIT_DEFAULT_DEADLINE_MS": "30000"}  # two busy cores: slow, never failed
    served = deploy(application(RayAppArgs(env=env), autoscaling_config=autoscaling,
                                max_ongoing_requests=8, ray_actor_options={"num_cpus": 0.5}))
    assert served.running_replicas() == 1
    slow = "/v1/models/slow-regressor/predict"
    with Load(served.url, slow, {"instance": ROW}, threads=3) as load:
        wait_until(lambda: served.running_replicas() == 2, 90, "Serve scaling to 2 replicas")
        assert len({a.replica for a in load.snapshot()[-20:] if a.status == 200}) >= 1, load.snapshot()[-3:]
    assert load.failures() == [], load.failures()[:5]
    assert serve.status().applications[APP].deployments
    wait_until(lambda: served.running_replicas() == 1, 90, "Serve scaling back to 1 replica after the delay")
