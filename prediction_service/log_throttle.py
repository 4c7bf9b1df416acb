"""A log line per error code at most every few seconds, with how many were folded into it: under
overload thousands of identical refusals a second must not become thousands of log lines."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class ThrottledLog:
    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self._logger = logger
        self._interval = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def warning(self, key: str, message: str) -> bool:
        """Log ``message`` unless ``key`` was logged within the interval; True when it was written."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._folded[key] = self._folded.get(key, 0) + 1
            return False
        folded = self._folded.pop(key, 0)
        self._last[key] = now
        suffix = f" (and {folded} more like it in the last {now - last:.0f} s)" if folded and last else ""
        self._logger.warning("%s%s", message, suffix)
        return True
