"""A promotion killed with SIGKILL at any step leaves a consistent, repairable store."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from prediction_service.registry.checkpoints import PAUSE_ENV, PAUSED_MARKER

from .conftest import REPO_ROOT, assert_consistent

PROMOTE_ONCE = """
import sys
from prediction_service.registry import ModelRegistry
ModelRegistry(sys.argv[1], repair=False).promote("price", sys.argv[2], sys.argv[3], actor="child")
"""

PROMOTE_FOREVER = """
import sys
from prediction_service.registry import ModelRegistry
registry = ModelRegistry(sys.argv[1], repair=False)
print("ready", flush=True)
for i in range(100_000):
    registry.promote("price", ("1.0.0", "1.1.0")[i % 2], actor="child")
"""


def _spawn(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("step", ["locked", "link_moved", "old_link_removed", "status_written",
                                  "displaced_archived", "events_recorded"])
def test_kill_at_each_step_of_a_promotion(two_versions, step):
    reg = two_versions
    reg.promote("price", "1.0.0")
    reg.promote("price", "1.1.0", "staging")
    child = _spawn(PROMOTE_ONCE, reg.root, "1.1.0", "production", env={PAUSE_ENV: step})
    line = child.stderr.readline()
    assert line.strip() == f"{PAUSED_MARKER}{step}", line + child.stderr.read()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    expected = {"1.0.0"} if step == "locked" else {"1.1.0"}
    reopened = assert_consistent(reg.root, "price", expected_production=expected)
    if step != "locked":
        assert reopened.stages("price") == {"production": "1.1.0", "staging": None}
        assert reopened.get("price", "1.0.0").metadata.status == "archived"
    # The store keeps working after the repair.
    reopened.promote("price", "1.0.0")
    assert_consistent(reg.root, "price", expected_production={"1.0.0"})


def test_kill_at_random_moments_of_a_promotion_loop(two_versions):
    reg = two_versions
    reg.promote("price", "1.0.0")
    rng = random.Random(7)
    for _ in range(8):
        child = _spawn(PROMOTE_FOREVER, reg.root)
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        assert_consistent(reg.root, "price", expected_production={"1.0.0", "1.1.0"})
    moves = [e for e in reg.model_events("price", limit=100_000) if e.to_stage == "production"]
    assert len(moves) > 8  # the children really were promoting when they died
