"""Input drift: reference profiles, PSI and KS, the monitor's learned reference, ``registry register
--profile-from``, ``GET /v1/models/{name}/drift`` and the gauges."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from prediction_service.errors import InvalidInput
from prediction_service.monitoring.drift import (OOV_RATE, PROFILE_FILE, TOKEN_LENGTH, FeatureLayout, InputProfile,
                                                 build_profile, compare, load_reference_inputs, profile_from_inputs,
                                                 psi)
from prediction_service.settings import AuditSettings, DriftSettings, Settings
from prediction_service.signature import ModelSignature, TensorSpec, TextPreprocessing
from tests.support.asgi import served_app

MODEL = "tiny-regressor"
FEATURES = [f"x[{j}]" for j in range(4)]


def _rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    return rng.normal(shift, 1.0, size=(n, 4))


# ---- PSI and KS ----------------------------------------------------------------------------------------

def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shifted_one():
    rng = np.random.default_rng(1)
    profile = build_profile({"f": rng.normal(0, 1, 20_000)}, "test")
    feature = profile.features[0]
    assert feature.continuous and len(feature.fractions) == len(feature.edges) + 1
    same = compare(profile, {"f": rng.normal(0, 1, 5000)}, threshold=0.2)[0]
    shifted = compare(profile, {"f": rng.normal(1.0, 1, 5000)}, threshold=0.2)[0]
    wider = compare(profile, {"f": rng.normal(0, 2.0, 5000)}, threshold=0.2)[0]
    assert same.psi < 0.02 and not same.drifted
    assert shifted.psi > 0.5 and shifted.drifted
    assert wider.psi > 0.2 and wider.drifted
    assert same.ks < 0.05 < shifted.ks and shifted.ks_pvalue < 1e-6 < same.ks_pvalue


def test_psi_of_bin_fractions():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * np.log(1.8) - 0.4 * np.log(0.2))
    assert np.isfinite(psi([1.0, 0.0], [0.0, 1.0]))  # empty bins are floored, never infinite


def test_a_discrete_feature_gets_a_bin_per_value_and_a_constant_that_moves_drifts():
    rng = np.random.default_rng(2)
    profile = build_profile({"side": rng.integers(0, 3, 1000).astype(float), "flag": np.zeros(1000)}, "test")
    side, flag = profile.features
    assert not side.continuous and not side.sample and len(side.fractions) == 5  # below, 0, 1, 2, above
    assert compare(profile, {"side": rng.integers(0, 3, 1000).astype(float)}, 0.2)[0].psi < 0.02
    moved = compare(profile, {"flag": np.ones(500)}, 0.2)[0]
    assert moved.name == "flag" and moved.drifted and moved.ks is None


def test_the_reference_sample_is_capped_and_the_profile_round_trips_through_json():
    rng = np.random.default_rng(3)
    profile = build_profile({"f": rng.normal(0, 1, 10_000)}, "validation.npy", sample_size=300)
    assert len(profile.features[0].sample) == 300 and profile.rows == 10_000
    again = InputProfile.model_validate_json(profile.model_dump_json())
    assert again == profile


# ---- features of a version ------------------------------------------------------------------------------

def test_a_bars_tensor_is_rows_by_features_and_features_are_capped():
    signature = ModelSignature(inputs=[TensorSpec(name="bars", dtype="float32", shape=(-1, 60, 7))],
                               outputs=[TensorSpec(name="y", dtype="float32", shape=(-1, 1))])
    layout = FeatureLayout.of(signature, None, max_features=5)
    assert layout.names == [f"bars[{j}]" for j in range(5)]
    batch = np.arange(2 * 60 * 7, dtype=np.float32).reshape(2, 60, 7)
    columns = layout.columns([{"bars": batch}, {"bars": batch[:1]}])
    assert columns["bars[3]"].shape == (180,)
    assert columns["bars[3]"][:3].tolist() == [3.0, 10.0, 17.0]


def test_text_features_are_token_length_and_unknown_token_rate(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "buy", "sell"]) + "\n")
    signature = ModelSignature(
        inputs=[TensorSpec(name="input_ids", dtype="int64", shape=(-1, 6)),
                TensorSpec(name="attention_mask", dtype="int64", shape=(-1, 6))],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=(-1, 3))],
        task="classification", labels=["a", "b", "c"],
        text=TextPreprocessing(tokenizer="vocab.txt", max_length=6))
    layout = FeatureLayout.of(signature, tmp_path, max_features=128)
    assert layout.names == [TOKEN_LENGTH, OOV_RATE] and layout.unk_id == 1
    ids = np.array([[2, 4, 1, 3, 0, 0], [2, 1, 1, 5, 3, 0]])
    columns = layout.columns([{"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}])
    assert columns[TOKEN_LENGTH].tolist() == [4.0, 5.0]
    assert columns[OOV_RATE].tolist() == [0.25, 0.4]


def test_validation_inputs_that_do_not_fit_the_model_are_refused(tmp_path):
    signature = ModelSignature(inputs=[TensorSpec(name="x", dtype="float32", shape=(-1, 4))],
                               outputs=[TensorSpec(name="y", dtype="float32", shape=(-1, 1))])
    np.savez(tmp_path / "wrong.npz", other=np.zeros((3, 4)))
    with pytest.raises(InvalidInput, match="lack x"):
        profile_from_inputs(load_reference_inputs(tmp_path / "wrong.npz", signature), signature, None, "wrong.npz")
    np.save(tmp_path / "narrow.npy", np.zeros((3, 2)))
    with pytest.raises(InvalidInput, match="do not fit"):
        profile_from_inputs(load_reference_inputs(tmp_path / "narrow.npy", signature), signature, None, "n.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(InvalidInput, match="cannot read"):
        load_reference_inputs(tmp_path / "junk.npy", signature)


# ---- through the app ---------------------------------------------------------------------------------

def _settings(store: Path, **drift) -> Settings:
    options = {"reference_requests": 50, "min_window_rows": 40, "interval_seconds": 3600.0, **drift}
    return Settings(model_store=store, audit=AuditSettings(enabled=False), drift=DriftSettings(**options))


async def _send(http, rows: np.ndarray, version: str | None = None) -> None:
    for start in range(0, len(rows), 8):
        body = {"inputs": {"x": rows[start:start + 8].tolist()}, **({"version": version} if version else {})}
        response = await http.post(f"/v1/models/{MODEL}/predict", json=body)
        assert response.status_code == 200, response.text


async def _drift(http, version: str = "1.0.0") -> dict:
    response = await http.get(f"/v1/models/{MODEL}/drift")
    assert response.status_code == 200, response.text
    return next(v for v in response.json()["versions"] if v["version"] == version)


async def test_the_first_requests_become_the_reference_and_a_shift_shows(tiny_store):
    rng = np.random.default_rng(4)
    metrics = CollectorRegistry()
    async with served_app(_settings(tiny_store), metrics_registry=metrics) as (_, http):
        await _send(http, _rows(rng, 400))  # 50 requests of 8 rows: the reference
        learned = await _drift(http)
        assert learned["state"] == "ready" and learned["reference_source"] == "learned"
        assert learned["reference_rows"] == 400 and learned["window_rows"] == 0 and learned["features"] == []
        await _send(http, _rows(rng, 400))  # same distribution
        calm = await _drift(http)
        assert calm["window_rows"] == 400 and [f["name"] for f in calm["features"]] == FEATURES
        assert calm["drifted"] == []
        await _send(http, _rows(rng, 400, shift=3.0))  # a regime change
        shifted = await _drift(http)
        assert shifted["window_rows"] == 800 and shifted["drifted"] == FEATURES  # half of the window moved
        assert min(f["psi"] for f in shifted["features"]) > 0.5
        assert all(f["ks"] > 0.3 > c["ks"] for f, c in zip(shifted["features"], calm["features"]))
        exported = (await http.get("/metrics")).text
    psi_value = metrics.get_sample_value("prediction_input_drift_psi",
                                         {"model": MODEL, "version": "1.0.0", "feature": "x[2]"})
    assert psi_value == pytest.approx(shifted["features"][2]["psi"])
    assert metrics.get_sample_value("prediction_input_drift_features", {"model": MODEL, "version": "1.0.0"}) == 4
    assert 'prediction_input_drift_ks{feature="x[0]",model="tiny-regressor",version="1.0.0"}' in exported
    persisted = tiny_store / ".state" / "drift" / MODEL / "v1.0.0.json"
    assert InputProfile.model_validate_json(persisted.read_bytes()).rows == 400


async def test_a_restart_keeps_the_learned_reference(tiny_store):
    rng = np.random.default_rng(5)
    async with served_app(_settings(tiny_store)) as (_, http):
        await _send(http, _rows(rng, 400))
        assert (await _drift(http))["reference_source"] == "learned"
    async with served_app(_settings(tiny_store)) as (_, http):
        await _send(http, _rows(rng, 48, shift=-3.0))  # after the restart: no new learning, straight to the window
        drift = await _drift(http)
    assert drift["reference_source"] == "learned" and drift["reference_rows"] == 400
    assert drift["window_rows"] == 48 and drift["drifted"] == FEATURES


async def test_the_endpoint_refuses_unknown_models_and_needs_read_scope(tiny_store):
    settings = _settings(tiny_store)
    settings.security.api_keys = "admin-key,reader:read"
    async with served_app(settings) as (_, http):
        assert (await http.get(f"/v1/models/{MODEL}/drift")).status_code == 401
        assert (await http.get(f"/v1/models/{MODEL}/drift", headers={"X-API-Key": "wrong"})).status_code == 401
        answer = await http.get(f"/v1/models/{MODEL}/drift", headers={"X-API-Key": "reader"})
        assert answer.status_code == 200 and answer.json()["psi_threshold"] == 0.2
        missing = await http.get("/v1/models/no-such-model/drift", headers={"X-API-Key": "reader"})
        assert missing.status_code == 404
        bad = await http.get("/v1/models/Bad..Name/drift", headers={"X-API-Key": "reader"})
        assert bad.status_code == 400
    async with served_app(_settings(tiny_store, enabled=False)) as (_, http):
        off = await http.get(f"/v1/models/{MODEL}/drift")
    assert off.status_code == 404 and "DRIFT_ENABLED" in off.json()["error"]["message"]


async def test_register_profile_from_stores_the_profile_and_the_server_uses_it(tiny_store, tmp_path):
    from tests.registry.conftest import run_cli

    onnx = next((tiny_store / MODEL / "v1.0.0").glob("*.onnx"))
    np.save(tmp_path / "validation.npy", np.random.default_rng(6).normal(0, 1, (500, 4)).astype(np.float32))
    run_cli("registry", "register", MODEL, "3.0.0", "--artifact", str(onnx), "--profile-from",
            str(tmp_path / "validation.npy"), "--store", str(tiny_store))
    stored = InputProfile.model_validate_json((tiny_store / MODEL / "v3.0.0" / PROFILE_FILE).read_bytes())
    assert stored.rows == 500 and stored.built_from == "validation.npy"
    assert [f.name for f in stored.features] == FEATURES
    assert not list((tiny_store / ".state" / "uploads").glob("*"))  # the staging copy is gone
    refused = run_cli("registry", "register", MODEL, "3.0.1", "--artifact", str(onnx), "--profile-from",
                      str(tmp_path / "missing.npy"), "--store", str(tiny_store), check=False)
    assert refused.returncode == 1 and "missing.npy" in refused.stderr
    assert not (tiny_store / MODEL / "v3.0.1").exists()
    rng = np.random.default_rng(11)
    async with served_app(_settings(tiny_store)) as (_, http):
        await _send(http, _rows(rng, 400), version="3.0.0")
        calm = await _drift(http, "3.0.0")
        await _send(http, _rows(rng, 400, shift=-2.0), version="3.0.0")
        shifted = await _drift(http, "3.0.0")
    assert calm["reference_source"] == "registry" and calm["reference_rows"] == 500 and calm["drifted"] == []
    assert shifted["drifted"] == FEATURES


async def test_the_server_uses_the_stored_profile(tiny_store, tmp_path):
    from prediction_service.registry import ModelRegistry

    rng = np.random.default_rng(7)
    version = ModelRegistry(tiny_store).get(MODEL, "1.0.0")
    profile = profile_from_inputs({"x": _rows(rng, 2000)}, version.signature, version.path, "validation.npz")
    (version.path / PROFILE_FILE).write_text(profile.model_dump_json())
    async with served_app(_settings(tiny_store)) as (_, http):
        await _send(http, _rows(rng, 64))  # no learning: the stored profile is the reference
        calm = await _drift(http)
        assert calm["reference_source"] == "registry" and calm["reference_rows"] == 2000
        assert calm["window_rows"] == 64 and calm["drifted"] == []
        await _send(http, _rows(rng, 400, shift=2.0))
        shifted = await _drift(http)
    assert shifted["drifted"] == FEATURES
    assert not (tiny_store / ".state" / "drift").exists()  # nothing learned, nothing persisted
    json.dumps(shifted)  # the answer is plain JSON


# ---- the monitor on its own ------------------------------------------------------------------------------

def _record(version: str, rows: np.ndarray, status: int = 200):
    from prediction_service.types import PredictionRecord, RequestContext

    return PredictionRecord(context=RequestContext(), model=MODEL, version=version, stage=None, arm=None,
                            experiment_id=None, latency_ms=1.0, status=status,
                            inputs={"x": rows.astype(np.float32)})


async def test_the_window_keeps_the_newest_rows_and_versions_are_bounded(tiny_store):
    from prediction_service.monitoring.drift import DriftMonitor
    from prediction_service.registry import RegistryReader

    rng = np.random.default_rng(8)
    metrics = CollectorRegistry()
    settings = DriftSettings(reference_requests=10, window_rows=100, min_window_rows=10, max_versions=1)
    monitor = DriftMonitor(settings, RegistryReader(tiny_store), metrics)
    for _ in range(10):
        monitor.observe(_record("1.0.0", _rows(rng, 8)))
    monitor.observe(_record("1.0.0", _rows(rng, 8) + 5, status=422))  # failed requests are not inputs seen
    await monitor.refresh()
    for _ in range(50):
        monitor.observe(_record("1.0.0", _rows(rng, 8)))
    report = await monitor.report(MODEL)
    [drift] = report.versions
    assert drift.reference_rows == 80 and 100 <= drift.window_rows < 108  # the newest 13 requests
    labels = {"model": MODEL, "version": "1.0.0"}
    assert metrics.get_sample_value("prediction_input_drift_window_rows", labels) == drift.window_rows
    monitor.observe(_record("2.0.0", _rows(rng, 8)))  # a second version: the older one is dropped
    assert [v.version for v in (await monitor.report(MODEL)).versions] == ["2.0.0"]
    assert metrics.get_sample_value("prediction_input_drift_window_rows", labels) is None
    assert metrics.get_sample_value("prediction_input_drift_psi", {**labels, "feature": "x[0]"}) is None


async def test_a_version_without_trackable_features_buffers_nothing(tiny_store):
    from prediction_service.monitoring.drift import DriftMonitor, ReferenceState
    from prediction_service.registry import ModelRegistry

    registry = ModelRegistry(tiny_store)
    version = registry.get(MODEL, "2.0.0")
    meta = version.path / "metadata.json"
    document = json.loads(meta.read_text())
    document["signature"]["inputs"][0]["shape"] = [-1, -1]  # no fixed feature columns
    meta.write_text(json.dumps(document))
    monitor = DriftMonitor(DriftSettings(), registry.reader, CollectorRegistry())
    monitor.observe(_record("2.0.0", np.zeros((4, 4))))
    [drift] = (await monitor.report(MODEL)).versions
    assert drift.state == ReferenceState.UNTRACKED and drift.window_rows == 0
    monitor.observe(_record("2.0.0", np.zeros((4, 4))))
    assert (await monitor.report(MODEL)).versions[0].window_rows == 0


async def test_the_window_is_bounded_in_bytes_too(tiny_store, monkeypatch):
    from prediction_service.monitoring import drift
    from prediction_service.registry import RegistryReader

    monkeypatch.setattr(drift, "WINDOW_MAX_BYTES", 1000)  # 7 requests of 8 x 4 float32 (128 bytes each)
    monitor = drift.DriftMonitor(DriftSettings(window_rows=100, min_window_rows=1), RegistryReader(tiny_store),
                                 CollectorRegistry())
    rng = np.random.default_rng(9)
    for _ in range(30):
        monitor.observe(_record("1.0.0", _rows(rng, 8)))
    [tracker] = monitor._trackers.values()
    assert tracker.window_bytes <= 1000 and tracker.window_rows == 56 and len(tracker.window) == 7


async def test_text_and_bars_models_of_the_demo(demo_store, tmp_path):
    """Text: token length and the unknown-token rate of the tokenized requests; bars: the pre-processed features."""
    import shutil

    from prediction_service.registry import RegistryReader

    store = tmp_path / "store"
    shutil.copytree(demo_store, store, symlinks=True)
    bars_step = RegistryReader(store).resolve("lstm-price", stage="production").signature.bars
    rng = np.random.default_rng(10)
    words = "shares rally after strong earnings beat stocks fall on weak guidance profit warning".split()

    def texts(n: int, unknown: bool = False) -> list[str]:
        pool = ["qzxv", "blorf", "wuggle", "snarf"] if unknown else words
        return [" ".join(rng.choice(pool, size=rng.integers(3, 9))) for _ in range(n)]

    def windows(n: int, volatility: float) -> list:
        returns = rng.normal(0, volatility, size=(n, bars_step.min_bars))
        close = 100 * np.exp(np.cumsum(returns, axis=1))
        high, low = close * (1 + volatility), close * (1 - volatility)
        volume = rng.uniform(1e4, 2e4, size=close.shape)
        return np.stack([close, high, low, close, volume], axis=-1).tolist()

    settings = _settings(store, reference_requests=30, min_window_rows=20)
    async with served_app(settings) as (_, http):
        for _ in range(30):  # the references
            assert (await http.post("/v1/models/sentiment-transformer/predict",
                                    json={"text": texts(4)})).status_code == 200
            assert (await http.post("/v1/models/lstm-price/predict",
                                    json={"bars": windows(2, 0.001)})).status_code == 200
        for _ in range(10):
            await http.post("/v1/models/sentiment-transformer/predict", json={"text": texts(4, unknown=True)})
            await http.post("/v1/models/lstm-price/predict", json={"bars": windows(2, 0.05)})
        text = (await http.get("/v1/models/sentiment-transformer/drift")).json()["versions"][0]
        bars = (await http.get("/v1/models/lstm-price/drift")).json()["versions"][0]
    assert [f["name"] for f in text["features"]] == [TOKEN_LENGTH, OOV_RATE]
    assert text["reference_rows"] == 120 and text["window_rows"] == 40 and OOV_RATE in text["drifted"]
    assert bars["reference_rows"] == 30 * 2 * bars_step.window and len(bars["features"]) == bars_step.n_features
    assert bars["drifted"]  # ten times the volatility moves the normalised prices
