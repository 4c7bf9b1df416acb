"""Request parameters both Open Inference Protocol doors read (REST ``parameters`` object, gRPC
``InferParameter`` map, already unwrapped to Python values): the selector's strings, Triton's timeout,
Triton's priority and a forecaster's ``n_steps``."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput
from ..types import MAX_N_STEPS, Selector


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


def n_steps(parameters: dict[str, Any]) -> int | None:
    """The ``n_steps`` parameter: the first steps of a forecaster's horizon to answer with; None when unset.
    Anything but a positive integer is 422; more than the model's horizon is refused when it serves."""
    value = parameters.get("n_steps")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_N_STEPS:
        raise InvalidInput(f"parameter 'n_steps' must be an integer from 1 to {MAX_N_STEPS} (an int64_param or "
                           "uint64_param over gRPC)", {"parameter": "n_steps"})
    return value
