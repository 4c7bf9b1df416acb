"""A model behind a gate: the run that reaches it holds its run slot until the test releases it. Tests of
admission, overload and deadlines hold a slot this way instead of burning CPU with a slow model (which
made them slow, and flaky on a busy machine)."""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator

import pytest

from prediction_service.registry import ModelKey


class GatedRun:
    """Wraps a runtime's ``run``: each call signals ``started`` and waits for ``gate`` (released by the test)."""

    def __init__(self, run):
        self._run = run
        self.started = threading.Event()
        self.gate = threading.Event()

    def __call__(self, inputs):
        self.started.set()
        self.gate.wait(timeout=60)
        return self._run(inputs)

    async def wait_started(self, timeout: float = 60.0) -> None:
        assert await asyncio.to_thread(self.started.wait, timeout), "no run reached the gate"

    def release(self) -> None:
        self.gate.set()


def gate_model_runs(entry, monkeypatch: pytest.MonkeyPatch) -> GatedRun:
    """Gate every run of a loaded in-process model (the adapter's entry for it). A gated run blocks its thread
    until released, so none runs on the event loop however small the model."""
    gate = GatedRun(entry.runtime.run)
    monkeypatch.setattr(entry.runtime, "run", gate)
    monkeypatch.setattr(entry.batcher, "inline_rows", 0)
    return gate


@asynccontextmanager
async def gated(app, key: ModelKey, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[GatedRun]:
    """Gate the loaded in-process model ``key`` of a served app; the gate opens on leaving the block."""
    gate = gate_model_runs(app.state.service.adapter._models[key], monkeypatch)
    try:
        yield gate
    finally:
        gate.release()
