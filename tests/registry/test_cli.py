"""``python -m prediction_service registry ...`` in real subprocesses."""

from __future__ import annotations

import json
import os
import threading

from prediction_service.registry import RegistryReader

from .conftest import run_cli


def test_cli_register_promote_show_compare_json(tmp_path, onnx_models):
    store = str(tmp_path / "store")
    run_cli("registry", "register", "price", "1.0.0", "--artifact", str(onnx_models["a"]), "--metric", "mae=0.5",
            "--store", store, "--actor", "alice")
    run_cli("registry", "register", "price", "1.1.0", "--artifact", f"onnx={onnx_models['b']}", "--metric",
            "mae=0.4", "--store", store)
    assert "is now production" in run_cli("registry", "promote", "price", "1.0.0", "--store", store).stdout
    listed = json.loads(run_cli("registry", "list", "--store", store, "--json").stdout)
    assert listed == [{"model": "price", "production": "1.0.0", "staging": None, "versions": 2}]
    compared = json.loads(run_cli("registry", "compare", "price", "1.0.0", "1.1.0", "--store", store,
                                  "--json").stdout)
    assert compared["metrics"][0]["metric"] == "mae" and abs(compared["metrics"][0]["delta"] + 0.1) < 1e-9
    shown = json.loads(run_cli("registry", "show", "price", "--store", store, "--json").stdout)
    assert shown["version"] == "1.0.0" and shown["status"] == "production"
    events = json.loads(run_cli("registry", "events", "price", "--store", store, "--json").stdout)
    assert events[0]["actor"] == "alice" and events[-1]["to_stage"] == "production"


def test_cli_domain_errors_exit_nonzero_with_a_clear_message(tmp_path, onnx_models):
    store = str(tmp_path / "store")
    run_cli("registry", "register", "price", "1.0.0", "--artifact", str(onnx_models["a"]), "--store", store)
    run_cli("registry", "promote", "price", "1.0.0", "--store", store)
    refused = run_cli("registry", "delete", "price", "1.0.0", "--store", store, check=False)
    assert refused.returncode == 1 and "error [stage_in_use]" in refused.stderr
    bad = run_cli("registry", "promote", "../etc", "1.0.0", "--store", store, check=False)
    assert bad.returncode == 1 and "error [invalid_name]" in bad.stderr
    missing = run_cli("registry", "show", "price", "9.9.9", "--store", store, check=False)
    assert missing.returncode == 1 and "version_not_found" in missing.stderr


CLI_FLIPS = 8
"""Promotions by separate CLI processes (an interpreter start each): four round trips."""


def test_production_moves_back_and_forth_by_cli_while_a_reader_resolves(two_versions):
    reg = two_versions
    reg.promote("price", "1.0.0")
    link = reg.layout.stage_link("price", "production")
    reader = RegistryReader(reg.root)
    stop = threading.Event()
    seen: dict[str, int] = {}
    failures: list[str] = []

    def resolve_continuously() -> None:
        while not stop.is_set():
            try:
                target = os.readlink(link)
                version = reader.resolve("price").version
                seen[version] = seen.get(version, 0) + 1
                if not target.startswith("v"):
                    failures.append(f"bad target {target}")
            except Exception as exc:  # any failure to resolve is what this test exists to catch
                failures.append(repr(exc))
            stop.wait(0.001)

    thread = threading.Thread(target=resolve_continuously)
    thread.start()
    try:
        for i in range(CLI_FLIPS):
            target = ("1.1.0", "1.0.0")[i % 2]
            run_cli("registry", "promote", "price", target, "--store", str(reg.root), "--actor", "ops")
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert set(seen) == {"1.0.0", "1.1.0"}
    assert reg.resolve("price").version == "1.0.0"
    moves = [e for e in reg.model_events("price") if e.event == "stage_change" and e.to_stage == "production"]
    assert len(moves) == CLI_FLIPS + 1 and all(e.actor == "ops" for e in moves[1:])


# ---- the serving contract at promotion ----------------------------------------------------------------------

def test_a_bare_artifact_cannot_drop_the_bars_step_and_a_smoke_run_cannot_replace_parity(tmp_path, bars_models):
    """The story of issue 27: production declares a bars step and has a numeric parity report; a bare ONNX of
    the same graph shape loses the step (clients sending raw bars would get 422) and has only a smoke run."""
    store = str(tmp_path / "store")
    run_cli("registry", "register", "lstm-price", "1.1.0", "--artifact", str(bars_models["a"]), "--signature",
            str(bars_models["signature"]), "--validation", str(bars_models["parity"]), "--store", store)
    run_cli("registry", "promote", "lstm-price", "1.1.0", "--store", store)

    bare = run_cli("registry", "register", "lstm-price", "9.9.9", "--artifact", str(bars_models["b"]),
                   "--store", store, check=False)
    assert bare.returncode == 1 and "error [contract_changed]" in bare.stderr
    assert "declares a bars step ohlcv_window(" in bare.stderr and "--allow-contract-change" in bare.stderr
    run_cli("registry", "register", "lstm-price", "9.9.9", "--artifact", str(bars_models["b"]),
            "--allow-contract-change", "--store", store, "--actor", "carol")

    compared = run_cli("registry", "compare", "lstm-price", "1.1.0", "9.9.9", "--store", store).stdout
    assert "contract: 1 difference" in compared and "contract: identical" not in compared
    assert "preprocessing.bars: ohlcv_window(" in compared and "-> none" in compared
    as_json = json.loads(run_cli("registry", "compare", "lstm-price", "1.1.0", "9.9.9", "--store", store,
                                 "--json").stdout)
    assert [c["field"] for c in as_json["contract_changes"]] == ["preprocessing.bars"]

    smoke_only = run_cli("registry", "promote", "lstm-price", "9.9.9", "--store", store, check=False)
    assert smoke_only.returncode == 1 and "error [promotion_refused]" in smoke_only.stderr
    assert "only a smoke run" in smoke_only.stderr and "numeric_parity" in smoke_only.stderr
    changed = run_cli("registry", "promote", "lstm-price", "9.9.9", "--force", "--store", store, check=False)
    assert changed.returncode == 1 and "error [contract_changed]" in changed.stderr
    details = json.loads(changed.stderr.splitlines()[-1])
    assert details["production_version"] == "1.1.0"
    assert [d["field"] for d in details["differences"]] == ["preprocessing.bars"]
    shown = json.loads(run_cli("registry", "show", "lstm-price", "--store", store, "--json").stdout)
    assert shown["version"] == "1.1.0"

    done = run_cli("registry", "promote", "lstm-price", "9.9.9", "--force", "--allow-contract-change", "--store",
                   store, "--actor", "carol")
    assert "is now production" in done.stdout and "serving contract changed" in done.stdout
    events = json.loads(run_cli("registry", "events", "lstm-price", "--store", store, "--json").stdout)
    registered = next(e for e in events if e["event"] == "registered" and e["version"] == "9.9.9")
    assert registered["details"]["contract_change_allowed"][0]["field"] == "preprocessing.bars"
    change = next(e for e in events if e["event"] == "contract_change")
    assert change["version"] == "9.9.9" and change["actor"] == "carol"
    assert change["details"]["production_version"] == "1.1.0"
    assert change["details"]["differences"][0]["field"] == "preprocessing.bars"


def test_a_version_with_the_same_contract_promotes_without_an_override(tmp_path, bars_models):
    store = str(tmp_path / "store")
    for version, model in (("1.1.0", "a"), ("1.2.0", "b")):
        run_cli("registry", "register", "lstm-price", version, "--artifact", str(bars_models[model]), "--signature",
                str(bars_models["signature"]), "--validation", str(bars_models["parity"]), "--store", store)
    run_cli("registry", "promote", "lstm-price", "1.1.0", "--store", store)
    assert "contract: identical" in run_cli("registry", "compare", "lstm-price", "1.1.0", "1.2.0", "--store",
                                            store).stdout
    done = run_cli("registry", "promote", "lstm-price", "1.2.0", "--store", store).stdout
    assert "is now production" in done and "contract changed" not in done
