"""Input drift: how far the inputs a model version answers today are from the inputs it was validated on.

Each model version has a reference profile of its inputs (``InputProfile``): per feature, quantile bin edges
with the reference's fraction in each bin, and a capped reference sample for the two-sample Kolmogorov-Smirnov
test. Features are what the model reads after pre-processing: a tensor ``[batch, ..., k]`` is ``k`` features
over every leading position (a bars model's ``[batch, window, features]`` is rows x features); a text model's
features are the token length (from the attention mask) and the rate of unknown tokens.

Where the reference comes from, in order:

1. ``profile.json`` stored in the version directory (``registry register --profile-from FILE``);
2. a profile learned from the version's first ``DRIFT_REFERENCE_REQUESTS`` answered requests, persisted under
   the registry's state directory (``.state/drift/<model>/v<version>.json``) so a restart keeps it.

``DriftMonitor`` is a prediction observer: per answered request it appends the request's tensors to a bounded
window per model version (no copy: the event loop reads only shapes and sizes). A background refresh (every
``DRIFT_INTERVAL_SECONDS``, and on ``GET /v1/models/{name}/drift``) computes per-feature PSI and KS in a thread
and sets the ``prediction_input_drift_*`` gauges.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from prometheus_client import CollectorRegistry, Gauge
from pydantic import BaseModel, Field

from ..errors import InvalidInput, NotFound
from ..registry.fsutil import atomic_write_bytes
from ..registry.layout import validate_name, validate_version

if TYPE_CHECKING:
    from ..registry import ModelVersion, RegistryReader
    from ..settings import DriftSettings
    from ..signature import ModelSignature
    from ..types import PredictionRecord

log = logging.getLogger(__name__)

PROFILE_FILE = "profile.json"
"""The reference profile's file inside a version directory."""
LEARNED_DIR = "drift"
"""Under the registry's state directory: profiles learned from production requests."""
PSI_EPSILON = 1e-4
"""Bin fractions are floored at this before the PSI's logarithm (an empty bin would make it infinite)."""
TOKEN_LENGTH, OOV_RATE = "token_length", "oov_rate"
WINDOW_MAX_BYTES = 16 * 2**20
"""A version's window also holds at most this many bytes of tensors (a text row is a whole token sequence)."""
LEARN_MAX_BYTES = 64 * 2**20
"""Bytes of tensors kept while a reference is learned (besides DRIFT_REFERENCE_MAX_ROWS)."""


# ---- the profile ---------------------------------------------------------------------------------------

class FeatureProfile(BaseModel):
    """One feature of the reference: its bins, the reference's fraction in each, and a sample for KS."""

    name: str
    edges: list[float]
    """Ascending bin edges: bin 0 is ``x <= edges[0]``, bin i is ``edges[i-1] < x <= edges[i]``, the last bin
    ``x > edges[-1]``; so ``len(fractions) == len(edges) + 1``."""
    fractions: list[float]
    continuous: bool
    """More distinct values than bins: quantile bins and a KS test. Otherwise one bin per value, PSI only."""
    sample: list[float] = Field(default_factory=list)
    """At most DRIFT_REFERENCE_SAMPLE reference values, for KS (continuous features only)."""


class InputProfile(BaseModel):
    """A model version's reference inputs, as stored in ``profile.json``."""

    format: Literal[1] = 1
    rows: int
    """Feature rows the profile was built from."""
    built_from: str
    """What the rows were: a validation file's name, or the first N requests."""
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    features: list[FeatureProfile]

    def feature(self, name: str) -> FeatureProfile | None:
        return next((f for f in self.features if f.name == name), None)


def profile_feature(name: str, values: np.ndarray, bins: int, sample_size: int,
                    rng: np.random.Generator) -> FeatureProfile:
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise InvalidInput(f"feature {name} has no finite reference value")
    distinct = np.unique(values)
    continuous = distinct.size > bins
    if continuous:
        edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
        sample = values if values.size <= sample_size else rng.choice(values, sample_size, replace=False)
    else:
        # one bin per value seen, a bin below the smallest and one above the largest: a constant feature that
        # moves still shows
        edges = np.concatenate(([np.nextafter(distinct[0], -np.inf)], distinct))
        sample = np.empty(0)
    fractions = _fractions(edges, values)
    return FeatureProfile(name=name, edges=edges.tolist(), fractions=fractions.tolist(), continuous=continuous,
                          sample=np.sort(sample).tolist())


def build_profile(columns: Mapping[str, np.ndarray], built_from: str, bins: int = 10,
                  sample_size: int = 2000, seed: int = 0) -> InputProfile:
    """A reference profile from per-feature reference values (``FeatureLayout.columns``)."""
    if not columns:
        raise InvalidInput("no feature to profile")
    rng = np.random.default_rng(seed)
    # a feature without a finite value (requests whose tensors did not fit) is left out; none at all is an error
    features = [profile_feature(name, values, bins, sample_size, rng) for name, values in columns.items()
                if np.isfinite(np.asarray(values, dtype=np.float64)).any()]
    if not features:
        raise InvalidInput("no feature has a finite reference value")
    rows = max(int(np.asarray(v).size) for v in columns.values())
    return InputProfile(rows=rows, built_from=built_from, features=features)


def _fractions(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return counts / max(int(counts.sum()), 1)


def psi(reference: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two bin-fraction vectors: sum((a - r) * ln(a / r)). 0 for the same
    distribution; above 0.1 a shift worth a look, above 0.25 a large one."""
    r = np.clip(np.asarray(reference, dtype=np.float64), PSI_EPSILON, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), PSI_EPSILON, None)
    return float(np.sum((a - r) * np.log(a / r)))


# ---- features of a model version --------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureLayout:
    """Which features a model version's tensors carry and how to read them: the same for the reference
    (validation inputs) and for production requests (the pre-processed tensors the model ran on)."""

    tensors: tuple[tuple[str, int], ...] = ()
    """(input name, columns kept) of a tensor model, in signature order."""
    text_ids: str | None = None
    text_mask: str | None = None
    pad_id: int = 0
    unk_id: int | None = None

    @classmethod
    def of(cls, signature: "ModelSignature", version_dir: Path | None, max_features: int) -> "FeatureLayout":
        text = signature.text
        if text is not None:
            pad_id, unk_id = _special_ids(version_dir / text.tokenizer) if version_dir is not None else (0, None)
            return cls(text_ids=text.input_ids, text_mask=text.attention_mask, pad_id=pad_id, unk_id=unk_id)
        tensors, left = [], max_features
        for spec in signature.inputs:
            if spec.dtype == "bool" or left <= 0:
                continue
            last = spec.shape[-1] if len(spec.shape) > 1 else 1
            if last < 1:  # a dynamic last dimension: its columns are not features with a fixed meaning
                continue
            tensors.append((spec.name, min(last, left)))
            left -= min(last, left)
        return cls(tensors=tuple(tensors))

    @property
    def names(self) -> list[str]:
        if self.text_ids is not None:
            return [TOKEN_LENGTH] + ([OOV_RATE] if self.unk_id is not None else [])
        return [f"{name}[{j}]" for name, columns in self.tensors for j in range(columns)]

    def columns(self, chunks: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Per feature, its values over every request in ``chunks`` (float64, 1-d). Requests whose tensors do
        not fit the layout are skipped."""
        if self.text_ids is not None:
            return self._text_columns(chunks)
        out: dict[str, np.ndarray] = {}
        for name, columns in self.tensors:
            parts = []
            for chunk in chunks:
                array = chunk.get(name)
                if array is None or array.ndim == 0:
                    continue
                rows = array.reshape(-1, array.shape[-1]) if array.ndim > 1 else array.reshape(-1, 1)
                if rows.shape[1] >= columns:
                    parts.append(rows[:, :columns])
            matrix = np.concatenate(parts).astype(np.float64, copy=False) if parts else np.empty((0, columns))
            for j in range(columns):
                out[f"{name}[{j}]"] = matrix[:, j]
        return out

    def _text_columns(self, chunks: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        lengths, oov = [], []
        for chunk in chunks:
            ids = chunk.get(self.text_ids)
            if ids is None or ids.ndim != 2:
                continue
            mask = chunk.get(self.text_mask) if self.text_mask else None
            valid = mask.astype(bool) if mask is not None and mask.shape == ids.shape else ids != self.pad_id
            length = valid.sum(axis=1)
            lengths.append(length)
            if self.unk_id is not None:
                oov.append(((ids == self.unk_id) & valid).sum(axis=1) / np.maximum(length, 1))
        out = {TOKEN_LENGTH: np.concatenate(lengths).astype(np.float64) if lengths else np.empty(0)}
        if self.unk_id is not None:
            out[OOV_RATE] = np.concatenate(oov).astype(np.float64) if oov else np.empty(0)
        return out


def _special_ids(vocab: Path) -> tuple[int, int | None]:
    """[PAD] and [UNK] ids of a vocab file (an id is the token's line number)."""
    pad_id, unk_id = 0, None
    try:
        with vocab.open(encoding="utf-8") as fh:
            for index, line in enumerate(fh):
                token = line.rstrip("\n")
                if token == "[PAD]":
                    pad_id = index
                elif token == "[UNK]":
                    unk_id = index
    except OSError:
        log.warning("drift: cannot read the vocabulary %s; the unknown-token rate is not tracked", vocab)
    return pad_id, unk_id


def load_reference_inputs(path: Path, signature: "ModelSignature") -> dict[str, np.ndarray]:
    """Validation inputs from an .npy (the model's sole input, or a text model's token ids) or an .npz (arrays
    named like the model's inputs). Never unpickles."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                return {name: np.asarray(loaded[name]) for name in loaded.files}
        array = np.asarray(loaded)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read validation inputs {path.name}: {exc}") from exc
    name = signature.text.input_ids if signature.text is not None else signature.inputs[0].name
    if signature.text is None and len(signature.inputs) != 1:
        raise InvalidInput(f"the model has {len(signature.inputs)} inputs: give an .npz with one array per input",
                           {"inputs": [s.name for s in signature.inputs]})
    return {name: array}


def profile_from_inputs(arrays: Mapping[str, np.ndarray], signature: "ModelSignature", version_dir: Path | None,
                        built_from: str, *, max_features: int = 128, bins: int = 10,
                        sample_size: int = 2000) -> InputProfile:
    """A version's reference profile from its validation inputs (the model's tensors, as it reads them)."""
    layout = FeatureLayout.of(signature, version_dir, max_features)
    needed = [layout.text_ids] if layout.text_ids else [name for name, _ in layout.tensors]
    missing = [name for name in needed if name not in arrays]
    if missing:
        raise InvalidInput(f"validation inputs lack {', '.join(missing)}", {"have": sorted(arrays),
                                                                           "need": needed})
    columns = layout.columns([arrays])
    if any(values.size == 0 for values in columns.values()):
        raise InvalidInput("validation inputs do not fit the model's input shapes",
                           {"shapes": {k: list(np.shape(v)) for k, v in arrays.items()}})
    return build_profile(columns, built_from, bins=bins, sample_size=sample_size)


# ---- drift of a window against the reference ---------------------------------------------------------

class FeatureDrift(BaseModel):
    name: str
    psi: float
    ks: float | None
    """Two-sample KS statistic against the reference sample (continuous features)."""
    ks_pvalue: float | None
    continuous: bool
    drifted: bool
    """PSI above DRIFT_PSI_THRESHOLD."""


def compare(profile: InputProfile, columns: Mapping[str, np.ndarray], threshold: float) -> list[FeatureDrift]:
    """Per feature of the reference, the window's PSI (and KS for continuous features)."""
    from scipy.stats import ks_2samp

    result = []
    for feature in profile.features:
        values = columns.get(feature.name)
        values = values[np.isfinite(values)] if values is not None else None
        if values is None or values.size == 0:
            continue
        value = psi(feature.fractions, _fractions(np.asarray(feature.edges), values))
        ks = pvalue = None
        if feature.continuous and feature.sample:
            test = ks_2samp(np.asarray(feature.sample), values)
            ks, pvalue = float(test.statistic), float(test.pvalue)
        result.append(FeatureDrift(name=feature.name, psi=round(value, 6), ks=ks, ks_pvalue=pvalue,
                                   continuous=feature.continuous, drifted=value > threshold))
    return result


# ---- the monitor -------------------------------------------------------------------------------------

class ReferenceState(StrEnum):
    PENDING = "pending"
    """Not looked up yet (the next refresh does)."""
    LEARNING = "learning"
    """No stored profile: the first requests are becoming the reference."""
    READY = "ready"
    UNTRACKED = "untracked"
    """The version's inputs carry no feature to track (bool tensors, a dynamic last dimension), or its first
    requests gave none: nothing is buffered for it."""


class VersionDrift(BaseModel):
    """One version's drift as ``GET /v1/models/{name}/drift`` answers it."""

    version: str
    state: ReferenceState
    reference_source: Literal["registry", "learned"] | None
    """registry: profile.json stored with the version; learned: the version's first requests."""
    reference_rows: int
    reference_built_from: str | None
    learning_requests: int
    """Requests taken into the reference so far (while learning), of DRIFT_REFERENCE_REQUESTS."""
    window_rows: int
    """Feature rows in the rolling window the figures below compare with the reference."""
    computed_at: datetime | None
    features: list[FeatureDrift]
    drifted: list[str]


class DriftReport(BaseModel):
    model: str
    psi_threshold: float
    versions: list[VersionDrift]


@dataclass
class _Tracker:
    """One model version: its reference, the learning buffer, the rolling window and the last figures."""

    model: str
    version: str
    state: ReferenceState = ReferenceState.PENDING
    layout: FeatureLayout | None = None
    profile: InputProfile | None = None
    source: Literal["registry", "learned"] | None = None
    window: deque = field(default_factory=deque)
    window_rows: int = 0
    window_bytes: int = 0
    learn: list = field(default_factory=list)
    learn_rows: int = 0
    learn_bytes: int = 0
    learn_requests: int = 0
    added: int = 0
    """Requests appended so far: the refresh skips a window that has not changed."""
    computed_added: int = -1
    computed_at: datetime | None = None
    features: list[FeatureDrift] = field(default_factory=list)
    last_seen: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def append(self, inputs: Mapping[str, np.ndarray], rows: int, size: int, limit: int) -> None:
        """Into the rolling window, which keeps the newest requests holding at least ``limit`` rows (fewer when
        they would take more than WINDOW_MAX_BYTES)."""
        self.window.append((inputs, rows, size))
        self.window_rows += rows
        self.window_bytes += size
        window = self.window
        while len(window) > 1 and (self.window_rows - window[0][1] >= limit or self.window_bytes > WINDOW_MAX_BYTES):
            _, dropped_rows, dropped_size = window.popleft()
            self.window_rows -= dropped_rows
            self.window_bytes -= dropped_size

    def clear_window(self) -> None:
        self.window.clear()
        self.window_rows = self.window_bytes = 0

    def learn_from(self, inputs: Mapping[str, np.ndarray], rows: int, size: int, settings: "DriftSettings") -> None:
        self.learn_requests += 1
        if self.learn_rows < settings.reference_max_rows and self.learn_bytes + size <= LEARN_MAX_BYTES:
            self.learn.append(inputs)
            self.learn_rows += rows
            self.learn_bytes += size


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    """Feature rows of a request from its first tensor's shape: [batch, ..., k] holds size / k rows (a text
    model's token ids [batch, tokens]: batch)."""
    for array in inputs.values():
        shape = getattr(array, "shape", None)
        if not shape:
            return 0
        return math.prod(shape[:-1]) if len(shape) > 1 else int(shape[0])
    return 0


class DriftGauges:
    """The drift gauges, in the service's registry. Label values are bounded: models x DRIFT_MAX_VERSIONS x
    DRIFT_MAX_FEATURES. Several workers: the highest worker's figure (livemax)."""

    def __init__(self, registry: CollectorRegistry):
        labels = ("model", "version", "feature")
        self.psi = Gauge("prediction_input_drift_psi", "Population stability index of an input feature: the "
                         "rolling window of answered requests against the version's reference profile.", labels,
                         registry=registry, multiprocess_mode="livemax")
        self.ks = Gauge("prediction_input_drift_ks", "Two-sample Kolmogorov-Smirnov statistic of a continuous "
                        "input feature against the reference sample.", labels, registry=registry,
                        multiprocess_mode="livemax")
        self.drifted = Gauge("prediction_input_drift_features", "Input features of a model version whose PSI is "
                             "above DRIFT_PSI_THRESHOLD.", ("model", "version"), registry=registry,
                             multiprocess_mode="livemax")
        self.window_rows = Gauge("prediction_input_drift_window_rows", "Feature rows in a model version's rolling "
                                 "drift window.", ("model", "version"), registry=registry, multiprocess_mode="livemax")


class DriftMonitor:
    """The prediction observer and its background refresh (module docstring)."""

    def __init__(self, settings: "DriftSettings", reader: "RegistryReader", metrics_registry: CollectorRegistry):
        self.settings = settings
        self.reader = reader
        self.learned_root = reader.layout.root / ".state" / LEARNED_DIR
        self._trackers: dict[tuple[str, str], _Tracker] = {}
        self.gauges = DriftGauges(metrics_registry)

    # ---- the observer (event loop, per answered request) -----------------------------------------------

    def observe(self, record: "PredictionRecord") -> None:
        if record.status != 200 or record.inputs is None or record.version is None:
            return
        tracker = self._trackers.get((record.model, record.version))
        if tracker is None:
            tracker = self._track(record.model, record.version)
        elif tracker.state is ReferenceState.UNTRACKED:
            return
        inputs = record.inputs
        rows, size = _rows(inputs), sum(getattr(a, "nbytes", 0) for a in inputs.values())
        tracker.added += 1
        tracker.last_seen = time.monotonic()
        if tracker.state is ReferenceState.LEARNING and tracker.learn_requests < self.settings.reference_requests:
            tracker.learn_from(inputs, rows, size, self.settings)
            return
        tracker.append(inputs, rows, size, self.settings.window_rows)

    def _track(self, model: str, version: str) -> _Tracker:
        tracker = _Tracker(model, version)
        self._trackers[(model, version)] = tracker
        versions = [t for t in self._trackers.values() if t.model == model]
        if len(versions) > self.settings.max_versions:  # bounded label values: forget the least recent version
            oldest = min(versions, key=lambda t: t.last_seen)
            self._forget(oldest)
        return tracker

    def _forget(self, tracker: _Tracker) -> None:
        self._trackers.pop((tracker.model, tracker.version), None)
        gauges = self.gauges
        for feature in tracker.features:
            for gauge in (gauges.psi, gauges.ks):
                try:
                    gauge.remove(tracker.model, tracker.version, feature.name)
                except KeyError:
                    pass
        for gauge in (gauges.drifted, gauges.window_rows):
            try:
                gauge.remove(tracker.model, tracker.version)
            except KeyError:
                pass

    # ---- the refresh (background, and on a drift request) ----------------------------------------------

    async def run(self) -> None:
        """Refresh every DRIFT_INTERVAL_SECONDS until cancelled."""
        while True:
            await asyncio.sleep(self.settings.interval_seconds)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a drift figure never takes the worker down
                log.exception("drift refresh failed")

    async def refresh(self, model: str | None = None) -> None:
        for tracker in [t for t in self._trackers.values() if model is None or t.model == model]:
            try:
                async with tracker.lock:
                    await self._refresh(tracker)
            except NotFound:
                self._forget(tracker)  # the version was deleted
            except Exception:  # noqa: BLE001 - one version's failure leaves the others' figures
                log.exception("drift refresh of %s %s failed", tracker.model, tracker.version)

    async def _refresh(self, tracker: _Tracker) -> None:
        settings = self.settings
        if tracker.state is ReferenceState.PENDING:
            layout, profile, source = await asyncio.to_thread(self._reference, tracker.model, tracker.version)
            tracker.layout = layout
            if not layout.names:
                tracker.state = ReferenceState.UNTRACKED
                tracker.clear_window()
                return
            if profile is not None:
                tracker.profile, tracker.source, tracker.state = profile, source, ReferenceState.READY
            else:  # what arrived before the lookup is the start of the reference
                tracker.state = ReferenceState.LEARNING
                pending = list(tracker.window)
                tracker.clear_window()
                for inputs, rows, size in pending:
                    if tracker.learn_requests < settings.reference_requests:
                        tracker.learn_from(inputs, rows, size, settings)
                    else:
                        tracker.append(inputs, rows, size, settings.window_rows)
        if tracker.state is ReferenceState.LEARNING and tracker.learn_requests >= settings.reference_requests:
            chunks, tracker.learn = tracker.learn, []
            tracker.learn_rows = tracker.learn_bytes = 0
            try:
                tracker.profile = await asyncio.to_thread(self._learn, tracker, chunks)
            except InvalidInput as exc:
                log.warning("drift: %s %s: no reference from its first requests (%s); not tracked", tracker.model,
                            tracker.version, exc.message)
                tracker.state = ReferenceState.UNTRACKED
                tracker.clear_window()
                return
            tracker.source, tracker.state = "learned", ReferenceState.READY
        if tracker.state is ReferenceState.READY and tracker.added != tracker.computed_added \
                and tracker.window_rows >= settings.min_window_rows:
            added, window = tracker.added, [inputs for inputs, _, _ in tracker.window]
            profile, layout = tracker.profile, tracker.layout
            assert profile is not None and layout is not None
            features = await asyncio.to_thread(lambda: compare(profile, layout.columns(window), settings.psi_threshold))
            tracker.features, tracker.computed_added = features, added
            tracker.computed_at = datetime.now(timezone.utc)
            self._export(tracker)

    def _export(self, tracker: _Tracker) -> None:
        if self._trackers.get((tracker.model, tracker.version)) is not tracker:
            return  # forgotten while its figures were computed: its label values stay gone
        model, version, gauges = tracker.model, tracker.version, self.gauges
        for feature in tracker.features:
            gauges.psi.labels(model, version, feature.name).set(feature.psi)
            if feature.ks is not None:
                gauges.ks.labels(model, version, feature.name).set(feature.ks)
        gauges.drifted.labels(model, version).set(sum(f.drifted for f in tracker.features))
        gauges.window_rows.labels(model, version).set(tracker.window_rows)

    def _reference(self, model: str, version: str
                   ) -> tuple[FeatureLayout, InputProfile | None, Literal["registry", "learned"] | None]:
        """(thread) The version's layout and its stored reference: profile.json, else a learned one."""
        target: ModelVersion = self.reader.get(model, version)
        layout = FeatureLayout.of(target.signature, target.path, self.settings.max_features)
        stored = target.path / PROFILE_FILE
        if stored.is_file():
            try:
                return layout, InputProfile.model_validate_json(stored.read_bytes()), "registry"
            except ValueError:
                log.warning("drift: %s is not a valid profile; learning one from requests", stored)
        learned = self._learned_path(model, version)
        if learned.is_file():
            try:
                return layout, InputProfile.model_validate_json(learned.read_bytes()), "learned"
            except ValueError:
                log.warning("drift: %s is not a valid profile; learning it again", learned)
        return layout, None, None

    def _learn(self, tracker: _Tracker, chunks: list) -> InputProfile:
        """(thread) The reference from the first requests, persisted (unless another worker got there first)."""
        path = self._learned_path(tracker.model, tracker.version)
        if path.is_file():
            try:
                return InputProfile.model_validate_json(path.read_bytes())
            except ValueError:
                pass
        assert tracker.layout is not None
        settings = self.settings
        profile = build_profile(tracker.layout.columns(chunks), f"the first {tracker.learn_requests} requests",
                                bins=settings.bins, sample_size=settings.reference_sample)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, profile.model_dump_json().encode())
        return profile

    def _learned_path(self, model: str, version: str) -> Path:
        return self.learned_root / validate_name(model) / f"v{validate_version(version)}.json"

    # ---- the report ----------------------------------------------------------------------------------

    async def report(self, model: str) -> DriftReport:
        """Every tracked version of ``model``, refreshed now."""
        await self.refresh(model)
        versions = []
        for tracker in sorted((t for t in self._trackers.values() if t.model == model), key=lambda t: t.version):
            profile = tracker.profile
            versions.append(VersionDrift(
                version=tracker.version, state=tracker.state, reference_source=tracker.source,
                reference_rows=profile.rows if profile else 0,
                reference_built_from=profile.built_from if profile else None,
                learning_requests=tracker.learn_requests if tracker.state is not ReferenceState.READY else 0,
                window_rows=tracker.window_rows, computed_at=tracker.computed_at, features=tracker.features,
                drifted=[f.name for f in tracker.features if f.drifted]))
        return DriftReport(model=model, psi_threshold=self.settings.psi_threshold, versions=versions)


def attach_drift(settings, dataplane, reader: "RegistryReader", metrics_registry: CollectorRegistry
                 ) -> DriftMonitor | None:
    """The service's drift monitor, observing ``dataplane``'s predictions; None when DRIFT_ENABLED is false."""
    if not settings.drift.enabled:
        return None
    monitor = DriftMonitor(settings.drift, reader, metrics_registry)
    dataplane.observers.append(monitor)
    return monitor
