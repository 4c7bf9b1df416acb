"""What a registry write leaves when it fails: a registration whose event cannot be written leaves no
version (it and its event succeed or fail together), and a write to a name that does not exist leaves
the registry root exactly as it was (no directory, no lock file)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from prediction_service.api.routes.registry import router
from prediction_service.ensemble import EnsembleMember, EnsembleRegistry, WeightedPriceSentiment
from prediction_service.errors import ModelNotFound
from prediction_service.registry import ModelRegistry
from prediction_service.registry.model_version import ValidationReport
from prediction_service.registry.store import LOCK_FILE, writer_lock
from prediction_service.settings import SecuritySettings, Settings, StateSettings
from prediction_service.state import StateUnavailable
from tests.registry.conftest import onnx_artifact
from tests.support.asgi import asgi_client, router_app

ADMIN = {"X-API-Key": "admin-secret"}
MEMBERS = (EnsembleMember(role="price", model="tiny-regressor"),
           EnsembleMember(role="sentiment", model="tiny-classifier"))
COMBINER = WeightedPriceSentiment(positive_label="up", negative_label="down")


def unreachable_state() -> StateSettings:
    with socket.socket() as sock:  # bound, then released: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return StateSettings(database_url=f"postgresql://nobody@127.0.0.1:{port}/state", connect_timeout_seconds=1)


def tree(root: Path) -> list[str]:
    """Every path under the registry root but the state database's files."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if ".state" not in p.parts)


# ---- registration and its event: together or not at all ----------------------------------------------

def test_a_model_version_whose_event_cannot_be_written_is_not_registered(two_versions, onnx_models):
    root = two_versions.root
    before = tree(root)
    broken = ModelRegistry(root, repair=False, state=unreachable_state())
    for name in ("price", "fresh"):  # a new version of a model, and a model's first version
        with pytest.raises(StateUnavailable):
            broken.register(name, "2.0.0", onnx_artifact(onnx_models["a"]))
    reopened = ModelRegistry(root)
    assert [v.version for v in reopened.versions("price")] == ["1.0.0", "1.1.0"]
    assert "fresh" not in reopened.model_names()
    assert [p for p in tree(root) if p not in before] in ([], ["fresh", f"fresh/{LOCK_FILE}"])  # no version, no temp

    reopened.register("price", "2.0.0", onnx_artifact(onnx_models["a"]), actor="retry")  # nothing in the way
    registered = [(e.version, e.actor) for e in reopened.model_events("price") if e.event == "registered"]
    assert registered == [("1.0.0", "unknown"), ("1.1.0", "unknown"), ("2.0.0", "retry")]


def test_an_ensemble_version_whose_event_cannot_be_written_is_not_registered(tiny_store):
    EnsembleRegistry(tiny_store).register("combo", "1.0.0", MEMBERS, COMBINER)
    before = tree(tiny_store)
    with pytest.raises(StateUnavailable):
        EnsembleRegistry(tiny_store, state=unreachable_state()).register("combo", "2.0.0", MEMBERS, COMBINER)
    assert tree(tiny_store) == before
    assert [e.version for e in EnsembleRegistry(tiny_store).versions("combo")] == ["1.0.0"]


# ---- writes to unknown names create nothing ------------------------------------------------------------

def test_python_api_writes_to_an_unknown_name_leave_the_root_as_it_was(two_versions):
    registry = two_versions
    before = tree(registry.root)
    writes = [
        lambda: registry.promote("ghost", "1.0.0", force=True),
        lambda: registry.archive("ghost", "1.0.0"),
        lambda: registry.update_metrics("ghost", "1.0.0", {"mae": 0.1}),
        lambda: registry.set_validation("ghost", "1.0.0", ValidationReport(passed=True, kind="smoke")),
        lambda: registry.delete("ghost", "1.0.0"),
    ]
    for write in writes:
        with pytest.raises(ModelNotFound):
            write()
    assert tree(registry.root) == before


def test_ensemble_writes_to_an_unknown_name_leave_the_root_as_it_was(tiny_store):
    ensembles = EnsembleRegistry(tiny_store)
    before = tree(tiny_store)
    for write in (lambda: ensembles.promote("ghost", "1.0.0", force=True), lambda: ensembles.archive("ghost", "1.0.0")):
        with pytest.raises(ModelNotFound, match="ensemble 'ghost'"):
            write()
    assert tree(tiny_store) == before


async def test_admin_routes_on_an_unknown_name_answer_404_and_create_nothing(two_versions):
    root = two_versions.root
    settings = Settings(model_store=root, security=SecuritySettings(api_keys="admin-secret"))
    before = tree(root)
    async with asgi_client(router_app(router, settings), lifespan=False) as http:
        for kind in ("models", "ensembles"):
            answers = [
                await http.post(f"/v1/registry/{kind}/ghost/versions/1.0.0/promote", headers=ADMIN, json={}),
                await http.post(f"/v1/registry/{kind}/ghost/versions/1.0.0/archive", headers=ADMIN),
            ]
            if kind == "models":
                answers += [
                    await http.patch("/v1/registry/models/ghost/versions/1.0.0/metrics", headers=ADMIN,
                                     json={"metrics": {"mae": 0.1}}),
                    await http.delete("/v1/registry/models/ghost/versions/1.0.0", headers=ADMIN),
                ]
            for answer in answers:
                assert answer.status_code == 404, answer.text
                assert answer.json()["error"]["code"] == "model_not_found"
    assert tree(root) == before


def _opened(path: Path) -> int:
    """How many descriptors of this process have ``path`` open."""
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd) == str(path)
        except OSError:
            continue
    return count


def test_a_model_removed_while_a_write_waits_for_its_lock_is_not_recreated(two_versions):
    registry = two_versions
    model_dir = registry.root / "price"
    lock_path = model_dir / LOCK_FILE
    outcome: list[BaseException | None] = []

    def promote() -> None:
        try:
            registry.promote("price", "1.1.0", force=True)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    with writer_lock(registry.layout, "price", 30.0, create=False):
        held = _opened(lock_path)
        writer = threading.Thread(target=promote)
        writer.start()
        deadline = time.monotonic() + 30
        while _opened(lock_path) == held:  # the writer has checked the name and waits for the lock
            assert time.monotonic() < deadline and writer.is_alive()
            time.sleep(0.01)
        shutil.rmtree(model_dir)
    writer.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], ModelNotFound), outcome
    assert not model_dir.exists()
