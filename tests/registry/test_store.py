"""ModelRegistry: registration, signature inference + smoke validation, lifecycle, gate, compare, delete."""

from __future__ import annotations

import json
import os

import pytest

from prediction_service.errors import Conflict, InvalidInput, ValidationFailed, VersionNotFound
from prediction_service.registry import ModelRegistry, ValidationReport
from prediction_service.registry.errors import InvalidTransition, PromotionRefused, StageInUse
from prediction_service.registry.fsutil import sha256_file
from prediction_service.registry.lifecycle import check_transition
from prediction_service.signature import ModelSignature, TensorSpec

from .conftest import onnx_artifact


def _meta(registry: ModelRegistry, name: str, version: str) -> dict:
    return json.loads(registry.layout.metadata_path(name, version).read_text())


def test_register_copies_artifacts_infers_signature_and_stores_smoke_report(registry, onnx_models):
    created = registry.register("price", "1.0.0", onnx_artifact(onnx_models["a"]), metrics={"mae": 0.5},
                                tags={"owner": "desk"}, description="first", actor="alice")
    art = created.metadata.artifacts[0]
    assert (created.path / "model.onnx").read_bytes() == onnx_models["a"].read_bytes()
    assert art.sha256 == sha256_file(onnx_models["a"]) and art.size_bytes == onnx_models["a"].stat().st_size
    sig = created.signature
    assert [(s.name, s.dtype, s.shape) for s in sig.inputs] == [("features", "float32", (-1, 4))]
    assert [(s.name, s.dtype, s.shape) for s in sig.outputs] == [("prediction", "float32", (-1, 2))]
    assert created.metadata.validation.kind == "smoke" and created.metadata.validation.passed
    on_disk = _meta(registry, "price", "1.0.0")
    assert on_disk["status"] == "none" and on_disk["tags"] == {"owner": "desk"} and on_disk["created_at"]
    assert registry.model_events("price")[-1].event == "registered"


def test_numeric_parity_report_is_kept_instead_of_smoke(registry, onnx_models):
    parity = ValidationReport(passed=True, kind="numeric_parity", details={"max_abs_diff": 1e-7})
    created = registry.register("price", "1.0.0", onnx_artifact(onnx_models["a"]), validation=parity)
    assert created.metadata.validation.kind == "numeric_parity"


def test_explicit_signature_that_contradicts_the_model_is_refused(registry, onnx_models):
    wrong_output = ModelSignature(inputs=[TensorSpec(name="features", dtype="float32", shape=(-1, 4))],
                                  outputs=[TensorSpec(name="prediction", dtype="float32", shape=(-1, 3))])
    with pytest.raises(ValidationFailed):
        registry.register("price", "1.0.0", onnx_artifact(onnx_models["a"]), signature=wrong_output)
    wrong_name = ModelSignature(inputs=[TensorSpec(name="x", dtype="float32", shape=(-1, 4))],
                                outputs=[TensorSpec(name="prediction", dtype="float32", shape=(-1, 2))])
    with pytest.raises(ValidationFailed):
        registry.register("price", "1.0.0", onnx_artifact(onnx_models["a"]), signature=wrong_name)
    assert not registry.layout.version_dir("price", "1.0.0").exists()


def test_explicit_signature_may_pin_a_dim_the_graph_leaves_open(registry, onnx_models):
    pinned = ModelSignature(inputs=[TensorSpec(name="features", dtype="float32", shape=(-1, 4))],
                            outputs=[TensorSpec(name="prediction", dtype="float32", shape=(-1, 2))],
                            task="classification", labels=["down", "up"])
    created = registry.register("price", "1.0.0", onnx_artifact(onnx_models["a"]), signature=pinned)
    assert created.signature.labels == ["down", "up"]


def test_non_onnx_file_and_duplicate_version_are_refused(registry, onnx_models, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(InvalidInput):
        registry.register("price", "1.0.0", onnx_artifact(junk))
    with pytest.raises(InvalidInput):
        registry.register("price", "1.0.0", onnx_artifact(onnx_models["a"]) + onnx_artifact(onnx_models["b"]))
    registry.register("price", "1.0.0", onnx_artifact(onnx_models["a"]))
    with pytest.raises(Conflict):
        registry.register("price", "1.0.0", onnx_artifact(onnx_models["b"]))


def test_list_and_get(two_versions):
    assert two_versions.model_names() == ["price"]
    assert [v.version for v in two_versions.versions("price")] == ["1.0.0", "1.1.0"]
    assert two_versions.get("price", "1.1.0").metadata.metrics["mae"] == 0.4
    with pytest.raises(VersionNotFound):
        two_versions.get("price", "9.9.9")


def test_promotion_to_production_archives_the_previous_one_and_moves_the_link(two_versions):
    reg = two_versions
    reg.promote("price", "1.0.0", actor="alice")
    reg.promote("price", "1.1.0", "staging", actor="alice")
    assert reg.stages("price") == {"production": "1.0.0", "staging": "1.1.0"}
    reg.promote("price", "1.1.0", actor="bob")
    assert reg.stages("price") == {"production": "1.1.0", "staging": None}
    assert os.readlink(reg.layout.stage_link("price", "production")) == "v1.1.0"
    assert _meta(reg, "price", "1.1.0")["status"] == "production"
    assert _meta(reg, "price", "1.0.0")["status"] == "archived"
    assert reg.resolve("price").version == "1.1.0"


def test_staging_move_archives_the_previous_staging_version(two_versions, onnx_models):
    reg = two_versions
    reg.register("price", "1.2.0", onnx_artifact(onnx_models["a"]))
    reg.promote("price", "1.1.0", "staging")
    reg.promote("price", "1.2.0", "staging")
    assert reg.stages("price")["staging"] == "1.2.0"
    assert _meta(reg, "price", "1.1.0")["status"] == "archived"


@pytest.mark.parametrize("current,target", [
    ("production", "staging"), ("production", "none"), ("staging", "none"), ("archived", "none"),
    ("archived", "archived"), ("production", "production"),
])
def test_transition_table_refuses_moves_it_does_not_list(current, target):
    with pytest.raises(InvalidTransition):
        check_transition("price", "1.0.0", current, target)


def test_lifecycle_transitions_enforced(two_versions):
    reg = two_versions
    reg.promote("price", "1.0.0")
    with pytest.raises(InvalidTransition):
        reg.promote("price", "1.0.0", "staging")  # production -> staging is not a move
    reg.archive("price", "1.0.0")
    assert reg.stages("price")["production"] is None
    with pytest.raises(InvalidTransition):
        reg.archive("price", "1.0.0")  # archived -> archived
    reg.promote("price", "1.0.0", "staging")  # archived -> staging is allowed
    assert reg.stages("price")["staging"] == "1.0.0"


def test_gate_refuses_unvalidated_version_and_force_is_logged(registry, onnx_models):
    failed = ValidationReport(passed=False, kind="numeric_parity", details={"max_abs_diff": 0.3})
    registry.register("price", "1.0.0", onnx_artifact(onnx_models["a"]), validation=failed)
    registry.set_validation("price", "1.0.0", failed)
    with pytest.raises(PromotionRefused) as refused:
        registry.promote("price", "1.0.0")
    assert refused.value.status == 409
    assert registry.stages("price")["production"] is None
    registry.promote("price", "1.0.0", force=True, actor="carol")
    assert registry.stages("price")["production"] == "1.0.0"
    forced = [e for e in registry.model_events("price") if e.event == "forced_promotion"]
    assert len(forced) == 1 and forced[0].actor == "carol" and forced[0].version == "1.0.0"
    change = [e for e in registry.model_events("price") if e.event == "stage_change"][-1]
    assert change.details["forced"] is True


def test_staging_needs_no_validation(registry, onnx_models):
    registry.register("price", "1.0.0", onnx_artifact(onnx_models["a"]))
    registry.set_validation("price", "1.0.0", ValidationReport(passed=False, kind="smoke"))
    registry.promote("price", "1.0.0", "staging")
    assert registry.stages("price")["staging"] == "1.0.0"


def test_delete_refused_for_staged_versions_allowed_otherwise(two_versions):
    reg = two_versions
    reg.promote("price", "1.0.0")
    reg.promote("price", "1.1.0", "staging")
    for version in ("1.0.0", "1.1.0"):
        with pytest.raises(StageInUse) as refused:
            reg.delete("price", version)
        assert refused.value.status == 409
    reg.archive("price", "1.1.0")
    reg.delete("price", "1.1.0", actor="dave")
    assert [v.version for v in reg.versions("price")] == ["1.0.0"]
    assert not list(reg.layout.model_dir("price").glob(".*.tmp"))
    assert reg.model_events("price")[-1].event == "deleted"


def test_compare_reports_metric_deltas_and_artifact_differences(two_versions, onnx_models):
    reg = two_versions
    result = reg.compare("price", "1.0.0", "1.1.0")
    rows = {m.metric: m for m in result.metrics}
    assert rows["mae"].a == 0.5 and rows["mae"].b == 0.4 and rows["mae"].delta == pytest.approx(-0.1)
    assert rows["mae"].relative == pytest.approx(-0.2)
    assert rows["acc"].delta == pytest.approx(0.06)
    assert result.same_signature
    assert [c.file for c in result.artifact_changes] == ["model.onnx"]  # same name, different content
    reg.register("price", "2.0.0", onnx_artifact(onnx_models["wide"]), metrics={"sharpe": 1.2})
    wide = reg.compare("price", "1.0.0", "2.0.0")
    changed = {(c.side, c.name): (c.a, c.b) for c in wide.signature_changes}
    assert changed[("inputs", "features")] == ("float32[-1, 4]", "float32[-1, 6]")
    sharpe = next(m for m in wide.metrics if m.metric == "sharpe")
    assert sharpe.a is None and sharpe.delta is None


def test_update_metrics_merges_or_replaces(two_versions):
    reg = two_versions
    assert reg.update_metrics("price", "1.0.0", {"mae": 0.45, "rmse": 0.7}).metadata.metrics == \
        {"mae": 0.45, "acc": 0.6, "rmse": 0.7}
    assert reg.update_metrics("price", "1.0.0", {"mae": 0.3}, replace=True).metadata.metrics == {"mae": 0.3}
    assert _meta(reg, "price", "1.0.0")["metrics"] == {"mae": 0.3}


def test_reopen_reconciles_status_that_disagrees_with_links(two_versions):
    reg = two_versions
    reg.promote("price", "1.0.0")
    # Simulate a writer killed right after moving the link: link says 1.1.0, metadata still the old story.
    os.symlink("v1.1.0", reg.layout.model_dir("price") / ".production.123.dead.tmp")
    os.replace(reg.layout.model_dir("price") / ".production.123.dead.tmp", reg.layout.stage_link("price", "production"))
    repairs = ModelRegistry(reg.root).reconcile()  # opening already repaired; a second pass finds nothing
    assert repairs == []
    assert _meta(reg, "price", "1.1.0")["status"] == "production"
    assert _meta(reg, "price", "1.0.0")["status"] == "archived"
    assert reg.events.production_at("price", reg.model_events("price")[-1].time) == "1.1.0"
