"""Model families: many small models addressed by what they forecast (symbol, timeframe, model type) instead
of by name. A version joins a family through three tags (``registry register --symbol AAPL --timeframe 1m
--model-type patchtst``); the family member is the model whose production version carries them.

``FamilyIndex`` answers a lookup from memory: it is rebuilt off the event loop with the model manager's stage
poll (hundreds of members cost one cached metadata read each, by stamp), and once more on a miss at most
once a second, so a member registered a moment ago is found without waiting for the next poll.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ..errors import ModelNotFound, PredictionServiceError
from .model_version import VersionMetadata
from .reader import RegistryReader

FAMILY_TAGS = ("symbol", "timeframe", "model_type")
MISS_REFRESH_INTERVAL_S = 1.0


@dataclass(frozen=True)
class FamilyKey:
    symbol: str
    timeframe: str
    model_type: str

    def describe(self) -> str:
        return f"{self.symbol} {self.timeframe} {self.model_type}"


def family_of(metadata: VersionMetadata) -> FamilyKey | None:
    """The family a version belongs to, from its tags; None unless all three are set."""
    values = [metadata.tags.get(tag) for tag in FAMILY_TAGS]
    return FamilyKey(*values) if all(values) else None  # type: ignore[arg-type]


def family_tags(symbol: str | None, timeframe: str | None, model_type: str | None) -> dict[str, str]:
    given = {"symbol": symbol, "timeframe": timeframe, "model_type": model_type}
    if any(given.values()) and not all(given.values()):
        missing = [tag for tag, value in given.items() if not value]
        raise ValueError(f"a family member needs --symbol, --timeframe and --model-type (missing: {missing})")
    return {tag: value for tag, value in given.items() if value}


class FamilyIndex:
    def __init__(self, reader: RegistryReader):
        self.reader = reader
        self._members: dict[FamilyKey, str] = {}
        self._lock = threading.Lock()
        self._refreshed_at = 0.0

    def refresh(self) -> None:
        """Rescan which production versions carry a family (blocking: run it off the event loop)."""
        members: dict[FamilyKey, str] = {}
        for name in self.reader.model_names():
            try:
                target = self.reader.model_stage(name, "production")
                if target is None:
                    continue
                key = family_of(self.reader.get(name, target).metadata)
            except PredictionServiceError:  # a model being written or repaired: the next scan sees it
                continue
            if key is not None:
                members[key] = name
        with self._lock:
            self._members = members
            self._refreshed_at = time.monotonic()

    def member(self, key: FamilyKey) -> str | None:
        return self._members.get(key)

    def stale(self) -> bool:
        return time.monotonic() - self._refreshed_at >= MISS_REFRESH_INTERVAL_S

    def not_found(self, key: FamilyKey) -> ModelNotFound:
        same_symbol = sorted(f"{k.timeframe} {k.model_type}" for k in self._members if k.symbol == key.symbol)
        where = f"; {key.symbol} has: {', '.join(same_symbol)}" if same_symbol else f"; no family member for {key.symbol}"
        return ModelNotFound(f"no production model for {key.describe()}{where}",
                             {"symbol": key.symbol, "timeframe": key.timeframe, "model_type": key.model_type,
                              "available": same_symbol})
