"""Which names are ensembles: a set the data plane looks up on every request without touching the
filesystem. The set is scanned before the server serves, rescanned off the event loop with the model
manager's stage poll (an ensemble another process registered becomes known there), and a registration
or promotion through the service's own API is known at once. Without a model manager (CLI, scripts) the
catalog is refreshed explicitly; a failed scan keeps the last good set."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from prediction_service.ensemble import EnsembleCatalog, EnsembleRegistry
from prediction_service.modelzoo.synthetic import synthetic_ohlcv

from .conftest import COMBINER, ENSEMBLE, MEMBERS, app_client

OTHER = "price-sentiment-b"
BODY = {"inputs": {"bars": [synthetic_ohlcv(60, seed=7).tolist()], "text": ["Shares rally after earnings"]}}
NO_POLL = 3600.0
"""A stage poll interval no test outlives: the test runs the poll passes itself (``manager.poll()``)."""


class ScanRecorder:
    """Stands in for ``EnsembleRegistry.names`` (the directory scan), recording the thread of each call."""

    def __init__(self, registry: EnsembleRegistry, fail: bool = False):
        self.scan = registry.names
        self.fail = fail
        self.threads: list[int] = []

    def __call__(self) -> list[str]:
        self.threads.append(threading.get_ident())
        if self.fail:
            raise OSError("stale NFS file handle")
        return self.scan()


@pytest.fixture
async def served(ensemble_store):
    async with app_client(ensemble_store, stage_poll_interval_seconds=NO_POLL) as (app, http):
        http.app = app
        yield http


async def test_requests_never_scan_and_the_poll_finds_an_ensemble_registered_elsewhere(served, monkeypatch):
    service = served.app.state.service
    catalog = service.dataplane.ensembles.catalog
    assert catalog.is_ensemble(ENSEMBLE) and not catalog.is_ensemble("lstm-price")  # scanned before serving
    scans = ScanRecorder(catalog.registry)
    monkeypatch.setattr(catalog.registry, "names", scans)

    for path, body in ((f"/v1/models/{ENSEMBLE}/predict", BODY), ("/v1/models/lstm-price/predict",
                                                                   {"bars": BODY["inputs"]["bars"]})):
        response = await served.post(path, json=body)
        assert response.status_code == 200, response.text
    for path in (f"/v2/models/{ENSEMBLE}", f"/v2/models/{ENSEMBLE}/ready", "/v2/models/lstm-price/ready",
                 f"/v1/models/{ENSEMBLE}"):
        assert (await served.get(path)).status_code == 200, path
    assert scans.threads == []  # not one directory scan for any of those requests

    # Another process (the CLI, another worker) registers an ensemble: not through this service's API.
    registry = EnsembleRegistry(service.settings.model_store)
    registry.register(OTHER, "1.0.0", MEMBERS, COMBINER)
    registry.promote(OTHER, "1.0.0", actor="other-process")
    assert not catalog.is_ensemble(OTHER)  # requests only look up the set; the next poll rescans
    assert (await served.post(f"/v1/models/{OTHER}/predict", json=BODY)).status_code == 404
    assert scans.threads == []

    await service.manager.poll()  # one pass of the stage watcher
    assert catalog.is_ensemble(OTHER)
    assert scans.threads and threading.get_ident() not in scans.threads  # scanned in a worker thread
    served_other = await served.post(f"/v1/models/{OTHER}/predict", json=BODY)
    assert served_other.status_code == 200, served_other.text
    assert served_other.json()["model"] == OTHER and served_other.json()["provenance"]["backend"] == "ensemble"


async def test_the_stage_watcher_rescans_off_the_event_loop(ensemble_store, monkeypatch):
    async with app_client(ensemble_store, stage_poll_interval_seconds=0.05) as (app, http):
        catalog = app.state.service.dataplane.ensembles.catalog
        scans = ScanRecorder(catalog.registry)
        monkeypatch.setattr(catalog.registry, "names", scans)
        registry = EnsembleRegistry(ensemble_store)
        registry.register(OTHER, "1.0.0", MEMBERS, COMBINER)
        registry.promote(OTHER, "1.0.0", actor="other-process")
        for _ in range(400):  # the watcher's own schedule, with requests in between; bounded, nothing timed
            if catalog.is_ensemble(OTHER):
                break
            assert (await http.get(f"/v2/models/{ENSEMBLE}/ready")).status_code == 200
            await asyncio.sleep(0.05)
        assert catalog.is_ensemble(OTHER)
        assert (await http.post(f"/v1/models/{OTHER}/predict", json=BODY)).status_code == 200
        assert scans.threads and threading.get_ident() not in scans.threads  # never on the event loop


async def test_an_ensemble_registered_through_the_api_serves_at_once(served, monkeypatch):
    catalog = served.app.state.service.dataplane.ensembles.catalog
    scans = ScanRecorder(catalog.registry)
    monkeypatch.setattr(catalog.registry, "names", scans)
    members = [m.model_dump(exclude_none=True) for m in MEMBERS]
    created = await served.post(f"/v1/registry/ensembles/{OTHER}/versions", json={"version": "1.0.0",
                                                                                  "members": members})
    assert created.status_code == 201, created.text
    promoted = await served.post(f"/v1/registry/ensembles/{OTHER}/versions/1.0.0/promote", json={})
    assert promoted.status_code == 200, promoted.text

    response = await served.post(f"/v1/models/{OTHER}/predict", json=BODY)  # no poll in between
    assert response.status_code == 200, response.text
    assert (response.json()["model"], response.json()["version"]) == (OTHER, "1.0.0")
    assert scans.threads == []  # known from the write itself, not from a rescan


def test_without_a_model_manager_refresh_is_explicit(ensemble_store):
    catalog = EnsembleCatalog(ensemble_store)  # e.g. a CLI command: the constructor scans once
    assert catalog.is_ensemble(ENSEMBLE) and catalog.names == {ENSEMBLE}
    assert not EnsembleCatalog(ensemble_store, scan=False).is_ensemble(ENSEMBLE)

    EnsembleRegistry(ensemble_store).register(OTHER, "1.0.0", MEMBERS, COMBINER)
    assert not catalog.is_ensemble(OTHER)
    assert catalog.refresh() is True
    assert catalog.is_ensemble(OTHER)

    catalog.registry.register("price-sentiment-c", "1.0.0", MEMBERS, COMBINER)  # through the catalog's registry
    assert catalog.is_ensemble("price-sentiment-c")  # known without a rescan


def test_a_failed_scan_keeps_the_last_good_set(ensemble_store, monkeypatch, caplog):
    catalog = EnsembleCatalog(ensemble_store)
    scans = ScanRecorder(catalog.registry, fail=True)
    monkeypatch.setattr(catalog.registry, "names", scans)
    with caplog.at_level(logging.WARNING, logger="prediction_service.ensemble.store"):
        assert catalog.refresh() is False
    assert len(scans.threads) == 1 and catalog.is_ensemble(ENSEMBLE)
    assert any("ensemble scan" in r.getMessage() and "stale NFS file handle" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)

    scans.fail = False  # the next scan succeeds and replaces the set
    assert catalog.refresh() is True and catalog.names == {ENSEMBLE}


async def test_a_failed_scan_in_the_poll_keeps_serving(served, monkeypatch, caplog):
    service = served.app.state.service
    catalog = service.dataplane.ensembles.catalog
    scans = ScanRecorder(catalog.registry, fail=True)
    monkeypatch.setattr(catalog.registry, "names", scans)
    with caplog.at_level(logging.WARNING, logger="prediction_service.ensemble.store"):
        await service.manager.poll()
    assert scans.threads and "ensemble scan" in caplog.text
    response = await served.post(f"/v1/models/{ENSEMBLE}/predict", json=BODY)
    assert response.status_code == 200, response.text


def test_a_name_written_while_a_scan_runs_is_kept(ensemble_store, monkeypatch):
    catalog = EnsembleCatalog(ensemble_store)
    scan = catalog.registry.names

    def listed_before_the_write() -> list[str]:
        found = scan()  # the directory is listed ...
        catalog.add(OTHER)  # ... then this process writes a new ensemble
        return found

    monkeypatch.setattr(catalog.registry, "names", listed_before_the_write)
    catalog.refresh()
    assert catalog.is_ensemble(OTHER)  # the older listing does not drop it

    monkeypatch.setattr(catalog.registry, "names", scan)
    catalog.refresh()  # a scan begun after the write is the authority: OTHER was never written to disk
    assert not catalog.is_ensemble(OTHER) and catalog.is_ensemble(ENSEMBLE)
