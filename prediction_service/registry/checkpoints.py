"""Named steps inside multi-step registry writes.

Crash-safety tests run a promotion in a child process with ``PREDICTION_SERVICE_REGISTRY_PAUSE_AT=<step>``:
the child announces the step on stderr and sleeps there until the test SIGKILLs it. Unset, a step costs
one environment lookup.
"""

from __future__ import annotations

import os
import sys
import time

PAUSE_ENV = "PREDICTION_SERVICE_REGISTRY_PAUSE_AT"
PAUSED_MARKER = "registry-paused-at:"


def step(name: str) -> None:
    if os.environ.get(PAUSE_ENV) != name:
        return
    print(f"{PAUSED_MARKER}{name}", file=sys.stderr, flush=True)
    while True:  # the test kills the process here
        time.sleep(60)
