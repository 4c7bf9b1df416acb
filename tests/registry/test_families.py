"""Model families: members registered with --symbol / --timeframe / --model-type, found by POST /v1/forecast
in production, on the same guarded path as /v1 predict."""

from __future__ import annotations

import asyncio
import shutil
import time

from prediction_service.cli import main as cli
from prediction_service.registry.families import FamilyIndex, FamilyKey
from prediction_service.registry.reader import RegistryReader
from tests.support.asgi import served_app

ROW = [1.0, 2.0, 3.0, 4.0]


def register_member(store, onnx, name: str, symbol: str, timeframe: str = "1m", model_type: str = "lstm") -> None:
    assert cli(["registry", "register", name, "1.0.0", "--store", str(store), "--artifact", f"onnx={onnx}",
                "--symbol", symbol, "--timeframe", timeframe, "--model-type", model_type]) == 0
    assert cli(["registry", "promote", name, "1.0.0", "--store", str(store), "--force"]) == 0


def onnx_of(tiny_store, tmp_path):
    path = tmp_path / "member.onnx"
    shutil.copy(tiny_store / "tiny-regressor" / "v1.0.0" / "model.onnx", path)
    return path


async def test_a_forecast_reaches_the_member_for_its_symbol(tiny_store, tmp_path):
    onnx = onnx_of(tiny_store, tmp_path)
    for symbol in ("aapl", "msft"):
        register_member(tiny_store, onnx, f"lstm-{symbol}-1m", symbol.upper())
    register_member(tiny_store, onnx, "patch-aapl-5m", "AAPL", "5m", "patchtst")
    async with served_app(model_store=tiny_store) as (_, http):
        answer = await http.post("/v1/forecast", json={"symbol": "MSFT", "timeframe": "1m", "model_type": "lstm",
                                                       "instance": ROW})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["model"], body["version"], body["stage"]) == ("lstm-msft-1m", "1.0.0", "production")
        direct = (await http.post("/v1/models/lstm-msft-1m/predict", json={"instance": ROW})).json()
        assert body["predictions"] == direct["predictions"]

        missing = await http.post("/v1/forecast", json={"symbol": "AAPL", "timeframe": "1h", "model_type": "lstm",
                                                        "instance": ROW})
        assert missing.status_code == 404
        assert sorted(missing.json()["error"]["details"]["available"]) == ["1m lstm", "5m patchtst"]
        unknown = await http.post("/v1/forecast", json={"symbol": "TSLA", "timeframe": "1m", "model_type": "lstm",
                                                        "instance": ROW})
        assert unknown.status_code == 404 and "TSLA" in unknown.json()["error"]["message"]

        bad = await http.post("/v1/forecast", json={"symbol": "AAPL", "instance": ROW})
        assert bad.status_code == 422 and bad.json()["error"]["details"]["fields"] == ["timeframe", "model_type"]
        wrong_rows = await http.post("/v1/forecast", json={"symbol": "AAPL", "timeframe": "1m", "model_type": "lstm",
                                                           "instance": [1.0]})
        assert wrong_rows.status_code == 422  # validated by the member's signature, like /v1 predict

        # a member registered while the server runs is found without a restart (a miss looks again at most
        # once a second, the stage poll too): wait for it, with a hang guard
        register_member(tiny_store, onnx, "lstm-tsla-1m", "TSLA")
        deadline = time.monotonic() + 30
        while True:
            late = await http.post("/v1/forecast", json={"symbol": "TSLA", "timeframe": "1m", "model_type": "lstm",
                                                         "instance": ROW})
            if late.status_code != 404 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert late.status_code == 200 and late.json()["model"] == "lstm-tsla-1m"


def test_only_production_versions_and_complete_tags_make_members(tiny_store, tmp_path):
    onnx = onnx_of(tiny_store, tmp_path)
    assert cli(["registry", "register", "staged-only", "1.0.0", "--store", str(tiny_store), "--artifact",
                f"onnx={onnx}", "--symbol", "IBM", "--timeframe", "1m", "--model-type", "lstm"]) == 0
    assert cli(["registry", "register", "half-tagged", "1.0.0", "--store", str(tiny_store), "--artifact",
                f"onnx={onnx}", "--symbol", "IBM"]) != 0  # all three or none
    index = FamilyIndex(RegistryReader(tiny_store))
    index.refresh()
    assert index.member(FamilyKey("IBM", "1m", "lstm")) is None  # registered, never promoted: not a member yet


async def test_members_load_on_first_use_and_leave_under_the_memory_budget(tiny_store, tmp_path):
    from prediction_service.settings import Settings, SimpleSettings

    onnx = onnx_of(tiny_store, tmp_path)
    for symbol in ("aapl", "msft", "ibm"):
        register_member(tiny_store, onnx, f"lstm-{symbol}-1m", symbol.upper())
    # a budget below anything measurable: only the member just used may stay
    settings = Settings(model_store=tiny_store, simple=SimpleSettings(cache_size_mb=0.000001))
    async with served_app(settings) as (_, http):
        def loaded(listing):
            return {m["name"]: m["loaded_versions"] for m in listing if m["name"].startswith("lstm-")}

        assert loaded((await http.get("/v1/models")).json()) == {f"lstm-{s}-1m": [] for s in ("aapl", "msft", "ibm")}
        for symbol in ("AAPL", "MSFT"):
            answer = await http.post("/v1/forecast", json={"symbol": symbol, "timeframe": "1m", "model_type": "lstm",
                                                           "instance": ROW})
            assert answer.status_code == 200, answer.text
        now = loaded((await http.get("/v1/models")).json())
        assert now == {"lstm-aapl-1m": [], "lstm-msft-1m": ["1.0.0"], "lstm-ibm-1m": []}  # aapl left for msft
        ready = await http.get("/health/ready")
        assert "lstm-" not in ready.text  # members are not what readiness waits for
