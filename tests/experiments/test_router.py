"""Sticky split: deterministic per (experiment, key), identical in other processes, proportion as configured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np

from prediction_service.experiments import router
from prediction_service.experiments.models import Arm, Experiment, ExperimentStatus


def experiment(split: float = 0.1) -> Experiment:
    return Experiment(id="exp-123", model_name="sentiment", champion_version="1.0.0", challenger_version="1.1.0",
                      traffic_split=split, status=ExperimentStatus.RUNNING, created_at=datetime.now(timezone.utc))


def test_same_key_same_arm_and_version():
    exp = experiment(0.5)
    for key in ("acct-1", "acct-2", "BTC-USD", ""):
        first = router.assign(exp, key)
        assert all(router.assign(exp, key) == first for _ in range(20))
        assert first.version == (exp.challenger_version if first.arm is Arm.CHALLENGER else exp.champion_version)


def test_split_proportion_close_to_configured():
    for split in (0.1, 0.5, 0.9):
        arms = [router.choose_arm("exp-123", f"key-{i}", split) for i in range(40_000)]
        share = np.mean([a is Arm.CHALLENGER for a in arms])
        assert abs(share - split) < 0.01, (split, share)


def test_missing_key_is_random_but_respects_split():
    arms = [router.choose_arm("exp-123", None, 0.2) for _ in range(20_000)]
    assert abs(np.mean([a is Arm.CHALLENGER for a in arms]) - 0.2) < 0.015


def test_assignment_differs_between_experiments():
    keys = [f"key-{i}" for i in range(2000)]
    a = [router.choose_arm("exp-a", k, 0.5) for k in keys]
    b = [router.choose_arm("exp-b", k, 0.5) for k in keys]
    assert 0.4 < np.mean([x is y for x, y in zip(a, b)]) < 0.6  # independent draws, not the same split


def test_same_arm_in_another_process_with_another_hash_seed():
    keys = [f"account-{i}" for i in range(300)]
    here = [router.choose_arm("exp-123", k, 0.3).value for k in keys]
    code = ("import json, sys; from prediction_service.experiments import router; "
            "keys = json.load(sys.stdin); "
            "print(json.dumps([router.choose_arm('exp-123', k, 0.3).value for k in keys]))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(keys), capture_output=True, text=True,
                         env=env, check=True, cwd=os.getcwd())
    assert json.loads(out.stdout) == here
    assert 0 < here.count("challenger") < len(keys)
