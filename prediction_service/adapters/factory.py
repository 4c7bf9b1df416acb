"""``SERVING_ADAPTER_TYPE`` -> adapter class.

The names are ``settings.AdapterType``, the one list of them: settings refuses any other name when the
configuration is read, and every member has its class here (tests/adapters/test_factory.py checks that).
"""

from __future__ import annotations

import importlib

from ..settings import AdapterType, Settings
from .base import ServingAdapter


class UnknownAdapterType(ValueError):
    pass


class ServingAdapterFactory:
    # Lazy import paths: a backend's client libraries load only when that backend is chosen.
    _classes: dict[AdapterType, str] = {
        AdapterType.SIMPLE: "prediction_service.adapters.simple:SimpleAdapter",
        AdapterType.TORCHSCRIPT: "prediction_service.adapters.torchscript:TorchScriptAdapter",
        AdapterType.TORCHSERVE: "prediction_service.adapters.torchserve:TorchServeAdapter",
        AdapterType.TRITON: "prediction_service.adapters.triton:TritonAdapter",
    }

    @classmethod
    def available(cls) -> list[str]:
        return [adapter_type.value for adapter_type in AdapterType]

    @classmethod
    def adapter_class(cls, type_name: str | AdapterType) -> type[ServingAdapter]:
        try:
            import_path = cls._classes[AdapterType(type_name)]
        except ValueError:
            raise UnknownAdapterType(
                f"unknown serving adapter {type_name!r}; valid: {', '.join(cls.available())}") from None
        module_name, _, class_name = import_path.partition(":")
        return getattr(importlib.import_module(module_name), class_name)

    @classmethod
    def create(cls, settings: Settings) -> ServingAdapter:
        return cls.adapter_class(settings.serving_adapter_type)(settings)
