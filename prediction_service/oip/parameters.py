"""Request parameters both Open Inference Protocol doors read (REST ``parameters`` object, gRPC
``InferParameter`` map, already unwrapped to Python values): the selector's strings, Triton's timeout and
Triton's priority."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput
from ..types import Selector


def string_parameter(parameters: dict[str, Any], key: str) -> str | None:
    """A string parameter; "" is unset (protobuf cannot send None), anything but a string is 422."""
    value = parameters.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"parameter {key!r} must be a string (a string_param over gRPC)", {"parameter": key})
    return value or None


def selector(parameters: dict[str, Any], version: str | None) -> Selector:
    """Which version serves: the path's (or message's) version, else the ``stage`` and ``routing_key``."""
    return Selector(version=version, stage=string_parameter(parameters, "stage"),
                    routing_key=string_parameter(parameters, "routing_key"))


def timeout_seconds(parameters: dict[str, Any]) -> float | None:
    """Triton's ``timeout`` parameter (microseconds on the wire) in seconds; None when unset or 0."""
    timeout_us = parameters.get("timeout")
    if timeout_us is None:
        return None
    if isinstance(timeout_us, bool) or not isinstance(timeout_us, int) or timeout_us < 0:
        raise InvalidInput("parameter 'timeout' must be a non-negative integer (microseconds)")
    return timeout_us / 1e6 if timeout_us else None


def priority(parameters: dict[str, Any]) -> int:
    """Triton's ``priority`` parameter: 1 is the highest, 0 (or none) the default. Anything but a non-negative
    integer is 422; the pipeline refuses one past the server's levels (BATCH_PRIORITY_LEVELS)."""
    value = parameters.get("priority")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput("parameter 'priority' must be a non-negative integer (1 is the highest, 0 the default; "
                           "a uint64_param or int64_param over gRPC)", {"parameter": "priority"})
    return value
