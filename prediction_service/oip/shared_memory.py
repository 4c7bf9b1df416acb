"""The system shared-memory extension as both OIP codecs see it: tensor parameters that point into a
registered region (``shared_memory_region``, ``shared_memory_offset``, ``shared_memory_byte_size``), and
the small interface of the regions themselves. The registry that owns the mappings lives in serving/;
the codecs only read and write through this interface, so they never touch a file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

from ..errors import BadRequest, InvalidInput, PayloadTooLarge
from ..types import RegionStatus
from .datatypes import numpy_dtype

REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"
PARAMETERS = (REGION, OFFSET, BYTE_SIZE)


class SharedMemoryRegions(Protocol):
    """Registered regions, by name. Offsets are relative to the region; both calls refuse (BadRequest) an
    unknown region or a span that does not lie inside it."""

    def check(self, region: str, offset: int, byte_size: int) -> None:
        """Refuse, before inference, an output span that the answer could not be written to."""
        ...

    def read(self, region: str, offset: int, byte_size: int) -> bytearray:
        """A (writable) copy of ``byte_size`` bytes at ``offset``: the client may reuse the region once answered."""
        ...

    def write(self, region: str, offset: int, byte_size: int, data: bytes) -> None:
        """``data`` at ``offset``; refused when longer than ``byte_size``, the span the client offered."""
        ...


@dataclass(frozen=True)
class TensorLocation:
    """Where one tensor is read from or written to."""
    region: str
    offset: int
    byte_size: int


def location(parameters: dict[str, Any], what: str) -> TensorLocation | None:
    """The tensor's place in a region, from its (unwrapped) parameters; None when it names no region.
    A malformed reference is a 400, before any region is looked at."""
    region = parameters.get(REGION)
    if region is None or region == "":  # protobuf cannot send None: "" is unset
        if parameters.get(BYTE_SIZE) is not None or parameters.get(OFFSET) is not None:
            raise BadRequest(f"{what}: {BYTE_SIZE} and {OFFSET} need {REGION}", {"tensor": what})
        return None
    if not isinstance(region, str):
        raise BadRequest(f"{what}: {REGION} must be a string", {"tensor": what})
    size, offset = parameters.get(BYTE_SIZE), parameters.get(OFFSET, 0)
    if size is None:
        raise BadRequest(f"{what}: {REGION} needs {BYTE_SIZE}", {"tensor": what})
    for key, value in ((BYTE_SIZE, size), (OFFSET, offset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadRequest(f"{what}: {key} must be a non-negative integer", {"tensor": what, "parameter": key})
    return TensorLocation(region, offset, size)


def read_input(regions: SharedMemoryRegions | None, name: str, datatype: str, count: int,
               place: TensorLocation, max_bytes: int) -> bytearray:
    """Input ``name``'s bytes from its region. ``count``: the elements its shape was granted (the budget
    is charged before this is called), so a size that cannot hold them is refused before any read."""
    if regions is None:
        raise no_regions(place.region)
    if datatype != "BYTES":
        expected = count * numpy_dtype(datatype).itemsize
        if place.byte_size != expected:
            raise InvalidInput(f"input {name!r}: {BYTE_SIZE} is {place.byte_size}, expected {expected} for "
                               f"{datatype} of {count} elements", {"input": name, "bytes": place.byte_size,
                                                                   "expected": expected})
    elif place.byte_size > max_bytes:  # strings: at most what a request body could have carried
        raise PayloadTooLarge(f"input {name!r}: {BYTE_SIZE} {place.byte_size} exceeds the limit of {max_bytes} "
                              "bytes", {"input": name, "max_bytes": max_bytes})
    return regions.read(place.region, place.offset, place.byte_size)


def check_output(regions: SharedMemoryRegions | None, name: str, place: TensorLocation) -> None:
    if regions is None:
        raise no_regions(place.region)
    regions.check(place.region, place.offset, place.byte_size)


def no_regions(region: str) -> BadRequest:
    return BadRequest(f"shared-memory region {region!r} is not registered", {"region": region})


class RegisterRegionRequest(BaseModel):
    """POST /v2/systemsharedmemory/region/{name}/register: the /dev/shm key and the span of it."""

    model_config = ConfigDict(extra="forbid")
    key: StrictStr
    offset: StrictInt = 0
    byte_size: StrictInt


def status_document(regions: list[RegionStatus]) -> list[dict[str, Any]]:
    """GET /v2/systemsharedmemory/status: one object per region, Triton's fields."""
    return [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size} for r in regions]
