"""``SERVING_ADAPTER_TYPE`` -> adapter class. Only adapters that really work are registered."""

from __future__ import annotations

import importlib

from ..settings import Settings
from .base import ServingAdapter


class UnknownAdapterType(ValueError):
    pass


class ServingAdapterFactory:
    # Lazy import paths: a backend's client libraries load only when that backend is chosen.
    _registry: dict[str, str] = {
        "simple": "prediction_service.adapters.simple:SimpleAdapter",
        "torchscript": "prediction_service.adapters.torchscript:TorchScriptAdapter",
        "torchserve": "prediction_service.adapters.torchserve:TorchServeAdapter",
        "triton": "prediction_service.adapters.triton:TritonAdapter",
    }

    @classmethod
    def register(cls, type_name: str, import_path: str) -> None:
        cls._registry[type_name] = import_path

    @classmethod
    def available(cls) -> list[str]:
        return sorted(cls._registry)

    @classmethod
    def adapter_class(cls, type_name: str) -> type[ServingAdapter]:
        try:
            module_name, _, class_name = cls._registry[type_name].partition(":")
        except KeyError:
            raise UnknownAdapterType(
                f"unknown serving adapter {type_name!r}; valid: {', '.join(cls.available())}") from None
        return getattr(importlib.import_module(module_name), class_name)

    @classmethod
    def create(cls, settings: Settings) -> ServingAdapter:
        return cls.adapter_class(settings.serving_adapter_type.value)(settings)
