"""SIGTERM / SIGINT flip readiness before uvicorn starts its graceful shutdown.

uvicorn installs its own signal handlers before the app's lifespan starts; ``readiness_on_signal``
wraps them so the first signal sets ``app.state.shutting_down`` (``/health/ready`` answers 503 from
then on) and then hands over to uvicorn, which stops accepting, lets in-flight requests finish
(``SERVER_SHUTDOWN_GRACE_SECONDS``) and runs the lifespan shutdown (audit flush).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def readiness_on_signal(app: FastAPI) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signals can only be handled in the main thread (e.g. an app run by a test client)
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def handle(sig: int, frame) -> None:
        if not app.state.shutting_down:
            log.info("received %s: readiness is now false; draining", signal.Signals(sig).name)
        app.state.shutting_down = True
        handler = previous[sig]
        if callable(handler):
            handler(sig, frame)
        elif handler == signal.SIG_DFL:  # nobody else handles it: behave as if we were not here
            signal.signal(sig, handler)
            signal.raise_signal(sig)

    for sig in SIGNALS:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is handle:
                signal.signal(sig, handler)
