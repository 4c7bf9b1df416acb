"""Ensembles in the filesystem registry: their own name, versions and stages, beside the models; members
checked when registered and when promoted; invisible to the model readers (nothing tries to load them)."""

from __future__ import annotations

import json

import pytest

from prediction_service.ensemble import ENSEMBLE_FILE, EnsembleMember, EnsembleRegistry, WeightedPriceSentiment
from prediction_service.errors import Conflict, InvalidInput, InvalidName, VersionNotFound
from prediction_service.registry import ModelRegistry, RegistryReader
from prediction_service.registry.errors import InvalidTransition, PromotionRefused

from .conftest import COMBINER, ENSEMBLE, MEMBERS, register_ensemble


def test_versions_stages_and_promotion(ensemble_store):
    registry = EnsembleRegistry(ensemble_store)
    registry.register(ENSEMBLE, "1.1.0", MEMBERS, WeightedPriceSentiment(), actor="test")
    assert registry.names() == [ENSEMBLE]
    assert [e.version for e in registry.versions(ENSEMBLE)] == ["1.0.0", "1.1.0"]
    assert registry.stages(ENSEMBLE) == {"production": "1.0.0", "staging": None}
    assert registry.get(ENSEMBLE, "1.1.0").metadata.status == "none"

    registry.promote(ENSEMBLE, "1.1.0", "staging", actor="test")
    assert registry.resolve(ENSEMBLE, stage="staging").version == "1.1.0"
    registry.promote(ENSEMBLE, "1.1.0", "production", actor="test")
    assert registry.stages(ENSEMBLE) == {"production": "1.1.0", "staging": None}
    assert registry.get(ENSEMBLE, "1.0.0").metadata.status == "archived"  # displaced
    assert registry.resolve(ENSEMBLE).metadata.status == "production"
    with pytest.raises(InvalidTransition):
        registry.promote(ENSEMBLE, "1.1.0", "staging")
    registry.promote(ENSEMBLE, "1.0.0", "production")  # rollback: archived -> production
    assert registry.resolve(ENSEMBLE).version == "1.0.0"

    events = ModelRegistry(ensemble_store).model_events(ENSEMBLE)
    assert [e.event for e in events].count("registered") == 2
    assert ModelRegistry(ensemble_store).production_at(ENSEMBLE, events[-1].time) == "1.0.0"
    document = json.loads((ensemble_store / ENSEMBLE / "v1.0.0" / ENSEMBLE_FILE).read_text())
    assert document["kind"] == "ensemble" and document["combiner"]["price_weight"] == COMBINER.price_weight
    assert document["members"] == [{"role": "price", "model": "lstm-price", "stage": None, "version": None},
                                   {"role": "sentiment", "model": "sentiment-transformer", "stage": None,
                                    "version": None}]


def test_model_readers_do_not_see_ensembles(ensemble_store):
    reader = RegistryReader(ensemble_store)
    assert ENSEMBLE not in reader.model_names()
    assert ENSEMBLE not in ModelRegistry(ensemble_store).model_names()  # opening it reconciles nothing of ours
    assert EnsembleRegistry(ensemble_store).stages(ENSEMBLE)["production"] == "1.0.0"


@pytest.mark.parametrize("members, says", [
    ((EnsembleMember(role="price", model="no-such-model"), MEMBERS[1]), "no-such-model"),
    ((EnsembleMember(role="price", model="lstm-price", version="9.9.9"), MEMBERS[1]), "9.9.9"),
    ((EnsembleMember(role="price", model="lstm-price", stage="staging"), MEMBERS[1]), "no staging version"),
    ((EnsembleMember(role="price", model="cnn-lstm-direction"), MEMBERS[1]), "regression"),
    ((MEMBERS[0], EnsembleMember(role="sentiment", model="lstm-price")), "classifier"),
    ((MEMBERS[0], EnsembleMember(role="sentiment", model="cnn-lstm-direction")), "lack"),
    ((MEMBERS[0],), "exactly one member per role"),
])
def test_members_that_cannot_serve_are_refused(ensemble_store, members, says):
    with pytest.raises(InvalidInput) as caught:
        EnsembleRegistry(ensemble_store).register(ENSEMBLE, "2.0.0", members, COMBINER)
    assert says in json.dumps({"message": caught.value.message, **caught.value.details})
    assert not (ensemble_store / ENSEMBLE / "v2.0.0").exists()


def test_names_versions_and_collisions(ensemble_store):
    registry = EnsembleRegistry(ensemble_store)
    with pytest.raises(Conflict):
        registry.register("cnn-lstm-direction", "1.0.0", MEMBERS, COMBINER)  # a model's name
    with pytest.raises(Conflict):
        registry.register(ENSEMBLE, "1.0.0", MEMBERS, COMBINER)  # the version exists
    with pytest.raises((InvalidInput, InvalidName)):
        registry.register("../escape", "1.0.0", MEMBERS, COMBINER)
    with pytest.raises(VersionNotFound):
        registry.resolve(ENSEMBLE, stage="staging")


def test_production_needs_members_that_serve_unless_forced(ensemble_store):
    registry = register_ensemble(ensemble_store, "1.1.0", stage=None)
    ModelRegistry(ensemble_store).archive("lstm-price", "1.0.0", actor="test")  # the price member leaves production
    with pytest.raises(PromotionRefused) as refused:
        registry.promote(ENSEMBLE, "1.1.0")
    assert "lstm-price" in json.dumps(refused.value.details)
    registry.promote(ENSEMBLE, "1.1.0", force=True, actor="test")
    assert registry.stages(ENSEMBLE)["production"] == "1.1.0"
    assert "forced_promotion" in [e.event for e in ModelRegistry(ensemble_store).model_events(ENSEMBLE)]


def test_resolution_is_cached_until_the_stage_link_or_file_changes(ensemble_store):
    registry = EnsembleRegistry(ensemble_store)
    assert registry.resolve_cached(ENSEMBLE) is None  # nothing resolved yet
    first = registry.resolve(ENSEMBLE)
    assert registry.resolve_cached(ENSEMBLE) is first and registry.resolve(ENSEMBLE) is first  # no re-read

    register_ensemble(ensemble_store, "1.1.0", stage=None)  # another writer, another process's registry
    assert registry.resolve_cached(ENSEMBLE) is first  # a new version alone changes nothing served
    EnsembleRegistry(ensemble_store).promote(ENSEMBLE, "1.1.0", actor="test")  # the stage link moves
    assert registry.resolve_cached(ENSEMBLE) is None
    assert registry.resolve(ENSEMBLE).version == "1.1.0"

    document = ensemble_store / ENSEMBLE / "v1.1.0" / ENSEMBLE_FILE  # the file rewritten in place
    changed = json.loads(document.read_text())
    changed["description"] = "edited"
    document.write_text(json.dumps(changed))
    assert registry.resolve_cached(ENSEMBLE) is None
    assert registry.resolve(ENSEMBLE).metadata.description == "edited"
