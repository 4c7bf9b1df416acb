"""What the registry offers code outside it, so nobody else writes into its folders: upload staging,
reload requests between workers, per-version caches, and the one "version exists" check."""

from __future__ import annotations

import stat

import pytest

from prediction_service.errors import Conflict, InvalidName, ModelNotFound
from prediction_service.registry import RegistryReader
from prediction_service.registry.store import STATE_DIR, UPLOADS_DIR
from tests.registry.conftest import onnx_artifact


def test_upload_staging_is_private_on_the_store_and_always_removed(registry):
    with registry.upload_staging() as staging:
        assert staging.parent == registry.root / STATE_DIR / UPLOADS_DIR
        assert stat.S_IMODE(staging.stat().st_mode) == 0o700
        (staging / "part").write_bytes(b"x")
    assert not staging.exists()
    with pytest.raises(RuntimeError), registry.upload_staging() as failed:
        raise RuntimeError("upload broke off")
    assert not failed.exists()


def test_a_reload_request_reaches_every_reader(two_versions):
    worker_a, worker_b = RegistryReader(two_versions.root), RegistryReader(two_versions.root)
    assert worker_b.reload_generation("price") == b""
    generation = worker_a.request_reload("price")
    assert worker_b.reload_generation("price") == generation
    assert worker_a.request_reload("price") != generation
    assert [v.version for v in worker_b.versions("price")] == ["1.0.0", "1.1.0"]  # not a version, not listed
    with pytest.raises(ModelNotFound):
        worker_a.request_reload("nope")
    with pytest.raises(InvalidName):
        worker_a.request_reload("../price")


def test_version_cache_dir_lives_and_dies_with_the_version(two_versions):
    version = two_versions.get("price", "1.1.0")
    cache = version.cache_dir("torchscript")
    assert cache.is_dir() and version.path in cache.parents
    (cache / "compiled.pt").write_bytes(b"x")
    assert two_versions.get("price", "1.1.0").metadata.artifacts == version.metadata.artifacts
    with pytest.raises(InvalidName):
        version.cache_dir("../escape")
    two_versions.delete("price", "1.1.0")
    assert not cache.exists()


def test_an_existing_version_is_refused_before_any_work(two_versions, onnx_models):
    with pytest.raises(Conflict, match="already exists"):
        two_versions.layout.new_version_dir("price", "1.0.0")
    with pytest.raises(Conflict, match="already exists"):
        two_versions.register("price", "1.0.0", onnx_artifact(onnx_models["b"]))
    assert two_versions.layout.new_version_dir("price", "2.0.0") == two_versions.root / "price" / "v2.0.0"
