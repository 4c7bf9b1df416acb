"""Adapter names have one source (settings.AdapterType): every name settings accepts builds its adapter."""

from __future__ import annotations

import pytest

from prediction_service.adapters.factory import ServingAdapterFactory, UnknownAdapterType
from prediction_service.settings import AdapterType, Settings


@pytest.mark.parametrize("adapter_type", list(AdapterType), ids=lambda t: t.value)
def test_every_accepted_name_has_its_adapter(adapter_type):
    settings = Settings(serving_adapter_type=adapter_type.value)
    adapter_class = ServingAdapterFactory.adapter_class(settings.serving_adapter_type)
    assert adapter_class.name == adapter_type.value
    assert ServingAdapterFactory.adapter_class(adapter_type.value) is adapter_class


def test_the_factory_offers_exactly_the_names_settings_accepts():
    assert ServingAdapterFactory.available() == [t.value for t in AdapterType]
    with pytest.raises(UnknownAdapterType, match="valid: simple, torchscript, torchserve, triton"):
        ServingAdapterFactory.adapter_class("tensorflow")
