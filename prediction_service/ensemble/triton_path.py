"""Triton's own ensemble as the serving path (SERVING_ADAPTER_TYPE=triton): the members' tensors go to one
generated ``ensemble_scheduling`` entry (members + the shipped combiner step, adapters/triton.py) instead of
two member requests combined in-process.

The entry is generated once per (ensemble version, member versions) and regenerated when a member's stage
moves to another version; a request then costs one Triton call. The service still pre-processes bars and
texts (Triton sees model tensors only) and repeats the one text's tensors for every bars window, since a
Triton ensemble passes rows through unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import numpy as np

from ..errors import ModelLoadError
from ..registry import ModelKey, ModelVersion
from .spec import Ensemble

log = logging.getLogger(__name__)


class EnsembleBackend(Protocol):
    """What a backend with native ensembles offers (adapters/triton.py's TritonAdapter)."""

    async def load_ensemble(self, name: str, version: str, combiner: Any,
                            members: dict[str, ModelVersion]) -> str: ...

    async def predict_ensemble(self, entry: str, inputs: dict[str, np.ndarray], *,
                               deadline: float | None = None) -> dict[str, np.ndarray]: ...


def native(adapter: Any) -> EnsembleBackend | None:
    """The adapter, when it serves ensembles itself; None keeps the in-process combination."""
    return adapter if callable(getattr(adapter, "predict_ensemble", None)) else None


class NativeEnsembles:
    """Generated backend entries per ensemble version, keyed by what they were generated from."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[tuple[str, ModelKey, ModelKey], str | None]] = {}
        """(ensemble, version) -> (what the entry was generated from, the entry; None: the backend refused it)."""
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def entry(self, backend: EnsembleBackend, ensemble: Ensemble, members: dict[str, ModelVersion]) -> str | None:
        """The backend's entry for this ensemble over these member versions, when it is generated. If not
        (first use, or a member's stage moved), generation starts in the background and None says: combine
        in-process for now, so no request waits for Triton to load a python step (seconds)."""
        key = (ensemble.name, ensemble.version)
        source = (ensemble.sha256, members["price"].key, members["sentiment"].key)
        cached = self._entries.get(key)
        if cached is not None and cached[0] == source:
            return cached[1]
        task = self._tasks.get(key)
        if task is None or task.done():
            self._tasks[key] = asyncio.create_task(self._generate(backend, ensemble, members, source))
        return None

    def generated(self, name: str, version: str) -> str | None:
        """The entry now serving (name, version), if any."""
        cached = self._entries.get((name, version))
        return cached[1] if cached is not None else None

    async def _generate(self, backend: EnsembleBackend, ensemble: Ensemble, members: dict[str, ModelVersion],
                        source: tuple[str, ModelKey, ModelKey]) -> None:
        key = (ensemble.name, ensemble.version)
        try:
            entry = await backend.load_ensemble(ensemble.name, ensemble.version, ensemble.metadata.combiner, members)
        except ModelLoadError as exc:  # refused for good (e.g. a member without a batch dimension)
            log.warning("ensemble %s %s: the backend refused its own ensemble (%s); combining in-process",
                        ensemble.name, ensemble.version, exc.message)
            self._entries[key] = (source, None)
            return
        except Exception as exc:  # noqa: BLE001 - unreachable backend: the next request tries again
            log.warning("ensemble %s %s: could not generate the backend's ensemble: %s", ensemble.name,
                        ensemble.version, exc)
            return
        self._entries[key] = (source, entry)
        log.info("ensemble %s %s served by the backend's own ensemble %s (price %s, sentiment %s)",
                 ensemble.name, ensemble.version, entry, members["price"].key, members["sentiment"].key)

    def forget(self, ensemble: Ensemble) -> None:
        """Regenerate on next use (the backend lost the entry, e.g. Triton restarted)."""
        self._entries.pop((ensemble.name, ensemble.version), None)


def repeat_rows(arrays: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """One text for every bars window: its tensors repeated ``rows`` times."""
    return {name: np.repeat(array, rows, axis=0) for name, array in arrays.items()}
