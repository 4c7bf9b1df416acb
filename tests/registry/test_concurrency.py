"""Writers in several processes serialize on the model lock: no lost update, no interleaved promotion."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO_ROOT, assert_consistent, onnx_artifact

WORKER = """
import sys, time
from pathlib import Path
from prediction_service.registry import ModelRegistry
root, worker, version, rounds, go = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
registry = ModelRegistry(root, repair=False)
while not go.exists():  # start together
    time.sleep(0.01)
for i in range(rounds):
    assert registry.promote("price", version, actor=worker).metadata.status == "production"
    registry.update_metrics("price", version, {f"{worker}_{i}": float(i)}, actor=worker)
"""

WORKERS, ROUNDS = 4, 6


def test_concurrent_promotions_and_metric_updates_serialize(registry, onnx_models, tmp_path):
    versions = [f"1.{i}.0" for i in range(WORKERS)]
    for version in versions:
        registry.register("price", version, onnx_artifact(onnx_models["a"]))
    go = tmp_path / "go"
    children = [subprocess.Popen([sys.executable, "-c", WORKER, str(registry.root), f"w{i}", versions[i], str(ROUNDS),
                                  str(go)], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
                for i in range(WORKERS)]
    go.touch()
    for child in children:
        assert child.wait(timeout=120) == 0, child.stderr.read()

    reopened = assert_consistent(registry.root, "price", expected_production=set(versions))
    for i, version in enumerate(versions):  # read-modify-write under the lock: every key survived
        metrics = reopened.get("price", version).metadata.metrics
        assert set(metrics) == {f"w{i}_{r}" for r in range(ROUNDS)}
    changes = [e for e in reopened.model_events("price", limit=10_000) if e.event == "stage_change"]
    # Each promotion's "displaced -> archived" event directly follows its own "-> production" event.
    for index, event in enumerate(changes):
        if event.to_stage == "production" and event.details.get("displaced") not in (None, event.version):
            follower = changes[index + 1]
            assert (follower.version, follower.from_stage, follower.to_stage) == \
                (event.details["displaced"], "production", "archived")
            assert follower.actor == event.actor
