from __future__ import annotations

pytest_plugins = ["tests.support.torchserve_fixtures", "tests.support.triton_fixtures", "tests.support.postgres"]

import os
from pathlib import Path

# No warm-up in tests (it runs every freshly loaded version several times): the warm-up tests turn it on
# (WarmupSettings(enabled=True)). Served subprocesses inherit it.
os.environ.setdefault("WARMUP_ENABLED", "false")

import pytest

from prediction_service.settings import BatchingSettings, Settings
from tests.support.asgi import served_app
from tests.support.built_once import built_once
from tests.support.demo_store import run_setup_demo
from tests.support.models import (CLASSIFIER_SIGNATURE, REGRESSOR_SIGNATURE, TinyClassifier, TinyRegressor,
                                  register_slow, register_tiny)
from tests.support.server_groups import ServerGroupScheduling, write_group_map
from tests.support.tiers import mark_tiers


@pytest.hookimpl(wrapper=True)  # before every other plugin: -m selects by tier
def pytest_collection_modifyitems(config, items):
    mark_tiers(items)  # unit / app / process / external, from what each test starts
    result = yield
    write_group_map(config, items)  # the selected items, before the worker reports its collection
    return result


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") == "loadgroup":
        return ServerGroupScheduling(config, log)
    return None

SLOW_STEPS = 200
"""~30 ms per row on one thread: long enough for queues to form under load."""


@pytest.fixture(scope="session")
def tiny_store_template(tmp_path_factory) -> Path:
    """A registry with tiny-regressor 1.0.0 (production) and 2.0.0 (staging), and tiny-classifier 1.0.0."""
    root = tmp_path_factory.mktemp("store-template")
    work = tmp_path_factory.mktemp("export")
    register_tiny(root, "tiny-regressor", "1.0.0", TinyRegressor(1.0), REGRESSOR_SIGNATURE, work)
    register_tiny(root, "tiny-regressor", "2.0.0", TinyRegressor(2.0), REGRESSOR_SIGNATURE, work, stage="staging")
    register_tiny(root, "tiny-classifier", "1.0.0", TinyClassifier(), CLASSIFIER_SIGNATURE, work)
    return root


@pytest.fixture(scope="session")
def slow_store_template(tiny_store_template, tmp_path_factory) -> Path:
    """The tiny registry plus slow-regressor 1.0.0 (production), a deliberately heavy TorchScript model
    (overload, deadline and shutdown tests)."""
    import shutil

    root = tmp_path_factory.mktemp("slow-store") / "store"
    shutil.copytree(tiny_store_template, root, symlinks=True)
    register_slow(root, tmp_path_factory.mktemp("slow-export"), steps=SLOW_STEPS)
    return root


@pytest.fixture
def tiny_store(tiny_store_template, tmp_path) -> Path:
    import shutil

    root = tmp_path / "store"
    shutil.copytree(tiny_store_template, root, symlinks=True)
    return root


@pytest.fixture
def settings(tiny_store) -> Settings:
    return Settings(model_store=tiny_store, stage_poll_interval_seconds=0.1,
                    batching=BatchingSettings(max_batch_size=32, max_queue_delay_ms=2.0))


@pytest.fixture
async def client(settings):
    async with served_app(settings) as (app, http):
        http.app = app
        yield http


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory) -> Path:
    """The demo registry built by the `setup-demo` command itself (its zoo models and the ensemble, v1.0.0 in
    production); once per run, whatever the number of workers: copy it before changing it. What the command
    printed is kept beside it (``setup_demo_output``)."""
    return built_once(tmp_path_factory, "demo-store", run_setup_demo)


@pytest.fixture
async def demo_client(demo_store):
    async with served_app(model_store=demo_store) as (_, http):
        yield http
