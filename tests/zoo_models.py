"""Model zoo models trained once per test process and shared by the modelzoo and packaging tests."""

from __future__ import annotations

from functools import lru_cache

from prediction_service.modelzoo.training import TrainedModel, train_all


@lru_cache(maxsize=1)
def trained_models() -> dict[str, TrainedModel]:
    return train_all()
