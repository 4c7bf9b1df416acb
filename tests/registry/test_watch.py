"""The registry watch: a cached resolution is reused without syscalls while nothing changed, and any change
(in this process, by another process, or one no event reports) is followed by the next resolution."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest

from prediction_service.registry import RegistryReader
from prediction_service.registry import watch as registry_watch
from prediction_service.registry.writer import set_stage_link
from tests.support.server import REPO, running_server

MODEL = "tiny-regressor"


@pytest.fixture
def counted_readlinks(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = os.readlink

    def readlink(path, *args, **kwargs):
        calls.append(os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "readlink", readlink)
    return calls


def replace_link_behind_the_registrys_back(root, version: str) -> None:
    """A stage link moved the way another process (or host) would: no call into this process at all."""
    link = root / MODEL / "production"
    tmp = root / MODEL / ".production.test.tmp"
    os.symlink(f"v{version}", tmp)
    os.replace(tmp, link)


async def test_a_cached_resolution_is_reused_without_a_syscall_until_the_registry_changes(tiny_store,
                                                                                          counted_readlinks):
    reader = RegistryReader(tiny_store)
    watch = registry_watch.attach(tiny_store, asyncio.get_running_loop())
    assert watch is not None
    try:
        assert reader.resolve(MODEL, stage="production").version == "1.0.0"
        reader.resolve(MODEL, stage="production")  # checked once, with the watch covering its directories
        counted_readlinks.clear()
        for _ in range(50):
            assert reader.resolve(MODEL, stage="production").version == "1.0.0"
        assert counted_readlinks == []

        replace_link_behind_the_registrys_back(tiny_store, "2.0.0")
        await asyncio.sleep(0.05)  # a turn of the loop: the watch reads the kernel's event
        assert reader.resolve(MODEL, stage="production").version == "2.0.0"

        set_stage_link(tiny_store, MODEL, "production", "1.0.0")  # a write in this process: no turn needed
        assert reader.resolve(MODEL, stage="production").version == "1.0.0"

        assert reader.stages_cached(MODEL)["production"] == "1.0.0"  # read once, then held
        counted_readlinks.clear()
        assert reader.stages_cached(MODEL)["production"] == "1.0.0"
        assert counted_readlinks == []
        replace_link_behind_the_registrys_back(tiny_store, "2.0.0")
        await asyncio.sleep(0.05)
        assert reader.stages_cached(MODEL)["production"] == "2.0.0"
    finally:
        registry_watch.detach(watch)


async def test_a_resolution_cached_under_a_detached_watch_is_checked_under_the_next(tiny_store):
    """A later watch never reaches the generation an earlier one cached a resolution at."""
    reader = RegistryReader(tiny_store)
    first = registry_watch.attach(tiny_store, asyncio.get_running_loop())
    assert first is not None
    reader.resolve(MODEL, stage="production")
    reader.resolve(MODEL, stage="production")  # checked, stored with first's generation
    cached_at = first.generation
    registry_watch.detach(first)
    replace_link_behind_the_registrys_back(tiny_store, "2.0.0")  # no watch sees it
    second = registry_watch.attach(tiny_store, asyncio.get_running_loop())
    assert second is not None and second is not first
    try:
        while second.generation < cached_at:
            second.changed()
        assert reader.resolve(MODEL, stage="production").version == "2.0.0"
    finally:
        registry_watch.detach(second)


async def test_a_change_no_event_reports_is_followed_once_the_watch_is_told(tiny_store):
    reader = RegistryReader(tiny_store)
    watch = registry_watch.attach(tiny_store, asyncio.get_running_loop())
    assert watch is not None
    try:
        reader.resolve(MODEL, stage="production")
        reader.resolve(MODEL, stage="production")
        generation = watch.generation
        watch.changed()  # what the stage watcher's pass does for a network filesystem's silent writes
        assert watch.generation == generation + 1
        assert reader.resolve(MODEL, stage="production").version == "1.0.0"
    finally:
        registry_watch.detach(watch)
    assert registry_watch.watch_of(registry_watch.root_key(tiny_store)) is None


def test_without_a_watch_every_resolution_checks_the_link(tiny_store, counted_readlinks):
    reader = RegistryReader(tiny_store)
    reader.resolve(MODEL, stage="production")
    counted_readlinks.clear()
    for _ in range(5):
        reader.resolve(MODEL, stage="production")
    assert len(counted_readlinks) == 5


PROMOTE = """
import contextlib, io, sys
from prediction_service.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    sys.exit(main(["registry", "promote", "tiny-regressor", sys.argv[2], "--store", sys.argv[1], "--actor", "t"]))
"""


@pytest.mark.parametrize("watching", ["true", "false"])
def test_the_next_request_after_another_process_promotes_names_the_new_version(tiny_store, watching):
    # a stage poll far longer than the test: only the watch (or a check per request) can follow the moves
    env = {"STAGE_POLL_INTERVAL_SECONDS": "60", "REGISTRY_WATCH": watching}
    with running_server(tiny_store, env=env) as (base, _), httpx.Client(base_url=base, timeout=10) as http:
        for version in ("2.0.0", "1.0.0", "2.0.0", "1.0.0"):
            for _ in range(3):
                http.post(f"/v1/models/{MODEL}/predict", json={"instance": [1.0, 2.0, 3.0, 4.0]})
            subprocess.run([sys.executable, "-c", PROMOTE, str(tiny_store), version], cwd=REPO, check=True)
            answer = http.post(f"/v1/models/{MODEL}/predict", json={"instance": [1.0, 2.0, 3.0, 4.0]})
            assert answer.status_code == 200, answer.text
            assert answer.json()["version"] == version


def test_a_watch_whose_event_loop_closed_is_not_trusted(tiny_store):
    loop = asyncio.new_event_loop()
    watch = registry_watch.attach(tiny_store, loop)
    assert watch is not None
    key = registry_watch.root_key(tiny_store)
    assert registry_watch.watch_of(key) is watch
    registry_watch.detach(watch)
    watch = registry_watch.attach(tiny_store, loop)
    loop.close()  # a server that stopped without detaching: no one reads the watch's events any more
    try:
        assert registry_watch.watch_of(key) is None
    finally:
        registry_watch.detach(watch)
